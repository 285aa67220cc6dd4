//! Workers forked from a zygote beside cold workers, in one run.
//!
//! - restart: a worker killed with `kill -9`, replaced, until its `hello`
//!   (p50, p99 over 20 restarts);
//! - the same in a pool (`kill -9` until the slot is ready again, what a
//!   request sees): with a standby worker promoted, forked, and cold;
//! - 8 workers ready from nothing (the zygote's own start included; median
//!   of 5, beside a bare `python -c "import dspy"`, median of 5);
//! - memory per idle worker — RSS, PSS and USS (private: `Private_Clean` +
//!   `Private_Dirty`) from `/proc/PID/smaps_rollup` — after start and after
//!   1000 DSPy `Predict` requests per worker (DummyLM).
//!
//! Run: `cargo bench --bench zygote`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{machine, percentile, python, sorted};
use dspex::{PoolConfig, Runtime};
use dspex_bridge::{worker_sources, CallOptions, Worker, WorkerConfig, Zygote};
use serde_json::json;

const RESTARTS: usize = 20;
const REQUESTS: usize = 1000;
/// How many times 8 workers are started from nothing, each way.
const EIGHT_RUNS: usize = 5;

fn config(name: &str) -> WorkerConfig {
    let py = python().expect("benchmarks need the project's .venv (scripts/setup-python)");
    let mut c = WorkerConfig::new(name, py);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    c.python_path = vec![worker_sources(&root.join("target/bench-cache")).expect("worker sources")];
    c.preload_dspy = true;
    c.start_timeout = Duration::from_secs(120);
    c
}

fn with(z: Option<&Zygote>, name: &str) -> WorkerConfig {
    let mut c = config(name);
    c.zygote = z.cloned();
    c
}

/// (RSS, PSS, USS) in MiB from `/proc/PID/smaps_rollup`.
fn memory(pid: u32) -> (f64, f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kb = |key: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mib = |k: f64| k / 1024.0;
    (mib(kb("Rss:")), mib(kb("Pss:")), mib(kb("Private_Clean:") + kb("Private_Dirty:")))
}

/// Restart times (ms, sorted) and the median of their two parts: the
/// death noticed and reported, and the new worker started to its hello.
async fn restart_times(z: Option<&Zygote>, label: &str) -> (Vec<f64>, f64, f64) {
    let (mut times, mut noticed, mut started) = (Vec::new(), Vec::new(), Vec::new());
    let mut w = Worker::spawn(with(z, &format!("worker:{label}:r"))).await.expect("worker");
    for i in 0..RESTARTS {
        w.crash();
        let t = Instant::now();
        w.exited().await;
        let exit = t.elapsed();
        w = Worker::spawn(with(z, &format!("worker:{label}:r{i}"))).await.expect("worker");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        noticed.push(exit.as_secs_f64() * 1000.0);
        started.push((t.elapsed() - exit).as_secs_f64() * 1000.0);
    }
    w.stop(Duration::from_secs(2)).await;
    (sorted(times), percentile(&sorted(noticed), 0.5), percentile(&sorted(started), 0.5))
}

/// Pool-level restarts of slot 0 (ms, sorted): `kill -9` of its process
/// until the slot is ready with a new one, polled every 100 µs off the
/// runtime's threads; and the median until the killed worker stopped taking
/// requests (the rest is the replacement).
async fn pool_restart_times(pool: PoolConfig) -> (Vec<f64>, f64) {
    let py = python().expect("benchmarks need the project's .venv (scripts/setup-python)");
    let name = pool.name.clone();
    let rt = Runtime::builder().python(py).pool(pool.size(2)).start().await.expect("runtime");
    let handle = rt.pool(&name).expect("pool");
    handle.wait_ready(2, Duration::from_secs(120)).await.expect("pool ready");
    let (mut times, mut down) = (Vec::new(), Vec::new());
    for _ in 0..RESTARTS {
        // Past the pool's healthy_after (a worker killed later is replaced at
        // once, not backed off), and time for the standby to be forked again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let killed = handle.kill_worker(0).expect("kill");
        let t = Instant::now();
        let h = handle.clone();
        let (total, gone) = tokio::task::spawn_blocking(move || {
            let mut gone = None;
            loop {
                let now = h.pid_of(0);
                if now != Some(killed) && gone.is_none() {
                    gone = Some(t.elapsed());
                }
                if let (Some(p), Some(gone)) = (now, gone) {
                    if p != killed {
                        return (t.elapsed(), gone);
                    }
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })
        .await
        .expect("poller");
        times.push(total.as_secs_f64() * 1000.0);
        down.push(gone.as_secs_f64() * 1000.0);
    }
    rt.shutdown().await.expect("shutdown");
    (sorted(times), percentile(&sorted(down), 0.5))
}

/// The floor under any Python start here: a bare `python -c "import dspy"`
/// (seconds, median of 5).
fn bare_import_dspy() -> f64 {
    let py = python().expect("benchmarks need the project's .venv (scripts/setup-python)");
    let times = (0..5)
        .map(|_| {
            let t = Instant::now();
            let ok = std::process::Command::new(&py)
                .args(["-c", "import dspy"])
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "python -c 'import dspy' failed");
            t.elapsed().as_secs_f64()
        })
        .collect();
    percentile(&sorted(times), 0.5)
}

/// 8 workers from nothing: (seconds until all 8 said hello, seconds until
/// the zygote was ready — 0 for cold workers —, the workers, the zygote).
async fn eight_ready(zygote: bool) -> (f64, f64, Vec<Worker>, Option<Zygote>) {
    let t = Instant::now();
    let z = if zygote {
        Some(Zygote::start("zygote:bench8", &config("zygote:bench8")).await.expect("zygote"))
    } else {
        None
    };
    let zygote_ready = if zygote { t.elapsed().as_secs_f64() } else { 0.0 };
    let starts = (0..8).map(|i| Worker::spawn(with(z.as_ref(), &format!("worker:eight:{i}"))));
    let workers: Vec<Worker> =
        futures_util::future::join_all(starts).await.into_iter().map(|w| w.expect("worker")).collect();
    (t.elapsed().as_secs_f64(), zygote_ready, workers, z)
}

/// `eight_ready` `runs` times; the medians and the last run's workers.
async fn eight_ready_median(zygote: bool, runs: usize) -> (f64, f64, (f64, f64), Vec<Worker>, Option<Zygote>) {
    let (mut totals, mut zygotes) = (Vec::new(), Vec::new());
    let mut last = (Vec::new(), None);
    for run in 0..runs {
        let (total, z_ready, workers, z) = eight_ready(zygote).await;
        totals.push(total);
        zygotes.push(z_ready);
        if run + 1 < runs {
            for w in &workers {
                w.stop(Duration::from_secs(2)).await;
            }
            drop(z);
        } else {
            last = (workers, z);
        }
    }
    let (totals, zygotes) = (sorted(totals), sorted(zygotes));
    let range = (totals[0], totals[totals.len() - 1]);
    (percentile(&totals, 0.5), percentile(&zygotes, 0.5), range, last.0, last.1)
}

async fn after_requests(w: &Worker) {
    let predict = json!({"program": {"module": "predict", "signature": "question -> answer"},
        "inputs": {"question": "2+2?"}, "lm": {"dummy": [{"answer": "4"}]}});
    for _ in 0..REQUESTS {
        w.call("dspy.run", predict.clone(), &CallOptions::default()).await.expect("dspy.run");
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(async {
        println!("zygote vs cold workers — {}", machine());
        let z = Zygote::start("zygote:bench", &config("zygote:bench")).await.expect("zygote");
        assert_eq!(z.refusal(), None, "the zygote refuses to fork");

        let (forked, f_exit, f_start) = restart_times(Some(&z), "forked").await;
        let (cold, c_exit, c_start) = restart_times(None, "cold").await;
        let (f50, f99, c50, c99) =
            (percentile(&forked, 0.5), percentile(&forked, 0.99), percentile(&cold, 0.5), percentile(&cold, 0.99));
        println!("restart after kill -9 to ready ({RESTARTS} each): forked p50 {f50:.1} ms, p99 {f99:.1} ms; cold p50 {c50:.0} ms, p99 {c99:.0} ms ({:.0}× faster at p50)", c50 / f50.max(0.001));
        println!("  of which (medians): death noticed {f_exit:.1} ms / {c_exit:.1} ms, new worker to hello {f_start:.1} ms / {c_start:.0} ms (forked / cold)");

        let (standby, s_down) = pool_restart_times(PoolConfig::new("standby").standby(1)).await;
        let (pool_forked, pf_down) = pool_restart_times(PoolConfig::new("forked").standby(0)).await;
        let (pool_cold, pc_down) = pool_restart_times(PoolConfig::new("cold").zygote(false)).await;
        let p = |v: &[f64]| (percentile(v, 0.5), percentile(v, 0.99));
        let ((s50, s99), (pf50, pf99), (pc50, pc99)) = (p(&standby), p(&pool_forked), p(&pool_cold));
        println!("in a pool, kill -9 to the slot ready again ({RESTARTS} each): standby p50 {s50:.1} ms, p99 {s99:.1} ms; forked p50 {pf50:.1} ms, p99 {pf99:.1} ms; cold p50 {pc50:.0} ms, p99 {pc99:.0} ms");
        println!("  of which (medians) until the slot stopped taking requests: {s_down:.1} / {pf_down:.1} / {pc_down:.1} ms (standby / forked / cold)");

        let import = bare_import_dspy();
        let (eight_forked, eight_zygote, (f_min, f_max), forked_workers, z8) = eight_ready_median(true, EIGHT_RUNS).await;
        let (eight_cold, _, (c_min, c_max), cold_workers, _) = eight_ready_median(false, EIGHT_RUNS).await;
        println!("8 workers ready from nothing (median of {EIGHT_RUNS}): zygote {eight_forked:.2} s ({f_min:.2}–{f_max:.2}; its own start included, of which zygote ready {eight_zygote:.2} s), cold {eight_cold:.2} s ({c_min:.2}–{c_max:.2}); a bare `import dspy` takes {import:.2} s here (zygote = {:.2}× that)", eight_forked / import);

        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = |ws: &[Worker]| {
            let m: Vec<(f64, f64, f64)> = ws.iter().map(|w| memory(w.pid())).collect();
            let n = m.len().max(1) as f64;
            (m.iter().map(|x| x.0).sum::<f64>() / n, m.iter().map(|x| x.1).sum::<f64>() / n, m.iter().map(|x| x.2).sum::<f64>() / n)
        };
        let (fr, fp, fu) = idle(&forked_workers);
        let (cr, cp, cu) = idle(&cold_workers);
        println!("idle worker memory, mean of 8 (MiB): forked RSS {fr:.1} PSS {fp:.1} USS {fu:.1}; cold RSS {cr:.1} PSS {cp:.1} USS {cu:.1}");

        // 1000 requests on one worker of each kind.
        after_requests(&forked_workers[0]).await;
        after_requests(&cold_workers[0]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (far, fap, fau) = memory(forked_workers[0].pid());
        let (car, cap, cau) = memory(cold_workers[0].pid());
        println!("after {REQUESTS} DSPy requests (MiB): forked RSS {far:.1} PSS {fap:.1} USS {fau:.1}; cold RSS {car:.1} PSS {cap:.1} USS {cau:.1}");

        for w in forked_workers.iter().chain(cold_workers.iter()) {
            w.stop(Duration::from_secs(2)).await;
        }
        drop(z8);
        common::write_results(
            "zygote",
            &json!({
                "machine": machine(),
                "restart_ms": {"forked": {"p50": f50, "p99": f99, "noticed_p50": f_exit, "started_p50": f_start},
                               "cold": {"p50": c50, "p99": c99, "noticed_p50": c_exit, "started_p50": c_start}},
                "pool_restart_ms": {"standby": {"p50": s50, "p99": s99, "down_p50": s_down},
                                    "forked": {"p50": pf50, "p99": pf99, "down_p50": pf_down},
                                    "cold": {"p50": pc50, "p99": pc99, "down_p50": pc_down}},
                "eight_ready_s": {"runs": EIGHT_RUNS, "zygote": eight_forked, "zygote_min": f_min, "zygote_max": f_max, "zygote_ready": eight_zygote, "cold": eight_cold, "cold_min": c_min, "cold_max": c_max, "bare_import_dspy": import},
                "idle_mib": {"forked": {"rss": fr, "pss": fp, "uss": fu}, "cold": {"rss": cr, "pss": cp, "uss": cu}},
                "after_requests_mib": {"requests": REQUESTS, "forked": {"rss": far, "pss": fap, "uss": fau}, "cold": {"rss": car, "pss": cap, "uss": cau}},
            }),
        );
    });
}
