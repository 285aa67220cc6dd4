//! Sessions in the cluster: stored with their owner in the sessions bucket,
//! every write fenced by the revision the writer last saw, and requests for
//! a session sent to the node that owns it.
//!
//! The bucket entry's revision is the fence: a node writes a session only
//! with `update(id, state, revision)`, which JetStream refuses when anyone
//! wrote since — so of two nodes that both think they own a session (one
//! was cut off, the other took over), only the newer owner's writes land.
//! The runtime side (when to take over, when to forward) is in
//! `dspex_actors::session`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::{RequestErrorKind, Subscriber};
use dspex_actors::{SessionAnswer, SessionCall, SessionState, Sessions, StoredSession};
use dspex_core::{Error, ErrorKind, Result};
use futures_util::StreamExt;
use tracing::{debug, warn};

use crate::wire::{decode, encode, SessionReply, SessionRequest};
use crate::Inner;

fn store_err(id: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Transport, format!("cannot {what} session {id} in the cluster: {e}"))
        .with_session(id)
        .with_retryable(true)
}

fn conflict(id: &str) -> Error {
    Error::new(ErrorKind::Conflict, format!("session {id} was written by another node since this one read it"))
        .with_session(id)
        .with_retryable(true)
}

pub(crate) async fn load(node: &Inner, id: &str) -> Result<Option<StoredSession>> {
    let entry = node.sessions.entry(id).await.map_err(|e| store_err(id, "read", e))?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else { return Ok(None) };
    let mut stored: StoredSession = serde_json::from_slice(&entry.value).map_err(|e| {
        Error::new(ErrorKind::Protocol, format!("session {id}'s cluster entry does not decode: {e}")).with_session(id)
    })?;
    stored.revision = entry.revision;
    Ok(Some(stored))
}

pub(crate) async fn store(node: &Inner, owner: &str, state: &SessionState, revision: Option<u64>) -> Result<u64> {
    let id = state.id.as_str();
    let stored = StoredSession { owner: owner.to_string(), state: state.clone(), revision: 0 };
    let bytes = serde_json::to_vec(&stored)
        .map_err(|e| Error::internal(format!("cannot encode session {id}: {e}")).with_session(id))?;
    match revision {
        None => node.sessions.create(id, bytes.into()).await.map_err(|e| match e.kind() {
            CreateErrorKind::AlreadyExists => conflict(id),
            _ => store_err(id, "create", e),
        }),
        Some(rev) => node.sessions.update(id, bytes.into(), rev).await.map_err(|e| match e.kind() {
            UpdateErrorKind::WrongLastRevision => conflict(id),
            _ => store_err(id, "write", e),
        }),
    }
}

pub(crate) async fn remove(node: &Inner, id: &str, revision: u64) -> Result<()> {
    node.sessions.delete_expect_revision(id, Some(revision)).await.map_err(|e| match e.kind() {
        UpdateErrorKind::WrongLastRevision => conflict(id),
        _ => store_err(id, "remove", e),
    })
}

/// Send `call` to `owner` and wait for its answer — until the deadline, or
/// until the owner stops being a live member (checked every half lease).
/// The outer error: the owner could not be reached or did not answer; the
/// inner result: what the owner answered.
pub(crate) async fn forward(
    node: &Inner,
    owner: &str,
    id: &str,
    call: &SessionCall,
    deadline: Instant,
    trace_id: &str,
) -> Result<Result<SessionAnswer>> {
    let left = deadline.saturating_duration_since(Instant::now());
    let req = SessionRequest {
        from: node.config.node.clone(),
        session: id.to_string(),
        call: call.clone(),
        deadline_ms: left.as_millis() as u64,
        trace_id: trace_id.to_string(),
    };
    let unreachable = |why: String| {
        Error::new(ErrorKind::Transport, format!("session {id}'s owner node {owner} {why}"))
            .with_node(owner.to_string())
            .with_retryable(true)
    };
    let request = async_nats::Request::new().payload(encode(&req)?).timeout(Some(left));
    let sent = node.client.send_request(node.names.node_session(owner), request);
    tokio::pin!(sent);
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + node.lease() / 2, node.lease() / 2);
    let msg = loop {
        tokio::select! {
            r = &mut sent => break r,
            _ = check.tick() => {
                if !node.members.is_live(owner, node.lease()) {
                    return Err(unreachable("left the cluster while it had the request".into()));
                }
            }
        }
    };
    let msg = msg.map_err(|e| match e.kind() {
        RequestErrorKind::NoResponders => unreachable("is not connected".into()),
        RequestErrorKind::TimedOut => Error::new(
            ErrorKind::Timeout,
            format!("session {id}'s request to node {owner} did not finish before its deadline"),
        )
        .with_node(owner.to_string())
        .with_retryable(true),
        _ => unreachable(format!("cannot be sent the request: {e}")),
    })?;
    match decode::<SessionReply>(&msg.payload)? {
        SessionReply::Answer(a) => Ok(Ok(a)),
        SessionReply::Failed { error } => Ok(Err(error)),
    }
}

/// Answer session requests sent to this node, from the runtime's own
/// sessions (never forwarded further).
pub(crate) async fn serve(node: Arc<Inner>, sessions: Sessions, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        let (node, sessions) = (node.clone(), sessions.clone());
        tokio::spawn(async move {
            let Some(reply_to) = msg.reply.clone() else { return };
            let here = node.config.node.clone();
            let reply = match decode::<SessionRequest>(&msg.payload) {
                Err(e) => SessionReply::Failed { error: e.with_node(here) },
                Ok(req) => {
                    // The caller's clock: the deadline counts from arrival,
                    // time waiting for the session included.
                    let deadline = Instant::now() + Duration::from_millis(req.deadline_ms);
                    debug!(session = %req.session, from = %req.from, "a session request from another node");
                    match sessions.apply_forwarded(&req.session, req.call, deadline, req.trace_id).await {
                        Ok(SessionAnswer::Output(mut out)) => {
                            // Run here: the caller's `Meta` says where.
                            out.meta.node.get_or_insert(here);
                            SessionReply::Answer(SessionAnswer::Output(out))
                        }
                        Ok(a) => SessionReply::Answer(a),
                        Err(e) => SessionReply::Failed { error: e.with_node(here) },
                    }
                }
            };
            match encode(&reply) {
                Ok(bytes) => {
                    if let Err(e) = node.client.publish(reply_to, bytes).await {
                        debug!(error = %e, "cannot answer a session request");
                    }
                }
                Err(e) => warn!(error = %e, "cannot encode a session answer"),
            }
        });
    }
}
