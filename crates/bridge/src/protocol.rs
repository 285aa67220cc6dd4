//! The wire protocol between the runtime and a Python worker.
//!
//! A frame is a 4-byte big-endian length of the rest, one codec tag byte
//! ([`Codec::Json`] = 0, [`Codec::MsgPack`] = 1; other tags are reserved) and
//! the payload, a map with a `type`. The worker side is
//! `crates/bridge/worker/dspex_worker/protocol.py`; both test suites decode and
//! re-encode the golden frames in `tests/fixtures/protocol/golden.json`, so
//! the two implementations cannot drift apart.
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

use dspex_core::trace::RemoteSpan;
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
}

impl Codec {
    /// The tag byte.
    pub fn tag(self) -> u8 {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }

    /// The codec for a tag byte.
    pub fn from_tag(tag: u8) -> Option<Codec> {
        match tag {
            0 => Some(Codec::Json),
            1 => Some(Codec::MsgPack),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        })
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
}

fn protocol_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

/// Encode a whole frame (length, tag, payload) in one buffer.
pub fn encode_frame(codec: Codec, msg: &Message) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0, 0, 0, 0, codec.tag()]);
    match codec {
        Codec::Json => {
            serde_json::to_writer(&mut out, msg).map_err(|e| protocol_error(format!("cannot encode JSON: {e}")))?
        }
        Codec::MsgPack => rmp_serde::encode::write_named(&mut out, msg)
            .map_err(|e| protocol_error(format!("cannot encode MessagePack: {e}")))?,
    }
    let len = u32::try_from(out.len() - 4).map_err(|_| protocol_error("frame larger than 4 GiB"))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Decode the part of a frame after its length field (tag and payload).
pub fn decode_frame(body: &[u8]) -> Result<(Codec, Message)> {
    let (&tag, payload) = body.split_first().ok_or_else(|| protocol_error("empty frame"))?;
    let codec = Codec::from_tag(tag).ok_or_else(|| protocol_error(format!("unknown codec tag {tag}")))?;
    let msg = match codec {
        Codec::Json => {
            serde_json::from_slice(payload).map_err(|e| protocol_error(format!("undecodable JSON payload: {e}")))?
        }
        Codec::MsgPack => rmp_serde::from_slice(payload)
            .map_err(|e| protocol_error(format!("undecodable MessagePack payload: {e}")))?,
    };
    Ok((codec, msg))
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
}

/// Decode a frame body from a worker: [`decode_frame`], fast for the hot
/// messages (`response`, `chunk`, `end`, `pong`).
pub fn decode_reply(body: &[u8]) -> Result<(Codec, Message)> {
    let (&tag, payload) = body.split_first().ok_or_else(|| protocol_error("empty frame"))?;
    let codec = Codec::from_tag(tag).ok_or_else(|| protocol_error(format!("unknown codec tag {tag}")))?;
    let reply: std::result::Result<Reply, String> = match codec {
        Codec::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        Codec::MsgPack => rmp_serde::from_slice(payload).map_err(|e| e.to_string()),
    };
    let missing = |what: &str| protocol_error(format!("`{what}` without an id or seq"));
    match reply {
        Ok(r) => Ok((
            codec,
            match r.kind.as_str() {
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
                "pong" => {
                    Message::Pong { seq: r.seq.ok_or_else(|| missing("pong"))?, in_flight: r.in_flight.unwrap_or(0) }
                }
                _ => return decode_frame(body),
            },
        )),
        Err(_) => decode_frame(body),
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
