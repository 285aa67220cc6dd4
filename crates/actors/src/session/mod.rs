//! Sessions: state that outlives the Python process serving it.
//!
//! A session is a supervised actor (`session:<id>`, transient, under
//! `sessions`) over state owned in Rust — the programs it defined, a
//! `dspy.History` per program, variables. Its requests are applied one at a
//! time, in the order they arrive, under a FIFO lock that the caller's task
//! takes: no mailbox hop on the hot path (a mailbox round trip costs more
//! than a native call; see `benches/sessions_pipelines.rs`); the actor
//! handles idle expiry and clean-up. Python work is pinned to one worker of the session's
//! pool, where the session's programs are kept built (`session.define`).
//! When that worker dies the session picks another one and defines its
//! programs there again from what it owns; the request in flight at the
//! crash is retried transparently when it is idempotent (program runs are,
//! by default), and gets a classified error otherwise. Programs the native
//! engine can run run natively, pinned to nothing.
//!
//! History is kept in the shape of `dspy.History`: `{"messages": [turn,
//! ...]}` where a turn holds the inputs and outputs of one call. A program
//! whose signature has a `dspy.History` input gets the session's history for
//! it unless the caller passes one, and each call appends its turn — so a
//! multi-turn prompt is exactly what DSPy's ChatAdapter builds for the same
//! history.
//!
//! Idle sessions expire after their TTL; past `max_sessions` creation fails
//! with `Overloaded`. With a snapshot directory every change is written to
//! `<dir>/<id>.session` atomically (temporary file, fsync, rename) with a
//! length and a checksum, and a runtime started on the same directory
//! restores the sessions; a torn or corrupt file is reported and moved
//! aside, never half-loaded.
//!
//! In a cluster (a runtime that joined one before creating the session),
//! the state is also stored in the cluster with its owner node and a
//! revision, and every change is written there — compare-and-set on the
//! revision this node last wrote — before the request returns. Any node can
//! [`Sessions::open`] any session: requests are forwarded to the owner while
//! it answers; when it is gone (NATS has no route to it, or its membership
//! lease runs out while a request waits) the first node to claim the
//! stored revision owns the
//! session and rebuilds its Python state on its own workers. A node that
//! lost a session (its write was refused: another node wrote first) drops
//! its copy and sends the request to the new owner, so state written after
//! a takeover is never overwritten by the node it was taken from.

mod actor;
mod run;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dspex_core::{Error, ErrorKind, EventKind, Map, ProgramSpec, Result, SessionConfig, Value};
use parking_lot::Mutex;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn, Instrument};

use crate::dispatch::Dispatcher;
use crate::pipeline::{Pipeline, PipelineResult, PipelineRuns};
use crate::program::Program;
use crate::request::{new_trace_id, Output, RequestOptions};
use crate::supervisor::{ChildSpec, DynamicSupervisor, NodeInfo, Restart, Started};

use actor::{SessionActor, SessionMsg};
use run::{run_program, SessionStepRunner, WorkState};
pub use snapshot::{decode_snapshot, encode_snapshot};

/// What a session owns. Serializable: this is what snapshots hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// Session id.
    pub id: String,
    /// Programs defined, by name.
    pub programs: BTreeMap<String, ProgramSpec>,
    /// Per program, the turns so far (`dspy.History.messages`).
    pub history: BTreeMap<String, Vec<Map>>,
    /// Variables.
    pub variables: Map,
    /// The pool Python work goes to.
    pub pool: String,
    /// Idle time after which the session expires, in milliseconds.
    pub ttl_ms: u64,
    /// Creation time (ms since the Unix epoch).
    pub created_ms: u64,
    /// Requests applied.
    pub requests: u64,
    /// Turns of history kept per program, the latest ones, when this
    /// session chose its own (otherwise `sessions.history_turns` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_turns: Option<usize>,
    /// The tenant the session's LM calls count against (a request's own
    /// `tenant` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// One request to a session, as a cluster node forwards it to the session's
/// owner (and as the owner applies it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SessionCall {
    /// [`Session::define`].
    Define {
        /// Program name.
        name: String,
        /// Its spec.
        spec: Box<ProgramSpec>,
    },
    /// [`Session::run_with`] (the deadline travels beside the call).
    Run {
        /// Program name.
        name: String,
        /// Inputs.
        inputs: Map,
        /// The caller's options.
        #[serde(default)]
        options: Box<RequestOptions>,
    },
    /// [`Session::set_var`].
    SetVar {
        /// Variable name.
        key: String,
        /// Its value.
        value: Value,
    },
    /// [`Session::state`].
    State,
    /// [`Session::history`].
    History {
        /// Program name.
        name: String,
    },
    /// [`Session::clear_history`].
    ClearHistory {
        /// Program name.
        name: String,
    },
    /// [`Session::close`].
    Close,
}

impl SessionCall {
    /// Whether the call may be applied again after an attempt whose result
    /// was lost (writes are idempotent; a run unless marked otherwise).
    fn repeatable(&self) -> bool {
        !matches!(self, SessionCall::Run { options, .. } if options.idempotent == Some(false))
    }
}

/// What a [`SessionCall`] answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub enum SessionAnswer {
    /// Applied; nothing to return.
    Done,
    /// A run's output.
    Output(Box<Output>),
    /// The session's state.
    State(Box<SessionState>),
    /// A program's history.
    History(Vec<Map>),
}

fn unexpected(answer: SessionAnswer) -> Error {
    Error::new(ErrorKind::Protocol, format!("a session request got an answer of the wrong shape: {answer:?}"))
}

/// How to create a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Id (one is made up otherwise).
    pub id: Option<String>,
    /// Pool for Python work (the router's default pool otherwise).
    pub pool: Option<String>,
    /// Idle expiry (the configured one otherwise).
    pub ttl: Option<Duration>,
    /// Turns of history kept per program (`sessions.history_turns` otherwise).
    pub history_turns: Option<usize>,
    /// The tenant whose LM budget the session's requests count against.
    pub tenant: Option<String>,
}

impl SessionOptions {
    /// Use this id.
    pub fn id(mut self, id: impl Into<String>) -> SessionOptions {
        self.id = Some(id.into());
        self
    }

    /// Expire after this much idle time.
    pub fn ttl(mut self, ttl: Duration) -> SessionOptions {
        self.ttl = Some(ttl);
        self
    }

    /// Count the session's LM calls against `tenant`'s budget.
    pub fn tenant(mut self, tenant: impl Into<String>) -> SessionOptions {
        self.tenant = Some(tenant.into());
        self
    }

    /// Pin Python work to this pool.
    pub fn pool(mut self, pool: impl Into<String>) -> SessionOptions {
        self.pool = Some(pool.into());
        self
    }

    /// Keep only the latest `turns` turns of each program's history (what
    /// later requests see, and what the session holds).
    pub fn history_turns(mut self, turns: usize) -> SessionOptions {
        self.history_turns = Some(turns);
        self
    }
}

/// A session as `list` shows it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionInfo {
    /// Id.
    pub id: String,
    /// Programs defined.
    pub programs: Vec<String>,
    /// Turns of history, all programs together.
    pub turns: usize,
    /// Requests applied.
    pub requests: u64,
    /// The worker Python work is pinned to, if any yet.
    pub worker: Option<String>,
    /// Times the session rebuilt its Python state on another worker.
    pub rebuilds: u64,
    /// Idle time so far, in milliseconds.
    pub idle_ms: u64,
    /// Why the last snapshot write failed (a full disk, say), until one
    /// succeeds again; the session goes on in memory meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_error: Option<String>,
}

/// What a runtime found in its snapshot directory at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RestoreReport {
    /// Sessions restored.
    pub restored: Vec<String>,
    /// Files that could not be loaded (moved aside to `*.corrupt`), and why.
    pub rejected: Vec<(PathBuf, String)>,
}

// ------------------------------------------------------------------ manager

/// A session: its state, owned in Rust, and what its actor and its handles
/// share. Requests take `work` (a FIFO lock) so they apply one at a time in
/// the order they arrive, without a mailbox hop on the hot path.
struct SessionShared {
    state: Mutex<SessionState>,
    work: tokio::sync::Mutex<WorkState>,
    last_active: Mutex<Instant>,
    /// The pinned worker: (index, pid, name).
    pinned: Mutex<Option<(usize, u32, String)>>,
    rebuilds: AtomicU64,
    closed: AtomicBool,
    actor: Mutex<Option<ActorRef<SessionMsg>>>,
    sessions: Weak<Shared>,
    /// The cluster store's revision of this node's last write (`None`: the
    /// session is not stored in a cluster).
    revision: Mutex<Option<u64>>,
    /// The last snapshot write's failure, cleared by the next success.
    snapshot_error: Mutex<Option<String>>,
}

impl SessionShared {
    fn id(&self) -> String {
        self.state.lock().id.clone()
    }

    fn info(&self) -> SessionInfo {
        let s = self.state.lock();
        SessionInfo {
            id: s.id.clone(),
            programs: s.programs.keys().cloned().collect(),
            turns: s.history.values().map(Vec::len).sum(),
            requests: s.requests,
            worker: self.pinned.lock().as_ref().map(|p| p.2.clone()),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            idle_ms: self.last_active.lock().elapsed().as_millis() as u64,
            snapshot_error: self.snapshot_error.lock().clone(),
        }
    }
}

/// What every session of a runtime shares: the request path, the settings,
/// the registry and the `sessions` supervisor.
struct Shared {
    dispatcher: Dispatcher,
    config: SessionConfig,
    pipelines: Arc<PipelineRuns>,
    supervisor: DynamicSupervisor,
    entries: Mutex<HashMap<String, Arc<SessionShared>>>,
    /// Held while a session starts here (created, claimed, restored): one
    /// at a time, so two requests racing to claim the same session on this
    /// node start it once.
    starting: tokio::sync::Mutex<()>,
    report: Mutex<RestoreReport>,
}

/// Proof that [`Shared::starting`] is held.
type Starting<'a> = tokio::sync::MutexGuard<'a, ()>;

impl Shared {
    /// Write the session's state where it is kept: the snapshot file, and
    /// the cluster store (fenced: `Conflict` when another node wrote since
    /// this one did — the session is then dropped here, it lives elsewhere).
    async fn persist(&self, session: &SessionShared) -> Result<()> {
        let state = session.state.lock().clone();
        self.snapshot(session, &state);
        let revision = *session.revision.lock();
        let (Some(revision), Some(cluster)) = (revision, self.dispatcher.cluster()) else { return Ok(()) };
        match cluster.session_store(cluster.node(), &state, Some(revision)).await {
            Ok(next) => {
                *session.revision.lock() = Some(next);
                Ok(())
            }
            Err(e) => {
                if e.kind() == ErrorKind::Conflict {
                    warn!(session = %state.id, "another node owns this session now; dropping this node's copy");
                    self.forget(session, "taken over elsewhere");
                }
                Err(e.with_session(&state.id))
            }
        }
    }

    /// Close or expire: no request runs after this one, the snapshot and
    /// the cluster's copy go, the actor stops (and drops the session's
    /// objects in its worker). `Conflict` (and nothing removed from the
    /// cluster) when another node owns the session now.
    async fn end(&self, session: &SessionShared, why: &str) -> Result<()> {
        let revision = *session.revision.lock();
        if let (Some(revision), Some(cluster)) = (revision, self.dispatcher.cluster()) {
            let id = session.id();
            if let Err(e) = cluster.session_remove(&id, revision).await {
                if e.kind() == ErrorKind::Conflict {
                    self.forget(session, "taken over elsewhere");
                }
                return Err(e.with_session(&id));
            }
        }
        self.forget(session, why);
        Ok(())
    }

    /// Write the snapshot file, when sessions have a snapshot directory. A
    /// failure is reported (a warning, an `error` event, the session's
    /// `snapshot_error`) but does not fail the request: its state is in
    /// memory, and the next write that succeeds covers it.
    fn snapshot(&self, session: &SessionShared, state: &SessionState) {
        let Some(dir) = &self.config.snapshot_dir else { return };
        let failed = snapshot::persist(dir, state).err();
        let mut last = session.snapshot_error.lock();
        match failed {
            Some(e) => {
                if last.is_none() {
                    warn!(session = %state.id, error = %e, "cannot write the session snapshot");
                }
                self.dispatcher.telemetry().emit(
                    None,
                    EventKind::Error {
                        op: format!("session.snapshot {}", state.id),
                        kind: e.kind(),
                        message: e.message().to_string(),
                    },
                );
                *last = Some(e.message().to_string());
            }
            None => {
                if last.take().is_some() {
                    info!(session = %state.id, "session snapshots are written again");
                }
            }
        }
    }

    /// Drop the session here: registry, snapshot, actor.
    fn forget(&self, session: &SessionShared, why: &str) {
        session.closed.store(true, Ordering::Release);
        let id = session.id();
        // Only this incarnation: a newer one of the same id may hold the entry.
        let current = {
            let mut entries = self.entries.lock();
            let current = entries.get(&id).is_some_and(|e| std::ptr::eq(e.as_ref(), session));
            if current {
                entries.remove(&id);
            }
            current
        };
        if let (true, Some(dir)) = (current, &self.config.snapshot_dir) {
            let _ = std::fs::remove_file(snapshot::snapshot_path(dir, &id));
        }
        self.dispatcher.telemetry().emit(
            None,
            EventKind::Lifecycle { actor: format!("session:{id}"), what: why.into(), detail: String::new() },
        );
        if let Some(actor) = session.actor.lock().clone() {
            // A normal stop: the session ended on purpose (the event above
            // says why), so its supervisor neither restarts it nor counts
            // it against the restart intensity.
            actor.stop(None);
        }
    }
}

/// The sessions of a runtime: create, get, list. From
/// [`Runtime::sessions`](crate::Runtime::sessions).
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("count", &self.shared.entries.lock().len()).finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Sessions {
    pub(crate) fn new(
        dispatcher: Dispatcher,
        config: SessionConfig,
        pipelines: Arc<PipelineRuns>,
        supervisor: DynamicSupervisor,
    ) -> Sessions {
        Sessions {
            shared: Arc::new(Shared {
                dispatcher,
                config,
                pipelines,
                supervisor,
                entries: Mutex::default(),
                starting: tokio::sync::Mutex::new(()),
                report: Mutex::default(),
            }),
        }
    }

    /// Create a session (fails with `Overloaded` past `max_sessions`).
    pub async fn create(&self, opts: SessionOptions) -> Result<Session> {
        let cfg = &self.shared.config;
        let id = opts.id.unwrap_or_else(|| format!("s-{}", new_trace_id()));
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::invalid_request(format!(
                "session id {id:?} must be non-empty letters, digits, `-`, `_` or `.`"
            )));
        }
        let pool = opts.pool.unwrap_or_else(|| self.shared.dispatcher.default_pool());
        // A native-only runtime has sessions too: their programs must run natively.
        if !self.shared.dispatcher.pools().is_empty() {
            self.shared.dispatcher.pool(&pool)?;
        }
        let state = SessionState {
            id: id.clone(),
            programs: BTreeMap::new(),
            history: BTreeMap::new(),
            variables: Map::new(),
            pool,
            ttl_ms: opts.ttl.unwrap_or(Duration::from_secs(cfg.idle_ttl_secs)).as_millis() as u64,
            created_ms: now_ms(),
            requests: 0,
            // Only the session's own choice is kept: the runtime's setting
            // applies at each request, so a changed config reaches every session.
            history_turns: opts.history_turns,
            tenant: opts.tenant,
        };
        let one = self.shared.starting.lock().await;
        let Some(cluster) = self.shared.dispatcher.cluster().cloned() else {
            let session = self.start(&one, state, true, None).await?;
            return Ok(self.handle(&id, Home::Here(session)));
        };
        // In a cluster the id is the cluster's: claimed before anything starts.
        self.check_room(&id)?;
        let revision = cluster.session_store(cluster.node(), &state, None).await.map_err(|e| {
            if e.kind() == ErrorKind::Conflict {
                Error::new(ErrorKind::Conflict, format!("a session {id} already exists in the cluster"))
                    .with_retryable(false)
                    .with_session(&id)
            } else {
                e.with_session(&id)
            }
        })?;
        match self.start(&one, state, true, Some(revision)).await {
            Ok(s) => Ok(self.handle(&id, Home::Here(s))),
            Err(e) => {
                let _ = cluster.session_remove(&id, revision).await;
                Err(e)
            }
        }
    }

    /// Refuse an id in use here, or a session past `max_sessions`.
    fn check_room(&self, id: &str) -> Result<()> {
        let entries = self.shared.entries.lock();
        if entries.contains_key(id) {
            return Err(Error::new(ErrorKind::Conflict, format!("a session {id} already exists"))
                .with_retryable(false)
                .with_session(id));
        }
        let max = self.shared.config.max_sessions;
        if entries.len() >= max {
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!("the runtime holds {max} sessions, its maximum (sessions.max_sessions)"),
            )
            .with_retryable(true));
        }
        Ok(())
    }

    async fn start(
        &self,
        _one: &Starting<'_>,
        state: SessionState,
        fresh: bool,
        revision: Option<u64>,
    ) -> Result<Arc<SessionShared>> {
        let id = state.id.clone();
        self.check_room(&id)?;
        let programs = state.programs.iter().map(|(k, v)| (k.clone(), Program::new(v.clone()))).collect();
        let session = Arc::new(SessionShared {
            state: Mutex::new(state),
            work: tokio::sync::Mutex::new(WorkState::new(programs)),
            last_active: Mutex::new(Instant::now()),
            pinned: Mutex::new(None),
            rebuilds: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            actor: Mutex::new(None),
            sessions: Arc::downgrade(&self.shared),
            revision: Mutex::new(revision),
            snapshot_error: Mutex::new(None),
        });
        let start_session = session.clone();
        let start: crate::supervisor::StartFn = Arc::new(move |parent, _name| {
            let actor = SessionActor::new(start_session.clone());
            let session = start_session.clone();
            Box::pin(async move {
                let (r, _) = ractor::Actor::spawn_linked(None, actor, (), parent).await?;
                // A restarted session actor takes over the same session.
                *session.actor.lock() = Some(r.clone());
                Ok(Started { cell: r.get_cell(), supervisor: None })
            })
        });
        let info_session = session.clone();
        let child = ChildSpec::new(format!("session:{id}"), Restart::Transient, start).kind("session").info(Arc::new(
            move || {
                let i = info_session.info();
                let mut extra = Map::new();
                extra.insert("programs".into(), json!(i.programs));
                extra.insert("turns".into(), i.turns.into());
                extra.insert("requests".into(), i.requests.into());
                extra.insert("rebuilds".into(), i.rebuilds.into());
                if let Some(w) = i.worker {
                    extra.insert("worker".into(), w.into());
                }
                NodeInfo { extra, ..Default::default() }
            },
        ));
        // An earlier incarnation of this session here (dropped when another
        // node took it, now back) may still be stopping: replace it. (No
        // live one can share the name: `starting` is held and the id is
        // not in `entries`.)
        self.shared
            .supervisor
            .replace(child)
            .await
            .map_err(|e| Error::internal(format!("cannot start session {id}: {}", e.message())).with_session(&id))?;
        self.shared.entries.lock().insert(id.clone(), session.clone());
        if fresh {
            let state = session.state.lock().clone();
            self.shared.snapshot(&session, &state);
        }
        self.shared.dispatcher.telemetry().emit(
            None,
            EventKind::Lifecycle { actor: format!("session:{id}"), what: "started".into(), detail: String::new() },
        );
        Ok(session)
    }

    /// A session held by this runtime, by id (see [`Sessions::open`] for
    /// one anywhere in the cluster).
    pub fn get(&self, id: &str) -> Result<Session> {
        let held = self.shared.entries.lock().get(id).cloned();
        held.map(|s| self.handle(id, Home::Here(s))).ok_or_else(|| not_found(id))
    }

    fn handle(&self, id: &str, home: Home) -> Session {
        Session { id: id.to_string(), sessions: self.shared.clone(), home: Arc::new(Mutex::new(home)) }
    }

    /// A session by id, wherever it lives: this runtime's, or — in a
    /// cluster — the one another live node owns (requests through the
    /// handle are forwarded there), or one whose owner is gone, which this
    /// node then takes over (compare-and-set on its stored revision: of
    /// nodes racing for it exactly one wins, and the others forward to it).
    pub async fn open(&self, id: &str) -> Result<Session> {
        let home = self.locate(id, None, None).await?;
        Ok(self.handle(id, home))
    }

    /// Where session `id` lives now, taking it over when its owner is gone
    /// (or is `unreachable`, as a request to it just found), or when the
    /// store names this node but the session is not held here (this node
    /// restarted under its name, or a start after a claim failed).
    async fn locate(&self, id: &str, unreachable: Option<&str>, deadline: Option<Instant>) -> Result<Home> {
        if let Some(s) = self.shared.entries.lock().get(id) {
            return Ok(Home::Here(s.clone()));
        }
        let Some(cluster) = self.shared.dispatcher.cluster().cloned() else { return Err(not_found(id)) };
        let here = cluster.node().to_string();
        for _ in 0..4 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("session {id}: the deadline passed while looking for its owner"),
                )
                .with_session(id)
                .with_retryable(true));
            }
            let stored = cluster.session_load(id).await?.ok_or_else(|| not_found(id))?;
            let owner = stored.owner.clone();
            // Another node's: forwarded there, even when this node's view of
            // the membership says it is gone (a view can be stale — this node
            // may just have healed from a partition); a dead owner answers
            // "no responders" at once and a cut-off one fails its liveness
            // check within half a lease, and then it is `unreachable`.
            if owner != here && !owner.is_empty() && unreachable != Some(owner.as_str()) {
                return Ok(Home::Node(owner));
            }
            // A draining node hands sessions over and takes none back: the
            // caller (a forwarded one looks again) goes to another node.
            if !cluster.accepting() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("node {here} is draining: it takes no session over (open {id} on another node)"),
                )
                .with_session(id)
                .with_node(here.clone())
                .with_retryable(true));
            }
            // One claim at a time here: a request that raced another on this
            // node finds the session started when it gets the lock.
            let one = self.shared.starting.lock().await;
            if let Some(s) = self.shared.entries.lock().get(id) {
                return Ok(Home::Here(s.clone()));
            }
            self.check_room(id)?;
            match cluster.session_store(&here, &stored.state, Some(stored.revision)).await {
                Ok(revision) => {
                    let session = self.start(&one, stored.state, true, Some(revision)).await?;
                    info!(session = %id, from = %owner, "took the session over");
                    self.shared.dispatcher.telemetry().emit(
                        None,
                        EventKind::Lifecycle {
                            actor: format!("session:{id}"),
                            what: "taken over".into(),
                            detail: if owner.is_empty() { "handed over".into() } else { format!("from node {owner}") },
                        },
                    );
                    return Ok(Home::Here(session));
                }
                // Another node claimed it first: look again (and forward to it).
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e.with_session(id)),
            }
        }
        Err(Error::new(ErrorKind::Conflict, format!("session {id} kept changing owner while this node looked for it"))
            .with_session(id)
            .with_retryable(true))
    }

    /// Apply a call forwarded by another node to a session the cluster
    /// says this node owns. Never forwarded further: a session not held
    /// here is claimed from the store if the store still names this node
    /// (it restarted under its name), and is `Conflict` — the caller looks
    /// again — if another node owns it now; `NotFound` if the cluster has
    /// no such session. For cluster implementations.
    /// The call runs under `deadline` (this node's clock) and in trace
    /// `trace_id`.
    pub async fn apply_forwarded(
        &self,
        id: &str,
        call: SessionCall,
        deadline: Instant,
        trace_id: String,
    ) -> Result<SessionAnswer> {
        let session = match self.locate(id, None, Some(deadline)).await? {
            Home::Here(s) => s,
            Home::Node(other) => {
                return Err(Error::new(ErrorKind::Conflict, format!("session {id} is held by node {other} now"))
                    .with_session(id)
                    .with_retryable(true))
            }
        };
        apply(&self.shared, &session, call, deadline, &trace_id).await.map_err(|e| e.with_session(id))
    }

    /// Hand this node's cluster sessions over (a draining node): each is
    /// stored as owned by nobody and dropped here, so the next request for
    /// it, on any node, takes it over at once. A session still busy after
    /// `grace` stays here (taken over once this node is gone). The number
    /// handed over.
    pub async fn hand_over(&self, grace: Duration) -> usize {
        let Some(cluster) = self.shared.dispatcher.cluster().cloned() else { return 0 };
        let all: Vec<Arc<SessionShared>> = self.shared.entries.lock().values().cloned().collect();
        let until = tokio::time::Instant::now() + grace;
        let mut handed = 0;
        for session in all {
            // Between requests only: the state written is the latest.
            let Ok(_work) = tokio::time::timeout_at(until, session.work.lock()).await else {
                warn!(session = %session.id(), "busy past the drain's grace: not handed over");
                continue;
            };
            let Some(revision) = *session.revision.lock() else { continue };
            let state = session.state.lock().clone();
            match cluster.session_store("", &state, Some(revision)).await {
                Ok(_) => handed += 1,
                Err(e) => warn!(session = %state.id, error = %e, "cannot hand the session over"),
            }
            self.shared.forget(&session, "handed over");
        }
        handed
    }

    /// After joining a cluster: drop the sessions restored from snapshots
    /// that the cluster also stores — its copy is the one the cluster
    /// fences, and may be newer (another node took the session over while
    /// this one was down); the next request takes the session from there.
    /// Restored sessions the cluster does not know stay, local only. The
    /// number dropped. For cluster implementations.
    pub async fn defer_to_cluster(&self) -> usize {
        let Some(cluster) = self.shared.dispatcher.cluster().cloned() else { return 0 };
        let local: Vec<Arc<SessionShared>> =
            self.shared.entries.lock().values().filter(|s| s.revision.lock().is_none()).cloned().collect();
        let mut dropped = 0;
        for session in local {
            let _work = session.work.lock().await;
            let id = session.id();
            match cluster.session_load(&id).await {
                Ok(Some(stored)) => {
                    info!(session = %id, owner = %stored.owner, "the cluster holds this restored session: using its copy");
                    self.shared.forget(&session, "superseded by the cluster's copy");
                    dropped += 1;
                }
                Ok(None) => {}
                Err(e) => warn!(session = %id, error = %e, "cannot check a restored session against the cluster"),
            }
        }
        dropped
    }

    /// Every session.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self.shared.entries.lock().values().map(|s| s.info()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// What was restored from the snapshot directory at start.
    pub fn restore_report(&self) -> RestoreReport {
        self.shared.report.lock().clone()
    }

    /// Restore every snapshot in the configured directory.
    pub(crate) async fn restore(&self) {
        let Some(dir) = self.shared.config.snapshot_dir.clone() else { return };
        let mut report = RestoreReport::default();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "cannot create the session snapshot directory");
            return;
        }
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
        files.sort();
        for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "session")) {
            let loaded = std::fs::read(&path)
                .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))
                .and_then(|b| decode_snapshot(&b));
            match loaded {
                Ok(state) => {
                    let id = state.id.clone();
                    let one = self.shared.starting.lock().await;
                    match self.start(&one, state, false, None).await {
                        Ok(_) => report.restored.push(id),
                        Err(e) => report.rejected.push((path, e.to_string())),
                    }
                }
                Err(e) => {
                    let aside = path.with_extension("session.corrupt");
                    let _ = std::fs::rename(&path, &aside);
                    warn!(file = %path.display(), error = %e, "session snapshot rejected (moved aside)");
                    self.shared.dispatcher.telemetry().emit(
                        None,
                        EventKind::Error {
                            op: "session.restore".into(),
                            kind: ErrorKind::Io,
                            message: format!("{}: {}", path.display(), e.message()),
                        },
                    );
                    report.rejected.push((path, e.message().to_string()));
                }
            }
        }
        info!(restored = report.restored.len(), rejected = report.rejected.len(), "sessions restored");
        *self.shared.report.lock() = report;
    }
}

// ------------------------------------------------------------------ handle

fn not_found(id: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("no session {id}")).with_session(id)
}

/// Where a handle's requests go.
#[derive(Clone)]
enum Home {
    /// This runtime holds the session.
    Here(Arc<SessionShared>),
    /// Another cluster node owns it: requests are forwarded there.
    Node(String),
}

/// A handle on one session. Cheap to clone; requests through any clone are
/// applied one at a time, in the order they reach the session — here, or on
/// the cluster node that owns it.
#[derive(Clone)]
pub struct Session {
    id: String,
    sessions: Arc<Shared>,
    home: Arc<Mutex<Home>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("owner", &self.owner()).finish()
    }
}

/// Take the session for one request: in arrival order, one at a time.
async fn enter(session: &SessionShared, deadline: Option<Instant>) -> Result<tokio::sync::MutexGuard<'_, WorkState>> {
    let guard = match (session.work.try_lock(), deadline) {
        // Free: no timer needed (and no span: nothing was waited for).
        (Ok(guard), _) => guard,
        (Err(_), Some(d)) => tokio::time::timeout_at(d.into(), session.work.lock())
            .instrument(lock_span(session))
            .await
            .map_err(|_| {
                let id = session.id();
                Error::new(
                    ErrorKind::Timeout,
                    format!("session {id} was busy with earlier requests until the deadline"),
                )
                .with_session(&id)
                .with_retryable(true)
            })?,
        (Err(_), None) => session.work.lock().instrument(lock_span(session)).await,
    };
    if session.closed.load(Ordering::Acquire) {
        let id = session.id();
        // Dropped here because another node took it: the caller looks again.
        let kind = if session.revision.lock().is_some() { ErrorKind::Conflict } else { ErrorKind::NotFound };
        return Err(Error::new(kind, format!("session {id} is closed here")).with_session(&id));
    }
    *session.last_active.lock() = Instant::now();
    Ok(guard)
}

/// Waiting for a busy session (its earlier requests run first).
fn lock_span(session: &SessionShared) -> tracing::Span {
    tracing::debug_span!("dspex.session.lock", session = %session.id())
}

/// After a request that changed the session: count it, touch it, write it.
async fn commit(sessions: &Shared, session: &SessionShared) -> Result<()> {
    session.state.lock().requests += 1;
    *session.last_active.lock() = Instant::now();
    sessions.persist(session).await
}

/// Apply one call to a session this runtime holds, before `deadline`.
async fn apply(
    sessions: &Shared,
    session: &SessionShared,
    call: SessionCall,
    deadline: Instant,
    trace_id: &str,
) -> Result<SessionAnswer> {
    let mut st = enter(session, Some(deadline)).await?;
    let answer = match call {
        SessionCall::Define { name, spec } => {
            st.define(&name, Program::new((*spec).clone()));
            session.state.lock().programs.insert(name, *spec);
            Ok(SessionAnswer::Done)
        }
        SessionCall::Run { name, inputs, options } => {
            // The caller's options, under the deadline and trace id this
            // request runs with here.
            let opts = RequestOptions { deadline: Some(deadline), trace_id: Some(trace_id.to_string()), ..*options };
            run_program(sessions, session, &mut st, &name, inputs, opts)
                .await
                .map(|out| SessionAnswer::Output(Box::new(out)))
        }
        SessionCall::SetVar { key, value } => {
            session.state.lock().variables.insert(key, value);
            Ok(SessionAnswer::Done)
        }
        SessionCall::ClearHistory { name } => {
            session.state.lock().history.remove(&name);
            Ok(SessionAnswer::Done)
        }
        // Reads change nothing.
        SessionCall::State => return Ok(SessionAnswer::State(Box::new(session.state.lock().clone()))),
        SessionCall::History { name } => {
            return Ok(SessionAnswer::History(session.state.lock().history.get(&name).cloned().unwrap_or_default()))
        }
        SessionCall::Close => {
            sessions.end(session, "closed").await?;
            return Ok(SessionAnswer::Done);
        }
    };
    // A failed run counts too (and its state is written: nothing is lost).
    commit(sessions, session).await?;
    answer
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cluster node the session's requests go to, when another node
    /// owns it (`None`: this runtime holds it).
    pub fn owner(&self) -> Option<String> {
        match &*self.home.lock() {
            Home::Here(_) => None,
            Home::Node(n) => Some(n.clone()),
        }
    }

    /// Send `call` where the session lives; when it moved (taken over,
    /// handed over, its owner gone), find it again and send it there — at
    /// most three times, and a run marked not idempotent only if it surely
    /// did not run.
    /// The request's deadline and trace come from `opts` (a run's own
    /// options, or the defaults).
    async fn perform(&self, call: SessionCall) -> Result<SessionAnswer> {
        let defaults = RequestOptions::default();
        let opts = match &call {
            SessionCall::Run { options, .. } => options,
            _ => &defaults,
        };
        let deadline = opts
            .deadline
            .unwrap_or_else(|| Instant::now() + opts.timeout.unwrap_or(self.sessions.dispatcher.request_timeout()));
        let trace_id = opts.trace_id.clone().unwrap_or_else(new_trace_id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let home = self.home.lock().clone();
            let (result, unreachable) = match &home {
                Home::Here(session) => (apply(&self.sessions, session, call.clone(), deadline, &trace_id).await, None),
                Home::Node(owner) => {
                    let Some(cluster) = self.sessions.dispatcher.cluster() else { return Err(not_found(&self.id)) };
                    match cluster.session_forward(owner, &self.id, &call, deadline, &trace_id).await {
                        // The owner answered: with its result or its own error.
                        Ok(answered) => (answered, None),
                        // Nobody answered: the owner is gone, or the deadline passed.
                        Err(e) => {
                            let gone = e.kind() == ErrorKind::Transport;
                            (Err(e), gone.then(|| owner.clone()))
                        }
                    }
                }
            };
            let err = match result {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            // Moved: a write refused or the owner says another node holds it
            // now (`conflict`), or the owner cannot be reached.
            let moved = err.kind() == ErrorKind::Conflict || unreachable.is_some();
            // A refused write means the run happened but is not kept; a lost
            // owner may have run it. Either way only a repeatable call goes again.
            if !moved || !call.repeatable() || attempt >= 3 || Instant::now() >= deadline {
                return Err(err.with_session(&self.id));
            }
            let found = self.sessions_handle().locate(&self.id, unreachable.as_deref(), Some(deadline)).await?;
            *self.home.lock() = found;
        }
    }

    fn sessions_handle(&self) -> Sessions {
        Sessions { shared: self.sessions.clone() }
    }

    /// Define a program under `name` (replacing one of the same name).
    pub async fn define(&self, name: &str, spec: impl Into<ProgramSpec>) -> Result<()> {
        let call = SessionCall::Define { name: name.to_string(), spec: Box::new(spec.into()) };
        self.perform(call).await.map(drop)
    }

    /// Run a defined program with the session's history for it.
    pub async fn run(&self, name: &str, inputs: Map) -> Result<Output> {
        self.run_with(name, inputs, RequestOptions::default()).await
    }

    /// [`Session::run`] with request options.
    pub async fn run_with(&self, name: &str, inputs: Map, opts: RequestOptions) -> Result<Output> {
        match self.perform(SessionCall::Run { name: name.to_string(), inputs, options: Box::new(opts) }).await? {
            SessionAnswer::Output(out) => Ok(*out),
            other => Err(unexpected(other)),
        }
    }

    /// Run a pipeline inside the session: its `session` steps run the
    /// session's programs (with their history), in order with the session's
    /// other requests. Runs where the session is held: on another node's
    /// session it fails with `Unsupported` (open the session there, or run
    /// the pipeline outside the session — its Python steps can still land
    /// on any node's pools).
    pub async fn run_pipeline(&self, pipeline: &Pipeline, inputs: Map) -> Result<PipelineResult> {
        let session = match &*self.home.lock() {
            Home::Here(s) => s.clone(),
            Home::Node(n) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("session {} is held by node {n}: run its pipelines there", self.id),
                )
                .with_session(&self.id)
                .with_node(n.clone()))
            }
        };
        let mut st = enter(&session, None).await?;
        let runner = SessionStepRunner::new(&self.sessions, &session, &mut st);
        let out = self.sessions.pipelines.execute_in_session(pipeline, inputs, &self.id, &runner).await;
        commit(&self.sessions, &session).await?;
        out
    }

    /// Set a variable.
    pub async fn set_var(&self, key: &str, value: Value) -> Result<()> {
        let call = SessionCall::SetVar { key: key.to_string(), value };
        self.perform(call).await.map(drop)
    }

    /// The session's state (programs, history, variables).
    pub async fn state(&self) -> Result<SessionState> {
        match self.perform(SessionCall::State).await? {
            SessionAnswer::State(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }

    /// A program's history (`dspy.History.messages`).
    pub async fn history(&self, name: &str) -> Result<Vec<Map>> {
        match self.perform(SessionCall::History { name: name.to_string() }).await? {
            SessionAnswer::History(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Forget a program's history.
    pub async fn clear_history(&self, name: &str) -> Result<()> {
        let call = SessionCall::ClearHistory { name: name.to_string() };
        self.perform(call).await.map(drop)
    }

    /// End the session (its snapshot is deleted, its worker forgets it).
    pub async fn close(&self) -> Result<()> {
        self.perform(SessionCall::Close).await.map(drop)
    }
}
