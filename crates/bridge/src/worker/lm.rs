//! A worker's LM calls, sent on to the runtime's gateway.
//!
//! In a pool whose workers call LMs through the runtime
//! ([`WorkerConfig::lm_gateway`](super::WorkerConfig::lm_gateway)), DSPy's
//! HTTP transport in the worker sends each chat-completions request as an
//! `lm_call` message; the reader task hands it to the [`LmGateway`], on a
//! task of its own, and answers with `lm_head`, `lm_data`… and `lm_end` (or
//! `lm_error`). An `lm_cancel`, or the worker's end, aborts the call. The
//! request the call belongs to is known by id; the caller's
//! [`CallOptions::lm_scope`](super::CallOptions::lm_scope) for it (a tenant,
//! a meter: the bridge does not look inside) goes with the call.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dspex_core::{Error, ErrorKind, Result};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tracing::debug;

use super::Shared;
use crate::protocol::{Codec, Message, WireError};

/// What the runtime attached to a request for its LM calls; opaque here.
pub type LmScopeToken = Arc<dyn Any + Send + Sync>;

/// One HTTP request of a worker's DSPy, for the gateway.
#[derive(Clone)]
pub struct LmCall {
    /// Where DSPy sends it.
    pub url: String,
    /// DSPy's headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: String,
    /// The request's deadline, when it has one.
    pub deadline: Option<Instant>,
    /// Retries DSPy's LM asks for.
    pub max_retries: u32,
    /// The request's scope (see [`LmScopeToken`]).
    pub scope: Option<LmScopeToken>,
    /// The worker that made the call.
    pub worker: String,
}

impl std::fmt::Debug for LmCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers carry the credential: never printed.
        f.debug_struct("LmCall").field("url", &self.url).field("worker", &self.worker).finish_non_exhaustive()
    }
}

/// The gateway's answer to an [`LmCall`].
pub struct LmAnswer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: LmBody,
}

impl std::fmt::Debug for LmBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmBody::Whole(b) => write!(f, "Whole({} bytes)", b.len()),
            LmBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// An answer's body: whole (one message to the worker), or as it streams.
pub enum LmBody {
    /// All of it.
    Whole(Bytes),
    /// Chunks as the service sends them.
    Stream(BoxStream<'static, Result<Bytes>>),
}

impl std::fmt::Debug for LmAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmAnswer").field("status", &self.status).finish_non_exhaustive()
    }
}

/// Where a worker's LM calls go: the runtime's gateway.
pub trait LmGateway: Send + Sync + 'static {
    /// Send one call.
    fn call(&self, call: LmCall) -> BoxFuture<'static, Result<LmAnswer>>;
}

impl std::fmt::Debug for dyn LmGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LmGateway")
    }
}

/// Text from byte chunks, never splitting a character: a chunk's
/// incomplete tail waits for the next.
#[derive(Default)]
struct Utf8Chunks {
    tail: Vec<u8>,
}

impl Utf8Chunks {
    fn push(&mut self, chunk: &[u8]) -> String {
        self.tail.extend_from_slice(chunk);
        let valid = match std::str::from_utf8(&self.tail) {
            Ok(_) => self.tail.len(),
            // An incomplete sequence at the end waits; invalid bytes are replaced.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.tail.len(),
        };
        let rest = self.tail.split_off(valid);
        let text = String::from_utf8_lossy(&self.tail).into_owned();
        self.tail = rest;
        text
    }

    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.tail).into_owned();
        self.tail.clear();
        text
    }
}

pub(super) fn wire_error(e: &Error) -> WireError {
    WireError {
        python_type: "GatewayError".into(),
        kind: Some(e.kind().as_str().into()),
        message: e.message().to_string(),
        traceback: None,
        retryable: e.is_retryable(),
    }
}

/// Serve one `lm_call` of the worker: the gateway's answer back as messages.
pub(super) async fn serve(shared: Arc<Shared>, gateway: Arc<dyn LmGateway>, id: u64, call: LmCall) {
    let codec = Codec::MsgPack;
    let send = |msg: Message| {
        let shared = shared.clone();
        async move {
            match crate::protocol::encode_frame(codec, &msg) {
                Ok(frame) => shared.write_frame(codec, frame).await,
                Err(e) => Err(e),
            }
        }
    };
    let started = Instant::now();
    let answer = gateway.call(call).await;
    let result: Result<()> = async {
        match answer {
            Err(e) => send(Message::LmError { id, error: wire_error(&e) }).await,
            Ok(LmAnswer { status, headers, body: LmBody::Whole(bytes) }) => {
                let body = Some(String::from_utf8_lossy(&bytes).into_owned());
                send(Message::LmHead { id, status, headers, body }).await
            }
            Ok(LmAnswer { status, headers, body: LmBody::Stream(mut body) }) => {
                send(Message::LmHead { id, status, headers, body: None }).await?;
                let mut text = Utf8Chunks::default();
                let mut ended = false;
                while !ended {
                    let mut bytes = match body.next().await {
                        Some(Ok(bytes)) => bytes.to_vec(),
                        Some(Err(e)) => return send(Message::LmError { id, error: wire_error(&e) }).await,
                        None => break,
                    };
                    // What else has already arrived goes in the same frame:
                    // a model's tokens often come back to back, and each
                    // frame costs the worker a wake-up.
                    let mut failed = None;
                    while let Some(next) = body.next().now_or_never() {
                        match next {
                            Some(Ok(more)) => bytes.extend_from_slice(&more),
                            Some(Err(e)) => {
                                failed = Some(e);
                                break;
                            }
                            None => {
                                ended = true;
                                break;
                            }
                        }
                    }
                    let data = text.push(&bytes);
                    if !data.is_empty() {
                        send(Message::LmData { id, data }).await?;
                    }
                    if let Some(e) = failed {
                        return send(Message::LmError { id, error: wire_error(&e) }).await;
                    }
                }
                let data = text.finish();
                if !data.is_empty() {
                    send(Message::LmData { id, data }).await?;
                }
                send(Message::LmEnd { id }).await
            }
        }
    }
    .await;
    if let Err(e) = result {
        // The worker is gone or stopped reading: nothing left to tell it.
        debug!(worker = %shared.name, call = id, error = %e, "LM answer not delivered");
    }
    shared.lm_calls.lock().remove(&id);
    debug!(worker = %shared.name, call = id, took = ?started.elapsed(), "LM call served");
}

/// The error a worker's call gets when its pool sends no LM calls through
/// the runtime (a worker started with the gateway on by hand, say).
pub(super) fn no_gateway() -> Error {
    Error::new(ErrorKind::Config, "this worker's pool does not send LM calls through the runtime's gateway")
}

/// The deadline `deadline_ms` from now.
pub(super) fn deadline_in(deadline_ms: Option<u64>) -> Option<Instant> {
    deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_never_splits_a_character() {
        let mut t = Utf8Chunks::default();
        let s = "héllo 🚀".as_bytes();
        let (a, b) = s.split_at(2); // inside `é`
        assert_eq!(t.push(a), "h");
        let (b, c) = b.split_at(b.len() - 2); // inside the rocket
        assert_eq!(t.push(b), "éllo ");
        assert_eq!(t.push(c), "🚀");
        assert_eq!(t.push(&[0xff, b'x']), "\u{fffd}x", "invalid bytes are replaced, not held back");
        assert_eq!(t.push(&[0xf0]), "");
        assert_eq!(t.finish(), "\u{fffd}");
    }

    #[test]
    fn errors_keep_their_kind_on_the_wire() {
        let e = Error::new(ErrorKind::BudgetExceeded, "over");
        let w = wire_error(&e);
        assert_eq!((w.kind.as_deref(), w.retryable), (Some("budget_exceeded"), false));
        assert_eq!(crate::protocol::error_kind_from_wire(w.kind.as_deref()), ErrorKind::BudgetExceeded);
    }
}
