//! The runtime over its public API: routing, fallback, breakers, shadowing,
//! pools (overload, retries, refill, resize), streaming, the cache,
//! optimizers and evaluation — with real Python workers running DSPy and a
//! local OpenAI-compatible server as the LM.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::{LmServer, Reply, Responder};
use dspex::{
    BreakerState, ErrorKind, IntensityConfig, LmConfig, Map, PoolConfig, Program, ProgramSpec, RequestOptions, Route,
    RouterConfig, Runtime, RuntimeBuilder, StreamEvent,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support;

fn inputs(v: Value) -> Map {
    v.as_object().cloned().expect("an object")
}

/// An offline LM served on 127.0.0.1, and its settings at temperature 0.
pub async fn offline_lm() -> (LmServer, LmConfig) {
    let server = LmServer::start(OfflineResponder::new()).await.expect("LM server");
    let cfg = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("test").with_temperature(0.0);
    (server, cfg)
}

/// A builder with the project's Python and a `general` pool of `size` workers.
pub fn builder(size: usize) -> RuntimeBuilder {
    Runtime::builder().python(support::python()).pool(PoolConfig::new("general").size(size).concurrency(4))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_native_and_python_with_metadata_and_tree() {
    let (server, lm) = offline_lm().await;
    let rt = builder(2).lm(lm).start().await.unwrap();
    let q = inputs(json!({"question": "What is 17 + 25?"}));

    let native = rt.predict("question -> answer", q.clone()).await.unwrap();
    assert_eq!(native.meta.route, Route::Native);
    assert_eq!(native.get_str("answer"), Some("42"));
    assert!(native.meta.reason.contains("native"));
    assert!(!native.meta.trace_id.is_empty());

    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let py = rt.run(&program, q.clone(), RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(py.meta.route, Route::Python("general".into()));
    assert_eq!(py.get_str("answer"), Some("42"), "both routes read the same answer");
    let worker = py.meta.worker.clone().unwrap();
    assert!(worker.starts_with("worker:general:"), "{worker}");
    assert!(py.meta.pid.unwrap() > 0);
    assert!(py.meta.timings.execution_us > 0 && py.meta.timings.total_us >= py.meta.timings.execution_us);
    // The LM saw the same messages from both routes.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["messages"], reqs[1]["messages"]);

    // ReAct has no native form: asking for native fails with Unsupported.
    let react = Program::new(ProgramSpec::react("question -> answer", ["tools_for_tests:add"]));
    let err = rt.run(&react, q.clone(), RequestOptions::native()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);

    let tree = rt.tree().await.unwrap();
    assert_eq!(tree.name, "dspex");
    let names: Vec<&str> = tree.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["telemetry", "router", "pools", "sessions", "pipelines"]);
    let pool = tree.find("pool:general").unwrap();
    let kinds: Vec<&str> = pool.children.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["zygote", "worker", "worker"], "the zygote first, then the workers");
    for w in pool.children.iter().filter(|c| c.kind == "worker") {
        assert_eq!(w.status, "ready");
        assert!(w.info.pid.is_some());
        assert_eq!(w.restarts, 0);
    }
    let stats = rt.router().stats();
    assert_eq!(stats.routes["native"], 1);
    assert!(stats.recent.iter().any(|d| d.route == "python:general"));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_deterministic_request_hits_the_cache() {
    let (server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let mut events = rt.subscribe();
    let q = inputs(json!({"question": "What is the capital of France?"}));
    let first = rt.predict("question -> answer", q.clone()).await.unwrap();
    let second = rt.predict("question -> answer", q.clone()).await.unwrap();
    assert!(!first.meta.cached);
    assert!(second.meta.cached);
    assert_eq!(first.prediction, second.prediction);
    assert_ne!(first.meta.trace_id, second.meta.trace_id);
    assert_eq!(server.requests().len(), 1, "the second answer came from the cache");
    // Off on demand.
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let third = rt.run(&program, q.clone(), RequestOptions::default().no_cache()).await.unwrap();
    assert!(!third.meta.cached);
    assert_eq!(server.requests().len(), 2);
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e.kind.name());
    }
    assert!(seen.contains(&"cache.miss") && seen.contains(&"cache.hit"), "{seen:?}");
    rt.shutdown().await.unwrap();
}

/// A responder that fails with 500 while `broken` is set.
struct Switch {
    broken: Arc<AtomicBool>,
    inner: OfflineResponder,
}

impl Responder for Switch {
    fn respond(&self, request: &Value) -> Reply {
        if self.broken.load(Ordering::SeqCst) {
            Reply::status(500)
        } else {
            self.inner.respond(request)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_failure_falls_back_and_the_breaker_cycles() {
    let broken = Arc::new(AtomicBool::new(true));
    let native_server =
        LmServer::start(Switch { broken: broken.clone(), inner: OfflineResponder::new() }).await.unwrap();
    let (_py_server, py_lm) = offline_lm().await;
    let mut native_lm = LmConfig::new("offline").with_base_url(native_server.base_url()).with_api_key("x");
    native_lm.max_retries = 0;
    let rt = builder(1)
        .lm(py_lm)
        .native_lm(Arc::new(dspex::native::lm::OpenAiClient::new(&native_lm).unwrap()))
        .router(RouterConfig { breaker_failures: 2, breaker_cooldown_ms: 300, ..Default::default() })
        .start()
        .await
        .unwrap();
    let q = inputs(json!({"question": "What is 2 + 3?"}));
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let opts = || RequestOptions::default().no_cache();

    // Native fails (HTTP 500): the answer comes from Python, and says so.
    let out = rt.run(&program, q.clone(), opts()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()));
    assert!(out.meta.fallback.as_deref().unwrap_or_default().contains("native"), "{:?}", out.meta.fallback);
    assert_eq!(out.get_str("answer"), Some("5"));
    let out = rt.run(&program, q.clone(), opts()).await.unwrap();
    assert!(out.meta.fallback.is_some());
    // Two failures open the native circuit: requests go straight to Python.
    assert_eq!(rt.router().breaker_state(&Route::Native), BreakerState::Open);
    let out = rt.run(&program, q.clone(), opts()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()));
    assert!(out.meta.fallback.is_none());
    assert!(out.meta.reason.contains("circuit open"), "{}", out.meta.reason);
    assert_eq!(rt.router().stats().fallbacks, 2);

    // After the cooldown one probe goes native; the LM is back, so it closes.
    broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let out = rt.run(&program, q.clone(), opts()).await.unwrap();
    assert_eq!(out.meta.route, Route::Native);
    assert_eq!(rt.router().breaker_state(&Route::Native), BreakerState::Closed);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_runs_record_divergence() {
    // Native and Python talk to different LMs that disagree about one answer.
    let native_server =
        LmServer::start(|_: &Value| Reply::text("[[ ## answer ## ]]\nLyon\n\n[[ ## completed ## ]]")).await.unwrap();
    let (_py_server, py_lm) = offline_lm().await;
    let native_lm = LmConfig::new("offline").with_base_url(native_server.base_url()).with_api_key("x");
    let rt = builder(1)
        .lm(py_lm)
        .native_lm(Arc::new(dspex::native::lm::OpenAiClient::new(&native_lm).unwrap()))
        .router(RouterConfig { shadow_rate: 1.0, ..Default::default() })
        .start()
        .await
        .unwrap();
    let q = inputs(json!({"question": "What is the capital of France?"}));
    let out = rt.predict("question -> answer", q).await.unwrap();
    assert_eq!(out.meta.route, Route::Native, "the primary answer is returned");
    assert_eq!(out.get_str("answer"), Some("Lyon"));
    let end = Instant::now() + Duration::from_secs(20);
    while rt.router().stats().shadowed == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = rt.router().stats();
    assert_eq!((stats.shadowed, stats.divergences), (1, 1));
    let d = &stats.recent_divergences[0];
    assert!(d.detail.contains("Lyon") && d.detail.contains("Paris"), "{}", d.detail);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_overloaded_and_queue_deadline_too() {
    let mut pool = PoolConfig::new("general").size(1).concurrency(1);
    pool.max_queue = 1;
    pool.queue_timeout_ms = 400;
    let rt = Runtime::builder().python(support::python()).pool(pool).start().await.unwrap();
    let sleep = |s: f64| {
        let rt = rt.clone();
        tokio::spawn(async move { rt.call("general", "sleep", json!({"seconds": s}), RequestOptions::default()).await })
    };
    let busy = sleep(1.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = sleep(0.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The queue (1) is full: shed at once.
    let t = Instant::now();
    let err = rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    assert!(err.is_retryable());
    assert!(t.elapsed() < Duration::from_millis(100));
    // The queued one waited past the queue timeout (400 ms) behind a 1 s request.
    let err = queued.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    assert!(err.message().contains("queue timeout"), "{err}");
    assert!(busy.await.unwrap().is_ok());
    let stats = rt.pool("general").unwrap().stats();
    assert_eq!(stats.overloaded, 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_request_survives_kill_9_of_its_worker() {
    let rt = builder(2).start().await.unwrap();
    let pool = rt.pool("general").unwrap();
    // Occupy both workers with a slow idempotent request each and kill the
    // worker of one of them.
    let call = |rt: Runtime| async move {
        rt.call("general", "sleep", json!({"seconds": 0.8}), RequestOptions::default().idempotent(true)).await
    };
    let a = tokio::spawn(call(rt.clone()));
    let b = tokio::spawn(call(rt.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victim = pool.stats().workers.iter().find(|w| w.in_flight > 0).map(|w| w.name.clone()).unwrap();
    let index: usize = victim.rsplit(':').next().unwrap().parse().unwrap();
    let pid = rt.kill_worker("general", index).unwrap();
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let retried: Vec<_> = [&a, &b].into_iter().filter(|o| o.meta.retried).collect();
    assert_eq!(retried.len(), 1, "exactly the killed worker's request was retried");
    assert_ne!(retried[0].meta.pid, Some(pid));
    // A request that is not idempotent gets a classified error instead.
    let c = tokio::spawn({
        let rt = rt.clone();
        async move { rt.call("general", "sleep", json!({"seconds": 2.0}), RequestOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = pool.stats().workers.iter().find(|w| w.in_flight > 0 && w.state == "ready").map(|w| w.name.clone());
    let index: usize = busy.unwrap().rsplit(':').next().unwrap().parse().unwrap();
    rt.kill_worker("general", index).unwrap();
    let err = c.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerCrashed, "{err}");
    assert!(err.context().pool.as_deref() == Some("general"));
    pool.wait_ready(2, Duration::from_secs(30)).await.unwrap();
    rt.shutdown().await.unwrap();
}

/// The worker nodes of pool `general` (its zygote is a child too).
async fn workers_in_tree(rt: &Runtime) -> usize {
    let tree = rt.tree().await.unwrap();
    tree.find("pool:general").unwrap().children.iter().filter(|c| c.kind == "worker").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_refills_after_a_crash_storm_and_resizes() {
    let mut pool = PoolConfig::new("general").size(2);
    pool.intensity = IntensityConfig {
        max_restarts: 2,
        period_ms: 10_000,
        backoff_initial_ms: 10,
        backoff_max_ms: 100,
        healthy_after_ms: 0,
    };
    let rt = Runtime::builder().python(support::python()).pool(pool).start().await.unwrap();
    let handle = rt.pool("general").unwrap();
    let mut events = rt.subscribe();
    let before = handle.pids();
    // Kill workers faster than the pool's intensity allows: the pool
    // supervisor escalates and `pools` restarts the whole pool.
    for _ in 0..4 {
        let _ = handle.wait_ready(1, Duration::from_secs(30)).await;
        let pids = handle.pids();
        if let Some(pid) = pids.first() {
            // SAFETY: kill(2) on a worker pid we own.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.wait_ready(2, Duration::from_secs(60)).await.unwrap();
    let after = handle.pids();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)), "every worker was replaced: {before:?} -> {after:?}");
    let tree = rt.tree().await.unwrap();
    assert!(tree.find("pools").unwrap().children[0].restarts >= 1, "the pool itself was restarted");
    let mut escalated = false;
    while let Ok(e) = events.try_recv() {
        if let dspex::EventKind::Lifecycle { what, .. } = &e.kind {
            escalated |= what == "exited";
        }
    }
    assert!(escalated);
    // Still serving.
    rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap();

    // Resize: up to 3, down to 1.
    rt.scale("general", 3).await.unwrap();
    handle.wait_ready(3, Duration::from_secs(60)).await.unwrap();
    assert_eq!(workers_in_tree(&rt).await, 3);
    rt.scale("general", 1).await.unwrap();
    assert_eq!(handle.stats().workers.len(), 1);
    assert_eq!(workers_in_tree(&rt).await, 1);
    rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_through_both_routes() {
    let (_server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let q = inputs(json!({"question": "What is 6 + 7?"}));
    for opts in [RequestOptions::native(), RequestOptions::python()] {
        let want = opts.route;
        let mut stream = rt.stream(&program, q.clone(), opts).await.unwrap();
        let mut chunks = String::new();
        let mut done = None;
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                StreamEvent::Chunk { text, .. } => chunks.push_str(&text),
                StreamEvent::Done(out) => done = Some(*out),
            }
        }
        let out = done.expect("a final prediction");
        assert_eq!(out.get_str("answer"), Some("13"), "{want:?}");
        assert!(chunks.contains("13"), "{want:?}: chunks {chunks:?}");
        match want {
            Some(dspex::RoutePreference::Native) => assert_eq!(out.meta.route, Route::Native),
            _ => assert_eq!(out.meta.route, Route::Python("general".into())),
        }
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_then_serve_natively_and_evaluate_with_progress() {
    let (server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let train: Vec<Map> = [(2, 3), (10, 4), (7, 8), (20, 22)]
        .iter()
        .map(|(a, b)| inputs(json!({"question": format!("What is {a} + {b}?"), "answer": (a + b).to_string()})))
        .collect();
    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let req = dspex::OptimizeRequest::new("BootstrapFewShot", program.clone(), train.clone(), "exact_match")
        .param("max_bootstrapped_demos", json!(2))
        .param("max_labeled_demos", json!(0))
        .input_keys(["question"]);
    let optimized = rt
        .optimize(
            req,
            Some(Arc::new(move |_: &Value| {
                p.fetch_add(1, Ordering::Relaxed);
            })),
        )
        .await
        .unwrap();
    assert!(progress.load(Ordering::Relaxed) > 0);
    assert_eq!(optimized.demos, 2);
    let info = optimized.program.inspect();
    assert_eq!(info.demos.len(), 2);
    assert!(info.native_unsupported.is_none());
    server.clear_requests();
    let out = rt
        .run(&optimized.program, inputs(json!({"question": "What is 40 + 2?"})), RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(out.meta.route, Route::Native);
    assert_eq!(out.get_str("answer"), Some("42"));
    let sent = &server.requests()[0]["messages"];
    assert_eq!(sent.as_array().unwrap().len(), 2 + 2 * 2, "system, two demo turns, question: {sent}");

    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let eval = rt
        .evaluate(
            dspex::EvaluateRequest::new(optimized.program.clone(), train, "exact_match"),
            Some(Arc::new(move |_: &Value| {
                s.fetch_add(1, Ordering::Relaxed);
            })),
        )
        .await
        .unwrap();
    assert_eq!(eval.score, 100.0);
    assert_eq!(eval.results.len(), 4);
    assert_eq!(seen.load(Ordering::Relaxed), 4);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_reported_not_hung() {
    let t = Instant::now();
    let err = Runtime::builder()
        .python("/nonexistent/python3")
        .pool(PoolConfig::new("general").size(1))
        .start()
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(err.message().contains("could not start") || err.message().contains("nonexistent"), "{err}");
    let err = dspex::RuntimeConfig::from_toml("[[pools]]\nname = 'a'\n[[pools]]\nname = 'a'\n").unwrap();
    let err = Runtime::from_config(err).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

/// An LM for ProgramOfThought: it writes code for the question (no digits in
/// it, so the offline LM cannot answer by itself), then answers with what
/// the sandbox printed, so the answer proves the code ran.
fn code_writer(request: &Value) -> Reply {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let system = messages.first().and_then(|m| m["content"].as_str()).unwrap_or_default();
    let user = messages.last().and_then(|m| m["content"].as_str()).unwrap_or_default();
    if system.contains("`generated_code`") {
        return Reply::text(
            "[[ ## reasoning ## ]]\nMultiply.\n\n[[ ## generated_code ## ]]\n```python\nprint(6 * 7)\n```\n\n[[ ## completed ## ]]",
        );
    }
    if let Some((_, rest)) = user.split_once("[[ ## code_output ## ]]\n") {
        let shown = rest.split("\n\n").next().unwrap_or_default().trim();
        // DSPy shows the output as a JSON string.
        let printed = serde_json::from_str::<String>(shown).unwrap_or_else(|_| shown.to_string()).trim().to_string();
        return Reply::text(format!(
            "[[ ## reasoning ## ]]\nThe code printed it.\n\n[[ ## answer ## ]]\n{printed}\n\n[[ ## completed ## ]]"
        ));
    }
    OfflineResponder::new().respond(request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_of_thought_runs_code_in_the_sandbox_and_best_of_n_needs_its_reward() {
    let server = LmServer::start(code_writer).await.expect("LM server");
    let lm = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("test").with_temperature(0.0);
    let mut pool = PoolConfig::new("general").size(1).concurrency(2);
    pool.python_path = vec![support::repo_root().join("tests/python")];
    let rt = Runtime::builder().python(support::python()).pool(pool).lm(lm).start().await.unwrap();
    let q = inputs(json!({"question": "What is six times seven?"}));

    let pot = Program::new(ProgramSpec::program_of_thought("question -> answer"));
    let out = rt.run(&pot, q.clone(), RequestOptions::default()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()), "ProgramOfThought has no native form");
    assert_eq!(out.get_str("answer"), Some("42"), "the sandbox's output: {:?}", out.prediction.fields);

    let best = Program::new(ProgramSpec::best_of_n("question -> answer", 2, "dspex_test_helpers:short_answer", 1.0));
    let out = rt.run(&best, q.clone(), RequestOptions::default()).await.unwrap();
    assert!(out.get_str("answer").is_some(), "{:?}", out.prediction.fields);
    for kind in [dspex::ModuleKind::BestOfN, dspex::ModuleKind::Refine] {
        let mut spec = ProgramSpec::best_of_n("question -> answer", 2, "x:y", 1.0);
        spec.module = kind;
        spec.params.remove("reward_fn");
        let err = rt.run(&Program::new(spec), q.clone(), RequestOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
        assert!(err.message().contains("reward_fn"), "no silent constant reward: {err}");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_specs_carry_templates_and_strict_inputs_on_every_path() {
    let (server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    let templated = Program::new(
        ProgramSpec::predict("question -> answer").with_template(
            Some("Your output fields are:\n{% for f in signature.outputs %}{{ loop.index }}. `{{ f.name }}` ({{ f.type }})\n{% endfor %}Answer with digits only."),
            "[[ ## question ## ]]\nQ: {{ inputs.question }}",
        ),
    );
    let q = inputs(json!({"question": "What is 17 + 25?"}));
    let out = rt.run(&templated, q.clone(), RequestOptions::default().no_cache()).await.unwrap();
    assert_eq!(out.meta.route, Route::Native);
    let sent = server.requests().pop().unwrap();
    assert_eq!(sent["messages"][0]["content"], "Your output fields are:\n1. `answer` (str)\nAnswer with digits only.");
    assert_eq!(sent["messages"][1]["content"], "[[ ## question ## ]]\nQ: What is 17 + 25?");
    assert_eq!(out.get_str("answer"), Some("42"));
    // DSPy cannot render it: no Python route, asked for or as a fallback.
    let err = rt.run(&templated, q.clone(), RequestOptions::python()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("template"), "{err}");
    // A session runs it natively too.
    let session = rt.session().await.unwrap();
    session.define("t", templated.spec().clone()).await.unwrap();
    server.clear_requests();
    session.run("t", q.clone()).await.unwrap();
    let sent = &server.requests()[0]["messages"][0]["content"];
    assert!(sent.as_str().unwrap().ends_with("Answer with digits only."), "{sent}");
    // A broken template is a clear error when the program is built.
    let broken = Program::new(ProgramSpec::predict("question -> answer").with_template(None, "{% if %}"));
    let err = rt.run(&broken, q, RequestOptions::default()).await.unwrap_err();
    assert!(err.message().contains("template"), "{err}");

    // Strict inputs: a wrong type fails before any LM call, on both routes.
    let strict = Program::new(ProgramSpec::predict("n: int -> answer").with_strict_inputs());
    let lax = Program::new(ProgramSpec::predict("n: int -> answer"));
    let wrong = inputs(json!({"n": "two"}));
    server.clear_requests();
    for opts in [RequestOptions::default(), RequestOptions::python()] {
        let err = rt.run(&strict, wrong.clone(), opts.no_cache()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
        assert!(err.message().contains('n'), "{err}");
    }
    assert!(server.requests().is_empty(), "nothing reached the LM");
    for opts in [RequestOptions::default(), RequestOptions::python()] {
        rt.run(&lax, wrong.clone(), opts.no_cache()).await.expect("DSPy only warns");
    }
    let right = rt.run(&strict, inputs(json!({"n": 2})), RequestOptions::python().no_cache()).await.unwrap();
    assert!(right.get_str("answer").is_some());
    // The request can ask for the check, or waive it.
    let err = rt.run(&lax, wrong.clone(), RequestOptions::default().strict_inputs(true)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    rt.run(&strict, wrong, RequestOptions::python().no_cache().strict_inputs(false)).await.expect("waived");

    // Constraints written into the types run natively; strict checks hold
    // inputs to them with pydantic's words.
    let constrained = Program::new(
        ProgramSpec::predict("question: Annotated[str, Field(min_length=5)] -> answer: Annotated[int, Field(ge=0)]")
            .with_strict_inputs(),
    );
    assert!(constrained.native_support().is_ok(), "{:?}", constrained.native_support());
    let out = rt.run(&constrained, q_42(), RequestOptions::native().no_cache()).await.unwrap();
    assert_eq!(out.meta.route, Route::Native);
    assert_eq!(out.get("answer"), Some(&json!(42)));
    let err = rt.run(&constrained, inputs(json!({"question": "2+2"})), RequestOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    assert!(err.message().ends_with("String should have at least 5 characters"), "{err}");
    rt.shutdown().await.unwrap();
}

fn q_42() -> Map {
    inputs(json!({"question": "What is 17 + 25?"}))
}

/// Datasets go to Python workers as Arrow where that is faster: under
/// `auto`, large numeric payloads (a dev set of text stays MessagePack,
/// which is as fast for it); a pool or a request can choose either way; the
/// tree shows each pool's choice and each worker's frames by codec.
#[cfg(feature = "arrow")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_travel_as_arrow_where_chosen_and_pools_or_requests_choose() {
    use dspex::{CodecChoice, EvaluateRequest};
    let (_server, lm) = offline_lm().await;
    let pool = |name: &str| PoolConfig::new(name).size(1).concurrency(4).standby(0);
    let rt = Runtime::builder()
        .python(support::python())
        .pool(pool("general"))
        .pool(pool("columnar").codec(CodecChoice::Arrow))
        .pool(pool("plain").codec(CodecChoice::MsgPack))
        .lm(lm)
        .start()
        .await
        .unwrap();
    let arrow_frames = |tree: &dspex::TreeNode, worker: &str| -> u64 {
        let frames = &tree.find(worker).expect("worker node").info.extra["frames"];
        frames["arrow"]["sent"].as_u64().unwrap_or(0)
    };
    let devset: Vec<Map> = (0..300)
        .map(|i| inputs(json!({"question": format!("What is {i} + 1? {}", "context ".repeat(40)), "answer": (i + 1).to_string()})))
        .collect();
    let student = Program::new(ProgramSpec::predict("question -> answer"));
    let evaluate = |pool: &str| {
        EvaluateRequest::new(student.clone(), devset.clone(), "exact_match").num_threads(4).pool(pool.to_string())
    };
    // A pool that chose Arrow sends the dev set as Arrow; the results are the same.
    let on_arrow = rt.evaluate(evaluate("columnar"), None).await.unwrap();
    let on_auto = rt.evaluate(evaluate("general"), None).await.unwrap();
    assert_eq!(on_arrow.results.len(), 300);
    assert_eq!(on_arrow.results, on_auto.results);
    let tree = rt.tree().await.unwrap();
    assert_eq!(arrow_frames(&tree, "worker:columnar:0"), 1, "the dev set went as Arrow");
    assert_eq!(arrow_frames(&tree, "worker:general:0"), 0, "auto keeps text records in MessagePack");
    assert_eq!(tree.find("pool:general").unwrap().info.extra["codec"], "auto");
    assert_eq!(tree.find("pool:columnar").unwrap().info.extra["codec"], "arrow");
    assert_eq!(tree.find("pool:plain").unwrap().info.extra["codec"], "msgpack");
    // Under auto a large float array goes as Arrow, unless the request says otherwise.
    let big = json!({"x": (0..50_000).map(|i| i as f64 + 0.5).collect::<Vec<_>>()});
    assert_eq!(rt.call("general", "echo", big.clone(), RequestOptions::default()).await.unwrap().value, big);
    assert_eq!(arrow_frames(&rt.tree().await.unwrap(), "worker:general:0"), 1);
    let opts = RequestOptions::default().codec(CodecChoice::MsgPack);
    assert_eq!(rt.call("general", "echo", big.clone(), opts).await.unwrap().value, big);
    assert_eq!(arrow_frames(&rt.tree().await.unwrap(), "worker:general:0"), 1);
    // The pool that chose MessagePack keeps to it.
    assert_eq!(rt.call("plain", "echo", big.clone(), RequestOptions::default()).await.unwrap().value, big);
    assert_eq!(arrow_frames(&rt.tree().await.unwrap(), "worker:plain:0"), 0);
    rt.shutdown().await.unwrap();
}
