//! Starting a runtime: the builder, what the configuration resolves to
//! (interpreters, LMs, the cache), and the supervision tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_bridge::{default_cache_dir, worker_sources, EnvSpec, PythonEnv, RunRegistry};
use dspex_core::{
    CacheConfig, Error, ErrorKind, EventKind, IntensityConfig, LmCalls, LmConfig, Map, PoolConfig, Result,
    RouterConfig, RuntimeConfig, SessionConfig, Value,
};
use dspex_native::lm::{Gateway, LanguageModel};
use parking_lot::Mutex;
use ractor::ActorRef;
use tracing::{info, warn};

use super::{Inner, Runtime};
use crate::cache::ResultCache;
use crate::dispatch::Dispatcher;
use crate::lms::{Lms, WorkerGateway};
use crate::pipeline::PipelineRuns;
use crate::pool::{Launch, PoolHandle};
use crate::router::{Router, RouterActor};
use crate::session::Sessions;
use crate::supervisor::{ChildSpec, DynamicSupervisor, NodeInfo, Restart, Strategy, Supervisor, SupervisorSpec};
use crate::telemetry::Telemetry;

/// Progress messages while Python environments are provisioned.
pub type EnvProgress = Arc<dyn Fn(&str) + Send + Sync>;

/// Builds a [`Runtime`]. The same fields as [`RuntimeConfig`].
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    native_lm: Option<Arc<dyn LanguageModel>>,
    python_lm: Option<Value>,
    progress: Option<EnvProgress>,
    extra_children: Vec<ChildSpec>,
    #[cfg(feature = "prometheus")]
    prometheus: bool,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}
impl RuntimeBuilder {
    /// Start from a configuration.
    pub fn from_config(config: RuntimeConfig) -> RuntimeBuilder {
        RuntimeBuilder {
            config,
            native_lm: None,
            python_lm: None,
            progress: None,
            extra_children: Vec::new(),
            #[cfg(feature = "prometheus")]
            prometheus: false,
        }
    }

    /// The default LM (an OpenAI-compatible service), for both routes.
    pub fn lm(mut self, lm: LmConfig) -> RuntimeBuilder {
        self.config.lm = Some(lm);
        self
    }

    /// The LM gateway's policies: limits per LM, budgets per tenant, the
    /// shared cache, prices (see [`GatewayConfig`](dspex_core::GatewayConfig)).
    pub fn gateway(mut self, gateway: dspex_core::GatewayConfig) -> RuntimeBuilder {
        self.config.gateway = gateway;
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

    /// No Python at all: no pools, nothing provisioned, no interpreter
    /// looked for. Native-capable programs run as usual; a request that
    /// needs Python fails with a `config` error naming the pool it needed.
    pub fn native_only(mut self) -> RuntimeBuilder {
        self.config.pools.clear();
        self.config.default_pool = false;
        self
    }

    /// Add a child under the root supervisor, after the built-in ones (the
    /// debug console is one).
    pub fn child(mut self, child: ChildSpec) -> RuntimeBuilder {
        self.extra_children.push(child);
        self
    }

    /// Record the runtime's metrics in a Prometheus registry (installed
    /// once per process; see [`crate::prometheus`]), rendered by
    /// [`Runtime::metrics_text`].
    #[cfg(feature = "prometheus")]
    pub fn prometheus(mut self) -> RuntimeBuilder {
        self.prometheus = true;
        self
    }

    /// Start the runtime: provision Python where needed, start the tree,
    /// wait until every pool's workers are ready.
    pub async fn start(self) -> Result<Runtime> {
        start(self).await
    }
}

/// The interpreter a pool runs: the pool's own, a provisioned environment
/// for its requirements, the runtime's, `$DSPEX_PYTHON`, or a provisioned
/// environment for its preset (`general` for user-defined pools).
async fn resolve_python(
    pool: &PoolConfig,
    config: &RuntimeConfig,
    cache_dir: &Path,
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

/// The pools of `config`, each with the interpreter it runs (pools that
/// share an interpreter share its resolution).
async fn build_pools(
    config: &RuntimeConfig,
    telemetry: &Telemetry,
    progress: &(dyn Fn(&str) + Send + Sync),
    gateway: &Gateway,
) -> Result<(Vec<PoolHandle>, Option<Launch>)> {
    if config.pools.is_empty() {
        return Ok((Vec::new(), None));
    }
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
    let mut pools = Vec::with_capacity(config.pools.len());
    let mut first = None;
    for pc in &config.pools {
        let python = resolve_python(pc, config, &cache_dir, progress).await?;
        let launch = Launch {
            python,
            python_path: vec![sources.clone()],
            registry: registry.clone(),
            env: vec![("DSPEX_DSPY_DISK_CACHE".into(), "0".into())],
            lm_gateway: (pc.lm_calls == LmCalls::Gateway)
                .then(|| Arc::new(WorkerGateway(gateway.clone())) as Arc<dyn dspex_bridge::LmGateway>),
        };
        first.get_or_insert_with(|| launch.clone());
        pools.push(PoolHandle::new(pc.clone(), launch, telemetry.clone()));
    }
    Ok((pools, first))
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

async fn start(b: RuntimeBuilder) -> Result<Runtime> {
    let mut config = b.config;
    if config.pools.is_empty() && config.default_pool {
        config.pools.push(PoolConfig::preset("general").unwrap_or_else(|| PoolConfig::new("general")));
    }
    let mut seen = std::collections::HashSet::new();
    for p in &config.pools {
        if !seen.insert(p.name.clone()) {
            return Err(Error::new(ErrorKind::Config, format!("two pools are named {}", p.name)));
        }
    }
    // The recorder goes in before the runtime records anything.
    #[cfg(feature = "prometheus")]
    let prometheus = if b.prometheus { Some(crate::prometheus::install()?) } else { None };
    let telemetry = Telemetry::new();
    let progress: EnvProgress = b.progress.unwrap_or_else(|| Arc::new(|m: &str| info!(target: "dspex::env", "{m}")));
    let gateway = Gateway::new(config.gateway.clone())?.with_observer(crate::telemetry::record_gateway);
    let (pools, launch) = build_pools(&config, &telemetry, &*progress, &gateway).await?;
    let router = Arc::new(Router::new(config.router.clone(), telemetry.clone()));
    let pools_intensity = config.pools_intensity.unwrap_or(IntensityConfig::new(10, Duration::from_secs(60)));
    let mut pools_spec = SupervisorSpec::new("pools", Strategy::OneForOne, pools_intensity);
    for p in &pools {
        pools_spec = pools_spec.child(p.child_spec());
    }
    let mut root = SupervisorSpec::new("dspex", Strategy::RestForOne, IntensityConfig::new(3, Duration::from_secs(60)))
        .kind("runtime")
        .child(telemetry_child(telemetry.clone()))
        .child(RouterActor::child_spec(router.clone()))
        .child(
            ChildSpec::new(
                "pools",
                Restart::Permanent,
                crate::supervisor::supervisor_start_fn(move || pools_spec.clone()),
            )
            .kind("supervisor")
            .shutdown_timeout(Duration::from_secs(30)),
        )
        .child(empty_supervisor("sessions", Strategy::OneForOne))
        .child(empty_supervisor("pipelines", Strategy::OneForOne));
    for c in b.extra_children {
        root = root.child(c);
    }
    let lms = Lms::new(config.lm.clone(), b.native_lm, b.python_lm, gateway)?;
    let cache = config
        .cache
        .enabled
        .then(|| ResultCache::new(config.cache.capacity, Duration::from_secs(config.cache.ttl_secs)));
    let started = Instant::now();
    let (root_ref, root_done) = Supervisor::start(None, root)
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("the runtime's tree did not start: {e}")))?;
    let dispatcher =
        Dispatcher::new(router, pools, telemetry.clone(), cache, lms, Duration::from_millis(config.request_timeout_ms));
    let pipelines =
        Arc::new(PipelineRuns::new(dispatcher.clone(), DynamicSupervisor::new(root_ref.clone(), "pipelines")));
    let sessions = Sessions::new(
        dispatcher.clone(),
        config.sessions.clone(),
        pipelines.clone(),
        DynamicSupervisor::new(root_ref.clone(), "sessions"),
    );
    let rt = Runtime {
        inner: Arc::new(Inner {
            config,
            dispatcher,
            sessions,
            pipelines,
            root: root_ref,
            root_done: Mutex::new(Some(root_done)),
            launch,
            started,
            #[cfg(feature = "prometheus")]
            prometheus,
        }),
    };
    for p in rt.pools() {
        let size = p.config().size;
        p.wait_ready(size, Duration::from_secs(120)).await?;
    }
    rt.inner.sessions.restore().await;
    telemetry.emit(
        None,
        EventKind::Lifecycle {
            actor: "dspex".into(),
            what: "started".into(),
            detail: format!("in {:?}", started.elapsed()),
        },
    );
    Ok(rt)
}
