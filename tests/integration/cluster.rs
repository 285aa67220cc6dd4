//! The cluster over real processes: a NATS server with JetStream, `dspex
//! serve` nodes in their own processes, and a client-only runtime in the
//! test that sends them work.

use std::time::{Duration, Instant};

use dspex::cluster::ClusterNode;
use dspex::{ClusterConfig, ErrorKind, RequestOptions, Runtime, RuntimeConfig};
use serde_json::json;

use crate::nats::{NatsServer, ServeNode};

const BIN: &str = env!("CARGO_BIN_EXE_dspex");

/// A client-only runtime (no pools, no Python) in the cluster at `url`.
async fn client(url: &str, node: &str) -> (Runtime, ClusterNode) {
    let config = RuntimeConfig { default_pool: false, ..RuntimeConfig::default() };
    let rt = Runtime::from_config(config).await.expect("a client-only runtime");
    let mut c = ClusterConfig::new(url, node).allow_insecure(true).lease_ms(1000);
    c.keepalive_ms = 100;
    let joined = ClusterNode::join(&rt, c).await.expect("join");
    (rt, joined)
}

/// Wait until `rt` sees `nodes` (by name) as the live cluster.
pub(crate) async fn until_nodes(rt: &Runtime, want: &[&str]) {
    let t = Instant::now();
    loop {
        let mut seen: Vec<String> = rt.nodes().into_iter().map(|n| n.node).collect();
        seen.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        if seen == want {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the cluster is {seen:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_only_node_is_served_by_a_pool_on_another_node() {
    let nats = NatsServer::start();
    let _a = ServeNode::start(BIN, &nats.url(), "a", 1, 4);
    let (rt, joined) = client(&nats.url(), "client").await;
    until_nodes(&rt, &["a", "client"]).await;
    let a = rt.nodes().into_iter().find(|n| n.node == "a").expect("node a");
    assert!(a.pools.iter().any(|p| p.name == "general" && p.offered && p.size == 1), "{a:?}");
    assert!(rt.nodes().iter().any(|n| n.node == "client" && n.local && n.pools.is_empty()));

    let out = rt.call("general", "echo", json!({"x": [1, "two"]}), RequestOptions::default()).await.unwrap();
    assert_eq!(out.value, json!({"x": [1, "two"]}));
    assert_eq!(out.meta.node.as_deref(), Some("a"), "{:?}", out.meta);
    assert_eq!(out.meta.worker.as_deref(), Some("worker:general:0"));

    // Pinned to a node: served there; to a node that is not in the
    // cluster: a classified error at once, not a timeout.
    let out = rt.call("general", "noop", json!({}), RequestOptions::default().on_node("a")).await.unwrap();
    assert_eq!(out.meta.node.as_deref(), Some("a"));
    let t = Instant::now();
    let e = rt.call("general", "noop", json!({}), RequestOptions::default().on_node("nowhere")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "no-responders took {:?}", t.elapsed());
    // A pool nobody offers.
    let e = rt.call("gpu", "noop", json!({}), RequestOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // Python errors on the other node arrive classified, naming the node.
    let e = rt.call("general", "fail", json!({"message": "boom"}), RequestOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Python, "{e}");
    assert_eq!(e.context().node.as_deref(), Some("a"), "{e}");
    // A request whose deadline passes on the other node ends in `timeout`.
    let t = Instant::now();
    let slow = RequestOptions::default().timeout(Duration::from_millis(300));
    let e = rt.call("general", "sleep", json!({"seconds": 5}), slow).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(t.elapsed() < Duration::from_millis(1500), "the deadline was not kept: {:?}", t.elapsed());

    joined.leave().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_idempotent_request() {
    let nats = NatsServer::start();
    let mut a = ServeNode::start(BIN, &nats.url(), "a", 2, 60);
    let _b = ServeNode::start(BIN, &nats.url(), "b", 2, 60);
    let (rt, joined) = client(&nats.url(), "client").await;
    until_nodes(&rt, &["a", "b", "client"]).await;

    // 200 in flight, idempotent, half a second each, spread by NATS over a and b.
    let deadline = Duration::from_secs(10);
    let mut calls = Vec::new();
    for _ in 0..200 {
        let rt = rt.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let opts = RequestOptions::default().idempotent(true).timeout(deadline);
            let out = rt.call("general", "sleep", json!({"seconds": 0.5}), opts).await;
            (out, t.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    a.kill();
    let killed = Instant::now();

    let (mut on_a, mut retried) = (0, 0);
    for c in calls {
        let (out, took) = c.await.unwrap();
        let out = out.unwrap_or_else(|e| panic!("an idempotent request was lost with node a: {e}"));
        assert!(took < deadline, "a request ended after its deadline ({took:?})");
        match out.meta.node.as_deref() {
            Some("a") => on_a += 1,
            Some("b") => {}
            other => panic!("served by {other:?}"),
        }
        if out.meta.retried {
            retried += 1;
        }
    }
    assert!(retried > 0, "no request was running on node a when it died (a: {on_a})");
    // The node leaves the membership within its lease (1 s) and a refresh.
    until_nodes(&rt, &["b", "client"]).await;
    assert!(killed.elapsed() < Duration::from_secs(4), "node a was seen for {:?}", killed.elapsed());

    // Not idempotent: a classified error, not a hang, when its node dies.
    let mut b2 = ServeNode::start(BIN, &nats.url(), "c", 1, 4);
    until_nodes(&rt, &["b", "c", "client"]).await;
    let rt2 = rt.clone();
    let pinned = tokio::spawn(async move {
        let opts = RequestOptions::default().on_node("c").timeout(deadline);
        rt2.call("general", "sleep", json!({"seconds": 5}), opts).await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    b2.kill();
    let t = Instant::now();
    let e = pinned.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerCrashed, "{e}");
    assert_eq!(e.context().node.as_deref(), Some("c"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "the lost node was noticed after {:?}", t.elapsed());

    joined.leave().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_without_credentials_is_refused_off_loopback() {
    let rt = Runtime::from_config(RuntimeConfig { default_pool: false, ..RuntimeConfig::default() }).await.unwrap();
    let e = ClusterNode::join(&rt, ClusterConfig::new("nats://192.0.2.1:4222", "x").allow_insecure(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("without credentials"), "{e}");
    let e = ClusterNode::join(&rt, ClusterConfig::new("nats://127.0.0.1:1", "x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_server_needs_the_token() {
    let port = crate::nats::free_port();
    let dir = std::env::temp_dir().join(format!("dspex-nats-auth-{}", std::process::id()));
    let mut server = std::process::Command::new(crate::nats::nats_server_binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "--auth", "s3cret-token", "-sd"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let rt = Runtime::from_config(RuntimeConfig { default_pool: false, ..RuntimeConfig::default() }).await.unwrap();
    let e = ClusterNode::join(&rt, ClusterConfig::new(&url, "x").token("wrong")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(!e.to_string().contains("wrong"), "the token leaked into the error: {e}");
    let joined = ClusterNode::join(&rt, ClusterConfig::new(&url, "x").token("s3cret-token")).await.unwrap();
    assert_eq!(rt.node_name().as_deref(), Some("x"));
    joined.leave().await;
    rt.shutdown().await.unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_keeps_serving_when_one_of_three_nats_servers_dies() {
    let mut servers = crate::nats::NatsServer::cluster(3);
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    // Both nodes know only the first server: they learn the others from it
    // (NATS's discovery) and must fail over to them when it dies.
    // The client joins first: it waits for the servers' JetStream to elect
    // a leader and creates the 3-replica membership bucket.
    let rt = Runtime::from_config(RuntimeConfig { default_pool: false, ..RuntimeConfig::default() }).await.unwrap();
    let mut c = ClusterConfig::new(&urls[0], "client").allow_insecure(true).lease_ms(1000);
    c.keepalive_ms = 100;
    c.kv_replicas = 3;
    let joined = ClusterNode::join(&rt, c).await.expect("join a 3-server NATS cluster");
    let config = crate::nats::node_config(&urls[0], "a", 1, 8).replace("kv_replicas = 1", "kv_replicas = 3");
    let _a = ServeNode::with_config(BIN, "a", &config);
    until_nodes(&rt, &["a", "client"]).await;
    let opts = || RequestOptions::default().idempotent(true).timeout(Duration::from_secs(10));
    let out = rt.call("general", "echo", json!({"n": 1}), opts()).await.unwrap();
    assert_eq!(out.meta.node.as_deref(), Some("a"));

    // The server both are connected to dies: they reconnect to the others,
    // calls keep being served, and the membership (3 replicas) keeps both.
    drop(servers.remove(0));
    let t = Instant::now();
    let mut served = 0;
    while t.elapsed() < Duration::from_secs(4) {
        let out = rt.call("general", "echo", json!({"n": served}), opts()).await;
        let out = out.unwrap_or_else(|e| panic!("a call failed after a NATS server died: {e}"));
        assert_eq!(out.value, json!({"n": served}));
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 20, "only {served} calls in 4 s");
    until_nodes(&rt, &["a", "client"]).await;
    joined.leave().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_streams_from_another_node() {
    let nats = NatsServer::start();
    let _a = ServeNode::start(BIN, &nats.url(), "a", 1, 4);
    let (_lm_server, lm) = crate::runtime::offline_lm().await;
    let config = RuntimeConfig { default_pool: false, lm: Some(lm), ..RuntimeConfig::default() };
    let rt = Runtime::from_config(config).await.expect("a client-only runtime");
    let mut c = ClusterConfig::new(nats.url(), "client").allow_insecure(true).lease_ms(1000);
    c.keepalive_ms = 100;
    let joined = ClusterNode::join(&rt, c).await.expect("join");
    until_nodes(&rt, &["a", "client"]).await;

    let program = dspex::Program::new(dspex::ProgramSpec::predict("question -> answer"));
    let q = json!({"question": "What is 2 + 3?"}).as_object().cloned().unwrap_or_default();
    let stream = rt.stream(&program, q.clone(), RequestOptions::python().no_cache()).await.expect("a remote stream");
    let (chunks, out) = crate::support::stream_to_end(stream).await;
    assert!(!chunks.is_empty(), "no chunks came across");
    assert_eq!(out.get_str("answer"), Some("5"));
    assert_eq!(out.meta.node.as_deref(), Some("a"), "{:?}", out.meta);
    assert_eq!(chunks.concat().trim(), "5");
    // The same program, not streamed, gives the same answer from there.
    let plain = rt.run(&program, q, RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(plain.get_str("answer"), Some("5"));
    assert_eq!(plain.meta.node.as_deref(), Some("a"));
    joined.leave().await;
    rt.shutdown().await.unwrap();
}

/// `dspex console --socket SOCK --once CMD`: its stdout.
fn console(socket: &std::path::Path, cmd: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["console", "--socket"])
        .arg(socket)
        .args(["--once", cmd])
        .output()
        .expect("dspex console");
    assert!(out.status.success(), "console {cmd}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_takes_no_new_work_and_each_tree_shows_the_other_nodes() {
    let nats = NatsServer::start();
    let a = ServeNode::start(BIN, &nats.url(), "a", 1, 4);
    let _b = ServeNode::start(BIN, &nats.url(), "b", 1, 4);
    let (rt, joined) = client(&nats.url(), "client").await;
    until_nodes(&rt, &["a", "b", "client"]).await;

    let tree = console(&a.console_socket(), "tree");
    assert!(tree.contains("cluster (other nodes, read-only)"), "{tree}");
    assert!(tree.contains("node:b [node] accepting") && tree.contains("pool:general [pool] ready 1/1"), "{tree}");
    assert!(tree.contains("node:client [node]"), "{tree}");
    let nodes = console(&a.console_socket(), "nodes");
    assert!(nodes.contains("a (this node)") && nodes.contains("general 1/1"), "{nodes}");

    assert!(console(&a.console_socket(), "drain").contains("drained"));
    // Not idempotent, and still never lost: a refuses before running, so
    // every call lands on b.
    for i in 0..30 {
        let out = rt.call("general", "echo", json!({"i": i}), RequestOptions::default()).await.unwrap();
        assert_eq!(out.meta.node.as_deref(), Some("b"), "call {i} went to a drained node");
    }
    let t = Instant::now();
    while rt.nodes().iter().any(|n| n.node == "a" && n.accepting) {
        assert!(t.elapsed() < Duration::from_secs(3), "a still says it takes work");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    joined.leave().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_node_serves_calls_and_streams_refuses_past_its_limit_and_drains() {
    let nats = NatsServer::start();
    let (_lm_server, lm) = crate::runtime::offline_lm().await;
    let server = crate::runtime::builder(1).lm(lm.clone()).start().await.expect("a serving runtime");
    let mut s = ClusterConfig::new(nats.url(), "srv").allow_insecure(true).lease_ms(1000);
    s.keepalive_ms = 100;
    s.max_remote_in_flight = 1;
    let serving = ClusterNode::join(&server, s).await.expect("join");
    assert_eq!(serving.node(), "srv");
    let config = RuntimeConfig { default_pool: false, lm: Some(lm), ..RuntimeConfig::default() };
    let rt = Runtime::from_config(config).await.unwrap();
    let mut c = ClusterConfig::new(nats.url(), "cli").allow_insecure(true).lease_ms(1000);
    c.keepalive_ms = 100;
    let joined = ClusterNode::join(&rt, c).await.expect("join");
    until_nodes(&rt, &["cli", "srv"]).await;
    // Each node learns of the other on its own heartbeat: wait for both views.
    until_nodes(&server, &["cli", "srv"]).await;
    assert_eq!(serving.nodes().len(), 2);

    // A call, and a stream, served by the in-process node.
    let out = rt.call("general", "echo", json!({"k": "v"}), RequestOptions::default()).await.unwrap();
    assert_eq!((out.value, out.meta.node.as_deref()), (json!({"k": "v"}), Some("srv")));
    let program = dspex::Program::new(dspex::ProgramSpec::predict("question -> answer"));
    let q = json!({"question": "What is 2 + 3?"}).as_object().cloned().unwrap_or_default();
    let (chunks, done) = crate::support::stream_to_end(
        rt.stream(&program, q.clone(), RequestOptions::python().no_cache()).await.unwrap(),
    )
    .await;
    assert_eq!((chunks.concat().trim(), done.meta.node.as_deref()), ("5", Some("srv")));

    // A pipeline on the client-only node: its native step runs here, its
    // Python step on the serving node's pool.
    let pipeline = dspex::Pipeline::from_toml(
        r#"
name = "spread"
inputs = ["question"]
outputs = ["answer", "checked"]

[[steps]]
name = "here"
kind = "native"
signature = "question -> answer"

[[steps]]
name = "there"
kind = "python"
signature = "question, answer -> checked: bool"
"#,
    )
    .unwrap();
    let run = rt.run_pipeline(&pipeline, q.clone()).await.unwrap();
    assert_eq!(run.get("answer"), Some(&json!("5")), "{run:?}");
    let (here, there) = (run.step("here").unwrap(), run.step("there").unwrap());
    assert_eq!((here.node.as_deref(), here.route.clone()), (None, Some(dspex::Route::Native)), "{here:?}");
    assert_eq!(there.node.as_deref(), Some("srv"), "{there:?}");
    assert!(there.worker.as_deref().is_some_and(|w| w.starts_with("worker:general:")), "{there:?}");

    // A command the worker does not have fails remotely exactly as it fails
    // locally (same kind and message), and says which node answered.
    let local = server.call("general", "no_such_command", json!({}), RequestOptions::default()).await.unwrap_err();
    let remote = rt.call("general", "no_such_command", json!({}), RequestOptions::default()).await.unwrap_err();
    assert_eq!((remote.kind(), remote.message()), (local.kind(), local.message()), "{remote}");
    assert_eq!(remote.context().node.as_deref(), Some("srv"), "{remote}");

    // The floor under these calls: bare NATS request/reply through the same server.
    let floor = dspex::cluster::nats_round_trip(&ClusterConfig::new(nats.url(), "probe").allow_insecure(true), 5)
        .await
        .unwrap();
    assert_eq!(floor.len(), 5);
    assert!(floor.iter().all(|t| *t > Duration::ZERO && *t < Duration::from_secs(5)), "{floor:?}");

    // A second call while one runs is past max_remote_in_flight: refused,
    // resent, refused again — `overloaded`, long before its deadline.
    let rt2 = rt.clone();
    let long = tokio::spawn(async move {
        rt2.call(
            "general",
            "sleep",
            json!({"seconds": 1.0}),
            RequestOptions::default().timeout(Duration::from_secs(10)),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let e = rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
    assert_eq!(e.context().node.as_deref(), Some("srv"), "{e}");
    assert!(t.elapsed() < Duration::from_millis(900), "refusals took {:?}", t.elapsed());
    // A caller that gives up cancels the call on the serving node.
    let short = RequestOptions::default().timeout(Duration::from_millis(300));
    assert!(long.await.unwrap().is_ok());
    let e = rt.call("general", "sleep", json!({"seconds": 3.0}), short).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");

    // Draining: the node leaves its queue group and says so; nobody else
    // offers the pool, so a call fails at once with `not_found`.
    server.drain_cluster(Duration::from_secs(2)).await.unwrap();
    let t = Instant::now();
    while rt.nodes().iter().any(|n| n.node == "srv" && n.accepting) {
        assert!(t.elapsed() < Duration::from_secs(3), "srv still takes work");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(server.node_name().as_deref(), Some("srv"));
    assert_eq!(rt.drain_cluster(Duration::ZERO).await.map(|()| "drained"), Ok("drained"));
    let lone = Runtime::from_config(RuntimeConfig { default_pool: false, ..RuntimeConfig::default() }).await.unwrap();
    assert_eq!(lone.drain_cluster(Duration::ZERO).await.unwrap_err().kind(), ErrorKind::Config);
    assert!(lone.nodes().is_empty() && lone.node_name().is_none());
    lone.shutdown().await.unwrap();

    joined.leave().await;
    serving.leave().await;
    rt.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}
