//! DSPy `Predict` through the runtime's LM gateway vs DSPy's own engine, in
//! one run: two pools of the same runtime, one sending its workers' LM calls
//! through the gateway (`lm_calls = "gateway"`), one letting DSPy call the
//! service itself (`lm_calls = "direct"`), against the same local LM server.
//!
//! 1. Latency: sequential calls to an instant LM, the two pools alternating
//!    call by call; p50 and p99 of the whole request.
//! 2. Throughput: 1000 concurrent calls to an LM answering in 100 ms, 2
//!    workers × 50 per pool, the pools alternating round by round.
//!
//! The gateway's cache is off (every call is sent), as are its limits.
//!
//! Run: `cargo bench --bench gateway`.

mod common;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use common::{fmt_ns, machine, percentile, python, sorted};
use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
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

async fn start(server: &LmServer, concurrency: u32) -> Runtime {
    let mut config = RuntimeConfig {
        lm: Some(LmConfig::new("gpt-4o-mini").with_base_url(server.base_url()).with_api_key("bench")),
        pools: pools(concurrency),
        python: python(),
        ..RuntimeConfig::default()
    };
    config.gateway.cache.enabled = false;
    config.cache.enabled = false;
    Runtime::from_config(config).await.expect("runtime")
}

fn opts(pool: &str) -> RequestOptions {
    RequestOptions::python().pool(pool).no_cache().timeout(Duration::from_secs(120))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        println!("DSPy Predict through the LM gateway vs DSPy's own engine — {}", machine());
        let program = Program::new(ProgramSpec::predict("question -> answer"));
        let mut results = serde_json::Map::new();

        // 1. Latency, instant LM.
        let server = LmServer::start(OfflineResponder::new()).await.expect("LM");
        let runtime = start(&server, 4).await;
        let mut lat = [Vec::new(), Vec::new()];
        for i in 0..650 {
            for (k, pool) in ["gateway", "direct"].iter().enumerate() {
                let t = Instant::now();
                runtime.run(&program, question(i), opts(pool)).await.expect("predict");
                if i >= 50 {
                    lat[k].push(t.elapsed().as_nanos() as f64);
                }
            }
        }
        let [gw, direct] = lat.map(sorted);
        let (gp50, gp99, dp50, dp99) =
            (percentile(&gw, 0.5), percentile(&gw, 0.99), percentile(&direct, 0.5), percentile(&direct, 0.99));
        println!(
            "one call at a time, instant LM ({} each): gateway p50 {} p99 {} | direct p50 {} p99 {} | gateway/direct p50 {:.2}×, p99 {:.2}×",
            gw.len(),
            fmt_ns(gp50),
            fmt_ns(gp99),
            fmt_ns(dp50),
            fmt_ns(dp99),
            gp50 / dp50,
            gp99 / dp99
        );
        results.insert(
            "latency".into(),
            json!({"gateway_p50_ns": gp50, "gateway_p99_ns": gp99, "direct_p50_ns": dp50, "direct_p99_ns": dp99}),
        );
        runtime.shutdown().await.expect("shutdown");
        drop(server);

        // 2. 1000 concurrent calls, 100 ms LM, 2 workers × 50 per pool.
        let server = LmServer::start(OfflineResponder::with_latency(Duration::from_millis(100))).await.expect("LM");
        let runtime = start(&server, 50).await;
        let burst = |pool: &'static str| {
            let runtime = runtime.clone();
            let program = program.clone();
            async move {
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
                (1000.0 / t.elapsed().as_secs_f64(), failed)
            }
        };
        // Warm both up (DSPy builds its client on the first call).
        let _ = burst("gateway").await;
        let _ = burst("direct").await;
        let mut rates = [Vec::new(), Vec::new()];
        let mut failures = [0, 0];
        for _ in 0..3 {
            for (k, pool) in ["gateway", "direct"].into_iter().enumerate() {
                let (rate, failed) = burst(pool).await;
                rates[k].push(rate);
                failures[k] += failed;
            }
        }
        let median = |v: &Vec<f64>| percentile(&sorted(v.clone()), 0.5);
        let (g, d) = (median(&rates[0]), median(&rates[1]));
        println!(
            "1000 concurrent calls, 100 ms LM, 2 workers × 50 (median of 3 rounds): gateway {g:.0}/s ({} failed), direct {d:.0}/s ({} failed); gateway/direct {:.2}× (rounds: gateway {:?}, direct {:?})",
            failures[0],
            failures[1],
            g / d,
            rates[0].iter().map(|r| r.round()).collect::<Vec<_>>(),
            rates[1].iter().map(|r| r.round()).collect::<Vec<_>>(),
        );
        results.insert(
            "concurrent".into(),
            json!({"gateway_ops": g, "direct_ops": d, "gateway_rounds": rates[0], "direct_rounds": rates[1],
                   "gateway_failed": failures[0], "direct_failed": failures[1]}),
        );
        runtime.shutdown().await.expect("shutdown");
        common::write_results("gateway", &json!({"machine": machine(), "results": results}));
    });
}
