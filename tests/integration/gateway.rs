//! One LM gateway for both routes: what reaches the service, rate limits,
//! budgets, the shared cache, `Retry-After`, fallbacks, cost, and the pools
//! that call directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::{LmServer, Reply, Scripted};
use dspex::{
    BudgetConfig, ErrorKind, GatewayConfig, LmCalls, LmConfig, LmPolicy, Map, PoolConfig, Program, ProgramSpec,
    RequestOptions, Route, Runtime, RuntimeConfig,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support;

fn inputs(v: Value) -> Map {
    v.as_object().cloned().expect("an object")
}

fn q(text: &str) -> Map {
    inputs(json!({ "question": text }))
}

/// An LM DSPy has a price for (`gpt-4o-mini`), served by `server`.
fn lm(server: &LmServer) -> LmConfig {
    LmConfig::new("gpt-4o-mini").with_base_url(server.base_url()).with_api_key("sk-gateway-test").with_temperature(0.0)
}

fn pool(name: &str, size: usize) -> PoolConfig {
    PoolConfig::new(name).size(size).concurrency(4).standby(0)
}

async fn start(config: RuntimeConfig) -> Runtime {
    Runtime::from_config(RuntimeConfig { python: Some(support::python()), ..config }).await.expect("runtime")
}

fn direct(mut p: PoolConfig) -> PoolConfig {
    p.lm_calls = LmCalls::Direct;
    p
}

/// The same DSPy program through the gateway and through DSPy's own
/// engine: the service sees the same request (method, path, the headers
/// that matter, body), streams included, and DSPy reads the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dspy_through_the_gateway_sends_what_dspy_sends_itself() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let config = RuntimeConfig {
        lm: Some(lm(&server)),
        pools: vec![pool("gw", 1), direct(pool("direct", 1))],
        ..RuntimeConfig::default()
    };
    let rt = start(config).await;
    let program = Program::new(ProgramSpec::chain_of_thought("question -> answer: int"));
    let mut seen = Vec::new();
    for p in ["gw", "direct"] {
        server.clear_requests();
        let opts = RequestOptions::python().pool(p).no_cache();
        let out = rt.run(&program, q("What is 17 + 25?"), opts).await.unwrap();
        assert_eq!(out.get("answer"), Some(&json!(42)), "{p}");
        let (head, body) = (server.heads().pop().unwrap(), server.requests().pop().unwrap());
        seen.push((head, body, out.meta.usage, out.prediction.fields));
        // Streams: the request DSPy's stream sends.
        server.clear_requests();
        let stream = rt.stream(&program, q("What is 17 + 25?"), RequestOptions::python().pool(p).no_cache());
        let (chunks, out) = support::stream_to_end(stream.await.unwrap()).await;
        assert!(!chunks.is_empty(), "{p}: chunks arrived");
        assert_eq!(out.get("answer"), Some(&json!(42)), "{p}");
        seen.push((
            server.heads().pop().unwrap(),
            server.requests().pop().unwrap(),
            out.meta.usage,
            out.prediction.fields,
        ));
    }
    let (through, itself) = seen.split_at(2);
    for ((h1, b1, u1, f1), (h2, b2, u2, f2)) in through.iter().zip(itself) {
        assert_eq!((&h1.method, &h1.path), (&h2.method, &h2.path));
        for header in ["content-type", "authorization"] {
            assert_eq!(h1.header(header), h2.header(header), "{header}");
        }
        assert_eq!(b1, b2, "the body DSPy built reaches the service unchanged");
        assert_eq!(u1, u2, "usage");
        assert_eq!(f1, f2, "fields");
    }
    assert_eq!(through[1].1["stream"], json!(true), "the stream's request streams");
    // Only the gateway pool's calls went through the gateway.
    let stats = rt.gateway_stats();
    let name = format!("gpt-4o-mini@{}", server.base_url());
    assert_eq!(stats.lms.get(&name).map(|s| s.requests), Some(2), "{stats:?}");
    rt.shutdown().await.unwrap();
}

/// Every call is priced (DSPy's price table) and counted, on both routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_carry_their_cost_on_both_routes() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let rt =
        start(RuntimeConfig { lm: Some(lm(&server)), pools: vec![pool("general", 1)], ..RuntimeConfig::default() })
            .await;
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    for opts in [RequestOptions::native(), RequestOptions::python()] {
        let out = rt.run(&program, q("What is 2 + 3?"), opts.no_cache()).await.unwrap();
        let usage = out.meta.usage.expect("usage");
        let expected = usage.prompt_tokens as f64 * 1.5e-7 + usage.completion_tokens as f64 * 6e-7;
        let cost = out.meta.cost_usd.expect("a cost");
        assert!((cost - expected).abs() < 1e-12, "{:?}: {cost} vs {expected}", out.meta.route);
        assert_eq!((out.meta.lm_calls, out.meta.lm_cache_hits), (1, 0));
    }
    let stats = rt.gateway_stats();
    let lm_stats = stats.lms.values().next().expect("one LM");
    assert_eq!(lm_stats.requests, 2);
    assert!(lm_stats.cost_usd > 0.0 && lm_stats.prompt_tokens > 0);
    rt.shutdown().await.unwrap();
}

/// Temperature 0: a Python call after a native call of the same request is
/// answered from the gateway's cache; the service sees one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_response_serves_a_python_call_after_a_native_call() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let mut config =
        RuntimeConfig { lm: Some(lm(&server)), pools: vec![pool("general", 1)], ..RuntimeConfig::default() };
    // The runtime's own result cache would answer first: this is the gateway's.
    config.cache.enabled = false;
    let rt = start(config).await;
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let native = rt.run(&program, q("What is 20 + 22?"), RequestOptions::native()).await.unwrap();
    assert_eq!(native.meta.route, Route::Native);
    assert_eq!((native.meta.lm_calls, native.meta.lm_cache_hits), (1, 0));
    let python = rt.run(&program, q("What is 20 + 22?"), RequestOptions::python()).await.unwrap();
    assert_eq!(python.meta.route, Route::Python("general".into()));
    assert_eq!(python.get_str("answer"), native.get_str("answer"));
    assert_eq!(server.requests().len(), 1, "the service saw one request");
    assert_eq!((python.meta.lm_calls, python.meta.lm_cache_hits), (1, 1), "{:?}", python.meta);
    // A request that asks for no cache is sent.
    rt.run(&program, q("What is 20 + 22?"), RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(server.requests().len(), 2);
    rt.shutdown().await.unwrap();
}

/// A tenant's budget stops it at its limit, on both routes, while another
/// tenant goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_a_tenant_while_another_continues() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let mut gateway = GatewayConfig::default();
    gateway.budgets.insert("small".into(), BudgetConfig::per(3600).requests(2));
    gateway.cache.enabled = false;
    let rt = start(RuntimeConfig {
        lm: Some(lm(&server)),
        pools: vec![pool("general", 1)],
        gateway,
        ..RuntimeConfig::default()
    })
    .await;
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let as_ = |tenant: &str, python: bool| {
        let base = if python { RequestOptions::python() } else { RequestOptions::native() };
        base.tenant(tenant).no_cache()
    };
    rt.run(&program, q("What is 1 + 1?"), as_("small", false)).await.unwrap();
    rt.run(&program, q("What is 1 + 2?"), as_("small", true)).await.unwrap();
    for python in [false, true] {
        let err = rt.run(&program, q("What is 1 + 3?"), as_("small", python)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BudgetExceeded, "{err}");
        assert!(err.message().contains("tenant `small`"), "{err}");
    }
    let before = server.requests().len();
    for python in [false, true] {
        rt.run(&program, q("What is 2 + 2?"), as_("other", python)).await.unwrap();
    }
    assert_eq!(server.requests().len(), before + 2, "the other tenant goes on");
    let stats = rt.gateway_stats();
    assert_eq!(stats.tenants["small"].refused, 2);
    assert_eq!(stats.tenants["other"].requests, 2);
    rt.shutdown().await.unwrap();
}

/// A `Retry-After` of one second is waited out before the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let busy =
        Reply::Status { code: 429, body: "{\"error\": {\"message\": \"slow down\"}}".into(), retry_after: Some(1) };
    let server =
        LmServer::start(Scripted::new(vec![busy, Reply::text("[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]")]))
            .await
            .unwrap();
    let mut cfg = lm(&server);
    cfg.max_retries = 2;
    let rt = Runtime::builder().native_only().lm(cfg).start().await.unwrap();
    let started = Instant::now();
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let out = rt.run(&program, q("2+2?"), RequestOptions::default()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("4"));
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}", started.elapsed());
    assert_eq!(server.requests().len(), 2);
    let stats = rt.gateway_stats();
    assert_eq!(stats.lms.values().next().map(|s| s.retries), Some(1));
    rt.shutdown().await.unwrap();
}

/// A 5xx from the primary LM falls back to the secondary, on both routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_lm_answers_when_the_primary_fails() {
    let primary = LmServer::start(Scripted::new(vec![Reply::status(503)])).await.unwrap();
    let secondary = LmServer::start(OfflineResponder::new()).await.unwrap();
    let mut gateway = GatewayConfig::default();
    let backup = LmConfig::new("backup-model").with_base_url(secondary.base_url()).with_api_key("sk-backup");
    gateway.lms.push(LmPolicy::new("gpt-4o-mini").max_retries(0).fallback(backup, &[ErrorKind::Lm]));
    let rt = start(RuntimeConfig {
        lm: Some(lm(&primary)),
        pools: vec![pool("general", 1)],
        gateway,
        ..RuntimeConfig::default()
    })
    .await;
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    for opts in [RequestOptions::native(), RequestOptions::python()] {
        let out = rt.run(&program, q("What is 40 + 2?"), opts.no_cache()).await.unwrap();
        assert_eq!(out.get_str("answer"), Some("42"));
    }
    assert_eq!(primary.requests().len(), 2, "each route tried the primary once");
    let fell_back = secondary.requests();
    assert_eq!(fell_back.len(), 2);
    assert!(fell_back.iter().all(|b| b["model"] == "backup-model"), "{fell_back:?}");
    assert!(secondary.heads().iter().all(|h| h.header("authorization") == Some("Bearer sk-backup")));
    let stats = rt.gateway_stats();
    assert_eq!(stats.lms[&format!("gpt-4o-mini@{}", primary.base_url())].fallbacks, 2);
    rt.shutdown().await.unwrap();
}

/// One request-rate limit for the LM holds across 4 workers and the native
/// route together: the rate the service sees never exceeds it by more than
/// one burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_workers_and_the_native_route() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let (rate, burst) = (20.0, 2u32);
    let mut gateway = GatewayConfig::default();
    gateway.lms.push(LmPolicy::new("gpt-4o-mini").requests_per_sec(rate, burst));
    gateway.cache.enabled = false;
    let rt = start(RuntimeConfig {
        lm: Some(lm(&server)),
        pools: vec![pool("general", 4)],
        gateway,
        ..RuntimeConfig::default()
    })
    .await;
    let rt = Arc::new(rt);
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let calls = (0..40).map(|i| {
        let rt = rt.clone();
        let program = program.clone();
        async move {
            let opts = if i % 2 == 0 { RequestOptions::native() } else { RequestOptions::python() };
            rt.run(&program, q(&format!("What is {i} + 1?")), opts.no_cache()).await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_ok()), "{:?}", results.iter().find(|r| r.is_err()));
    let mut arrivals: Vec<Instant> = server.timings().iter().map(|t| t.received).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 40);
    for i in 0..arrivals.len() {
        for j in i + 1..arrivals.len() {
            let span = arrivals[j].duration_since(arrivals[i]).as_secs_f64();
            // 50 ms for the trip from the gateway to the server's clock.
            let allowed = burst as f64 + rate * (span + 0.05);
            assert!(((j - i + 1) as f64) <= allowed, "{} requests in {span:.3} s", j - i + 1);
        }
    }
    let total = arrivals[39].duration_since(arrivals[0]).as_secs_f64();
    assert!(total >= (40.0 - burst as f64) / rate - 0.1, "40 calls took {total:.2} s");
    match Arc::try_unwrap(rt) {
        Ok(rt) => rt.shutdown().await.unwrap(),
        Err(_) => panic!("the runtime is still shared"),
    }
}

/// A call that would wait past its deadline for the limit fails at once
/// with `RateLimited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_get_a_slot_in_time_is_rate_limited() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let mut gateway = GatewayConfig::default();
    gateway.lms.push(LmPolicy::new("gpt-4o-mini").requests_per_sec(1.0, 1));
    gateway.cache.enabled = false;
    let rt = Runtime::builder().native_only().lm(lm(&server)).gateway(gateway).start().await.unwrap();
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    rt.run(&program, q("1?"), RequestOptions::default().no_cache()).await.unwrap();
    let short = RequestOptions::default().no_cache().timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = rt.run(&program, q("2?"), short).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert!(started.elapsed() < Duration::from_millis(150), "refused at once: {:?}", started.elapsed());
    assert_eq!(server.requests().len(), 1);
    rt.shutdown().await.unwrap();
}

/// A pool in `direct` mode bypasses the gateway: the service is called, the
/// gateway sees nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_direct_mode_bypasses_the_gateway() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let mut gateway = GatewayConfig::default();
    gateway.budgets.insert("none".into(), BudgetConfig::per(3600).requests(0));
    let rt = start(RuntimeConfig {
        lm: Some(lm(&server)),
        pools: vec![direct(pool("general", 1))],
        gateway,
        ..RuntimeConfig::default()
    })
    .await;
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let opts = RequestOptions::python().tenant("none").no_cache();
    let out = rt.run(&program, q("What is 3 + 4?"), opts).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("7"), "no budget applies to a direct pool");
    assert_eq!(server.requests().len(), 1);
    assert!(rt.gateway_stats().lms.is_empty(), "{:?}", rt.gateway_stats());
    assert_eq!(out.meta.lm_calls, 0);
    rt.shutdown().await.unwrap();
}

/// Streams through the gateway count their usage once they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_accounted_when_they_end() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let rt = Runtime::builder().native_only().lm(lm(&server)).start().await.unwrap();
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let mut stream = rt.stream(&program, q("What is 5 + 5?"), RequestOptions::default().no_cache()).await.unwrap();
    let mut last = None;
    while let Some(ev) = stream.next().await {
        last = Some(ev.unwrap());
    }
    let stats = rt.gateway_stats();
    let lm_stats = stats.lms.values().next().expect("the LM");
    assert!(lm_stats.completion_tokens > 0, "{stats:?}");
    assert!(last.is_some());
    rt.shutdown().await.unwrap();
}

/// Budgets and rate limits across the nodes of a cluster (NATS JetStream).
#[cfg(feature = "cluster")]
mod across_nodes {
    use super::*;

    /// A native-only runtime calling `server`'s LM through `gateway`, joined
    /// to the cluster at `url` as `node`.
    async fn node(
        url: &str,
        node: &str,
        server: &LmServer,
        gateway: &GatewayConfig,
    ) -> (Runtime, dspex::cluster::ClusterNode) {
        let rt = Runtime::builder().native_only().lm(lm(server)).gateway(gateway.clone()).start().await.unwrap();
        let config = dspex::ClusterConfig::new(url, node).allow_insecure(true).lease_ms(1000);
        let joined = dspex::cluster::ClusterNode::join(&rt, config).await.expect("join");
        (rt, joined)
    }

    /// Wait until `rt`'s gateway sees `want` (a condition on its stats).
    async fn until_gateway(rt: &Runtime, what: &str, want: impl Fn(&dspex::GatewayStats) -> bool) {
        let t = Instant::now();
        while !want(&rt.gateway_stats()) {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}: {:?}", rt.gateway_stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A tenant's budget holds across two nodes: what one node admitted
    /// counts on the other, and a node that restarts takes its spend back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_budget_holds_across_the_nodes_of_a_cluster() {
        let nats = crate::nats::NatsServer::start();
        let server = LmServer::start(OfflineResponder::new()).await.unwrap();
        let mut gateway = GatewayConfig::default();
        gateway.budgets.insert("t".into(), BudgetConfig::per(3600).requests(4));
        gateway.cache.enabled = false;
        let (a, a_node) = node(&nats.url(), "a", &server, &gateway).await;
        let (b, b_node) = node(&nats.url(), "b", &server, &gateway).await;
        crate::cluster::until_nodes(&a, &["a", "b"]).await;
        let program = Program::new(ProgramSpec::predict("question -> answer"));
        let as_t = || RequestOptions::native().tenant("t").no_cache();
        let spent = |n: u64| move |s: &dspex::GatewayStats| s.spend.get("t").is_some_and(|t| t.requests == n);
        for i in 0..2 {
            a.run(&program, q(&format!("a{i}?")), as_t()).await.unwrap();
        }
        until_gateway(&b, "b sees a's spend", spent(2)).await;
        for i in 0..2 {
            b.run(&program, q(&format!("b{i}?")), as_t()).await.unwrap();
        }
        let err = b.run(&program, q("b2?"), as_t()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BudgetExceeded, "{err}");
        assert!(err.message().contains("4 of 4"), "{err}");
        until_gateway(&a, "a sees b's spend", spent(4)).await;
        assert_eq!(a.run(&program, q("a2?"), as_t()).await.unwrap_err().kind(), ErrorKind::BudgetExceeded);
        a.run(&program, q("u?"), RequestOptions::native().tenant("u").no_cache()).await.unwrap();
        assert_eq!(server.requests().len(), 5, "four for t, one for u");
        // b restarts under its name: its two calls still count.
        b_node.leave().await;
        b.shutdown().await.unwrap();
        let (b, b_node) = node(&nats.url(), "b", &server, &gateway).await;
        let own = b.gateway().share(Duration::from_secs(10));
        assert_eq!(own.spend["t"].requests, 2, "its own spend, restored at join");
        until_gateway(&b, "b sees a's spend again", spent(4)).await;
        assert_eq!(b.run(&program, q("b3?"), as_t()).await.unwrap_err().kind(), ErrorKind::BudgetExceeded);
        for (rt, joined) in [(a, a_node), (b, b_node)] {
            joined.leave().await;
            rt.shutdown().await.unwrap();
        }
    }

    /// Two nodes calling one rate-limited LM split its rate: together they
    /// never exceed it by more than one burst.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_limit_holds_across_the_nodes_of_a_cluster() {
        let nats = crate::nats::NatsServer::start();
        let server = LmServer::start(OfflineResponder::new()).await.unwrap();
        let (rate, burst) = (10.0, 2u32);
        let mut gateway = GatewayConfig::default();
        gateway.lms.push(LmPolicy::new("gpt-4o-mini").requests_per_sec(rate, burst));
        gateway.cache.enabled = false;
        let (a, a_node) = node(&nats.url(), "a", &server, &gateway).await;
        let (b, b_node) = node(&nats.url(), "b", &server, &gateway).await;
        let program = Program::new(ProgramSpec::predict("question -> answer"));
        // One call each: both now call the LM, and each learns the other does.
        a.run(&program, q("warm a"), RequestOptions::native().no_cache()).await.unwrap();
        b.run(&program, q("warm b"), RequestOptions::native().no_cache()).await.unwrap();
        let shared = |s: &dspex::GatewayStats| s.lm_nodes.values().next() == Some(&2);
        until_gateway(&a, "a shares the LM", shared).await;
        until_gateway(&b, "b shares the LM", shared).await;
        let warm = server.requests().len();
        let calls = (0..30).map(|i| {
            let rt = if i % 2 == 0 { &a } else { &b };
            let program = &program;
            async move { rt.run(program, q(&format!("What is {i} + 1?")), RequestOptions::native().no_cache()).await }
        });
        let results = futures_util::future::join_all(calls).await;
        assert!(results.iter().all(|r| r.is_ok()), "{:?}", results.iter().find(|r| r.is_err()));
        let mut arrivals: Vec<Instant> = server.timings().iter().skip(warm).map(|t| t.received).collect();
        arrivals.sort();
        assert_eq!(arrivals.len(), 30);
        for i in 0..arrivals.len() {
            for j in i + 1..arrivals.len() {
                let span = arrivals[j].duration_since(arrivals[i]).as_secs_f64();
                let allowed = burst as f64 + rate * (span + 0.05);
                assert!(((j - i + 1) as f64) <= allowed, "{} requests in {span:.3} s", j - i + 1);
            }
        }
        let total = arrivals[29].duration_since(arrivals[0]).as_secs_f64();
        assert!(total >= (30.0 - burst as f64) / rate - 0.1, "30 calls took {total:.2} s");
        for (rt, joined) in [(a, a_node), (b, b_node)] {
            joined.leave().await;
            rt.shutdown().await.unwrap();
        }
    }
}

/// An LM behind HTTPS with an internal CA. With `ca_file` the gateway
/// trusts it, for native calls and DSPy's alike (the worker never sees
/// TLS); without it a call fails at once, a transport error no retry can
/// help that says how to fix it; a `ca_file` that is not one stops the
/// runtime at start.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_lm_is_trusted_through_the_gateways_ca_file() {
    use dspex::native::lm::server::TlsIdentity;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let read = |f: &str| std::fs::read(fixtures.join(f)).expect("TLS fixture");
    let identity = TlsIdentity::from_pem(read("server.pem"), read("server.key"));
    let server = LmServer::start_tls(OfflineResponder::new(), &identity).await.unwrap();
    assert!(server.base_url().starts_with("https://127.0.0.1:"), "{}", server.base_url());
    let config = |ca_file: Option<std::path::PathBuf>| {
        let mut config =
            RuntimeConfig { lm: Some(lm(&server)), pools: vec![pool("general", 1)], ..RuntimeConfig::default() };
        config.gateway.ca_file = ca_file;
        config.cache.enabled = false;
        config
    };
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let routes = [RequestOptions::native(), RequestOptions::python()];

    let rt = start(config(Some(fixtures.join("ca.pem")))).await;
    for opts in routes.clone() {
        let out = rt.run(&program, q("What is 3 + 4?"), opts.no_cache()).await.unwrap();
        assert_eq!(out.get_str("answer"), Some("7"), "{:?}", out.meta.route);
        assert_eq!(out.meta.lm_calls, 1);
    }
    // A stream, too: server-sent events in HTTP/2 data frames.
    let stream = rt.stream(&program, q("What is 3 + 4?"), RequestOptions::python().no_cache()).await.unwrap();
    let (chunks, out) = support::stream_to_end(stream).await;
    assert!(!chunks.is_empty(), "chunks arrived");
    assert_eq!(out.get_str("answer"), Some("7"));
    assert_eq!(server.requests().len(), 3, "every call reached the LM over HTTPS");
    assert!(server.heads().iter().all(|h| h.version == "HTTP/1.1"), "pooled HTTP/1.1 connections by default");
    rt.shutdown().await.unwrap();

    // HTTP/2 when asked for: one connection carries the calls.
    let mut h2 = config(Some(fixtures.join("ca.pem")));
    h2.gateway.http2 = true;
    let rt = start(h2).await;
    for opts in routes.clone() {
        let out = rt.run(&program, q("What is 3 + 4?"), opts.no_cache()).await.unwrap();
        assert_eq!(out.get_str("answer"), Some("7"), "{:?}", out.meta.route);
    }
    let stream = rt.stream(&program, q("What is 3 + 4?"), RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(support::stream_to_end(stream).await.1.get_str("answer"), Some("7"));
    let heads = server.heads();
    assert_eq!(heads.len(), 6);
    assert!(heads[3..].iter().all(|h| h.version == "HTTP/2"), "{heads:?}");
    rt.shutdown().await.unwrap();

    let rt = start(config(None)).await;
    for opts in routes {
        let started = Instant::now();
        let e = rt.run(&program, q("What is 3 + 4?"), opts.no_cache()).await.unwrap_err();
        assert!(e.to_string().contains("gateway.ca_file"), "{e}");
        assert!(!e.is_retryable(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "not retried: {:?}", started.elapsed());
    }
    assert_eq!(server.requests().len(), 6, "no request got through");
    rt.shutdown().await.unwrap();

    let no_ca = Runtime::from_config(RuntimeConfig {
        python: Some(support::python()),
        ..config(Some(fixtures.join("server.key")))
    })
    .await
    .unwrap_err();
    assert_eq!(no_ca.kind(), ErrorKind::Config, "{no_ca}");
    assert!(no_ca.to_string().contains("server.key"), "{no_ca}");
}

/// A forward proxy for plain-HTTP targets: each request's line is recorded,
/// then the request goes on to its origin on a connection of its own
/// (origin-form, `Connection: close`) and the answer comes back whole.
struct Proxy {
    addr: std::net::SocketAddr,
    lines: Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = lines.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Proxy::relay(conn, seen.clone()));
            }
        });
        Proxy { addr, lines, task }
    }

    async fn relay(conn: tokio::net::TcpStream, lines: Arc<parking_lot::Mutex<Vec<String>>>) -> std::io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let (read, mut write) = conn.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let mut parts = line.split_whitespace();
            let (method, target, version) =
                (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (authority, path) = target
                .strip_prefix("http://")
                .and_then(|t| t.split_once('/'))
                .ok_or_else(|| bad("not absolute-form"))?;
            let mut head = format!("{method} /{path} {version}\r\n");
            let mut length = 0;
            loop {
                let mut header = String::new();
                read.read_line(&mut header).await?;
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').ok_or_else(|| bad("not a header"))?;
                let name = name.trim().to_ascii_lowercase();
                if name == "content-length" {
                    length = value.trim().parse().map_err(|_| bad("length"))?;
                }
                if name != "connection" && name != "proxy-connection" {
                    head.push_str(header);
                    head.push_str("\r\n");
                }
            }
            head.push_str("Connection: close\r\n\r\n");
            let mut body = vec![0; length];
            read.read_exact(&mut body).await?;
            lines.lock().push(line.trim_end().to_string());
            let mut origin = tokio::net::TcpStream::connect(authority).await?;
            origin.write_all(head.as_bytes()).await?;
            origin.write_all(&body).await?;
            origin.shutdown().await?;
            let mut answer = Vec::new();
            origin.read_to_end(&mut answer).await?;
            write.write_all(&answer).await?;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// With a proxy in the environment (`HTTP_PROXY`), the calls of both routes
/// go through it, streams included, and hosts in `NO_PROXY` are called
/// directly — as DSPy's own engine does. The runtime runs in a child process
/// (`proxied_runtime_child`) so the variables reach no other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lm_behind_a_proxy_is_called_through_it() {
    let server = LmServer::start(OfflineResponder::new()).await.unwrap();
    let proxy = Proxy::start().await;
    let child = |no_proxy: &'static str| {
        let (base_url, proxy_url) = (server.base_url(), format!("http://{}", proxy.addr));
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "gateway::proxied_runtime_child", "--nocapture", "--test-threads=1"])
                .env("DSPEX_PROXIED_CHILD_LM", base_url)
                // Only the proxy settings of this test, whatever the machine's are.
                .env_remove("http_proxy")
                .env_remove("no_proxy")
                .env_remove("ALL_PROXY")
                .env_remove("all_proxy")
                .env("HTTP_PROXY", proxy_url)
                .env("NO_PROXY", no_proxy)
                .output()
                .unwrap()
        })
    };
    let succeeded = |out: &std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("PROXIED CHILD OK"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    succeeded(&child("").await.unwrap());
    let target = format!("POST {}/chat/completions HTTP/1.1", server.base_url());
    assert_eq!(*proxy.lines.lock(), vec![target; 3], "native, Python and a stream, each through the proxy");
    assert_eq!(server.requests().len(), 3);
    assert!(server.heads().iter().all(|h| h.header("authorization") == Some("Bearer sk-gateway-test")));

    succeeded(&child("127.0.0.1").await.unwrap());
    assert_eq!(proxy.lines.lock().len(), 3, "NO_PROXY: straight to the LM");
    assert_eq!(server.requests().len(), 6);
}

#[test]
#[ignore = "helper process, started by an_lm_behind_a_proxy_is_called_through_it"]
fn proxied_runtime_child() {
    let Ok(base_url) = std::env::var("DSPEX_PROXIED_CHILD_LM") else {
        return;
    };
    support::runtime().block_on(async {
        let lm =
            LmConfig::new("gpt-4o-mini").with_base_url(base_url).with_api_key("sk-gateway-test").with_temperature(0.0);
        let mut config = RuntimeConfig { lm: Some(lm), pools: vec![pool("general", 1)], ..RuntimeConfig::default() };
        config.cache.enabled = false;
        let rt = start(config).await;
        let program = Program::new(ProgramSpec::predict("question -> answer"));
        for opts in [RequestOptions::native(), RequestOptions::python()] {
            let out = rt.run(&program, q("What is 3 + 4?"), opts.no_cache()).await.unwrap();
            assert_eq!(out.get_str("answer"), Some("7"), "{:?}", out.meta.route);
            assert_eq!(out.meta.lm_calls, 1, "through the gateway");
        }
        let stream = rt.stream(&program, q("What is 3 + 4?"), RequestOptions::python().no_cache()).await.unwrap();
        assert_eq!(support::stream_to_end(stream).await.1.get_str("answer"), Some("7"));
        rt.shutdown().await.unwrap();
        println!("PROXIED CHILD OK");
    });
}
