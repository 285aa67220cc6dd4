//! LM settings and what the LM reports back, on both routes: the request
//! body each route sends (the same as DSPy's own), `max_tokens` and
//! `temperature` from the environment and from flags, and replies cut at the
//! length limit flagged in `Meta` with the usage the server reported.

use std::process::Command;

use dspex::native::lm::server::{LmServer, Reply, Responder};
use dspex::{ErrorKind, LmConfig, Map, Program, ProgramSpec, RequestOptions, Usage};
use serde_json::{json, Value};

use crate::runtime::builder;
use crate::support;

const ANSWER: &str = "[[ ## answer ## ]]\nParis is the capital\n\n[[ ## completed ## ]]";

fn question() -> Map {
    json!({"question": "What is the capital of France?"}).as_object().cloned().unwrap_or_default()
}

/// The request body without the parts that differ by design between a
/// streamed and a plain call.
fn settings(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(o) = b.as_object_mut() {
        o.remove("messages");
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_routes_send_the_request_dspy_sends() {
    let server = LmServer::start(|_: &Value| Reply::text(ANSWER)).await.unwrap();
    let lm = LmConfig::new("gpt-4o-mini")
        .with_base_url(server.base_url())
        .with_api_key("k")
        .with_max_tokens(256)
        .with_temperature(0.0);
    let rt = builder(1).lm(lm).start().await.unwrap();
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    for opts in [RequestOptions::native(), RequestOptions::python()] {
        rt.run(&program, question(), opts.no_cache()).await.unwrap();
    }
    for opts in [RequestOptions::native(), RequestOptions::python()] {
        // (Uncached: the gateway would answer the second identical stream itself.)
        support::stream_to_end(rt.stream(&program, question(), opts.no_cache()).await.unwrap()).await;
    }
    let bodies = server.requests();
    assert_eq!(bodies.len(), 4, "{bodies:#?}");
    let (native, dspy) = (&bodies[0], &bodies[1]);
    // DSPy 3.4.1 caps an `openai/` chat model's reply with
    // `max_completion_tokens`; the native route sends exactly what DSPy sends.
    assert_eq!(dspy["max_completion_tokens"], 256, "{dspy}");
    assert!(dspy.get("max_tokens").is_none(), "{dspy}");
    assert_eq!(native, dspy, "the native route's request differs from DSPy's");
    let (native_stream, dspy_stream) = (&bodies[2], &bodies[3]);
    assert_eq!(native_stream["stream"], true);
    assert_eq!(settings(native_stream), settings(dspy_stream), "streamed requests differ");
    assert_eq!(native_stream["stream_options"]["include_usage"], true, "{native_stream}");
    rt.shutdown().await.unwrap();
}

/// Replies cut at the length limit for questions that say "cut".
struct CutWhenAsked;

impl Responder for CutWhenAsked {
    fn respond(&self, request: &Value) -> Reply {
        let text = request["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"].to_string());
        if text.unwrap_or_default().contains("cut") {
            Reply::text(ANSWER).cut()
        } else {
            Reply::text(ANSWER)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cut_at_the_length_limit_are_flagged_on_both_routes_and_in_streams() {
    let server = LmServer::start(CutWhenAsked).await.unwrap();
    let lm = LmConfig::new("local").with_base_url(server.base_url()).with_api_key("k").with_max_tokens(6);
    let rt = builder(1).lm(lm).start().await.unwrap();
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let cut = json!({"question": "please cut"}).as_object().cloned().unwrap_or_default();
    // The test server reports 10 prompt tokens and one per word of the reply.
    let reported = Usage { prompt_tokens: 10, completion_tokens: 14, total_tokens: 24 };
    for opts in [RequestOptions::native(), RequestOptions::python()] {
        let out = rt.run(&program, cut.clone(), opts.clone().no_cache()).await.unwrap();
        assert!(out.meta.truncated, "{:?}", out.meta);
        assert!(out.prediction.truncated);
        assert_eq!(out.meta.usage, Some(reported), "{:?}", out.meta);
        assert_eq!(out.get_str("answer"), Some("Paris is the capital"));
        let whole = rt.run(&program, question(), opts.clone().no_cache()).await.unwrap();
        assert!(!whole.meta.truncated, "{:?}", whole.meta);

        let (_, done) = support::stream_to_end(rt.stream(&program, cut.clone(), opts).await.unwrap()).await;
        assert!(done.meta.truncated, "stream: {:?}", done.meta);
        assert_eq!(done.meta.usage, Some(reported), "stream: {:?}", done.meta);
    }
    // Sessions and pipeline steps carry the flag too.
    let session = rt.session().await.unwrap();
    session.define("qa", ProgramSpec::predict("question -> answer")).await.unwrap();
    let out = session.run("qa", cut.clone()).await.unwrap();
    assert!(out.meta.truncated);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_reply_that_does_not_parse_says_why() {
    let server = LmServer::start(|_: &Value| Reply::text("[[ ## answer ## ]]\nPar").cut()).await.unwrap();
    let lm = LmConfig::new("local").with_base_url(server.base_url()).with_api_key("k").with_max_tokens(3);
    let rt = dspex::Runtime::builder().native_only().lm(lm).start().await.unwrap();
    let program = Program::new(ProgramSpec::predict("question -> answer, year: int"));
    let err = rt.run(&program, question(), RequestOptions::native().no_cache()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Parse, "{err}");
    assert!(err.message().contains("length limit"), "{err}");
    rt.shutdown().await.unwrap();
}

/// Run `dspex run` on a one-step native pipeline against `server`, with
/// these environment variables and arguments; its exit code and output.
fn dspex_run(server: &LmServer, env: &[(&str, &str)], args: &[&str]) -> (i32, Value) {
    let dir = std::env::temp_dir().join(format!("dspex-lm-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("one.toml");
    std::fs::write(
        &pipeline,
        "name = \"one\"\ninputs = [\"question\"]\noutputs = [\"answer\"]\n\
         [[steps]]\nname = \"ask\"\nkind = \"native\"\nsignature = \"question -> answer\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dspex"));
    cmd.arg("run").arg(&pipeline).args(["--input", "question=Capital of France?"]).args(args);
    for var in ["DSPEX_LM_MAX_TOKENS", "DSPEX_LM_TEMPERATURE", "DSPEX_LM_API_KEY", "OPENAI_API_KEY"] {
        cmd.env_remove(var);
    }
    cmd.env("DSPEX_PYTHON", support::python())
        .env("DSPEX_LM_BASE_URL", server.base_url())
        .env("DSPEX_LM_MODEL", "local-model")
        .env("DSPEX_RUN_DIR", dir.join("run"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("dspex run");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn the_cli_takes_lm_settings_from_the_environment_and_flags() {
    let rt = support::runtime();
    let server = rt.block_on(LmServer::start(|_: &Value| Reply::text(ANSWER))).unwrap();

    let (code, out) = dspex_run(&server, &[("DSPEX_LM_MAX_TOKENS", "64"), ("DSPEX_LM_TEMPERATURE", "0.3")], &[]);
    assert_eq!(code, 0, "{out}");
    let sent = server.requests().pop().expect("a request");
    assert_eq!((sent["max_completion_tokens"].clone(), sent["temperature"].clone()), (json!(64), json!(0.3)));
    assert_eq!(sent["model"], "local-model");

    // Flags win over the environment.
    server.clear_requests();
    let (code, out) = dspex_run(
        &server,
        &[("DSPEX_LM_MAX_TOKENS", "64"), ("DSPEX_LM_TEMPERATURE", "0.3")],
        &["--lm-max-tokens", "32", "--lm-temperature", "0"],
    );
    assert_eq!(code, 0, "{out}");
    let sent = server.requests().pop().expect("a request");
    assert_eq!((sent["max_completion_tokens"].clone(), sent["temperature"].clone()), (json!(32), json!(0.0)));

    // Nothing set: nothing sent.
    server.clear_requests();
    let (code, _) = dspex_run(&server, &[], &[]);
    assert_eq!(code, 0);
    let sent = server.requests().pop().expect("a request");
    assert!(sent.get("max_completion_tokens").is_none() && sent.get("temperature").is_none(), "{sent}");

    // Malformed settings are configuration errors that name the variable.
    server.clear_requests();
    let (code, out) = dspex_run(&server, &[("DSPEX_LM_MAX_TOKENS", "lots")], &[]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(out["error"]["kind"], "config", "{out}");
    assert!(out["error"]["message"].as_str().unwrap_or("").contains("DSPEX_LM_MAX_TOKENS"), "{out}");
    let (code, out) = dspex_run(&server, &[("DSPEX_LM_MODEL", "o3-mini")], &["--lm-temperature", "0.2"]);
    assert_eq!(code, 2, "{out}");
    assert!(out["error"]["message"].as_str().unwrap_or("").contains("reasoning models"), "{out}");
    assert!(server.requests().is_empty(), "a refused setting must not reach the LM");
}
