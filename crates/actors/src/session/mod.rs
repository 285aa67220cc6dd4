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
use tracing::{info, warn};

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
    report: Mutex<RestoreReport>,
}

impl Shared {
    fn persist(&self, session: &SessionShared) {
        if let Some(dir) = &self.config.snapshot_dir {
            snapshot::persist(dir, &session.state.lock().clone());
        }
    }

    /// Close or expire: no request runs after this one, the snapshot goes,
    /// the actor stops (and drops the session's objects in its worker).
    fn end(&self, session: &SessionShared, why: &str) {
        session.closed.store(true, Ordering::Release);
        let id = session.id();
        self.entries.lock().remove(&id);
        if let Some(dir) = &self.config.snapshot_dir {
            let _ = std::fs::remove_file(snapshot::snapshot_path(dir, &id));
        }
        self.dispatcher.telemetry().emit(
            None,
            EventKind::Lifecycle { actor: format!("session:{id}"), what: why.into(), detail: String::new() },
        );
        if let Some(actor) = session.actor.lock().clone() {
            actor.stop(Some(why.into()));
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
        };
        self.start(state, true).await
    }

    async fn start(&self, state: SessionState, fresh: bool) -> Result<Session> {
        let id = state.id.clone();
        {
            let entries = self.shared.entries.lock();
            if entries.contains_key(&id) {
                return Err(Error::invalid_request(format!("a session {id} already exists")).with_session(&id));
            }
            let max = self.shared.config.max_sessions;
            if entries.len() >= max {
                return Err(Error::new(
                    ErrorKind::Overloaded,
                    format!("the runtime holds {max} sessions, its maximum (sessions.max_sessions)"),
                )
                .with_retryable(true));
            }
        }
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
        self.shared
            .supervisor
            .add(child)
            .await
            .map_err(|e| Error::internal(format!("cannot start session {id}: {}", e.message())).with_session(&id))?;
        self.shared.entries.lock().insert(id.clone(), session.clone());
        if fresh {
            self.shared.persist(&session);
        }
        self.shared.dispatcher.telemetry().emit(
            None,
            EventKind::Lifecycle { actor: format!("session:{id}"), what: "started".into(), detail: String::new() },
        );
        Ok(Session { id, sessions: self.shared.clone(), session })
    }

    /// A session by id.
    pub fn get(&self, id: &str) -> Result<Session> {
        match self.shared.entries.lock().get(id) {
            Some(s) => Ok(Session { id: id.to_string(), sessions: self.shared.clone(), session: s.clone() }),
            None => Err(Error::new(ErrorKind::NotFound, format!("no session {id}")).with_session(id)),
        }
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
                    match self.start(state, false).await {
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

/// A handle on one session. Cheap to clone; requests through any clone are
/// applied one at a time, in the order they reach the session.
#[derive(Clone)]
pub struct Session {
    id: String,
    sessions: Arc<Shared>,
    session: Arc<SessionShared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Take the session for one request: in arrival order, one at a time.
    async fn enter(&self) -> Result<tokio::sync::MutexGuard<'_, WorkState>> {
        let guard = self.session.work.lock().await;
        if self.session.closed.load(Ordering::Acquire) {
            return Err(
                Error::new(ErrorKind::NotFound, format!("session {} is closed", self.id)).with_session(&self.id)
            );
        }
        *self.session.last_active.lock() = Instant::now();
        Ok(guard)
    }

    /// After a request: count it, touch the session, write the snapshot.
    fn leave(&self) {
        self.session.state.lock().requests += 1;
        *self.session.last_active.lock() = Instant::now();
        self.sessions.persist(&self.session);
    }

    /// Define a program under `name` (replacing one of the same name).
    pub async fn define(&self, name: &str, spec: impl Into<ProgramSpec>) -> Result<()> {
        let spec = spec.into();
        let mut st = self.enter().await?;
        st.define(name, Program::new(spec.clone()));
        self.session.state.lock().programs.insert(name.to_string(), spec);
        self.leave();
        Ok(())
    }

    /// Run a defined program with the session's history for it.
    pub async fn run(&self, name: &str, inputs: Map) -> Result<Output> {
        self.run_with(name, inputs, RequestOptions::default()).await
    }

    /// [`Session::run`] with request options.
    pub async fn run_with(&self, name: &str, inputs: Map, opts: RequestOptions) -> Result<Output> {
        let mut st = self.enter().await?;
        let out = run_program(&self.sessions, &self.session, &mut st, name, inputs, opts).await;
        self.leave();
        out.map_err(|e| e.with_session(&self.id))
    }

    /// Run a pipeline inside the session: its `session` steps run the
    /// session's programs (with their history), in order with the session's
    /// other requests.
    pub async fn run_pipeline(&self, pipeline: &Pipeline, inputs: Map) -> Result<PipelineResult> {
        let mut st = self.enter().await?;
        let runner = SessionStepRunner::new(&self.sessions, &self.session, &mut st);
        let out = self.sessions.pipelines.execute_in_session(pipeline, inputs, &self.id, &runner).await;
        self.leave();
        out
    }

    /// Set a variable.
    pub async fn set_var(&self, key: &str, value: Value) -> Result<()> {
        let _st = self.enter().await?;
        self.session.state.lock().variables.insert(key.to_string(), value);
        self.leave();
        Ok(())
    }

    /// The session's state (programs, history, variables).
    pub async fn state(&self) -> Result<SessionState> {
        let _st = self.enter().await?;
        let state = self.session.state.lock().clone();
        Ok(state)
    }

    /// A program's history (`dspy.History.messages`).
    pub async fn history(&self, name: &str) -> Result<Vec<Map>> {
        let _st = self.enter().await?;
        let turns = self.session.state.lock().history.get(name).cloned().unwrap_or_default();
        Ok(turns)
    }

    /// Forget a program's history.
    pub async fn clear_history(&self, name: &str) -> Result<()> {
        let _st = self.enter().await?;
        self.session.state.lock().history.remove(name);
        self.leave();
        Ok(())
    }

    /// End the session (its snapshot is deleted, its worker forgets it).
    pub async fn close(&self) -> Result<()> {
        let _st = self.enter().await?;
        self.sessions.end(&self.session, "closed");
        Ok(())
    }
}
