//! The runtime: the handle an application holds.
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
//! Every request goes through the one dispatcher (see [`crate::dispatch`]
//! in the architecture docs): one deadline (its own, or
//! `request_timeout_ms`) spent across queueing, transport and execution,
//! and an [`Output`] (the prediction and where, how long and at what cost
//! it ran) or a classified [`Error`] at the end.

mod start;

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dspex_bridge::commands::{
    self, EvaluateArgs, EvaluateReply, OptimizeArgs, OptimizeReply, ParallelArgs, ParallelReply,
};
use dspex_core::{Error, ErrorKind, Map, Prediction, ProgramSpec, Result, RuntimeConfig, Value};
use dspex_native::lm::gateway::GatewayStats;
use parking_lot::Mutex;
use ractor::ActorRef;
use serde::Serialize;
use tokio::sync::broadcast;

pub use start::{EnvProgress, RuntimeBuilder};

use crate::dispatch::{Dispatcher, ProgressFn};
use crate::pipeline::{
    IntoPipeline, Pipeline, PipelineBuilder, PipelineResult, PipelineRun, PipelineRunInfo, PipelineRuns,
};
use crate::pool::{Launch, PoolHandle, PoolStats};
use crate::program::Program;
use crate::request::{CallOutput, Meta, Output, OutputStream, RequestOptions};
use crate::router::Router;
use crate::session::{Session, SessionOptions, Sessions};
use crate::supervisor::{ChildSpec, Supervisor, SupervisorMsg, TreeNode};
use crate::telemetry::Telemetry;

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
    /// What DSPy's `program.save(path)` writes: the state and its
    /// `metadata` (the versions DSPy's `program.load` checks).
    pub saved: Value,
    /// Where and how it ran.
    pub meta: Meta,
}

/// The results of [`Runtime::parallel`].
#[derive(Debug)]
pub struct ParallelOutput {
    /// One per input, in input order: its prediction or its own error
    /// (whose context names the item as the field `inputs[i]`).
    pub results: Vec<Result<Prediction>>,
    /// Where and how the batch ran.
    pub meta: Meta,
}

/// An evaluation run: `dspy.Evaluate(devset, metric, num_threads)(program)`.
#[derive(Debug, Clone)]
pub struct EvaluateRequest {
    /// The program to score.
    pub program: Program,
    /// Examples to score it on.
    pub devset: Vec<Map>,
    /// Metric: `exact_match`, `passage_match` (the native metrics' names,
    /// scored by DSPy's equal ones) or a Python import path.
    pub metric: String,
    /// Input keys of the examples (all but `answer` when empty).
    pub input_keys: Vec<String>,
    /// Examples scored at once (`dspy.Evaluate`'s `num_threads`; 1).
    pub num_threads: usize,
    /// Pool (the default pool when unset).
    pub pool: Option<String>,
    /// Time allowed for the whole evaluation (1 hour when unset).
    pub timeout: Option<Duration>,
}

impl EvaluateRequest {
    /// Score `program` on `devset` with `metric`, one example at a time.
    pub fn new(program: Program, devset: Vec<Map>, metric: &str) -> EvaluateRequest {
        EvaluateRequest {
            program,
            devset,
            metric: metric.into(),
            input_keys: Vec::new(),
            num_threads: 1,
            pool: None,
            timeout: None,
        }
    }

    /// Score `n` examples at once (at least 1).
    pub fn num_threads(mut self, n: usize) -> EvaluateRequest {
        self.num_threads = n.max(1);
        self
    }

    /// Fail with `Timeout` if the evaluation takes longer than `t`.
    pub fn timeout(mut self, t: Duration) -> EvaluateRequest {
        self.timeout = Some(t);
        self
    }

    /// Run on pool `pool` (else the default pool).
    pub fn pool(mut self, pool: impl Into<String>) -> EvaluateRequest {
        self.pool = Some(pool.into());
        self
    }

    /// Set the input keys.
    pub fn input_keys<I: IntoIterator<Item = S>, S: Into<String>>(mut self, keys: I) -> EvaluateRequest {
        self.input_keys = keys.into_iter().map(Into::into).collect();
        self
    }
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

pub(crate) struct Inner {
    config: RuntimeConfig,
    dispatcher: Dispatcher,
    sessions: Sessions,
    pipelines: Arc<PipelineRuns>,
    root: ActorRef<SupervisorMsg>,
    root_done: Mutex<Option<ractor::concurrency::JoinHandle<()>>>,
    /// How workers start (`None`: no pools).
    launch: Option<Launch>,
    started: Instant,
    /// The Prometheus registry, when the builder installed it.
    #[cfg(feature = "prometheus")]
    prometheus: Option<crate::prometheus::PrometheusMetrics>,
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
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("pools", &self.pool_names()).finish()
    }
}

/// A runtime that does not keep it alive (the console holds one).
#[derive(Clone)]
pub(crate) struct WeakRuntime(Weak<Inner>);

impl WeakRuntime {
    pub(crate) fn upgrade(&self) -> Option<Runtime> {
        self.0.upgrade().map(|inner| Runtime { inner })
    }
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

    pub(crate) fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    // -------------------------------------------------------------- inspection

    /// The runtime's metrics in the Prometheus text format, when it was
    /// built with [`RuntimeBuilder::prometheus`].
    #[cfg(feature = "prometheus")]
    pub fn metrics_text(&self) -> Option<String> {
        self.inner.prometheus.as_ref().map(|p| p.render())
    }

    /// A snapshot of the supervision tree.
    pub async fn tree(&self) -> Result<TreeNode> {
        Supervisor::snapshot(&self.inner.root)
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot read the supervision tree: {e}")))
    }

    /// The pools.
    pub fn pools(&self) -> Vec<PoolHandle> {
        self.inner.dispatcher.pools().to_vec()
    }

    /// Pool names.
    pub fn pool_names(&self) -> Vec<String> {
        self.inner.dispatcher.pool_names()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Result<PoolHandle> {
        self.inner.dispatcher.pool(name)
    }

    /// Join a cluster: from now on pool calls may run on other nodes (see
    /// [`crate::cluster`]). Called by a cluster implementation once it has
    /// connected; a runtime joins at most one cluster.
    pub fn attach_cluster(&self, cluster: Arc<dyn crate::Cluster>) -> Result<()> {
        self.inner.dispatcher.attach_cluster(cluster)
    }

    /// The cluster's live nodes, this one included (empty outside a cluster).
    pub fn nodes(&self) -> Vec<dspex_core::NodeStatus> {
        self.inner.dispatcher.cluster().map(|c| c.nodes()).unwrap_or_default()
    }

    /// Stop taking work from other nodes of the cluster, wait up to `grace`
    /// for what runs here for them, then hand this node's sessions over
    /// (the next request for each, on any node, takes it over at once).
    /// `Config` outside a cluster.
    pub async fn drain_cluster(&self, grace: Duration) -> Result<()> {
        let cluster = self
            .inner
            .dispatcher
            .cluster()
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Config, "this runtime is not in a cluster (nothing to drain)"))?;
        cluster.drain(grace).await;
        let handed = self.inner.sessions.hand_over(grace).await;
        if handed > 0 {
            tracing::info!(sessions = handed, "handed this node's sessions over");
        }
        Ok(())
    }

    /// This node's name in its cluster.
    pub fn node_name(&self) -> Option<String> {
        self.inner.dispatcher.cluster().map(|c| c.node().to_string())
    }

    /// Figures about every pool.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.inner.dispatcher.pools().iter().map(|p| p.stats()).collect()
    }

    /// The LM gateway's figures: per LM and per tenant, calls, cache hits,
    /// retries, refusals, tokens and cost (native and Python calls alike).
    pub fn gateway_stats(&self) -> GatewayStats {
        self.inner.dispatcher.lms().gateway().stats()
    }

    /// The LM gateway every LM call of this runtime goes through (a cluster
    /// shares its budgets and limits with the other nodes').
    pub fn gateway(&self) -> &crate::Gateway {
        self.inner.dispatcher.lms().gateway()
    }

    /// The router (decisions, counters, breakers, settings).
    pub fn router(&self) -> &Router {
        self.inner.dispatcher.router()
    }

    /// Receive every telemetry event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<dspex_core::Event>> {
        self.telemetry().subscribe()
    }

    /// The telemetry bus.
    pub fn telemetry(&self) -> &Telemetry {
        self.inner.dispatcher.telemetry()
    }

    /// The configuration the runtime runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The interpreter and `PYTHONPATH` workers start with (`None` for a
    /// runtime without pools).
    pub fn python(&self) -> Option<(PathBuf, Vec<PathBuf>)> {
        self.inner.launch.as_ref().map(|l| (l.python.clone(), l.python_path.clone()))
    }

    // -------------------------------------------------------------- management

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

    /// Add a child under the root supervisor of the running tree.
    pub(crate) async fn add_child(&self, child: ChildSpec) -> std::result::Result<(), String> {
        Supervisor::add_child(&self.inner.root, child).await
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

    /// Run a program: routed, cached when deterministic, with fallback and
    /// shadowing as configured.
    pub async fn run(&self, program: &Program, inputs: Map, opts: RequestOptions) -> Result<Output> {
        let d = &self.inner.dispatcher;
        d.run(&d.request(program, inputs, opts), None).await
    }

    /// `dspy.Predict(signature)(**inputs)`, routed.
    pub async fn predict(&self, signature: &str, inputs: Map) -> Result<Output> {
        self.run(&Program::new(ProgramSpec::predict(signature)), inputs, RequestOptions::default()).await
    }

    /// `dspy.ChainOfThought(signature)(**inputs)`, routed.
    pub async fn chain_of_thought(&self, signature: &str, inputs: Map) -> Result<Output> {
        self.run(&Program::new(ProgramSpec::chain_of_thought(signature)), inputs, RequestOptions::default()).await
    }

    /// `dspy.ReAct(signature, tools=...)(**inputs)` in Python; tools are
    /// import paths (`package.module:function`) the workers can import.
    pub async fn react(&self, signature: &str, tools: &[&str], inputs: Map) -> Result<Output> {
        let spec = ProgramSpec::react(signature, tools.iter().copied());
        self.run(&Program::new(spec), inputs, RequestOptions::default()).await
    }

    /// Run a registered Python command on a pool. Not idempotent unless
    /// `opts.idempotent` says so.
    pub async fn call(&self, pool: &str, command: &str, args: Value, opts: RequestOptions) -> Result<CallOutput> {
        let d = &self.inner.dispatcher;
        d.call(pool, command, args, &d.context(opts, false)).await
    }

    /// Run a program as a stream: text chunks as they arrive, then the
    /// final [`Output`], whichever way the request was routed.
    pub async fn stream(&self, program: &Program, inputs: Map, opts: RequestOptions) -> Result<OutputStream> {
        let d = &self.inner.dispatcher;
        d.stream(d.request(program, inputs, opts)).await
    }

    /// `dspy.Parallel` over `inputs` (in Python, `num_threads` at once):
    /// one result per input, in input order, each the item's prediction or
    /// its own classified error — one failing item does not fail the rest.
    /// The call as a whole fails only when the batch cannot run (no pool,
    /// a timeout, a crashed worker). It runs on `opts.pool` or the default
    /// pool; for native programs, concurrent [`Runtime::run`] calls are the
    /// faster way.
    pub async fn parallel(
        &self,
        program: &Program,
        inputs: Vec<Map>,
        num_threads: usize,
        opts: RequestOptions,
    ) -> Result<ParallelOutput> {
        let d = &self.inner.dispatcher;
        let pool = opts.pool.clone().unwrap_or_else(|| d.default_pool());
        let args = commands::to_args(&ParallelArgs {
            program: program.wire().clone(),
            inputs,
            lm: d.lms().python_for(program)?,
            num_threads: num_threads.max(1),
        });
        let out = d.call(&pool, commands::PARALLEL, args, &d.context(opts, false)).await?;
        let reply: ParallelReply = commands::from_reply(commands::PARALLEL, out.value)?;
        let results = reply
            .results
            .into_iter()
            .enumerate()
            .map(|(i, item)| match (item.fields, item.error) {
                (_, Some(e)) => Err(e.into_error().with_pool(pool.clone()).with_field(format!("inputs[{i}]"))),
                (Some(fields), None) => Ok(Prediction { fields, ..Prediction::default() }),
                (None, None) => {
                    Err(Error::new(ErrorKind::Protocol, format!("item {i} of dspy.parallel has no result")))
                }
            })
            .collect();
        Ok(ParallelOutput { results, meta: out.meta })
    }

    /// Compile a program with a DSPy optimizer (in Python); `progress` sees
    /// each progress event. The result runs natively when the original could.
    pub async fn optimize(&self, req: OptimizeRequest, progress: Option<ProgressFn>) -> Result<Optimized> {
        let d = &self.inner.dispatcher;
        let pool = req.pool.clone().unwrap_or_else(|| {
            if d.pool("optimizer").is_ok() {
                "optimizer".into()
            } else {
                d.default_pool()
            }
        });
        let args = commands::to_args(&OptimizeArgs {
            optimizer: req.optimizer,
            program: req.program.wire().clone(),
            trainset: req.trainset,
            metric: req.metric,
            lm: d.lms().python_for(&req.program)?,
            params: req.params,
            compile_params: req.compile_params,
            input_keys: req.input_keys,
            valset: req.valset,
        });
        let opts = RequestOptions::default().timeout(req.timeout.unwrap_or(Duration::from_secs(3600)));
        let (value, meta) =
            d.stream_command(&pool, commands::OPTIMIZE, args, &d.context(opts, false), progress).await?;
        let reply: OptimizeReply = commands::from_reply(commands::OPTIMIZE, value)?;
        let mut saved = reply.state.clone();
        if let Some(s) = saved.as_object_mut() {
            s.insert("metadata".into(), reply.metadata);
        }
        Ok(Optimized {
            saved,
            program: req.program.with_state(reply.state.clone()),
            state: reply.state,
            demos: reply.demos as usize,
            meta,
        })
    }

    /// Score a program on a dev set with `dspy.Evaluate` (in Python);
    /// `progress` sees one event per scored example.
    pub async fn evaluate(&self, req: EvaluateRequest, progress: Option<ProgressFn>) -> Result<Evaluation> {
        let d = &self.inner.dispatcher;
        let pool = req.pool.clone().unwrap_or_else(|| d.default_pool());
        let args = commands::to_args(&EvaluateArgs {
            program: req.program.wire().clone(),
            lm: d.lms().python_for(&req.program)?,
            devset: req.devset,
            metric: req.metric,
            input_keys: req.input_keys,
            num_threads: req.num_threads.max(1),
        });
        let opts = RequestOptions::default().timeout(req.timeout.unwrap_or(Duration::from_secs(3600)));
        let (value, meta) =
            d.stream_command(&pool, commands::EVALUATE, args, &d.context(opts, false), progress).await?;
        let reply: EvaluateReply = commands::from_reply(commands::EVALUATE, value)?;
        Ok(Evaluation { score: reply.score, results: reply.results, meta })
    }

    // -------------------------------------------------------------- sessions

    /// The runtime's sessions: create, get, list.
    pub fn sessions(&self) -> Sessions {
        self.inner.sessions.clone()
    }

    /// Create a session with the default options.
    pub async fn session(&self) -> Result<Session> {
        self.inner.sessions.create(SessionOptions::default()).await
    }

    // -------------------------------------------------------------- pipelines

    /// Start building a pipeline (the same as [`Pipeline::builder`]).
    pub fn pipeline(&self, name: &str) -> PipelineBuilder {
        Pipeline::builder(name)
    }

    /// Run a pipeline (a [`Pipeline`], a builder or a file path) to its end.
    pub async fn run_pipeline(&self, pipeline: impl IntoPipeline, inputs: Map) -> Result<PipelineResult> {
        self.start_pipeline(pipeline, inputs).await?.wait().await
    }

    /// Start a pipeline run as a supervised actor; cancel it or wait for it.
    pub async fn start_pipeline(&self, pipeline: impl IntoPipeline, inputs: Map) -> Result<PipelineRun> {
        self.inner.pipelines.start(pipeline, inputs).await
    }

    /// Pipeline runs in progress.
    pub fn pipeline_runs(&self) -> Vec<PipelineRunInfo> {
        self.inner.pipelines.list()
    }

    /// Cancel a pipeline run by id (what [`PipelineRun::cancel`] does); a
    /// run inside a session ends its session request with `Cancelled`.
    pub fn cancel_pipeline(&self, run_id: &str) -> Result<()> {
        self.inner.pipelines.cancel(run_id)
    }
}
