//! The runtime: the supervision tree and the request path.
//!
//! [`Runtime::builder`] (or [`Runtime::from_config`] with a
//! [`RuntimeConfig`] read from TOML) starts this tree:
//!
//! ```text
//! dspex                 root supervisor (rest_for_one)
//! ├── telemetry         event bus + metrics
//! ├── router            routing table, breakers, decision log
//! ├── pools             one_for_one
//! │   └── pool:general  one_for_one → worker:general:0, worker:general:1, …
//! ├── sessions          session:<id> (transient)
//! └── pipelines         pipeline:<run> (temporary)
//! ```
//!
//! Every request has one deadline (its own, or `request_timeout_ms`) spent
//! across queueing, transport and execution, and ends with an [`Output`]
//! (the prediction and where, how long and at what cost it ran) or a
//! classified [`Error`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dspex_bridge::{default_cache_dir, worker_sources, EnvSpec, PythonEnv, RunRegistry, StreamItem};
use dspex_core::{
    CacheConfig, Error, ErrorKind, EventKind, IntensityConfig, LmConfig, Map, PoolConfig, Prediction, Result, Route,
    RoutePreference, RouterConfig, RuntimeConfig, SessionConfig, Usage, Value,
};
use dspex_native::lm::{LanguageModel, OpenAiClient};
use dspex_native::PredictEvent;
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use ractor::ActorRef;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::cache::{is_deterministic, CacheKey, ResultCache};
use crate::pool::{Launch, PoolCallOptions, PoolHandle, PoolStats};
use crate::program::Program;
use crate::router::{RouteRequest, Router, RouterActor};
use crate::supervisor::{ChildSpec, NodeInfo, Restart, Strategy, Supervisor, SupervisorMsg, SupervisorSpec, TreeNode};
use crate::telemetry::Telemetry;

/// Per-request settings. The default: the configured route, the default
/// pool, the runtime's request timeout, cache on; programs are idempotent
/// (an LM call may safely run twice), commands are not unless marked.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Route preference for this request.
    pub route: Option<RoutePreference>,
    /// Python pool.
    pub pool: Option<String>,
    /// Time allowed from now.
    pub timeout: Option<Duration>,
    /// Absolute deadline (wins over `timeout`).
    pub deadline: Option<Instant>,
    /// Safe to run twice (retried once on another worker if its worker
    /// dies); `None`: yes for programs, no for commands.
    pub idempotent: Option<bool>,
    /// Use the result cache (deterministic requests only).
    pub cache: bool,
    /// Trace id (one is made up otherwise).
    pub trace_id: Option<String>,
    /// Force shadowing on or off for this request.
    pub shadow: Option<bool>,
    /// LM call arguments for this request only.
    pub config: Map,
    /// Session the request belongs to (set by session actors).
    pub session: Option<String>,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            route: None,
            pool: None,
            timeout: None,
            deadline: None,
            idempotent: None,
            cache: true,
            trace_id: None,
            shadow: None,
            config: Map::new(),
            session: None,
        }
    }
}

impl RequestOptions {
    /// Run natively or fail with `Unsupported`.
    pub fn native() -> RequestOptions {
        RequestOptions { route: Some(RoutePreference::Native), ..Default::default() }
    }

    /// Run in Python.
    pub fn python() -> RequestOptions {
        RequestOptions { route: Some(RoutePreference::Python), ..Default::default() }
    }

    /// Set the route preference.
    pub fn route(mut self, route: RoutePreference) -> RequestOptions {
        self.route = Some(route);
        self
    }

    /// Use this pool for Python work.
    pub fn pool(mut self, pool: impl Into<String>) -> RequestOptions {
        self.pool = Some(pool.into());
        self
    }

    /// Allow this long.
    pub fn timeout(mut self, timeout: Duration) -> RequestOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Skip the result cache.
    pub fn no_cache(mut self) -> RequestOptions {
        self.cache = false;
        self
    }

    /// Mark as (not) safe to run twice.
    pub fn idempotent(mut self, on: bool) -> RequestOptions {
        self.idempotent = Some(on);
        self
    }

    /// Set the trace id.
    pub fn trace_id(mut self, id: impl Into<String>) -> RequestOptions {
        self.trace_id = Some(id.into());
        self
    }

    /// Force shadowing on or off.
    pub fn shadow(mut self, on: bool) -> RequestOptions {
        self.shadow = Some(on);
        self
    }

    /// Set one LM call argument for this request.
    pub fn with_config(mut self, key: &str, value: Value) -> RequestOptions {
        self.config.insert(key.into(), value);
        self
    }
}

/// Where the time went.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Waiting for a worker.
    pub queue_us: u64,
    /// Moving the request and its answer between processes.
    pub transport_us: u64,
    /// Running it (the native engine, or Python, LM call included).
    pub execution_us: u64,
    /// From the call to the result.
    pub total_us: u64,
}

/// Where and how a request ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    /// The route that produced the result.
    pub route: Route,
    /// Pool, for Python routes.
    pub pool: Option<String>,
    /// Worker, for Python routes.
    pub worker: Option<String>,
    /// Worker process id.
    pub pid: Option<u32>,
    /// Timings.
    pub timings: Timings,
    /// Token usage, when the LM reported it.
    pub usage: Option<Usage>,
    /// The request's trace id (also in the worker's log lines).
    pub trace_id: String,
    /// Served from the result cache.
    pub cached: bool,
    /// Why the first route was abandoned, when the result came from the fallback.
    pub fallback: Option<String>,
    /// Retried on another worker after its first worker died.
    pub retried: bool,
    /// Why the router chose the route.
    pub reason: String,
}

/// A prediction and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    /// The prediction.
    pub prediction: Prediction,
    /// Where and how it ran.
    pub meta: Meta,
}

impl Output {
    /// An output field.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.prediction.get(field)
    }

    /// An output field as text.
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.prediction.get_str(field)
    }
}

/// A command's result and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallOutput {
    /// What the command returned.
    pub value: Value,
    /// Where and how it ran.
    pub meta: Meta,
}

/// One item of a streamed request.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Text of an output field as it arrives.
    Chunk {
        /// The field, when known.
        field: Option<String>,
        /// The text.
        text: String,
    },
    /// The final prediction (always last on success).
    Done(Box<Output>),
}

/// A stream of [`StreamEvent`]s.
pub type OutputStream = std::pin::Pin<Box<dyn Stream<Item = Result<StreamEvent>> + Send>>;

/// An optimizer run.
#[derive(Debug, Clone)]
pub struct OptimizeRequest {
    /// `BootstrapFewShot`, `LabeledFewShot`, `MIPROv2`, `COPRO`, `GEPA`, ...
    pub optimizer: String,
    /// The program to compile.
    pub program: Program,
    /// Training examples.
    pub trainset: Vec<Map>,
    /// Metric: `exact_match`, `passage_match` or an import path.
    pub metric: String,
    /// Input keys of the examples (all but `answer` when empty).
    pub input_keys: Vec<String>,
    /// Validation examples, for optimizers that take them.
    pub valset: Option<Vec<Map>>,
    /// Optimizer constructor arguments.
    pub params: Map,
    /// `compile` arguments.
    pub compile_params: Map,
    /// Pool (`optimizer` if the runtime has one, else the default pool).
    pub pool: Option<String>,
    /// Time allowed.
    pub timeout: Option<Duration>,
}

impl OptimizeRequest {
    /// Compile `program` with `optimizer` on `trainset` scored by `metric`.
    pub fn new(optimizer: &str, program: Program, trainset: Vec<Map>, metric: &str) -> OptimizeRequest {
        OptimizeRequest {
            optimizer: optimizer.into(),
            program,
            trainset,
            metric: metric.into(),
            input_keys: Vec::new(),
            valset: None,
            params: Map::new(),
            compile_params: Map::new(),
            pool: None,
            timeout: None,
        }
    }

    /// Set an optimizer constructor argument (`max_bootstrapped_demos`, ...).
    pub fn param(mut self, key: &str, value: Value) -> OptimizeRequest {
        self.params.insert(key.into(), value);
        self
    }

    /// Set the input keys.
    pub fn input_keys<I: IntoIterator<Item = S>, S: Into<String>>(mut self, keys: I) -> OptimizeRequest {
        self.input_keys = keys.into_iter().map(Into::into).collect();
        self
    }
}

/// A compiled program.
#[derive(Debug, Clone)]
pub struct Optimized {
    /// The program with the compiled state (demos, instructions) applied;
    /// it runs natively when the original could.
    pub program: Program,
    /// The saved state DSPy produced (what `program.save` writes).
    pub state: Value,
    /// Demos in the compiled program.
    pub demos: usize,
    /// Where and how it ran.
    pub meta: Meta,
}

/// An evaluation's results.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Average score (percent, as `dspy.Evaluate` reports it).
    pub score: f64,
    /// Per example: the example, the prediction and its score.
    pub results: Vec<Value>,
    /// Where and how it ran.
    pub meta: Meta,
}

/// Progress messages while Python environments are provisioned.
pub type EnvProgress = Arc<dyn Fn(&str) + Send + Sync>;

/// Progress of a long request (an optimizer or an evaluation).
pub type ProgressFn = Arc<dyn Fn(&Value) + Send + Sync>;

// ------------------------------------------------------------------ builder

/// Builds a [`Runtime`]. The same fields as [`RuntimeConfig`].
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    native_lm: Option<Arc<dyn LanguageModel>>,
    python_lm: Option<Value>,
    progress: Option<EnvProgress>,
    extra_children: Vec<ChildSpec>,
}

impl RuntimeBuilder {
    /// Start from a configuration.
    pub fn from_config(config: RuntimeConfig) -> RuntimeBuilder {
        RuntimeBuilder { config, native_lm: None, python_lm: None, progress: None, extra_children: Vec::new() }
    }

    /// The default LM (an OpenAI-compatible service), for both routes.
    pub fn lm(mut self, lm: LmConfig) -> RuntimeBuilder {
        self.config.lm = Some(lm);
        self
    }

    /// Use this LM for native requests (overrides the one built from `lm`).
    pub fn native_lm(mut self, lm: Arc<dyn LanguageModel>) -> RuntimeBuilder {
        self.native_lm = Some(lm);
        self
    }

    /// The LM Python workers use, as the worker describes LMs
    /// (`{"model", "base_url", "api_key", ...}` or `{"dummy": [answers]}`).
    pub fn python_lm(mut self, lm: Value) -> RuntimeBuilder {
        self.python_lm = Some(lm);
        self
    }

    /// Add a pool (a pool of the same name is replaced).
    pub fn pool(mut self, pool: PoolConfig) -> RuntimeBuilder {
        self.config.pools.retain(|p| p.name != pool.name);
        self.config.pools.push(pool);
        self
    }

    /// The interpreter pools use unless they name their own.
    pub fn python(mut self, python: impl Into<PathBuf>) -> RuntimeBuilder {
        self.config.python = Some(python.into());
        self
    }

    /// Router settings.
    pub fn router(mut self, router: RouterConfig) -> RuntimeBuilder {
        self.config.router = router;
        self
    }

    /// Result cache settings.
    pub fn cache(mut self, cache: CacheConfig) -> RuntimeBuilder {
        self.config.cache = cache;
        self
    }

    /// Session settings.
    pub fn sessions(mut self, sessions: SessionConfig) -> RuntimeBuilder {
        self.config.sessions = sessions;
        self
    }

    /// Deadline for requests that set none.
    pub fn request_timeout(mut self, timeout: Duration) -> RuntimeBuilder {
        self.config.request_timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// Restart intensity of the `pools` supervisor.
    pub fn pools_intensity(mut self, intensity: IntensityConfig) -> RuntimeBuilder {
        self.config.pools_intensity = Some(intensity);
        self
    }

    /// Progress messages while Python environments are provisioned.
    pub fn on_progress(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> RuntimeBuilder {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Add a child under the root supervisor, after the built-in ones (the
    /// debug console is one).
    pub fn child(mut self, child: ChildSpec) -> RuntimeBuilder {
        self.extra_children.push(child);
        self
    }

    /// Start the runtime: provision Python where needed, start the tree,
    /// wait until every pool's workers are ready.
    pub async fn start(self) -> Result<Runtime> {
        Runtime::start(self).await
    }
}

// ------------------------------------------------------------------ runtime

pub(crate) struct Inner {
    pub(crate) config: RuntimeConfig,
    pub(crate) telemetry: Telemetry,
    pub(crate) router: Arc<Router>,
    pub(crate) pools: parking_lot::RwLock<Vec<PoolHandle>>,
    cache: Option<ResultCache<Output>>,
    native_lm: Option<Arc<dyn LanguageModel>>,
    native_lms: Mutex<Vec<(LmConfig, Arc<dyn LanguageModel>)>>,
    python_lm: Option<Value>,
    pub(crate) root: ActorRef<SupervisorMsg>,
    root_done: Mutex<Option<ractor::concurrency::JoinHandle<()>>>,
    /// `sessions` and `pipelines`, looked up again when restarted.
    dynamic_sups: Mutex<Vec<(&'static str, ActorRef<SupervisorMsg>)>>,
    pub(crate) sessions: crate::session::SessionRegistry,
    pub(crate) pipeline_runs: crate::pipeline::RunRegistry,
    launch: Launch,
    started: Instant,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort when the runtime is dropped without `shutdown`: the
        // tree stops (workers end with it) and nothing is left running.
        self.root.stop(Some("dropped".into()));
    }
}

/// The dspex runtime. Cheap to clone; see the [module docs](self).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("pools", &self.pool_names()).finish()
    }
}

static TRACE_SEQ: AtomicU64 = AtomicU64::new(1);

/// A new trace id: a per-process random prefix and a sequence number.
pub fn new_trace_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| fastrand::u32(..));
    format!("{prefix:08x}-{:06x}", TRACE_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The LM as Python workers describe it.
pub fn python_lm_spec(lm: &LmConfig) -> Value {
    let mut m = Map::new();
    m.insert("model".into(), lm.model.clone().into());
    if let Some(u) = &lm.base_url {
        m.insert("base_url".into(), u.clone().into());
    }
    if let Some(k) = &lm.api_key {
        m.insert("api_key".into(), k.expose().into());
    }
    if let Some(t) = lm.temperature {
        m.insert("temperature".into(), t.into());
    }
    if let Some(t) = lm.max_tokens {
        m.insert("max_tokens".into(), t.into());
    }
    m.insert("num_retries".into(), lm.max_retries.into());
    Value::Object(m)
}

/// The interpreter a pool runs: the pool's own, a provisioned environment
/// for its requirements, the runtime's, `$DSPEX_PYTHON`, or a provisioned
/// environment for its preset (`general` for user-defined pools).
async fn resolve_python(
    pool: &PoolConfig,
    config: &RuntimeConfig,
    cache_dir: &std::path::Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<PathBuf> {
    if let Some(p) = &pool.python.interpreter {
        return Ok(p.clone());
    }
    let spec = if !pool.python.requirements.is_empty() {
        Some(EnvSpec::new(pool.name.clone(), pool.python.requirements.clone()))
    } else {
        None
    };
    if spec.is_none() {
        if let Some(p) = &config.python {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os("DSPEX_PYTHON") {
            return Ok(PathBuf::from(p));
        }
    }
    let mut spec = spec.unwrap_or_else(|| {
        EnvSpec::preset(&pool.name)
            .or_else(|| EnvSpec::preset("general"))
            .unwrap_or_else(|| EnvSpec::new("general", vec![]))
    });
    spec.base_python = pool.python.base.clone();
    progress(&format!("pool {}: preparing Python environment `{}`", pool.name, spec.name));
    let env = PythonEnv::ensure(&spec, cache_dir, progress).await?;
    Ok(env.python().to_path_buf())
}

fn empty_supervisor(name: &str, strategy: Strategy) -> ChildSpec {
    let name_owned = name.to_string();
    ChildSpec::new(
        name,
        Restart::Permanent,
        crate::supervisor::supervisor_start_fn(move || {
            SupervisorSpec::new(name_owned.clone(), strategy, IntensityConfig::new(100, Duration::from_secs(10)))
        }),
    )
    .kind("supervisor")
}

fn telemetry_child(telemetry: Telemetry) -> ChildSpec {
    struct TelemetryActor;
    impl ractor::Actor for TelemetryActor {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> std::result::Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }
    ChildSpec::new("telemetry", Restart::Permanent, crate::supervisor::start_fn(|| TelemetryActor, || ()))
        .kind("telemetry")
        .info(Arc::new(move || {
            let mut extra = Map::new();
            extra.insert("subscribers".into(), telemetry.subscriber_count().into());
            NodeInfo { extra, ..Default::default() }
        }))
}

fn map_of(v: &Value) -> Map {
    v.as_object().cloned().unwrap_or_default()
}

fn usage_of(v: &Value) -> Option<Usage> {
    v.get("usage").filter(|u| !u.is_null()).and_then(|u| serde_json::from_value(u.clone()).ok())
}

impl Runtime {
    /// A builder with default settings.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::from_config(RuntimeConfig::default())
    }

    /// Start a runtime from a configuration.
    pub async fn from_config(config: RuntimeConfig) -> Result<Runtime> {
        RuntimeBuilder::from_config(config).start().await
    }

    async fn start(b: RuntimeBuilder) -> Result<Runtime> {
        let mut config = b.config;
        if config.pools.is_empty() {
            config.pools.push(PoolConfig::preset("general").unwrap_or_else(|| PoolConfig::new("general")));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &config.pools {
            if !seen.insert(p.name.clone()) {
                return Err(Error::new(ErrorKind::Config, format!("two pools are named {}", p.name)));
            }
        }
        let telemetry = Telemetry::new();
        let progress: EnvProgress =
            b.progress.unwrap_or_else(|| Arc::new(|m: &str| info!(target: "dspex::env", "{m}")));
        let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let sources = worker_sources(&cache_dir)?;
        let registry = match RunRegistry::open(&dspex_bridge::runs::default_dir()) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                warn!(error = %e, "no run registry: workers of a killed runtime will not be cleaned up at the next start");
                None
            }
        };
        if let Ok(report) = RunRegistry::sweep(&dspex_bridge::runs::default_dir()) {
            if !report.killed.is_empty() {
                warn!(killed = ?report.killed, "cleaned up workers left by a runtime that died");
            }
        }
        // Pools that share an interpreter share its resolution.
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut launch0 = None;
        for pc in &config.pools {
            let python = resolve_python(pc, &config, &cache_dir, &*progress).await?;
            let launch = Launch {
                python,
                python_path: vec![sources.clone()],
                registry: registry.clone(),
                env: vec![("DSPEX_DSPY_DISK_CACHE".into(), "0".into())],
            };
            launch0.get_or_insert_with(|| launch.clone());
            pools.push(PoolHandle::new(pc.clone(), launch, telemetry.clone()));
        }
        let launch = launch0.ok_or_else(|| Error::new(ErrorKind::Config, "no pools"))?;
        let router = Arc::new(Router::new(config.router.clone(), telemetry.clone()));
        let pools_intensity = config.pools_intensity.unwrap_or(IntensityConfig::new(10, Duration::from_secs(60)));
        let mut pools_spec = SupervisorSpec::new("pools", Strategy::OneForOne, pools_intensity);
        for p in &pools {
            pools_spec = pools_spec.child(p.child_spec());
        }
        let pools_spec_for_start = pools_spec.clone();
        let mut root =
            SupervisorSpec::new("dspex", Strategy::RestForOne, IntensityConfig::new(3, Duration::from_secs(60)))
                .kind("runtime")
                .child(telemetry_child(telemetry.clone()))
                .child(RouterActor::child_spec(router.clone()))
                .child(
                    ChildSpec::new(
                        "pools",
                        Restart::Permanent,
                        crate::supervisor::supervisor_start_fn(move || pools_spec_for_start.clone()),
                    )
                    .kind("supervisor")
                    .shutdown_timeout(Duration::from_secs(30)),
                )
                .child(empty_supervisor("sessions", Strategy::OneForOne))
                .child(empty_supervisor("pipelines", Strategy::OneForOne));
        for c in b.extra_children {
            root = root.child(c);
        }
        let native_lm = match (b.native_lm, &config.lm) {
            (Some(lm), _) => Some(lm),
            (None, Some(cfg)) => Some(Arc::new(OpenAiClient::new(cfg)?) as Arc<dyn LanguageModel>),
            (None, None) => None,
        };
        let python_lm = b.python_lm.or_else(|| config.lm.as_ref().map(python_lm_spec));
        let cache = config
            .cache
            .enabled
            .then(|| ResultCache::new(config.cache.capacity, Duration::from_secs(config.cache.ttl_secs)));
        let started = Instant::now();
        let (root_ref, root_done) = Supervisor::start(None, root)
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("the runtime's tree did not start: {e}")))?;
        let rt = Runtime {
            inner: Arc::new(Inner {
                config,
                telemetry,
                router,
                pools: parking_lot::RwLock::new(pools),
                cache,
                native_lm,
                native_lms: Mutex::new(Vec::new()),
                python_lm,
                root: root_ref,
                root_done: Mutex::new(Some(root_done)),
                dynamic_sups: Mutex::new(Vec::new()),
                sessions: Default::default(),
                pipeline_runs: Default::default(),
                launch,
                started,
            }),
        };
        for p in rt.pools() {
            let size = p.config().size;
            p.wait_ready(size, Duration::from_secs(120)).await?;
        }
        rt.sessions().restore().await;
        rt.inner.telemetry.emit(
            None,
            EventKind::Lifecycle {
                actor: "dspex".into(),
                what: "started".into(),
                detail: format!("in {:?}", started.elapsed()),
            },
        );
        Ok(rt)
    }

    // -------------------------------------------------------------- inspection

    /// A snapshot of the supervision tree.
    pub async fn tree(&self) -> Result<TreeNode> {
        Supervisor::snapshot(&self.inner.root)
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot read the supervision tree: {e}")))
    }

    /// The pools.
    pub fn pools(&self) -> Vec<PoolHandle> {
        self.inner.pools.read().clone()
    }

    /// Pool names.
    pub fn pool_names(&self) -> Vec<String> {
        self.inner.pools.read().iter().map(|p| p.name().to_string()).collect()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Result<PoolHandle> {
        self.inner.pools.read().iter().find(|p| p.name() == name).cloned().ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("no pool named {name} (pools: {})", self.pool_names().join(", ")))
                .with_pool(name)
        })
    }

    /// Figures about every pool.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools().iter().map(|p| p.stats()).collect()
    }

    /// The router (decisions, counters, breakers, settings).
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// Receive every telemetry event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<dspex_core::Event>> {
        self.inner.telemetry.subscribe()
    }

    /// The telemetry bus.
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// The configuration the runtime runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The interpreter and `PYTHONPATH` workers start with.
    pub fn python(&self) -> (PathBuf, Vec<PathBuf>) {
        (self.inner.launch.python.clone(), self.inner.launch.python_path.clone())
    }

    // -------------------------------------------------------------- management

    /// The `sessions` or `pipelines` supervisor: the cached reference while
    /// it runs, looked up again after a restart.
    pub(crate) async fn dynamic_supervisor(&self, name: &'static str) -> Result<ActorRef<SupervisorMsg>> {
        let cached = self.inner.dynamic_sups.lock().iter().find(|(n, _)| *n == name).map(|(_, r)| r.clone());
        if let Some(r) = cached.filter(|r| r.get_status() == ractor::ActorStatus::Running) {
            return Ok(r);
        }
        let found = Supervisor::child_supervisor(&self.inner.root, name)
            .await
            .ok_or_else(|| Error::internal(format!("the {name} supervisor is not running")).with_retryable(true))?;
        let mut sups = self.inner.dynamic_sups.lock();
        sups.retain(|(n, _)| *n != name);
        sups.push((name, found.clone()));
        Ok(found)
    }

    /// Change a pool's size; returns when the new workers are ready.
    pub async fn scale(&self, pool: &str, size: usize) -> Result<()> {
        self.pool(pool)?.resize(size).await
    }

    /// Restart a pool's workers one at a time (each drains first), so the
    /// pool keeps serving; returns when the last replacement is ready.
    pub async fn restart_pool(&self, pool: &str) -> Result<()> {
        self.pool(pool)?.restart(Duration::from_secs(120)).await
    }

    /// `kill -9` one worker (tests and the console); it is restarted.
    pub fn kill_worker(&self, pool: &str, index: usize) -> Result<u32> {
        self.pool(pool)?.kill_worker(index)
    }

    /// Stop everything: sessions, pipelines, pools (workers get a grace
    /// period), router, telemetry — in reverse start order.
    pub async fn shutdown(self) -> Result<()> {
        let root = self.inner.root.clone();
        let _ = root.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(60))).await;
        let done = self.inner.root_done.lock().take();
        if let Some(h) = done {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        Ok(())
    }

    // -------------------------------------------------------------- requests

    fn deadline(&self, opts: &RequestOptions) -> Instant {
        opts.deadline.unwrap_or_else(|| {
            Instant::now() + opts.timeout.unwrap_or(Duration::from_millis(self.inner.config.request_timeout_ms))
        })
    }

    pub(crate) fn native_lm_for(&self, program: &Program) -> std::result::Result<Arc<dyn LanguageModel>, String> {
        match &program.spec().lm {
            Some(cfg) => {
                let mut cache = self.inner.native_lms.lock();
                if let Some((_, lm)) = cache.iter().find(|(c, _)| c == cfg) {
                    return Ok(lm.clone());
                }
                let lm: Arc<dyn LanguageModel> = Arc::new(OpenAiClient::new(cfg).map_err(|e| e.to_string())?);
                if cache.len() >= 32 {
                    cache.remove(0);
                }
                cache.push((cfg.clone(), lm.clone()));
                Ok(lm)
            }
            None => self.inner.native_lm.clone().ok_or_else(|| "no OpenAI-compatible LM is configured".to_string()),
        }
    }

    pub(crate) fn python_lm_for(&self, program: &Program) -> Value {
        match &program.spec().lm {
            Some(cfg) => python_lm_spec(cfg),
            None => self.inner.python_lm.clone().unwrap_or(Value::Null),
        }
    }

    fn cache_key(&self, program: &Program, inputs: &Map, opts: &RequestOptions) -> Option<CacheKey> {
        self.inner.cache.as_ref()?;
        if !opts.cache {
            return None;
        }
        let mut lm_params = Map::new();
        if let Some(t) = program.spec().lm.as_ref().or(self.inner.config.lm.as_ref()).and_then(|l| l.temperature) {
            lm_params.insert("temperature".into(), t.into());
        }
        if let Some(Value::Object(py)) = &self.inner.python_lm {
            if let Some(t) = py.get("temperature") {
                lm_params.insert("temperature".into(), t.clone());
            }
        }
        if !is_deterministic(&[&lm_params, &program.spec().config, &opts.config]) {
            return None;
        }
        let lm = match (&program.spec().lm, &self.inner.config.lm) {
            (Some(l), _) | (None, Some(l)) => {
                Value::String(format!("{}@{}", l.model, l.base_url.as_deref().unwrap_or("")))
            }
            _ => self.inner.python_lm.clone().unwrap_or(Value::Null),
        };
        // A forced route or pool is part of the request: a Python-only
        // request is not answered from a natively computed entry.
        let route = Value::String(format!("{:?}/{}", opts.route, opts.pool.as_deref().unwrap_or("")));
        let mut key = CacheKey::extend(program.cache_key().as_str(), program.op(), &[&lm, &route]);
        key.push_map(inputs);
        key.push_map(&opts.config);
        Some(key)
    }

    /// Run a program: routed, cached when deterministic, with fallback and
    /// shadowing as configured.
    pub async fn run(&self, program: &Program, inputs: Map, opts: RequestOptions) -> Result<Output> {
        let started = Instant::now();
        let trace = opts.trace_id.clone().unwrap_or_else(new_trace_id);
        let deadline = self.deadline(&opts);
        let op = program.op();
        let key = self.cache_key(program, &inputs, &opts);
        if let Some(k) = &key {
            if let Some(mut hit) = self.inner.cache.as_ref().and_then(|c| c.get(k)) {
                self.inner.telemetry.emit_lazy(Some(&trace), || EventKind::CacheHit { op: op.into() });
                hit.meta.cached = true;
                hit.meta.trace_id = trace;
                hit.meta.timings = Timings { total_us: started.elapsed().as_micros() as u64, ..Default::default() };
                return Ok(hit);
            }
            self.inner.telemetry.emit_lazy(Some(&trace), || EventKind::CacheMiss { op: op.into() });
        }
        let out = self.run_routed(program, &inputs, &opts, &trace, deadline, started).await;
        match &out {
            Ok(o) => {
                if let (Some(k), Some(c)) = (key, &self.inner.cache) {
                    c.put(k, o.clone());
                }
            }
            Err(e) => self.inner.telemetry.emit(
                Some(&trace),
                EventKind::Error { op: op.into(), kind: e.kind(), message: e.message().to_string() },
            ),
        }
        out.map_err(|e| e.with_request_id(&trace))
    }

    async fn run_routed(
        &self,
        program: &Program,
        inputs: &Map,
        opts: &RequestOptions,
        trace: &str,
        deadline: Instant,
        started: Instant,
    ) -> Result<Output> {
        let op = program.op();
        let native_lm = self.native_lm_for(program);
        let native_ok: std::result::Result<(), &str> = match (program.native_support(), &native_lm) {
            (Err(why), _) => Err(why),
            (Ok(()), Err(why)) => Err(why.as_str()),
            (Ok(()), Ok(_)) => Ok(()),
        };
        let decision = self.inner.router.decide(&RouteRequest {
            op,
            native: native_ok,
            prefer: opts.route,
            pool: opts.pool.as_deref(),
            shadow: opts.shadow,
        })?;
        let primary = match &decision.primary {
            Route::Native => {
                let lm = native_lm.map_err(Error::unsupported)?;
                self.run_native(program, &lm, inputs, opts, trace, deadline, started).await
            }
            Route::Python(pool) => self.run_python(program, pool, inputs, opts, trace, deadline, started).await,
        };
        let mut out = match primary {
            Ok(o) => o,
            Err(e) => {
                let fallback = decision.fallback.as_ref().filter(|_| {
                    decision.primary == Route::Native
                        && opts.route.unwrap_or(self.inner.router.config().prefer) == RoutePreference::Auto
                        && self.inner.router.may_fall_back(&e)
                        && Instant::now() < deadline
                });
                let Some(Route::Python(pool)) = fallback else { return Err(e) };
                warn!(trace, op, error = %e, "native run failed; falling back to Python");
                self.inner.router.record_fallback(op, &e, &Route::Python(pool.clone()));
                let mut o = self.run_python(program, pool, inputs, opts, trace, deadline, started).await?;
                o.meta.fallback = Some(format!("native {}: {}", e.kind(), e.message()));
                o
            }
        };
        out.meta.reason = decision.reason.into_owned();
        if let (Some(Route::Python(pool)), Route::Native) = (&decision.shadow, &out.meta.route) {
            let rt = self.clone();
            let program = program.clone();
            let inputs = inputs.clone();
            let pool = pool.clone();
            let opts = RequestOptions { shadow: Some(false), ..opts.clone() };
            let trace = trace.to_string();
            let primary_fields = out.prediction.fields.clone();
            tokio::spawn(async move {
                let shadow = rt.run_python(&program, &pool, &inputs, &opts, &trace, deadline, Instant::now()).await;
                rt.inner.router.compare_shadow(
                    program.op(),
                    Some(&trace),
                    &primary_fields,
                    shadow.as_ref().map(|o| &o.prediction.fields),
                );
            });
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_native(
        &self,
        program: &Program,
        lm: &Arc<dyn LanguageModel>,
        inputs: &Map,
        opts: &RequestOptions,
        trace: &str,
        deadline: Instant,
        started: Instant,
    ) -> Result<Output> {
        let native = program.native().ok_or_else(|| Error::unsupported("the native engine cannot run this program"))?;
        let copts = dspex_native::CallOptions {
            deadline: Some(deadline),
            request_id: Some(trace.to_string()),
            config: opts.config.clone(),
        };
        let t = Instant::now();
        let result = match tokio::time::timeout_at(deadline.into(), native.call(&**lm, inputs, &copts)).await {
            Ok(r) => r,
            Err(_) => {
                Err(Error::new(ErrorKind::Timeout, format!("{} did not finish before its deadline", program.op()))
                    .with_retryable(true))
            }
        };
        let elapsed = t.elapsed();
        self.inner.router.record(&Route::Native, result.as_ref().map(|_| ()));
        let ok = result.is_ok();
        self.inner.telemetry.emit_lazy(Some(trace), || EventKind::NativeExecute {
            op: program.op().into(),
            elapsed_us: elapsed.as_micros() as u64,
            ok,
        });
        let prediction = result?;
        Ok(Output {
            meta: Meta {
                route: Route::Native,
                pool: None,
                worker: None,
                pid: None,
                timings: Timings {
                    queue_us: 0,
                    transport_us: 0,
                    execution_us: elapsed.as_micros() as u64,
                    total_us: started.elapsed().as_micros() as u64,
                },
                usage: prediction.usage,
                trace_id: trace.to_string(),
                cached: false,
                fallback: None,
                retried: false,
                reason: String::new(),
            },
            prediction,
        })
    }

    fn program_args(&self, program: &Program, inputs: &Map, opts: &RequestOptions) -> Value {
        let mut wire = program.wire().clone();
        if !opts.config.is_empty() {
            if let Some(cfg) = wire.as_object_mut().map(|w| w.entry("config").or_insert_with(|| json!({}))) {
                if let Some(cfg) = cfg.as_object_mut() {
                    for (k, v) in &opts.config {
                        cfg.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        json!({"program": wire, "inputs": inputs, "lm": self.python_lm_for(program)})
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_python(
        &self,
        program: &Program,
        pool: &str,
        inputs: &Map,
        opts: &RequestOptions,
        trace: &str,
        deadline: Instant,
        started: Instant,
    ) -> Result<Output> {
        let route = Route::Python(pool.to_string());
        let handle = self.pool(pool)?;
        let args = self.program_args(program, inputs, opts);
        let popts = PoolCallOptions {
            deadline: Some(deadline),
            trace_id: Some(trace.to_string()),
            session: opts.session.clone(),
            idempotent: opts.idempotent.unwrap_or(true),
            codec: None,
            pin: None,
        };
        let reply = handle.call("dspy.run", args, &popts).await;
        self.inner.router.record(&route, reply.as_ref().map(|_| ()));
        let reply = reply?;
        Ok(self.python_output(
            route,
            reply.value,
            reply.queue,
            reply.elapsed,
            &reply.worker,
            reply.pid,
            reply.retried,
            trace,
            started,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn python_output(
        &self,
        route: Route,
        value: Value,
        queue: Duration,
        elapsed: Duration,
        worker: &str,
        pid: u32,
        retried: bool,
        trace: &str,
        started: Instant,
    ) -> Output {
        let execution_us = value.get("elapsed_us").and_then(Value::as_u64).unwrap_or(0);
        let usage = usage_of(&value);
        let mut prediction = Prediction::new(value.get("fields").map(map_of).unwrap_or_default());
        prediction.usage = usage;
        let pool = match &route {
            Route::Python(p) => Some(p.clone()),
            Route::Native => None,
        };
        Output {
            meta: Meta {
                route,
                pool,
                worker: Some(worker.to_string()),
                pid: Some(pid),
                timings: Timings {
                    queue_us: queue.as_micros() as u64,
                    transport_us: (elapsed.as_micros() as u64).saturating_sub(execution_us),
                    execution_us,
                    total_us: started.elapsed().as_micros() as u64,
                },
                usage,
                trace_id: trace.to_string(),
                cached: false,
                fallback: None,
                retried,
                reason: String::new(),
            },
            prediction,
        }
    }

    /// `dspy.Predict(signature)(**inputs)`, routed.
    pub async fn predict(&self, signature: &str, inputs: Map) -> Result<Output> {
        self.run(&Program::new(dspex_core::ProgramSpec::predict(signature)), inputs, RequestOptions::default()).await
    }

    /// `dspy.ChainOfThought(signature)(**inputs)`, routed.
    pub async fn chain_of_thought(&self, signature: &str, inputs: Map) -> Result<Output> {
        self.run(&Program::new(dspex_core::ProgramSpec::chain_of_thought(signature)), inputs, RequestOptions::default())
            .await
    }

    /// `dspy.ReAct(signature, tools=...)(**inputs)` in Python; tools are
    /// import paths (`package.module:function`) the workers can import.
    pub async fn react(&self, signature: &str, tools: &[&str], inputs: Map) -> Result<Output> {
        let spec = dspex_core::ProgramSpec::react(signature, tools.iter().copied());
        self.run(&Program::new(spec), inputs, RequestOptions::default()).await
    }

    /// Run a registered Python command on a pool. Not idempotent unless
    /// `opts.idempotent` says so.
    pub async fn call(&self, pool: &str, command: &str, args: Value, opts: RequestOptions) -> Result<CallOutput> {
        let started = Instant::now();
        let trace = opts.trace_id.clone().unwrap_or_else(new_trace_id);
        let deadline = self.deadline(&opts);
        let route = Route::Python(pool.to_string());
        let handle = self.pool(pool)?;
        if !self.inner.router.allow(&route) {
            return Err(Error::new(ErrorKind::Overloaded, format!("the circuit for {} is open", route.label()))
                .with_pool(pool)
                .with_retryable(true));
        }
        self.inner.router.record_direct(command, &route);
        let popts = PoolCallOptions {
            deadline: Some(deadline),
            trace_id: Some(trace.clone()),
            session: opts.session.clone(),
            idempotent: opts.idempotent.unwrap_or(false),
            codec: None,
            pin: None,
        };
        let reply = handle.call(command, args, &popts).await;
        self.inner.router.record(&route, reply.as_ref().map(|_| ()));
        let reply = reply.map_err(|e| e.with_request_id(&trace))?;
        let elapsed = reply.elapsed.as_micros() as u64;
        Ok(CallOutput {
            meta: Meta {
                route,
                pool: Some(pool.to_string()),
                worker: Some(reply.worker),
                pid: Some(reply.pid),
                timings: Timings {
                    queue_us: reply.queue.as_micros() as u64,
                    transport_us: 0,
                    execution_us: elapsed,
                    total_us: started.elapsed().as_micros() as u64,
                },
                usage: None,
                trace_id: trace,
                cached: false,
                fallback: None,
                retried: reply.retried,
                reason: "command".into(),
            },
            value: reply.value,
        })
    }

    /// Run a program as a stream: text chunks as they arrive, then the
    /// final [`Output`], whichever way the request was routed.
    pub async fn stream(&self, program: &Program, inputs: Map, opts: RequestOptions) -> Result<OutputStream> {
        let started = Instant::now();
        let trace = opts.trace_id.clone().unwrap_or_else(new_trace_id);
        let deadline = self.deadline(&opts);
        let op = program.op();
        let native_lm = self.native_lm_for(program);
        let native_ok: std::result::Result<(), &str> = match (program.native_support(), &native_lm) {
            (Err(why), _) => Err(why),
            (Ok(()), Err(why)) => Err(why.as_str()),
            (Ok(()), Ok(_)) => Ok(()),
        };
        let decision = self.inner.router.decide(&RouteRequest {
            op,
            native: native_ok,
            prefer: opts.route,
            pool: opts.pool.as_deref(),
            shadow: Some(false),
        })?;
        let reason = decision.reason.to_string();
        if decision.primary == Route::Native {
            let lm = native_lm.map_err(Error::unsupported)?;
            let native = program.native().ok_or_else(|| Error::unsupported("not native"))?;
            let copts = dspex_native::CallOptions {
                deadline: Some(deadline),
                request_id: Some(trace.clone()),
                config: opts.config.clone(),
            };
            let inner = native.stream(lm, &inputs, &copts).await?;
            let router = self.inner.router.clone();
            let telemetry = self.inner.telemetry.clone();
            let trace2 = trace.clone();
            let stream = inner.map(move |item| match item {
                Ok(PredictEvent::Chunk { field, text }) => Ok(StreamEvent::Chunk { field, text }),
                Ok(PredictEvent::Prediction(prediction)) => {
                    router.record(&Route::Native, Ok(()));
                    let total = started.elapsed().as_micros() as u64;
                    telemetry.emit_lazy(Some(&trace2), || EventKind::NativeExecute {
                        op: op.into(),
                        elapsed_us: total,
                        ok: true,
                    });
                    Ok(StreamEvent::Done(Box::new(Output {
                        meta: Meta {
                            route: Route::Native,
                            pool: None,
                            worker: None,
                            pid: None,
                            timings: Timings { execution_us: total, total_us: total, ..Default::default() },
                            usage: prediction.usage,
                            trace_id: trace2.clone(),
                            cached: false,
                            fallback: None,
                            retried: false,
                            reason: reason.clone(),
                        },
                        prediction,
                    })))
                }
                Err(e) => {
                    router.record(&Route::Native, Err(&e));
                    Err(e.with_request_id(&trace2))
                }
            });
            return Ok(Box::pin(stream));
        }
        let Route::Python(pool) = decision.primary else { unreachable!("native handled above") };
        let handle = self.pool(&pool)?;
        let args = self.program_args(program, &inputs, &opts);
        let popts = PoolCallOptions {
            deadline: Some(deadline),
            trace_id: Some(trace.clone()),
            session: opts.session.clone(),
            idempotent: false,
            codec: None,
            pin: None,
        };
        let inner = handle.stream("dspy.stream", args, &popts).await?;
        let (worker, pid, queue) = (inner.worker.clone(), inner.pid, inner.queue);
        let rt = self.clone();
        let route = Route::Python(pool.clone());
        let sent = Instant::now();
        let stream = inner.map(move |item| match item {
            Ok(StreamItem::Chunk(v)) => Ok(StreamEvent::Chunk {
                field: v.get("field").and_then(Value::as_str).map(str::to_string),
                text: v.get("text").and_then(Value::as_str).unwrap_or_default().to_string(),
            }),
            Ok(StreamItem::Done(v)) => {
                rt.inner.router.record(&route, Ok(()));
                let mut out =
                    rt.python_output(route.clone(), v, queue, sent.elapsed(), &worker, pid, false, &trace, started);
                out.meta.reason = reason.clone();
                Ok(StreamEvent::Done(Box::new(out)))
            }
            Err(e) => {
                rt.inner.router.record(&route, Err(&e));
                Err(e.with_request_id(&trace))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn streamed_command(
        &self,
        pool: &str,
        command: &str,
        args: Value,
        deadline: Instant,
        progress: Option<ProgressFn>,
    ) -> Result<(Value, Meta)> {
        let started = Instant::now();
        let trace = new_trace_id();
        let route = Route::Python(pool.to_string());
        let handle = self.pool(pool)?;
        self.inner.router.record_direct(command, &route);
        let popts = PoolCallOptions {
            deadline: Some(deadline),
            trace_id: Some(trace.clone()),
            session: None,
            idempotent: false,
            codec: None,
            pin: None,
        };
        let mut stream = handle.stream(command, args, &popts).await?;
        let (worker, pid, queue) = (stream.worker.clone(), stream.pid, stream.queue);
        let sent = Instant::now();
        while let Some(item) = stream.next().await {
            match item.map_err(|e| e.with_request_id(&trace))? {
                StreamItem::Chunk(v) => {
                    if let Some(p) = &progress {
                        p(&v);
                    }
                }
                StreamItem::Done(v) => {
                    let elapsed = sent.elapsed().as_micros() as u64;
                    let meta = Meta {
                        route,
                        pool: Some(pool.to_string()),
                        worker: Some(worker),
                        pid: Some(pid),
                        timings: Timings {
                            queue_us: queue.as_micros() as u64,
                            transport_us: 0,
                            execution_us: elapsed,
                            total_us: started.elapsed().as_micros() as u64,
                        },
                        usage: None,
                        trace_id: trace,
                        cached: false,
                        fallback: None,
                        retried: false,
                        reason: command.to_string(),
                    };
                    return Ok((v, meta));
                }
            }
        }
        Err(Error::new(ErrorKind::Protocol, format!("{command} ended without a result")).with_pool(pool))
    }

    /// Compile a program with a DSPy optimizer (in Python); `progress` sees
    /// each progress event. The result runs natively when the original could.
    pub async fn optimize(&self, req: OptimizeRequest, progress: Option<ProgressFn>) -> Result<Optimized> {
        let pool = req.pool.clone().unwrap_or_else(|| {
            if self.pool("optimizer").is_ok() {
                "optimizer".into()
            } else {
                self.inner.config.router.default_pool.clone()
            }
        });
        let mut args = json!({
            "optimizer": req.optimizer,
            "program": req.program.wire(),
            "trainset": req.trainset,
            "metric": req.metric,
            "lm": self.python_lm_for(&req.program),
            "params": req.params,
            "compile_params": req.compile_params,
        });
        if !req.input_keys.is_empty() {
            args["input_keys"] = json!(req.input_keys);
        }
        if let Some(v) = &req.valset {
            args["valset"] = json!(v);
        }
        let deadline = Instant::now() + req.timeout.unwrap_or(Duration::from_secs(3600));
        let (value, meta) = self.streamed_command(&pool, "dspy.optimize", args, deadline, progress).await?;
        let state = value.get("state").cloned().unwrap_or(Value::Null);
        let demos = value.get("demos").and_then(Value::as_u64).unwrap_or(0) as usize;
        Ok(Optimized { program: req.program.with_state(state.clone()), state, demos, meta })
    }

    /// Score a program on a dev set with `dspy.Evaluate` (in Python);
    /// `progress` sees one event per scored example.
    pub async fn evaluate(
        &self,
        program: &Program,
        devset: Vec<Map>,
        metric: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Evaluation> {
        let pool = self.inner.config.router.default_pool.clone();
        let args = json!({
            "program": program.wire(),
            "devset": devset,
            "metric": metric,
            "lm": self.python_lm_for(program),
        });
        let deadline = self.deadline(&RequestOptions::default());
        let (value, meta) = self.streamed_command(&pool, "dspy.evaluate", args, deadline, progress).await?;
        Ok(Evaluation {
            score: value.get("score").and_then(Value::as_f64).unwrap_or(0.0),
            results: value.get("results").and_then(Value::as_array).cloned().unwrap_or_default(),
            meta,
        })
    }
}
