//! The dispatcher: the one request path.
//!
//! Every caller — [`Runtime::run`](crate::Runtime::run), streams, worker
//! commands, sessions, pipeline steps, optimize and evaluate — hands its
//! request to the [`Dispatcher`]. It asks the [`Router`] for a [`Plan`]
//! (ordered targets, an optional shadow), executes it target by target,
//! records each outcome against the target's circuit breaker, and returns
//! an [`Output`] whose [`Meta`] comes from [`RequestContext::meta`]. A
//! route resolves to a [`Target`]: the native engine or a local pool, unless
//! the caller supplies its own target for Python work (a session's pinned
//! worker). A remote pool is one more kind of target; nothing upstream of
//! the dispatcher changes for it.
//!
//! Nothing here waits on Python I/O while holding anything shared: pools
//! check workers out with a compare-and-swap and talk to them through the
//! bridge.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dspex_bridge::commands::{self, RunArgs, RunReply, StreamChunk};
use dspex_bridge::StreamItem;
use dspex_core::{Error, ErrorKind, EventKind, Map, Prediction, Result, Route, Value};
use dspex_native::lm::LanguageModel;
use dspex_native::PredictEvent;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tracing::{warn, Instrument};

use crate::cache::{is_deterministic, CacheKey, ResultCache};
use crate::cluster::Cluster;
use crate::lms::{Lms, TimedLm};
use crate::pool::{PoolCallOptions, PoolHandle, PoolReply};
use crate::program::Program;
use crate::request::{CallOutput, Meta, Output, OutputStream, Ran, Request, RequestContext, StreamEvent};
use crate::router::{Plan, RouteRequest, Router};
use crate::telemetry::Telemetry;

/// Where a plan's route runs, when the caller brings its own: a session's
/// pinned worker today, a remote pool later. The dispatcher records the
/// outcome and builds the fallback around it; the target only runs.
pub(crate) trait Target: Send + Sync {
    /// Run the request here.
    fn run<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Output>>;
}

/// Where a pool call runs.
enum Placement {
    /// The local pool (no cluster).
    Local(PoolHandle),
    /// The local pool of cluster node (this one) `.1`.
    Here(PoolHandle, String),
    /// Another node.
    Remote(Arc<dyn Cluster>),
}

/// A streamed pool call, wherever it runs.
struct PlacedStream {
    worker: String,
    pid: u32,
    queue: Duration,
    node: Option<String>,
    items: futures_util::stream::BoxStream<'static, Result<StreamItem>>,
}

/// Progress callback of streamed commands (`optimize`, `evaluate`).
pub type ProgressFn = Arc<dyn Fn(&Value) + Send + Sync>;

struct Shared {
    router: Arc<Router>,
    pools: Vec<PoolHandle>,
    telemetry: Telemetry,
    cache: Option<ResultCache<Output>>,
    lms: Lms,
    request_timeout: Duration,
    /// The cluster, once one is attached.
    cluster: OnceLock<Arc<dyn Cluster>>,
}

/// Executes plans for every caller. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("pools", &self.pool_names()).finish()
    }
}

impl Dispatcher {
    pub(crate) fn new(
        router: Arc<Router>,
        pools: Vec<PoolHandle>,
        telemetry: Telemetry,
        cache: Option<ResultCache<Output>>,
        lms: Lms,
        request_timeout: Duration,
    ) -> Dispatcher {
        Dispatcher {
            shared: Arc::new(Shared {
                router,
                pools,
                telemetry,
                cache,
                lms,
                request_timeout,
                cluster: OnceLock::new(),
            }),
        }
    }

    /// Attach a cluster (once).
    pub(crate) fn attach_cluster(&self, cluster: Arc<dyn Cluster>) -> Result<()> {
        self.shared
            .cluster
            .set(cluster)
            .map_err(|_| Error::new(ErrorKind::Config, "this runtime has joined a cluster already"))
    }

    /// The deadline a request gets when it sets none.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared.request_timeout
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.shared.cluster.get()
    }

    /// Where a pool call runs — the one placement decision between the
    /// local pool and the cluster (see [`crate::cluster`]).
    fn place(&self, pool: &str, opts: &PoolCallOptions) -> Result<Placement> {
        let local = self.shared.pools.iter().find(|p| p.name() == pool);
        let Some(cluster) = self.shared.cluster.get() else { return self.pool(pool).map(Placement::Local) };
        let here = cluster.node();
        let remote = match (opts.node.as_deref(), local) {
            (Some(n), Some(_)) if n == here => false,
            (Some(_), _) => true,
            (None, None) => true,
            (None, Some(l)) => {
                cluster.serves(pool, None)
                    && (opts.prefer_remote || l.stats().queued >= cluster.spill_queue() || l.ready() == 0)
            }
        };
        Ok(match (remote, local) {
            (true, _) | (false, None) => Placement::Remote(cluster.clone()),
            (false, Some(l)) => Placement::Here(l.clone(), here.to_string()),
        })
    }

    /// Run a pool call where it belongs.
    pub(crate) async fn pool_call(
        &self,
        pool: &str,
        op: &str,
        args: Value,
        opts: &PoolCallOptions,
    ) -> Result<PoolReply> {
        match self.place(pool, opts)? {
            Placement::Local(handle) => handle.call(op, args, opts).await,
            Placement::Here(handle, node) => {
                let mut reply = handle.call(op, args, opts).await.map_err(|e| e.with_node(node.clone()))?;
                reply.node = Some(node);
                Ok(reply)
            }
            Placement::Remote(cluster) => cluster.call(pool, op, args, opts).await,
        }
    }

    /// Run a streamed pool call where it belongs.
    async fn pool_stream(&self, pool: &str, op: &str, args: Value, opts: &PoolCallOptions) -> Result<PlacedStream> {
        let (handle, node) = match self.place(pool, opts)? {
            Placement::Local(handle) => (handle, None),
            Placement::Here(handle, node) => (handle, Some(node)),
            Placement::Remote(cluster) => {
                let s = cluster.stream(pool.to_string(), op.to_string(), args, opts.clone()).await?;
                return Ok(PlacedStream {
                    worker: s.worker,
                    pid: s.pid,
                    queue: s.queue,
                    node: Some(s.node),
                    items: s.items,
                });
            }
        };
        let s = handle.stream(op, args, opts).await.map_err(|e| match &node {
            Some(n) => e.with_node(n.clone()),
            None => e,
        })?;
        Ok(PlacedStream { worker: s.worker.clone(), pid: s.pid, queue: s.queue, node, items: Box::pin(s) })
    }

    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.shared.router
    }

    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    pub(crate) fn lms(&self) -> &Lms {
        &self.shared.lms
    }

    pub(crate) fn pools(&self) -> &[PoolHandle] {
        &self.shared.pools
    }

    pub(crate) fn pool_names(&self) -> Vec<String> {
        self.shared.pools.iter().map(|p| p.name().to_string()).collect()
    }

    /// A pool by name. A runtime with no pools at all answers `Config` (it
    /// was built native-only); one with pools answers `NotFound`.
    pub(crate) fn pool(&self, name: &str) -> Result<PoolHandle> {
        if let Some(p) = self.shared.pools.iter().find(|p| p.name() == name) {
            return Ok(p.clone());
        }
        let e = if self.shared.pools.is_empty() {
            Error::new(
                ErrorKind::Config,
                format!(
                    "this request needs the Python pool {name}, but the runtime has no Python pools \
                     (it was built native-only; configure a pool to run Python)"
                ),
            )
        } else {
            Error::new(ErrorKind::NotFound, format!("no pool named {name} (pools: {})", self.pool_names().join(", ")))
        };
        Err(e.with_pool(name))
    }

    /// The pool a request without one goes to.
    pub(crate) fn default_pool(&self) -> String {
        self.shared.router.config().default_pool
    }

    /// Settle a caller's options into a request context.
    pub(crate) fn context(&self, opts: crate::RequestOptions, idempotent: bool) -> RequestContext {
        RequestContext::new(opts, self.shared.request_timeout, idempotent)
    }

    /// A program request.
    pub(crate) fn request(&self, program: &Program, inputs: Map, opts: crate::RequestOptions) -> Request {
        Request { program: program.clone(), inputs, ctx: self.context(opts, true) }
    }

    // ------------------------------------------------------------- programs

    /// Run a program request: from the cache when it may be, else by its
    /// plan. `python`, when given, runs the plan's Python routes.
    pub(crate) async fn run(&self, req: &Request, python: Option<&dyn Target>) -> Result<Output> {
        let span = request_span(req);
        self.run_in_span(req, python).instrument(span).await
    }

    async fn run_in_span(&self, req: &Request, python: Option<&dyn Target>) -> Result<Output> {
        let trace = &req.ctx.trace_id;
        let op = req.program.op();
        let key = self.cache_key(req);
        if let (Some(k), Some(cache)) = (&key, &self.shared.cache) {
            if let Some(mut hit) = cache.get(k) {
                self.shared.telemetry.emit_lazy(Some(trace), || EventKind::CacheHit { op: op.into() });
                hit.meta.cached = true;
                tracing::Span::current().record("route", "cache");
                hit.meta.trace_id = trace.clone();
                hit.meta.timings = crate::Timings::of(req.ctx.started.elapsed().as_micros() as u64, 0);
                self.shared.telemetry.finished(op, &hit.meta);
                return Ok(hit);
            }
            self.shared.telemetry.emit_lazy(Some(trace), || EventKind::CacheMiss { op: op.into() });
        }
        let out = match self.plan(req, req.ctx.options.shadow, self.has_python()) {
            Ok(plan) => self.execute(req, &plan, python).await,
            Err(e) => Err(e),
        };
        match &out {
            Ok(o) => {
                self.shared.telemetry.finished(op, &o.meta);
                if let (Some(k), Some(c)) = (key, &self.shared.cache) {
                    c.put(k, o.clone());
                }
            }
            Err(e) => self.shared.telemetry.emit(
                Some(trace),
                EventKind::Error { op: op.into(), kind: e.kind(), message: e.message().to_string() },
            ),
        }
        out.map_err(|e| e.with_request_id(trace))
    }

    /// Whether Python can run a request: a local pool or the cluster's (a
    /// session's target runs on those too).
    fn has_python(&self) -> bool {
        !self.shared.pools.is_empty() || self.cluster().is_some()
    }

    fn plan(&self, req: &Request, shadow: Option<bool>, python: bool) -> Result<Plan> {
        let _span = tracing::debug_span!("dspex.route", op = req.program.op()).entered();
        // Before any route is chosen, so both routes are held to it.
        req.program.check_inputs(&req.inputs, req.ctx.options.strict_inputs)?;
        let native_ok = match (req.program.native_support(), self.shared.lms.native_for(&req.program)) {
            (Err(why), _) => Err(Cow::Borrowed(why)),
            (Ok(()), Err(why)) => Err(Cow::Owned(why)),
            (Ok(()), Ok(_)) => Ok(()),
        };
        self.shared.router.plan(&RouteRequest {
            op: req.program.op(),
            native: native_ok.as_ref().map(|_| ()).map_err(|w| w.as_ref()),
            prefer: req.ctx.options.route,
            pool: req.ctx.options.pool.as_deref(),
            shadow,
            python,
            python_unsupported: req.program.python_support().err(),
        })
    }

    /// Try the plan's targets in order; a failure moves on only when the
    /// router allows a fallback for it and the deadline has time left.
    async fn execute(&self, req: &Request, plan: &Plan, python: Option<&dyn Target>) -> Result<Output> {
        let mut failed: Option<(&Route, Error)> = None;
        for route in &plan.targets {
            if let Some((from, e)) = &failed {
                if !(self.shared.router.may_fall_back(e) && req.ctx.has_time()) {
                    break;
                }
                warn!(trace = %req.ctx.trace_id, op = req.program.op(), error = %e, "{} failed; falling back to {}", from.label(), route.label());
                self.shared.router.record_fallback(req.program.op(), e, route);
            }
            record_route(route);
            let result = match (route, python) {
                (Route::Native, _) => self.run_native(req).await,
                (Route::Python(_), Some(target)) => target.run(req).await,
                (Route::Python(pool), None) => self.run_pool(req, pool).await,
            };
            self.shared.router.record(route, result.as_ref().map(|_| ()));
            match result {
                Ok(mut out) => {
                    out.meta.reason = plan.reason.to_string();
                    if let Some((from, e)) = failed {
                        out.meta.fallback = Some(format!("{} {}: {}", from.label(), e.kind(), e.message()));
                    }
                    if let (Some(shadow), Route::Native) = (&plan.shadow, route) {
                        self.shadow(req, shadow, &out);
                    }
                    return Ok(out);
                }
                Err(e) => failed = Some((route, e)),
            }
        }
        Err(failed.map(|(_, e)| e).unwrap_or_else(|| Error::internal("a plan without targets")))
    }

    /// Run the request on `shadow` in the background and compare.
    fn shadow(&self, req: &Request, shadow: &Route, primary: &Output) {
        let Route::Python(pool) = shadow else { return };
        let (this, pool, primary_fields) = (self.clone(), pool.clone(), primary.prediction.fields.clone());
        let mut req = req.clone();
        req.ctx.options.shadow = Some(false);
        tokio::spawn(async move {
            let shadow = this.run_pool(&req, &pool).await;
            this.shared.router.compare_shadow(
                req.program.op(),
                Some(&req.ctx.trace_id),
                &primary_fields,
                shadow.as_ref().map(|o| &o.prediction.fields),
            );
        });
    }

    fn cache_key(&self, req: &Request) -> Option<CacheKey> {
        self.shared.cache.as_ref()?;
        let opts = &req.ctx.options;
        if !opts.cache {
            return None;
        }
        let program = &req.program;
        let (lm_params, lm) = self.shared.lms.cache_identity(program);
        if !is_deterministic(&[&lm_params, &program.spec().config, &opts.config]) {
            return None;
        }
        // A forced route or pool is part of the request: a Python-only
        // request is not answered from a natively computed entry.
        let route = Value::String(format!("{:?}/{}", opts.route, opts.pool.as_deref().unwrap_or("")));
        let mut key = CacheKey::extend(program.cache_key().as_str(), program.op(), &[&lm, &route]);
        key.push_map(&req.inputs);
        key.push_map(&opts.config);
        Some(key)
    }

    fn native_lm(&self, program: &Program) -> Result<Arc<dyn LanguageModel>> {
        self.shared.lms.native_for(program).map_err(Error::unsupported)
    }

    fn native_options(req: &Request) -> dspex_native::PredictOptions {
        dspex_native::PredictOptions {
            deadline: Some(req.ctx.deadline),
            request_id: Some(req.ctx.trace_id.clone()),
            config: req.ctx.options.config.clone(),
            scope: req.ctx.lm_scope(),
        }
    }

    async fn run_native(&self, req: &Request) -> Result<Output> {
        let program = &req.program;
        let lm = self.native_lm(program)?;
        let native = program.native().ok_or_else(|| Error::unsupported("the native engine cannot run this program"))?;
        let opts = Self::native_options(req);
        let lm = TimedLm::new(lm);
        let t = Instant::now();
        let result = match tokio::time::timeout_at(req.ctx.deadline.into(), native.call(&lm, &req.inputs, &opts)).await
        {
            Ok(r) => r,
            Err(_) => {
                Err(Error::new(ErrorKind::Timeout, format!("{} did not finish before its deadline", program.op()))
                    .with_retryable(true))
            }
        };
        let elapsed = t.elapsed();
        let ok = result.is_ok();
        self.shared.telemetry.emit_lazy(Some(&req.ctx.trace_id), || EventKind::NativeExecute {
            op: program.op().into(),
            elapsed_us: elapsed.as_micros() as u64,
            ok,
        });
        let prediction = result?;
        let ran = Ran {
            elapsed,
            lm: Some(lm.clock().spent()),
            usage: prediction.usage,
            truncated: prediction.truncated,
            ..Default::default()
        };
        Ok(Output { meta: req.ctx.meta(Route::Native, ran), prediction })
    }

    /// The `dspy.run` / `dspy.stream` arguments of a request.
    pub(crate) fn run_args(&self, req: &Request) -> Result<Value> {
        let program = &req.program;
        let config = &req.ctx.options.config;
        let mut wire = program.wire().clone();
        if !config.is_empty() {
            if let Some(cfg) =
                wire.as_object_mut().map(|w| w.entry("config").or_insert_with(|| Value::Object(Map::new())))
            {
                if let Some(cfg) = cfg.as_object_mut() {
                    cfg.extend(config.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        Ok(commands::to_args(&RunArgs {
            program: wire,
            inputs: req.inputs.clone(),
            lm: self.shared.lms.python_for(program)?,
        }))
    }

    async fn run_pool(&self, req: &Request, pool: &str) -> Result<Output> {
        let reply =
            self.pool_call(pool, commands::RUN, self.run_args(req)?, &PoolCallOptions::for_request(&req.ctx)).await?;
        let (value, ran) = reply.into_parts();
        python_output(&req.ctx, Route::Python(pool.to_string()), value, ran)
    }

    /// Run a program as a stream, by the first target of its plan.
    pub(crate) async fn stream(&self, req: Request) -> Result<OutputStream> {
        // The span covers placing the stream (its items flow to the caller after).
        let span = request_span(&req);
        self.stream_in_span(req).instrument(span).await
    }

    async fn stream_in_span(&self, req: Request) -> Result<OutputStream> {
        let plan = self.plan(&req, Some(false), self.has_python())?;
        let reason = plan.reason.to_string();
        let router = self.shared.router.clone();
        let route = plan.primary().clone();
        record_route(&route);
        let trace = req.ctx.trace_id.clone();
        if route == Route::Native {
            let lm = TimedLm::new(self.native_lm(&req.program)?);
            let clock = lm.clock();
            let native = req.program.native().ok_or_else(|| Error::unsupported("not native"))?;
            let inner = native.stream(Arc::new(lm), &req.inputs, &Self::native_options(&req)).await?;
            let telemetry = self.shared.telemetry.clone();
            let op = req.program.op();
            let ctx = req.ctx;
            let stream = inner.map(move |item| match item {
                Ok(PredictEvent::Chunk { field, text }) => Ok(StreamEvent::Chunk { field, text }),
                Ok(PredictEvent::Prediction(prediction)) => {
                    router.record(&Route::Native, Ok(()));
                    let elapsed = ctx.started.elapsed();
                    telemetry.emit_lazy(Some(&ctx.trace_id), || EventKind::NativeExecute {
                        op: op.into(),
                        elapsed_us: elapsed.as_micros() as u64,
                        ok: true,
                    });
                    let ran = Ran {
                        elapsed,
                        lm: Some(clock.spent()),
                        usage: prediction.usage,
                        truncated: prediction.truncated,
                        reason: reason.clone(),
                        ..Default::default()
                    };
                    let meta = ctx.meta(Route::Native, ran);
                    telemetry.finished(op, &meta);
                    Ok(StreamEvent::Done(Box::new(Output { meta, prediction })))
                }
                Err(e) => {
                    router.record(&Route::Native, Err(&e));
                    Err(e.with_request_id(&ctx.trace_id))
                }
            });
            return Ok(Box::pin(stream));
        }
        let Route::Python(pool) = &route else { return Err(Error::internal("a stream plan with no route")) };
        let (telemetry, op) = (self.shared.telemetry.clone(), req.program.op());
        let opts = PoolCallOptions { idempotent: false, ..PoolCallOptions::for_request(&req.ctx) };
        let placed = self.pool_stream(pool, commands::STREAM, self.run_args(&req)?, &opts).await?;
        let (worker, pid, queue, node) = (placed.worker, placed.pid, placed.queue, placed.node);
        let inner = placed.items;
        let sent = Instant::now();
        let ctx = req.ctx;
        let stream = inner.map(move |item| match item {
            Ok(StreamItem::Chunk(v)) => {
                let chunk: StreamChunk = commands::from_reply(commands::STREAM, v)?;
                Ok(StreamEvent::Chunk { field: chunk.field, text: chunk.text })
            }
            Ok(StreamItem::Done(v)) => {
                router.record(&route, Ok(()));
                let ran = Ran {
                    worker: Some((worker.clone(), pid)),
                    node: node.clone(),
                    queue,
                    elapsed: sent.elapsed(),
                    ..Default::default()
                };
                let mut out = python_output(&ctx, route.clone(), v, ran)?;
                out.meta.reason = reason.clone();
                telemetry.finished(op, &out.meta);
                Ok(StreamEvent::Done(Box::new(out)))
            }
            Err(e) => {
                router.record(&route, Err(&e));
                Err(e.with_request_id(&trace))
            }
        });
        Ok(Box::pin(stream))
    }

    // ------------------------------------------------------------- commands

    /// Run a worker command on `pool`.
    pub(crate) async fn call(
        &self,
        pool: &str,
        command: &str,
        args: Value,
        ctx: &RequestContext,
    ) -> Result<CallOutput> {
        let span = tracing::debug_span!("dspex.request", op = command, trace = %ctx.trace_id, route = pool);
        let attempt = async {
            let plan = self.shared.router.plan_command(command, pool)?;
            let reply = self.pool_call(pool, command, args, &PoolCallOptions::for_request(ctx)).await;
            self.shared.router.record(plan.primary(), reply.as_ref().map(|_| ()));
            let (value, mut ran) = reply?.into_parts();
            ran.reason = plan.reason.into_owned();
            let meta = ctx.meta(Route::Python(pool.to_string()), ran);
            self.shared.telemetry.finished(command, &meta);
            Ok(CallOutput { meta, value })
        };
        attempt.instrument(span).await.map_err(|e: Error| e.with_request_id(&ctx.trace_id))
    }

    /// Run a streamed worker command on `pool` to its end; `progress` sees
    /// every chunk.
    pub(crate) async fn stream_command(
        &self,
        pool: &str,
        command: &str,
        args: Value,
        ctx: &RequestContext,
        progress: Option<ProgressFn>,
    ) -> Result<(Value, Meta)> {
        let span = tracing::debug_span!("dspex.request", op = command, trace = %ctx.trace_id, route = pool);
        let attempt = async {
            let plan = self.shared.router.plan_command(command, pool)?;
            let opts = PoolCallOptions { idempotent: false, ..PoolCallOptions::for_request(ctx) };
            let placed = self.pool_stream(pool, command, args, &opts).await?;
            let (worker, pid, queue, node) = (placed.worker, placed.pid, placed.queue, placed.node);
            let mut stream = placed.items;
            let sent = Instant::now();
            while let Some(item) = stream.next().await {
                match item {
                    Err(e) => {
                        self.shared.router.record(plan.primary(), Err(&e));
                        return Err(e);
                    }
                    Ok(StreamItem::Chunk(v)) => {
                        if let Some(p) = &progress {
                            p(&v);
                        }
                    }
                    Ok(StreamItem::Done(v)) => {
                        self.shared.router.record(plan.primary(), Ok(()));
                        let ran = Ran {
                            worker: Some((worker, pid)),
                            node,
                            queue,
                            elapsed: sent.elapsed(),
                            reason: command.to_string(),
                            ..Default::default()
                        };
                        return Ok((v, ctx.meta(Route::Python(pool.to_string()), ran)));
                    }
                }
            }
            Err(Error::new(ErrorKind::Protocol, format!("{command} ended without a result")).with_pool(pool))
        };
        attempt.instrument(span).await.map_err(|e: Error| e.with_request_id(&ctx.trace_id))
    }
}

/// The root span of one request: every phase (route, pool checkout, the
/// worker call and the worker's own spans, native LM calls) is its child.
/// Debug level: free unless a subscriber (the `otel` exporter) wants it.
fn request_span(req: &Request) -> tracing::Span {
    tracing::debug_span!(
        "dspex.request",
        op = req.program.op(),
        trace = %req.ctx.trace_id,
        session = req.ctx.options.session.as_deref(),
        route = tracing::field::Empty,
    )
}

/// Name the route on the request's span (no label is built when nothing records it).
fn record_route(route: &Route) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("route", tracing::field::display(route.label()));
    }
}

/// The output of a Python program run (`dspy.run`, `session.run`, a
/// stream's end): the prediction, and where and how it ran — `ran` says
/// where, the reply how long Python itself took and what the LM used.
pub(crate) fn python_output(ctx: &RequestContext, route: Route, reply: Value, mut ran: Ran) -> Result<Output> {
    let run: RunReply = commands::from_reply(commands::RUN, reply)?;
    let mut prediction = Prediction::new(run.fields);
    prediction.usage = run.usage;
    prediction.truncated = run.truncated;
    ran.execution_us = Some(run.elapsed_us);
    ran.usage = run.usage;
    ran.truncated = run.truncated;
    Ok(Output { meta: ctx.meta(route, ran), prediction })
}
