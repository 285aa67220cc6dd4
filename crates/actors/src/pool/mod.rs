//! Pools of Python workers.
//!
//! A pool is a supervisor (`pool:<name>`, one_for_one) with one worker actor
//! per process (`worker:<name>:<i>`) and a [`PoolHandle`] that requests use
//! directly. Dispatch does not go through a mailbox: a request picks the
//! least-loaded *ready* worker with one atomic compare-and-swap on its
//! in-flight count and talks to the process itself, so no actor ever waits
//! on Python I/O and pool throughput is the workers' throughput.
//!
//! When every worker is busy a request waits in a bounded queue: past
//! `max_queue` waiters it fails at once with `Overloaded`; a waiter that
//! finds no worker within `queue_timeout_ms` fails with `Overloaded` too;
//! the request's own deadline always wins. A request marked idempotent
//! whose worker dies under it is retried once on another worker.
//!
//! Worker actors own the processes: a worker is ready once its handshake is
//! done, a process that exits (or misses heartbeats, or breaks the protocol)
//! fails its actor and the pool supervisor restarts it with back-off; too
//! many restarts escalate to the `pools` supervisor, which restarts the whole
//! pool to full size. Workers are recycled (drained, stopped, replaced, not
//! counted as failures) after `max_requests`, `ttl_secs` or past
//! `max_rss_mb`.

mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_bridge::{CallOptions, Codec, RunRegistry, StreamItem, Worker, WorkerStream};
use dspex_core::CodecChoice;
use dspex_core::{Error, ErrorKind, EventKind, Map, PoolConfig, Result, Value};
use dspex_native::lm::LmScope;
use futures_util::Stream;
use parking_lot::{Mutex, RwLock};
use ractor::ActorRef;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn, Instrument};

use crate::request::{Ran, RequestContext};
use crate::supervisor::{
    ChildSpec, InfoFn, NodeInfo, Restart, StartFn, Started, Strategy, Supervisor, SupervisorMsg, SupervisorSpec,
};
use crate::telemetry::Telemetry;
use worker::{worker_child, WorkerMsg};

mod zygote;

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;
const DOWN: u8 = 3;

fn state_name(s: u8) -> &'static str {
    match s {
        STARTING => "starting",
        READY => "ready",
        DRAINING => "draining",
        _ => "down",
    }
}

/// How a pool starts its processes: the interpreter, `PYTHONPATH` entries
/// for the worker sources, and the run registry.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The Python interpreter (absolute path).
    pub python: PathBuf,
    /// Prepended to `PYTHONPATH` (the embedded worker sources first).
    pub python_path: Vec<PathBuf>,
    /// Where workers are recorded for clean-up after a crash of the runtime.
    pub registry: Option<Arc<RunRegistry>>,
    /// Variables every worker of the runtime gets (the pool's own win).
    pub env: Vec<(String, String)>,
    /// Where the workers' LM calls go (`None`: DSPy calls services itself).
    pub lm_gateway: Option<Arc<dyn dspex_bridge::LmGateway>>,
}

/// One worker position in a pool; it outlives the processes that fill it.
struct Slot {
    index: usize,
    name: String,
    worker: RwLock<Option<Worker>>,
    state: AtomicU8,
    in_flight: AtomicUsize,
    served: AtomicU64,
    generation: AtomicU64,
    last_exit: Mutex<Option<String>>,
    actor: Mutex<Option<ActorRef<WorkerMsg>>>,
}

impl Slot {
    fn new(pool: &str, index: usize) -> Arc<Slot> {
        Arc::new(Slot {
            index,
            name: format!("worker:{pool}:{index}"),
            worker: RwLock::new(None),
            state: AtomicU8::new(STARTING),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_exit: Mutex::new(None),
            actor: Mutex::new(None),
        })
    }

    fn info(&self) -> NodeInfo {
        let worker = self.worker.read().clone();
        let mut extra = Map::new();
        extra.insert("served".into(), self.served.load(Ordering::Relaxed).into());
        if worker.as_ref().is_some_and(|w| w.forked()) {
            extra.insert("forked".into(), true.into());
        }
        if let Some(why) = self.last_exit.lock().clone() {
            extra.insert("last_exit".into(), why.into());
        }
        // What the codec choice did on this process's pipes.
        if let Some(w) = &worker {
            let counts = w.codec_counts();
            let mut frames = Map::new();
            for codec in [Codec::Json, Codec::MsgPack, Codec::Arrow] {
                let (sent, received) = counts.of(codec);
                if sent + received > 0 {
                    frames.insert(codec.to_string(), serde_json::json!({"sent": sent, "received": received}));
                }
            }
            extra.insert("frames".into(), Value::Object(frames));
        }
        NodeInfo {
            status: Some(state_name(self.state.load(Ordering::Acquire)).into()),
            pid: worker.as_ref().map(|w| w.pid()),
            in_flight: Some(self.in_flight.load(Ordering::Relaxed)),
            queue: None,
            extra,
        }
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failed: AtomicU64,
    overloaded: AtomicU64,
    retried: AtomicU64,
}

pub(crate) struct PoolShared {
    name: String,
    config: RwLock<PoolConfig>,
    launch: Launch,
    slots: RwLock<Vec<Arc<Slot>>>,
    waiting: AtomicUsize,
    notify: Notify,
    telemetry: Telemetry,
    supervisor: Mutex<Option<ActorRef<SupervisorMsg>>>,
    next_index: AtomicUsize,
    resize: tokio::sync::Mutex<()>,
    counters: Counters,
    /// The zygote workers fork from, and its state for the tree.
    zygote_status: zygote::ZygoteCell,
    /// Forked idle workers that a starting slot promotes instead of forking.
    standby: zygote::Standby,
}

/// A handle on a pool: dispatch, stats, resizing. Cheap to clone.
#[derive(Clone)]
pub struct PoolHandle {
    shared: Arc<PoolShared>,
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle").field("name", &self.shared.name).finish()
    }
}

/// Per-request settings for a pool call.
#[derive(Debug, Clone, Default)]
pub struct PoolCallOptions {
    /// The request's one deadline (queueing, transport and Python share it).
    pub deadline: Option<Instant>,
    /// Trace id, shown in the worker's log lines.
    pub trace_id: Option<String>,
    /// Session the request belongs to.
    pub session: Option<String>,
    /// Safe to run twice: retried once on another worker if its worker dies.
    pub idempotent: bool,
    /// Codec for this request (else the pool's).
    pub codec: Option<CodecChoice>,
    /// Run on this worker (by index) and nowhere else.
    pub pin: Option<usize>,
    /// Run on this cluster node only.
    pub node: Option<String>,
    /// Prefer another cluster node.
    pub prefer_remote: bool,
    /// The tenant and meter of the request's LM calls (through the gateway).
    pub lm_scope: Option<Arc<LmScope>>,
}

impl PoolCallOptions {
    /// The options of a request's pool call: its deadline, trace id,
    /// session and idempotency, on any worker.
    pub fn for_request(ctx: &RequestContext) -> PoolCallOptions {
        PoolCallOptions {
            deadline: Some(ctx.deadline),
            trace_id: Some(ctx.trace_id.clone()),
            session: ctx.options.session.clone(),
            idempotent: ctx.idempotent,
            codec: ctx.options.codec,
            pin: None,
            node: ctx.options.node.clone(),
            prefer_remote: ctx.options.prefer_remote,
            lm_scope: Some(Arc::new(ctx.lm_scope())),
        }
    }
}

/// A pool call's result and where and how it ran.
#[derive(Debug, Clone)]
pub struct PoolReply {
    /// What the command returned.
    pub value: Value,
    /// The worker that ran it.
    pub worker: String,
    /// Its index in the pool.
    pub worker_index: usize,
    /// Its process id.
    pub pid: u32,
    /// Time spent waiting for a worker.
    pub queue: Duration,
    /// Time from sending the request to its answer.
    pub elapsed: Duration,
    /// Whether it was retried after its first worker died.
    pub retried: bool,
    /// The cluster node it ran on (in a cluster).
    pub node: Option<String>,
}

impl PoolReply {
    /// The value, and where and how long it ran (for the result's metadata).
    pub fn into_parts(self) -> (Value, Ran) {
        let ran = Ran {
            worker: Some((self.worker, self.pid)),
            node: self.node,
            queue: self.queue,
            elapsed: self.elapsed,
            retried: self.retried,
            ..Default::default()
        };
        (self.value, ran)
    }
}

/// Figures about one pool.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolStats {
    /// Pool name.
    pub name: String,
    /// Configured size.
    pub size: usize,
    /// Workers ready now.
    pub ready: usize,
    /// Requests running.
    pub in_flight: usize,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Requests seen.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests shed with `Overloaded`.
    pub overloaded: u64,
    /// Requests retried on another worker.
    pub retried: u64,
    /// Per worker: name, state, pid, in-flight, served.
    pub workers: Vec<WorkerStats>,
}

/// Figures about one worker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerStats {
    /// `worker:<pool>:<i>`.
    pub name: String,
    /// `starting`, `ready`, `draining` or `down`.
    pub state: String,
    /// Process id, while there is a process.
    pub pid: Option<u32>,
    /// Requests running.
    pub in_flight: usize,
    /// Requests answered by this slot (all its processes).
    pub served: u64,
}

/// A checked-out worker; gives its capacity back when dropped.
struct Lease {
    slot: Arc<Slot>,
    worker: Worker,
    shared: Arc<PoolShared>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shared.notify.notify_one();
        self.shared.telemetry.emit_lazy(None, || EventKind::PoolCheckin {
            pool: self.shared.name.clone(),
            worker: self.slot.name.clone(),
        });
    }
}

impl PoolShared {
    fn concurrency(&self) -> usize {
        self.config.read().concurrency.max(1) as usize
    }

    /// Take capacity on the least-loaded ready worker, if any has some.
    fn try_checkout(self: &Arc<Self>, pin: Option<usize>, avoid: Option<usize>) -> Option<Lease> {
        let limit = self.concurrency();
        // Bounded: a slot changing under us is skipped, never spun on.
        for _ in 0..64 {
            let (slot, seen) = {
                let slots = self.slots.read();
                let mut best: Option<(&Arc<Slot>, usize)> = None;
                for s in slots.iter() {
                    if pin.is_some_and(|p| p != s.index) || s.state.load(Ordering::Acquire) != READY {
                        continue;
                    }
                    let n = s.in_flight.load(Ordering::Acquire);
                    if n >= limit {
                        continue;
                    }
                    // Prefer anything over the worker that just failed us.
                    let penalty = if avoid == Some(s.index) { limit } else { 0 };
                    if best.is_none_or(|(b, bn)| n + penalty < bn + if avoid == Some(b.index) { limit } else { 0 }) {
                        best = Some((s, n));
                    }
                }
                let (s, n) = best?;
                (s.clone(), n)
            };
            if slot.in_flight.compare_exchange(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue;
            }
            let worker = {
                let guard = slot.worker.read();
                // A process that died is skipped before its actor hears of it.
                guard.clone().filter(|w| slot.state.load(Ordering::Acquire) == READY && w.is_ready())
            };
            match worker {
                Some(w) => return Some(Lease { slot, worker: w, shared: self.clone() }),
                None => {
                    slot.in_flight.fetch_sub(1, Ordering::AcqRel);
                    std::hint::spin_loop();
                }
            }
        }
        None
    }

    /// Waiting in the pool's queue for a ready worker.
    fn checkout_span(&self) -> tracing::Span {
        tracing::debug_span!("dspex.pool.checkout", pool = %self.name)
    }

    async fn checkout(self: &Arc<Self>, opts: &PoolCallOptions, avoid: Option<usize>) -> Result<(Lease, Duration)> {
        let started = Instant::now();
        // Newcomers take the fast path only when nobody waits: the queue is FIFO.
        if self.waiting.load(Ordering::Acquire) == 0 {
            if let Some(lease) = self.try_checkout(opts.pin, avoid) {
                return Ok((lease, Duration::ZERO));
            }
        }
        let (max_queue, queue_timeout) = {
            let c = self.config.read();
            (c.max_queue, c.queue_timeout())
        };
        if let Some(pin) = opts.pin {
            let exists = self.slots.read().iter().any(|s| s.index == pin && s.state.load(Ordering::Acquire) != DOWN);
            if !exists {
                return Err(Error::new(
                    ErrorKind::WorkerCrashed,
                    format!("worker {pin} of pool {} is gone", self.name),
                )
                .with_pool(&self.name)
                .with_retryable(true));
            }
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!("pool {} is overloaded: {max_queue} requests already wait for a worker", self.name),
            )
            .with_pool(&self.name)
            .with_retryable(true));
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        let queue_deadline = started + queue_timeout;
        let (deadline, by_request) = match opts.deadline {
            Some(d) if d <= queue_deadline => (d, true),
            _ => (queue_deadline, false),
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = self.try_checkout(opts.pin, avoid) {
                return Ok((lease, started.elapsed()));
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                if let Some(lease) = self.try_checkout(opts.pin, avoid) {
                    return Ok((lease, started.elapsed()));
                }
                let waited = started.elapsed();
                return Err(if by_request {
                    Error::new(ErrorKind::Timeout, format!("the deadline passed after {waited:?} waiting for a worker"))
                        .with_pool(&self.name)
                        .with_retryable(true)
                } else {
                    self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
                    Error::new(
                        ErrorKind::Overloaded,
                        format!(
                            "no worker of pool {} was free within the queue timeout ({queue_timeout:?})",
                            self.name
                        ),
                    )
                    .with_pool(&self.name)
                    .with_retryable(true)
                });
            }
        }
    }
}

fn bridge_options(opts: &PoolCallOptions) -> CallOptions {
    CallOptions {
        deadline: opts.deadline,
        session: opts.session.clone(),
        trace_id: opts.trace_id.clone(),
        codec: opts.codec,
        lm_scope: opts.lm_scope.clone().map(|s| s as dspex_bridge::LmScopeToken),
    }
}

impl PoolHandle {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The pool's configuration (with its current size).
    pub fn config(&self) -> PoolConfig {
        self.shared.config.read().clone()
    }

    /// Run `op` on the least-loaded ready worker.
    pub async fn call(&self, op: &str, mut args: Value, opts: &PoolCallOptions) -> Result<PoolReply> {
        let s = &self.shared;
        s.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut avoid = None;
        let mut retried = false;
        loop {
            let (lease, queue) = match s.checkout(opts, avoid).instrument(s.checkout_span()).await {
                Ok(x) => x,
                Err(e) => {
                    s.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            s.telemetry.emit_lazy(opts.trace_id.as_deref(), || EventKind::PoolCheckout {
                pool: s.name.clone(),
                worker: lease.slot.name.clone(),
                queue_us: queue.as_micros() as u64,
            });
            // Retries re-send the same arguments; keep a copy only when a retry is possible.
            let retry_args = (opts.idempotent && !retried && opts.pin.is_none()).then(|| args.clone());
            let sent = Instant::now();
            let out = lease.worker.call(op, args, &bridge_options(opts)).await;
            let elapsed = sent.elapsed();
            let ok = out.is_ok();
            s.telemetry.emit_lazy(opts.trace_id.as_deref(), || EventKind::PythonExecute {
                op: op.to_string(),
                pool: s.name.clone(),
                worker: lease.slot.name.clone(),
                queue_us: queue.as_micros() as u64,
                elapsed_us: elapsed.as_micros() as u64,
                ok,
            });
            match out {
                Ok(value) => {
                    lease.slot.served.fetch_add(1, Ordering::Relaxed);
                    return Ok(PoolReply {
                        value,
                        worker: lease.slot.name.clone(),
                        worker_index: lease.slot.index,
                        pid: lease.worker.pid(),
                        queue,
                        elapsed,
                        retried,
                        node: None,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WorkerCrashed && retry_args.is_some() => {
                    warn!(pool = %s.name, worker = %lease.slot.name, op, error = %e, "worker died under an idempotent request; retrying on another worker");
                    s.counters.retried.fetch_add(1, Ordering::Relaxed);
                    avoid = Some(lease.slot.index);
                    retried = true;
                    drop(lease);
                    args = retry_args.unwrap_or(Value::Null);
                }
                Err(e) => {
                    s.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e.with_pool(&s.name));
                }
            }
        }
    }

    /// Run `op` as a stream on the least-loaded ready worker; the worker's
    /// capacity is held until the stream ends or is dropped.
    pub async fn stream(&self, op: &str, args: Value, opts: &PoolCallOptions) -> Result<PoolStream> {
        let s = &self.shared;
        s.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (lease, queue) = s.checkout(opts, None).instrument(s.checkout_span()).await.inspect_err(|_| {
            s.counters.failed.fetch_add(1, Ordering::Relaxed);
        })?;
        let inner = lease.worker.stream(op, args, &bridge_options(opts)).await.map_err(|e| e.with_pool(&s.name))?;
        Ok(PoolStream { worker: lease.slot.name.clone(), pid: lease.worker.pid(), queue, inner, _lease: lease })
    }

    /// Figures about the pool and its workers.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        let slots = s.slots.read().clone();
        let workers: Vec<WorkerStats> = slots
            .iter()
            .map(|slot| WorkerStats {
                name: slot.name.clone(),
                state: state_name(slot.state.load(Ordering::Acquire)).into(),
                pid: slot.worker.read().as_ref().map(|w| w.pid()),
                in_flight: slot.in_flight.load(Ordering::Relaxed),
                served: slot.served.load(Ordering::Relaxed),
            })
            .collect();
        PoolStats {
            name: s.name.clone(),
            size: s.config.read().size,
            ready: workers.iter().filter(|w| w.state == "ready").count(),
            in_flight: workers.iter().map(|w| w.in_flight).sum(),
            queued: s.waiting.load(Ordering::Relaxed),
            requests: s.counters.requests.load(Ordering::Relaxed),
            failed: s.counters.failed.load(Ordering::Relaxed),
            overloaded: s.counters.overloaded.load(Ordering::Relaxed),
            retried: s.counters.retried.load(Ordering::Relaxed),
            workers,
        }
    }

    /// The least-loaded ready worker: its index and process id.
    pub fn pick(&self) -> Option<(usize, u32)> {
        self.shared
            .slots
            .read()
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == READY)
            .filter_map(|s| {
                let w = s.worker.read().clone().filter(|w| w.is_ready())?;
                Some((s.in_flight.load(Ordering::Relaxed), s.index, w.pid()))
            })
            .min()
            .map(|(_, i, pid)| (i, pid))
    }

    /// The process id of worker `index` while it is ready.
    pub fn pid_of(&self, index: usize) -> Option<u32> {
        let slots = self.shared.slots.read();
        let slot = slots.iter().find(|s| s.index == index && s.state.load(Ordering::Acquire) == READY)?;
        let w = slot.worker.read().clone().filter(|w| w.is_ready())?;
        Some(w.pid())
    }

    /// Workers ready now.
    pub fn ready(&self) -> usize {
        self.shared.slots.read().iter().filter(|s| s.state.load(Ordering::Acquire) == READY).count()
    }

    /// Process ids of the ready workers, in slot order.
    pub fn pids(&self) -> Vec<u32> {
        self.shared
            .slots
            .read()
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == READY)
            .filter_map(|s| s.worker.read().as_ref().map(|w| w.pid()))
            .collect()
    }

    /// Wait until `n` workers are ready (or `timeout` passes).
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if self.ready() >= n {
                return Ok(());
            }
            // A pool none of whose workers could start will not get better by waiting.
            if self.ready() == 0 {
                let failures: Vec<String> = self
                    .shared
                    .slots
                    .read()
                    .iter()
                    .filter_map(|s| s.last_exit.lock().clone().filter(|w| w.starts_with("start failed")))
                    .collect();
                if !failures.is_empty() && failures.len() >= self.shared.slots.read().len() {
                    return Err(Error::new(
                        ErrorKind::WorkerCrashed,
                        format!("no worker of pool {} could start: {}", self.name(), failures[0]),
                    )
                    .with_pool(self.name()));
                }
            }
            if Instant::now() >= end {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("pool {} has {} of {n} workers ready after {timeout:?}", self.name(), self.ready()),
                )
                .with_pool(self.name()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kill one worker's process (`SIGKILL` to its group), as a crash would;
    /// its actor restarts it. Returns the killed pid.
    pub fn kill_worker(&self, index: usize) -> Result<u32> {
        let slot = self.shared.slots.read().iter().find(|s| s.index == index).cloned();
        let worker = slot.as_ref().and_then(|s| s.worker.read().clone()).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("pool {} has no running worker {index}", self.name()))
                .with_pool(self.name())
        })?;
        worker.crash();
        Ok(worker.pid())
    }

    /// Restart every worker, one at a time: each drains (no new requests,
    /// those in flight finish), stops and is replaced, and the next one
    /// goes when its replacement is ready — the pool keeps serving.
    pub async fn restart(&self, timeout: Duration) -> Result<()> {
        let slots: Vec<Arc<Slot>> = self.shared.slots.read().clone();
        for slot in slots {
            let before = slot.worker.read().as_ref().map(|w| w.pid());
            let Some(actor) = slot.actor.lock().clone() else { continue };
            let _ = actor.cast(WorkerMsg::Drain("restart requested".into()));
            let end = Instant::now() + timeout;
            loop {
                let now = slot.worker.read().as_ref().map(|w| w.pid());
                if slot.state.load(Ordering::Acquire) == READY && now.is_some() && now != before {
                    break;
                }
                if Instant::now() >= end {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("{} did not come back within {timeout:?}", slot.name),
                    )
                    .with_pool(self.name())
                    .with_worker(&slot.name));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Change the number of workers. New workers start at once (the call
    /// returns when they are ready); removed workers drain first.
    pub async fn resize(&self, size: usize) -> Result<()> {
        let s = &self.shared;
        let _guard = s.resize.lock().await;
        let sup = s.supervisor.lock().clone().ok_or_else(|| {
            Error::new(ErrorKind::Internal, format!("pool {} is not running", s.name)).with_pool(&s.name)
        })?;
        let current = s.slots.read().len();
        let grow = size > current;
        if grow {
            for _ in current..size {
                let index = s.next_index.fetch_add(1, Ordering::Relaxed);
                let slot = Slot::new(&s.name, index);
                s.slots.write().push(slot.clone());
                Supervisor::add_child(&sup, worker_child(s.clone(), slot)).await.map_err(|e| {
                    Error::new(ErrorKind::Internal, format!("cannot add a worker to pool {}: {e}", s.name))
                        .with_pool(&s.name)
                })?;
            }
        } else {
            let removed: Vec<Arc<Slot>> = s.slots.read()[size..].to_vec();
            for slot in &removed {
                slot.state.store(DRAINING, Ordering::Release);
            }
            for slot in &removed {
                let end = Instant::now() + Duration::from_secs(30);
                while slot.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = Supervisor::remove_child(&sup, &slot.name).await;
                s.slots.write().retain(|x| x.index != slot.index);
            }
        }
        s.config.write().size = size;
        info!(pool = %s.name, size, "pool resized");
        s.telemetry.emit(
            None,
            EventKind::Lifecycle {
                actor: format!("pool:{}", s.name),
                what: "resized".into(),
                detail: size.to_string(),
            },
        );
        if grow {
            self.wait_ready(size, Duration::from_secs(120)).await?;
        }
        Ok(())
    }

    pub(crate) fn new(config: PoolConfig, launch: Launch, telemetry: Telemetry) -> PoolHandle {
        let name = config.name.clone();
        let size = config.size;
        let slots = (0..size).map(|i| Slot::new(&name, i)).collect();
        PoolHandle {
            shared: Arc::new(PoolShared {
                name,
                config: RwLock::new(config),
                launch,
                slots: RwLock::new(slots),
                waiting: AtomicUsize::new(0),
                notify: Notify::new(),
                telemetry,
                supervisor: Mutex::new(None),
                next_index: AtomicUsize::new(size),
                resize: tokio::sync::Mutex::new(()),
                counters: Counters::default(),
                zygote_status: Default::default(),
                standby: Default::default(),
            }),
        }
    }

    /// The pool supervisor's child spec (under `pools`).
    pub(crate) fn child_spec(&self) -> ChildSpec {
        let shared = self.shared.clone();
        let start: StartFn = Arc::new(move |parent, name| {
            let shared = shared.clone();
            Box::pin(async move {
                let spec = pool_supervisor_spec(&shared, name);
                let (sup, _) = Supervisor::start(Some(parent), spec).await?;
                *shared.supervisor.lock() = Some(sup.clone());
                Ok(Started { cell: sup.get_cell(), supervisor: Some(sup) })
            })
        });
        ChildSpec::new(format!("pool:{}", self.shared.name), Restart::Permanent, start).kind("pool")
    }
}

fn pool_supervisor_spec(shared: &Arc<PoolShared>, name: String) -> SupervisorSpec {
    let intensity = shared.config.read().intensity;
    let info_shared = shared.clone();
    let info: InfoFn = Arc::new(move || {
        let s = &info_shared;
        let slots = s.slots.read();
        let mut extra = Map::new();
        let config = s.config.read();
        extra.insert("size".into(), config.size.into());
        extra.insert("ready".into(), slots.iter().filter(|x| x.state.load(Ordering::Acquire) == READY).count().into());
        // What the pool runs on and within: its environment and limits.
        extra.insert("python".into(), s.launch.python.display().to_string().into());
        if !config.python.requirements.is_empty() {
            extra.insert("requirements".into(), config.python.requirements.clone().into());
        }
        extra.insert("concurrency".into(), config.concurrency.into());
        extra.insert("codec".into(), config.codec.as_str().into());
        extra.insert("max_queue".into(), config.max_queue.into());
        extra.insert("queue_timeout_ms".into(), config.queue_timeout_ms.into());
        if let Some(mb) = config.memory_limit_mb {
            extra.insert("memory_limit_mb".into(), mb.into());
        }
        if !config.gpus.is_empty() {
            extra.insert("gpus".into(), config.gpus.clone().into());
        }
        drop(config);
        NodeInfo {
            status: None,
            pid: None,
            in_flight: Some(slots.iter().map(|x| x.in_flight.load(Ordering::Relaxed)).sum()),
            queue: Some(s.waiting.load(Ordering::Relaxed)),
            extra,
        }
    });
    let mut spec = SupervisorSpec::new(name, Strategy::OneForOne, intensity).kind("pool").info(info);
    if shared.config.read().zygote {
        // First, so the workers after it fork from it.
        spec = spec.child(zygote::zygote_child(shared.clone()));
    }
    for slot in shared.slots.read().iter() {
        spec = spec.child(worker_child(shared.clone(), slot.clone()));
    }
    spec
}

impl std::fmt::Debug for PoolStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolStream").field("worker", &self.worker).field("pid", &self.pid).finish()
    }
}

/// A stream of chunks from a pool worker, then its result.
pub struct PoolStream {
    /// The worker running it.
    pub worker: String,
    /// Its process id.
    pub pid: u32,
    /// Time spent waiting for the worker.
    pub queue: Duration,
    inner: WorkerStream,
    _lease: Lease,
}

impl Stream for PoolStream {
    type Item = Result<StreamItem>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}
