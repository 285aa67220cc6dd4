//! The zygote actor (`zygote:POOL`): keeps the pool's zygote running, so
//! its workers are forked in milliseconds instead of started cold.
//!
//! It is the pool supervisor's first child: it starts the zygote in
//! `pre_start`, so the workers that start after it fork from it. When the
//! zygote dies (its forked workers die with it, and the pool restarts them)
//! the actor fails and its supervisor restarts it; meanwhile workers start
//! cold. A zygote that cannot start, or that refuses to fork (a module
//! started a thread at import), never takes the pool down: the node says
//! why, workers start cold, and a failed start is retried every few seconds.
//!
//! While the zygote can fork, a keeper task holds `standby` idle workers
//! forked and ready (named `standby:POOL:N`, not in the tree as workers; the
//! zygote node counts them). A worker actor starting a slot promotes one —
//! renames it to the slot's name, which also proves it answers — instead of
//! forking, and the keeper forks a replacement.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dspex_bridge::{Worker, Zygote};
use dspex_core::{EventKind, Map};
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::worker::worker_config;
use super::PoolShared;
use crate::supervisor::{ChildSpec, NodeInfo, Restart, StartFn, Started};

/// How long to wait before trying again to start a zygote that failed.
const RETRY: Duration = Duration::from_secs(5);

/// The pool's zygote and what the tree shows of it.
#[derive(Debug, Default)]
pub(super) struct ZygoteStatus {
    status: String,
    detail: Option<String>,
    zygote: Option<Zygote>,
    /// The task keeping the standby workers topped up.
    keeper: Option<AbortHandle>,
}

impl ZygoteStatus {
    /// The zygote to fork from: running and willing to fork.
    pub(super) fn forking(&self) -> Option<Zygote> {
        self.zygote.clone().filter(|z| z.refusal().is_none() && z.is_alive())
    }
}

/// The pool's idle forked workers, ready to take a slot.
#[derive(Default)]
pub(super) struct Standby {
    idle: Mutex<VecDeque<Worker>>,
    /// Wakes the keeper: one was taken or died (a stored permit, so a wake-up
    /// between its check and its wait is not lost).
    wanted: Notify,
}

impl Standby {
    /// A live standby worker, renamed to `name`, if there is one. Python
    /// learns the name in the background (not to delay the slot); a worker
    /// that does not answer that within a second is broken and killed, and
    /// its slot replaces it as after any crash.
    pub(super) fn promote(&self, name: &str) -> Option<Worker> {
        loop {
            let w = self.idle.lock().pop_front()?;
            self.wanted.notify_one();
            if !w.is_ready() {
                continue;
            }
            let told = w.rename(name, Duration::from_secs(1));
            let unanswered = w.clone();
            tokio::spawn(async move {
                if let Err(e) = told.await {
                    warn!(worker = %unanswered.name(), error = %e, "a promoted standby worker did not answer; killing it");
                    unanswered.kill();
                }
            });
            return Some(w);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.idle.lock().len()
    }

    /// The standby workers' pids, oldest first (what the tree shows).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.idle.lock().iter().map(Worker::pid).collect()
    }

    fn forget(&self, pid: u32) {
        self.idle.lock().retain(|w| w.pid() != pid);
        self.wanted.notify_one();
    }

    fn clear(&self) {
        for w in self.idle.lock().drain(..) {
            w.kill();
        }
    }
}

/// Keep the pool's standby workers forked while `zygote` can fork.
async fn keep_standby(shared: Arc<PoolShared>, zygote: Zygote) {
    let mut made = 0u64;
    loop {
        let want = {
            let c = shared.config.read();
            // A worker's GPU is fixed when it starts: no interchangeable standby.
            if c.gpus.is_empty() {
                c.standby
            } else {
                0
            }
        };
        if shared.standby.len() >= want {
            shared.standby.wanted.notified().await;
            continue;
        }
        if zygote.refusal().is_some() || !zygote.is_alive() {
            return;
        }
        made += 1;
        let mut config = worker_config(&shared, &format!("standby:{}:{made}", shared.name), 0);
        config.zygote = Some(zygote.clone());
        match Worker::fork(config).await {
            Ok(w) => {
                let (watch, pool) = (w.clone(), shared.clone());
                tokio::spawn(async move {
                    watch.exited().await;
                    pool.standby.forget(watch.pid());
                });
                info!(pool = %shared.name, worker = %w.name(), pid = w.pid(), "standby worker ready");
                shared.standby.idle.lock().push_back(w);
            }
            Err(e) => {
                warn!(pool = %shared.name, error = %e, "cannot fork a standby worker; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

pub(super) fn zygote_child(shared: Arc<PoolShared>) -> ChildSpec {
    let name = format!("zygote:{}", shared.name);
    let info_shared = shared.clone();
    let start: StartFn = Arc::new(move |parent, name| {
        let actor = ZygoteActor { shared: shared.clone(), name };
        Box::pin(async move {
            let (r, _) = Actor::spawn_linked(None, actor, (), parent).await?;
            Ok(Started { cell: r.get_cell(), supervisor: None })
        })
    });
    ChildSpec::new(name, Restart::Permanent, start)
        .kind("zygote")
        .info(Arc::new(move || {
            let s = info_shared.zygote_status.lock();
            let mut extra = Map::new();
            if let Some(z) = &s.zygote {
                extra.insert("forks".into(), z.forks().into());
                extra.insert("standby".into(), info_shared.standby.pids().into());
            }
            if let Some(d) = &s.detail {
                extra.insert("detail".into(), d.clone().into());
            }
            NodeInfo {
                status: Some(s.status.clone()),
                pid: s.zygote.as_ref().map(Zygote::pid),
                in_flight: None,
                queue: None,
                extra,
            }
        }))
        .shutdown_timeout(Duration::from_secs(5))
}

struct ZygoteActor {
    shared: Arc<PoolShared>,
    name: String,
}

pub(super) enum ZygoteMsg {
    /// Try to start the zygote (again).
    Start,
    /// The zygote process ended.
    Exited(String),
}

impl ZygoteActor {
    fn set(&self, status: &str, zygote: Option<Zygote>, detail: Option<String>) {
        let mut s = self.shared.zygote_status.lock();
        s.status = status.to_string();
        s.detail = detail;
        if let Some(keeper) = s.keeper.take() {
            keeper.abort();
        }
        self.shared.standby.clear();
        if let Some(z) = zygote.as_ref().filter(|z| z.refusal().is_none()) {
            s.keeper = Some(tokio::spawn(keep_standby(self.shared.clone(), z.clone())).abort_handle());
        }
        s.zygote = zygote;
    }

    async fn start(&self, myself: &ActorRef<ZygoteMsg>) {
        self.set("starting", None, None);
        let template = worker_config(&self.shared, &self.name, 0);
        match Zygote::start(self.name.clone(), &template).await {
            Ok(z) => {
                let (status, detail) = match z.refusal() {
                    None => ("ready", None),
                    Some(why) => ("cold", Some(format!("refuses to fork: {why}"))),
                };
                self.shared.telemetry.emit(
                    None,
                    EventKind::Lifecycle {
                        actor: self.name.clone(),
                        what: "started".into(),
                        detail: format!(
                            "pid {}{}",
                            z.pid(),
                            detail.as_ref().map(|d| format!(", {d}")).unwrap_or_default()
                        ),
                    },
                );
                let watch = z.clone();
                let me = myself.clone();
                tokio::spawn(async move {
                    let exit = watch.exited().await;
                    let _ = me.cast(ZygoteMsg::Exited(exit.describe()));
                });
                self.set(status, Some(z), detail);
            }
            Err(e) => {
                warn!(zygote = %self.name, error = %e, "the zygote did not start; workers start cold");
                self.set("failed", None, Some(e.to_string()));
                self.shared.telemetry.emit(
                    None,
                    EventKind::Lifecycle {
                        actor: self.name.clone(),
                        what: "start_failed".into(),
                        detail: e.to_string(),
                    },
                );
                let me = myself.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    let _ = me.cast(ZygoteMsg::Start);
                });
            }
        }
    }
}

impl Actor for ZygoteActor {
    type Msg = ZygoteMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<ZygoteMsg>, _: ()) -> std::result::Result<(), ActorProcessingErr> {
        // Before the workers start (they are the supervisor's next children),
        // so they fork from it.
        self.start(&myself).await;
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<ZygoteMsg>, _: &mut ()) -> std::result::Result<(), ActorProcessingErr> {
        let z = self.shared.zygote_status.lock().zygote.take();
        self.set("stopped", None, None);
        drop(z);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ZygoteMsg>,
        msg: ZygoteMsg,
        _: &mut (),
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            ZygoteMsg::Start => {
                if self.shared.zygote_status.lock().zygote.is_none() {
                    self.start(&myself).await;
                }
                Ok(())
            }
            ZygoteMsg::Exited(how) => {
                self.set("restarting", None, Some(format!("exited: {how}")));
                self.shared.telemetry.emit(
                    None,
                    EventKind::Lifecycle { actor: self.name.clone(), what: "exited".into(), detail: how.clone() },
                );
                Err(format!("{} exited: {how}", self.name).into())
            }
        }
    }
}

/// The zygote's state, as the pool keeps it.
pub(super) type ZygoteCell = Mutex<ZygoteStatus>;
