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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dspex_core::{DspyType, Error, ErrorKind, EventKind, FieldType, Map, ProgramSpec, Result, Route, Value};
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::pipeline::{Pipeline, PipelineResult};
use crate::pool::PoolCallOptions;
use crate::program::Program;
use crate::runtime::{Inner, Output, RequestOptions, Runtime};
use crate::supervisor::{ChildSpec, NodeInfo, Restart, Started, Supervisor};

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

// ------------------------------------------------------------------ snapshots

const MAGIC: &str = "DSPEX-SESSION";
const VERSION: u32 = 1;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Encode a snapshot: a header line (`DSPEX-SESSION 1 <len> <fnv64>`) and
/// the state as JSON of exactly `len` bytes.
pub fn encode_snapshot(state: &SessionState) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(state).map_err(|e| Error::internal(format!("cannot encode session: {e}")))?;
    let mut out = format!("{MAGIC} {VERSION} {} {:016x}\n", body.len(), fnv1a(&body)).into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a snapshot; a torn, truncated or altered file is an error that
/// says which.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SessionState> {
    let corrupt = |why: String| Error::new(ErrorKind::Io, why);
    let nl = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| corrupt("no header line (torn file?)".into()))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("the header is not text".into()))?;
    let parts: Vec<&str> = header.split(' ').collect();
    let [magic, version, len, sum] = parts.as_slice() else {
        return Err(corrupt(format!("malformed header {header:?}")));
    };
    if *magic != MAGIC {
        return Err(corrupt(format!("not a dspex session snapshot (header {header:?})")));
    }
    if version.parse::<u32>().ok() != Some(VERSION) {
        return Err(corrupt(format!("snapshot version {version} is not {VERSION}")));
    }
    let len: usize = len.parse().map_err(|_| corrupt(format!("bad length {len:?}")))?;
    let body = &bytes[nl + 1..];
    if body.len() != len {
        return Err(corrupt(format!("torn snapshot: header promises {len} bytes, file holds {}", body.len())));
    }
    if format!("{:016x}", fnv1a(body)) != *sum {
        return Err(corrupt("checksum mismatch: the snapshot was altered or half-written".into()));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(format!("snapshot body does not decode: {e}")))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

// ------------------------------------------------------------------ manager

struct Entry {
    shared: Arc<SessionShared>,
}

/// A session: its state, owned in Rust, and what its actor and its handles
/// share. Requests take `work` (a FIFO lock) so they apply one at a time in
/// the order they arrive, without a mailbox hop on the hot path.
struct SessionShared {
    state: Mutex<SessionState>,
    work: tokio::sync::Mutex<WorkState>,
    last_active: Mutex<Instant>,
    pinned: Mutex<Option<(usize, u32, String)>>,
    rebuilds: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    actor: Mutex<Option<ActorRef<SessionMsg>>>,
    rt: Weak<Inner>,
}

impl SessionShared {
    fn info(&self) -> SessionInfo {
        let s = self.state.lock();
        SessionInfo {
            id: s.id.clone(),
            programs: s.programs.keys().cloned().collect(),
            turns: s.history.values().map(Vec::len).sum(),
            requests: s.requests,
            worker: self.pinned.lock().as_ref().map(|p| p.2.clone()),
            rebuilds: self.rebuilds.load(std::sync::atomic::Ordering::Relaxed),
            idle_ms: self.last_active.lock().elapsed().as_millis() as u64,
        }
    }
}

/// The session registry of a runtime.
#[derive(Default)]
pub(crate) struct SessionRegistry {
    entries: Mutex<HashMap<String, Entry>>,
    report: Mutex<RestoreReport>,
}

/// The sessions of a runtime: create, get, list. From [`Runtime::sessions`].
#[derive(Clone)]
pub struct Sessions {
    rt: Runtime,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("count", &self.rt.inner.sessions.entries.lock().len()).finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Sessions {
    pub(crate) fn new(rt: Runtime) -> Sessions {
        Sessions { rt }
    }

    /// Create a session (fails with `Overloaded` past `max_sessions`).
    pub async fn create(&self, opts: SessionOptions) -> Result<Session> {
        let cfg = &self.rt.inner.config;
        let id = opts.id.unwrap_or_else(|| format!("s-{}", crate::runtime::new_trace_id()));
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::invalid_request(format!(
                "session id {id:?} must be non-empty letters, digits, `-`, `_` or `.`"
            )));
        }
        let pool = opts.pool.unwrap_or_else(|| cfg.router.default_pool.clone());
        self.rt.pool(&pool)?;
        let state = SessionState {
            id: id.clone(),
            programs: BTreeMap::new(),
            history: BTreeMap::new(),
            variables: Map::new(),
            pool,
            ttl_ms: opts.ttl.unwrap_or(Duration::from_secs(cfg.sessions.idle_ttl_secs)).as_millis() as u64,
            created_ms: now_ms(),
            requests: 0,
            // Only the session's own choice is kept: the runtime's setting
            // applies at each request, so a changed config reaches every session.
            history_turns: opts.history_turns,
        };
        self.start(state, true).await
    }

    async fn start(&self, state: SessionState, fresh: bool) -> Result<Session> {
        let inner = &self.rt.inner;
        let id = state.id.clone();
        {
            let entries = inner.sessions.entries.lock();
            if entries.contains_key(&id) {
                return Err(Error::invalid_request(format!("a session {id} already exists")).with_session(&id));
            }
            let max = inner.config.sessions.max_sessions;
            if entries.len() >= max {
                return Err(Error::new(
                    ErrorKind::Overloaded,
                    format!("the runtime holds {max} sessions, its maximum (sessions.max_sessions)"),
                )
                .with_retryable(true));
            }
        }
        let sup = self.rt.dynamic_supervisor("sessions").await?;
        let programs = state.programs.iter().map(|(k, v)| (k.clone(), Program::new(v.clone()))).collect();
        let shared = Arc::new(SessionShared {
            state: Mutex::new(state),
            work: tokio::sync::Mutex::new(WorkState { programs, defined_on: HashSet::new() }),
            last_active: Mutex::new(Instant::now()),
            pinned: Mutex::new(None),
            rebuilds: Default::default(),
            closed: Default::default(),
            actor: Mutex::new(None),
            rt: Arc::downgrade(&self.rt.inner),
        });
        let start_shared = shared.clone();
        let start: crate::supervisor::StartFn = Arc::new(move |parent, _name| {
            let actor = SessionActor { shared: start_shared.clone() };
            let shared = start_shared.clone();
            Box::pin(async move {
                let (r, _) = Actor::spawn_linked(None, actor, (), parent).await?;
                // A restarted session actor takes over the same session.
                *shared.actor.lock() = Some(r.clone());
                Ok(Started { cell: r.get_cell(), supervisor: None })
            })
        });
        let info_shared = shared.clone();
        let child = ChildSpec::new(format!("session:{id}"), Restart::Transient, start).kind("session").info(Arc::new(
            move || {
                let i = info_shared.info();
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
        Supervisor::add_child(&sup, child)
            .await
            .map_err(|e| Error::internal(format!("cannot start session {id}: {e}")).with_session(&id))?;
        inner.sessions.entries.lock().insert(id.clone(), Entry { shared: shared.clone() });
        if fresh {
            persist(inner, &shared);
        }
        inner.telemetry.emit(
            None,
            EventKind::Lifecycle { actor: format!("session:{id}"), what: "started".into(), detail: String::new() },
        );
        Ok(Session { id, rt: self.rt.clone(), shared })
    }

    /// A session by id.
    pub fn get(&self, id: &str) -> Result<Session> {
        let entries = self.rt.inner.sessions.entries.lock();
        match entries.get(id) {
            Some(e) => Ok(Session { id: id.to_string(), rt: self.rt.clone(), shared: e.shared.clone() }),
            None => Err(Error::new(ErrorKind::NotFound, format!("no session {id}")).with_session(id)),
        }
    }

    /// Every session.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> =
            self.rt.inner.sessions.entries.lock().values().map(|e| e.shared.info()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// What was restored from the snapshot directory at start.
    pub fn restore_report(&self) -> RestoreReport {
        self.rt.inner.sessions.report.lock().clone()
    }

    /// Restore every snapshot in the configured directory.
    pub(crate) async fn restore(&self) {
        let Some(dir) = self.rt.inner.config.sessions.snapshot_dir.clone() else { return };
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
                    self.rt.inner.telemetry.emit(
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
        *self.rt.inner.sessions.report.lock() = report;
    }
}

impl Runtime {
    /// The runtime's sessions: create, get, list.
    pub fn sessions(&self) -> Sessions {
        Sessions::new(self.clone())
    }

    /// Create a session with the default options.
    pub async fn session(&self) -> Result<Session> {
        self.sessions().create(SessionOptions::default()).await
    }
}

fn snapshot_path(inner: &Inner, id: &str) -> Option<PathBuf> {
    inner.config.sessions.snapshot_dir.as_ref().map(|d| d.join(format!("{id}.session")))
}

fn persist(inner: &Inner, shared: &SessionShared) {
    if inner.config.sessions.snapshot_dir.is_none() {
        return;
    }
    let state = shared.state.lock().clone();
    let Some(path) = snapshot_path(inner, &state.id) else { return };
    let written = encode_snapshot(&state).and_then(|bytes| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
        }
        write_atomically(&path, &bytes).map_err(|e| Error::new(ErrorKind::Io, e.to_string()))
    });
    if let Err(e) = written {
        warn!(session = %state.id, error = %e, "cannot write the session snapshot");
    }
}

// ------------------------------------------------------------------ handle

/// A handle on one session. Cheap to clone; requests through any clone are
/// applied one at a time, in the order they reach the session.
#[derive(Clone)]
pub struct Session {
    id: String,
    rt: Runtime,
    shared: Arc<SessionShared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

/// Messages of a session actor (its requests do not pass through it).
pub enum SessionMsg {
    /// Check idle expiry.
    Tick,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Take the session for one request: in arrival order, one at a time.
    async fn enter(&self) -> Result<tokio::sync::MutexGuard<'_, WorkState>> {
        let guard = self.shared.work.lock().await;
        if self.shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(
                Error::new(ErrorKind::NotFound, format!("session {} is closed", self.id)).with_session(&self.id)
            );
        }
        *self.shared.last_active.lock() = Instant::now();
        Ok(guard)
    }

    /// After a request: count it, touch the session, write the snapshot.
    fn leave(&self) {
        self.shared.state.lock().requests += 1;
        *self.shared.last_active.lock() = Instant::now();
        persist(&self.rt.inner, &self.shared);
    }

    /// Define a program under `name` (replacing one of the same name).
    pub async fn define(&self, name: &str, spec: impl Into<ProgramSpec>) -> Result<()> {
        let spec = spec.into();
        let mut st = self.enter().await?;
        st.programs.insert(name.to_string(), Program::new(spec.clone()));
        st.defined_on.remove(name);
        self.shared.state.lock().programs.insert(name.to_string(), spec);
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
        let out = run_program(&self.rt, &self.shared, &mut st, name, inputs, opts).await;
        self.leave();
        out.map_err(|e| e.with_session(&self.id))
    }

    /// Run a pipeline inside the session: its `session` steps run the
    /// session's programs (with their history), in order with the session's
    /// other requests.
    pub async fn run_pipeline(&self, pipeline: &Pipeline, inputs: Map) -> Result<PipelineResult> {
        let mut st = self.enter().await?;
        let runner = SessionStepRunner { rt: &self.rt, shared: &self.shared, st: &mut st };
        let out = crate::pipeline::execute_in_session(&self.rt, pipeline, inputs, runner).await;
        self.leave();
        out
    }

    /// Set a variable.
    pub async fn set_var(&self, key: &str, value: Value) -> Result<()> {
        let _st = self.enter().await?;
        self.shared.state.lock().variables.insert(key.to_string(), value);
        self.leave();
        Ok(())
    }

    /// The session's state (programs, history, variables).
    pub async fn state(&self) -> Result<SessionState> {
        let _st = self.enter().await?;
        let state = self.shared.state.lock().clone();
        Ok(state)
    }

    /// A program's history (`dspy.History.messages`).
    pub async fn history(&self, name: &str) -> Result<Vec<Map>> {
        let _st = self.enter().await?;
        let turns = self.shared.state.lock().history.get(name).cloned().unwrap_or_default();
        Ok(turns)
    }

    /// Forget a program's history.
    pub async fn clear_history(&self, name: &str) -> Result<()> {
        let _st = self.enter().await?;
        self.shared.state.lock().history.remove(name);
        self.leave();
        Ok(())
    }

    /// End the session (its snapshot is deleted, its worker forgets it).
    pub async fn close(&self) -> Result<()> {
        let _st = self.enter().await?;
        end_session(&self.rt.inner, &self.shared, "closed");
        Ok(())
    }
}

/// Close or expire: no request runs after this one, the snapshot goes, the
/// actor stops (and drops the session's objects in its worker).
fn end_session(inner: &Inner, shared: &SessionShared, why: &str) {
    shared.closed.store(true, std::sync::atomic::Ordering::Release);
    let id = shared.state.lock().id.clone();
    inner.sessions.entries.lock().remove(&id);
    if let Some(p) = snapshot_path(inner, &id) {
        let _ = std::fs::remove_file(p);
    }
    inner
        .telemetry
        .emit(None, EventKind::Lifecycle { actor: format!("session:{id}"), what: why.into(), detail: String::new() });
    if let Some(actor) = shared.actor.lock().clone() {
        actor.stop(Some(why.into()));
    }
}

// ------------------------------------------------------------------ actor

/// The session's actor: its place in the tree, idle expiry, and clean-up
/// in its worker when the session ends.
struct SessionActor {
    shared: Arc<SessionShared>,
}

/// What requests work on, under the session's FIFO lock.
struct WorkState {
    programs: HashMap<String, Program>,
    /// Programs defined on the pinned worker.
    defined_on: HashSet<String>,
}

/// The `dspy.History` input of a program, if it has one.
fn history_field(program: &Program) -> Option<String> {
    let sig = match program.native() {
        Some(n) => n.predictor().signature().clone(),
        None => dspex_native::signature_from_spec(&program.spec().signature).ok()?,
    };
    sig.inputs().iter().find(|f| *f.ty() == FieldType::Dspy(DspyType::History)).map(|f| f.name().to_string())
}

impl SessionShared {
    fn id(&self) -> String {
        self.state.lock().id.clone()
    }
}

/// Run `name` on the pinned worker, rebuilding the session's Python
/// state on another worker when the pinned one is gone.
async fn run_python(
    rt: &Runtime,
    shared: &SessionShared,
    st: &mut WorkState,
    name: &str,
    program: &Program,
    inputs: &Map,
    opts: &RequestOptions,
) -> Result<Output> {
    let started = Instant::now();
    let (pool_name, specs) = {
        let s = shared.state.lock();
        (opts.pool.clone().unwrap_or_else(|| s.pool.clone()), s.programs.clone())
    };
    let pool = rt.pool(&pool_name)?;
    let id = shared.id();
    let trace = opts.trace_id.clone().unwrap_or_else(crate::runtime::new_trace_id);
    let deadline = opts.deadline.unwrap_or_else(|| {
        Instant::now() + opts.timeout.unwrap_or(Duration::from_millis(rt.inner.config.request_timeout_ms))
    });
    let idempotent = opts.idempotent.unwrap_or(true);
    let mut attempt = 0;
    let mut lost = false;
    loop {
        attempt += 1;
        // Pin (again) when there is no pinned worker, its process changed
        // or it just failed us.
        let pinned = shared.pinned.lock().clone();
        let (index, pid) = match pinned {
            Some((i, p, _)) if !lost && pool.pid_of(i) == Some(p) => (i, p),
            previous => {
                // After a crash the pool may have no ready worker for a
                // moment (a replacement is starting): wait for one.
                let mut picked = pool.pick();
                while picked.is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    picked = pool.pick();
                }
                let (i, p) = picked.ok_or_else(|| {
                    Error::new(ErrorKind::WorkerCrashed, format!("no worker of pool {pool_name} is ready"))
                        .with_pool(&pool_name)
                        .with_retryable(true)
                })?;
                st.defined_on.clear();
                let worker = format!("worker:{pool_name}:{i}");
                if previous.is_some() {
                    shared.rebuilds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(session = %id, worker = %worker, "session pinned worker is gone; rebuilding its state");
                    rt.inner.telemetry.emit(
                        Some(&trace),
                        EventKind::Lifecycle {
                            actor: format!("session:{id}"),
                            what: "rebuilt".into(),
                            detail: format!("programs defined again on {worker}"),
                        },
                    );
                }
                *shared.pinned.lock() = Some((i, p, worker));
                lost = false;
                (i, p)
            }
        };
        let popts = PoolCallOptions {
            deadline: Some(deadline),
            trace_id: Some(trace.clone()),
            session: Some(id.clone()),
            idempotent: false,
            codec: None,
            pin: Some(index),
        };
        let mut failure = None;
        for (pname, spec) in &specs {
            if st.defined_on.contains(pname) {
                continue;
            }
            let wire = st.programs.get(pname).map(|p| p.wire().clone()).unwrap_or_else(|| json!(spec));
            match pool.call("session.define", json!({"name": pname, "program": wire}), &popts).await {
                Ok(_) => {
                    st.defined_on.insert(pname.clone());
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let result = match failure {
            Some(e) => Err(e),
            None => {
                let lm = rt.python_lm_for(program);
                pool.call("session.run", json!({"name": name, "inputs": inputs, "lm": lm}), &popts).await
            }
        };
        match result {
            Ok(reply) => {
                let _ = pid;
                rt.inner.router.record(&Route::Python(pool_name.clone()), Ok(()));
                let mut out = rt.python_output(
                    Route::Python(pool_name.clone()),
                    reply.value,
                    reply.queue,
                    reply.elapsed,
                    &reply.worker,
                    reply.pid,
                    attempt > 1,
                    &trace,
                    started,
                );
                out.meta.reason = "session program pinned to its worker".into();
                return Ok(out);
            }
            Err(e) => {
                let gone = matches!(e.kind(), ErrorKind::WorkerCrashed | ErrorKind::NotFound);
                if gone {
                    lost = true;
                    st.defined_on.clear();
                }
                // Retry on another worker: always when the worker lost our
                // state before running anything, else only if idempotent.
                let safe = e.kind() == ErrorKind::NotFound || idempotent;
                if gone && safe && attempt < 3 && Instant::now() < deadline {
                    continue;
                }
                return Err(e.with_request_id(&trace));
            }
        }
    }
}

async fn run_program(
    rt: &Runtime,
    shared: &SessionShared,
    st: &mut WorkState,
    name: &str,
    mut inputs: Map,
    opts: RequestOptions,
) -> Result<Output> {
    let program = st
        .programs
        .get(name)
        .cloned()
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("the session defines no program {name}")))?;
    let history_key = history_field(&program);
    if let Some(h) = &history_key {
        if !inputs.contains_key(h) {
            let turns = shared.state.lock().history.get(name).cloned().unwrap_or_default();
            inputs.insert(h.clone(), json!({"messages": turns}));
        }
    }
    let id = shared.id();
    let opts = RequestOptions { session: Some(id), cache: false, ..opts };
    let prefer = opts.route.unwrap_or_else(|| rt.inner.router.preference());
    let native_ok = program.native_support().is_ok() && rt.native_lm_for(&program).is_ok();
    // Keep the inputs only where they are needed again (fallback, history).
    let auto = prefer == dspex_core::RoutePreference::Auto;
    let kept = (auto || history_key.is_some()).then(|| inputs.clone());
    let out = if native_ok && prefer != dspex_core::RoutePreference::Python {
        match rt.run(&program, inputs, opts.clone()).await {
            Ok(o) => Ok(o),
            Err(e) if auto && rt.inner.router.may_fall_back(&e) => {
                let inputs = kept.as_ref().ok_or_else(|| Error::internal("fallback without inputs"))?;
                let mut o = run_python(rt, shared, st, name, &program, inputs, &opts).await?;
                o.meta.fallback = Some(format!("native {}: {}", e.kind(), e.message()));
                Ok(o)
            }
            Err(e) => Err(e),
        }
    } else {
        if prefer == dspex_core::RoutePreference::Native {
            return Err(Error::unsupported(format!("program {name} cannot run natively")));
        }
        run_python(rt, shared, st, name, &program, &inputs, &opts).await
    }?;
    // Append this turn: the inputs (without the history itself) and the outputs.
    if let (Some(h), Some(mut turn)) = (&history_key, kept) {
        turn.remove(h);
        for (k, v) in &out.prediction.fields {
            turn.insert(k.clone(), v.clone());
        }
        let mut state = shared.state.lock();
        // The session's own window, else the runtime's.
        let limit = state.history_turns.or(rt.inner.config.sessions.history_turns);
        let turns = state.history.entry(name.to_string()).or_default();
        turns.push(turn);
        if let Some(keep) = limit {
            let excess = turns.len().saturating_sub(keep);
            turns.drain(..excess);
        }
    }
    Ok(out)
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<SessionMsg>, _: ()) -> std::result::Result<(), ActorProcessingErr> {
        let ttl = Duration::from_millis(self.shared.state.lock().ttl_ms.max(1));
        let every = (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if myself.cast(SessionMsg::Tick).is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<SessionMsg>, _: &mut ()) -> std::result::Result<(), ActorProcessingErr> {
        // Only an ended session forgets its objects in its worker; a
        // restarted actor leaves them for the session's next request.
        if !self.shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let pinned = self.shared.pinned.lock().take();
        let inner = self.shared.rt.upgrade();
        if let (Some((index, _, _)), Some(inner)) = (pinned, inner) {
            let (pool, id) = {
                let s = self.shared.state.lock();
                (s.pool.clone(), s.id.clone())
            };
            if let Ok(pool) = (Runtime { inner }).pool(&pool) {
                let opts = PoolCallOptions {
                    deadline: Some(Instant::now() + Duration::from_secs(2)),
                    session: Some(id),
                    pin: Some(index),
                    ..Default::default()
                };
                let _ = pool.call("session.drop", json!({}), &opts).await;
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<SessionMsg>,
        msg: SessionMsg,
        _: &mut (),
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Tick => {
                let ttl = Duration::from_millis(self.shared.state.lock().ttl_ms);
                if self.shared.last_active.lock().elapsed() < ttl {
                    return Ok(());
                }
                // A session busy with a long request is not idle.
                let Ok(_busy) = self.shared.work.try_lock() else { return Ok(()) };
                if let Some(inner) = self.shared.rt.upgrade() {
                    info!(session = %self.shared.id(), "session expired");
                    end_session(&inner, &self.shared, "expired");
                }
            }
        }
        Ok(())
    }
}

/// Runs the `session` steps of a pipeline with a session's programs.
pub(crate) struct SessionStepRunner<'a> {
    rt: &'a Runtime,
    shared: &'a SessionShared,
    st: &'a mut WorkState,
}

impl SessionStepRunner<'_> {
    pub(crate) async fn run(&mut self, name: &str, inputs: Map, opts: RequestOptions) -> Result<Output> {
        run_program(self.rt, self.shared, self.st, name, inputs, opts).await
    }

    pub(crate) fn session_id(&self) -> String {
        self.shared.id()
    }

    pub(crate) fn program(&self, name: &str) -> Option<&Program> {
        self.st.programs.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SessionState {
        SessionState {
            id: "s1".into(),
            programs: BTreeMap::from([(
                "chat".into(),
                ProgramSpec::predict("history: dspy.History, question -> answer"),
            )]),
            history: BTreeMap::from([(
                "chat".into(),
                vec![json!({"question": "hi", "answer": "hello"}).as_object().cloned().unwrap()],
            )]),
            variables: Map::new(),
            pool: "general".into(),
            ttl_ms: 1000,
            created_ms: 1,
            requests: 2,
            history_turns: Some(5),
        }
    }

    #[test]
    fn snapshots_round_trip_and_torn_files_are_detected() {
        let bytes = encode_snapshot(&state()).unwrap();
        assert_eq!(decode_snapshot(&bytes).unwrap(), state());
        let torn = &bytes[..bytes.len() - 7];
        assert!(decode_snapshot(torn).unwrap_err().message().contains("torn"));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        assert!(decode_snapshot(&flipped).unwrap_err().message().contains("checksum"));
        assert!(decode_snapshot(b"DSPEX-SESS").unwrap_err().message().contains("header"));
        assert!(decode_snapshot(b"garbage 1 2 3\n{}").unwrap_err().message().contains("not a dspex"));
    }
}
