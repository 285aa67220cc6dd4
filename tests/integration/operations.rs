//! Operating a runtime from inside the process: every console command over
//! the library API (what the endpoint runs), the blocking facade, and the
//! session controls an operator uses.

use std::time::{Duration, Instant};

use dspex::actors::console::command;
use dspex::{BlockingRuntime, ErrorKind, Map, Pipeline, ProgramSpec, RequestOptions, Step};
use serde_json::{json, Value};

use crate::runtime::{builder, offline_lm};

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_command_answers_or_explains() {
    let (_server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let session = rt.session().await.unwrap();
    session.define("qa", ProgramSpec::predict("question -> answer")).await.unwrap();
    session.set_var("user", json!("ada")).await.unwrap();
    session.run("qa", json!({"question": "What is 17 + 25?"}).as_object().cloned().unwrap()).await.unwrap();

    let help = command(&rt, "help", &[]).await.unwrap();
    assert!(help.as_array().unwrap().iter().any(|c| c["command"] == "scale POOL N"));
    let tree = command(&rt, "tree", &[]).await.unwrap();
    assert_eq!(tree["name"], "dspex");
    let pools = command(&rt, "pools", &[]).await.unwrap();
    assert_eq!(pools[0]["name"], "general");
    let workers = command(&rt, "workers", &args(&["general"])).await.unwrap();
    assert_eq!(workers[0]["name"], "worker:general:0");
    let sessions = command(&rt, "sessions", &[]).await.unwrap();
    assert_eq!(sessions[0]["id"], session.id());
    let one = command(&rt, "session", &args(&[session.id()])).await.unwrap();
    assert_eq!(one["state"]["variables"]["user"], "ada");
    assert_eq!(one["info"]["requests"], 3);
    assert_eq!(command(&rt, "pipelines", &[]).await.unwrap(), json!([]));
    let routes = command(&rt, "routes", &[]).await.unwrap();
    assert_eq!(routes["routes"]["native"], 1);
    let stats = command(&rt, "stats", &[]).await.unwrap();
    assert_eq!(stats["sessions"], 1);
    assert!(stats["uptime_ms"].as_u64().is_some());

    // Usage errors and unknown names say what is wrong.
    for (cmd, a, kind, text) in [
        ("workers", vec![], ErrorKind::InvalidRequest, "usage: workers POOL"),
        ("workers", vec!["nope"], ErrorKind::NotFound, "nope"),
        ("session", vec!["missing"], ErrorKind::NotFound, "missing"),
        ("kill", vec!["router"], ErrorKind::NotFound, "worker:POOL:INDEX"),
        ("kill", vec!["worker:general:x"], ErrorKind::InvalidRequest, "worker:POOL:INDEX"),
        ("kill", vec!["pipeline:p-none"], ErrorKind::NotFound, "p-none"),
        ("scale", vec!["general"], ErrorKind::InvalidRequest, "usage: scale"),
        ("scale", vec!["general", "lots"], ErrorKind::InvalidRequest, "number"),
        ("scale", vec!["general", "0"], ErrorKind::InvalidRequest, "1 to 256"),
        ("restart", vec!["nope"], ErrorKind::NotFound, "nope"),
        ("frobnicate", vec![], ErrorKind::InvalidRequest, "unknown command"),
    ] {
        let err = command(&rt, cmd, &args(&a)).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{cmd} {a:?}: {err}");
        assert!(err.message().contains(text), "{cmd} {a:?}: {}", err.message());
    }

    // Mutating commands: scale up, roll the pool, cancel a run, close a session.
    command(&rt, "scale", &args(&["general", "2"])).await.unwrap();
    assert_eq!(rt.pool("general").unwrap().stats().ready, 2);
    let before: Vec<u32> = rt.pool("general").unwrap().pids();
    let restarted = command(&rt, "restart", &args(&["general"])).await.unwrap();
    assert_eq!(restarted["restarted"], "general");
    let after: Vec<u32> = rt.pool("general").unwrap().pids();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)), "every worker replaced: {before:?} → {after:?}");
    let tree = rt.tree().await.unwrap();
    assert!(tree.find("worker:general:0").unwrap().restarts >= 1);

    let long = Pipeline::builder("long")
        .step(Step::command("wait", "general", "sleep").arg("seconds", json!(30)))
        .build()
        .unwrap();
    let run = rt.start_pipeline(&long, Map::new()).await.unwrap();
    let listed = command(&rt, "pipelines", &[]).await.unwrap();
    assert_eq!(listed[0]["run_id"], run.id());
    command(&rt, "kill", &args(&[&format!("pipeline:{}", run.id())])).await.unwrap();
    assert_eq!(run.wait().await.unwrap_err().kind(), ErrorKind::Cancelled);

    let killed = command(&rt, "kill", &args(&["worker:general:1"])).await.unwrap();
    assert!(killed["pid"].as_u64().is_some());
    command(&rt, "kill", &args(&[&format!("session:{}", session.id())])).await.unwrap();
    assert_eq!(session.run("qa", Map::new()).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(rt.sessions().list().is_empty());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_controls_and_errors() {
    let (_server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let s = rt.sessions().create(dspex::SessionOptions::default().id("ops").pool("general")).await.unwrap();
    assert!(format!("{s:?}").contains("ops"));
    assert!(format!("{:?}", rt.sessions()).contains("count"));
    let chat = ProgramSpec::predict("history: dspy.History, question -> answer");
    s.define("chat", chat).await.unwrap();
    let q = json!({"question": "What is 2 + 3?"}).as_object().cloned().unwrap();
    s.run("chat", q.clone()).await.unwrap();
    assert_eq!(s.history("chat").await.unwrap().len(), 1);
    s.clear_history("chat").await.unwrap();
    assert!(s.history("chat").await.unwrap().is_empty());
    // An explicit history wins over the session's and is not recorded twice.
    let mut with_history = q.clone();
    with_history.insert("history".into(), json!({"messages": [{"question": "hi", "answer": "hello"}]}));
    s.run("chat", with_history).await.unwrap();
    assert_eq!(s.history("chat").await.unwrap().len(), 1);

    let err = s.run("nope", q.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.context().session.as_deref(), Some("ops"));
    // ReAct cannot run natively: forcing it is Unsupported, before any work.
    s.define("agent", ProgramSpec::react("question -> answer", ["tools_for_tests:add"])).await.unwrap();
    let err = s.run_with("agent", q.clone(), RequestOptions::native()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    // Bad ids and pools are refused up front.
    let bad = rt.sessions().create(dspex::SessionOptions::default().id("no spaces")).await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidRequest);
    let bad = rt.sessions().create(dspex::SessionOptions::default().pool("nope")).await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::NotFound);
    s.close().await.unwrap();
    assert_eq!(s.close().await.unwrap_err().kind(), ErrorKind::NotFound);
    rt.shutdown().await.unwrap();
}

#[test]
fn the_blocking_runtime_serves_a_plain_thread() {
    let server_rt = crate::support::runtime();
    let (_server, lm) = server_rt.block_on(offline_lm());
    let rt = BlockingRuntime::start(builder(1).lm(lm)).unwrap();
    let q = json!({"question": "What is 17 + 25?"}).as_object().cloned().unwrap();
    assert_eq!(rt.predict("question -> answer", q.clone()).unwrap().get_str("answer"), Some("42"));
    let cot = rt.chain_of_thought("question -> answer: int", q.clone()).unwrap();
    assert_eq!(cot.get("answer"), Some(&Value::from(42)));
    let program = dspex::Program::new(ProgramSpec::predict("question -> answer"));
    let py = rt.run(&program, q, RequestOptions::python().no_cache()).unwrap();
    assert!(py.meta.worker.is_some());
    let echo = rt.call("general", "echo", json!({"x": 1}), RequestOptions::default()).unwrap();
    assert_eq!(echo.value, json!({"x": 1}));
    assert_eq!(rt.tree().unwrap().name, "dspex");
    assert!(rt.runtime().uptime() > Duration::ZERO);
    let t = Instant::now();
    rt.shutdown().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_options_and_builder_settings_take_effect() {
    use dspex::{CacheConfig, IntensityConfig, RouterConfig};
    let (server, lm) = offline_lm().await;
    let rt = builder(1)
        .lm(lm)
        .router(RouterConfig { prefer: dspex::RoutePreference::Python, ..RouterConfig::default() })
        .cache(CacheConfig { enabled: false, ..CacheConfig::default() })
        .request_timeout(Duration::from_secs(30))
        .pools_intensity(IntensityConfig::new(5, Duration::from_secs(10)))
        .start()
        .await
        .unwrap();
    assert_eq!(rt.config().request_timeout_ms, 30_000);
    let q = json!({"question": "What is 17 + 25?"}).as_object().cloned().unwrap();
    // The router prefers Python now; options carry through to the worker and the LM.
    let opts = RequestOptions::default()
        .pool("general")
        .timeout(Duration::from_secs(20))
        .trace_id("trace-ops-1")
        .shadow(false)
        .idempotent(true)
        .with_config("max_tokens", json!(77));
    let program = dspex::Program::new(ProgramSpec::predict("question -> answer"));
    let out = rt.run(&program, q.clone(), opts).await.unwrap();
    assert_eq!(out.meta.route, dspex::Route::Python("general".into()));
    assert_eq!(out.meta.trace_id, "trace-ops-1");
    let sent = server.requests().last().cloned().unwrap();
    // LiteLLM sends OpenAI's newer name for the limit.
    assert_eq!(sent["max_completion_tokens"], 77, "{sent}");
    // No cache: the same request reaches the LM again.
    let before = server.requests().len();
    rt.run(&program, q.clone(), RequestOptions::default()).await.unwrap();
    assert_eq!(server.requests().len(), before + 1);
    // An unknown pool is a classified error, not a hang.
    let err = rt.run(&program, q, RequestOptions::python().pool("nope")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_endpoints_refuse_unsafe_setups_and_survive_abuse() {
    use dspex::actors::console::{token_file, ConsoleEndpoint, ConsoleServer};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let rt = builder(1).start().await.unwrap();
    // TCP only on loopback, and only with a real token.
    let public = ConsoleEndpoint::Tcp { addr: "0.0.0.0:0".parse().unwrap(), token: "long-enough-token".into() };
    let err = ConsoleServer::start(&rt, public).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("loopback"), "{}", err.message());
    let weak = ConsoleEndpoint::Tcp { addr: "127.0.0.1:0".parse().unwrap(), token: "short".into() };
    assert!(ConsoleServer::start(&rt, weak).await.unwrap_err().message().contains("at least 8"));

    // A stale socket file is replaced; a live one is not taken over.
    let dir = std::env::temp_dir().join(format!("dspex-console-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.sock");
    std::fs::write(&path, b"stale").unwrap();
    let server = ConsoleServer::start(&rt, ConsoleEndpoint::Unix(path.clone())).await.unwrap();
    assert_eq!(std::fs::read_to_string(token_file(&path)).unwrap(), server.token());
    let err = ConsoleServer::start(&rt, ConsoleEndpoint::Unix(path.clone())).await.unwrap_err();
    assert!(err.message().contains("already listening"), "{}", err.message());

    // An oversize line gets an error reply; the connection goes on.
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let huge = format!("{{\"cmd\": \"{}\"}}\n", "x".repeat(70 * 1024));
    w.write_all(huge.as_bytes()).await.unwrap();
    let reply: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(reply["error"]["message"].as_str().unwrap().contains("too long"), "{reply}");
    w.write_all(b"\n{\"id\": 2, \"cmd\": \"pools\"}\n").await.unwrap();
    let reply: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["id"], 2);
    assert_eq!(reply["ok"], true);
    // With the token a mutating command goes through.
    let req = json!({"id": 3, "cmd": "scale", "args": ["general", "1"], "token": server.token()});
    w.write_all(format!("{req}\n").as_bytes()).await.unwrap();
    let reply: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    drop(server);
    assert!(!path.exists() && !token_file(&path).exists(), "dropping the server removes its files");
    let _ = std::fs::remove_dir_all(&dir);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_recycled_by_request_count_and_memory_without_failing_requests() {
    let mut pool = dspex::PoolConfig::new("general").size(1).concurrency(2);
    pool.max_requests = Some(3);
    let rt = dspex::Runtime::builder().python(crate::support::python()).pool(pool).start().await.unwrap();
    let mut events = rt.subscribe();
    let mut pids = std::collections::BTreeSet::new();
    for i in 0..12 {
        let out = rt.call("general", "echo", json!({ "i": i }), RequestOptions::default()).await.unwrap();
        assert_eq!(out.value, json!({ "i": i }));
        pids.insert(out.meta.pid.unwrap());
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(pids.len() >= 3, "a worker serves at most 3 requests, then is replaced: {pids:?}");
    let mut recycled = 0;
    while let Ok(e) = events.try_recv() {
        if let dspex::EventKind::Lifecycle { what, detail, .. } = &e.kind {
            if what == "recycled" {
                assert!(detail.contains("served"), "{detail}");
                recycled += 1;
            }
        }
    }
    assert!(recycled >= 2, "{recycled} recycles");
    rt.shutdown().await.unwrap();

    // A resident-memory limit every worker exceeds: replaced as soon as it is idle.
    let mut pool = dspex::PoolConfig::new("general").size(1);
    pool.max_rss_mb = Some(1);
    let rt = dspex::Runtime::builder().python(crate::support::python()).pool(pool).start().await.unwrap();
    let first = rt.pool("general").unwrap().pids();
    let t = Instant::now();
    while rt.pool("general").unwrap().pids() == first && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(rt.pool("general").unwrap().pids(), first, "recycled for its memory");
    rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_program_lms_python_lm_overrides_and_config_errors() {
    let (server, lm) = offline_lm().await;
    // Two pools with one name: a configuration error, not a half-started runtime.
    let text = "[[pools]]\nname = 'general'\n[[pools]]\nname = 'general'\n";
    let cfg = dspex::RuntimeConfig::from_toml(text).unwrap();
    let err = dspex::Runtime::from_config(cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("two pools are named general"), "{}", err.message());

    // Python workers can be given their own LM (here DSPy's DummyLM);
    // a pool can name its interpreter.
    let pool = dspex::PoolConfig::new("general").size(1).interpreter(crate::support::python());
    let rt = dspex::Runtime::builder()
        .pool(pool)
        .lm(lm.clone())
        .python_lm(json!({"dummy": [{"answer": "from DummyLM"}]}))
        .start()
        .await
        .unwrap();
    assert!(format!("{rt:?}").contains("general"));
    let q = json!({"question": "What is 17 + 25?"}).as_object().cloned().unwrap();
    let program = dspex::Program::new(ProgramSpec::predict("question -> answer"));
    let py = rt.run(&program, q.clone(), RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(py.get_str("answer"), Some("from DummyLM"));
    // A program that names its own LM gets a client for it (cached per settings).
    let own = dspex::LmConfig { model: "program-model".into(), ..lm.clone() };
    let program = dspex::Program::new(ProgramSpec::predict("question -> answer").with_lm(own));
    for _ in 0..2 {
        let out = rt.run(&program, q.clone(), RequestOptions::native().no_cache()).await.unwrap();
        assert_eq!(out.get_str("answer"), Some("42"));
    }
    let models: Vec<String> =
        server.requests().iter().filter_map(|r| r["model"].as_str().map(str::to_string)).collect();
    assert_eq!(models.iter().filter(|m| *m == "program-model").count(), 2, "{models:?}");
    rt.shutdown().await.unwrap();
}
