//! A worker's LM calls, sent on to the runtime's gateway.
//!
//! In a pool whose workers call LMs through the runtime
//! ([`WorkerConfig::lm_gateway`](super::WorkerConfig::lm_gateway)), DSPy's
//! HTTP transport in the worker sends each chat-completions request as an
//! `lm_call` message and reads the answer as `lm_head`, `lm_data`… and
//! `lm_end` (or `lm_error`) — not on the request pipes but on a connection
//! of its own: a unix socket pair the worker makes and hands over on its
//! *LM connector* (a `SOCK_SEQPACKET` socket given at start, `SCM_RIGHTS`),
//! then keeps for later calls. One call at a time per connection, so the
//! worker thread that makes a call reads its answer itself (no other thread
//! wakes up for it, as with an HTTP connection of its own), and this side
//! serves each connection on a task that does nothing else. A worker closes
//! a connection to cancel its call.
//!
//! The request a call belongs to is known by id; the caller's
//! [`CallOptions::lm_scope`](super::CallOptions::lm_scope) for it (a tenant,
//! a meter: the bridge does not look inside) goes with the call.

use std::any::Any;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dspex_core::{Error, ErrorKind, Result};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{read_frame, Shared};
use crate::process;
use crate::protocol::{decode_reply, Codec, Message, WireError};

/// The environment variable that gives a worker its LM connector's descriptor.
pub(super) const CONNECTOR_ENV: &str = "DSPEX_LM_FD";

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

/// LM connections one worker may hold open: its calls in flight plus the
/// idle ones it keeps (at most 64); every one holds a descriptor of the
/// runtime's, so a worker that keeps opening them is refused past this.
const MAX_CONNECTIONS: usize = 512;

/// Serve the LM connections the worker hands over on `connector` (a unix
/// stream socket; each connection comes as a descriptor), each on
/// a task of its own, until the worker closes the connector (its end) or the
/// returned task is aborted (the worker stopped: every connection with it).
pub(super) fn serve_connector(
    shared: Arc<Shared>,
    gateway: Arc<dyn LmGateway>,
    connector: OwnedFd,
) -> Result<tokio::task::AbortHandle> {
    let connector = connection(connector)
        .map_err(|e| Error::internal(format!("cannot watch the LM connector of {}: {e}", shared.name)))?;
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let ready = tokio::select! {
                ready = connector.readable() => ready,
                // Reap finished connections as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            if ready.is_err() {
                break;
            }
            match connector.try_io(Interest::READABLE, || process::recv_fds(connector.as_raw_fd())) {
                Ok(Some(fds)) => {
                    for fd in fds {
                        if connections.len() >= MAX_CONNECTIONS {
                            // Dropped: the worker reads end of input on it, a
                            // classified error for that call.
                            warn!(worker = %shared.name, open = connections.len(), "the worker opened too many LM connections; refusing one");
                            continue;
                        }
                        match connection(fd) {
                            Ok(stream) => {
                                connections.spawn(serve_connection(shared.clone(), gateway.clone(), stream));
                            }
                            Err(e) => {
                                warn!(worker = %shared.name, error = %e, "the worker handed over a descriptor that is not an LM connection")
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    debug!(worker = %shared.name, error = %e, "LM connector closed");
                    break;
                }
            }
        }
        // The worker closed its end: its connections end with their calls.
        while connections.join_next().await.is_some() {}
    });
    Ok(task.abort_handle())
}

/// A descriptor from the worker as a non-blocking unix stream.
fn connection(fd: OwnedFd) -> std::io::Result<UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// One LM connection: calls one after another, until the worker closes it.
async fn serve_connection(shared: Arc<Shared>, gateway: Arc<dyn LmGateway>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    loop {
        let body = match read_frame(&mut read, shared.max_frame).await {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(e) => {
                warn!(worker = %shared.name, error = %e, "broken LM connection from the worker");
                return;
            }
        };
        let (id, call) = match decode_reply(&body) {
            Ok((_, Message::LmCall { id, request, url, headers, body, deadline_ms, max_retries, .. })) => {
                let scope = request.and_then(|r| shared.lm_scopes.lock().get(&r).cloned());
                let call = LmCall {
                    url,
                    headers,
                    body,
                    deadline: deadline_in(deadline_ms),
                    max_retries,
                    scope,
                    worker: shared.name.to_string(),
                };
                (id, call)
            }
            Ok((_, other)) => {
                warn!(worker = %shared.name, message = ?other, "unexpected message on an LM connection");
                return;
            }
            Err(e) => {
                warn!(worker = %shared.name, error = %e, "undecodable message on an LM connection");
                return;
            }
        };
        let started = Instant::now();
        let answered = tokio::select! {
            r = answer(&mut write, gateway.call(call), id, shared.max_frame) => r,
            // The worker closed the connection: it stopped waiting.
            _ = peer_gone(&mut read) => {
                debug!(worker = %shared.name, call = id, "LM call cancelled by the worker");
                return;
            }
        };
        if let Err(e) = answered {
            // The worker is gone or stopped reading: nothing left to tell it.
            debug!(worker = %shared.name, call = id, error = %e, "LM answer not delivered");
            return;
        }
        debug!(worker = %shared.name, call = id, took = ?started.elapsed(), "LM call served");
    }
}

/// Resolves when the worker closes its end, or breaks the rule of one call
/// at a time (it sent more while a call is open).
async fn peer_gone<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) {
    let _ = read.fill_buf().await;
}

/// The gateway's answer to call `id`, written as messages.
async fn answer<W: tokio::io::AsyncWrite + Unpin>(
    write: &mut W,
    answer: impl std::future::Future<Output = Result<LmAnswer>>,
    id: u64,
    max_frame: usize,
) -> Result<()> {
    let mut send = async |msg: Message| -> Result<()> {
        let mut frame = crate::protocol::encode_frame(Codec::MsgPack, &msg)?;
        if frame.len() - 4 > max_frame {
            let error = Error::new(
                ErrorKind::InvalidRequest,
                format!(
                    "an LM answer of {} bytes is over the worker's frame limit of {max_frame} bytes (the pool's `max_frame_mb`)",
                    frame.len() - 4
                ),
            );
            frame = crate::protocol::encode_frame(Codec::MsgPack, &Message::LmError { id, error: wire_error(&error) })?;
        }
        write.write_all(&frame).await.map_err(Error::from)
    };
    match answer.await {
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
