//! Chaos: random `kill -9` of workers while more than 200 requests run.
//!
//! Every request must end with a result or a classified error before its
//! deadline; the pool must return to full size; no worker process may be
//! left running or unreaped afterwards. Bounded to well under a minute.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex::{ErrorKind, PoolConfig, RequestOptions, Runtime};
use parking_lot::Mutex;
use serde_json::json;

use crate::support;

const CONCURRENCY: usize = 240;
const CHAOS: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(8);

fn zombie_or_alive(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state is the field after the parenthesised command name.
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kill_9_under_240_concurrent_requests() {
    let mut pool = PoolConfig::new("general").size(3).concurrency(4);
    pool.max_queue = 4096;
    pool.heartbeat_ms = 1_000;
    let rt = Runtime::builder().python(support::python()).pool(pool).start().await.unwrap();
    let handle = rt.pool("general").unwrap();
    let seen_pids: Arc<Mutex<HashSet<u32>>> = Arc::new(Mutex::new(handle.pids().into_iter().collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, running) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let max_running = Arc::new(AtomicUsize::new(0));
    let late: Arc<Mutex<Vec<String>>> = Arc::default();
    let kinds: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();

    let mut clients = Vec::new();
    for i in 0..CONCURRENCY {
        let (rt, stop, ok, failed, running, max_running, late, kinds) = (
            rt.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            running.clone(),
            max_running.clone(),
            late.clone(),
            kinds.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (command, args) = match i % 3 {
                    0 => ("noop", json!({})),
                    _ => ("sleep", json!({"seconds": 0.02})),
                };
                let opts = RequestOptions::default().timeout(TIMEOUT).idempotent(i % 2 == 0);
                let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(n, Ordering::SeqCst);
                let t = Instant::now();
                let r = rt.call("general", command, args, opts).await;
                running.fetch_sub(1, Ordering::SeqCst);
                let took = t.elapsed();
                if took > TIMEOUT + Duration::from_millis(500) {
                    late.lock().push(format!("{command} took {took:?}"));
                }
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        assert!(
                            matches!(e.kind(), ErrorKind::WorkerCrashed | ErrorKind::Timeout | ErrorKind::Overloaded),
                            "unclassified failure: {e}"
                        );
                        *kinds
                            .lock()
                            .entry(format!("{}: {}", e.kind(), e.message().chars().take(60).collect::<String>()))
                            .or_default() += 1;
                        // Back off a little, as any client would.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    // The killer: a random ready worker every 300–700 ms.
    let end = Instant::now() + CHAOS;
    let mut kills = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..700))).await;
        let pids = handle.pids();
        seen_pids.lock().extend(pids.iter().copied());
        if let Some(&pid) = pids.get(fastrand::usize(..pids.len().max(1))) {
            // SAFETY: kill(2) on a worker process this runtime started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            kills += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(TIMEOUT + Duration::from_secs(5), c).await.expect("a client hung").unwrap();
    }
    assert!(late.lock().is_empty(), "requests outlived their deadline: {:?}", late.lock());
    assert!(max_running.load(Ordering::SeqCst) >= 200, "at least 200 requests ran at once");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "chaos: {kills} kills, {ok} ok, {failed} classified failures: {:?}",
        kinds.lock().keys().map(|k| k.split(" after ").next().unwrap_or(k)).collect::<std::collections::BTreeSet<_>>()
    );
    assert!(kills >= 5, "{kills} kills");
    assert!(ok > failed * 5, "mostly successes: {ok} ok, {failed} failed");

    // Back to full size, still serving.
    if let Err(e) = handle.wait_ready(3, Duration::from_secs(30)).await {
        panic!("{e}\n{}", serde_json::to_string_pretty(&rt.tree().await.unwrap()).unwrap());
    }
    rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap();
    seen_pids.lock().extend(handle.pids());
    let tree = rt.tree().await.unwrap();
    let restarts: u32 = tree.walk().iter().map(|n| n.restarts).sum();
    assert!(restarts >= 1);
    eprintln!("chaos: {restarts} restarts");

    rt.shutdown().await.unwrap();
    // No worker process survives the runtime, and none is left unreaped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left: Vec<(u32, char)> = seen_pids.lock().iter().filter_map(|&p| zombie_or_alive(p).map(|s| (p, s))).collect();
    assert!(left.is_empty(), "worker processes left behind (pid, state): {left:?}");
}
