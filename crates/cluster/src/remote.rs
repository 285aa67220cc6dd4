//! The calling side: a pool call sent to another node.
//!
//! The call goes out on the pool's subject (or a node's own, when pinned)
//! with its own reply subject under this node's one reply subscription
//! (`_INBOX.ID.*`, subscribed once at join: no per-call subscribe and
//! unsubscribe), where [`route_replies`] hands each message to its call. No
//! subscriber at all is known at once (NATS's no-responders status) and
//! fails with `not_found`. Otherwise the caller waits for `Alive`s and the
//! answer; three keep-alive intervals of silence mean the node was lost
//! (`worker_crashed`, naming the node), and the deadline always wins
//! (`timeout`). A call a node refused (full, draining: it never ran), and an
//! idempotent call whose node was lost, is sent again while its deadline
//! allows — not to the pool's subject but to a live node that offers the
//! pool, picked from the membership, other than those that lost it: a node
//! cut off by the network keeps its subscriptions at the NATS server until
//! the server notices (minutes), so NATS could hand it the call again. A
//! caller that stops waiting tells the serving node, which cancels the call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Message, StatusCode, Subscriber};
use dspex_actors::{PoolCallOptions, PoolReply, RemoteStream, StreamItem};
use dspex_core::{Error, ErrorKind, Result, Value};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::wire::{decode, encode, CallRequest, Cancel, Reply};
use crate::Inner;

/// How many times a refused or (idempotent) lost call is sent in all.
const ATTEMPTS: usize = 4;

/// How long a call waits for a node that offers its pool to reconnect.
const RECONNECT_GRACE: Duration = Duration::from_secs(5);
const RECONNECT_POLL: Duration = Duration::from_millis(100);

/// Run `op` on `pool` elsewhere in the cluster.
pub(crate) async fn call(node: &Inner, pool: &str, op: &str, args: Value, opts: &PoolCallOptions) -> Result<PoolReply> {
    let deadline = opts.deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(120));
    let mut attempt = 0;
    let started = Instant::now();
    // Where this attempt goes (`None`: the pool's subject), and the nodes
    // that lost or refused it so far.
    let mut target = opts.node.clone();
    let mut avoid: Vec<String> = Vec::new();
    loop {
        attempt += 1;
        let this = PoolCallOptions { node: target.clone(), ..opts.clone() };
        match call_once(node, pool, op, args.clone(), &this, deadline).await {
            // A node this call picked for a retry has gone since: nobody
            // got the call; another one is picked.
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && opts.node.is_none()
                    && target.is_some()
                    && attempt < ATTEMPTS
                    && Instant::now() < deadline =>
            {
                avoid.extend(target.take());
                target = node.members.pick(pool, node.lease(), &avoid);
            }
            // Nobody is subscribed, yet a live node offers the pool: it is
            // reconnecting (its NATS server died). Nobody got the call, so
            // any call may wait for it — briefly, within the deadline.
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && node.members.offers(pool, this.node.as_deref(), node.lease())
                    && started.elapsed() < RECONNECT_GRACE
                    && Instant::now() + RECONNECT_POLL < deadline =>
            {
                debug!(pool, op, "no responder, but a live node offers the pool; waiting for it to reconnect");
                // Waiting is not an attempt.
                attempt -= 1;
                tokio::time::sleep(RECONNECT_POLL).await;
            }
            Err(e) if attempt < ATTEMPTS && Instant::now() < deadline && worth_retrying(&e, opts.idempotent) => {
                warn!(pool, op, error = %e, attempt, "remote call lost; sending it again");
                if opts.node.is_none() {
                    if let Some(lost) = e.context().node.clone().or_else(|| target.clone()) {
                        avoid.push(lost);
                    }
                    target = node.members.pick(pool, node.lease(), &avoid);
                }
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

/// A node that refused the call (full or draining: it never ran) — any
/// call may go elsewhere; a lost node — only an idempotent one (it may have
/// run).
fn worth_retrying(e: &Error, idempotent: bool) -> bool {
    (e.kind() == ErrorKind::Overloaded && e.is_retryable())
        || (idempotent && matches!(e.kind(), ErrorKind::WorkerCrashed | ErrorKind::Transport))
}

/// Replies queued for one call, at most this many: a caller that reads a
/// stream more slowly than the serving node writes it fails, with
/// `overloaded`, instead of buffering without bound.
const REPLY_QUEUE: usize = 4096;

/// Where the replies of one waiting call go.
pub(crate) struct ReplySlot {
    tx: mpsc::UnboundedSender<Message>,
    queued: Arc<AtomicUsize>,
}

/// The receiving end of a [`ReplySlot`].
struct Replies {
    rx: mpsc::UnboundedReceiver<Message>,
    queued: Arc<AtomicUsize>,
}

impl Replies {
    fn open(node: &Inner, id: u64) -> Replies {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        node.calls.insert(id, ReplySlot { tx, queued: queued.clone() });
        Replies { rx, queued }
    }

    async fn recv(&mut self) -> Option<Message> {
        let m = self.rx.recv().await;
        self.queued.fetch_sub(usize::from(m.is_some()), Ordering::AcqRel);
        m
    }
}

/// Hand each reply to its call, by the last token of its subject (the call id).
pub(crate) async fn route_replies(node: Arc<Inner>, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(id) = msg.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else { continue };
        let overflow = match node.calls.get(&id) {
            Some(slot) => {
                let full = slot.queued.fetch_add(1, Ordering::AcqRel) >= REPLY_QUEUE;
                if !full {
                    let _ = slot.tx.send(msg);
                }
                full
            }
            None => {
                debug!(subject = %msg.subject, "a reply for no waiting call (it ended)");
                false
            }
        };
        if overflow {
            // Closing the queue ends the call with an error (see `recv`'s None).
            node.calls.remove(&id);
        }
    }
}

/// A call in flight: its reply queue, and — when it ends early — telling
/// the serving node to cancel.
struct CallGuard<N: std::ops::Deref<Target = Inner>> {
    node: N,
    serving: Option<String>,
    id: u64,
    done: bool,
}

impl<N: std::ops::Deref<Target = Inner>> Drop for CallGuard<N> {
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

/// Send a call; its replies arrive on the returned queue.
async fn send_call(
    node: &Inner,
    pool: &str,
    op: &str,
    args: Value,
    opts: &PoolCallOptions,
    deadline: Instant,
    stream: bool,
) -> Result<(u64, Replies)> {
    let id = node.next_id.fetch_add(1, Ordering::Relaxed);
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::new(ErrorKind::Timeout, format!("{op} on {pool}: no time left for a remote call")));
    }
    let req = CallRequest {
        id,
        from: node.config.node.clone(),
        pool: pool.to_string(),
        op: op.to_string(),
        args,
        deadline_ms: left.as_millis() as u64,
        trace_id: opts.trace_id.clone(),
        session: opts.session.clone(),
        idempotent: opts.idempotent,
        stream,
    };
    let subject = match &opts.node {
        Some(n) => node.names.node_pool(n, pool),
        None => node.names.pool(pool),
    };
    let payload = encode(&req)?;
    let replies = Replies::open(node, id);
    if let Err(e) = node.client.publish_with_reply(subject, format!("{}.{id}", node.reply_prefix), payload).await {
        node.calls.remove(&id);
        return Err(Error::new(ErrorKind::Transport, format!("cannot send a remote call: {e}"))
            .with_retryable(true)
            .with_node(node.config.node.clone()));
    }
    Ok((id, replies))
}

/// The next reply of a call, or why there is none: the deadline passed, the
/// node went silent for three keep-alives, nobody serves the subject, or
/// the reply queue overflowed.
async fn next_reply(
    node: &Inner,
    replies: &mut Replies,
    serving: &mut Option<String>,
    what: &str,
    opts: &PoolCallOptions,
    pool: &str,
    deadline: Instant,
) -> Result<Reply> {
    let silence = Duration::from_millis(node.config.keepalive_ms * 3);
    loop {
        let now = Instant::now();
        if now >= deadline {
            let e = Error::new(ErrorKind::Timeout, format!("{what} did not finish before its deadline"))
                .with_retryable(true);
            return Err(match serving {
                Some(n) => e.with_node(n.clone()),
                None => e,
            });
        }
        let msg = match tokio::time::timeout(silence.min(deadline - now), replies.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(Error::new(
                    ErrorKind::Overloaded,
                    format!("{what}: more than {REPLY_QUEUE} replies waited to be read; the call was dropped"),
                ))
            }
            Err(_) if Instant::now() >= deadline => continue,
            Err(_) => {
                let e = match serving.take() {
                    // A node that went silent cannot be told to cancel.
                    Some(n) => Error::new(
                        ErrorKind::WorkerCrashed,
                        format!("node {n} stopped answering while it ran {what} (no keep-alive for {silence:?})"),
                    )
                    .with_node(n),
                    None => Error::new(ErrorKind::WorkerCrashed, format!("no node took {what} within {silence:?}")),
                };
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
        let reply = decode::<Reply>(&msg.payload)?;
        if let Reply::Alive { node: n } = &reply {
            *serving = Some(n.clone());
            continue;
        }
        return Ok(reply);
    }
}

/// Run streamed command `op` on `pool` elsewhere; ready once it started.
pub(crate) async fn stream(
    node: Arc<Inner>,
    pool: String,
    op: String,
    args: Value,
    opts: PoolCallOptions,
) -> Result<RemoteStream> {
    let deadline = opts.deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(120));
    let what = format!("{op} on {pool}");
    let (id, mut replies) =
        send_call(&node, &pool, &op, args, &opts, deadline, true).await.map_err(|e| e.with_pool(&pool))?;
    let mut guard = CallGuard { node: node.clone(), serving: None, id, done: false };
    let (started_on, worker, pid, queue) =
        match next_reply(&node, &mut replies, &mut guard.serving, &what, &opts, &pool, deadline).await {
            Ok(Reply::Started { node: n, worker, pid, queue_us }) => (n, worker, pid, Duration::from_micros(queue_us)),
            Ok(Reply::Failed { error }) => {
                guard.done = true;
                return Err(error.with_pool(&pool));
            }
            Ok(other) => {
                return Err(Error::new(ErrorKind::Protocol, format!("{what}: expected Started, got {other:?}")))
            }
            Err(e) => return Err(e.with_pool(&pool)),
        };
    guard.serving = Some(started_on.clone());
    struct State {
        node: Arc<Inner>,
        replies: Replies,
        guard: CallGuard<Arc<Inner>>,
        what: String,
        opts: PoolCallOptions,
        pool: String,
        deadline: Instant,
        next_seq: u64,
        ended: bool,
    }
    let state = State { node, replies, guard, what, opts, pool, deadline, next_seq: 0, ended: false };
    let items = futures_util::stream::unfold(state, |mut s| async move {
        if s.ended {
            return None;
        }
        let r = next_reply(&s.node, &mut s.replies, &mut s.guard.serving, &s.what, &s.opts, &s.pool, s.deadline).await;
        let item = match r {
            Ok(Reply::Chunk { seq, value }) if seq == s.next_seq => {
                s.next_seq += 1;
                Ok(StreamItem::Chunk(value))
            }
            Ok(Reply::Chunk { seq, .. }) => Err(Error::new(
                ErrorKind::Protocol,
                format!("{}: chunk {seq} arrived where {} was due", s.what, s.next_seq),
            )),
            Ok(Reply::Done { value, .. }) => {
                s.guard.done = true;
                s.ended = true;
                Ok(StreamItem::Done(value))
            }
            Ok(Reply::Failed { error }) => {
                s.guard.done = true;
                Err(error)
            }
            Ok(other) => Err(Error::new(ErrorKind::Protocol, format!("{}: unexpected {other:?}", s.what))),
            Err(e) => Err(e),
        };
        if item.is_err() {
            s.ended = true;
        }
        Some((item.map_err(|e| e.with_pool(&s.pool)), s))
    });
    Ok(RemoteStream { node: started_on, worker, pid, queue, items: Box::pin(items) })
}

async fn call_once(
    node: &Inner,
    pool: &str,
    op: &str,
    args: Value,
    opts: &PoolCallOptions,
    deadline: Instant,
) -> Result<PoolReply> {
    let what = format!("{op} on {pool}");
    let (id, mut replies) = send_call(node, pool, op, args, opts, deadline, false).await?;
    let sent = Instant::now();
    let mut guard = CallGuard { node, serving: None, id, done: false };
    match next_reply(node, &mut replies, &mut guard.serving, &what, opts, pool, deadline).await? {
        Reply::Failed { error } => {
            guard.done = true;
            Err(error)
        }
        Reply::Done { node: served_by, value, worker, worker_index, pid, queue_us, elapsed_us, retried } => {
            guard.done = true;
            let queue = Duration::from_micros(queue_us);
            let remote = Duration::from_micros(elapsed_us);
            Ok(PoolReply {
                value,
                worker,
                worker_index,
                pid,
                queue,
                // The caller's view: the whole round trip, less the remote queue wait.
                elapsed: sent.elapsed().saturating_sub(queue).max(remote),
                retried,
                node: Some(served_by),
            })
        }
        other => Err(Error::new(ErrorKind::Protocol, format!("{what}: unexpected {other:?}"))),
    }
}
