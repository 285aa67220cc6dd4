//! What each fuzz target does with one input — the one copy, shared by the
//! `cargo fuzz` targets in `fuzz_targets/` and by the regression test that
//! replays the committed corpora under `cargo test`
//! (`tests/integration/fuzz_corpus.rs` includes this file).
//!
//! Each function takes arbitrary bytes the way the runtime takes them from
//! outside — a worker's pipe, a signature string, an LM completion, a
//! pipeline file, a console line, an HTTP body, a peer's message — and
//! panics only on a broken invariant. An `Err` from the code under test is
//! a correct answer to bad input.

use std::sync::{Arc, OnceLock};

use dspex::native::adapter;
use dspex::native::{parse_signature_uncached, parse_type};
use dspex::{AdapterKind, Signature, Value};

/// What a fuzz target does with one input.
pub type Target = fn(&[u8]);

/// Fuzz targets by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("signature", signature),
    ("completion", completion),
    ("value", value),
    ("pipeline", pipeline),
    ("console_line", console_line),
    ("lm_answer", lm_answer),
    #[cfg(feature = "cluster")]
    ("cluster_message", cluster_message),
    #[cfg(feature = "http")]
    ("http_body", http_body),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A frame body from a worker (codec tag, payload), read both ways the
/// runtime reads one; whatever decodes must encode again.
pub fn frame(data: &[u8]) {
    use dspex::bridge::protocol::{decode_frame, decode_reply, encode_frame};
    for (codec, message) in [decode_frame(data), decode_reply(data)].into_iter().flatten() {
        let frame = encode_frame(codec, &message);
        assert!(frame.is_ok(), "a decoded {codec:?} message does not encode: {frame:?}");
    }
}

/// A signature string (and a type annotation): parsed, and when it parses,
/// its prompt formatted with every input present.
pub fn signature(data: &[u8]) {
    let text = text(data);
    let _ = parse_type(&text);
    if let Ok(sig) = parse_signature_uncached(&text, None) {
        let inputs = sig.inputs().iter().map(|f| (f.name().to_string(), Value::String("x".into()))).collect();
        for kind in [AdapterKind::Chat, AdapterKind::Json] {
            let _ = adapter::format(kind, &sig, &[], &inputs);
        }
    }
}

fn signatures() -> &'static [Arc<Signature>] {
    static SIGS: OnceLock<Vec<Arc<Signature>>> = OnceLock::new();
    SIGS.get_or_init(|| {
        [
            "question -> answer",
            "question -> reasoning, answer: int",
            "context: list[str], question -> answer: float, confidence: Literal['low', 'high']",
            "q -> items: list[dict[str, int]], flag: bool, note: Optional[str]",
            "q -> a: Annotated[int, Field(gt=0, lt=10)], b: tuple[int, str], c: dict[str, list[float]]",
        ]
        .iter()
        .filter_map(|s| parse_signature_uncached(s, None).ok().map(Arc::new))
        .collect()
    })
}

/// An LM completion for one of a few fixed signatures: byte 0 picks the
/// adapter (bit 0) and the signature; the rest is the completion.
pub fn completion(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let sigs = signatures();
    let sig = &sigs[usize::from(pick >> 1) % sigs.len()];
    let kind = if pick & 1 == 0 { AdapterKind::Chat } else { AdapterKind::Json };
    let _ = adapter::parse(kind, sig, &text(rest));
}

/// An LM service's answer as the gateway's HTTP/1.1 client reads it off a
/// connection: byte 0 is how many bytes arrive at a time (0: all at once),
/// the rest is the answer, then the connection closes. Read whole, the same
/// bytes must give the same answer.
pub fn lm_answer(data: &[u8]) {
    let Some((&piece, rest)) = data.split_first() else { return };
    let pieces = dspex::native::lm::read_answer(rest, usize::from(piece));
    let whole = dspex::native::lm::read_answer(rest, 0);
    assert_eq!(pieces, whole, "an answer read in pieces of {piece} differs from the whole");
    if let Ok((status, body)) = whole {
        assert!(status == 101 || (200..1000).contains(&status), "status {status}");
        assert!(body.len() <= rest.len(), "a body longer than its answer");
    }
}

const VALUE_TYPES: &[&str] = &[
    "int",
    "float",
    "bool",
    "list[int]",
    "list[str]",
    "dict[str, int]",
    "dict[str, list[float]]",
    "Optional[int]",
    "Union[int, str]",
    "Literal['yes', 'no', 3]",
    "tuple[int, str]",
    "Annotated[int, Field(ge=0, le=100)]",
    "list[dict[str, Optional[bool]]]",
];

fn value_signatures() -> &'static [Arc<Signature>] {
    static SIGS: OnceLock<Vec<Arc<Signature>>> = OnceLock::new();
    SIGS.get_or_init(|| {
        VALUE_TYPES
            .iter()
            .filter_map(|ty| parse_signature_uncached(&format!("q -> out: {ty}"), None).ok().map(Arc::new))
            .collect()
    })
}

/// One field's raw value converted to its type (DSPy's `parse_value`: JSON
/// repair, `literal_eval`, lax validation): byte 0 picks the type, the rest
/// is the value, as a Chat section and as a JSON member.
pub fn value(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let sigs = value_signatures();
    let sig = &sigs[usize::from(pick) % sigs.len()];
    let raw = text(rest);
    let chat = format!("[[ ## out ## ]]\n{raw}\n\n[[ ## completed ## ]]");
    let _ = adapter::parse(AdapterKind::Chat, sig, &chat);
    let _ = adapter::parse(AdapterKind::Json, sig, &format!("{{\"out\": {raw}}}"));
}

/// A pipeline file (TOML and JSON) and a runtime configuration file.
pub fn pipeline(data: &[u8]) {
    let text = text(data);
    let _ = dspex::Pipeline::from_toml(&text);
    let _ = dspex::Pipeline::from_json(&text);
    let _ = dspex::RuntimeConfig::from_toml(&text);
}

/// A console request line; one that parses reads back the same from the
/// line the client would send.
pub fn console_line(data: &[u8]) {
    use dspex::actors::console::ConsoleRequest;
    if let Ok(Some(req)) = ConsoleRequest::parse(data) {
        let again = ConsoleRequest::parse(req.to_line().as_bytes());
        assert!(matches!(&again, Ok(Some(r)) if *r == req), "{req:?} reads back as {again:?}");
    }
}

/// A payload from a cluster peer, as every message and store entry.
#[cfg(feature = "cluster")]
pub fn cluster_message(data: &[u8]) {
    let _ = dspex::cluster::decode_untrusted(data);
}

#[cfg(feature = "http")]
mod http {
    use std::sync::OnceLock;

    use dspex::native::lm::offline::OfflineResponder;
    use dspex::native::lm::server::LmServer;
    use dspex::{LmConfig, Pipeline, ProgramSpec, Runtime};

    pub(crate) struct Served {
        pub(crate) tokio: tokio::runtime::Runtime,
        pub(crate) router: axum::Router,
        // Kept alive with the router.
        _rt: Runtime,
        _lm: LmServer,
    }

    const PIPELINE: &str = r#"
name = "double"
inputs = ["question"]
outputs = ["answer", "check"]

[[steps]]
name = "solve"
kind = "program"
program = { module = "predict", signature = "question -> answer: int" }
inputs = { question = "question" }

[[steps]]
name = "check"
kind = "program"
program = { module = "predict", signature = "question -> check: int" }
inputs = { question = "question" }
"#;

    /// One native-only runtime over the offline LM on loopback, its HTTP
    /// API as a router, for the whole fuzzing process.
    pub(crate) fn served() -> &'static Served {
        static SERVED: OnceLock<Served> = OnceLock::new();
        SERVED.get_or_init(|| {
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime for the HTTP target");
            let (rt, lm, router) = tokio.block_on(async {
                let lm = LmServer::start(OfflineResponder::new()).await.expect("the offline LM server");
                let config = LmConfig::new("offline").with_base_url(lm.base_url()).with_temperature(0.0);
                let rt = Runtime::builder().native_only().lm(config).start().await.expect("a native runtime");
                let pipeline = Pipeline::from_toml(PIPELINE).expect("the fuzz pipeline");
                let (router, _) = dspex::http::HttpApi::new(&rt)
                    .program("qa", ProgramSpec::predict("question -> answer: int"))
                    .program("typed", ProgramSpec::predict("question, k: int, tags: list[str] -> answer"))
                    .pipeline("double", pipeline)
                    .into_router()
                    .expect("the HTTP router");
                (rt, lm, router)
            });
            Served { tokio, router, _rt: rt, _lm: lm }
        })
    }
}

/// An HTTP request body for one of the API's POST endpoints (byte 0 picks
/// it), sent through the real router and runtime: the answer is a JSON
/// body (or an event stream) with a status that is not `500`.
#[cfg(feature = "http")]
pub fn http_body(data: &[u8]) {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    const PATHS: &[&str] = &[
        "/v1/programs/qa/run",
        "/v1/programs/typed/run",
        "/v1/programs/qa/stream",
        "/v1/pipelines/double/run",
        "/v1/sessions",
    ];
    let Some((&pick, body)) = data.split_first() else { return };
    let path = PATHS[usize::from(pick) % PATHS.len()];
    let served = http::served();
    let request = |method: &str, path: &str, body: Vec<u8>| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("x-dspex-timeout-ms", "2000")
            .body(Body::from(body))
            .expect("a well-formed request")
    };
    served.tokio.block_on(async {
        let response = served.router.clone().oneshot(request("POST", path, body.to_vec())).await;
        let Ok(response) = response;
        let status = response.status();
        let stream = path.ends_with("/stream") && status.is_success();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await.expect("the response body");
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{}", String::from_utf8_lossy(&bytes));
        if !stream {
            let parsed = serde_json::from_slice::<serde_json::Value>(&bytes);
            assert!(parsed.is_ok(), "{status}: not JSON: {}", String::from_utf8_lossy(&bytes));
        }
        // A session the input made is ended, so a long run does not pile them up.
        if path == "/v1/sessions" && status.is_success() {
            let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
            if let Some(id) = id {
                let _ = served.router.clone().oneshot(request("DELETE", &format!("/v1/sessions/{id}"), vec![])).await;
            }
        }
    });
}
