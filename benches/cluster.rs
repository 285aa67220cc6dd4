//! The cluster, in one run, over a real `nats-server` on loopback and
//! `dspex serve` nodes in their own processes:
//!
//! - a no-op worker command from one client runtime, to its own local pool
//!   and to the same pool on another node (p50, p99; the difference is the
//!   remote overhead: NATS, MessagePack, the serving node's dispatch);
//! - LM-bound throughput: DSPy `Predict` over a stub LM that answers after
//!   100 ms, sent by a client-only runtime to 1, 2 and 3 serving nodes (one
//!   worker × 10 concurrent requests each: 100 requests/s ideal per node);
//! - session takeover: sessions owned by one node, whose NATS connection
//!   is then cut (its subscriptions vanish, as when its process is killed);
//!   the first request for each from another node — forward, "no
//!   responders", compare-and-set claim, start — against a request to a
//!   session that node already holds, and one forwarded to a live owner.
//!
//! Run: `cargo bench --features cluster --bench cluster`.

mod common;
#[path = "../tests/integration/nats.rs"]
mod nats;

use std::time::{Duration, Instant};

use common::{machine, percentile, python, sorted};
use dspex::cluster::ClusterNode;
use dspex::native::lm::{offline::OfflineResponder, server::LmServer};
use dspex::{
    ClusterConfig, LmConfig, Map, PoolConfig, Program, ProgramSpec, RequestOptions, Runtime, RuntimeConfig,
    SessionOptions,
};
use nats::{Link, NatsServer, ServeNode};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_dspex");
const CALLS: usize = 2000;

fn cluster_config(url: &str, node: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(url, node).allow_insecure(true).lease_ms(1000).offer(Vec::<String>::new());
    c.keepalive_ms = 100;
    c
}

async fn until_nodes(rt: &Runtime, n: usize) {
    let t = Instant::now();
    while rt.nodes().len() < n {
        assert!(t.elapsed() < Duration::from_secs(30), "only {:?} joined", rt.nodes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No-op latencies (µs, sorted) with `opts`.
async fn noop_latencies(rt: &Runtime, opts: &RequestOptions) -> Vec<f64> {
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        rt.call("general", "noop", json!({}), opts.clone()).await.expect("noop");
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    sorted(times)
}

/// Requests per second of `n` concurrent DSPy `Predict` runs on other nodes.
async fn lm_bound(rt: &Runtime, n: usize) -> (f64, usize) {
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (rt, program) = (rt.clone(), program.clone());
            tokio::spawn(async move {
                let q = json!({"question": format!("What is {i} + 1?")});
                let opts = RequestOptions::python().no_cache().prefer_remote().timeout(Duration::from_secs(60));
                rt.run(&program, q.as_object().cloned().unwrap_or_default(), opts).await.map(|_| ())
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        if task.await.map(|r| r.is_err()).unwrap_or(true) {
            failed += 1;
        }
    }
    (n as f64 / t.elapsed().as_secs_f64(), failed)
}

const SESSIONS: usize = 100;

fn question() -> Map {
    json!({"question": "What is 2 + 3?"}).as_object().cloned().unwrap_or_default()
}

/// A native-only runtime with `lm`, in the cluster at `url` as `node`.
async fn native_node(url: &str, node: &str, lm: &LmConfig) -> (Runtime, ClusterNode) {
    let config = RuntimeConfig { default_pool: false, lm: Some(lm.clone()), ..RuntimeConfig::default() };
    let rt = Runtime::from_config(config).await.expect("runtime");
    let joined = ClusterNode::join(&rt, cluster_config(url, node)).await.expect("join");
    (rt, joined)
}

/// Session takeover (µs, sorted): forwarded to a live owner, the first
/// request after the owner's death (the takeover), then requests to the
/// sessions now held here.
async fn takeover(nats: &NatsServer) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let lm_server = LmServer::start(OfflineResponder::new()).await.expect("LM");
    let lm = LmConfig::new("offline").with_base_url(lm_server.base_url()).with_api_key("bench");
    let link = Link::to(nats.port).await;
    let (owner, _owner_joined) = native_node(&link.url(), "owner", &lm).await;
    let (taker, taker_joined) = native_node(&nats.url(), "taker", &lm).await;
    until_nodes(&taker, 2).await;
    let opts = RequestOptions::native().no_cache();
    let mut ids = Vec::new();
    for i in 0..SESSIONS {
        let s = owner.sessions().create(SessionOptions::default().id(format!("s{i}"))).await.expect("session");
        s.define("chat", ProgramSpec::predict("history: dspy.History, question -> answer")).await.expect("define");
        s.run_with("chat", question(), opts.clone()).await.expect("a turn");
        ids.push(s.id().to_string());
    }
    let mut forwarded = Vec::new();
    let mut handles = Vec::new();
    for id in &ids {
        let s = taker.sessions().open(id).await.expect("open");
        let t = Instant::now();
        s.run_with("chat", question(), opts.clone()).await.expect("forwarded");
        forwarded.push(t.elapsed().as_secs_f64() * 1e6);
        handles.push(s);
    }
    link.cut();
    let mut took_over = Vec::new();
    for s in &handles {
        let t = Instant::now();
        s.run_with("chat", question(), opts.clone()).await.expect("taken over");
        took_over.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(s.owner(), None, "the taker holds the session");
    }
    let mut held = Vec::new();
    for s in &handles {
        let t = Instant::now();
        s.run_with("chat", question(), opts.clone()).await.expect("held");
        held.push(t.elapsed().as_secs_f64() * 1e6);
    }
    taker_joined.leave().await;
    taker.shutdown().await.expect("shutdown");
    owner.shutdown().await.expect("shutdown");
    (sorted(forwarded), sorted(took_over), sorted(held))
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    tokio.block_on(async {
        println!("cluster on loopback NATS — {}", machine());
        let py = python().expect("benchmarks need the project's .venv (scripts/setup-python)");
        let nats = NatsServer::start();
        let url = nats.url();

        // 1. Remote overhead: one client with a local pool, and node a.
        let a = ServeNode::start(BIN, &url, "a", 1, 10);
        let rt = Runtime::builder().python(py.clone()).pool(PoolConfig::new("general").size(1)).start().await.expect("runtime");
        let joined = ClusterNode::join(&rt, cluster_config(&url, "client")).await.expect("join");
        until_nodes(&rt, 2).await;
        let local_opts = RequestOptions::default();
        let remote_opts = RequestOptions::default().on_node("a");
        // Warm up both paths.
        let _ = noop_latencies(&rt, &local_opts).await;
        let _ = noop_latencies(&rt, &remote_opts).await;
        let local = noop_latencies(&rt, &local_opts).await;
        let remote = noop_latencies(&rt, &remote_opts).await;
        let (l50, l99, r50, r99) =
            (percentile(&local, 0.5), percentile(&local, 0.99), percentile(&remote, 0.5), percentile(&remote, 0.99));
        let floor: Vec<f64> = dspex::cluster::nats_round_trip(&cluster_config(&url, "probe"), CALLS)
            .await
            .expect("NATS round trip")
            .iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect();
        let floor = sorted(floor);
        let (f50, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
        println!(
            "no-op from one client ({CALLS} each): local pool p50 {l50:.0} µs, p99 {l99:.0} µs; on node a p50 {r50:.0} µs, p99 {r99:.0} µs; remote overhead p50 {:.0} µs",
            r50 - l50
        );
        println!(
            "  bare NATS request/reply on the same server, same run: p50 {f50:.0} µs, p99 {f99:.0} µs — the overhead is {:.2}× that floor",
            (r50 - l50) / f50.max(1.0)
        );
        joined.leave().await;
        rt.shutdown().await.expect("shutdown");

        // 2. LM-bound throughput over 1, 2, 3 serving nodes.
        let lm_server = LmServer::start(OfflineResponder::with_latency(Duration::from_millis(100))).await.expect("LM");
        let lm = LmConfig::new("offline").with_base_url(lm_server.base_url()).with_api_key("bench");
        let client = Runtime::builder().python(py).lm(lm).native_only().start().await.expect("client runtime");
        let joined = ClusterNode::join(&client, cluster_config(&url, "lm-client")).await.expect("join");
        let mut nodes = vec![a];
        let mut rows = Vec::new();
        let mut one = 0.0;
        for n in 1..=3usize {
            if nodes.len() < n {
                nodes.push(ServeNode::start(BIN, &url, &format!("n{n}"), 1, 10));
            }
            until_nodes(&client, n + 1).await;
            let _ = lm_bound(&client, 100 * n).await; // warm-up: DSPy's first LM calls build clients
            let (rate, failed) = lm_bound(&client, 300 * n).await;
            if n == 1 {
                one = rate;
            }
            println!(
                "DSPy Predict, 100 ms stub LM, {n} serving node(s) × 1 worker × 10: {rate:.0} requests/s ({:.2}× one node's; ideal {:.0}/s), {failed} failed",
                rate / one.max(1e-9),
                100.0 * n as f64
            );
            rows.push(json!({"nodes": n, "rate": rate, "vs_one": rate / one.max(1e-9), "failed": failed}));
        }
        joined.leave().await;
        client.shutdown().await.expect("shutdown");
        drop(nodes);

        // 3. Session takeover after the owner's death.
        let (forwarded, took_over, held) = takeover(&nats).await;
        let (w50, t50, t90, h50) =
            (percentile(&forwarded, 0.5), percentile(&took_over, 0.5), percentile(&took_over, 0.9), percentile(&held, 0.5));
        let slowest = took_over.last().copied().unwrap_or_default();
        let over_100ms = took_over.iter().filter(|t| **t > 100_000.0).count();
        println!(
            "session turn ({SESSIONS} sessions, native Predict, instant stub LM): held here p50 {h50:.0} µs; forwarded to the live owner p50 {w50:.0} µs; first turn after the owner's death (takeover) p50 {t50:.0} µs, p90 {t90:.0} µs — {:.1}× a held session's; slowest {:.0} ms ({over_100ms} over 100 ms: sent before the server saw the connection close, they wait out the owner's lease)",
            t50 / h50.max(1.0),
            slowest / 1000.0
        );
        common::write_results(
            "cluster",
            &json!({
                "machine": machine(),
                "noop_us": {"local": {"p50": l50, "p99": l99}, "remote": {"p50": r50, "p99": r99}, "overhead_p50": r50 - l50,
                            "bare_nats": {"p50": f50, "p99": f99}},
                "lm_bound": rows,
                "session_turn_us": {"held_p50": h50, "forwarded_p50": w50,
                                    "takeover": {"p50": t50, "p90": t90, "max": slowest, "over_100ms": over_100ms}},
            }),
        );
    });
}
