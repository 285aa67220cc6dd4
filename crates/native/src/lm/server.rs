//! A small OpenAI-compatible HTTP server on 127.0.0.1.
//!
//! It answers `POST …/chat/completions` (plain JSON or SSE streaming) from a
//! [`Responder`], records every request body, and sets `TCP_NODELAY` so a
//! call costs microseconds, not Nagle's 40 ms. Tests use it with scripted
//! replies; the offline demo serves [`super::offline::OfflineResponder`]; the
//! benchmarks use it as an LM with a fixed latency. Both the native client
//! and DSPy (through LiteLLM's `api_base`) talk to it.
//!
//! ```no_run
//! # async fn demo() -> dspex_core::Result<()> {
//! use dspex_native::lm::server::{LmServer, Reply, Scripted};
//!
//! let server = LmServer::start(Scripted::new(vec![Reply::text("[[ ## answer ## ]]\n4")])).await?;
//! println!("base URL: {}", server.base_url());
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_core::{Error, ErrorKind, Result, Value};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the server answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A completion: one text per choice, after `delay`.
    Text {
        /// One text per choice.
        choices: Vec<String>,
        /// Time before the answer starts.
        delay: Duration,
        /// Every choice's `finish_reason`: `stop`, or `length` for a reply
        /// cut at the length limit ([`Reply::cut`]).
        finish_reason: &'static str,
    },
    /// An HTTP error status with a body and optional `Retry-After` seconds.
    Status {
        /// HTTP status code.
        code: u16,
        /// Response body.
        body: String,
        /// `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// Never answer (the client's deadline must fire).
    Hang,
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    /// One choice with this text, answered at once.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Text { choices: vec![s.into()], delay: Duration::ZERO, finish_reason: "stop" }
    }

    /// Choices with these texts, answered at once.
    pub fn choices(texts: Vec<String>) -> Reply {
        Reply::Text { choices: texts, delay: Duration::ZERO, finish_reason: "stop" }
    }

    /// The same text, reported as cut at the length limit (`finish_reason`
    /// `length`), as a server does when `max_tokens` ran out.
    pub fn cut(self) -> Reply {
        match self {
            Reply::Text { choices, delay, .. } => Reply::Text { choices, delay, finish_reason: "length" },
            other => other,
        }
    }

    /// An error status.
    pub fn status(code: u16) -> Reply {
        Reply::Status { code, body: format!("{{\"error\": {{\"message\": \"status {code}\"}}}}"), retry_after: None }
    }

    /// The same reply, after `delay`.
    pub fn delayed(self, d: Duration) -> Reply {
        match self {
            Reply::Text { choices, finish_reason, .. } => Reply::Text { choices, delay: d, finish_reason },
            other => other,
        }
    }
}

/// Decides the reply to each request (given its JSON body).
pub trait Responder: Send + Sync + 'static {
    /// The reply to `request`.
    fn respond(&self, request: &Value) -> Reply;
}

impl<F> Responder for F
where
    F: Fn(&Value) -> Reply + Send + Sync + 'static,
{
    fn respond(&self, request: &Value) -> Reply {
        self(request)
    }
}

/// Replies from a queue, in order; the last one repeats when the queue runs out.
#[derive(Debug)]
pub struct Scripted {
    queue: Mutex<VecDeque<Reply>>,
    last: Mutex<Option<Reply>>,
}

impl Scripted {
    /// Replies in this order.
    pub fn new(replies: Vec<Reply>) -> Scripted {
        Scripted { queue: Mutex::new(replies.into()), last: Mutex::new(None) }
    }

    /// Add a reply at the end of the queue.
    pub fn push(&self, reply: Reply) {
        self.queue.lock().push_back(reply);
    }
}

impl Responder for Scripted {
    fn respond(&self, _request: &Value) -> Reply {
        match self.queue.lock().pop_front() {
            Some(r) => {
                *self.last.lock() = Some(r.clone());
                r
            }
            None => self.last.lock().clone().unwrap_or_else(|| Reply::Status {
                code: 500,
                body: "{\"error\": {\"message\": \"no scripted reply left\"}}".into(),
                retry_after: None,
            }),
        }
    }
}

/// When the server received a request and when it wrote the first byte of
/// the reply's content (the first content chunk of a stream), for measuring
/// what a client adds on either side of the model's own latency.
#[derive(Debug, Clone, Copy)]
pub struct RequestTiming {
    /// The request's body was read.
    pub received: Instant,
    /// The first content was written and flushed (`None` until then, and
    /// for replies with no content: errors, dropped connections).
    pub first_byte: Option<Instant>,
}

/// A request's method, path and headers, as the server received them.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHead {
    /// `POST`.
    pub method: String,
    /// `/v1/chat/completions`.
    pub path: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// `HTTP/1.1`, or `HTTP/2` (HTTPS clients that offer it).
    pub version: &'static str,
}

impl RequestHead {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Requests and their timings, in arrival order. `first` is the sequence
/// number of `timings[0]`, so a reply still being written when the record is
/// cleared cannot mark a later request's timing.
#[derive(Default)]
struct Recorded {
    bodies: Vec<Value>,
    heads: Vec<RequestHead>,
    timings: Vec<RequestTiming>,
    first: u64,
}

#[cfg(feature = "tls")]
type Acceptor = tokio_rustls::TlsAcceptor;
/// Without TLS there is no acceptor to have.
#[cfg(not(feature = "tls"))]
type Acceptor = std::convert::Infallible;

/// A server's HTTPS identity: its certificate chain and private key (PEM).
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<u8>,
    key: Vec<u8>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

#[cfg(feature = "tls")]
impl TlsIdentity {
    /// A certificate chain (the server's first) and its private key, in PEM.
    pub fn from_pem(chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> TlsIdentity {
        TlsIdentity { chain: chain.into(), key: key.into() }
    }

    fn acceptor(&self) -> Result<Acceptor> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Config, format!("the LM server's TLS identity: {what}: {e}"))
        };
        let chain = CertificateDer::pem_slice_iter(&self.chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("unreadable certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| bad("unreadable private key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad("certificate and key", &e))?;
        // As hosted LMs do: HTTP/2 for clients that offer it, else HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// A running server. Stops when dropped.
pub struct LmServer {
    addr: SocketAddr,
    scheme: &'static str,
    recorded: Arc<Mutex<Recorded>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for LmServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmServer").field("addr", &self.addr).finish()
    }
}

impl Drop for LmServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LmServer {
    /// Listen on an ephemeral port of 127.0.0.1.
    pub async fn start(responder: impl Responder) -> Result<LmServer> {
        Self::start_on("127.0.0.1:0", responder).await
    }

    /// Listen on `addr`.
    pub async fn start_on(addr: &str, responder: impl Responder) -> Result<LmServer> {
        Self::listen(addr, responder, None).await
    }

    /// Listen on an ephemeral port of 127.0.0.1 with HTTPS: `identity` is
    /// the server's certificate chain and private key, in PEM. The
    /// certificate must name the IP address 127.0.0.1 (the
    /// [`base_url`](Self::base_url)); clients trust its CA through the
    /// gateway's `ca_file` (Rust) or `SSL_CERT_FILE` (Python).
    #[cfg(feature = "tls")]
    pub async fn start_tls(responder: impl Responder, identity: &TlsIdentity) -> Result<LmServer> {
        Self::listen("127.0.0.1:0", responder, Some(identity.acceptor()?)).await
    }

    async fn listen(addr: &str, responder: impl Responder, tls: Option<Acceptor>) -> Result<LmServer> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot listen on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        let recorded: Arc<Mutex<Recorded>> = Arc::default();
        let responder: Arc<dyn Responder> = Arc::new(responder);
        let shared = recorded.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let responder = responder.clone();
                let recorded = shared.clone();
                // (Without the `tls` feature the acceptor is uninhabited, and Copy.)
                #[cfg_attr(not(feature = "tls"), allow(clippy::clone_on_copy))]
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let _ = serve(stream, responder, recorded).await;
                        }
                        #[cfg(feature = "tls")]
                        Some(acceptor) => {
                            // A failed handshake (an untrusting client) only ends this connection.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                    let _ = serve_h2(stream, responder, recorded).await;
                                } else {
                                    let _ = serve(stream, responder, recorded).await;
                                }
                            }
                        }
                        #[cfg(not(feature = "tls"))]
                        Some(never) => match never {},
                    }
                });
            }
        });
        Ok(LmServer { addr, scheme, recorded, task })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1` (`https://` from
    /// [`start_tls`](Self::start_tls)), for `base_url` / `api_base`.
    pub fn base_url(&self) -> String {
        format!("{}://{}/v1", self.scheme, self.addr)
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.recorded.lock().bodies.clone()
    }

    /// The method, path and headers of every request so far, in the order
    /// of [`requests`](Self::requests).
    pub fn heads(&self) -> Vec<RequestHead> {
        self.recorded.lock().heads.clone()
    }

    /// When each request so far arrived and got its first byte of content,
    /// in the order of [`requests`](Self::requests).
    pub fn timings(&self) -> Vec<RequestTiming> {
        self.recorded.lock().timings.clone()
    }

    /// Forget the recorded requests and timings.
    pub fn clear_requests(&self) {
        let mut recorded = self.recorded.lock();
        recorded.bodies.clear();
        recorded.heads.clear();
        recorded.first += recorded.timings.len() as u64;
        recorded.timings.clear();
    }
}

/// One request, as read off either protocol.
struct Incoming {
    version: &'static str,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// What to send back, decided once for HTTP/1.1 and HTTP/2.
enum Answer {
    /// Hold the request open without answering.
    Hang,
    /// Close without answering.
    Drop,
    /// A status and a whole body; `content` when it carries the model's text.
    Whole { code: u16, body: Vec<u8>, extra: Vec<(String, String)>, content: bool },
    /// Server-sent events (`data:` payloads), each marked when it carries text.
    Events(Vec<(String, bool)>),
}

/// Marks when a request's first content went out (a no-op once the record
/// was cleared: the timing is gone, and so is the interest in it).
struct FirstByte {
    recorded: Arc<Mutex<Recorded>>,
    seq: u64,
}

impl FirstByte {
    fn mark(&self) {
        let mut r = self.recorded.lock();
        let index = self.seq.checked_sub(r.first).and_then(|i| usize::try_from(i).ok());
        if let Some(t) = index.and_then(|i| r.timings.get_mut(i)) {
            t.first_byte.get_or_insert(Instant::now());
        }
    }
}

/// Record `incoming` and decide its answer (after the reply's delay).
async fn answer(incoming: Incoming, responder: &dyn Responder, recorded: &Arc<Mutex<Recorded>>) -> (Answer, FirstByte) {
    let Incoming { version, method, path, headers, body } = incoming;
    if !path.ends_with("/chat/completions") {
        let body = b"{\"error\": {\"message\": \"not found\"}}".to_vec();
        let nothing = FirstByte { recorded: recorded.clone(), seq: u64::MAX };
        return (Answer::Whole { code: 404, body, extra: Vec::new(), content: false }, nothing);
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let seq = {
        let mut r = recorded.lock();
        r.bodies.push(request.clone());
        r.heads.push(RequestHead { method, path, headers, version });
        r.timings.push(RequestTiming { received: Instant::now(), first_byte: None });
        r.first + r.timings.len() as u64 - 1
    };
    let first_byte = FirstByte { recorded: recorded.clone(), seq };
    let answer = match responder.respond(&request) {
        Reply::Hang => Answer::Hang,
        Reply::Drop => Answer::Drop,
        Reply::Status { code, body, retry_after } => Answer::Whole {
            code,
            body: body.into_bytes(),
            extra: retry_after.map(|s| vec![("Retry-After".to_string(), s.to_string())]).unwrap_or_default(),
            content: false,
        },
        Reply::Text { choices, delay, finish_reason } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let model = request.get("model").and_then(Value::as_str).unwrap_or("local");
            if request.get("stream").and_then(Value::as_bool).unwrap_or(false) {
                // As OpenAI does: usage in a last chunk only when asked for.
                let usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
                Answer::Events(events(model, &choices, finish_reason, usage))
            } else {
                let body = completion_body(model, &choices, finish_reason).into_bytes();
                Answer::Whole { code: 200, body, extra: Vec::new(), content: true }
            }
        }
    };
    (answer, first_byte)
}

/// HTTP/1.1 on `stream`, request after request.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    responder: Arc<dyn Responder>,
    recorded: Arc<Mutex<Recorded>>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let method = line.split_whitespace().next().unwrap_or("").to_string();
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        let (answer, first_byte) =
            answer(Incoming { version: "HTTP/1.1", method, path, headers, body }, &*responder, &recorded).await;
        match answer {
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            Answer::Drop => return Ok(()),
            Answer::Whole { code, body, extra, content } => {
                respond_raw(&mut write, code, "application/json", &body, &extra).await?;
                if content {
                    first_byte.mark();
                }
            }
            Answer::Events(events) => {
                write
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )
                    .await?;
                for (data, content) in events {
                    let payload = format!("data: {data}\n\n");
                    write.write_all(format!("{:x}\r\n{payload}\r\n", payload.len()).as_bytes()).await?;
                    write.flush().await?;
                    if content {
                        first_byte.mark();
                    }
                }
                write.write_all(b"0\r\n\r\n").await?;
                write.flush().await?;
            }
        }
    }
}

/// HTTP/2 on `stream` (a TLS connection that chose `h2`): each request on a
/// task of its own, as streams are concurrent.
#[cfg(feature = "tls")]
async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    responder: Arc<dyn Responder>,
    recorded: Arc<Mutex<Recorded>>,
) -> std::result::Result<(), h2::Error> {
    let mut connection = h2::server::handshake(stream).await?;
    while let Some(next) = connection.accept().await {
        let (request, respond) = next?;
        let (responder, recorded) = (responder.clone(), recorded.clone());
        tokio::spawn(async move {
            let _ = serve_h2_stream(request, respond, responder, recorded).await;
        });
    }
    Ok(())
}

#[cfg(feature = "tls")]
async fn serve_h2_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    responder: Arc<dyn Responder>,
    recorded: Arc<Mutex<Recorded>>,
) -> std::result::Result<(), h2::Error> {
    let (head, mut received) = request.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = received.data().await {
        let chunk = chunk?;
        let _ = received.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let headers = head
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let incoming = Incoming {
        version: "HTTP/2",
        method: head.method.to_string(),
        path: head.uri.path().to_string(),
        headers,
        body,
    };
    let (answer, first_byte) = answer(incoming, &*responder, &recorded).await;
    let response = |code: u16, content_type: &str, extra: &[(String, String)]| {
        let mut r = http::Response::builder().status(code).header("content-type", content_type);
        for (k, v) in extra {
            r = r.header(k.as_str(), v.as_str());
        }
        r.body(())
    };
    match answer {
        Answer::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
        Answer::Drop => respond.send_reset(h2::Reason::INTERNAL_ERROR),
        Answer::Whole { code, body, extra, content } => {
            let Ok(head) = response(code, "application/json", &extra) else { return Ok(()) };
            let mut out = respond.send_response(head, false)?;
            out.send_data(body.into(), true)?;
            if content {
                first_byte.mark();
            }
        }
        Answer::Events(events) => {
            let Ok(head) = response(200, "text/event-stream", &[]) else { return Ok(()) };
            let mut out = respond.send_response(head, false)?;
            for (data, content) in events {
                out.send_data(format!("data: {data}\n\n").into(), false)?;
                if content {
                    first_byte.mark();
                }
            }
            out.send_data(bytes::Bytes::new(), true)?;
        }
    }
    Ok(())
}

fn usage(choices: &[String]) -> Value {
    let completion: usize = choices.iter().map(|c| c.split_whitespace().count()).sum();
    serde_json::json!({"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion})
}

fn completion_body(model: &str, choices: &[String], finish_reason: &str) -> String {
    let choices_json: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": finish_reason})
        })
        .collect();
    serde_json::json!({
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": choices_json,
        "usage": usage(choices),
    })
    .to_string()
}

async fn respond_raw<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(String, String)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(code),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// The events of a streamed completion, each marked when it carries text:
/// word-sized pieces (like a real model's tokens), each choice's end, the
/// usage when asked for, `[DONE]`.
fn events(model: &str, choices: &[String], finish_reason: &str, include_usage: bool) -> Vec<(String, bool)> {
    let chunk = |choices: Value| serde_json::json!({"id": "chatcmpl-local", "object": "chat.completion.chunk", "model": model, "choices": choices});
    let piece = |i: usize, text: &str| {
        chunk(serde_json::json!([{"index": i, "delta": {"content": text}, "finish_reason": null}])).to_string()
    };
    let mut out = Vec::new();
    for (i, text) in choices.iter().enumerate() {
        let mut current = String::new();
        for ch in text.chars() {
            current.push(ch);
            if ch.is_whitespace() && current.len() >= 4 {
                out.push((piece(i, &current), true));
                current.clear();
            }
        }
        if !current.is_empty() {
            out.push((piece(i, &current), true));
        }
    }
    for i in 0..choices.len().max(1) {
        let end = chunk(serde_json::json!([{"index": i, "delta": {}, "finish_reason": finish_reason}]));
        out.push((end.to_string(), false));
    }
    if include_usage {
        let mut last = chunk(serde_json::json!([]));
        last["usage"] = usage(choices);
        out.push((last.to_string(), false));
    }
    out.push(("[DONE]".to_string(), false));
    out
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
