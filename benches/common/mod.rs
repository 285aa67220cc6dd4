//! Shared benchmark helpers: timing, machine description, Python discovery.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Instant;

/// Median and 99th percentile of per-operation times, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median_ns: f64,
    pub p99_ns: f64,
}

/// Time `f`: `samples` samples of `batch` calls each, after a warm-up.
pub fn measure(samples: usize, batch: usize, mut f: impl FnMut()) -> Stats {
    // Warm caches and branch predictors for at least 50 ms (another process may just have run).
    let warm = Instant::now();
    while warm.elapsed().as_millis() < 50 {
        for _ in 0..batch {
            f();
        }
    }
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    Stats { median_ns: percentile(&times, 0.5), p99_ns: percentile(&times, 0.99) }
}

/// The `q` quantile (0.5: the median) of values already sorted ascending;
/// NaN when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Sort `values` ascending (NaN last) and return them, for `percentile`.
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// "CPU model, N cores" from /proc/cpuinfo.
pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{model}, {cores} vCPU")
}

/// The project's Python (`DSPEX_PYTHON`, else `.venv/bin/python`).
pub fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DSPEX_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    p.exists().then_some(p)
}

/// Human-readable duration.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

/// Where results are written (`target/bench-results/NAME.json`).
pub fn write_results(name: &str, value: &serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A pool for the benchmarks: forked from a zygote (the default) unless
/// `DSPEX_BENCH_ZYGOTE=0`, to compare both in one session.
#[allow(dead_code)]
pub fn pool(name: &str) -> dspex::PoolConfig {
    dspex::PoolConfig::new(name).zygote(!std::env::var("DSPEX_BENCH_ZYGOTE").is_ok_and(|v| v == "0"))
}
