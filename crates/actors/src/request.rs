//! What a request is and what it returns.
//!
//! A caller's [`RequestOptions`] become one [`RequestContext`] when the
//! request enters the runtime: its absolute deadline (spent across queueing,
//! transport and execution), its trace id, its session and whether it may
//! run twice are settled there, once, and every later stage reads them from
//! it. The result's [`Meta`] is built in one place too,
//! [`RequestContext::meta`], from where the request ran ([`Ran`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dspex_core::{CodecChoice, Map, Prediction, Result, Route, RoutePreference, Usage, Value};
use dspex_native::lm::{CallMeter, LmScope};
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::program::Program;

/// Per-request settings. The default: the configured route, the default
/// pool, the runtime's request timeout, cache on; programs are idempotent
/// (an LM call may safely run twice), commands are not unless marked.
///
/// Serializable for a session request forwarded to another cluster node;
/// the absolute deadline and the session do not travel (the node that
/// forwards sends the time left beside the options).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestOptions {
    /// Route preference for this request.
    pub route: Option<RoutePreference>,
    /// Python pool.
    pub pool: Option<String>,
    /// Time allowed from now (in JSON: `timeout_ms`, whole milliseconds).
    #[serde(rename = "timeout_ms", with = "dspex_core::wire::opt_millis")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u64>"))]
    pub timeout: Option<Duration>,
    /// Absolute deadline (wins over `timeout`).
    #[serde(skip)]
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
    #[serde(skip)]
    pub session: Option<String>,
    /// Run Python work on this cluster node (by name) and nowhere else.
    pub node: Option<String>,
    /// Send Python work to another node of the cluster even when a local
    /// pool could take it.
    pub prefer_remote: bool,
    /// Check the inputs against the signature's types before routing
    /// (`Validation` on a mismatch), or not, whatever the program's
    /// `strict_inputs` says; `None`: as the program says.
    pub strict_inputs: Option<bool>,
    /// How this request's Python work is encoded on its way to the worker
    /// and back (`auto`, `msgpack`, `json`, `arrow`); `None`: the pool's.
    pub codec: Option<CodecChoice>,
    /// The tenant whose LM budget the request's calls count against (the
    /// gateway's `[gateway.budgets]`), on either route.
    pub tenant: Option<String>,
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
            node: None,
            prefer_remote: false,
            strict_inputs: None,
            codec: None,
            tenant: None,
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

    /// Run Python work on cluster node `node` only.
    pub fn on_node(mut self, node: impl Into<String>) -> RequestOptions {
        self.node = Some(node.into());
        self
    }

    /// Prefer another cluster node for Python work.
    pub fn prefer_remote(mut self) -> RequestOptions {
        self.prefer_remote = true;
        self
    }

    /// Check (or do not check) the inputs against the signature's types,
    /// over the program's own `strict_inputs`.
    pub fn strict_inputs(mut self, on: bool) -> RequestOptions {
        self.strict_inputs = Some(on);
        self
    }

    /// Count the request's LM calls against `tenant`'s budget.
    pub fn tenant(mut self, tenant: impl Into<String>) -> RequestOptions {
        self.tenant = Some(tenant.into());
        self
    }

    /// Encode this request's Python work with `codec`, over the pool's choice.
    pub fn codec(mut self, codec: CodecChoice) -> RequestOptions {
        self.codec = Some(codec);
        self
    }

    /// Set one LM call argument for this request.
    pub fn with_config(mut self, key: &str, value: Value) -> RequestOptions {
        self.config.insert(key.into(), value);
        self
    }
}

static TRACE_SEQ: AtomicU64 = AtomicU64::new(1);

/// A new trace id: a per-process random prefix and a sequence number.
pub fn new_trace_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| fastrand::u32(..));
    format!("{prefix:08x}-{:06x}", TRACE_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A request as the runtime carries it: the caller's options with
/// everything they leave open settled once (deadline, trace id,
/// idempotency), and when it started.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The caller's options (route, pool, cache, shadow, LM config, session).
    pub options: RequestOptions,
    /// The one absolute deadline.
    pub deadline: Instant,
    /// The trace id (on events, errors and the worker's log lines).
    pub trace_id: String,
    /// Safe to run twice.
    pub idempotent: bool,
    /// When the request entered the runtime.
    pub started: Instant,
    /// The LM use of the request's calls, summed by the gateway.
    pub meter: Arc<CallMeter>,
}

impl RequestContext {
    /// Settle `options`: the deadline is theirs, else now + their timeout,
    /// else now + `default_timeout`; `idempotent` applies when they say
    /// nothing (programs: yes, commands: no).
    pub fn new(options: RequestOptions, default_timeout: Duration, idempotent: bool) -> RequestContext {
        let started = Instant::now();
        let deadline = options.deadline.unwrap_or_else(|| started + options.timeout.unwrap_or(default_timeout));
        let trace_id = options.trace_id.clone().unwrap_or_else(new_trace_id);
        let idempotent = options.idempotent.unwrap_or(idempotent);
        RequestContext { options, deadline, trace_id, idempotent, started, meter: CallMeter::new() }
    }

    /// The session this request belongs to.
    pub fn session(&self) -> Option<&str> {
        self.options.session.as_deref()
    }

    /// Who the request's LM calls are for, as the gateway sees them.
    pub fn lm_scope(&self) -> LmScope {
        LmScope { tenant: self.options.tenant.clone(), meter: Some(self.meter.clone()), no_cache: !self.options.cache }
    }

    /// Whether time is left.
    pub fn has_time(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// The result's metadata: the one place a [`Meta`] is made.
    pub fn meta(&self, route: Route, ran: Ran) -> Meta {
        let elapsed_us = ran.elapsed.as_micros() as u64;
        // Python reports its own execution time; the rest of the round trip
        // is transport. Elsewhere the whole time is execution.
        let (execution_us, transport_us) = match ran.execution_us {
            Some(e) => (e, elapsed_us.saturating_sub(e)),
            None => (elapsed_us, 0),
        };
        let pool = match &route {
            Route::Python(p) => Some(p.clone()),
            Route::Native => None,
        };
        let (worker, pid) = match ran.worker {
            Some((w, p)) => (Some(w), Some(p)),
            None => (None, None),
        };
        // What the model cost: measured LM time natively, DSPy's whole
        // execution on Python.
        let lm_us = ran.lm.map(|d| d.as_micros() as u64).or(ran.execution_us).unwrap_or(0);
        let reading = self.meter.reading();
        Meta {
            route,
            pool,
            node: ran.node,
            worker,
            pid,
            timings: Timings {
                queue_us: ran.queue.as_micros() as u64,
                transport_us,
                execution_us,
                ..Timings::of(self.started.elapsed().as_micros() as u64, lm_us)
            },
            usage: ran.usage,
            truncated: ran.truncated,
            trace_id: self.trace_id.clone(),
            cost_usd: reading.cost_usd,
            lm_calls: reading.calls,
            lm_cache_hits: reading.cached,
            cached: false,
            fallback: None,
            retried: ran.retried,
            reason: ran.reason,
        }
    }
}

/// Where and how long a request ran, for [`RequestContext::meta`].
#[derive(Debug, Clone, Default)]
pub struct Ran {
    /// The worker and its process id (Python routes).
    pub worker: Option<(String, u32)>,
    /// The cluster node it ran on (in a cluster).
    pub node: Option<String>,
    /// Time spent waiting for a worker.
    pub queue: Duration,
    /// From sending the work to its answer.
    pub elapsed: Duration,
    /// Execution time the worker reported (the rest of `elapsed` is transport).
    pub execution_us: Option<u64>,
    /// Time the native engine spent in LM calls.
    pub lm: Option<Duration>,
    /// Token usage.
    pub usage: Option<Usage>,
    /// The LM's reply was cut at its length limit.
    pub truncated: bool,
    /// Retried on another worker.
    pub retried: bool,
    /// Why it ran there.
    pub reason: String,
}

/// A program run: what to run, on what, and the request's context.
#[derive(Debug, Clone)]
pub struct Request {
    /// The program.
    pub program: Program,
    /// Its inputs.
    pub inputs: Map,
    /// The request's context.
    pub ctx: RequestContext,
}

/// Where the time went.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting for a worker.
    pub queue_us: u64,
    /// Moving the request and its answer between processes.
    pub transport_us: u64,
    /// Running it (the native engine, or Python, LM call included).
    pub execution_us: u64,
    /// Waiting on the model: the native engine's LM calls, or the whole of
    /// DSPy's execution in the worker (its LM calls included).
    pub lm_us: u64,
    /// The runtime's own cost: `total_us - lm_us` (routing, queueing,
    /// transport, prompt formatting and parsing, bookkeeping).
    pub overhead_us: u64,
    /// From the call to the result.
    pub total_us: u64,
}

impl Timings {
    /// Timings of a result that took `total_us`, `lm_us` of it in the model.
    pub(crate) fn of(total_us: u64, lm_us: u64) -> Timings {
        Timings { lm_us, overhead_us: total_us.saturating_sub(lm_us), total_us, ..Default::default() }
    }
}

/// Where and how a request ran.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The route that produced the result.
    pub route: Route,
    /// Pool, for Python routes.
    pub pool: Option<String>,
    /// The cluster node that ran it (a runtime in a cluster; `None` otherwise).
    pub node: Option<String>,
    /// Worker, for Python routes.
    pub worker: Option<String>,
    /// Worker process id.
    pub pid: Option<u32>,
    /// Timings.
    pub timings: Timings,
    /// Token usage, when the LM reported it.
    pub usage: Option<Usage>,
    /// The LM's reply was cut at its length limit (`finish_reason` `length`):
    /// the output may be incomplete; raise `max_tokens`. Logged as a warning
    /// too, in DSPy's words, on both routes.
    pub truncated: bool,
    /// The request's trace id (also in the worker's log lines).
    pub trace_id: String,
    /// What its LM calls cost, in US dollars, as the gateway priced them
    /// (DSPy's price table or configured prices); `None` when no call had a
    /// price (or the result came from the result cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// LM calls the request made through the gateway, and how many of them
    /// its shared response cache answered.
    #[serde(default)]
    pub lm_calls: u64,
    /// Of `lm_calls`, answered by the gateway's shared response cache.
    #[serde(default)]
    pub lm_cache_hits: u64,
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_settles_deadline_trace_and_idempotency_once() {
        let ctx = RequestContext::new(RequestOptions::default(), Duration::from_secs(5), true);
        assert!(ctx.idempotent && ctx.has_time());
        assert!(ctx.deadline > ctx.started + Duration::from_secs(4));
        let opts = RequestOptions::default().timeout(Duration::from_millis(1)).idempotent(false).trace_id("t-1");
        let ctx = RequestContext::new(opts, Duration::from_secs(5), true);
        assert_eq!((ctx.trace_id.as_str(), ctx.idempotent), ("t-1", false));
        assert!(ctx.deadline <= ctx.started + Duration::from_millis(1));
    }

    #[test]
    fn python_time_splits_into_execution_and_transport() {
        let ctx = RequestContext::new(RequestOptions::default(), Duration::from_secs(5), true);
        let ran = Ran {
            worker: Some(("worker:general:0".into(), 42)),
            elapsed: Duration::from_micros(500),
            execution_us: Some(300),
            ..Default::default()
        };
        let meta = ctx.meta(Route::Python("general".into()), ran);
        assert_eq!((meta.timings.execution_us, meta.timings.transport_us), (300, 200));
        // DSPy's time is the model's; the rest of the request is overhead.
        assert_eq!(meta.timings.lm_us, 300);
        assert_eq!(meta.timings.overhead_us, meta.timings.total_us.saturating_sub(300));
        assert_eq!((meta.pool.as_deref(), meta.pid), (Some("general"), Some(42)));
        let native = ctx.meta(Route::Native, Ran { elapsed: Duration::from_micros(70), ..Default::default() });
        assert_eq!((native.timings.execution_us, native.timings.transport_us, native.pool), (70, 0, None));
        let ran = Ran { elapsed: Duration::from_micros(90), lm: Some(Duration::from_micros(60)), ..Default::default() };
        // The request has run longer than its LM calls (the total is real time).
        std::thread::sleep(Duration::from_millis(1));
        let native = ctx.meta(Route::Native, ran);
        assert_eq!((native.timings.execution_us, native.timings.lm_us), (90, 60));
        assert!(native.timings.overhead_us + 60 == native.timings.total_us);
    }
}
