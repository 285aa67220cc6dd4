//! The wire protocol between the runtime and a Python worker.
//!
//! A frame is a 4-byte big-endian length of the rest, one codec tag byte
//! ([`Codec::Json`] = 0, [`Codec::MsgPack`] = 1, [`Codec::Arrow`] = 2; other
//! tags are reserved) and the payload, a map with a `type`. An Arrow frame
//! carries the message's large columnar values (datasets of records, float
//! arrays, embeddings) as Arrow IPC streams and the rest as MessagePack
//! (layout in `arrow.rs`, shape rules in [`columnar`]); reading and writing
//! it needs the `arrow` feature. [`CodecChoice::Auto`] picks per message ([`choose_codec`]).
//! The worker side is `crates/bridge/worker/dspex_worker/protocol.py`; both
//! test suites decode and re-encode the golden frames in
//! `tests/fixtures/protocol/golden.json`, so the two implementations cannot
//! drift apart.
//!
//! ```
//! use dspex_bridge::protocol::{decode_frame, encode_frame, Codec, Message};
//!
//! let msg = Message::Ping { seq: 7 };
//! let frame = encode_frame(Codec::MsgPack, &msg).unwrap();
//! assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes());
//! let (codec, back) = decode_frame(&frame[4..]).unwrap();
//! assert_eq!((codec, back), (Codec::MsgPack, msg));
//! ```

use std::fmt;

#[cfg(feature = "arrow")]
mod arrow;
pub mod columnar;

use dspex_core::trace::RemoteSpan;
pub use dspex_core::CodecChoice;
use dspex_core::{Error, ErrorKind, Result, Value};
use serde::{Deserialize, Serialize};

/// The protocol version this runtime speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default upper bound on a frame's size (length field), 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// How a frame's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// JSON (tag 0): readable, slower.
    Json,
    /// MessagePack (tag 1): the default.
    #[default]
    MsgPack,
    /// MessagePack with large columnar values as Arrow IPC streams (tag 2;
    /// feature `arrow`, and `pyarrow` in the worker).
    Arrow,
}

impl Codec {
    /// The tag byte.
    pub fn tag(self) -> u8 {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
            Codec::Arrow => 2,
        }
    }

    /// The codec for a tag byte.
    pub fn from_tag(tag: u8) -> Option<Codec> {
        match tag {
            0 => Some(Codec::Json),
            1 => Some(Codec::MsgPack),
            2 => Some(Codec::Arrow),
            _ => None,
        }
    }

    /// Whether this build reads and writes the codec (Arrow needs the
    /// `arrow` feature).
    pub fn is_available(self) -> bool {
        self != Codec::Arrow || cfg!(feature = "arrow")
    }

    /// The name in a worker's `hello` and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
            Codec::Arrow => "arrow",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Below this much numeric columnar data (estimated MessagePack bytes of the
/// lists [`columnar::find_numeric`] reports), [`CodecChoice::Auto`] sends
/// MessagePack: an Arrow frame's fixed costs (schemas, `pyarrow` calls)
/// outweigh its gains (`benches/codecs.rs` measures both).
pub const AUTO_ARROW_MIN_BYTES: usize = 256 * 1024;

impl From<Codec> for CodecChoice {
    fn from(c: Codec) -> CodecChoice {
        match c {
            Codec::Json => CodecChoice::Json,
            Codec::MsgPack => CodecChoice::MsgPack,
            Codec::Arrow => CodecChoice::Arrow,
        }
    }
}

/// The codec `msg` goes in under `choice`, when the peer reads Arrow
/// (`arrow_ok`) or not: [`CodecChoice::Auto`] picks Arrow when the message's
/// columnar values add up to [`AUTO_ARROW_MIN_BYTES`] and both ends read it,
/// else MessagePack.
pub fn choose_codec(choice: CodecChoice, msg: &Message, arrow_ok: bool) -> Codec {
    choose(choice, msg, arrow_ok).0
}

/// [`choose_codec`], and the columnar values it found when it looked.
fn choose(choice: CodecChoice, msg: &Message, arrow_ok: bool) -> (Codec, Option<Vec<columnar::Found<'_>>>) {
    match choice {
        CodecChoice::Json => (Codec::Json, None),
        CodecChoice::MsgPack => (Codec::MsgPack, None),
        CodecChoice::Arrow => (Codec::Arrow, None),
        CodecChoice::Auto if arrow_ok && Codec::Arrow.is_available() => {
            let found = payload(msg).map(columnar::find_numeric).unwrap_or_default();
            if found.iter().map(|f| f.bytes).sum::<usize>() >= AUTO_ARROW_MIN_BYTES {
                (Codec::Arrow, Some(found))
            } else {
                (Codec::MsgPack, None)
            }
        }
        CodecChoice::Auto => (Codec::MsgPack, None),
    }
}

/// A whole frame for `msg` in the codec `choice` picks (looking through the
/// payload once): the codec and the frame.
pub fn encode_chosen(choice: CodecChoice, msg: &Message, arrow_ok: bool) -> Result<(Codec, Vec<u8>)> {
    match choose(choice, msg, arrow_ok) {
        #[cfg(feature = "arrow")]
        (Codec::Arrow, Some(found)) => Ok((Codec::Arrow, arrow::encode_found(msg, found)?)),
        (codec, _) => Ok((codec, encode_frame(codec, msg)?)),
    }
}

/// The worker's first message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version.
    pub protocol: u32,
    /// Process id.
    pub pid: u32,
    /// The worker's name.
    #[serde(default)]
    pub worker: Option<String>,
    /// Python version.
    pub python: String,
    /// DSPy version, if DSPy was imported.
    #[serde(default)]
    pub dspy: Option<String>,
    /// Codecs the worker reads.
    pub codecs: Vec<String>,
    /// Registered commands.
    pub commands: Vec<String>,
    /// Requests it runs at once.
    pub max_concurrency: u32,
}

/// An error as the worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// The Python exception's class name.
    #[serde(rename = "type")]
    pub python_type: String,
    /// The runtime's error kind (`python`, `timeout`, `parse`, ...).
    #[serde(default)]
    pub kind: Option<String>,
    /// `str(exception)`.
    pub message: String,
    /// The formatted traceback.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Whether a retry may help.
    #[serde(default)]
    pub retryable: bool,
}

impl WireError {
    /// The runtime error this wire error stands for.
    pub fn into_error(self) -> Error {
        let kind = error_kind_from_wire(self.kind.as_deref());
        let mut err = Error::new(kind, self.message).with_retryable(self.retryable).with_python_type(self.python_type);
        if let Some(tb) = self.traceback {
            err = err.with_traceback(tb);
        }
        err
    }
}

/// The runtime's [`ErrorKind`] for the `kind` a worker put in an error
/// response: the one mapping, explicit and total. A worker names what went
/// wrong in its own terms; what only the runtime can judge (a crashed
/// worker, a protocol fault, an overloaded pool, its own bugs) is never
/// taken from a worker, and an unknown or missing kind is `python`.
pub fn error_kind_from_wire(kind: Option<&str>) -> ErrorKind {
    match kind {
        Some("invalid_signature") => ErrorKind::InvalidSignature,
        Some("validation") => ErrorKind::Validation,
        Some("parse") => ErrorKind::Parse,
        Some("invalid_request") => ErrorKind::InvalidRequest,
        Some("unsupported") => ErrorKind::Unsupported,
        Some("lm") => ErrorKind::Lm,
        Some("transport") => ErrorKind::Transport,
        Some("timeout") => ErrorKind::Timeout,
        Some("cancelled") => ErrorKind::Cancelled,
        Some("not_found") => ErrorKind::NotFound,
        Some("config") => ErrorKind::Config,
        Some("io") => ErrorKind::Io,
        // The runtime's own gateway named these, through the worker.
        Some("rate_limited") => ErrorKind::RateLimited,
        Some("budget_exceeded") => ErrorKind::BudgetExceeded,
        Some("overloaded" | "worker_crashed" | "protocol" | "internal" | "python") | Some(_) | None => {
            ErrorKind::Python
        }
    }
}

/// Every message of the protocol. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Worker → runtime, first.
    Hello(Hello),
    /// Runtime → worker: run a command.
    Request {
        /// Correlation id.
        id: u64,
        /// Command name.
        op: String,
        /// Session the request belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        /// Command arguments (a map).
        args: Value,
        /// Milliseconds left until the caller's deadline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
        /// Trace id for the worker's logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
        /// W3C `traceparent` of the runtime's span for this request: when
        /// set, the worker records its spans as children and returns them
        /// in the response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// Whether chunks are wanted.
        #[serde(default)]
        stream: bool,
        /// The codec of the replies (`auto`: the worker picks per message,
        /// as [`CodecChoice::Auto`] does); absent: the request's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_codec: Option<String>,
    },
    /// Worker → runtime: the result of a request.
    Response {
        /// Correlation id.
        id: u64,
        /// The result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        /// The failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
        /// The spans the worker recorded for a request with a `traceparent`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        spans: Vec<RemoteSpan>,
    },
    /// Worker → runtime: one stream item.
    Chunk {
        /// Correlation id.
        id: u64,
        /// 1, 2, 3, ...
        seq: u64,
        /// The item.
        data: Value,
    },
    /// Worker → runtime: no more chunks for this request (its response follows).
    End {
        /// Correlation id.
        id: u64,
    },
    /// Runtime → worker: stop working on a request.
    Cancel {
        /// Correlation id.
        id: u64,
    },
    /// Runtime → worker: are you alive?
    Ping {
        /// Echoed in the pong.
        seq: u64,
    },
    /// Worker → runtime: alive.
    Pong {
        /// The ping's `seq`.
        seq: u64,
        /// Requests running.
        #[serde(default)]
        in_flight: u64,
    },
    /// Runtime → worker: finish in-flight work (within `grace_ms`) and exit.
    Shutdown {
        /// How long in-flight requests may take.
        grace_ms: u64,
    },
    /// Worker → runtime, on an LM connection (not the request pipes): send
    /// this HTTP request of DSPy's to the LM service through the runtime's
    /// gateway (`dspex_worker/gateway.py`). The answer comes back on the
    /// same connection.
    LmCall {
        /// The call's id (the worker's own numbering).
        id: u64,
        /// The request it belongs to (its budget, meter and trace), if known.
        #[serde(default)]
        request: Option<u64>,
        /// Where DSPy sends it.
        url: String,
        /// DSPy's headers (the credential among them).
        headers: Vec<(String, String)>,
        /// The JSON body, as DSPy built it.
        body: String,
        /// Milliseconds left until the request's deadline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
        /// Retries the LM asks for (DSPy's `num_retries`).
        #[serde(default)]
        max_retries: u32,
        /// A streamed completion.
        #[serde(default)]
        stream: bool,
    },
    /// Runtime → worker: the service's status and headers for `id`, and
    /// its body when it came whole (then no `lm_data` or `lm_end` follow).
    LmHead {
        /// The call.
        id: u64,
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// The whole body (absent: it streams in `lm_data` until `lm_end`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Runtime → worker: the body, whole or a piece of a stream.
    LmData {
        /// The call.
        id: u64,
        /// Text (UTF-8; a piece never splits a character).
        data: String,
    },
    /// Runtime → worker: the body is complete.
    LmEnd {
        /// The call.
        id: u64,
    },
    /// Runtime → worker: the call failed (refused by the gateway, or the
    /// service could not be reached), instead of an answer or mid-stream.
    LmError {
        /// The call.
        id: u64,
        /// What went wrong; `kind` is the runtime's (`rate_limited`, ...).
        error: WireError,
    },
}

fn protocol_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

fn no_arrow() -> Error {
    Error::new(ErrorKind::Config, "the Arrow codec (tag 2) needs dspex-bridge's `arrow` feature")
}

/// The value a message carries (a request's `args`, a response's `ok`, a
/// chunk's `data`): where columnar values are looked for.
pub fn payload(msg: &Message) -> Option<&Value> {
    match msg {
        Message::Request { args, .. } => Some(args),
        Message::Response { ok, .. } => ok.as_ref(),
        Message::Chunk { data, .. } => Some(data),
        _ => None,
    }
}

#[cfg_attr(not(feature = "arrow"), allow(dead_code))]
fn payload_mut(msg: &mut Message) -> Option<&mut Value> {
    match msg {
        Message::Request { args, .. } => Some(args),
        // A skeleton's `ok: nil` reads back as no `ok` at all.
        Message::Response { ok, error: None, .. } => Some(ok.get_or_insert(Value::Null)),
        Message::Response { ok, .. } => ok.as_mut(),
        Message::Chunk { data, .. } => Some(data),
        _ => None,
    }
}

impl Message {
    /// A copy with an empty payload (`null`), for an Arrow frame's skeleton.
    #[cfg_attr(not(feature = "arrow"), allow(dead_code))]
    fn clone_without_payload(&self) -> Message {
        match self {
            Message::Request { id, op, session, deadline_ms, trace_id, traceparent, stream, reply_codec, .. } => {
                Message::Request {
                    id: *id,
                    op: op.clone(),
                    session: session.clone(),
                    args: Value::Null,
                    deadline_ms: *deadline_ms,
                    trace_id: trace_id.clone(),
                    traceparent: traceparent.clone(),
                    stream: *stream,
                    reply_codec: reply_codec.clone(),
                }
            }
            Message::Response { id, ok, error, spans } => Message::Response {
                id: *id,
                ok: ok.as_ref().map(|_| Value::Null),
                error: error.clone(),
                spans: spans.clone(),
            },
            Message::Chunk { id, seq, .. } => Message::Chunk { id: *id, seq: *seq, data: Value::Null },
            other => other.clone(),
        }
    }
}

/// A message's payload bytes in `codec` (JSON or MessagePack).
#[cfg_attr(not(feature = "arrow"), allow(dead_code))]
fn encode_payload(codec: Codec, msg: &Message) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    encode_into(&mut out, codec, msg)?;
    Ok(out)
}

fn encode_into(out: &mut Vec<u8>, codec: Codec, msg: &Message) -> Result<()> {
    match codec {
        Codec::Json => serde_json::to_writer(out, msg).map_err(|e| protocol_error(format!("cannot encode JSON: {e}"))),
        Codec::MsgPack => rmp_serde::encode::write_named(out, msg)
            .map_err(|e| protocol_error(format!("cannot encode MessagePack: {e}"))),
        Codec::Arrow => Err(no_arrow()),
    }
}

/// Encode a whole frame (length, tag, payload) in one buffer.
pub fn encode_frame(codec: Codec, msg: &Message) -> Result<Vec<u8>> {
    if codec == Codec::Arrow {
        #[cfg(feature = "arrow")]
        return arrow::encode(msg);
        #[cfg(not(feature = "arrow"))]
        return Err(no_arrow());
    }
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0, 0, 0, 0, codec.tag()]);
    encode_into(&mut out, codec, msg)?;
    let len = u32::try_from(out.len() - 4).map_err(|_| protocol_error("frame larger than 4 GiB"))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Decode the part of a frame after its length field (tag and payload).
pub fn decode_frame(body: &[u8]) -> Result<(Codec, Message)> {
    let (&tag, payload) = body.split_first().ok_or_else(|| protocol_error("empty frame"))?;
    let codec = Codec::from_tag(tag).ok_or_else(|| protocol_error(format!("unknown codec tag {tag}")))?;
    Ok((codec, decode_message(codec, payload, false)?))
}

/// A payload in `codec` as a message; `fast`: the reply fast path.
fn decode_message(codec: Codec, payload: &[u8], fast: bool) -> Result<Message> {
    match codec {
        Codec::Json if !fast => {
            serde_json::from_slice(payload).map_err(|e| protocol_error(format!("undecodable JSON payload: {e}")))
        }
        Codec::MsgPack if !fast => dspex_core::wire::from_msgpack(payload)
            .map_err(|e| protocol_error(format!("undecodable MessagePack payload: {e}"))),
        Codec::Json | Codec::MsgPack => decode_reply_payload(codec, payload),
        #[cfg(feature = "arrow")]
        Codec::Arrow => arrow::decode(payload, fast),
        #[cfg(not(feature = "arrow"))]
        Codec::Arrow => Err(protocol_error(
            "an Arrow frame (codec tag 2), which this build cannot read: dspex-bridge has no `arrow` feature",
        )),
    }
}

/// The messages a worker sends after `hello`, read without buffering the
/// payload (serde's internally tagged enums buffer everything first).
#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    ok: Option<Value>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    in_flight: Option<u64>,
    #[serde(default)]
    spans: Vec<RemoteSpan>,
    // An `lm_call`'s members.
    #[serde(default)]
    request: Option<u64>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: Option<Vec<(String, String)>>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Decode a frame body from a worker: [`decode_frame`], fast for the hot
/// messages (`response`, `chunk`, `end`, `pong`).
pub fn decode_reply(body: &[u8]) -> Result<(Codec, Message)> {
    let (&tag, payload) = body.split_first().ok_or_else(|| protocol_error("empty frame"))?;
    let codec = Codec::from_tag(tag).ok_or_else(|| protocol_error(format!("unknown codec tag {tag}")))?;
    Ok((codec, decode_message(codec, payload, true)?))
}

fn decode_reply_payload(codec: Codec, payload: &[u8]) -> Result<Message> {
    let reply: std::result::Result<Reply, String> = match codec {
        Codec::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        _ => dspex_core::wire::from_msgpack(payload).map_err(|e| e.to_string()),
    };
    let missing = |what: &str| protocol_error(format!("`{what}` without an id or seq"));
    match reply {
        Ok(r) => Ok(match r.kind.as_str() {
            "response" => Message::Response {
                id: r.id.ok_or_else(|| missing("response"))?,
                ok: r.ok,
                error: r.error,
                spans: r.spans,
            },
            "chunk" => Message::Chunk {
                id: r.id.ok_or_else(|| missing("chunk"))?,
                seq: r.seq.unwrap_or(0),
                data: r.data.unwrap_or(Value::Null),
            },
            "end" => Message::End { id: r.id.ok_or_else(|| missing("end"))? },
            "pong" => Message::Pong { seq: r.seq.ok_or_else(|| missing("pong"))?, in_flight: r.in_flight.unwrap_or(0) },
            "lm_call" => match (r.id, r.url, r.headers, r.body) {
                (Some(id), Some(url), Some(headers), Some(body)) => Message::LmCall {
                    id,
                    request: r.request,
                    url,
                    headers,
                    body,
                    deadline_ms: r.deadline_ms,
                    max_retries: r.max_retries.unwrap_or(0),
                    stream: r.stream.unwrap_or(false),
                },
                _ => return decode_message(codec, payload, false),
            },
            _ => return decode_message(codec, payload, false),
        }),
        Err(_) => decode_message(codec, payload, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> Vec<Value> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/protocol/golden.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("golden frames")).expect("json");
        doc["frames"].as_array().cloned().unwrap_or_default()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0)).collect()
    }

    #[test]
    fn golden_frames_decode_and_reencode_byte_for_byte() {
        let frames = golden();
        assert!(frames.len() >= 10);
        for case in frames {
            let name = case["name"].as_str().unwrap_or("?");
            let bytes = unhex(case["hex"].as_str().unwrap_or_default());
            let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            assert_eq!(len, bytes.len() - 4, "{name}");
            let (codec, msg) = decode_frame(&bytes[4..]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(codec.to_string(), case["codec"].as_str().unwrap_or_default(), "{name}");
            let expected: Message = serde_json::from_value(case["message"].clone()).expect("message");
            assert_eq!(msg, expected, "{name}");
            assert_eq!(encode_frame(codec, &msg).unwrap(), bytes, "{name} re-encodes identically");
        }
    }

    /// Tag-2 frames: each side decodes every one, re-encodes its own to the
    /// same bytes and the other side's to frames that decode the same.
    /// `DSPEX_WRITE_GOLDEN=1` (re)writes the Rust-made ones from the
    /// Python-made messages.
    #[cfg(feature = "arrow")]
    #[test]
    fn golden_arrow_frames_decode_and_reencode() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/protocol/golden.json");
        let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("golden")).expect("json");
        let frames = doc["arrow_frames"].as_array().cloned().unwrap_or_default();
        if std::env::var_os("DSPEX_WRITE_GOLDEN").is_some() {
            let mut out: Vec<Value> = frames.iter().filter(|f| f["made_by"] == "python").cloned().collect();
            for f in frames.iter().filter(|f| f["made_by"] == "python") {
                let msg: Message = serde_json::from_value(f["message"].clone()).expect("message");
                let hex: String =
                    encode_frame(Codec::Arrow, &msg).unwrap().iter().map(|b| format!("{b:02x}")).collect();
                out.push(serde_json::json!({
                    "name": format!("{}-rust", f["name"].as_str().unwrap_or("?")),
                    "made_by": "rust",
                    "message": f["message"],
                    "hex": hex,
                }));
            }
            doc["arrow_frames"] = Value::Array(out);
            let mut text = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
            let mut ser = serde_json::Serializer::with_formatter(&mut text, fmt);
            serde::Serialize::serialize(&doc, &mut ser).expect("write");
            text.push(b'\n');
            std::fs::write(path, text).expect("write golden");
            return;
        }
        let made_by = |who: &str| frames.iter().filter(|f| f["made_by"] == who).count();
        assert!(made_by("python") >= 4 && made_by("rust") >= 4, "frames from both sides");
        for case in &frames {
            let name = case["name"].as_str().unwrap_or("?");
            let bytes = unhex(case["hex"].as_str().unwrap_or_default());
            let expected: Message = serde_json::from_value(case["message"].clone()).expect("message");
            let (codec, msg) = decode_frame(&bytes[4..]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((codec, &msg), (Codec::Arrow, &expected), "{name}");
            if !matches!(expected, Message::Request { .. }) {
                assert_eq!(decode_reply(&bytes[4..]).unwrap().1, expected, "{name}: the reply fast path agrees");
            }
            let again = encode_frame(Codec::Arrow, &msg).unwrap();
            if case["made_by"] == "rust" {
                assert_eq!(again, bytes, "{name} re-encodes identically");
            }
            assert_eq!(decode_frame(&again[4..]).unwrap().1, expected, "{name} round trip");
        }
    }

    /// Without the `arrow` feature: Arrow is refused clearly both ways, and
    /// `auto` never picks it.
    #[cfg(not(feature = "arrow"))]
    #[test]
    fn without_the_arrow_feature_arrow_is_refused_and_auto_stays_messagepack() {
        let big = Message::Response {
            id: 1,
            ok: Some(Value::Array((0..100_000).map(|i| Value::from(i as f64 + 0.5)).collect())),
            error: None,
            spans: Vec::new(),
        };
        assert!(!Codec::Arrow.is_available());
        assert_eq!(choose_codec(CodecChoice::Auto, &big, true), Codec::MsgPack);
        let err = encode_frame(Codec::Arrow, &big).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("`arrow` feature"), "{err}");
        let err = decode_frame(&[2, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.message().contains("`arrow` feature"), "{err}");
    }

    #[test]
    fn fast_reply_decoding_agrees_with_the_full_decoder() {
        for case in golden() {
            let bytes = unhex(case["hex"].as_str().unwrap_or_default());
            let full = decode_frame(&bytes[4..]).unwrap();
            let fast = decode_reply(&bytes[4..]).unwrap();
            // `ok: null` and a missing `ok` mean the same to the runtime.
            let norm = |m: Message| match m {
                Message::Response { id, ok: Some(Value::Null), error, spans } => {
                    Message::Response { id, ok: None, error, spans }
                }
                other => other,
            };
            assert_eq!(norm(fast.1), norm(full.1), "{}", case["name"]);
        }
        assert_eq!(
            decode_reply(&[1, 0x81, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'e', b'n', b'd']).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn bad_frames_are_protocol_errors() {
        assert_eq!(decode_frame(&[]).unwrap_err().kind(), ErrorKind::Protocol);
        assert!(decode_frame(&[9, 1, 2]).unwrap_err().message().contains("unknown codec tag 9"));
        assert!(decode_frame(&[0, b'{']).unwrap_err().message().contains("undecodable JSON"));
        assert!(decode_frame(&[1, 0xc1]).unwrap_err().message().contains("undecodable MessagePack"));
        // Valid JSON that is not a message.
        assert_eq!(decode_frame(b"\x00{\"type\": \"mystery\"}").unwrap_err().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn wire_errors_map_to_kinds() {
        let e = WireError {
            python_type: "TimeoutError".into(),
            kind: Some("timeout".into()),
            message: "slow".into(),
            traceback: Some("tb".into()),
            retryable: true,
        }
        .into_error();
        assert_eq!(
            (e.kind(), e.is_retryable(), e.python_type(), e.traceback()),
            (ErrorKind::Timeout, true, Some("TimeoutError"), Some("tb"))
        );
        let e =
            WireError { python_type: "X".into(), kind: None, message: "m".into(), traceback: None, retryable: false }
                .into_error();
        assert_eq!(e.kind(), ErrorKind::Python);
    }

    #[test]
    fn every_kind_a_worker_may_name_maps_to_itself_and_the_rest_to_python() {
        use ErrorKind::*;
        let from_workers = [
            InvalidSignature,
            Validation,
            Parse,
            InvalidRequest,
            Unsupported,
            Lm,
            Transport,
            Timeout,
            Cancelled,
            NotFound,
            Config,
            Io,
            RateLimited,
            BudgetExceeded,
        ];
        for kind in from_workers {
            assert_eq!(error_kind_from_wire(Some(kind.as_str())), kind);
        }
        for kind in [Overloaded, WorkerCrashed, Protocol, Internal, Python] {
            assert_eq!(error_kind_from_wire(Some(kind.as_str())), Python, "{kind} is the runtime's judgement");
        }
        assert_eq!(error_kind_from_wire(Some("mystery")), Python);
        assert_eq!(error_kind_from_wire(None), Python);
    }
}
