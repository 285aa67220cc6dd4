//! HTTP serving: `POST /v1/programs/qa/run` → the native engine → the
//! offline LM server, at 1, 64 and 512 requests in flight.
//!
//! A closed-loop load generator (reqwest, its own two-thread tokio runtime)
//! keeps N requests in flight for a fixed time. The LM server answers each
//! call after a fixed latency (`DSPEX_BENCH_LM_MS`, default 100 ms) and
//! records its own time per request (body read → first byte written). For
//! each level: throughput; end-to-end latency; the LM server's own time; the
//! runtime's overhead — what `dspex_overhead_seconds` records, read exactly
//! from each result's `meta.timings.overhead_us` (the request's time minus
//! its LM calls); and the edge overhead the client sees (end-to-end minus the
//! LM calls: HTTP parsing, JSON, the client). Everything runs on this
//! machine: client, server and LM compete for the same cores.
//!
//! Run: `cargo bench --bench http_serving`.

mod common;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{machine, percentile, sorted, write_results};
use dspex::http::HttpApi;
use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::{HttpConfig, LmConfig, ProgramSpec, Runtime};
use parking_lot::Mutex;
use serde_json::{json, Value};

const LEVELS: [usize; 3] = [1, 64, 512];
const WARM_UP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

/// One answered request, as the client saw it.
#[derive(Clone, Copy)]
struct Sample {
    e2e_us: f64,
    overhead_us: f64,
    lm_us: f64,
}

fn main() {
    let lm_ms: u64 = std::env::var("DSPEX_BENCH_LM_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");

    let (rt, lm, api) = server_rt.block_on(async {
        let lm =
            LmServer::start(OfflineResponder::with_latency(Duration::from_millis(lm_ms))).await.expect("LM server");
        let config = LmConfig::new("offline").with_base_url(lm.base_url()).with_api_key("bench").with_temperature(0.0);
        let rt = Runtime::builder().native_only().lm(config).prometheus().start().await.expect("runtime");
        let api = HttpApi::new(&rt)
            .program("qa", ProgramSpec::predict("question -> answer: int"))
            .config(HttpConfig { addr: "127.0.0.1:0".into(), max_in_flight: 4096, ..HttpConfig::default() })
            .serve()
            .await
            .expect("HTTP API");
        (rt, lm, api)
    });
    let url = format!("http://{}/v1/programs/qa/run", api.local_addr());
    println!("HTTP → native Predict → offline LM ({lm_ms} ms per call), {}", machine());
    println!(
        "{:>9} {:>9} {:>11} {:>11} {:>11} {:>13} {:>13} {:>13} {:>13} {:>7}",
        "in flight",
        "req/s",
        "e2e p50",
        "e2e p99",
        "LM own p50",
        "overhead p50",
        "overhead p99",
        "edge p50",
        "edge p99",
        "errors"
    );
    let mut rows = Vec::new();
    for level in LEVELS {
        lm.clear_requests();
        let (samples, errors, elapsed) = client_rt.block_on(load(&url, level));
        let lm_own: Vec<f64> = lm
            .timings()
            .iter()
            .filter_map(|t| t.first_byte.map(|f| f.duration_since(t.received).as_secs_f64() * 1e6))
            .collect();
        let rate = samples.len() as f64 / elapsed.as_secs_f64();
        let e2e = sorted(samples.iter().map(|s| s.e2e_us).collect());
        let overhead = sorted(samples.iter().map(|s| s.overhead_us).collect());
        let edge = sorted(samples.iter().map(|s| s.e2e_us - s.lm_us).collect());
        let lm_own = sorted(lm_own);
        let ms = |us: f64| us / 1000.0;
        println!(
            "{level:>9} {rate:>9.0} {:>8.2} ms {:>8.2} ms {:>8.2} ms {:>10.3} ms {:>10.3} ms {:>10.3} ms {:>10.3} ms {errors:>7}",
            ms(percentile(&e2e, 0.5)),
            ms(percentile(&e2e, 0.99)),
            ms(percentile(&lm_own, 0.5)),
            ms(percentile(&overhead, 0.5)),
            ms(percentile(&overhead, 0.99)),
            ms(percentile(&edge, 0.5)),
            ms(percentile(&edge, 0.99)),
        );
        rows.push(json!({
            "in_flight": level,
            "requests": samples.len(),
            "errors": errors,
            "requests_per_s": rate,
            "e2e_us": {"p50": percentile(&e2e, 0.5), "p99": percentile(&e2e, 0.99)},
            "lm_server_own_us": {"p50": percentile(&lm_own, 0.5), "p99": percentile(&lm_own, 0.99)},
            "overhead_us": {"p50": percentile(&overhead, 0.5), "p99": percentile(&overhead, 0.99)},
            "edge_overhead_us": {"p50": percentile(&edge, 0.5), "p99": percentile(&edge, 0.99)},
        }));
    }
    // The same histogram as Prometheus scrapes it, for a cross-check.
    let text = rt.metrics_text().unwrap_or_default();
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("dspex_overhead_seconds_count{route=\"native\"} "))
        .unwrap_or("0")
        .to_string();
    println!("dspex_overhead_seconds_count{{route=\"native\"}} = {count}");
    write_results(
        "http_serving",
        &json!({"machine": machine(), "lm_latency_ms": lm_ms, "levels": rows, "histogram_count": count}),
    );
    server_rt.block_on(async {
        api.stop(Duration::from_secs(2)).await;
        rt.shutdown().await.expect("shutdown");
    });
}

/// Keep `in_flight` requests going for `WARM_UP` + `MEASURE`; the samples
/// of requests that started after the warm-up, how many of those failed,
/// and the measured time.
async fn load(url: &str, in_flight: usize) -> (Vec<Sample>, usize, Duration) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(in_flight).build().expect("client");
    let samples = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let (measure_from, end) = (start + WARM_UP, start + WARM_UP + MEASURE);
    let mut tasks = Vec::new();
    for worker in 0..in_flight {
        let (client, url, samples, errors) = (client.clone(), url.to_string(), samples.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                i += 1;
                // Distinct questions; the cache is off, so every request runs.
                let body = json!({
                    "inputs": {"question": format!("What is {} + {}?", worker, i)},
                    "options": {"cache": false},
                })
                .to_string();
                let t = Instant::now();
                let reply = client.post(&url).header("content-type", "application/json").body(body).send().await;
                let text = match reply {
                    Ok(r) if r.status().is_success() => r.text().await.ok(),
                    _ => None,
                };
                let e2e_us = t.elapsed().as_secs_f64() * 1e6;
                if t < measure_from {
                    continue;
                }
                let v = text.and_then(|t| serde_json::from_str::<Value>(&t).ok()).unwrap_or(Value::Null);
                let timings = &v["meta"]["timings"];
                match (timings["overhead_us"].as_f64(), timings["lm_us"].as_f64()) {
                    (Some(overhead_us), Some(lm_us)) => samples.lock().push(Sample { e2e_us, overhead_us, lm_us }),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let samples = std::mem::take(&mut *samples.lock());
    (samples, errors.load(Ordering::Relaxed), MEASURE)
}
