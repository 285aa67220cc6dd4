//! The worker actor: one Python process of a pool — started once the actor
//! runs (so a pool's workers start in parallel), ready after its handshake,
//! watched until it exits, and recycled past its limits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_bridge::{ChildLimits, Worker, WorkerConfig};
use dspex_core::EventKind;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::{PoolShared, Slot, DOWN, DRAINING, READY, STARTING};
use crate::supervisor::{ChildSpec, Restart, StartFn, Started, RECYCLE};

pub(super) fn worker_child(shared: Arc<PoolShared>, slot: Arc<Slot>) -> ChildSpec {
    let info_slot = slot.clone();
    let name = slot.name.clone();
    let start: StartFn = Arc::new(move |parent, _name| {
        let actor = WorkerActor { shared: shared.clone(), slot: slot.clone() };
        Box::pin(async move {
            let (r, _) = Actor::spawn_linked(None, actor, (), parent).await?;
            Ok(Started { cell: r.get_cell(), supervisor: None })
        })
    });
    ChildSpec::new(name, Restart::Permanent, start)
        .kind("worker")
        .info(Arc::new(move || info_slot.info()))
        .shutdown_timeout(Duration::from_secs(15))
}

struct WorkerActor {
    shared: Arc<PoolShared>,
    slot: Arc<Slot>,
}

/// Messages of a worker actor.
pub(super) enum WorkerMsg {
    /// The process ended (generation of the process it was about).
    Exited(u64, String),
    /// Time to check the recycling limits.
    Tick,
    /// Draining is over: stop the process and be replaced.
    Recycle(String),
    /// Drain, then recycle (a rolling restart).
    Drain(String),
}

struct WorkerState {
    slot: Arc<Slot>,
    /// This incarnation's number; the slot is only touched while it is the current one.
    generation: u64,
    worker: Option<Worker>,
    started: Instant,
    recycling: bool,
}

impl Drop for WorkerState {
    fn drop(&mut self) {
        // Whatever way the actor ended (killed by its supervisor included),
        // the slot is down and the process does not outlive it.
        {
            let mut current = self.slot.worker.write();
            if self.slot.generation.load(Ordering::Acquire) == self.generation {
                self.slot.state.store(DOWN, Ordering::Release);
                current.take();
            }
        }
        if let Some(w) = self.worker.as_ref().filter(|w| w.is_ready()) {
            w.kill();
        }
    }
}

/// The bridge's settings for worker `name` (slot `index`) of the pool: its
/// interpreter, environment, modules and limits. The zygote is started from
/// the same settings, so its forks get what a cold start would.
pub(super) fn worker_config(shared: &PoolShared, name: &str, index: usize) -> WorkerConfig {
    let cfg = shared.config.read().clone();
    let launch = &shared.launch;
    let mut w = WorkerConfig::new(name.to_string(), launch.python.clone());
    w.python_path = launch.python_path.clone();
    w.python_path.extend(cfg.python_path.iter().cloned());
    w.env = launch.env.clone();
    for (k, v) in &cfg.env {
        w.env.retain(|(ek, _)| ek != k);
        w.env.push((k.clone(), v.clone()));
    }
    w.concurrency = cfg.concurrency.max(1);
    if let Some(mb) = cfg.max_frame_mb {
        // The length prefix is 32 bits.
        w.max_frame = usize::try_from(mb.clamp(1, 4095) * 1024 * 1024).unwrap_or(w.max_frame);
    }
    w.limits = ChildLimits {
        address_space: cfg.memory_limit_mb.map(|mb| mb * 1024 * 1024),
        nice: cfg.nice,
        cpu_affinity: cfg.cpu_affinity.clone(),
    };
    if !cfg.gpus.is_empty() {
        w.cuda_visible_devices = Some(cfg.gpus[index % cfg.gpus.len()].clone());
    }
    w.user_modules = cfg.modules.clone();
    w.preload_dspy = cfg.preload_dspy;
    w.heartbeat = (cfg.heartbeat_ms > 0).then(|| Duration::from_millis(cfg.heartbeat_ms));
    w.spin = Duration::from_micros(cfg.spin_us);
    w.codec = cfg.codec;
    w.lm_gateway = launch.lm_gateway.clone();
    w.registry = launch.registry.clone();
    w
}

impl WorkerActor {
    fn worker_config(&self) -> WorkerConfig {
        let mut w = worker_config(&self.shared, &self.slot.name, self.slot.index);
        // Forked when the pool's zygote is up; cold otherwise.
        w.zygote = self.shared.zygote_status.lock().forking();
        w
    }
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<WorkerMsg>, _: ()) -> std::result::Result<WorkerState, ActorProcessingErr> {
        // The process starts in `post_start`, so the workers of a pool start
        // in parallel; the slot is ready only once its handshake is done.
        let generation = {
            let _current = self.slot.worker.write();
            self.slot.state.store(STARTING, Ordering::Release);
            self.slot.generation.fetch_add(1, Ordering::AcqRel) + 1
        };
        Ok(WorkerState { slot: self.slot.clone(), generation, worker: None, started: Instant::now(), recycling: false })
    }

    async fn post_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        state: &mut WorkerState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // A standby worker, when the zygote keeps one, is here already.
        let (worker, how) = match self.shared.standby.promote(&self.slot.name) {
            Some(w) => (Ok(w), "standby"),
            None => (Worker::spawn(self.worker_config()).await, "started"),
        };
        let worker = worker.map_err(|e| {
            *self.slot.last_exit.lock() = Some(format!("start failed: {e}"));
            self.shared.telemetry.emit(
                None,
                EventKind::Lifecycle {
                    actor: self.slot.name.clone(),
                    what: "start_failed".into(),
                    detail: e.to_string(),
                },
            );
            ActorProcessingErr::from(format!("{} failed to start: {e}", self.slot.name))
        })?;
        let generation = state.generation;
        state.worker = Some(worker.clone());
        state.started = Instant::now();
        {
            let mut current = self.slot.worker.write();
            if self.slot.generation.load(Ordering::Acquire) != generation {
                return Err(format!("{}: replaced while starting", self.slot.name).into());
            }
            *current = Some(worker.clone());
            self.slot.state.store(READY, Ordering::Release);
        }
        *self.slot.actor.lock() = Some(myself.clone());
        // Capacity appeared: wake queued requests.
        self.shared.notify.notify_waiters();
        for _ in 0..self.shared.concurrency() {
            self.shared.notify.notify_one();
        }
        let pid = worker.pid();
        info!(worker = %self.slot.name, pid, how, "worker ready");
        self.shared.telemetry.emit(
            None,
            EventKind::Lifecycle {
                actor: self.slot.name.clone(),
                what: "started".into(),
                detail: if how == "standby" {
                    format!("pid {pid}, promoted from standby")
                } else {
                    format!("pid {pid}")
                },
            },
        );
        // The monitor: a worker that stops taking requests fails this actor,
        // so the supervisor replaces it — as soon as its pipes close, not
        // after the kernel has torn the process down; the exit status
        // completes `last_exit` when it is reaped.
        let (watch, me) = (worker.clone(), myself.clone());
        tokio::spawn(async move {
            let why = watch.closed().await;
            let _ = me.cast(WorkerMsg::Exited(generation, why));
        });
        let cfg = self.shared.config.read().clone();
        if cfg.max_requests.is_some() || cfg.ttl_secs.is_some() || cfg.max_rss_mb.is_some() {
            let me = myself.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    if me.cast(WorkerMsg::Tick).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<WorkerMsg>,
        state: &mut WorkerState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if state.slot.generation.load(Ordering::Acquire) == state.generation {
            state.slot.state.store(DRAINING, Ordering::Release);
        }
        if let Some(w) = state.worker.as_ref().filter(|w| w.is_ready()) {
            w.stop(Duration::from_secs(5)).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Exited(generation, why) => {
                if generation != state.generation || state.recycling {
                    return Ok(());
                }
                if self.slot.generation.load(Ordering::Acquire) == generation {
                    self.slot.state.store(DOWN, Ordering::Release);
                }
                *self.slot.last_exit.lock() = Some(why.clone());
                if let Some(w) = state.worker.clone() {
                    let slot = self.slot.clone();
                    let said = why.clone();
                    tokio::spawn(async move {
                        let exit = w.exited().await;
                        let mut last = slot.last_exit.lock();
                        if last.as_deref() == Some(said.as_str()) {
                            *last = Some(format!("{said} ({})", exit.describe()));
                        }
                    });
                }
                warn!(worker = %self.slot.name, reason = %why, "worker process ended");
                self.shared.telemetry.emit(
                    None,
                    EventKind::Lifecycle { actor: self.slot.name.clone(), what: "exited".into(), detail: why.clone() },
                );
                return Err(format!("{}: {why}", self.slot.name).into());
            }
            WorkerMsg::Tick => {
                let Some(worker) = state.worker.clone().filter(|_| !state.recycling) else { return Ok(()) };
                let cfg = self.shared.config.read().clone();
                let served = worker.completed();
                let why = if cfg.max_requests.is_some_and(|m| served >= m) {
                    Some(format!("served {served} requests"))
                } else if cfg.ttl_secs.is_some_and(|t| state.started.elapsed() >= Duration::from_secs(t)) {
                    Some(format!("older than {}s", cfg.ttl_secs.unwrap_or(0)))
                } else {
                    cfg.max_rss_mb.and_then(|limit| {
                        worker
                            .resident_bytes()
                            .map(|b| b / (1024 * 1024))
                            .filter(|&rss| rss >= limit)
                            .map(|rss| format!("resident memory {rss} MiB"))
                    })
                };
                if let Some(why) = why {
                    let _ = myself.cast(WorkerMsg::Drain(why));
                }
            }
            WorkerMsg::Drain(why) => {
                if state.worker.is_some() && !state.recycling {
                    state.recycling = true;
                    self.slot.state.store(DRAINING, Ordering::Release);
                    info!(worker = %self.slot.name, reason = %why, "recycling worker");
                    let slot = self.slot.clone();
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let end = Instant::now() + Duration::from_secs(30);
                        while slot.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < end {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        let _ = me.cast(WorkerMsg::Recycle(why));
                    });
                }
            }
            WorkerMsg::Recycle(why) => {
                if let Some(w) = &state.worker {
                    w.stop(Duration::from_secs(5)).await;
                }
                *self.slot.last_exit.lock() = Some(format!("recycled: {why}"));
                self.shared.telemetry.emit(
                    None,
                    EventKind::Lifecycle { actor: self.slot.name.clone(), what: "recycled".into(), detail: why },
                );
                myself.stop(Some(RECYCLE.into()));
            }
        }
        Ok(())
    }
}
