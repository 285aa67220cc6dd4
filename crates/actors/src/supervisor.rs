//! Erlang-style supervisors on ractor.
//!
//! ractor links actors and reports their ends to the parent; the policy is
//! here. A [`Supervisor`] starts its children in order, restarts them by
//! their [`Restart`] type and its [`Strategy`] (`one_for_one`,
//! `one_for_all`, `rest_for_one`), waits a growing back-off between
//! restarts, and when more than `max_restarts` happen within the period it
//! *escalates*: it stops its children (last started first) and fails, so its
//! own supervisor decides. On shutdown children stop in reverse start order.
//!
//! ```
//! use std::time::Duration;
//! use dspex_actors::supervisor::{ChildSpec, Restart, Strategy, Supervisor, SupervisorSpec, start_fn};
//! use dspex_core::IntensityConfig;
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//!
//! struct Echo;
//! impl Actor for Echo {
//!     type Msg = ();
//!     type State = ();
//!     type Arguments = ();
//!     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let spec = SupervisorSpec::new("demo", Strategy::OneForOne, IntensityConfig::new(3, Duration::from_secs(5)))
//!     .child(ChildSpec::new("echo", Restart::Permanent, start_fn(|| Echo, || ())));
//! let (sup, handle) = Supervisor::start(None, spec).await.unwrap();
//! let tree = Supervisor::snapshot(&sup).await.unwrap();
//! assert_eq!(tree.children[0].name, "echo");
//! sup.stop(None);
//! handle.await.unwrap();
//! # }
//! ```

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_core::{IntensityConfig, Map};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The stop reason a child gives when it ends on purpose to be replaced
/// (worker recycling): restarted at once, not counted against the intensity.
pub const RECYCLE: &str = "recycle";

/// How a child is treated when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only when it ends abnormally.
    Transient,
    /// Never restarted.
    Temporary,
}

/// Which children restart when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The failed child and those started after it.
    RestForOne,
}

/// A started child: its cell and, if it is a supervisor, its typed reference.
#[derive(Debug)]
pub struct Started {
    /// The child's cell.
    pub cell: ActorCell,
    /// Set when the child is itself a [`Supervisor`] (for snapshots and management).
    pub supervisor: Option<ActorRef<SupervisorMsg>>,
}

/// Boxed future of a child start.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<Started, ActorProcessingErr>> + Send>>;

/// Starts a child linked to the given supervisor cell, under the given name.
pub type StartFn = Arc<dyn Fn(ActorCell, String) -> StartFuture + Send + Sync>;

/// Live facts about a leaf child, for snapshots.
pub type InfoFn = Arc<dyn Fn() -> NodeInfo + Send + Sync>;

/// A start function for a plain actor built by `make` with arguments from `args`.
pub fn start_fn<A, F, G>(make: F, args: G) -> StartFn
where
    A: Actor,
    F: Fn() -> A + Send + Sync + 'static,
    G: Fn() -> A::Arguments + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let args = Arc::new(args);
    Arc::new(move |sup: ActorCell, name: String| {
        let actor = make();
        let a = args();
        Box::pin(async move {
            // Names live in the supervision tree, not in ractor's global registry:
            // several runtimes may share a process.
            let _ = name;
            let (r, _) = Actor::spawn_linked(None, actor, a, sup).await?;
            Ok(Started { cell: r.get_cell(), supervisor: None })
        })
    })
}

/// A start function for a nested supervisor.
pub fn supervisor_start_fn<F>(spec: F) -> StartFn
where
    F: Fn() -> SupervisorSpec + Send + Sync + 'static,
{
    let spec = Arc::new(spec);
    Arc::new(move |sup: ActorCell, name: String| {
        let mut s = spec();
        s.name = name.clone();
        Box::pin(async move {
            let _ = name;
            let (r, _) = Actor::spawn_linked(None, Supervisor, s, sup).await?;
            Ok(Started { cell: r.get_cell(), supervisor: Some(r) })
        })
    })
}

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique name (the actor is registered under it).
    pub name: String,
    /// Restart type.
    pub restart: Restart,
    /// How to start it.
    pub start: StartFn,
    /// Live facts for snapshots.
    pub info: Option<InfoFn>,
    /// Kind shown in snapshots (`worker`, `router`, ...).
    pub kind: String,
    /// How long a graceful stop may take before the child is killed.
    pub shutdown_timeout: Duration,
}

impl ChildSpec {
    /// A child named `name`.
    pub fn new(name: impl Into<String>, restart: Restart, start: StartFn) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            restart,
            start,
            info: None,
            kind: "actor".into(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Set the kind shown in snapshots.
    pub fn kind(mut self, kind: impl Into<String>) -> ChildSpec {
        self.kind = kind.into();
        self
    }

    /// Live facts for snapshots.
    pub fn info(mut self, info: InfoFn) -> ChildSpec {
        self.info = Some(info);
        self
    }

    /// Graceful-stop timeout.
    pub fn shutdown_timeout(mut self, d: Duration) -> ChildSpec {
        self.shutdown_timeout = d;
        self
    }
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec").field("name", &self.name).field("restart", &self.restart).finish()
    }
}

/// A supervisor's definition.
#[derive(Clone)]
pub struct SupervisorSpec {
    /// Name.
    pub name: String,
    /// Strategy.
    pub strategy: Strategy,
    /// Restart intensity and back-off.
    pub intensity: IntensityConfig,
    /// Children, in start order.
    pub children: Vec<ChildSpec>,
    /// Kind shown in snapshots.
    pub kind: String,
    /// Live facts about the supervisor itself (a pool's queue, say).
    pub info: Option<InfoFn>,
}

impl std::fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("children", &self.children)
            .finish()
    }
}

impl SupervisorSpec {
    /// A supervisor with no children yet.
    pub fn new(name: impl Into<String>, strategy: Strategy, intensity: IntensityConfig) -> SupervisorSpec {
        SupervisorSpec {
            name: name.into(),
            strategy,
            intensity,
            children: Vec::new(),
            kind: "supervisor".into(),
            info: None,
        }
    }

    /// Live facts about the supervisor itself.
    pub fn info(mut self, info: InfoFn) -> SupervisorSpec {
        self.info = Some(info);
        self
    }

    /// Add a child (started after the ones before it).
    pub fn child(mut self, child: ChildSpec) -> SupervisorSpec {
        self.children.push(child);
        self
    }

    /// Set the kind shown in snapshots.
    pub fn kind(mut self, kind: impl Into<String>) -> SupervisorSpec {
        self.kind = kind.into();
        self
    }
}

/// Live facts about an actor, as snapshots show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// A status more precise than running/restarting (`ready`, `draining`,
    /// ...); shown as the node's `status`.
    #[serde(default, skip_serializing)]
    pub status: Option<String>,
    /// OS process id (workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Requests running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// Requests waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Anything else worth showing.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map,
}

/// One node of the supervision tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// Actor name.
    pub name: String,
    /// Kind (`supervisor`, `pool`, `worker`, `router`, ...).
    pub kind: String,
    /// `running`, `restarting`, `stopped`, or the actor's own status.
    pub status: String,
    /// Times this actor was restarted by its supervisor.
    pub restarts: u32,
    /// Time since it (last) started, in milliseconds.
    pub uptime_ms: u64,
    /// Live facts.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Children, in start order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<TreeNode>,
}

impl TreeNode {
    /// Depth-first search by name.
    pub fn find(&self, name: &str) -> Option<&TreeNode> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// Every node, depth first.
    pub fn walk(&self) -> Vec<&TreeNode> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

impl std::fmt::Debug for SupervisorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SupervisorMsg")
    }
}

impl std::fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorState").field("name", &self.name).field("children", &self.slots.len()).finish()
    }
}

/// Messages a supervisor understands.
pub enum SupervisorMsg {
    /// Internal: restart these children (after back-off), in order.
    Restart {
        /// Child names.
        names: Vec<String>,
    },
    /// Add and start a child.
    AddChild(ChildSpec, RpcReplyPort<Result<(), String>>),
    /// Stop a child and forget it.
    RemoveChild(String, RpcReplyPort<bool>),
    /// The tree below this supervisor.
    Snapshot(RpcReplyPort<TreeNode>),
    /// Names of the children.
    ChildNames(RpcReplyPort<Vec<String>>),
    /// A child that is itself a supervisor, by name.
    ChildSupervisor(String, RpcReplyPort<Option<ActorRef<SupervisorMsg>>>),
    /// A running child's cell, by name.
    Child(String, RpcReplyPort<Option<ActorCell>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotStatus {
    Running,
    Restarting,
    Stopped,
}

struct Slot {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    sup: Option<ActorRef<SupervisorMsg>>,
    restarts: u32,
    started_at: Instant,
    status: SlotStatus,
    /// Ends in a row, each before the child had run `healthy_after_ms`.
    quick_failures: u32,
}

impl Slot {
    /// A child that has just started.
    fn running(spec: ChildSpec, started: Started) -> Slot {
        Slot {
            spec,
            cell: Some(started.cell),
            sup: started.supervisor,
            restarts: 0,
            started_at: Instant::now(),
            status: SlotStatus::Running,
            quick_failures: 0,
        }
    }
}

/// An actor whose only job is to own a value in the tree: stopping it drops
/// the value, whose `Drop` does the clean-up (a pipeline run's task, the
/// console's socket).
pub(crate) struct Holder<T>(parking_lot::Mutex<Option<T>>);

impl<T: Send + 'static> Holder<T> {
    /// Start one, linked to `parent`.
    pub(crate) async fn spawn(parent: ActorCell, value: T) -> Result<ActorRef<()>, ActorProcessingErr> {
        let (actor, _) = Actor::spawn_linked(None, Holder(parking_lot::Mutex::new(Some(value))), (), parent).await?;
        Ok(actor)
    }
}

impl<T: Send + 'static> Actor for Holder<T> {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<()>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        drop(self.0.lock().take());
        Ok(())
    }
}

/// The supervisor's state.
pub struct SupervisorState {
    name: String,
    strategy: Strategy,
    intensity: IntensityConfig,
    kind: String,
    info: Option<InfoFn>,
    slots: Vec<Slot>,
    history: VecDeque<Instant>,
    expected: HashSet<ActorId>,
    started: Instant,
}

/// The supervisor actor. See the [module docs](self).
#[derive(Debug)]
pub struct Supervisor;

async fn start_child(myself: &ActorRef<SupervisorMsg>, spec: &ChildSpec) -> Result<Started, ActorProcessingErr> {
    (spec.start)(myself.get_cell(), spec.name.clone()).await
}

impl SupervisorState {
    fn index(&self, id: ActorId) -> Option<usize> {
        self.slots.iter().position(|s| s.cell.as_ref().map(|c| c.get_id()) == Some(id))
    }

    /// Stop running children in reverse start order (waiting for each).
    async fn stop_children(&mut self, indexes: &[usize]) {
        for &i in indexes.iter().rev() {
            let Some(slot) = self.slots.get_mut(i) else { continue };
            if let Some(cell) = slot.cell.take() {
                self.expected.insert(cell.get_id());
                if cell.stop_and_wait(Some("shutdown".into()), Some(slot.spec.shutdown_timeout)).await.is_err() {
                    cell.kill();
                }
            }
            slot.status = SlotStatus::Restarting;
        }
    }

    /// The delay before restarting child `i`, or why the supervisor must
    /// escalate. Under `healthy_after_ms` each child is judged on its own:
    /// one that had run that long is replaced at once (it was killed from
    /// outside), one that keeps failing sooner is backed off by its own
    /// count of such failures in a row and, past `max_restarts` of them,
    /// escalates. Otherwise Erlang's rule: every restart counts within the
    /// period, and the back-off grows with that count.
    fn restart_delay(&mut self, i: usize) -> Result<Duration, String> {
        let healthy_after = Duration::from_millis(self.intensity.healthy_after_ms);
        if healthy_after.is_zero() {
            return self.record_restart();
        }
        let slot = &mut self.slots[i];
        if slot.started_at.elapsed() >= healthy_after {
            slot.quick_failures = 0;
            return Ok(Duration::ZERO);
        }
        slot.quick_failures += 1;
        let k = slot.quick_failures;
        if k > self.intensity.max_restarts {
            return Err(format!(
                "{} ended {k} times in a row within {healthy_after:?} of starting (at most {} allowed)",
                slot.spec.name, self.intensity.max_restarts
            ));
        }
        let exp = self.intensity.backoff_initial_ms.saturating_mul(1u64 << (k - 1).min(16));
        Ok(Duration::from_millis(exp.min(self.intensity.backoff_max_ms)))
    }

    fn record_restart(&mut self) -> Result<Duration, String> {
        let now = Instant::now();
        let period = Duration::from_millis(self.intensity.period_ms);
        self.history.push_back(now);
        while self.history.front().is_some_and(|t| now.duration_since(*t) > period) {
            self.history.pop_front();
        }
        let n = self.history.len() as u32;
        if n > self.intensity.max_restarts {
            return Err(format!(
                "{} restarts within {:?} (at most {} allowed)",
                n, period, self.intensity.max_restarts
            ));
        }
        let exp = self.intensity.backoff_initial_ms.saturating_mul(1u64 << (n.saturating_sub(1)).min(16));
        Ok(Duration::from_millis(exp.min(self.intensity.backoff_max_ms)))
    }
}

impl Supervisor {
    /// Start a supervisor (linked to `parent` if given).
    pub async fn start(
        parent: Option<ActorCell>,
        spec: SupervisorSpec,
    ) -> Result<(ActorRef<SupervisorMsg>, ractor::concurrency::JoinHandle<()>), ractor::SpawnErr> {
        match parent {
            Some(p) => Actor::spawn_linked(None, Supervisor, spec, p).await,
            None => Actor::spawn(None, Supervisor, spec).await,
        }
    }

    /// The tree below `sup`.
    pub async fn snapshot(sup: &ActorRef<SupervisorMsg>) -> Result<TreeNode, String> {
        ractor::call_t!(sup, SupervisorMsg::Snapshot, 5_000).map_err(|e| e.to_string())
    }

    /// Add a child to `sup` and start it.
    pub async fn add_child(sup: &ActorRef<SupervisorMsg>, child: ChildSpec) -> Result<(), String> {
        ractor::call_t!(sup, SupervisorMsg::AddChild, 120_000, child).map_err(|e| e.to_string())?
    }

    /// A child supervisor by name.
    pub async fn child_supervisor(sup: &ActorRef<SupervisorMsg>, name: &str) -> Option<ActorRef<SupervisorMsg>> {
        ractor::call_t!(sup, SupervisorMsg::ChildSupervisor, 5_000, name.to_string()).ok().flatten()
    }

    /// A running child's cell, by name.
    pub async fn child(sup: &ActorRef<SupervisorMsg>, name: &str) -> Option<ActorCell> {
        ractor::call_t!(sup, SupervisorMsg::Child, 5_000, name.to_string()).ok().flatten()
    }

    /// Stop and remove a child.
    pub async fn remove_child(sup: &ActorRef<SupervisorMsg>, name: &str) -> Result<bool, String> {
        ractor::call_t!(sup, SupervisorMsg::RemoveChild, 60_000, name.to_string()).map_err(|e| e.to_string())
    }
}

/// A supervisor below the root that children are added to at run time
/// (`sessions`, `pipelines`): the reference while it runs, looked up again
/// after its parent restarted it.
#[derive(Debug)]
pub(crate) struct DynamicSupervisor {
    root: ActorRef<SupervisorMsg>,
    name: &'static str,
    current: parking_lot::Mutex<Option<ActorRef<SupervisorMsg>>>,
}

impl DynamicSupervisor {
    pub(crate) fn new(root: ActorRef<SupervisorMsg>, name: &'static str) -> DynamicSupervisor {
        DynamicSupervisor { root, name, current: parking_lot::Mutex::new(None) }
    }

    /// Start `child` under this supervisor.
    pub(crate) async fn add(&self, child: ChildSpec) -> dspex_core::Result<()> {
        self.start(child, false).await
    }

    /// Start `child` in place of any child of the same name (one that was
    /// told to stop and is still stopping: waited for and removed first).
    pub(crate) async fn replace(&self, child: ChildSpec) -> dspex_core::Result<()> {
        self.start(child, true).await
    }

    /// Start `child`; when the supervisor is being restarted by its parent
    /// (it escalated), wait for the new one for up to a second, then fail
    /// with a retryable `overloaded` error rather than an internal one.
    async fn start(&self, child: ChildSpec, replace: bool) -> dspex_core::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let sup = match self.get().await {
                Ok(sup) => Some(sup),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => None,
            };
            if let Some(sup) = sup {
                let removed = if replace {
                    ractor::call_t!(sup, SupervisorMsg::RemoveChild, 60_000, child.name.clone()).map(|_| ())
                } else {
                    Ok(())
                };
                let added = match removed {
                    Ok(()) => ractor::call_t!(sup, SupervisorMsg::AddChild, 120_000, child.clone()),
                    Err(e) => Err(e),
                };
                match added {
                    Ok(started) => return started.map_err(dspex_core::Error::internal),
                    // The supervisor stopped under the call: look it up again.
                    Err(e) if Instant::now() >= deadline => {
                        return Err(self.unavailable(&e.to_string()));
                    }
                    Err(_) => {}
                }
            }
            *self.current.lock() = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn unavailable(&self, why: &str) -> dspex_core::Error {
        dspex_core::Error::new(
            dspex_core::ErrorKind::Overloaded,
            format!("the {} supervisor is restarting ({why}); retry shortly", self.name),
        )
        .with_retryable(true)
    }

    async fn get(&self) -> dspex_core::Result<ActorRef<SupervisorMsg>> {
        let cached = self.current.lock().clone();
        if let Some(r) = cached.filter(|r| r.get_status() == ractor::ActorStatus::Running) {
            return Ok(r);
        }
        let found =
            Supervisor::child_supervisor(&self.root, self.name).await.ok_or_else(|| self.unavailable("not running"))?;
        *self.current.lock() = Some(found.clone());
        Ok(found)
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        spec: SupervisorSpec,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            name: spec.name.clone(),
            strategy: spec.strategy,
            intensity: spec.intensity,
            kind: spec.kind.clone(),
            info: spec.info.clone(),
            slots: Vec::with_capacity(spec.children.len()),
            history: VecDeque::new(),
            expected: HashSet::new(),
            started: Instant::now(),
        };
        // Ordered start: each child is up before the next one starts.
        for child in spec.children {
            let started = match start_child(&myself, &child).await {
                Ok(s) => s,
                Err(e) => {
                    let all: Vec<usize> = (0..state.slots.len()).collect();
                    state.stop_children(&all).await;
                    return Err(format!("{}: child {} failed to start: {e}", spec.name, child.name).into());
                }
            };
            state.slots.push(Slot::running(child, started));
        }
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // Reverse start order.
        let all: Vec<usize> = (0..state.slots.len()).collect();
        state.stop_children(&all).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart { names } => {
                // Each slot restarts once: a slot already running again (restarted
                // by an earlier message of an overlapping group) is skipped.
                for name in names {
                    let Some(i) = state.slots.iter().position(|s| s.spec.name == name) else { continue };
                    if state.slots[i].status != SlotStatus::Restarting {
                        continue;
                    }
                    let spec = state.slots[i].spec.clone();
                    match start_child(&myself, &spec).await {
                        Ok(started) => {
                            let slot = &mut state.slots[i];
                            slot.cell = Some(started.cell);
                            slot.sup = started.supervisor;
                            slot.status = SlotStatus::Running;
                            slot.started_at = Instant::now();
                            info!(supervisor = %state.name, child = %name, restarts = slot.restarts, "child restarted");
                        }
                        Err(e) => {
                            warn!(supervisor = %state.name, child = %name, error = %e, "restart failed");
                            // A failed restart counts as another (quick) failure.
                            state.slots[i].started_at = Instant::now();
                            match state.restart_delay(i) {
                                Ok(delay) => {
                                    state.slots[i].restarts += 1;
                                    schedule(&myself, vec![name], delay);
                                }
                                Err(why) => return escalate(state, why).await,
                            }
                            return Ok(());
                        }
                    }
                }
            }
            SupervisorMsg::AddChild(child, reply) => {
                if state.slots.iter().any(|s| s.spec.name == child.name && s.status != SlotStatus::Stopped) {
                    let _ = reply.send(Err(format!("{} already has a child named {}", state.name, child.name)));
                    return Ok(());
                }
                state.slots.retain(|s| s.spec.name != child.name);
                match start_child(&myself, &child).await {
                    Ok(started) => {
                        state.slots.push(Slot::running(child, started));
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("{} failed to start: {e}", child.name)));
                    }
                }
            }
            SupervisorMsg::RemoveChild(name, reply) => {
                let Some(i) = state.slots.iter().position(|s| s.spec.name == name) else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                state.stop_children(&[i]).await;
                state.slots.remove(i);
                let _ = reply.send(true);
            }
            SupervisorMsg::Snapshot(reply) => {
                let mut children = Vec::with_capacity(state.slots.len());
                for slot in &state.slots {
                    let mut node = match (&slot.sup, slot.status) {
                        (Some(sup), SlotStatus::Running) => match Supervisor::snapshot(sup).await {
                            Ok(n) => n,
                            Err(_) => leaf(slot),
                        },
                        _ => leaf(slot),
                    };
                    node.restarts = slot.restarts;
                    node.uptime_ms = slot.started_at.elapsed().as_millis() as u64;
                    if slot.status != SlotStatus::Running {
                        node.status = status_name(slot.status).into();
                    }
                    children.push(node);
                }
                let info = state.info.as_ref().map(|f| f()).unwrap_or_default();
                let _ = reply.send(TreeNode {
                    name: state.name.clone(),
                    kind: state.kind.clone(),
                    status: info.status.clone().unwrap_or_else(|| "running".into()),
                    restarts: 0,
                    uptime_ms: state.started.elapsed().as_millis() as u64,
                    info,
                    children,
                });
            }
            SupervisorMsg::ChildNames(reply) => {
                let _ = reply.send(state.slots.iter().map(|s| s.spec.name.clone()).collect());
            }
            SupervisorMsg::Child(name, reply) => {
                let found = state.slots.iter().find(|s| s.spec.name == name).and_then(|s| s.cell.clone());
                let _ = reply.send(found);
            }
            SupervisorMsg::ChildSupervisor(name, reply) => {
                let found = state.slots.iter().find(|s| s.spec.name == name).and_then(|s| s.sup.clone());
                let _ = reply.send(found);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, abnormal, why) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell.clone(), true, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let normal = matches!(reason.as_deref(), None | Some("normal") | Some("shutdown") | Some(RECYCLE));
                (cell.clone(), !normal, reason.clone().unwrap_or_else(|| "normal".into()))
            }
            _ => return Ok(()),
        };
        if state.expected.remove(&cell.get_id()) {
            return Ok(());
        }
        let Some(i) = state.index(cell.get_id()) else { return Ok(()) };
        let name = state.slots[i].spec.name.clone();
        state.slots[i].cell = None;
        let restart = match state.slots[i].spec.restart {
            Restart::Permanent => true,
            Restart::Transient => abnormal,
            Restart::Temporary => false,
        };
        if !restart {
            info!(supervisor = %state.name, child = %name, reason = %why, "child ended; not restarted");
            match state.slots[i].spec.restart {
                // Finished dynamic children leave the tree.
                Restart::Temporary | Restart::Transient => {
                    state.slots.remove(i);
                }
                Restart::Permanent => state.slots[i].status = SlotStatus::Stopped,
            }
            return Ok(());
        }
        // A planned recycle restarts at once and does not count as a failure.
        let delay = if why == RECYCLE {
            info!(supervisor = %state.name, child = %name, "child recycled; restarting");
            Duration::ZERO
        } else {
            warn!(supervisor = %state.name, child = %name, reason = %why, "child ended; restarting");
            match state.restart_delay(i) {
                Ok(d) => d,
                Err(why) => return escalate(state, why).await,
            }
        };
        let affected: Vec<usize> = match state.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::OneForAll => (0..state.slots.len()).collect(),
            Strategy::RestForOne => (i..state.slots.len()).collect(),
        };
        let others: Vec<usize> = affected.iter().copied().filter(|&j| j != i).collect();
        state.stop_children(&others).await;
        for &j in &affected {
            state.slots[j].status = SlotStatus::Restarting;
            state.slots[j].restarts += 1;
        }
        let names = affected.iter().map(|&j| state.slots[j].spec.name.clone()).collect();
        schedule(&myself, names, delay);
        Ok(())
    }
}

fn schedule(myself: &ActorRef<SupervisorMsg>, names: Vec<String>, delay: Duration) {
    if delay.is_zero() {
        let _ = myself.cast(SupervisorMsg::Restart { names });
        return;
    }
    let me = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = me.cast(SupervisorMsg::Restart { names });
    });
}

async fn escalate(state: &mut SupervisorState, why: String) -> Result<(), ActorProcessingErr> {
    warn!(supervisor = %state.name, reason = %why, "restart intensity exceeded; escalating");
    let all: Vec<usize> = (0..state.slots.len()).collect();
    state.stop_children(&all).await;
    Err(format!("{} escalated: {why}", state.name).into())
}

fn status_name(s: SlotStatus) -> &'static str {
    match s {
        SlotStatus::Running => "running",
        SlotStatus::Restarting => "restarting",
        SlotStatus::Stopped => "stopped",
    }
}

fn leaf(slot: &Slot) -> TreeNode {
    let info = slot.spec.info.as_ref().map(|f| f()).unwrap_or_default();
    TreeNode {
        name: slot.spec.name.clone(),
        kind: slot.spec.kind.clone(),
        status: info.status.clone().unwrap_or_else(|| status_name(slot.status).into()),
        restarts: slot.restarts,
        uptime_ms: slot.started_at.elapsed().as_millis() as u64,
        info,
        children: Vec::new(),
    }
}
