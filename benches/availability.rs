//! Availability under sustained crashes: an open-loop load on a pool of 4
//! workers while random workers are killed with `SIGKILL` (fixed seed).
//!
//! Requests are issued on a fixed schedule whatever the answers do (a third
//! `noop`, two thirds 20 ms `sleep`s; every other one marked idempotent;
//! deadline 5 s). For each scenario: issued, succeeded, failed by kind,
//! idempotent ones that failed, late (answered after deadline + 0.5 s), hung
//! (no answer 10 s after the load ended), and the time from the last kill
//! until the pool is back to size. Zygote pools, and the same first
//! scenario with cold workers beside them.
//!
//! Run: `cargo bench --bench availability`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{machine, python};
use dspex::{PoolConfig, RequestOptions, Runtime};
use parking_lot::Mutex;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(5);
const LOAD: Duration = Duration::from_secs(30);

struct Scenario {
    name: &'static str,
    rate: u32,
    kill_every: Duration,
    zygote: bool,
    /// Standby workers kept forked (with the zygote).
    standby: usize,
}

#[derive(Default)]
struct Tally {
    issued: usize,
    ok: usize,
    failed: BTreeMap<String, usize>,
    idempotent_failed: usize,
    late: usize,
}

async fn run(s: &Scenario) -> Value {
    let py = python().expect("benchmarks need the project's .venv (scripts/setup-python)");
    let pool = PoolConfig::new("general").size(4).concurrency(4).zygote(s.zygote).standby(s.standby);
    let rt = Runtime::builder().python(py).pool(pool).start().await.expect("runtime");
    let handle = rt.pool("general").expect("pool");
    handle.wait_ready(4, Duration::from_secs(60)).await.expect("4 workers");

    // When the pool last came back to full size, and when it was last seen
    // short of it (sampled every millisecond). A standby promoted in the
    // same step that drops the dead worker keeps it at size throughout.
    let refilled = Arc::new(Mutex::new(None::<Instant>));
    let short = Arc::new(Mutex::new(None::<Instant>));
    let monitor = {
        let (handle, refilled, short) = (handle.clone(), refilled.clone(), short.clone());
        tokio::spawn(async move {
            let mut full = true;
            loop {
                let now_full = handle.stats().ready >= 4;
                if now_full && !full {
                    *refilled.lock() = Some(Instant::now());
                }
                if !now_full {
                    *short.lock() = Some(Instant::now());
                }
                full = now_full;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(20261202);
    let mut kill_rng = fastrand::Rng::with_seed(7);
    let interval = Duration::from_secs_f64(1.0 / s.rate as f64);
    let mut next_request = started;
    let mut next_kill = started + s.kill_every;
    let mut kills = 0usize;
    let mut last_kill = started;
    let mut n = 0u64;
    while started.elapsed() < LOAD {
        let now = Instant::now();
        if now >= next_kill {
            let pids = handle.pids();
            if !pids.is_empty() {
                let pid = pids[kill_rng.usize(..pids.len())];
                // SAFETY: kill(2) on a worker pid of this runtime.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                kills += 1;
                last_kill = Instant::now();
            }
            next_kill += s.kill_every;
        }
        while Instant::now() >= next_request {
            n += 1;
            let (cmd, args) =
                if rng.u32(0..3) == 0 { ("noop", json!({})) } else { ("sleep", json!({"seconds": 0.02})) };
            let idempotent = n % 2 == 0;
            let (rt, tally, outstanding) = (rt.clone(), tally.clone(), outstanding.clone());
            outstanding.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let t = Instant::now();
                let opts = RequestOptions::default().timeout(DEADLINE).idempotent(idempotent);
                let r = rt.call("general", cmd, args, opts).await;
                let took = t.elapsed();
                let mut tl = tally.lock();
                tl.issued += 1;
                if took > DEADLINE + Duration::from_millis(500) {
                    tl.late += 1;
                }
                match r {
                    Ok(_) => tl.ok += 1,
                    Err(e) => {
                        *tl.failed.entry(e.kind().as_str().to_string()).or_default() += 1;
                        if idempotent {
                            tl.idempotent_failed += 1;
                        }
                    }
                }
                outstanding.fetch_sub(1, Ordering::Relaxed);
            });
            next_request += interval;
        }
        let wake = next_request.min(next_kill);
        tokio::time::sleep_until(wake.into()).await;
    }
    let issued = n as usize;
    // Back to size after the last kill: the first refill after it, or 0 if
    // the pool was never seen short after it.
    let t = Instant::now();
    let short_after_kill = || short.lock().is_some_and(|at| at >= last_kill);
    while short_after_kill() && refilled.lock().is_none_or(|at| at < last_kill) && t.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    monitor.abort();
    let back_ms = if !short_after_kill() {
        0.0
    } else {
        refilled.lock().map_or(f64::NAN, |at| at.saturating_duration_since(last_kill).as_secs_f64() * 1000.0)
    };
    // Whatever has not answered 10 s after the load is hung.
    let wait = Instant::now();
    while outstanding.load(Ordering::Relaxed) > 0 && wait.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hung = outstanding.load(Ordering::Relaxed);
    rt.shutdown().await.expect("shutdown");
    let tl = tally.lock();
    let pct = 100.0 * tl.ok as f64 / issued.max(1) as f64;
    let unclassified = tl.failed.get("internal").copied().unwrap_or(0);
    println!(
        "{:<34} issued {issued:>6}  ok {:>6} ({pct:.2} %)  failed {:?}  idempotent failed {}  late {}  hung {hung}  unclassified {unclassified}  kills {kills}  back to size {back_ms:.0} ms after the last kill",
        s.name, tl.ok, tl.failed, tl.idempotent_failed, tl.late
    );
    json!({
        "scenario": s.name, "rate": s.rate, "kill_every_ms": s.kill_every.as_millis() as u64, "zygote": s.zygote, "standby": s.standby,
        "issued": issued, "succeeded": tl.ok, "succeeded_pct": pct, "failed": tl.failed,
        "idempotent_failed": tl.idempotent_failed, "late": tl.late, "hung": hung, "unclassified": unclassified,
        "kills": kills, "back_to_size_ms": back_ms,
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(async {
        println!("availability under kill -9, 4 workers, deadline 5 s, 30 s of load — {}", machine());
        let scenarios = [
            Scenario {
                name: "200/s, a kill per second (zygote + standby)",
                rate: 200,
                kill_every: Duration::from_secs(1),
                zygote: true,
                standby: 1,
            },
            Scenario {
                name: "500/s, five kills per second (zygote + standby)",
                rate: 500,
                kill_every: Duration::from_millis(200),
                zygote: true,
                standby: 1,
            },
            Scenario {
                name: "500/s, five kills per second (zygote, no standby)",
                rate: 500,
                kill_every: Duration::from_millis(200),
                zygote: true,
                standby: 0,
            },
            Scenario {
                name: "200/s, a kill per second (cold)",
                rate: 200,
                kill_every: Duration::from_secs(1),
                zygote: false,
                standby: 0,
            },
        ];
        let mut rows = Vec::new();
        for s in &scenarios {
            rows.push(run(s).await);
        }
        common::write_results("availability", &json!({"machine": machine(), "rows": rows}));
    });
}
