//! What nodes send each other: the one definition of each cluster payload,
//! and the subjects and buckets they travel on.
//!
//! Requests and replies are MessagePack (`rmp-serde`, named fields, so a
//! newer node can add a field an older one ignores). Membership entries are
//! JSON, readable with the `nats` CLI.
//!
//! | subject | what |
//! |---|---|
//! | `dspex.CLUSTER.pool.POOL` | a pool call any offering node may take (queue group `POOL`) |
//! | `dspex.CLUSTER.node.NODE.pool.POOL` | a pool call for node `NODE` only |
//! | `dspex.CLUSTER.cancel.NODE` | the caller stopped waiting for a call on `NODE` |
//! | `_INBOX.NODE-ID.CALL` | a call's [`Reply`]s: `Alive`… while it runs, then `Done` or `Failed` |
//! | `dspex.CLUSTER.node.NODE.session` | a [`SessionRequest`] for a session `NODE` owns; answered with a [`SessionReply`] |
//!
//! Bucket `dspex-CLUSTER-nodes`: one [`NodeStatus`](dspex_core::NodeStatus)
//! per node under its name, refreshed every third of the lease; entries
//! age out (`max_age` = the lease) when a node stops refreshing them.
//!
//! Bucket `dspex-CLUSTER-sessions`: one
//! [`StoredSession`](dspex_actors::StoredSession) (JSON: owner and state)
//! per session under its id; the entry's revision fences every write.
//!
//! Bucket `dspex-CLUSTER-gateway`: one
//! [`GatewayShare`](dspex_core::GatewayShare) (JSON: each budgeted
//! tenant's spend in its current period, the rate-limited LMs the node
//! called lately) per node under its name, refreshed every third of the
//! lease; entries stay 35 days, so a node's spend outlives it.

use dspex_actors::{SessionAnswer, SessionCall};
use dspex_core::{Error, ErrorKind, Result, Value};
use serde::{Deserialize, Serialize};

/// A pool call sent to another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CallRequest {
    /// The caller's id for this call (unique per calling node).
    pub id: u64,
    /// The calling node.
    pub from: String,
    /// Pool and command.
    pub pool: String,
    pub op: String,
    pub args: Value,
    /// Milliseconds left before the caller's deadline, when it sent this.
    pub deadline_ms: u64,
    pub trace_id: Option<String>,
    pub session: Option<String>,
    pub idempotent: bool,
    /// A streamed command: chunks come back as they are made.
    #[serde(default)]
    pub stream: bool,
}

/// What the serving node sends back on the call's reply inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Still running on `node` (every `keepalive_ms`; none for a call that
    /// ends sooner).
    Alive { node: String },
    /// A streamed call started on `node`'s `worker`.
    Started { node: String, worker: String, pid: u32, queue_us: u64 },
    /// One chunk of a streamed call, numbered from 0 (a gap means one was lost).
    Chunk { seq: u64, value: Value },
    /// The command's result, and where and how it ran.
    Done {
        node: String,
        value: Value,
        worker: String,
        worker_index: usize,
        pid: u32,
        queue_us: u64,
        elapsed_us: u64,
        retried: bool,
    },
    /// A classified failure (it names the node).
    Failed { error: Error },
}

/// A request for a session, sent to the node that owns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SessionRequest {
    /// The sending node.
    pub from: String,
    /// The session.
    pub session: String,
    pub call: SessionCall,
    /// Milliseconds left before the caller's deadline, when it sent this.
    pub deadline_ms: u64,
    pub trace_id: String,
}

/// The owner's answer to a [`SessionRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum SessionReply {
    Answer(SessionAnswer),
    Failed { error: Error },
}

/// The caller stopped waiting for call `id` from node `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cancel {
    pub from: String,
    pub id: u64,
}

/// Encode a payload.
pub(crate) fn encode<T: Serialize>(msg: &T) -> Result<bytes::Bytes> {
    rmp_serde::to_vec_named(msg)
        .map(bytes::Bytes::from)
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("cannot encode a cluster message: {e}")))
}

/// Decode a payload; what a peer sent is never trusted to be well formed.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    dspex_core::wire::from_msgpack(bytes)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("malformed cluster message: {e}")))
}

/// Read `bytes` as each payload a node takes from its peers — the four
/// messages, a cancel, and the JSON entries of the membership, sessions and
/// gateway buckets — as the node reads them, and encode again whatever was
/// accepted. For the fuzzer (`fuzz/`), not an API; returns how many kinds
/// accepted the bytes. An error is expected; a panic, a hang or an
/// unbounded allocation is the bug the fuzzer looks for.
#[doc(hidden)]
pub fn decode_untrusted(bytes: &[u8]) -> usize {
    fn again<T: Serialize>(msg: Result<T>) -> usize {
        match msg {
            Ok(msg) => {
                // What a node decoded it must be able to send on.
                let _ = encode(&msg);
                1
            }
            Err(_) => 0,
        }
    }
    fn json<T: for<'a> Deserialize<'a> + Serialize>(bytes: &[u8]) -> usize {
        match serde_json::from_slice::<T>(bytes) {
            Ok(entry) => usize::from(serde_json::to_vec(&entry).is_ok()),
            Err(_) => 0,
        }
    }
    again(decode::<CallRequest>(bytes))
        + again(decode::<Reply>(bytes))
        + again(decode::<SessionRequest>(bytes))
        + again(decode::<SessionReply>(bytes))
        + again(decode::<Cancel>(bytes))
        + json::<dspex_core::NodeStatus>(bytes)
        + json::<dspex_actors::StoredSession>(bytes)
        + json::<dspex_core::GatewayShare>(bytes)
}

/// Subjects and buckets of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
    /// The membership bucket.
    pub bucket: String,
    /// The sessions bucket.
    pub sessions: String,
    /// The gateway bucket.
    pub gateway: String,
}

impl Names {
    pub(crate) fn new(cluster: &str) -> Names {
        Names {
            prefix: format!("dspex.{cluster}"),
            bucket: format!("dspex-{cluster}-nodes"),
            sessions: format!("dspex-{cluster}-sessions"),
            gateway: format!("dspex-{cluster}-gateway"),
        }
    }

    pub(crate) fn node_session(&self, node: &str) -> String {
        format!("{}.node.{node}.session", self.prefix)
    }

    pub(crate) fn pool(&self, pool: &str) -> String {
        format!("{}.pool.{pool}", self.prefix)
    }

    pub(crate) fn node_pool(&self, node: &str, pool: &str) -> String {
        format!("{}.node.{node}.pool.{pool}", self.prefix)
    }

    pub(crate) fn cancel(&self, node: &str) -> String {
        format!("{}.cancel.{node}", self.prefix)
    }
}

/// Whether `s` can be one token of a subject (pool names become tokens).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use dspex_actors::RequestOptions;
    use serde_json::json;

    #[test]
    fn payloads_round_trip() {
        let req = CallRequest {
            id: 7,
            from: "a".into(),
            pool: "general".into(),
            op: "echo".into(),
            args: json!({"x": [1, 2.5, "three", null, {"y": true}]}),
            deadline_ms: 1500,
            trace_id: Some("t".into()),
            session: None,
            idempotent: true,
            stream: false,
        };
        assert_eq!(decode::<CallRequest>(&encode(&req).unwrap()).unwrap(), req);
        let failed =
            Reply::Failed { error: Error::new(ErrorKind::WorkerCrashed, "gone").with_node("b").with_pool("general") };
        assert_eq!(decode::<Reply>(&encode(&failed).unwrap()).unwrap(), failed);
        let inputs = json!({"question": "q", "n": 2}).as_object().cloned().unwrap();
        let session = SessionRequest {
            from: "a".into(),
            session: "s-1".into(),
            call: SessionCall::Run {
                name: "chat".into(),
                inputs,
                options: Box::new(RequestOptions::python().no_cache().idempotent(true).on_node("b")),
            },
            deadline_ms: 900,
            trace_id: "t".into(),
        };
        assert_eq!(decode::<SessionRequest>(&encode(&session).unwrap()).unwrap(), session);
        let answer = SessionReply::Answer(SessionAnswer::History(vec![json!({"q": 1}).as_object().cloned().unwrap()]));
        assert_eq!(decode::<SessionReply>(&encode(&answer).unwrap()).unwrap(), answer);
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let e = decode::<Reply>(b"\xc1\xff not msgpack").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn subjects_are_namespaced_by_cluster() {
        let n = Names::new("prod");
        assert_eq!(n.pool("general"), "dspex.prod.pool.general");
        assert_eq!(n.node_pool("a", "general"), "dspex.prod.node.a.pool.general");
        assert_eq!(n.cancel("a"), "dspex.prod.cancel.a");
        assert_eq!(n.bucket, "dspex-prod-nodes");
        assert_eq!(
            (n.sessions.as_str(), n.node_session("a")),
            ("dspex-prod-sessions", "dspex.prod.node.a.session".into())
        );
        assert_eq!(n.gateway, "dspex-prod-gateway");
        assert!(is_token("gpu_1") && !is_token("a.b") && !is_token(""));
    }
}
