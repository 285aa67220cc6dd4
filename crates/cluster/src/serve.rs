//! The serving side: this node's offered pools on the cluster's subjects.
//!
//! Each offered pool is subscribed twice: on the pool's subject in a queue
//! group (NATS hands each call to one subscribed node) and on this node's
//! own subject for the pool (calls pinned here). A call is kept alive while
//! it runs (`Alive`, naming this node, every `keepalive_ms`, so the caller
//! can tell a slow call from a lost node) and answered with `Done` or
//! `Failed`; a call that ends within one interval costs one message back. A node past `max_remote_in_flight`
//! or draining refuses with a retryable `overloaded`, and the caller tries
//! elsewhere. A `Cancel` from the caller drops the call, which cancels it in
//! Python.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Message, Subject, Subscriber};
use dspex_actors::{PoolCallOptions, PoolHandle};
use dspex_core::{Error, ErrorKind, Result};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::wire::{decode, encode, CallRequest, Cancel, Reply};
use crate::Inner;

/// Serve `pool` from `sub` until the subscription ends. A queue-group
/// subscription (`leaves_on_drain`) is dropped when the node drains, so
/// NATS stops handing it calls; calls already delivered are still answered.
pub(crate) async fn serve_pool(node: Arc<Inner>, pool: PoolHandle, mut sub: Subscriber, leaves_on_drain: bool) {
    let mut draining = node.draining.subscribe();
    let mut subscribed = true;
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = draining.changed(), if leaves_on_drain && subscribed => {
                if *draining.borrow_and_update() {
                    // What was delivered before the unsubscribe still arrives.
                    let _ = sub.unsubscribe().await;
                    subscribed = false;
                }
                continue;
            }
        };
        let Some(msg) = msg else { return };
        let (node, pool) = (node.clone(), pool.clone());
        tokio::spawn(async move { serve_call(node, pool, msg).await });
    }
}

/// Cancellations for calls running here.
pub(crate) async fn serve_cancels(node: Arc<Inner>, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        match decode::<Cancel>(&msg.payload) {
            Ok(c) => {
                if let Some((_, stop)) = node.running.remove(&(c.from, c.id)) {
                    let _ = stop.send(());
                }
            }
            Err(e) => debug!(error = %e, "ignoring a malformed cancel"),
        }
    }
}

async fn send(node: &Inner, to: &Subject, reply: &Reply) {
    match encode(reply) {
        Ok(bytes) => {
            if let Err(e) = node.client.publish(to.clone(), bytes).await {
                debug!(error = %e, "cannot send a cluster reply");
            }
        }
        Err(e) => warn!(error = %e, "cannot encode a cluster reply"),
    }
}

/// Counts a running remote call; the count drops however the call ends.
struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.remote_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_call(node: Arc<Inner>, pool: PoolHandle, msg: Message) {
    let Some(reply_to) = msg.reply.clone() else { return };
    let here = node.config.node.clone();
    let fail = |e: Error| Reply::Failed { error: e.with_node(here.clone()).with_pool(pool.name()) };
    let req = match decode::<CallRequest>(&msg.payload) {
        Ok(r) => r,
        Err(e) => return send(&node, &reply_to, &fail(e)).await,
    };
    if !node.accepting.load(Ordering::Acquire) {
        let e = Error::new(ErrorKind::Overloaded, format!("node {here} is draining")).with_retryable(true);
        return send(&node, &reply_to, &fail(e)).await;
    }
    let running = node.remote_in_flight.fetch_add(1, Ordering::AcqRel);
    let _counted = InFlight(&node);
    if running >= node.config.max_remote_in_flight {
        let e = Error::new(
            ErrorKind::Overloaded,
            format!("node {here} runs {running} remote requests already (max_remote_in_flight)"),
        )
        .with_retryable(true);
        return send(&node, &reply_to, &fail(e)).await;
    }
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let key = (req.from.clone(), req.id);
    node.running.insert(key.clone(), stop_tx);
    let opts = PoolCallOptions {
        deadline: Some(Instant::now() + Duration::from_millis(req.deadline_ms)),
        trace_id: req.trace_id.clone(),
        session: req.session.clone(),
        idempotent: req.idempotent,
        ..PoolCallOptions::default()
    };
    if req.stream {
        let ended = serve_stream(&node, &pool, &req, &opts, &reply_to, &mut stop_rx).await;
        node.running.remove(&key);
        if let Err(e) = ended {
            send(&node, &reply_to, &fail(e)).await;
        }
        return;
    }
    let call = pool.call(&req.op, req.args, &opts);
    tokio::pin!(call);
    // The first keep-alive after one interval. (Not `interval` and an
    // initial tick: a timer due now still waits for the driver's next
    // millisecond tick, which would cost every call up to 1 ms.)
    let every = Duration::from_millis(node.config.keepalive_ms);
    let mut alive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let result: Option<Result<_>> = loop {
        tokio::select! {
            r = &mut call => break Some(r),
            _ = alive.tick() => send(&node, &reply_to, &Reply::Alive { node: here.clone() }).await,
            _ = &mut stop_rx => break None,
        }
    };
    node.running.remove(&key);
    let reply = match result {
        None => {
            debug!(trace = ?req.trace_id, from = %req.from, "remote call cancelled by its caller");
            fail(Error::new(ErrorKind::Cancelled, "cancelled by the caller"))
        }
        Some(Ok(r)) => Reply::Done {
            node: here.clone(),
            value: r.value,
            worker: r.worker,
            worker_index: r.worker_index,
            pid: r.pid,
            queue_us: r.queue.as_micros() as u64,
            elapsed_us: r.elapsed.as_micros() as u64,
            retried: r.retried,
        },
        Some(Err(e)) => fail(e),
    };
    send(&node, &reply_to, &reply).await;
}

/// A streamed call: `Started`, then each chunk as the worker makes it, then
/// `Done` — or an error (the caller's `Failed`).
async fn serve_stream(
    node: &Inner,
    pool: &PoolHandle,
    req: &CallRequest,
    opts: &PoolCallOptions,
    reply_to: &Subject,
    stop: &mut oneshot::Receiver<()>,
) -> Result<()> {
    let here = node.config.node.clone();
    let mut items = pool.stream(&req.op, req.args.clone(), opts).await?;
    let started = Reply::Started {
        node: here.clone(),
        worker: items.worker.clone(),
        pid: items.pid,
        queue_us: items.queue.as_micros() as u64,
    };
    send(node, reply_to, &started).await;
    let sent = Instant::now();
    let every = Duration::from_millis(node.config.keepalive_ms);
    let mut seq = 0;
    loop {
        let next = tokio::select! {
            item = items.next() => item,
            _ = tokio::time::sleep(every) => {
                send(node, reply_to, &Reply::Alive { node: here.clone() }).await;
                continue;
            }
            _ = &mut *stop => return Err(Error::new(ErrorKind::Cancelled, "cancelled by the caller")),
        };
        match next {
            Some(Ok(dspex_actors::StreamItem::Chunk(value))) => {
                send(node, reply_to, &Reply::Chunk { seq, value }).await;
                seq += 1;
            }
            Some(Ok(dspex_actors::StreamItem::Done(value))) => {
                let done = Reply::Done {
                    node: here,
                    value,
                    worker: items.worker.clone(),
                    worker_index: 0,
                    pid: items.pid,
                    queue_us: items.queue.as_micros() as u64,
                    elapsed_us: sent.elapsed().as_micros() as u64,
                    retried: false,
                };
                send(node, reply_to, &done).await;
                return Ok(());
            }
            Some(Err(e)) => return Err(e),
            None => return Err(Error::new(ErrorKind::Protocol, format!("{} ended without a result", req.op))),
        }
    }
}
