//! Workers forked from a zygote, over the bridge's public API: they serve
//! DSPy as cold workers do, start in milliseconds, report their exits, die
//! with their zygote, and a zygote that cannot fork safely says why.

use std::time::{Duration, Instant};

use dspex_bridge::{process_alive, CallOptions, Worker, WorkerConfig, Zygote};
use dspex_core::ErrorKind;
use serde_json::json;

use crate::bridge::config;
use crate::support::runtime;

fn template() -> WorkerConfig {
    config("worker:zygote-test:template", true)
}

async fn forked(z: &Zygote, name: &str) -> Worker {
    let mut c = config(name, true);
    c.zygote = Some(z.clone());
    Worker::spawn(c).await.expect("a forked worker")
}

#[test]
fn forked_workers_serve_dspy_like_cold_ones() {
    runtime().block_on(async {
        let z = Zygote::start("zygote:test", &template()).await.unwrap();
        assert_eq!(z.refusal(), None, "the zygote should fork");
        let t = Instant::now();
        let w = forked(&z, "worker:test:forked").await;
        let ready = t.elapsed();
        assert!(w.forked(), "the worker was started cold");
        assert_ne!(w.pid(), z.pid());
        assert_eq!(w.hello().dspy.as_deref(), Some("3.4.1"));
        assert!(w.hello().commands.contains(&"test.shout".to_string()), "user modules come from the zygote");
        let predict = json!({"program": {"module": "predict", "signature": "question -> answer"},
            "inputs": {"question": "2+2?"}, "lm": {"dummy": [{"answer": "4"}]}});
        let out = w.call("dspy.run", predict.clone(), &CallOptions::default()).await.unwrap();
        assert_eq!(out["fields"], json!({"answer": "4"}));
        // A cold worker answers the same.
        let cold = Worker::spawn(config("worker:test:cold", true)).await.unwrap();
        assert!(!cold.forked());
        let cold_out = cold.call("dspy.run", predict, &CallOptions::default()).await.unwrap();
        assert_eq!(cold_out["fields"], out["fields"]);
        assert!(ready < Duration::from_millis(500), "a fork took {ready:?}");
        assert_eq!(z.forks(), 1);
        cold.stop(Duration::from_secs(2)).await;
        w.stop(Duration::from_secs(2)).await;
    });
}

#[test]
fn a_killed_forked_worker_is_reported_by_its_zygote() {
    runtime().block_on(async {
        let z = Zygote::start("zygote:test-exit", &template()).await.unwrap();
        let w = forked(&z, "worker:test:exit").await;
        let pid = w.pid();
        w.crash();
        let info = tokio::time::timeout(Duration::from_secs(5), w.exited()).await.expect("the exit is reported");
        assert_eq!(info.signal, Some(libc::SIGKILL), "{info:?}");
        assert!(!process_alive(pid), "the zygote reaped it (no zombie)");
        // A graceful stop ends with code 0.
        let w = forked(&z, "worker:test:exit2").await;
        let info = w.stop(Duration::from_secs(2)).await;
        assert_eq!(info.code, Some(0), "{info:?}");
        assert!(z.is_alive());
    });
}

#[test]
fn forked_workers_die_with_their_zygote() {
    runtime().block_on(async {
        let z = Zygote::start("zygote:test-death", &template()).await.unwrap();
        let a = forked(&z, "worker:test:death-a").await;
        let b = forked(&z, "worker:test:death-b").await;
        z.crash();
        z.exited().await;
        for w in [&a, &b] {
            let err = tokio::time::timeout(
                Duration::from_secs(5),
                w.call("nap", json!({"seconds": 0.01}), &CallOptions::default()),
            )
            .await
            .expect("no hang")
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::WorkerCrashed, "{err}");
        }
        let t = Instant::now();
        while (process_alive(a.pid()) || process_alive(b.pid())) && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!process_alive(a.pid()) && !process_alive(b.pid()), "forked workers outlived their zygote");
        // A dead zygote cannot fork; the worker starts cold.
        let w = forked(&z, "worker:test:after").await;
        assert!(!w.forked());
        w.stop(Duration::from_secs(2)).await;
    });
}

#[test]
fn a_zygote_with_a_thread_refuses_to_fork_and_workers_start_cold() {
    runtime().block_on(async {
        let mut t = template();
        t.user_modules.push("dspex_test_threads".into());
        let z = Zygote::start("zygote:test-threads", &t).await.unwrap();
        let why = z.refusal().expect("a refusal");
        assert!(why.contains("threads"), "{why}");
        let mut c = config("worker:test:threads", true);
        c.user_modules.push("dspex_test_threads".into());
        c.zygote = Some(z.clone());
        let w = Worker::spawn(c).await.unwrap();
        assert!(!w.forked(), "a worker was forked from a zygote with a running thread");
        assert_eq!(z.forks(), 0);
        w.stop(Duration::from_secs(2)).await;
    });
}

// ------------------------------------------------------------ in a runtime

use dspex::actors::PoolCallOptions;
use dspex::{PoolConfig, Program, ProgramSpec, RequestOptions, Runtime, TreeNode};

fn forked_in_tree(tree: &TreeNode, pool: &str, size: usize) -> Vec<(u32, bool)> {
    (0..size)
        .filter_map(|i| tree.find(&format!("worker:{pool}:{i}")))
        .filter(|w| w.status == "ready")
        .map(|w| (w.info.pid.unwrap_or(0), w.info.extra.get("forked") == Some(&json!(true))))
        .collect()
}

async fn until_ready(rt: &Runtime, pool: &str, size: usize, not: &[u32]) -> Vec<(u32, bool)> {
    let t = Instant::now();
    loop {
        let tree = rt.tree().await.unwrap();
        let ready = forked_in_tree(&tree, pool, size);
        if ready.len() == size && ready.iter().all(|(p, _)| !not.contains(p)) {
            return ready;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "pool {pool} not back to size: {ready:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_forks_its_workers_and_outlives_its_zygote() {
    let (_server, lm) = crate::runtime::offline_lm().await;
    let rt = crate::runtime::builder(2).lm(lm).start().await.unwrap();
    let tree = rt.tree().await.unwrap();
    let zygote = tree.find("zygote:general").expect("a zygote node");
    assert_eq!(zygote.status, "ready", "{zygote:?}");
    let zygote_pid = zygote.info.pid.expect("the zygote's pid");
    let workers = forked_in_tree(&tree, "general", 2);
    assert!(workers.len() == 2 && workers.iter().all(|(_, f)| *f), "workers not forked: {workers:?}");

    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let q = json!({"question": "What is 2 + 3?"}).as_object().cloned().unwrap_or_default();
    let out = rt.run(&program, q.clone(), RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("5"));

    // A forked worker killed: replaced, forked again, in milliseconds.
    let killed = rt.kill_worker("general", 0).unwrap();
    let t = Instant::now();
    let back = until_ready(&rt, "general", 2, &[killed]).await;
    let took = t.elapsed();
    assert!(back.iter().all(|(_, f)| *f), "the replacement was not forked: {back:?}");
    assert!(took < Duration::from_secs(2), "replacing a forked worker took {took:?}");

    // The zygote killed: its workers die with it; the pool refills and the
    // zygote comes back.
    let before: Vec<u32> = back.iter().map(|(p, _)| *p).collect();
    unsafe { libc::kill(zygote_pid as i32, libc::SIGKILL) };
    until_ready(&rt, "general", 2, &before).await;
    let t = Instant::now();
    let restarted = loop {
        let tree = rt.tree().await.unwrap();
        let z = tree.find("zygote:general").expect("a zygote node").clone();
        if z.status == "ready" && z.info.pid.is_some_and(|p| p != zygote_pid) {
            break z;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the zygote did not come back: {z:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(restarted.restarts >= 1, "{restarted:?}");
    let out = rt.run(&program, q, RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("5"));
    rt.shutdown().await.unwrap();
}

/// The zygote node's standby pids, once there are `n`.
async fn standby_pids(rt: &Runtime, pool: &str, n: usize) -> Vec<u32> {
    let t = Instant::now();
    loop {
        let tree = rt.tree().await.unwrap();
        let z = tree.find(&format!("zygote:{pool}")).expect("a zygote node").clone();
        let pids: Vec<u32> = z
            .info
            .extra
            .get("standby")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|p| p.as_u64()).map(|p| p as u32).collect())
            .unwrap_or_default();
        if pids.len() == n {
            return pids;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "zygote:{pool} has no {n} standby workers: {z:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_by_promoting_a_standby_worker() {
    let rt = Runtime::builder()
        .python(crate::support::python())
        .pool(PoolConfig::new("warm").size(2).standby(1))
        .start()
        .await
        .unwrap();
    let standby = standby_pids(&rt, "warm", 1).await;
    let workers = forked_in_tree(&rt.tree().await.unwrap(), "warm", 2);
    assert!(!workers.iter().any(|(p, _)| standby.contains(p)), "a standby worker is in a slot: {workers:?}");

    let killed = rt.kill_worker("warm", 0).unwrap();
    until_ready(&rt, "warm", 2, &[killed]).await;
    let pool = rt.pool("warm").unwrap();
    assert_eq!(pool.pid_of(0), Some(standby[0]), "slot 0 was not given the standby worker");
    // It took the slot's name, in Python too, and it answers.
    let opts = PoolCallOptions { pin: Some(0), ..PoolCallOptions::default() };
    let reply = pool.call("info", json!({}), &opts).await.unwrap();
    assert_eq!(reply.worker, "worker:warm:0");
    assert_eq!(reply.value["env"]["DSPEX_WORKER_ID"], json!("worker:warm:0"));
    // The zygote forks a new standby.
    let again = standby_pids(&rt, "warm", 1).await;
    assert_ne!(again, standby);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_standby_forks_its_replacements() {
    let rt = Runtime::builder()
        .python(crate::support::python())
        .pool(PoolConfig::new("lean").size(1).standby(0))
        .start()
        .await
        .unwrap();
    let killed = rt.kill_worker("lean", 0).unwrap();
    let back = until_ready(&rt, "lean", 1, &[killed]).await;
    assert!(back[0].1, "the replacement was not forked");
    let z = rt.tree().await.unwrap().find("zygote:lean").expect("a zygote node").clone();
    assert_eq!(z.info.extra.get("standby"), Some(&json!([])), "{z:?}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_the_zygote_off_starts_its_workers_cold() {
    let (_server, lm) = crate::runtime::offline_lm().await;
    let rt = Runtime::builder()
        .python(crate::support::python())
        .pool(PoolConfig::new("cold").size(1).zygote(false))
        .lm(lm)
        .start()
        .await
        .unwrap();
    let tree = rt.tree().await.unwrap();
    assert!(tree.find("zygote:cold").is_none());
    let workers = forked_in_tree(&tree, "cold", 1);
    assert_eq!(workers.len(), 1);
    assert!(!workers[0].1, "a worker was forked with the zygote off");
    rt.shutdown().await.unwrap();
}
