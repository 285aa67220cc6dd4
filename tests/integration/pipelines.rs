//! Pipelines over the public API: native, Python, parallel, conditional
//! and map steps; `continue_on_error` against fail-fast; timeouts and
//! retries; nesting; cancellation; pipelines in sessions; builder and file
//! giving the same pipeline.

use std::time::{Duration, Instant};

use dspex::{Condition, ErrorKind, EventKind, Map, ModuleKind, Pipeline, ProgramSpec, Route, Runtime, Step, StepKind};
use serde_json::{json, Value};

use crate::runtime::{builder, offline_lm};
use crate::support;

fn inputs(v: Value) -> Map {
    v.as_object().cloned().expect("an object")
}

/// A pipeline that echoes `text` back as `echoed` (through a worker command).
fn echo_pipeline() -> Pipeline {
    Pipeline::builder("inner")
        .input("text")
        .output("echoed")
        .step(Step::command("echo", "general", "echo").input("echoed", "text"))
        .build()
        .unwrap()
}

fn answer_file() -> std::path::PathBuf {
    support::repo_root().join("examples/pipelines/answer.toml")
}

const AUDIT: &str = r#"
[[steps]]
name = "audit"
kind = "command"
pool = "general"
command = "fail"
args = { message = "audit service down" }
continue_on_error = true
"#;

/// The pipeline of `examples/pipelines/answer.toml`, written with the builder.
fn answer_builder() -> dspex::PipelineBuilder {
    Pipeline::builder("answer")
        .description("Gather keywords and context at once, answer with reasoning, check the answer, rate it per topic.")
        .input("question")
        .input("topics")
        .output("context")
        .output("answer")
        .output("verdict")
        .output("scores")
        .step(Step::parallel(
            "gather",
            [
                Step::signature("keywords", StepKind::Native, "question -> keywords: list[str]"),
                Step::signature("retrieve", StepKind::Python, "question -> context"),
            ],
        ))
        .step(
            Step::signature("generate", StepKind::Program, "question, context -> answer")
                .module(ModuleKind::ChainOfThought),
        )
        .step(Step::conditional(
            "check",
            Condition::truthy("answer"),
            [Step::signature("verify", StepKind::Native, "question, answer -> verdict: bool")],
            [Step::signature("give_up", StepKind::Native, "question -> verdict: bool")],
        ))
        .step(
            Step::map(
                "rate",
                "topics",
                "topic",
                [Step::signature("relevance", StepKind::Native, "topic, answer -> relevance: float")],
            )
            .collect("scores")
            .pluck("relevance")
            .concurrency(2),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_pipeline_runs_and_continue_on_error_differs_from_fail_fast() {
    let (_server, lm) = offline_lm().await;
    let rt = builder(2).lm(lm).start().await.unwrap();
    let mut events = rt.subscribe();
    let args = inputs(json!({"question": "What is the capital of France?", "topics": ["geography", "history", "art"]}));

    // From the file, with a failing step that may fail.
    let text = std::fs::read_to_string(answer_file()).unwrap() + AUDIT;
    let from_file = Pipeline::from_toml(&text).unwrap();
    let result = rt.run_pipeline(&from_file, args.clone()).await.unwrap();
    assert_eq!(result.get("answer"), Some(&json!("Paris")));
    assert_eq!(result.get("verdict"), Some(&json!(true)));
    assert_eq!(result.get("scores"), Some(&json!([0.9, 0.9, 0.9])));
    assert!(result.get("context").and_then(Value::as_str).is_some());
    assert_eq!(result.failed, ["audit"]);
    let audit = result.step("audit").unwrap();
    assert!(!audit.ok);
    assert_eq!(audit.error.as_ref().unwrap().kind(), ErrorKind::Python);
    assert!(audit.error.as_ref().unwrap().message().contains("audit service down"));
    // Routes per step: native and Python side by side in the parallel step.
    assert_eq!(result.step("gather/keywords").unwrap().route, Some(Route::Native));
    assert_eq!(result.step("gather/retrieve").unwrap().route, Some(Route::Python("general".into())));
    assert!(result.step("gather/retrieve").unwrap().worker.as_deref().unwrap().starts_with("worker:general:"));
    assert_eq!(result.step("generate").unwrap().route, Some(Route::Native));
    assert_eq!(result.step("check").unwrap().detail.as_deref(), Some("then"));
    assert!(result.step("check/verify").unwrap().ok);
    assert!(result.step("check/give_up").is_none(), "the other branch did not run");
    assert_eq!(result.step("rate").unwrap().detail.as_deref(), Some("3 items"));
    for i in 0..3 {
        assert!(result.step(&format!("rate[{i}]/relevance")).unwrap().ok);
    }
    assert!(result.steps.iter().all(|s| s.elapsed_us > 0));

    // Every step was on the telemetry bus.
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::PipelineStep { run, step, .. } = &e.kind {
            assert_eq!(run, &result.run_id);
            seen.push(step.clone());
        }
    }
    assert_eq!(seen.len(), result.steps.len(), "{seen:?}");

    // The same pipeline from the builder: the same model, the same result.
    let built = answer_builder()
        .step(Step::command("audit", "general", "fail").arg("message", json!("audit service down")).continue_on_error())
        .build()
        .unwrap();
    assert_eq!(built.spec(), from_file.spec());
    let again = rt.run_pipeline(built, args.clone()).await.unwrap();
    assert_eq!(again.outputs, result.outputs);

    // Without continue_on_error the same failure fails the run, naming the step.
    let strict = Pipeline::from_toml(&text.replace("continue_on_error = true\n", "")).unwrap();
    let err = rt.run_pipeline(&strict, args.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Python);
    assert_eq!(err.context().step.as_deref(), Some("audit"));
    assert!(err.message().contains("pipeline answer failed at step audit"), "{}", err.message());

    // The file as `run_pipeline` takes it, by path.
    let by_path = rt.run_pipeline(answer_file(), args).await.unwrap();
    assert_eq!(by_path.get("answer"), Some(&json!("Paris")));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_retries_nesting_and_missing_inputs() {
    let rt = builder(1).start().await.unwrap();
    let inner = echo_pipeline();
    let outer = Pipeline::builder("outer")
        .input("words")
        .step(Step::pipeline("nested", &inner).input("text", "words"))
        .step(
            Step::command("slow", "general", "sleep")
                .arg("seconds", json!(5))
                .timeout(Duration::from_millis(150))
                .retry(2, Duration::from_millis(10))
                .continue_on_error(),
        )
        .build()
        .unwrap();
    let t = Instant::now();
    let result = rt.run_pipeline(&outer, inputs(json!({"words": "hello"}))).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "timeouts bound the run: {:?}", t.elapsed());
    assert_eq!(result.get("echoed"), Some(&json!("hello")));
    assert_eq!(result.get("words"), Some(&json!("hello")));
    let slow = result.step("slow").unwrap();
    assert_eq!(slow.attempts, 2);
    assert_eq!(slow.error.as_ref().unwrap().kind(), ErrorKind::Timeout);
    assert!(result.step("nested/echo").unwrap().ok);

    // A missing pipeline input is a validation error naming the field.
    let err = rt.run_pipeline(&outer, Map::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert_eq!(err.context().field.as_deref(), Some("words"));
    // The worker is free again: the timed-out sleeps were cancelled.
    let t = Instant::now();
    while rt.pool("general").unwrap().stats().in_flight > 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rt.pool("general").unwrap().stats().in_flight, 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_leaves_no_work_running() {
    let rt = builder(1).start().await.unwrap();
    let pipeline = rt
        .pipeline("long")
        .step(Step::command("first", "general", "noop"))
        .step(Step::command("wait", "general", "sleep").arg("seconds", json!(30)))
        .build()
        .unwrap();
    let run = rt.start_pipeline(&pipeline, Map::new()).await.unwrap();
    let pool = rt.pool("general").unwrap();
    let t = Instant::now();
    while pool.stats().in_flight == 0 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.stats().in_flight, 1, "the sleep step is running");
    let listed = rt.pipeline_runs();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].run_id, run.id());
    let tree = rt.tree().await.unwrap();
    assert!(tree.find(&format!("pipeline:{}", run.id())).is_some(), "the run is an actor in the tree");

    run.cancel();
    let err = run.wait().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let t = Instant::now();
    while pool.stats().in_flight > 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.stats().in_flight, 0, "the Python step was cancelled");
    assert!(rt.pipeline_runs().is_empty());
    let tree = rt.tree().await.unwrap();
    assert!(tree.find("pipelines").unwrap().children.is_empty());
    // The worker is free for the next request at once.
    let t = Instant::now();
    rt.call("general", "noop", json!({}), Default::default()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_inside_a_session() {
    let (_server, lm) = offline_lm().await;
    let rt: Runtime = builder(1).lm(lm).start().await.unwrap();
    let session = rt.session().await.unwrap();
    session.define("chat", ProgramSpec::predict("history: dspy.History, question -> answer")).await.unwrap();
    let pipeline = Pipeline::builder("turn")
        .input("question")
        .step(Step::session("reply", "chat"))
        .step(Step::signature("judge", StepKind::Native, "question, answer -> verdict: bool"))
        .build()
        .unwrap();
    let first = session.run_pipeline(&pipeline, inputs(json!({"question": "What is 17 + 25?"}))).await.unwrap();
    assert_eq!(first.get("answer"), Some(&json!("42")));
    assert_eq!(first.get("verdict"), Some(&json!(true)));
    session.run_pipeline(&pipeline, inputs(json!({"question": "What is the capital of Italy?"}))).await.unwrap();
    assert_eq!(session.history("chat").await.unwrap().len(), 2, "session steps keep the session's history");

    // Outside a session, a session step is refused with the reason.
    let err = rt.run_pipeline(&pipeline, inputs(json!({"question": "hi"}))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(err.message().contains("Session::run_pipeline"), "{}", err.message());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_in_a_session_is_listed_and_cancelled_by_id() {
    let rt: Runtime = builder(1).start().await.unwrap();
    let session = rt.session().await.unwrap();
    let pipeline = Pipeline::builder("long")
        .step(Step::command("wait", "general", "sleep").arg("seconds", json!(30)))
        .build()
        .unwrap();
    let (s, p) = (session.clone(), pipeline.clone());
    let running = tokio::spawn(async move { s.run_pipeline(&p, Map::new()).await });
    let t = Instant::now();
    let listed = loop {
        let runs = rt.pipeline_runs();
        if !runs.is_empty() && rt.pool("general").unwrap().stats().in_flight == 1 {
            break runs;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the run never showed up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(listed[0].session.as_deref(), Some(session.id()));
    assert_eq!(listed[0].pipeline, "long");

    rt.cancel_pipeline(&listed[0].run_id).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), running).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(err.context().session.as_deref(), Some(session.id()), "{err}");
    assert!(rt.pipeline_runs().is_empty());
    assert_eq!(rt.cancel_pipeline(&listed[0].run_id).unwrap_err().kind(), ErrorKind::NotFound);
    let t = Instant::now();
    while rt.pool("general").unwrap().stats().in_flight > 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rt.pool("general").unwrap().stats().in_flight, 0, "the Python step was cancelled");
    // The session serves its next request.
    let quick = Pipeline::builder("quick").step(Step::command("n", "general", "noop")).build().unwrap();
    session.run_pipeline(&quick, Map::new()).await.unwrap();
    rt.shutdown().await.unwrap();
}

#[test]
fn bad_pipeline_files_are_rejected_with_line_and_reason() {
    let text = std::fs::read_to_string(answer_file()).unwrap();
    // A reference to a field nothing produces.
    let bad =
        text.replace("signature = \"question, context -> answer\"", "signature = \"question, contexts -> answer\"");
    let err = Pipeline::from_toml(&bad).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(err.message().contains("line 18") && err.message().contains("`contexts`"), "{}", err.message());
    // An unknown key.
    let bad = text.replace("concurrency = 2", "concurency = 2");
    let err = Pipeline::from_toml(&bad).unwrap_err();
    assert!(err.message().contains("line 37") && err.message().contains("concurency"), "{}", err.message());
    // A key that does not apply to the step's kind.
    let bad = text.replace("as = \"topic\"", "as = \"topic\"\ncommand = \"x\"");
    let err = Pipeline::from_toml(&bad).unwrap_err();
    assert!(err.message().contains("`command` does not apply to a map step"), "{}", err.message());
    // A nested file that does not exist.
    let err = Pipeline::builder("p")
        .step(Step::signature("a", StepKind::Native, "q -> a"))
        .build()
        .and_then(|_| {
            Pipeline::from_json(r#"{"name": "p", "steps": [{"name": "n", "kind": "pipeline", "file": "/nope.toml"}]}"#)
        })
        .unwrap_err();
    assert!(err.message().contains("/nope.toml"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_commands_nesting_and_run_time_failures() {
    let (server, lm) = offline_lm().await;
    let rt = builder(1).lm(lm).start().await.unwrap();
    // Program steps from whole specs, pinned to a pool, with field mappings.
    let inner = echo_pipeline();
    let pipeline = Pipeline::builder("mapped")
        .description("every mapping form")
        .input("query")
        .output("reply")
        .output("loud")
        .output("double")
        .output("nested_echo")
        .timeout(Duration::from_secs(60))
        .step(
            Step::native("ask", ProgramSpec::predict("question -> answer"))
                .input("question", "query")
                .output("answer", "reply"),
        )
        .step(
            Step::python("again", ProgramSpec::predict("question -> answer"))
                .pool("general")
                .input("question", "query")
                .output("answer", "double"),
        )
        .step(
            Step::program("third", ProgramSpec::predict("question -> answer: int"))
                .input("question", "query")
                .output("answer", "n"),
        )
        // A command's result: pick one field and rename it.
        .step(
            Step::command("shout", "general", "echo")
                .input("text", "reply")
                .arg("volume", json!(11))
                .output("volume", "loud"),
        )
        .step(Step::pipeline("nest", &inner).input("text", "reply").output("echoed", "nested_echo"))
        .build()
        .unwrap();
    let result = rt.run_pipeline(pipeline, inputs(json!({"query": "What is 17 + 25?"}))).await.unwrap();
    assert_eq!(result.outputs, inputs(json!({"reply": "42", "loud": 11, "double": "42", "nested_echo": "42"})));
    assert_eq!(result.step("again").unwrap().route, Some(Route::Python("general".into())));
    assert_eq!(result.step("ask").unwrap().route, Some(Route::Native));
    // Three program steps made LM calls (the gateway's shared cache answers
    // the Python step's, the same request as the native step's).
    let calls: u64 = rt.gateway_stats().lms.values().map(|s| s.requests).sum();
    assert!(calls >= 3 && !server.requests().is_empty(), "{calls} calls");
    assert_eq!(result.pipeline, "mapped");

    // Run-time failures name the field and the step.
    let not_a_list = Pipeline::builder("m")
        .input("xs")
        .step(Step::map("each", "xs", "x", [Step::command("e", "general", "echo").input("x", "x")]))
        .build()
        .unwrap();
    let err = rt.run_pipeline(&not_a_list, inputs(json!({"xs": "abc"}))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.message().contains("needs a list, got text"), "{}", err.message());
    let picky = Pipeline::builder("p")
        .step(Step::command("c", "general", "echo").arg("a", json!(1)).output("missing", "m"))
        .build()
        .unwrap();
    let err = rt.run_pipeline(&picky, Map::new()).await.unwrap_err();
    assert!(err.message().contains("returned no field `missing`"), "{}", err.message());
    let lost = Pipeline::builder("lost")
        .input("q")
        .output("answer")
        .step(Step::command("fails", "general", "fail").continue_on_error().output("answer", "answer"))
        .build()
        .unwrap();
    let err = rt.run_pipeline(&lost, inputs(json!({"q": 1}))).await.unwrap_err();
    assert!(err.message().contains("produced no `answer`"), "{}", err.message());
    let slow = Pipeline::builder("slow")
        .timeout(Duration::from_millis(200))
        .step(Step::command("wait", "general", "sleep").arg("seconds", json!(5)))
        .build()
        .unwrap();
    let err = rt.run_pipeline(&slow, Map::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    // A scalar command result lands under the step's name.
    let scalar = Pipeline::builder("s").step(Step::command("info_step", "general", "noop")).build().unwrap();
    let out = rt.run_pipeline(&scalar, Map::new()).await.unwrap();
    assert!(out.get("info_step").is_some(), "{:?}", out.outputs);
    rt.shutdown().await.unwrap();
}
