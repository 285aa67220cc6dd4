//! DSPy modules with no native form, run from Rust through `Runtime` with
//! their typed `ProgramSpec` constructors: ReAct (a tool by import path),
//! MultiChainComparison, BestOfN and Refine (a required reward), and
//! `Runtime::parallel` with per-item errors. ProgramOfThought is in
//! `runtime.rs` (it needs the Deno sandbox).

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::{LmServer, Reply, Responder};
use dspex::{ErrorKind, LmConfig, Map, PoolConfig, Program, ProgramSpec, RequestOptions, Reward, Route, Runtime};
use serde_json::{json, Value};

use crate::support;

fn inputs(v: Value) -> Map {
    v.as_object().cloned().unwrap_or_default()
}

/// The offline LM, plus: ReAct's, ReActV2's and CodeAct's steps call
/// `add(17, 25)` and then finish;
/// a question that says "garbage" gets a reply with no fields at all.
fn scripted(request: &Value) -> Reply {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let text = |role: &str| {
        messages.iter().rev().find(|m| m["role"] == role).and_then(|m| m["content"].as_str()).unwrap_or_default()
    };
    let (system, user) = (text("system"), text("user"));
    if system.contains("`next_tool_name`") {
        let (name, args) = if user.contains("[[ ## observation_0 ## ]]") {
            ("finish", "{}")
        } else {
            ("add", r#"{"a": 17, "b": 25}"#)
        };
        return Reply::text(format!(
            "[[ ## next_thought ## ]]\nUse the tool.\n\n[[ ## next_tool_name ## ]]\n{name}\n\n\
             [[ ## next_tool_args ## ]]\n{args}\n\n[[ ## completed ## ]]"
        ));
    }
    // CodeAct: code that calls the tool, marked finished.
    if system.contains("`generated_code`") && system.contains("`finished`") {
        return Reply::text(
            "[[ ## generated_code ## ]]\n```python\nprint(add(17, 25))\n```\n\n[[ ## finished ## ]]\nTrue\n\n[[ ## completed ## ]]",
        );
    }
    // ReActV2: call `add`, then `submit` what it returned (the question has
    // no digits: a 42 in the prompt can only be the tool's result).
    if system.contains("`tool_calls`") {
        let seen = messages.iter().any(|m| m["content"].as_str().is_some_and(|c| c.contains("42")));
        let call = if seen {
            r#"{"tool_calls": [{"name": "submit", "args": {"answer": "42"}}]}"#
        } else {
            r#"{"tool_calls": [{"name": "add", "args": {"a": 17, "b": 25}}]}"#
        };
        return Reply::text(format!(
            "[[ ## next_thought ## ]]\nUse the tool.\n\n[[ ## tool_calls ## ]]\n{call}\n\n[[ ## completed ## ]]"
        ));
    }
    if user.contains("garbage") {
        return Reply::text("I will not answer in any format.");
    }
    OfflineResponder::new().respond(request)
}

async fn start() -> (LmServer, Runtime) {
    let server = LmServer::start(scripted).await.expect("LM server");
    let lm = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("test").with_temperature(0.0);
    let mut pool = PoolConfig::new("general").size(1).concurrency(4);
    pool.python_path = vec![support::repo_root().join("tests/python")];
    let rt = Runtime::builder().python(support::python()).pool(pool).lm(lm).start().await.expect("runtime");
    (server, rt)
}

fn user_messages(server: &LmServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter_map(|r| r["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn react_calls_its_tool_by_import_path() {
    let (server, rt) = start().await;
    let q = inputs(json!({"question": "What do you get when you add seventeen and twenty-five?"}));
    let out = rt.react("question -> answer", &["dspex_test_helpers:add"], q).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()), "ReAct has no native form");
    assert!(out.get_str("answer").is_some(), "{:?}", out.prediction.fields);
    let trajectory = out.prediction.fields["trajectory"].to_string();
    assert!(trajectory.contains("\"observation_0\":42"), "the tool ran and returned 17 + 25: {trajectory}");
    assert!(trajectory.contains("\"tool_name_1\":\"finish\""), "{trajectory}");
    // The extract step saw the tool's observation.
    assert!(user_messages(&server).last().is_some_and(|m| m.contains("42")));
    // A tool that cannot be imported is a clear error, not a hang.
    let spec = ProgramSpec::react("question -> answer", ["dspex_test_helpers:no_such_tool"]);
    let err = rt.run(&Program::new(spec), inputs(json!({"question": "x"})), RequestOptions::default()).await;
    assert!(err.as_ref().is_err_and(|e| e.message().contains("no_such_tool")), "{err:?}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_chain_comparison_weighs_the_attempts_it_is_given() {
    let (server, rt) = start().await;
    let program = Program::new(ProgramSpec::multi_chain_comparison("question -> answer", 3));
    let completions = json!([
        {"reasoning": "17 + 25 is 41.", "answer": "41"},
        {"reasoning": "17 + 25 is 42.", "answer": "42"},
        {"reasoning": "Seventeen and twenty-five make 42.", "answer": "42"},
    ]);
    let q = inputs(json!({"question": "What is 17 + 25?", "completions": completions}));
    let out = rt.run(&program, q.clone(), RequestOptions::default()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()));
    assert_eq!(out.get_str("answer"), Some("42"), "{:?}", out.prediction.fields);
    let prompt = user_messages(&server).pop().unwrap_or_default();
    for i in 1..=3 {
        assert!(prompt.contains(&format!("[[ ## reasoning_attempt_{i} ## ]]")), "{prompt}");
    }
    assert!(prompt.contains("my prediction is 41"), "{prompt}");
    // M attempts are required: two are not enough for M = 3.
    let mut short = q;
    short.insert("completions".into(), json!([{"reasoning": "r", "answer": "1"}, {"reasoning": "r", "answer": "2"}]));
    let err = rt.run(&program, short, RequestOptions::default()).await.unwrap_err();
    assert!(err.message().contains("3") || err.message().contains("completions"), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_of_n_and_refine_retry_under_their_reward() {
    let (server, rt) = start().await;
    let reward = "dspex_test_helpers:short_answer";
    // A known answer is short: the first attempt meets the threshold.
    let known = inputs(json!({"question": "What is 17 + 25?"}));
    for spec in [
        ProgramSpec::best_of_n("question -> answer", 3, reward, 1.0),
        ProgramSpec::refine("question -> answer", 3, reward, 1.0),
    ] {
        server.clear_requests();
        let out = rt.run(&Program::new(spec), known.clone(), RequestOptions::default()).await.unwrap();
        assert_eq!(out.get_str("answer"), Some("42"));
        assert_eq!(server.requests().len(), 1, "one attempt was enough");
    }
    // An unknown one gets a long placeholder: every attempt falls short.
    let unknown = inputs(json!({"question": "Why is the sky blue?"}));
    server.clear_requests();
    let best = Program::new(ProgramSpec::best_of_n("question -> answer", 2, reward, 1.0));
    let out = rt.run(&best, unknown.clone(), RequestOptions::default()).await.unwrap();
    assert!(out.get_str("answer").is_some());
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "BestOfN tried N times");
    assert!(requests.iter().all(|r| !r.to_string().contains("`advice`")), "BestOfN gives no feedback");
    server.clear_requests();
    let refine = Program::new(ProgramSpec::refine("question -> answer", 2, reward, 1.0));
    let out = rt.run(&refine, unknown, RequestOptions::default()).await.unwrap();
    assert!(out.get_str("answer").is_some());
    let requests = server.requests();
    assert!(requests.len() >= 3, "two attempts and the feedback between them: {}", requests.len());
    assert!(requests.iter().any(|r| r.to_string().contains("`advice`")), "Refine asks for advice");
    rt.shutdown().await.unwrap();
}

/// A reward given as a metric by name scores the prediction against an
/// input, with DSPy's own metric; an unknown name is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_of_n_and_refine_take_a_metric_by_name_as_their_reward() {
    let (server, rt) = start().await;
    let exact = Reward::metric("exact_match", "answer", "gold");
    let best = Program::new(ProgramSpec::best_of_n("question, gold -> answer", 3, exact.clone(), 1.0));
    server.clear_requests();
    let right = inputs(json!({"question": "What is 17 + 25?", "gold": "42"}));
    assert_eq!(rt.run(&best, right, RequestOptions::default()).await.unwrap().get_str("answer"), Some("42"));
    assert_eq!(server.requests().len(), 1, "the first attempt matched");
    server.clear_requests();
    let never = inputs(json!({"question": "What is 17 + 25?", "gold": ["41", "forty-one"]}));
    rt.run(&best, never, RequestOptions::default().no_cache()).await.unwrap();
    assert_eq!(server.requests().len(), 3, "no attempt matched: N tries");
    // Grounded: is the answer in the passages it was given?
    let grounded = Reward::metric("passage_match", "answer", "context");
    let refine = Program::new(ProgramSpec::refine("question, context: list[str] -> answer", 2, grounded, 1.0));
    server.clear_requests();
    let q = inputs(json!({"question": "What is 17 + 25?", "context": ["The sum is 42."]}));
    assert_eq!(rt.run(&refine, q, RequestOptions::default()).await.unwrap().get_str("answer"), Some("42"));
    assert_eq!(server.requests().len(), 1);
    let unknown =
        Program::new(ProgramSpec::best_of_n("question -> answer", 2, Reward::metric("bleu", "answer", "q"), 1.0));
    let err = rt.run(&unknown, inputs(json!({"question": "?"})), RequestOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert!(err.message().contains("unknown reward metric 'bleu'"), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_returns_results_in_order_with_per_item_errors() {
    let (_server, rt) = start().await;
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let items: Vec<Map> = ["What is 1 + 2?", "Reply with garbage.", "What is 20 + 22?", "What is 3 + 4?"]
        .iter()
        .map(|q| inputs(json!({"question": q})))
        .collect();
    let out = rt.parallel(&program, items, 3, RequestOptions::default().no_cache()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()));
    assert_eq!(out.results.len(), 4);
    let answers: Vec<Option<String>> = out
        .results
        .iter()
        .map(|r| r.as_ref().ok().and_then(|p| p.fields["answer"].as_str().map(str::to_string)))
        .collect();
    assert_eq!(answers, [Some("3".into()), None, Some("42".into()), Some("7".into())], "in input order");
    let err = out.results[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Parse, "{err}");
    assert_eq!(err.context().field.as_deref(), Some("inputs[1]"), "{err}");
    assert_eq!(err.context().pool.as_deref(), Some("general"));
    // An empty batch has no results, and no error.
    let empty = rt.parallel(&program, Vec::new(), 2, RequestOptions::default()).await.unwrap();
    assert!(empty.results.is_empty());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_act_runs_tool_calling_code_in_the_sandbox_and_react_v2_submits() {
    let (server, rt) = start().await;
    let q = inputs(json!({"question": "What do you get when you add seventeen and twenty-five?"}));
    let code_act = Program::new(ProgramSpec::code_act("question -> answer", ["dspex_test_helpers:add"]));
    let out = rt.run(&code_act, q.clone(), RequestOptions::default()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()));
    assert!(out.get_str("answer").is_some(), "{:?}", out.prediction.fields);
    // The extractor saw what the sandboxed code printed: the tool's result.
    let extract = user_messages(&server).pop().unwrap_or_default();
    assert!(extract.contains("42"), "the code called add(17, 25) in the sandbox: {extract}");

    let v2 = Program::new(ProgramSpec::react_v2("question -> answer", ["dspex_test_helpers:add"]));
    let out = rt.run(&v2, q, RequestOptions::default()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("42"), "{:?}", out.prediction.fields);
    assert_eq!(out.prediction.fields["termination_reason"], "submit", "{:?}", out.prediction.fields);
    rt.shutdown().await.unwrap();
}
