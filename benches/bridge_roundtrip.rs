//! Python bridge round trips, beside the floor (a minimal Python echo of the
//! same framing), in one run.
//!
//! For the real worker (`python -m dspex_worker`, command `noop`) and the
//! floor (`benches/python/echo_floor.py`): MessagePack and JSON, 1 and 2
//! workers, 1 and 64 requests in flight. Reports p50/p99 latency and ops/s,
//! and the worker's share of the floor's throughput. Then worker
//! start-to-ready time with DSPy imported, alone and 8 at once.
//!
//! Run: `cargo bench --bench bridge_roundtrip`.

mod common;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fmt_ns, machine, percentile, python, sorted};
use dspex_bridge::{worker_sources, CallOptions, Codec, Worker, WorkerConfig};
use serde_json::{json, Value};

const RUN: Duration = Duration::from_millis(1500);

fn config(name: &str, floor: bool, preload: bool) -> WorkerConfig {
    let py = python().expect("benchmarks need the project's .venv (scripts/setup-python)");
    let mut c = WorkerConfig::new(name, py);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    c.python_path = vec![worker_sources(&root.join("target/bench-cache")).expect("worker sources")];
    c.preload_dspy = preload;
    c.concurrency = 4;
    if let Some(spin) = std::env::var("DSPEX_WORKER_SPIN_US").ok().and_then(|s| s.parse().ok()) {
        c.spin = Duration::from_micros(spin);
    }
    if floor {
        c.args = vec![root.join("benches/python/echo_floor.py").into()];
    }
    // The floor script reads the same variable, so both sides poll alike.
    c.env.push(("DSPEX_WORKER_SPIN_US".into(), c.spin.as_micros().to_string()));
    c
}

struct Result_ {
    p50: f64,
    p99: f64,
    ops: f64,
}

async fn drive(workers: &[Worker], depth: usize, codec: Codec) -> Result_ {
    let workers = Arc::new(workers.to_vec());
    let opts = CallOptions { codec: Some(codec.into()), ..Default::default() };
    // Warm up.
    for w in workers.iter() {
        for _ in 0..200 {
            w.call("noop", json!({}), &opts).await.expect("noop");
        }
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..depth)
        .map(|i| {
            let workers = workers.clone();
            let opts = opts.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                let w = &workers[i % workers.len()];
                while started.elapsed() < RUN {
                    let t = Instant::now();
                    w.call("noop", json!({}), &opts).await.expect("noop");
                    lat.push(t.elapsed().as_nanos() as f64);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = all.len() as f64 / secs;
    let all = sorted(all);
    Result_ { p50: percentile(&all, 0.5), p99: percentile(&all, 0.99), ops }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        println!("Python bridge round trips (noop) — {}", machine());
        println!(
            "{:<8} {:<8} {:>7} {:>5} | {:>10} {:>10} {:>10} | {:>10} {:>10} | {:>8}",
            "codec", "", "workers", "depth", "worker p50", "worker p99", "worker/s", "floor p50", "floor/s", "of floor"
        );
        let mut rows = Vec::new();
        for codec in [Codec::MsgPack, Codec::Json] {
            for n in [1usize, 2] {
                let real: Vec<Worker> = futures_util::future::join_all(
                    (0..n).map(|i| Worker::spawn(config(&format!("worker:bench:{i}"), false, false))),
                )
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("workers");
                let floor: Vec<Worker> = futures_util::future::join_all(
                    (0..n).map(|i| Worker::spawn(config(&format!("floor:{i}"), true, false))),
                )
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("floor");
                for depth in [1usize, 64] {
                    let w = drive(&real, depth, codec).await;
                    let f = drive(&floor, depth, codec).await;
                    let share = w.ops / f.ops;
                    println!(
                        "{:<8} {:<8} {:>7} {:>5} | {:>10} {:>10} {:>10.0} | {:>10} {:>10.0} | {:>7.0}%",
                        codec.to_string(),
                        "",
                        n,
                        depth,
                        fmt_ns(w.p50),
                        fmt_ns(w.p99),
                        w.ops,
                        fmt_ns(f.p50),
                        f.ops,
                        share * 100.0
                    );
                    rows.push(json!({"codec": codec.to_string(), "workers": n, "depth": depth,
                        "worker": {"p50_ns": w.p50, "p99_ns": w.p99, "ops": w.ops},
                        "floor": {"p50_ns": f.p50, "p99_ns": f.p99, "ops": f.ops}, "share_of_floor": share}));
                }
                for w in real.iter().chain(floor.iter()) {
                    w.stop(Duration::from_secs(1)).await;
                }
            }
        }
        // Start-to-ready with DSPy imported.
        let mut singles = Vec::new();
        for i in 0..3 {
            let t = Instant::now();
            let w = Worker::spawn(config(&format!("worker:start:{i}"), false, true)).await.expect("worker");
            singles.push(t.elapsed().as_secs_f64());
            w.stop(Duration::from_secs(1)).await;
        }
        let start_to_ready = percentile(&sorted(singles), 0.5);
        let t = Instant::now();
        let eight: Vec<Worker> = futures_util::future::join_all(
            (0..8).map(|i| Worker::spawn(config(&format!("worker:eight:{i}"), false, true))),
        )
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("workers");
        let all_ready = t.elapsed().as_secs_f64();
        for w in &eight {
            w.stop(Duration::from_secs(1)).await;
        }
        println!(
            "worker start-to-ready with DSPy imported: {:.2} s (median of 3); 8 at once: all ready in {:.2} s",
            start_to_ready, all_ready
        );
        common::write_results(
            "bridge_roundtrip",
            &json!({"machine": machine(), "rows": rows, "start_to_ready_s": start_to_ready, "eight_at_once_s": all_ready}),
        );
        let _ = Value::Null;
    });
}
