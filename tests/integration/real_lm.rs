//! Against a real language model: llama.cpp's `llama-server` serving Gemma 3
//! 270M, started by `scripts/real-lm-tests` (which builds it once from the
//! package registries; see `scripts/local-lm`). Ignored by a plain `cargo
//! test`: the script runs them with `--ignored`, and without
//! `DSPEX_LM_BASE_URL` they fail rather than pass vacuously.
//!
//! A 270M base model answers badly; these tests check plumbing and
//! classification — requests served, streams in order, fallbacks taken,
//! cancellation reaching the server, deadlines kept, usage and truncation
//! reported — not the answers. Few-shot demos keep its replies in DSPy's
//! field format, and temperature 0 keeps them the same from run to run.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use dspex::native::lm::{config_from_env, OpenAiClient};
use dspex::native::{Predict, PredictEvent, PredictOptions};
use dspex::{
    ErrorKind, LmConfig, Map, Output, PoolConfig, Program, ProgramSpec, RequestOptions, Route, Runtime, StreamEvent,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support;

/// The served model, at temperature 0 with replies capped at `max_tokens`.
/// Both routes, named.
fn routes() -> [(&'static str, RequestOptions); 2] {
    [("native", RequestOptions::native()), ("python", RequestOptions::python())]
}

fn real_lm(max_tokens: u32) -> LmConfig {
    let lm = config_from_env().expect("DSPEX_LM_* settings").expect("DSPEX_LM_BASE_URL (run scripts/real-lm-tests)");
    let mut lm = lm.with_temperature(0.0).with_max_tokens(max_tokens);
    lm.max_retries = 0;
    lm
}

fn map(v: Value) -> Map {
    v.as_object().cloned().unwrap_or_default()
}

fn demos() -> Vec<Map> {
    vec![
        map(json!({"question": "What is 2 + 2?", "answer": "4"})),
        map(json!({"question": "What is the capital of Spain?", "answer": "Madrid"})),
    ]
}

fn qa() -> Program {
    Program::new(ProgramSpec::predict("question -> answer").with_demos(demos()))
}

fn question(q: &str) -> Map {
    map(json!({ "question": q }))
}

/// llama-server's `/slots`: how many slots are generating now.
fn busy_slots() -> usize {
    let base = std::env::var("DSPEX_LM_BASE_URL").expect("DSPEX_LM_BASE_URL");
    let host = base.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
    let mut s = std::net::TcpStream::connect(&host).expect("connect to llama-server");
    write!(s, "GET /slots HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read /slots");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let slots: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("/slots is not JSON ({e}): {text}"));
    slots.as_array().expect("a slot list").iter().filter(|s| s["is_processing"] == true).count()
}

/// Wait until no slot generates; how long that took.
async fn until_idle(within: Duration) -> Duration {
    let t = Instant::now();
    while busy_slots() > 0 {
        assert!(t.elapsed() < within, "llama-server still generating {within:?} after the caller let go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

async fn runtime(max_tokens: u32) -> Runtime {
    Runtime::builder()
        .python(support::python())
        .pool(PoolConfig::new("general").size(1))
        .lm(real_lm(max_tokens))
        .start()
        .await
        .expect("runtime")
}

fn report(name: &str, t: Instant, detail: impl std::fmt::Display) {
    eprintln!("real-lm: {name:<40} {:>8.2} s  {detail}", t.elapsed().as_secs_f64());
}

fn usage_of(out: &Output) -> dspex::Usage {
    out.meta.usage.unwrap_or_else(|| panic!("no usage reported: {:?}", out.meta))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real LM: run scripts/real-lm-tests"]
async fn native_predict_and_chain_of_thought() {
    let t = Instant::now();
    let rt = Runtime::builder().native_only().lm(real_lm(48)).start().await.unwrap();
    let out = rt.run(&qa(), question("What is the capital of France?"), RequestOptions::native()).await.unwrap();
    assert_eq!(out.meta.route, Route::Native);
    let answer = out.get_str("answer").expect("an answer field");
    assert!(!answer.is_empty());
    let usage = usage_of(&out);
    assert!(usage.prompt_tokens > 50 && (1..=48).contains(&usage.completion_tokens), "{usage:?}");
    report("native Predict", t, format!("answer {answer:?}, {usage:?}"));

    let t = Instant::now();
    let cot_demos =
        vec![map(json!({"question": "What is 2 + 2?", "reasoning": "Two plus two is four.", "answer": "4"}))];
    let cot = Program::new(ProgramSpec::chain_of_thought("question -> answer").with_demos(cot_demos));
    let out = rt.run(&cot, question("What is 3 + 4?"), RequestOptions::native()).await.unwrap();
    assert!(out.get("reasoning").is_some() && out.get("answer").is_some(), "{:?}", out.prediction);
    report("native ChainOfThought", t, format!("{:?}", out.prediction.fields));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real LM: run scripts/real-lm-tests"]
async fn sse_streams_arrive_in_order_then_the_prediction() {
    let rt = runtime(48).await;
    for (label, opts) in routes() {
        let t = Instant::now();
        let stream = rt.stream(&qa(), question("What is the capital of Italy?"), opts).await.unwrap();
        let (chunks, done) = support::stream_to_end(stream).await;
        let joined: String = chunks.concat();
        let answer = done.get_str("answer").expect("an answer");
        assert!(chunks.iter().filter(|c| !c.is_empty()).count() >= 2, "{label}: one piece only: {chunks:?}");
        assert!(joined.contains(answer.trim()), "{label}: the chunks {joined:?} do not hold the answer {answer:?}");
        let usage = usage_of(&done);
        assert!((1..=48).contains(&usage.completion_tokens), "{label}: {usage:?}");
        report(&format!("{label} stream"), t, format!("{} chunks, answer {answer:?}, {usage:?}", chunks.len()));
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real LM: run scripts/real-lm-tests"]
async fn an_unparseable_chat_reply_falls_back_to_json() {
    // Without demos the base model strays from the `[[ ## field ## ]]`
    // format; the JSON adapter's retry, with `response_format` (a grammar
    // in llama.cpp), gets an object.
    let t = Instant::now();
    let client = OpenAiClient::new(&real_lm(64)).unwrap();
    let sig = dspex::native::parse_signature("question -> answer", None).unwrap();
    let inputs = question("Name a primary colour.");
    let chat_only = Predict::new(sig.clone()).with_json_fallback(false);
    let err = chat_only.call(&client, &inputs, &PredictOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Parse, "{err}");
    let with_fallback = Predict::new(sig).with_json_response_format(true);
    let pred = with_fallback.call(&client, &inputs, &PredictOptions::default()).await.unwrap();
    assert!(pred.get("answer").is_some(), "{pred:?}");
    // Two calls: the usage adds both prompts.
    let usage = pred.usage.expect("usage");
    assert!(usage.prompt_tokens > 100, "one call only? {usage:?}");
    report("JSON fallback", t, format!("{:?}, {usage:?}", pred.fields));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real LM: run scripts/real-lm-tests"]
async fn the_python_route_and_a_three_turn_session() {
    let rt = runtime(48).await;
    let t = Instant::now();
    let out = rt.run(&qa(), question("What is the capital of Germany?"), RequestOptions::python()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()));
    assert!(out.meta.worker.is_some());
    let usage = usage_of(&out);
    report("Python Predict", t, format!("answer {:?}, {usage:?}", out.get_str("answer")));

    let t = Instant::now();
    let session = rt.session().await.unwrap();
    session
        .define("chat", ProgramSpec::predict("history: dspy.History, question -> answer").with_demos(demos()))
        .await
        .unwrap();
    let turns = ["What is the capital of France?", "And of Japan?", "What is 2 + 3?"];
    for (i, turn) in turns.iter().enumerate() {
        let opts = if i == 1 { RequestOptions::python() } else { RequestOptions::native() };
        let out = session.run_with("chat", question(turn), opts).await.unwrap();
        assert!(out.get("answer").is_some());
    }
    let history = session.history("chat").await.unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    report("session, 3 turns", t, format!("{} turns kept", history.len()));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real LM: run scripts/real-lm-tests"]
async fn cancelling_a_stream_mid_generation_stops_the_server() {
    // 2000 tokens would take the model most of a minute: only a cancel that
    // reaches the server ends the generation within seconds. (A plain,
    // unstreamed call that is abandoned is not: the HTTP client notices the
    // drop only when the server next writes, i.e. when it has finished; see
    // docs/operations.md.)
    let rt = runtime(2000).await;
    assert_eq!(busy_slots(), 0, "llama-server is busy before the test");
    for (label, opts) in routes() {
        let t = Instant::now();
        let mut stream = rt.stream(&qa(), question("Tell me a long story."), opts.clone()).await.unwrap();
        let mut pieces = 0;
        while pieces < 3 {
            match stream.next().await {
                Some(Ok(StreamEvent::Chunk { .. })) => pieces += 1,
                other => panic!("{label}: expected chunks, got {other:?}"),
            }
        }
        assert!(busy_slots() > 0, "{label}: the model is not generating");
        drop(stream);
        let idle = until_idle(Duration::from_secs(5)).await;
        report(&format!("{label} stream cancelled"), t, format!("server idle {} ms after the drop", idle.as_millis()));
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real LM: run scripts/real-lm-tests"]
async fn deadlines_shorter_than_a_generation_are_kept() {
    // 160 tokens take the model ~4 s: the deadline (1.5 s) passes first. The
    // caller gets its Timeout on time; the server finishes the generation
    // (an unstreamed call cannot be stopped there, see above).
    let rt = runtime(160).await;
    for (label, opts) in routes() {
        let t = Instant::now();
        let deadline = Duration::from_millis(1500);
        let err =
            rt.run(&qa(), question("Tell me a very long story."), opts.timeout(deadline).no_cache()).await.unwrap_err();
        let took = t.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{label}: {err}");
        assert!(took < deadline + Duration::from_millis(500), "{label}: answered after {took:?}");
        let idle = until_idle(Duration::from_secs(20)).await;
        report(
            &format!("{label} deadline 1.5 s"),
            t,
            format!("Timeout after {} ms; the server finished {} ms later", took.as_millis(), idle.as_millis()),
        );
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real LM: run scripts/real-lm-tests"]
async fn usage_and_truncation_are_reported() {
    // The model does not stop after `[[ ## completed ## ]]`: at 32 tokens the
    // answer is complete and the reply cut.
    let rt = runtime(32).await;
    for (label, opts) in routes() {
        let t = Instant::now();
        let out = rt.run(&qa(), question("What is the capital of Peru?"), opts.clone().no_cache()).await.unwrap();
        assert!(out.meta.truncated, "{label}: {:?}", out.meta);
        let usage = usage_of(&out);
        assert_eq!(usage.completion_tokens, 32, "{label}: {usage:?}");
        assert_eq!(usage.total_tokens, usage.prompt_tokens + 32, "{label}: {usage:?}");
        let stream = rt.stream(&qa(), question("What is the capital of Peru?"), opts).await.unwrap();
        let (_, done) = support::stream_to_end(stream).await;
        assert!(done.meta.truncated, "{label} stream: {:?}", done.meta);
        assert_eq!(usage_of(&done).completion_tokens, 32, "{label} stream");
        report(&format!("{label} truncation"), t, format!("{usage:?}"));
    }
    // The native engine's own stream, too.
    let client = std::sync::Arc::new(OpenAiClient::new(&real_lm(32)).unwrap());
    let predict = Predict::new(dspex::native::parse_signature("question -> answer", None).unwrap()).with_demos(demos());
    let mut s =
        predict.stream(client, &question("What is the capital of Chile?"), &PredictOptions::default()).await.unwrap();
    let mut last = None;
    while let Some(ev) = s.next().await {
        last = Some(ev.unwrap());
    }
    let Some(PredictEvent::Prediction(p)) = last else { panic!("no prediction: {last:?}") };
    assert!(p.truncated && p.usage.is_some_and(|u| u.completion_tokens == 32), "{p:?}");
    rt.shutdown().await.unwrap();
}
