//! Chaos: an open-loop load on a three-node cluster while its parts are
//! killed and cut off, on a fixed schedule.
//!
//! A real `nats-server` (JetStream, token auth) runs in its own network
//! namespace; serving nodes `a` and `b` (`dspex serve`, pool `general` of 2
//! zygote-forked workers and a standby each) run in the root namespace,
//! node `p` in a third namespace joined to the server's by a veth pair; a
//! client-only runtime in this process sends `sleep` commands (50 ms) at a
//! fixed rate whatever the answers do, 3 in 4 marked idempotent, deadline
//! 5 s. Faults, in order: `kill -9` of a worker of `a`, of `a`'s zygote, of
//! a worker of `b`; a network partition of `p` (its veth taken down at the
//! server's side: no FIN, no RST) healed 6 s later; `kill -9` of node `b`.
//!
//! Printed: requests issued, succeeded, failed by kind, late (answered
//! after the deadline + 0.5 s), hung (no answer 15 s after the load),
//! lost (idempotent requests that failed: the runtime retries those
//! elsewhere, so the target is 0), and the recovery time: how long after
//! the last fault requests were still failing or late.
//!
//! Needs root for the namespaces (without it the partition is skipped and
//! said so). Run: `cargo bench --features cluster --bench chaos`.

mod common;
#[path = "../tests/integration/nats.rs"]
mod nats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::machine;
use dspex::cluster::ClusterNode;
use dspex::{ClusterConfig, RequestOptions, Runtime, RuntimeConfig};
use nats::{NatsServer, Netns, ServeNode};
use parking_lot::Mutex;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_dspex");
const RATE: u32 = 100;
const LOAD: Duration = Duration::from_secs(40);
const DEADLINE: Duration = Duration::from_secs(5);

fn node_toml(url: &str, node: &str, token: &str) -> String {
    format!(
        "default_pool = false\n\n[[pools]]\nname = \"general\"\nsize = 2\nconcurrency = 8\nmax_queue = 10000\n\
         zygote = true\nstandby = 1\n\n[cluster]\nurls = [\"{url}\"]\nnode = \"{node}\"\ntoken = \"{token}\"\n\
         lease_ms = 1000\nkeepalive_ms = 100\nmax_remote_in_flight = 10000\nkv_replicas = 1\n"
    )
}

/// A node's zygote (its child process that has children of its own) and
/// the workers forked from it.
fn zygote_and_workers(node: u32) -> Option<(u32, Vec<u32>)> {
    common::children(node).into_iter().map(|c| (c, common::children(c))).find(|(_, w)| !w.is_empty())
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on a process this benchmark started (a node or one of
    // its Python processes).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[derive(Default)]
struct Tally {
    answered: usize,
    ok: usize,
    failed: BTreeMap<String, usize>,
    late: usize,
    lost: usize,
    /// Latest issue time (since the start) of a request that failed or was late.
    last_bad_ms: f64,
    /// Issue time and latency of every answered request (ms).
    answers: Vec<(f64, f64)>,
    /// Failures by when they were issued (ms since the start), their kind
    /// and whether they were idempotent.
    failures: Vec<(f64, String, bool, String)>,
}

async fn client(url: &str, token: &str) -> (Runtime, ClusterNode) {
    let config = RuntimeConfig { default_pool: false, ..RuntimeConfig::default() };
    let rt = Runtime::from_config(config).await.expect("a client-only runtime");
    let mut c = ClusterConfig::new(url, "client").token(token).lease_ms(1000);
    c.keepalive_ms = 100;
    let joined = ClusterNode::join(&rt, c).await.expect("join");
    (rt, joined)
}

async fn until_nodes(rt: &Runtime, n: usize) {
    let t = Instant::now();
    while rt.nodes().len() < n {
        assert!(t.elapsed() < Duration::from_secs(60), "only {:?} joined", rt.nodes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    tokio.block_on(async {
        println!("chaos: 3 nodes × 2 workers, {RATE}/s of 50 ms commands for {LOAD:?}, deadline 5 s — {}", machine());
        let k = std::process::id() % 200 + 20;
        let token = format!("t{}", fastrand::u64(..));
        // Namespaces: the server's, and the one node `p` is cut off in.
        let nets = Netns::create(&format!("cx{k}nats")).and_then(|nats_ns| {
            let part_ns = Netns::create(&format!("cx{k}part"))?;
            nats_ns.link(
                (&format!("cx{k}rn"), &format!("10.203.{k}.2/30")),
                None,
                (&format!("cx{k}r"), &format!("10.203.{k}.1/30")),
            );
            nats_ns.link(
                (&format!("cx{k}pn"), &format!("10.203.{k}.5/30")),
                Some(&part_ns),
                (&format!("cx{k}p"), &format!("10.203.{k}.6/30")),
            );
            Some((nats_ns, part_ns))
        });
        let (nats, root_url, part_url) = match &nets {
            Some((nats_ns, _)) => (
                NatsServer::in_netns(nats_ns, &format!("10.203.{k}.2"), &token),
                format!("nats://10.203.{k}.2:4222"),
                format!("nats://10.203.{k}.5:4222"),
            ),
            None => {
                println!("(no network namespaces here — not root? — the partition is skipped; all on loopback)");
                let n = NatsServer::start();
                let url = n.url();
                (n, url.clone(), url)
            }
        };
        let token_for = |_: &str| if nets.is_some() { token.clone() } else { String::new() };
        let toml = |url: &str, node: &str| {
            let t = token_for(node);
            let mut cfg = node_toml(url, node, &t);
            if t.is_empty() {
                cfg = cfg.replace(&format!("token = \"{t}\"\n"), "allow_insecure = true\n");
            }
            cfg
        };
        let a = ServeNode::with_config(BIN, "a", &toml(&root_url, "a"));
        let mut b = ServeNode::with_config(BIN, "b", &toml(&root_url, "b"));
        let part_name = nets.as_ref().map(|(_, p)| p.name.clone());
        let _p = ServeNode::with_config_in(BIN, "p", &toml(&part_url, "p"), part_name.as_deref());
        let (rt, joined) = if nets.is_some() {
            client(&root_url, &token).await
        } else {
            let config = RuntimeConfig { default_pool: false, ..RuntimeConfig::default() };
            let rt = Runtime::from_config(config).await.expect("client");
            let mut c = ClusterConfig::new(&root_url, "client").allow_insecure(true).lease_ms(1000);
            c.keepalive_ms = 100;
            let joined = ClusterNode::join(&rt, c).await.expect("join");
            (rt, joined)
        };
        until_nodes(&rt, 4).await;
        // Warm every node's workers.
        for _ in 0..30 {
            let _ = rt.call("general", "noop", json!({}), RequestOptions::default().idempotent(true)).await;
        }

        let tally = Arc::new(Mutex::new(Tally::default()));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let at = |s: u64| started + Duration::from_secs(s);
        let mut faults: Vec<(Instant, &str)> = vec![
            (at(6), "kill -9 a worker of node a"),
            (at(10), "kill -9 node a's zygote"),
            (at(14), "kill -9 a worker of node b"),
        ];
        if nets.is_some() {
            faults.push((at(18), "partition node p"));
            faults.push((at(24), "heal node p"));
        }
        faults.push((at(28), "kill -9 node b"));
        let mut done_faults: Vec<(f64, String)> = Vec::new();
        let gone: Arc<Mutex<Option<Duration>>> = Arc::default();
        let mut last_fault_ms = 0.0;
        let interval = Duration::from_secs_f64(1.0 / f64::from(RATE));
        let mut next_request = started;
        let mut n = 0u64;
        while started.elapsed() < LOAD {
            if let Some(&(when, what)) = faults.first() {
                if Instant::now() >= when {
                    faults.remove(0);
                    let applied = match what {
                        "kill -9 a worker of node a" => zygote_and_workers(a.pid()).map(|(_, w)| kill9(w[0])).is_some(),
                        "kill -9 node a's zygote" => zygote_and_workers(a.pid()).map(|(z, _)| kill9(z)).is_some(),
                        "kill -9 a worker of node b" => zygote_and_workers(b.pid()).map(|(_, w)| kill9(w[0])).is_some(),
                        "partition node p" | "heal node p" => {
                            if let Some((nats_ns, _)) = &nets {
                                nats_ns.set_link(&format!("cx{k}pn"), what == "heal node p");
                            }
                            true
                        }
                        _ => {
                            b.kill();
                            // How long until this node's membership no longer lists b.
                            let (rt, gone) = (rt.clone(), gone.clone());
                            let killed = Instant::now();
                            tokio::spawn(async move {
                                while rt.nodes().iter().any(|n| n.node == "b")
                                    && killed.elapsed() < Duration::from_secs(30)
                                {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                *gone.lock() = Some(killed.elapsed());
                            });
                            true
                        }
                    };
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    println!("  {:>6.0} ms  {what}{}", ms, if applied { "" } else { " (not found: skipped)" });
                    done_faults.push((ms, what.to_string()));
                    last_fault_ms = ms;
                }
            }
            while Instant::now() >= next_request {
                n += 1;
                let idempotent = n % 4 != 0;
                let issued_ms = next_request.saturating_duration_since(started).as_secs_f64() * 1000.0;
                let (rt, tally, outstanding) = (rt.clone(), tally.clone(), outstanding.clone());
                outstanding.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let t = Instant::now();
                    let opts = RequestOptions::default().timeout(DEADLINE).idempotent(idempotent);
                    let r = rt.call("general", "sleep", json!({"seconds": 0.05}), opts).await;
                    let took = t.elapsed();
                    let mut tl = tally.lock();
                    tl.answered += 1;
                    tl.answers.push((issued_ms, took.as_secs_f64() * 1000.0));
                    let late = took > DEADLINE + Duration::from_millis(500);
                    if late {
                        tl.late += 1;
                    }
                    if late || r.is_err() {
                        tl.last_bad_ms = tl.last_bad_ms.max(issued_ms);
                    }
                    match r {
                        Ok(_) => tl.ok += 1,
                        Err(e) => {
                            tl.failures.push((
                                issued_ms,
                                e.kind().as_str().to_string(),
                                idempotent,
                                e.message().to_string(),
                            ));
                            *tl.failed.entry(e.kind().as_str().to_string()).or_default() += 1;
                            if idempotent {
                                tl.lost += 1;
                            }
                        }
                    }
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                });
                next_request += interval;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let wait = Instant::now();
        while outstanding.load(Ordering::Relaxed) > 0 && wait.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let hung = outstanding.load(Ordering::Relaxed);
        let tl = std::mem::take(&mut *tally.lock());
        let bad_after = (tl.last_bad_ms - last_fault_ms).max(0.0);
        // Requests issued within 2 s after the last fault: the slowest, against
        // the slowest of the 2 s before the first fault.
        let slowest = |from: f64, to: f64| {
            tl.answers.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, ms)| *ms).fold(0.0, f64::max)
        };
        let first_fault_ms = done_faults.first().map_or(0.0, |f| f.0);
        let slow_after = slowest(last_fault_ms, last_fault_ms + 2000.0);
        let slow_before = slowest(first_fault_ms - 2000.0, first_fault_ms);
        let gone_ms = gone.lock().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        println!(
            "after the last fault: slowest answer {slow_after:.0} ms (before any fault: {slow_before:.0} ms); \
             node b out of the membership after {gone_ms:.0} ms"
        );
        println!(
            "requests {n}  succeeded {} ({:.2} %)  failed {:?}  late {}  hung {hung}  lost (idempotent failed) {}  \
             still failing {bad_after:.0} ms after the last fault",
            tl.ok,
            100.0 * tl.ok as f64 / n.max(1) as f64,
            tl.failed,
            tl.late,
            tl.lost
        );
        // Failures by the fault they followed.
        let mut by_fault: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (issued, _, idempotent, _) in &tl.failures {
            // The last fault before it was issued, or while it ran (a second).
            let after = done_faults.iter().rev().find(|(ms, _)| *ms <= *issued + 1000.0);
            let key = after.map_or("before any fault".to_string(), |(ms, w)| format!("{ms:>6.0} ms {w}"));
            let e = by_fault.entry(key).or_default();
            e.0 += 1;
            e.1 += usize::from(*idempotent);
        }
        for (fault, (n, idem)) in &by_fault {
            println!("  failed after {fault}: {n} ({idem} idempotent)");
        }
        for (issued, kind, _, message) in tl.failures.iter().filter(|f| f.2).take(5) {
            println!("  lost idempotent request issued at {issued:.0} ms: {kind}: {message}");
        }
        common::write_results(
            "chaos",
            &json!({
                "machine": machine(), "rate": RATE, "load_s": LOAD.as_secs(), "partition": nets.is_some(),
                "faults": done_faults.iter().map(|(ms, w)| json!({"at_ms": ms, "fault": w})).collect::<Vec<_>>(),
                "requests": n, "succeeded": tl.ok, "failed": tl.failed, "late": tl.late, "hung": hung,
                "lost_idempotent": tl.lost, "recovery_ms_after_last_fault": bad_after,
                "slowest_ms_after_last_fault": slow_after, "slowest_ms_before_faults": slow_before,
                "killed_node_gone_ms": gone_ms,
            }),
        );
        joined.leave().await;
        rt.shutdown().await.expect("shutdown");
        drop(nats);
    });
}
