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

/// The direct children of process `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    processes().into_iter().filter(|(_, parent, _)| *parent == pid).map(|(p, _, _)| p).collect()
}

/// Every process: (pid, parent pid, user + system CPU in clock ticks),
/// from one pass over `/proc`.
fn processes() -> Vec<(u32, u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| {
        let pid = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name: state, ppid, ...; utime and stime are
        // fields 14 and 15 of stat, indexes 11 and 12 here.
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let number = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
        Some((pid, u32::try_from(number(1)?).ok()?, number(11)? + number(12)?))
    })
    .collect()
}

/// CPU time (user + system) used so far by this process and every live
/// process under it (the Python workers and their zygotes): what a
/// benchmark phase cost in CPU is the difference of two readings.
pub fn tree_cpu() -> std::time::Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let all = processes();
    let (mut total, mut pending) = (0u64, vec![std::process::id()]);
    while let Some(pid) = pending.pop() {
        for &(p, parent, cpu) in &all {
            if p == pid {
                total += cpu;
            }
            if parent == pid {
                pending.push(p);
            }
        }
    }
    std::time::Duration::from_secs_f64(total as f64 / ticks)
}

/// A pool for the benchmarks: forked from a zygote (the default) unless
/// `DSPEX_BENCH_ZYGOTE=0`, to compare both in one session.
#[allow(dead_code)]
pub fn pool(name: &str) -> dspex::PoolConfig {
    dspex::PoolConfig::new(name).zygote(!std::env::var("DSPEX_BENCH_ZYGOTE").is_ok_and(|v| v == "0"))
}

/// An LM server on a thread and Tokio runtime of its own, as a real LM
/// service is another machine: its work does not share the scheduler of
/// the runtime under test. Stops when dropped.
pub struct LmThread {
    server: Option<dspex::native::lm::server::LmServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LmThread {
    /// Serve `responder` on 127.0.0.1, with HTTPS when given an identity.
    pub fn start(
        responder: impl dspex::native::lm::server::Responder,
        tls: Option<dspex::native::lm::server::TlsIdentity>,
    ) -> LmThread {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("LM runtime");
            rt.block_on(async move {
                use dspex::native::lm::server::LmServer;
                let server = match tls {
                    Some(identity) => LmServer::start_tls(responder, &identity).await,
                    None => LmServer::start(responder).await,
                };
                let _ = tx.send(server.expect("LM server"));
                let _ = stopped.await;
            });
        });
        LmThread { server: Some(rx.recv().expect("LM server")), stop: Some(stop) }
    }

    /// `http://127.0.0.1:PORT/v1` (or `https://`).
    pub fn base_url(&self) -> String {
        self.server.as_ref().map(|s| s.base_url()).unwrap_or_default()
    }
}

impl Drop for LmThread {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
