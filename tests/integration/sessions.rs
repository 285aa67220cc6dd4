//! Sessions over the public API: surviving their worker's `kill -9`,
//! snapshots and restore, torn snapshots, expiry and the cap, ordering, and
//! multi-turn prompts checked against real DSPy's ChatAdapter.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::{ErrorKind, LmConfig, Map, ProgramSpec, RequestOptions, SessionConfig, SessionOptions};
use serde_json::{json, Value};

use crate::runtime::{builder, offline_lm};

fn q(question: &str) -> Map {
    json!({ "question": question }).as_object().cloned().expect("an object")
}

const CHAT: &str = "history: dspy.History, question -> answer";

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dspex-test-{tag}-{}-{}", std::process::id(), fastrand::u32(..)));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn worker_index(worker: &str) -> usize {
    worker.rsplit(':').next().and_then(|i| i.parse().ok()).expect("worker:<pool>:<index>")
}

/// The user messages (without the system message) the LM received last.
fn last_messages(server: &LmServer) -> Vec<Value> {
    let reqs = server.requests();
    reqs.last().expect("an LM request")["messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_kill_9_of_its_worker() {
    let server = LmServer::start(OfflineResponder::with_latency(Duration::from_millis(400))).await.unwrap();
    let lm = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("test").with_temperature(0.0);
    let rt = builder(2).lm(lm).start().await.unwrap();
    let session = rt.session().await.unwrap();
    session.define("chat", ProgramSpec::predict(CHAT)).await.unwrap();
    let python = || RequestOptions::python().no_cache();

    let first = session.run_with("chat", q("What is 17 + 25?"), python()).await.unwrap();
    assert_eq!(first.get_str("answer"), Some("42"));
    let info = rt.sessions().list().into_iter().next().unwrap();
    let worker = info.worker.clone().expect("pinned to a worker");
    assert_eq!(first.meta.worker.as_deref(), Some(worker.as_str()));

    // kill -9 the pinned worker between requests: the next call rebuilds.
    rt.kill_worker("general", worker_index(&worker)).unwrap();
    let second = session.run_with("chat", q("What is the capital of France?"), python()).await.unwrap();
    assert_eq!(second.get_str("answer"), Some("Paris"));
    let info = rt.sessions().list()[0].clone();
    assert!(info.rebuilds >= 1, "{info:?}");
    // The LM saw the first turn: the history was carried over to the new worker.
    let msgs = last_messages(&server);
    assert!(msgs.iter().any(|m| m["content"].as_str().unwrap_or("").contains("What is 17 + 25?")), "{msgs:?}");

    // kill -9 while a request is in flight: program runs are idempotent,
    // so the caller gets a transparent retry on the rebuilt state.
    let pinned = rt.sessions().list()[0].worker.clone().unwrap();
    let (s2, opts) = (session.clone(), python());
    let call = tokio::spawn(async move { s2.run_with("chat", q("What is 2 + 3?"), opts).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    rt.kill_worker("general", worker_index(&pinned)).unwrap();
    let third = call.await.unwrap().unwrap();
    assert_eq!(third.get_str("answer"), Some("5"));
    assert!(third.meta.retried, "retried on the rebuilt session");

    let history = session.history("chat").await.unwrap();
    let questions: Vec<&str> = history.iter().map(|t| t["question"].as_str().unwrap()).collect();
    assert_eq!(questions, ["What is 17 + 25?", "What is the capital of France?", "What is 2 + 3?"]);
    assert_eq!(history[1]["answer"], "Paris");
    assert!(rt.sessions().list()[0].rebuilds >= 2);

    // The session is an actor in the tree.
    let tree = rt.tree().await.unwrap();
    let node = tree.find(&format!("session:{}", session.id())).expect("session actor");
    assert_eq!(node.info.extra["turns"], 3);
    session.close().await.unwrap();
    assert_eq!(rt.sessions().get(session.id()).unwrap_err().kind(), ErrorKind::NotFound);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_restore_from_snapshots_and_torn_ones_are_reported() {
    let dir = scratch_dir("snapshots");
    let config = SessionConfig { snapshot_dir: Some(dir.clone()), ..SessionConfig::default() };
    let (server, lm) = offline_lm().await;

    let rt = builder(1).lm(lm.clone()).sessions(config.clone()).start().await.unwrap();
    let s = rt.sessions().create(SessionOptions::default().id("alpha")).await.unwrap();
    s.define("chat", ProgramSpec::predict(CHAT)).await.unwrap();
    s.run("chat", q("What is 17 + 25?")).await.unwrap();
    s.run("chat", q("What is the capital of Japan?")).await.unwrap();
    s.set_var("user", json!("ada")).await.unwrap();
    let before = s.state().await.unwrap();
    rt.shutdown().await.unwrap();

    // A second snapshot, torn in the middle of its write.
    let good = std::fs::read(dir.join("alpha.session")).unwrap();
    std::fs::write(dir.join("beta.session"), &good[..good.len() / 2]).unwrap();

    let rt = builder(1).lm(lm).sessions(config).start().await.unwrap();
    let report = rt.sessions().restore_report();
    assert_eq!(report.restored, ["alpha"]);
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(report.rejected[0].0.ends_with("beta.session"));
    assert!(report.rejected[0].1.contains("torn"), "{}", report.rejected[0].1);
    assert!(dir.join("beta.session.corrupt").exists(), "moved aside, not half-loaded");
    assert!(rt.sessions().get("beta").is_err());

    let s = rt.sessions().get("alpha").unwrap();
    assert_eq!(s.state().await.unwrap(), before);
    s.run("chat", q("What is 2 + 3?")).await.unwrap();
    let msgs = last_messages(&server);
    assert!(msgs.iter().any(|m| m["content"].as_str().unwrap_or("").contains("Japan")), "history restored");
    assert_eq!(s.history("chat").await.unwrap().len(), 3);
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_and_the_cap_is_enforced() {
    let config = SessionConfig { max_sessions: 2, ..SessionConfig::default() };
    let rt = builder(1).sessions(config).start().await.unwrap();
    let short = rt.sessions().create(SessionOptions::default().ttl(Duration::from_millis(200))).await.unwrap();
    let _long = rt.sessions().create(SessionOptions::default().id("long")).await.unwrap();
    let err = rt.session().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded);
    assert!(err.message().contains("max_sessions"), "{}", err.message());
    assert!(err.is_retryable());

    let t = Instant::now();
    while rt.sessions().list().len() == 2 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = rt.sessions().list().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["long"], "the idle session expired");
    assert_eq!(short.state().await.unwrap_err().kind(), ErrorKind::NotFound);
    // Room again below the cap; a duplicate id is refused.
    rt.session().await.unwrap();
    let dup = rt.sessions().create(SessionOptions::default().id("long")).await.unwrap_err();
    assert_eq!((dup.kind(), dup.is_retryable()), (ErrorKind::Conflict, false), "{dup}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_a_session_apply_in_order() {
    let (server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let session = rt.session().await.unwrap();
    session.define("chat", ProgramSpec::predict(CHAT)).await.unwrap();
    let calls = (0..12).map(|i| {
        let s = session.clone();
        tokio::spawn(async move { s.run("chat", q(&format!("What is {i} + 1?"))).await })
    });
    for c in futures_util::future::join_all(calls).await {
        c.unwrap().unwrap();
    }
    // Each request saw every earlier turn and no two saw the same history:
    // they were applied one at a time, in the order the LM received them.
    let history = session.history("chat").await.unwrap();
    assert_eq!(history.len(), 12);
    let reqs = server.requests();
    for (k, req) in reqs.iter().enumerate() {
        let msgs = req["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 2 + 2 * k, "request {k} saw {k} earlier turns");
        let asked = msgs.last().unwrap()["content"].as_str().unwrap();
        assert!(asked.contains(history[k]["question"].as_str().unwrap()), "turn {k} is in order");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_prompts_equal_dspy_chat_adapter() {
    let (server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let session = rt.session().await.unwrap();
    session.define("chat", ProgramSpec::predict(CHAT)).await.unwrap();
    let turns = ["What is 17 + 25?", "What is the capital of Kenya?", "And of Egypt?"];
    for (i, t) in turns.iter().enumerate() {
        // Alternate the routes: the history is the session's, whichever runs it.
        let opts = if i % 2 == 0 { RequestOptions::native() } else { RequestOptions::python() };
        session.run_with("chat", q(t), opts.no_cache()).await.unwrap();
    }
    let history = session.history("chat").await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    for (k, req) in reqs.iter().enumerate() {
        let expected = rt
            .call(
                "general",
                "dspy.format",
                json!({
                    "signature": CHAT,
                    "inputs": {"history": {"messages": history[..k]}, "question": turns[k]},
                }),
                RequestOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(req["messages"], expected.value["messages"], "turn {k}: the prompt DSPy's ChatAdapter builds");
    }
    // A third, native turn after a Python one: the native engine renders the
    // history exactly as DSPy does.
    assert_eq!(reqs[2]["messages"].as_array().unwrap().len(), 6);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_a_window_of_its_history() {
    let (server, lm) = offline_lm().await;
    let config = SessionConfig { history_turns: Some(1), ..SessionConfig::default() };
    let rt = builder(1).lm(lm).sessions(config).start().await.unwrap();
    let session = rt.sessions().create(SessionOptions::default().history_turns(2)).await.unwrap();
    session.define("chat", ProgramSpec::predict(CHAT)).await.unwrap();
    for (i, route) in
        [RequestOptions::native(), RequestOptions::python(), RequestOptions::native(), RequestOptions::python()]
            .into_iter()
            .enumerate()
    {
        session.run_with("chat", q(&format!("What is {i} + 1?")), route).await.unwrap();
    }
    // The latest two turns are kept, and the last request saw only those.
    let history = session.history("chat").await.unwrap();
    let asked: Vec<&str> = history.iter().map(|t| t["question"].as_str().unwrap()).collect();
    assert_eq!(asked, ["What is 2 + 1?", "What is 3 + 1?"]);
    assert_eq!(last_messages(&server).len(), 2 + 2 * 2, "system, two earlier turns, the question");
    assert_eq!(session.state().await.unwrap().history_turns, Some(2));
    // Without the option, the runtime's setting applies.
    let other = rt.session().await.unwrap();
    other.define("chat", ProgramSpec::predict(CHAT)).await.unwrap();
    for i in 0..3 {
        other.run("chat", q(&format!("What is {i} + 2?"))).await.unwrap();
    }
    assert_eq!(other.history("chat").await.unwrap().len(), 1);
    rt.shutdown().await.unwrap();
}
