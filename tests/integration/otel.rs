//! One trace per request, exported over OTLP: `dspex serve --otlp URL`
//! against a collector this test runs on loopback (it decodes OTLP/JSON), a
//! request with a W3C `traceparent` over HTTP to a program on a Python pool,
//! and the parent/child links from the caller's span through the runtime's
//! phases into the Python worker's command, DSPy's modules and its LM call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::support::{self, scratch, Serve};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    kind: i64,
    service: String,
    attributes: HashMap<String, Value>,
}

/// An OTLP/HTTP collector on 127.0.0.1: every span of every `POST /v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                sink.lock().extend(decode(&doc));
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// The spans of an OTLP/JSON `ExportTraceServiceRequest`.
fn decode(doc: &Value) -> Vec<Span> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let attrs = |v: &Value| -> HashMap<String, Value> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let value = kv["value"].as_object().and_then(|o| o.values().next().cloned()).unwrap_or(Value::Null);
                (text(&kv["key"]), value)
            })
            .collect()
    };
    let mut out = Vec::new();
    for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
        let service = attrs(&rs["resource"]["attributes"]).get("service.name").map(text).unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    name: text(&s["name"]),
                    trace: text(&s["traceId"]).to_lowercase(),
                    id: text(&s["spanId"]).to_lowercase(),
                    parent: text(&s["parentSpanId"]).to_lowercase(),
                    kind: s["kind"].as_i64().unwrap_or(-1),
                    service: service.clone(),
                    attributes: attrs(&s["attributes"]),
                });
            }
        }
    }
    out
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        r#"
[router]
prefer = "python"

[[pools]]
name = "general"
size = 1

[http]
addr = "127.0.0.1:0"

[programs.cot]
module = "chain_of_thought"
signature = "question -> answer"
"#,
    )
    .unwrap();
    path
}

#[test]
fn a_request_is_one_trace_from_the_http_edge_into_the_python_workers_lm_call() {
    let rt = support::runtime();
    let (url, spans) = rt.block_on(collector());
    let dir = scratch("otel");
    let config = config(&dir);
    let serve = Serve::start_with(
        &[config.to_str().unwrap(), "--otlp", &url],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let addr = serve.ready.split("HTTP API at http://").nth(1).expect("the HTTP API's address").trim().to_string();
    let addr = addr.split([' ', ',']).next().unwrap().to_string();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let body = json!({"inputs": {"question": "What is 2 + 3?"}});
        let r = c
            .post(format!("http://{addr}/v1/programs/cot/run"))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let reply: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(status, 200, "{reply}");
        assert!(reply["meta"]["route"]["target"].as_str().is_some_and(|t| t != "native"), "{reply}");
        // An unsampled caller: nothing of its trace is exported.
        let r = c
            .post(format!("http://{addr}/v1/programs/cot/run"))
            .header("content-type", "application/json")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
            .body(json!({"inputs": {"question": "unsampled"}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    // Stopping flushes the exporter; the batch delay is short anyway.
    assert_eq!(serve.stop(), 0);
    let end = Instant::now() + Duration::from_secs(20);
    while !spans.lock().iter().any(|s| s.name.starts_with("lm ")) {
        assert!(Instant::now() < end, "no LM span arrived: {:?}", spans.lock());
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = spans.lock().clone();
    assert!(all.iter().all(|s| s.trace != "0af7651916cd43dd8448eb211c80319c"), "an unsampled trace was exported");
    let trace: Vec<&Span> = all.iter().filter(|s| s.trace == TRACE).collect();
    assert!(trace.iter().all(|s| s.service == "dspex"), "{trace:?}");
    let one = |name: &str| -> &Span {
        let found: Vec<&&Span> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in the trace: {trace:#?}");
        found[0]
    };
    let http = one("POST /v1/programs/{name}/run");
    assert_eq!((http.parent.as_str(), http.kind), (CALLER_SPAN, 2), "the edge is a server span under the caller's");
    let status = http.attributes.get("http.response.status_code").map(|v| v.to_string().replace('"', ""));
    assert_eq!(status.as_deref(), Some("200"), "{http:?}");
    let request = one("dspex.request");
    assert_eq!(request.parent, http.id);
    assert_eq!(request.attributes.get("op").and_then(Value::as_str), Some("chain_of_thought"), "{request:?}");
    assert_eq!(request.attributes.get("route").and_then(Value::as_str), Some("python:general"), "{request:?}");
    assert_eq!(one("dspex.route").parent, request.id);
    assert_eq!(one("dspex.pool.checkout").parent, request.id);
    let call = one("dspex.worker.call");
    assert_eq!((call.parent.as_str(), call.kind), (request.id.as_str(), 3), "a client span under the request");
    // Across the process boundary: the worker's spans hang off the Rust span.
    let command = one("python dspy.run");
    assert_eq!((command.parent.as_str(), command.kind), (call.id.as_str(), 2));
    let cot = one("dspy.ChainOfThought");
    assert_eq!(cot.parent, command.id);
    let predict = one("dspy.Predict");
    assert_eq!(predict.parent, cot.id);
    let lm: Vec<&&Span> = trace.iter().filter(|s| s.name.starts_with("lm ")).collect();
    assert!(!lm.is_empty() && lm.iter().all(|s| s.parent == predict.id), "{lm:#?}");
    let ids: std::collections::HashSet<&str> = trace.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), trace.len(), "span ids are unique");
    let _ = std::fs::remove_dir_all(&dir);
}
