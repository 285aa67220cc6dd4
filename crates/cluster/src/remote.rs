//! The calling side: a pool call sent to another node.
//!
//! The call goes out on the pool's subject (or a node's own, when pinned)
//! with its own reply subject under this node's one reply subscription
//! (`_INBOX.ID.>`, subscribed once at join: no per-call subscribe and
//! unsubscribe), where [`route_replies`] hands each message to its call. No
//! subscriber at all is known at once (NATS's no-responders status) and
//! fails with `not_found`. Otherwise the caller waits for `Alive`s and the
//! answer; three keep-alive intervals of silence mean the node was lost
//! (`worker_crashed`, naming the node), and the deadline always wins
//! (`timeout`). An idempotent call whose
//! node was lost or refused it is sent again — NATS hands it to another
//! subscribed node — while its deadline allows. A caller that stops waiting
//! tells the serving node, which cancels the call.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::{Message, StatusCode, Subscriber};
use dspex_actors::{PoolCallOptions, PoolReply};
use dspex_core::{Error, ErrorKind, Result, Value};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::wire::{decode, encode, CallRequest, Cancel, Reply};
use crate::Inner;

/// How many times an idempotent call is sent in all.
const ATTEMPTS: usize = 4;

/// Run `op` on `pool` elsewhere in the cluster.
pub(crate) async fn call(node: &Inner, pool: &str, op: &str, args: Value, opts: &PoolCallOptions) -> Result<PoolReply> {
    let deadline = opts.deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(120));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call_once(node, pool, op, args.clone(), opts, deadline).await {
            Err(e) if opts.idempotent && attempt < ATTEMPTS && Instant::now() < deadline && worth_retrying(&e) => {
                warn!(pool, op, error = %e, attempt, "remote call lost; sending it again");
                // A moment for the lost node's subscriptions to go.
                tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
            }
            Err(e) => return Err(e.with_pool(pool)),
            Ok(mut reply) => {
                reply.retried |= attempt > 1;
                return Ok(reply);
            }
        }
    }
}

/// A lost node or a node that refused: another may take it.
fn worth_retrying(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::WorkerCrashed | ErrorKind::Transport)
        || (e.kind() == ErrorKind::Overloaded && e.is_retryable())
}

/// Hand each reply to its call, by the last token of its subject (the call id).
pub(crate) async fn route_replies(node: std::sync::Arc<Inner>, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        let id = msg.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
        match id.and_then(|id| node.calls.get(&id).map(|tx| tx.clone())) {
            // Full: only keep-alives can pile up; dropping one is harmless.
            Some(tx) => {
                let _ = tx.try_send(msg);
            }
            None => debug!(subject = %msg.subject, "a reply for no waiting call (it ended)"),
        }
    }
}

/// A call in flight: its reply queue, and — when it ends early — telling
/// the serving node to cancel.
struct CallGuard<'a> {
    node: &'a Inner,
    serving: Option<String>,
    id: u64,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.node.calls.remove(&self.id);
        let (Some(serving), false) = (self.serving.take(), self.done) else { return };
        let (client, subject) = (self.node.client.clone(), self.node.names.cancel(&serving));
        if let Ok(payload) = encode(&Cancel { from: self.node.config.node.clone(), id: self.id }) {
            tokio::spawn(async move {
                let _ = client.publish(subject, payload).await;
            });
        }
    }
}

async fn call_once(
    node: &Inner,
    pool: &str,
    op: &str,
    args: Value,
    opts: &PoolCallOptions,
    deadline: Instant,
) -> Result<PoolReply> {
    let me = &node.config.node;
    let id = node.next_id.fetch_add(1, Ordering::Relaxed);
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::new(ErrorKind::Timeout, format!("{op} on {pool}: no time left for a remote call")));
    }
    let req = CallRequest {
        id,
        from: me.clone(),
        pool: pool.to_string(),
        op: op.to_string(),
        args,
        deadline_ms: left.as_millis() as u64,
        trace_id: opts.trace_id.clone(),
        session: opts.session.clone(),
        idempotent: opts.idempotent,
    };
    let subject = match &opts.node {
        Some(n) => node.names.node_pool(n, pool),
        None => node.names.pool(pool),
    };
    let transport = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(ErrorKind::Transport, format!("{what}: {e}")).with_retryable(true).with_node(me.clone())
    };
    let payload = encode(&req)?;
    let (tx, mut replies) = mpsc::channel::<Message>(16);
    node.calls.insert(id, tx);
    let mut guard = CallGuard { node, serving: None, id, done: false };
    node.client
        .publish_with_reply(subject, format!("{}.{id}", node.reply_prefix), payload)
        .await
        .map_err(|e| transport("cannot send a remote call", &e))?;
    let sent = Instant::now();
    let silence = Duration::from_millis(node.config.keepalive_ms * 3);
    loop {
        let now = Instant::now();
        if now >= deadline {
            let e = Error::new(ErrorKind::Timeout, format!("{op} on {pool} did not finish before its deadline"))
                .with_retryable(true);
            return Err(match &guard.serving {
                Some(n) => e.with_node(n.clone()),
                None => e,
            });
        }
        let wait = silence.min(deadline - now);
        let msg = match tokio::time::timeout(wait, replies.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(transport("the reply inbox closed", &"connection lost")),
            Err(_) if Instant::now() >= deadline => continue,
            Err(_) => {
                let e = match &guard.serving {
                    Some(n) => Error::new(
                        ErrorKind::WorkerCrashed,
                        format!(
                            "node {n} stopped answering while it ran {op} on {pool} (no keep-alive for {silence:?})"
                        ),
                    )
                    .with_node(n.clone()),
                    None => {
                        Error::new(ErrorKind::WorkerCrashed, format!("no node took {op} on {pool} within {silence:?}"))
                    }
                };
                // A node that went silent cannot be told to cancel; don't try.
                guard.serving = None;
                return Err(e.with_retryable(true));
            }
        };
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            let what = match &opts.node {
                Some(n) => format!("node {n} does not serve pool {pool} (or is not in the cluster)"),
                None => format!("no node of the cluster serves pool {pool}"),
            };
            return Err(Error::new(ErrorKind::NotFound, what).with_retryable(true));
        }
        match decode::<Reply>(&msg.payload)? {
            Reply::Alive { node: n } => guard.serving = Some(n),
            Reply::Failed { error } => {
                guard.done = true;
                return Err(error);
            }
            Reply::Done { node: served_by, value, worker, worker_index, pid, queue_us, elapsed_us, retried } => {
                guard.done = true;
                let queue = Duration::from_micros(queue_us);
                let remote = Duration::from_micros(elapsed_us);
                return Ok(PoolReply {
                    value,
                    worker,
                    worker_index,
                    pid,
                    queue,
                    // The caller's view: the whole round trip, less the remote queue wait.
                    elapsed: sent.elapsed().saturating_sub(queue).max(remote),
                    retried,
                    node: Some(served_by),
                });
            }
        }
    }
}
