//! The OpenAI-compatible client and native modules against a local server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_core::{AdapterKind, ErrorKind, LmConfig, Map, ProgramSpec};
use dspex_native::lm::server::{LmServer, Reply, Scripted};
use dspex_native::lm::{LanguageModel, LmEvent, LmRequest, Message, OpenAiClient};
use dspex_native::{NativeProgram, PredictEvent, PredictOptions};
use futures_util::StreamExt;
use serde_json::json;

use crate::support::runtime;

fn client(server: &LmServer) -> OpenAiClient {
    OpenAiClient::new(&LmConfig::new("openai/test-model").with_base_url(server.base_url()).with_api_key("sk-test"))
        .unwrap()
        .with_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn obj(v: serde_json::Value) -> Map {
    v.as_object().cloned().unwrap()
}

#[test]
fn retries_429_and_5xx_honouring_retry_after() {
    runtime().block_on(async {
        let server = LmServer::start(Scripted::new(vec![
            Reply::Status { code: 429, body: "slow down".into(), retry_after: Some(0) },
            Reply::status(503),
            Reply::text("hello"),
        ]))
        .await
        .unwrap();
        let lm = client(&server);
        let resp = lm.complete(LmRequest::new(vec![Message::user("hi")])).await.unwrap();
        assert_eq!(resp.outputs, vec![Some("hello".to_string())]);
        assert_eq!(resp.usage.unwrap().completion_tokens, 1);
        let reqs = server.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0]["model"], "test-model");
        assert_eq!(reqs[0]["messages"][0]["content"], "hi");
    });
}

#[test]
fn client_errors_are_not_retried_and_are_classified() {
    runtime().block_on(async {
        let server = LmServer::start(Scripted::new(vec![Reply::status(400), Reply::text("never")])).await.unwrap();
        let err = client(&server).complete(LmRequest::new(vec![Message::user("x")])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Lm);
        assert!(!err.is_retryable());
        assert!(err.message().contains("400"), "{err}");
        assert_eq!(server.requests().len(), 1);

        // Retries run out: the last error is returned, marked retryable.
        let server = LmServer::start(Scripted::new(vec![Reply::status(500)])).await.unwrap();
        let err = client(&server).complete(LmRequest::new(vec![Message::user("x")])).await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(server.requests().len(), 4, "first attempt plus three retries");
    });
}

#[test]
fn deadline_bounds_a_hung_service() {
    runtime().block_on(async {
        let server = LmServer::start(Scripted::new(vec![Reply::Hang])).await.unwrap();
        let started = Instant::now();
        let req = LmRequest {
            deadline: Some(Instant::now() + Duration::from_millis(150)),
            ..LmRequest::new(vec![Message::user("x")])
        };
        let err = client(&server).complete(req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    });
}

#[test]
fn transport_failures_are_retryable() {
    runtime().block_on(async {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let lm = OpenAiClient::new(&LmConfig {
            max_retries: 1,
            ..LmConfig::new("m").with_base_url(format!("http://127.0.0.1:{port}/v1"))
        })
        .unwrap()
        .with_backoff(Duration::from_millis(1), Duration::from_millis(2));
        let err = lm.complete(LmRequest::new(vec![Message::user("x")])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transport);
        assert!(err.is_retryable());
    });
}

#[test]
fn sse_stream_yields_chunks_in_order_then_done() {
    runtime().block_on(async {
        let text = "[[ ## reasoning ## ]]\nTwo plus two is four.\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]";
        let server = LmServer::start(Scripted::new(vec![Reply::text(text)])).await.unwrap();
        let lm: Arc<dyn LanguageModel> = Arc::new(client(&server));
        let mut stream = lm.stream(LmRequest::new(vec![Message::user("x")])).await.unwrap();
        let mut joined = String::new();
        let mut deltas = 0;
        let mut done = None;
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                LmEvent::Delta { text, .. } => {
                    assert!(done.is_none(), "no delta after done");
                    joined.push_str(&text);
                    deltas += 1;
                }
                LmEvent::Done(resp) => done = Some(resp),
            }
        }
        assert!(deltas > 3, "streamed in pieces");
        assert_eq!(joined, text);
        let done = done.expect("done event");
        assert_eq!(done.outputs[0].as_deref(), Some(text));
        assert!(done.usage.is_some());
        assert_eq!(server.requests()[0]["stream"], true);
        // The server's clock: the request arrived, then its first content went out.
        let timing = server.timings()[0];
        assert!(timing.first_byte.is_some_and(|first| first >= timing.received));
        server.clear_requests();
        assert!(server.timings().is_empty());

        // Through a native ChainOfThought: chunks tagged by field, then the prediction.
        let program = NativeProgram::from_spec(&ProgramSpec::chain_of_thought("question -> answer: int")).unwrap();
        let mut events =
            program.stream(lm.clone(), &obj(json!({"question": "2+2?"})), &PredictOptions::default()).await.unwrap();
        let mut fields_seen = Vec::new();
        let mut last = None;
        while let Some(ev) = events.next().await {
            match ev.unwrap() {
                PredictEvent::Chunk { field, .. } => {
                    if let Some(f) = field {
                        if fields_seen.last() != Some(&f) {
                            fields_seen.push(f);
                        }
                    }
                }
                PredictEvent::Prediction(p) => last = Some(p),
            }
        }
        assert_eq!(fields_seen, vec!["reasoning".to_string(), "answer".to_string()]);
        let pred = last.expect("prediction last");
        assert_eq!(pred.fields["answer"], json!(4));
    });
}

#[test]
fn chat_parse_failure_falls_back_to_json_adapter() {
    runtime().block_on(async {
        let server = LmServer::start(Scripted::new(vec![
            Reply::text("I think the answer is four."),
            Reply::text("{\"answer\": 4}"),
        ]))
        .await
        .unwrap();
        let lm = client(&server);
        let program = NativeProgram::from_spec(&ProgramSpec::predict("question -> answer: int")).unwrap();
        let pred = program.call(&lm, &obj(json!({"question": "2+2?"})), &PredictOptions::default()).await.unwrap();
        assert_eq!(pred.fields["answer"], json!(4));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert!(reqs[0].get("response_format").is_none());
        assert!(reqs[1].get("response_format").is_none(), "as DSPy with a generic OpenAI-compatible model");
        assert!(reqs[1]["messages"][0]["content"].as_str().unwrap().contains("Outputs will be a JSON object"));
        assert_eq!(pred.usage.unwrap().total_tokens, 10 + 6 + 10 + 2);

        // With the fallback off, the parse error surfaces with DSPy's text.
        let mut strict = program.clone();
        let p = strict.predictor_mut().clone().with_json_fallback(false);
        *strict.predictor_mut() = p;
        server.clear_requests();
        let fresh = LmServer::start(Scripted::new(vec![Reply::text("no headers")])).await.unwrap();
        let err =
            strict.call(&client(&fresh), &obj(json!({"question": "q"})), &PredictOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Parse);
        assert_eq!(err.python_type(), Some("AdapterParseError"));
        assert_eq!(fresh.requests().len(), 1);
    });
}

#[test]
fn several_generations_become_completions() {
    runtime().block_on(async {
        let server = LmServer::start(Scripted::new(vec![Reply::choices(vec![
            "[[ ## answer ## ]]\na".into(),
            "[[ ## answer ## ]]\nb".into(),
        ])]))
        .await
        .unwrap();
        let spec = ProgramSpec::predict("q -> answer").with_config("n", json!(2));
        let program = NativeProgram::from_spec(&spec).unwrap();
        let pred = program.call(&client(&server), &obj(json!({"q": "x"})), &PredictOptions::default()).await.unwrap();
        assert_eq!(pred.fields["answer"], "a");
        assert_eq!(pred.completions.len(), 2);
        assert_eq!(pred.completions[1]["answer"], "b");
        assert_eq!(server.requests()[0]["temperature"], json!(0.7), "DSPy raises the temperature for n > 1");
        let _ = AdapterKind::Json;
    });
}

#[test]
fn scripted_servers_repeat_their_last_reply_and_fail_when_empty() {
    runtime().block_on(async {
        let scripted = Scripted::new(vec![Reply::text("one").delayed(Duration::from_millis(5))]);
        scripted.push(Reply::status(404).delayed(Duration::from_millis(5)));
        let server = LmServer::start(scripted).await.unwrap();
        assert!(format!("{server:?}").contains(&server.addr().to_string()));
        let lm = client(&server);
        let first = lm.complete(LmRequest::new(vec![Message::user("hi")])).await.unwrap();
        assert_eq!(first.outputs, vec![Some("one".to_string())]);
        // 404 is not retried: the service's error comes back classified.
        let err = lm.complete(LmRequest::new(vec![Message::user("hi")])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Lm);
        assert!(!err.is_retryable(), "{err}");
        // Past the script, the last reply repeats.
        let again = lm.complete(LmRequest::new(vec![Message::user("hi")])).await.unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Lm);
        // An empty script answers 500 (retried, then reported).
        let empty = LmServer::start(Scripted::new(vec![])).await.unwrap();
        let err = client(&empty).complete(LmRequest::new(vec![Message::user("hi")])).await.unwrap_err();
        assert!(err.message().contains("no scripted reply left") || err.message().contains("500"), "{err}");
    });
}

#[test]
fn examples_know_their_inputs() {
    let ex = dspex_core::Example::from_json(json!({"question": "q", "answer": "a"})).unwrap().with_inputs(["question"]);
    assert_eq!(ex.get("answer"), Some(&json!("a")));
    assert!(dspex_core::Example::from_json(json!([1])).is_none());
}
