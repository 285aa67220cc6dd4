//! W3C trace context across process boundaries, and the spans that come back.
//!
//! The runtime's own spans are `tracing` spans. What turns them into
//! OpenTelemetry spans (and gives them W3C ids) is an exporter the embedder
//! installs — the facade's `otel` feature. Crates that cross a process
//! boundary (the Python bridge, the cluster) cannot depend on that exporter,
//! so they ask this module instead:
//!
//! - [`current`]: the trace context of the caller's current span, to send
//!   with a request (the `traceparent` a Python worker parents its spans on);
//! - [`record`]: hand over a [`RemoteSpan`] another process finished, to be
//!   exported in the same trace.
//!
//! Both do nothing until [`install`] is called once, so a runtime without an
//! exporter sends no trace context and pays one atomic load per request.
//!
//! ```
//! use dspex_core::trace::TraceContext;
//!
//! let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let cx = TraceContext::parse(header).unwrap();
//! assert!(cx.sampled);
//! assert_eq!(cx.to_traceparent(), header);
//! assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A W3C trace context: which trace, which span is the parent, sampled or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// The `sampled` flag: whether the trace is being recorded.
    pub sampled: bool,
}

impl TraceContext {
    /// Parse a `traceparent` header (version `00`, or a later version read
    /// by the version-00 rules). `None` when it is malformed or has an
    /// all-zero id, as the W3C recommendation says to treat it.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let header = header.trim();
        let mut parts = header.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        if !(hex_into(trace, &mut trace_id) && hex_into(span, &mut span_id) && hex_into(flags, &mut flag)) {
            return None;
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext { trace_id, span_id, sampled: flag[0] & 1 == 1 })
    }

    /// The `traceparent` header form (version `00`).
    pub fn to_traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), u8::from(self.sampled))
    }

    /// The trace id in lowercase hex (32 characters).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hex_into(text: &str, out: &mut [u8]) -> bool {
    if text.len() != out.len() * 2 || !text.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return false;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&text[2 * i..2 * i + 2], 16) {
            Ok(b) => *byte = b,
            Err(_) => return false,
        }
    }
    true
}

/// A span another process (a Python worker) finished, in the trace it was
/// given: the wire form, ids in lowercase hex, times in Unix nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteSpan {
    /// What the span covers: `python dspy.predict`, `dspy.Predict`, `lm gpt-4o-mini`.
    pub name: String,
    /// 32 hex digits: the trace it belongs to.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits: the span it is a child of (in either process).
    pub parent_span_id: String,
    /// Start, Unix nanoseconds.
    pub start_unix_ns: u64,
    /// End, Unix nanoseconds.
    pub end_unix_ns: u64,
    /// Attributes (strings, numbers and booleans).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The failure, when the span's work failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an exporter plugs in; see the [module docs](self).
#[derive(Clone, Copy)]
pub struct TraceHooks {
    /// The current span's context, or `None` when it is not being recorded.
    pub current: fn() -> Option<TraceContext>,
    /// Export a span another process finished.
    pub record: fn(RemoteSpan),
}

impl fmt::Debug for TraceHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TraceHooks")
    }
}

static HOOKS: OnceLock<TraceHooks> = OnceLock::new();

/// Install the exporter's hooks, once per process; `false` if hooks were
/// already installed (the first stay).
pub fn install(hooks: TraceHooks) -> bool {
    HOOKS.set(hooks).is_ok()
}

/// Whether an exporter is installed.
pub fn enabled() -> bool {
    HOOKS.get().is_some()
}

/// The trace context of the current span, when an exporter records it.
pub fn current() -> Option<TraceContext> {
    HOOKS.get().and_then(|h| (h.current)())
}

/// Export `span` (dropped when no exporter is installed).
pub fn record(span: RemoteSpan) {
    if let Some(h) = HOOKS.get() {
        (h.record)(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_headers() {
        let cx = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!cx.sampled);
        assert_eq!(cx.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(cx.to_string(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        // A later version may append fields; version 00 may not.
        assert!(TraceContext::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra").is_some());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn without_hooks_nothing_is_current_and_records_are_dropped() {
        assert!(!enabled());
        assert!(current().is_none());
        record(RemoteSpan {
            name: "x".into(),
            trace_id: String::new(),
            span_id: String::new(),
            parent_span_id: String::new(),
            start_unix_ns: 0,
            end_unix_ns: 0,
            attributes: BTreeMap::new(),
            error: None,
        });
    }
}
