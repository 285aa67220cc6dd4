//! DSPy `Predict` through the runtime's LM gateway vs DSPy's own engine, in
//! one run: two pools of the same runtime, one sending its workers' LM calls
//! through the gateway (`lm_calls = "gateway"`), one letting DSPy call the
//! service itself (`lm_calls = "direct"`), against the same local LM server.
//!
//! 1. Latency: sequential calls to an instant LM, the two pools alternating
//!    call by call (ABBA); p50 and p99 of the whole request, and the median
//!    difference within a pair; over HTTP and over HTTPS (every hosted LM
//!    is HTTPS: DSPy's engine does TLS in each worker, the gateway once);
//!    over HTTPS once more with the gateway speaking HTTP/2 (`http2 = true`).
//!    Then in blocks: 8 blocks of 250 sequential calls per pool, the pools
//!    alternating block by block (HTTP, then HTTPS): a caller that keeps
//!    calling one pool, without the other pool's call in between.
//! 2. Throughput: 1000 concurrent calls to an LM answering in 100 ms, the
//!    pools alternating round by round, with 2 workers × 50 per pool (CPU to
//!    spare on 2 vCPU) and 2 × 100 (CPU-bound); and the CPU each call cost
//!    the whole process tree, runtime and workers; 2 × 50 over HTTPS too.
//!
//! 3. The first call of a new worker (each recycled after one request), over
//!    HTTPS: the cost of DSPy's engine opening its own connection, where
//!    the gateway's pooled one is already open.
//!
//! The LM server runs on a thread and Tokio runtime of its own, as an LM
//! service is another machine.
//!
//! The gateway's cache is off (every call is sent), as are its limits.
//!
//! Run: `cargo bench --bench gateway`.

mod common;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{fmt_ns, machine, percentile, python, sorted};
use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::TlsIdentity;
use dspex::{LmCalls, LmConfig, Map, PoolConfig, Program, ProgramSpec, RequestOptions, Runtime, RuntimeConfig};
use serde_json::json;

fn question(i: usize) -> Map {
    json!({"question": format!("What is {i} + 1?")}).as_object().cloned().unwrap_or_default()
}

fn pools(concurrency: u32) -> Vec<PoolConfig> {
    let mut gw = common::pool("gateway").size(2).concurrency(concurrency).standby(0);
    gw.max_queue = 10_000;
    let mut direct = common::pool("direct").size(2).concurrency(concurrency).standby(0);
    direct.max_queue = 10_000;
    direct.lm_calls = LmCalls::Direct;
    vec![gw, direct]
}

async fn start(server: &common::LmThread, concurrency: u32) -> Runtime {
    start_with(server, pools(concurrency), false).await
}

/// A runtime of `pools` on `server`'s LM, both caches off, the gateway
/// offering HTTP/2 to HTTPS LMs when `http2`.
async fn start_with(server: &common::LmThread, pools: Vec<PoolConfig>, http2: bool) -> Runtime {
    let mut config = RuntimeConfig {
        lm: Some(LmConfig::new("gpt-4o-mini").with_base_url(server.base_url()).with_api_key("bench")),
        pools,
        python: python(),
        ..RuntimeConfig::default()
    };
    config.gateway.cache.enabled = false;
    config.gateway.http2 = http2;
    config.cache.enabled = false;
    Runtime::from_config(config).await.expect("runtime")
}

/// Both pools with one worker that is recycled after each request.
async fn start_recycling(server: &common::LmThread) -> Runtime {
    let recycled = pools(1)
        .into_iter()
        .map(|mut p| {
            p.size = 1;
            p.max_requests = Some(1);
            p
        })
        .collect();
    start_with(server, recycled, false).await
}

/// The pid of `pool`'s worker once it is ready.
async fn ready_worker(runtime: &Runtime, pool: &str) -> Option<u32> {
    let tree = runtime.tree().await.ok()?;
    let name = format!("worker:{pool}:0");
    tree.walk().into_iter().find(|n| n.name == name && n.status == "ready").and_then(|n| n.info.pid)
}

/// 20 rounds: a call to each pool (the order alternating), each served by
/// a worker that has served nothing yet; then wait for both to be replaced.
async fn first_calls(runtime: &Runtime, program: &Program, url: &str) -> serde_json::Value {
    let mut lat = [Vec::new(), Vec::new()];
    let mut served: [Option<u32>; 2] = [None, None];
    // One call each first: the gateway's connection to the LM opens here.
    for pool in ["gateway", "direct"] {
        runtime.run(program, question(0), opts(pool)).await.expect("predict");
    }
    for round in 0..20 {
        for (k, pool) in ["gateway", "direct"].iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let pid = ready_worker(runtime, pool).await;
                if pid.is_some() && pid != served[k] {
                    served[k] = pid;
                    break;
                }
                assert!(Instant::now() < deadline, "{pool}: no fresh worker");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let pool = ["gateway", "direct"][k];
            let t = Instant::now();
            runtime.run(program, question(round), opts(pool)).await.expect("predict");
            lat[k].push(t.elapsed().as_nanos() as f64);
        }
    }
    let [gw, direct] = lat.map(sorted);
    let (g, d) = (percentile(&gw, 0.5), percentile(&direct, 0.5));
    println!(
        "first call of a new worker, instant LM at {url} ({} each): gateway p50 {} | direct p50 {} | gateway/direct {:.2}×",
        gw.len(),
        fmt_ns(g),
        fmt_ns(d),
        g / d
    );
    json!({"url": url, "gateway_p50_ns": g, "direct_p50_ns": d, "gateway_ns": gw, "direct_ns": direct})
}

fn opts(pool: &str) -> RequestOptions {
    RequestOptions::python().pool(pool).no_cache().timeout(Duration::from_secs(120))
}

fn main() {
    // DSPy's own engine trusts the test CA of the HTTPS LM the way it trusts
    // any CA, through SSL_CERT_FILE (the workers inherit it); the gateway
    // trusts what DSPy trusts (the system's store, which SSL_CERT_FILE
    // replaces). Set before any thread starts.
    let tls = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    std::env::set_var("SSL_CERT_FILE", tls.join("ca.pem"));
    let identity = TlsIdentity::from_pem(
        std::fs::read(tls.join("server.pem")).expect("TLS fixture"),
        std::fs::read(tls.join("server.key")).expect("TLS fixture"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        println!("DSPy Predict through the LM gateway vs DSPy's own engine — {}", machine());
        let program = Program::new(ProgramSpec::predict("question -> answer"));
        let mut results = serde_json::Map::new();

        // 1. Latency, instant LM, over HTTP and HTTPS.
        for (key, server, http2) in [
            ("latency", common::LmThread::start(OfflineResponder::new(), None), false),
            ("latency_https", common::LmThread::start(OfflineResponder::new(), Some(identity.clone())), false),
            ("latency_https_h2", common::LmThread::start(OfflineResponder::new(), Some(identity.clone())), true),
        ] {
            if http2 {
                println!("(the gateway offering HTTP/2:)");
            }
            let runtime = start_with(&server, pools(4), http2).await;
            results.insert(key.into(), latency(&runtime, &program, &server.base_url()).await);
            if !http2 {
                let blocks_key = if key == "latency" { "latency_blocks" } else { "latency_blocks_https" };
                results.insert(blocks_key.into(), blocks(&runtime, &program, &server.base_url()).await);
            }
            runtime.shutdown().await.expect("shutdown");
        }

        // 2. 1000 concurrent calls, 100 ms LM: 2 workers × 50 per pool (CPU to
        // spare) over HTTP and HTTPS, then 2 × 100 (CPU-bound on 2 vCPU).
        for (key, concurrency, tls) in
            [("concurrent", 50, None), ("concurrent_https", 50, Some(identity.clone())), ("saturated", 100, None)]
        {
            let server = common::LmThread::start(OfflineResponder::with_latency(Duration::from_millis(100)), tls);
            let runtime = start(&server, concurrency).await;
            results.insert(key.into(), concurrent(&runtime, &program, concurrency, &server.base_url()).await);
            runtime.shutdown().await.expect("shutdown");
        }
        // 3. The first call of a new worker (recycled after every request),
        // HTTPS LM: DSPy's engine opens its connection (TCP, TLS handshake),
        // the gateway's pooled one is already open.
        let server = common::LmThread::start(OfflineResponder::new(), Some(identity.clone()));
        let runtime = start_recycling(&server).await;
        results.insert("first_call_https".into(), first_calls(&runtime, &program, &server.base_url()).await);
        runtime.shutdown().await.expect("shutdown");
        common::write_results("gateway", &json!({"machine": machine(), "results": results}));
    });
}

/// Sequential calls, the pools alternating call by call (which goes first
/// alternating too): p50 and p99 of each, and the median of the per-pair
/// difference (gateway − direct).
async fn latency(runtime: &Runtime, program: &Program, url: &str) -> serde_json::Value {
    let mut lat = [Vec::new(), Vec::new()];
    let mut diff = Vec::new();
    for i in 0..650 {
        let mut pair = [0.0; 2];
        // Which pool goes first alternates pair by pair: the call right after
        // the other pool's shares the CPU with that worker's last work.
        for k in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let t = Instant::now();
            runtime.run(program, question(i), opts(["gateway", "direct"][k])).await.expect("predict");
            pair[k] = t.elapsed().as_nanos() as f64;
        }
        if i >= 50 {
            lat[0].push(pair[0]);
            lat[1].push(pair[1]);
            diff.push(pair[0] - pair[1]);
        }
    }
    let [gw, direct] = lat.map(sorted);
    let d50 = percentile(&sorted(diff), 0.5);
    let (line, mut result) = compared(&gw, &direct, url);
    println!(
        "one call at a time, instant LM at {line} | gateway − direct per pair, median {}{}",
        if d50 < 0.0 { "−" } else { "+" },
        fmt_ns(d50.abs()),
    );
    result["median_pair_difference_ns"] = json!(d50);
    result
}

/// p50 and p99 of each pool's sorted latencies, side by side: a line to
/// print and the JSON result.
fn compared(gw: &[f64], direct: &[f64], url: &str) -> (String, serde_json::Value) {
    let (gp50, gp99, dp50, dp99) =
        (percentile(gw, 0.5), percentile(gw, 0.99), percentile(direct, 0.5), percentile(direct, 0.99));
    let line = format!(
        "{url} ({} each): gateway p50 {} p99 {} | direct p50 {} p99 {} | gateway/direct p50 {:.2}×, p99 {:.2}×",
        gw.len(),
        fmt_ns(gp50),
        fmt_ns(gp99),
        fmt_ns(dp50),
        fmt_ns(dp99),
        gp50 / dp50,
        gp99 / dp99,
    );
    let result = json!({"url": url, "gateway_p50_ns": gp50, "gateway_p99_ns": gp99, "direct_p50_ns": dp50,
                        "direct_p99_ns": dp99});
    (line, result)
}

/// Sequential calls in blocks of 250 per pool, the pools alternating block
/// by block (8 blocks each): p50 and p99 of each.
async fn blocks(runtime: &Runtime, program: &Program, url: &str) -> serde_json::Value {
    let mut lat = [Vec::new(), Vec::new()];
    for block in 0..16 {
        let k = matches!(block % 4, 1 | 2) as usize; // gateway, direct, direct, gateway, ...
        let pool = ["gateway", "direct"][k];
        for i in 0..250 {
            let t = Instant::now();
            runtime.run(program, question(i), opts(pool)).await.expect("predict");
            lat[k].push(t.elapsed().as_nanos() as f64);
        }
    }
    let [gw, direct] = lat.map(sorted);
    let (line, result) = compared(&gw, &direct, url);
    println!("in blocks of 250 calls, instant LM at {line}");
    result
}

/// 1000 calls at once to each pool, alternating pools burst by burst: the
/// median rate of 3 bursts each, and the CPU a call cost the whole process
/// tree (runtime and Python workers).
async fn concurrent(runtime: &Runtime, program: &Program, concurrency: u32, url: &str) -> serde_json::Value {
    let burst = |pool: &'static str| {
        let runtime = runtime.clone();
        let program = program.clone();
        async move {
            let cpu = common::tree_cpu();
            let t = Instant::now();
            let tasks: Vec<_> = (0..1000)
                .map(|i| {
                    let (rt, program) = (runtime.clone(), program.clone());
                    tokio::spawn(async move { rt.run(&program, question(i), opts(pool)).await.map(|_| ()) })
                })
                .collect();
            let mut failed = 0;
            for t in tasks {
                if t.await.map(|r| r.is_err()).unwrap_or(true) {
                    failed += 1;
                }
            }
            // The clock stops before the second /proc walk.
            let rate = 1000.0 / t.elapsed().as_secs_f64();
            let cpu_per_call = (common::tree_cpu().saturating_sub(cpu)).as_nanos() as f64 / 1000.0;
            (rate, cpu_per_call, failed)
        }
    };
    // Warm both up (DSPy builds its client on the first call).
    let _ = burst("gateway").await;
    let _ = burst("direct").await;
    let (mut rates, mut cpus, mut failures) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()], [0, 0]);
    for _ in 0..3 {
        for (k, pool) in ["gateway", "direct"].into_iter().enumerate() {
            let (rate, cpu, failed) = burst(pool).await;
            rates[k].push(rate);
            cpus[k].push(cpu);
            failures[k] += failed;
        }
    }
    let median = |v: &Vec<f64>| percentile(&sorted(v.clone()), 0.5);
    let (g, d, gc, dc) = (median(&rates[0]), median(&rates[1]), median(&cpus[0]), median(&cpus[1]));
    println!(
        "1000 concurrent calls, 100 ms LM at {url}, 2 workers × {concurrency} (median of 3 rounds): gateway {g:.0}/s ({} failed), \
         direct {d:.0}/s ({} failed); gateway/direct {:.2}× (rounds: gateway {:?}, direct {:?}); \
         CPU per call gateway {} direct {} ({:.2}×)",
        failures[0],
        failures[1],
        g / d,
        rates[0].iter().map(|r| r.round()).collect::<Vec<_>>(),
        rates[1].iter().map(|r| r.round()).collect::<Vec<_>>(),
        fmt_ns(gc),
        fmt_ns(dc),
        gc / dc,
    );
    json!({"url": url, "concurrency_per_worker": concurrency, "gateway_ops": g, "direct_ops": d,
           "gateway_rounds": rates[0], "direct_rounds": rates[1],
           "gateway_cpu_per_call_ns": gc, "direct_cpu_per_call_ns": dc,
           "gateway_failed": failures[0], "direct_failed": failures[1]})
}
