//! The HTTP API over loopback with a real HTTP client: every endpoint, the
//! error bodies and statuses, auth, deadlines, shedding, SSE order, the
//! OpenAPI document, and `dspex serve --http` from a config file.

use std::time::{Duration, Instant};

use dspex::http::{HttpApi, HttpServer};
use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::{HttpConfig, LmConfig, Pipeline, ProgramSpec, Runtime};
use serde_json::{json, Value};

use crate::support::{repo_root, runtime};

/// A native-only runtime over the offline LM (`latency` per LM call).
async fn native_runtime(latency: Duration) -> (Runtime, LmServer) {
    let server = LmServer::start(OfflineResponder::with_latency(latency)).await.unwrap();
    let lm = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("test").with_temperature(0.0);
    let rt = Runtime::builder().native_only().lm(lm).start().await.unwrap();
    (rt, server)
}

fn loopback(config: HttpConfig) -> HttpConfig {
    HttpConfig { addr: "127.0.0.1:0".into(), ..config }
}

async fn serve(rt: &Runtime, config: HttpConfig) -> HttpServer {
    HttpApi::new(rt)
        .program("qa", ProgramSpec::predict("question -> answer: int"))
        .program("cot", ProgramSpec::chain_of_thought("question -> answer: int"))
        .program("chat", ProgramSpec::predict("history: dspy.History, question -> answer"))
        .program("typed", ProgramSpec::predict("question, k: int -> answer"))
        .pipeline("double", Pipeline::from_file(repo_root().join("tests/fixtures/http/double.toml")).unwrap())
        .config(loopback(config))
        .serve()
        .await
        .unwrap()
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, headers, body, text }
}

fn post(client: &reqwest::Client, url: String, body: &Value) -> reqwest::RequestBuilder {
    client.post(url).header("content-type", "application/json").body(body.to_string())
}

/// An error reply as the CLI prints it: `{"error": {kind, message, retryable}}`.
fn assert_error(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["error"]["kind"], kind, "{}", r.text);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text);
    assert!(r.body["error"]["retryable"].is_boolean(), "{}", r.text);
}

#[test]
fn programs_pipelines_sessions_and_health_are_served_over_http() {
    runtime().block_on(async {
        let (rt, _lm) = native_runtime(Duration::ZERO).await;
        let server = serve(&rt, HttpConfig::default()).await;
        let base = format!("http://{}", server.local_addr());
        let c = reqwest::Client::new();
        let question = json!({"inputs": {"question": "What is 17 + 25?"}});

        let r = send(post(&c, format!("{base}/v1/programs/qa/run"), &question).header("x-request-id", "req-1")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["prediction"]["fields"]["answer"], 42, "{}", r.text);
        assert_eq!(r.body["meta"]["route"]["target"], "native", "{}", r.text);
        assert_eq!(r.body["meta"]["trace_id"], "req-1", "the request id is the trace id");
        assert_eq!(r.headers["x-request-id"], "req-1");

        // A W3C traceparent: its trace id names the request, and it is echoed.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = send(post(&c, format!("{base}/v1/programs/cot/run"), &question).header("traceparent", tp)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.body["prediction"]["fields"]["reasoning"].is_string(), "{}", r.text);
        assert_eq!(r.body["meta"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r.headers["traceparent"], tp);

        // Request options travel: the cache is skipped when asked.
        let again = json!({"inputs": {"question": "What is 17 + 25?"}, "options": {"cache": false}});
        let r = send(post(&c, format!("{base}/v1/programs/qa/run"), &again)).await;
        assert_eq!((r.status, r.body["meta"]["cached"].clone()), (200, json!(false)), "{}", r.text);
        let r = send(post(&c, format!("{base}/v1/programs/qa/run"), &question)).await;
        assert_eq!(r.body["meta"]["cached"], true, "a repeated deterministic request comes from the cache: {}", r.text);

        let r = send(post(&c, format!("{base}/v1/pipelines/double/run"), &question)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!((r.body["outputs"]["answer"].clone(), r.body["outputs"]["check"].clone()), (json!(42), json!(42)));
        assert_eq!(r.body["steps"].as_array().map(Vec::len), Some(2), "{}", r.text);

        // Sessions: created with the served programs, history kept per program.
        let r = send(post(&c, format!("{base}/v1/sessions"), &json!({"id": "s-http"}))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.body["id"], "s-http");
        assert_eq!(r.body["programs"], json!(["chat", "cot", "qa", "typed"]));
        for turn in 0..2 {
            let r = send(post(&c, format!("{base}/v1/sessions/s-http/programs/chat/run"), &question)).await;
            assert_eq!(r.status, 200, "turn {turn}: {}", r.text);
        }
        let r = send(c.get(format!("{base}/v1/sessions/s-http"))).await;
        assert_eq!((r.status, r.body["turns"]["chat"].clone()), (200, json!(2)), "{}", r.text);
        let r = send(c.delete(format!("{base}/v1/sessions/s-http"))).await;
        assert_eq!(r.status, 204, "{}", r.text);
        assert_error(&send(c.get(format!("{base}/v1/sessions/s-http"))).await, 404, "not_found");
        let r = send(post(&c, format!("{base}/v1/sessions"), &json!({}))).await;
        assert!(r.status == 201 && r.body["id"].as_str().is_some_and(|id| !id.is_empty()), "{}", r.text);

        let r = send(c.get(format!("{base}/v1/programs"))).await;
        assert_eq!(r.body["programs"]["qa"]["module"], "predict", "{}", r.text);
        assert_eq!(r.body["pipelines"], json!(["double"]));
        let r = send(c.get(format!("{base}/healthz"))).await;
        assert_eq!((r.status, r.body["status"].clone()), (200, json!("ok")));
        let r = send(c.get(format!("{base}/readyz"))).await;
        assert_eq!((r.status, r.body["ready"].clone()), (200, json!(true)), "no pools: nothing to wait for");
        // No metrics renderer given: a clear 404.
        assert_error(&send(c.get(format!("{base}/metrics"))).await, 404, "not_found");

        server.stop(Duration::from_secs(2)).await;
        rt.shutdown().await.unwrap();
    });
}

#[test]
fn a_stream_sends_its_chunks_before_the_final_prediction() {
    runtime().block_on(async {
        let (rt, _lm) = native_runtime(Duration::ZERO).await;
        let server = serve(&rt, HttpConfig::default()).await;
        let url = format!("http://{}/v1/programs/cot/stream", server.local_addr());
        let r = send(post(&reqwest::Client::new(), url, &json!({"inputs": {"question": "What is 17 + 25?"}}))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.headers["content-type"], "text/event-stream");
        let events: Vec<(String, Value)> = r
            .text
            .split("\n\n")
            .filter_map(|block| {
                let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((event.to_string(), serde_json::from_str(data).unwrap()))
            })
            .collect();
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert!(kinds.len() >= 2 && kinds[..kinds.len() - 1].iter().all(|k| *k == "chunk"), "{kinds:?}");
        let (last, done) = events.last().unwrap();
        assert_eq!(last, "done");
        assert_eq!(done["prediction"]["fields"]["answer"], 42, "{done}");
        let text: String =
            events.iter().filter(|(k, _)| k == "chunk").filter_map(|(_, d)| d["text"].as_str()).collect();
        assert!(text.contains("42"), "the chunks carry the answer's text: {text:?}");
        server.stop(Duration::from_secs(2)).await;
        rt.shutdown().await.unwrap();
    });
}

#[test]
fn every_failure_is_one_status_with_the_cli_error_body() {
    runtime().block_on(async {
        let (rt, _lm) = native_runtime(Duration::from_millis(300)).await;
        let server = serve(&rt, HttpConfig { max_body_bytes: 1024, ..HttpConfig::default() }).await;
        let base = format!("http://{}", server.local_addr());
        let c = reqwest::Client::new();
        let run = format!("{base}/v1/programs/qa/run");
        let question = json!({"inputs": {"question": "What is 17 + 25?"}});

        let r = send(post(&c, format!("{base}/v1/programs/nope/run"), &question)).await;
        assert_error(&r, 404, "not_found");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("qa"), "names what is served: {}", r.text);
        assert_error(&send(c.post(&run).body("{not json")).await, 400, "invalid_request");
        assert_error(&send(post(&c, run.clone(), &json!({"inputs": {}, "extra": 1}))).await, 400, "invalid_request");
        let r = send(post(&c, run.clone(), &json!({"inputs": {"question": "x".repeat(2000)}}))).await;
        assert_error(&r, 413, "invalid_request");
        // Inputs are checked against the program's signature: present, and of their declared type.
        let r = send(post(&c, run.clone(), &json!({"inputs": {}}))).await;
        assert_error(&r, 422, "validation");
        assert_eq!(r.body["error"]["context"]["field"], "question", "{}", r.text);
        let typed = format!("{base}/v1/programs/typed/run");
        let r = send(post(&c, typed.clone(), &json!({"inputs": {"question": "q", "k": "three"}}))).await;
        assert_error(&r, 422, "validation");
        assert!(r.text.contains("`k` expects int"), "{}", r.text);
        let r = send(post(&c, typed, &json!({"inputs": {"question": "q", "k": 3.0}}))).await;
        assert_eq!(r.status, 200, "a whole float is an int, as pydantic takes it: {}", r.text);
        let r = send(post(&c, run.clone(), &question).header("x-dspex-timeout-ms", "soon")).await;
        assert_error(&r, 400, "invalid_request");
        assert_error(&send(c.get(&run)).await, 405, "invalid_request");
        assert_error(&send(c.get(format!("{base}/v2/nothing"))).await, 404, "not_found");

        // The header's deadline: 50 ms against a 300 ms LM.
        let t = Instant::now();
        let fresh = json!({"inputs": {"question": "What is 1 + 1?"}});
        let r = send(post(&c, run.clone(), &fresh).header("x-dspex-timeout-ms", "50")).await;
        assert_error(&r, 504, "timeout");
        assert_eq!(r.body["error"]["retryable"], true);
        assert!(
            t.elapsed() < Duration::from_millis(290),
            "answered at the deadline, not after the LM: {:?}",
            t.elapsed()
        );
        server.stop(Duration::from_secs(2)).await;
        rt.shutdown().await.unwrap();
    });
}

#[test]
fn requests_past_the_in_flight_limit_are_shed_with_retry_after() {
    runtime().block_on(async {
        let (rt, _lm) = native_runtime(Duration::from_millis(400)).await;
        let server = serve(&rt, HttpConfig { max_in_flight: 2, ..HttpConfig::default() }).await;
        let run = format!("http://{}/v1/programs/qa/run", server.local_addr());
        let c = reqwest::Client::new();
        let calls = (0..6).map(|i| {
            let body = json!({"inputs": {"question": format!("What is {i} + 1?")}});
            send(post(&c, run.clone(), &body))
        });
        let replies = futures_util::future::join_all(calls).await;
        let ok = replies.iter().filter(|r| r.status == 200).count();
        let shed: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
        assert_eq!((ok, shed.len()), (2, 4), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
        for r in shed {
            assert_error(r, 429, "overloaded");
            assert_eq!(r.headers["retry-after"], "1");
            assert_eq!(r.body["error"]["retryable"], true);
        }
        // Once they are done, there is room again.
        let r = send(post(&c, run, &json!({"inputs": {"question": "What is 9 + 1?"}}))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        server.stop(Duration::from_secs(2)).await;
        rt.shutdown().await.unwrap();
    });
}

#[test]
fn a_token_file_guards_everything_but_the_health_checks() {
    runtime().block_on(async {
        let (rt, _lm) = native_runtime(Duration::ZERO).await;
        let dir = std::env::temp_dir().join(format!("dspex-http-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("http.token");
        let _ = std::fs::remove_file(&token_file);
        let server = serve(&rt, HttpConfig { token_file: Some(token_file.clone()), ..HttpConfig::default() }).await;
        let token = std::fs::read_to_string(&token_file).unwrap();
        assert_eq!(server.token(), Some(token.as_str()), "a new token is written to the file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

        let base = format!("http://{}", server.local_addr());
        let c = reqwest::Client::new();
        let question = json!({"inputs": {"question": "What is 17 + 25?"}});
        let run = format!("{base}/v1/programs/qa/run");
        let r = send(post(&c, run.clone(), &question)).await;
        assert_error(&r, 401, "invalid_request");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        let r = send(post(&c, run.clone(), &question).bearer_auth("wrong-token-of-some-length")).await;
        assert_error(&r, 401, "invalid_request");
        assert_error(&send(c.get(format!("{base}/openapi.json"))).await, 401, "invalid_request");
        let r = send(post(&c, run.clone(), &question).bearer_auth(&token)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(send(c.get(format!("{base}/healthz"))).await.status, 200, "health checks need no token");
        // Guessing is throttled: after five wrong tokens this address waits,
        // even with the right one, and is told how long.
        for _ in 0..6 {
            let r = send(post(&c, run.clone(), &question).bearer_auth("wrong-token-of-some-length")).await;
            assert_error(&r, 401, "invalid_request");
        }
        let r = send(post(&c, run.clone(), &question).bearer_auth(&token)).await;
        assert_error(&r, 429, "rate_limited");
        assert_eq!(r.headers["retry-after"], "1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = send(post(&c, run, &question).bearer_auth(&token)).await;
        assert_eq!(r.status, 200, "after the wait: {}", r.text);
        assert_eq!(send(c.get(format!("{base}/readyz"))).await.status, 200);
        server.stop(Duration::from_secs(2)).await;

        // Without a token only loopback.
        let err = HttpApi::new(&rt)
            .config(HttpConfig { addr: "0.0.0.0:0".into(), ..HttpConfig::default() })
            .serve()
            .await
            .unwrap_err();
        assert!(err.message().contains("without a token"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        rt.shutdown().await.unwrap();
    });
}

/// Every `$ref` in `v` names a schema of the document.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_openapi_document_describes_every_route_from_the_wire_types() {
    runtime().block_on(async {
        let (rt, _lm) = native_runtime(Duration::ZERO).await;
        let server = serve(&rt, HttpConfig::default()).await;
        let base = format!("http://{}", server.local_addr());
        let doc = send(reqwest::Client::new().get(format!("{base}/openapi.json"))).await.body;
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for (path, methods) in [
            ("/v1/programs/qa/run", &["post"][..]),
            ("/v1/programs/cot/stream", &["post"]),
            ("/v1/pipelines/double/run", &["post"]),
            ("/v1/sessions", &["post"]),
            ("/v1/sessions/{id}/programs/chat/run", &["post"]),
            ("/v1/sessions/{id}", &["get", "delete"]),
            ("/healthz", &["get"]),
            ("/readyz", &["get"]),
            ("/metrics", &["get"]),
            ("/openapi.json", &["get"]),
        ] {
            for m in methods {
                assert!(paths[path][m]["responses"].is_object(), "{m} {path} is documented");
            }
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["RunRequest", "Output", "Meta", "Prediction", "ErrorReply", "ErrorKind", "PipelineResult"] {
            assert!(schemas.contains_key(name), "schema {name}: {:?}", schemas.keys().collect::<Vec<_>>());
        }
        // The error kinds are the taxonomy's, generated, not typed in.
        let kinds = serde_json::to_string(&schemas["ErrorKind"]).unwrap();
        for kind in ["validation", "overloaded", "worker_crashed", "conflict"] {
            assert!(kinds.contains(kind), "{kinds}");
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
            assert!(schemas.contains_key(name), "{r} resolves");
        }
        // One path per served program, its body's inputs the program's own.
        let served: Vec<&String> =
            paths.keys().filter(|p| p.starts_with("/v1/programs/") && p.ends_with("/run")).collect();
        assert_eq!(
            served,
            ["/v1/programs/chat/run", "/v1/programs/cot/run", "/v1/programs/qa/run", "/v1/programs/typed/run"]
        );
        let inputs = |path: &str| {
            paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"].clone()
        };
        let qa = inputs("/v1/programs/qa/run");
        assert_eq!(qa["required"], json!(["question"]), "{qa}");
        assert_eq!(
            inputs("/v1/sessions/{id}/programs/chat/run")["required"],
            json!(["question"]),
            "history is the session's"
        );
        assert_eq!(inputs("/v1/pipelines/double/run")["required"], json!(["question"]));
        let options = &paths["/v1/programs/qa/run"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["properties"]["options"];
        assert!(
            options.to_string().contains("RequestOptions"),
            "the rest of the body is the generated type: {options}"
        );
        assert!(doc.get("security").is_none(), "no token, no auth in the document");
        server.stop(Duration::from_secs(2)).await;
        rt.shutdown().await.unwrap();
    });
}
