//! The router: where each request runs.
//!
//! For every program request the router decides between the native engine
//! and a Python pool: native when the program is one the engine models
//! (`Predict`/`ChainOfThought` over Chat/JSON adapters, native field types,
//! an OpenAI-compatible LM) and the caller did not ask for Python; Python
//! otherwise. Each target has a circuit breaker (closed → open after
//! `breaker_failures` consecutive failures → half-open after the cooldown,
//! one probe → closed on success). Under `auto`, a native failure that is
//! not the caller's fault falls back to Python (always on `Unsupported`).
//! A shadow fraction of native requests is also run in Python and the two
//! answers compared; any divergence is logged and counted.
//!
//! The decision is a function call on shared state, not a message to an
//! actor: a mailbox round trip costs more than the decision itself (see the
//! `routing` bench). The `router` actor in the tree serves snapshots and
//! administration only.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dspex_core::{Error, ErrorKind, EventKind, Map, Result, Route, RoutePreference, RouterConfig};
use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::supervisor::{ChildSpec, NodeInfo, Restart};
use crate::telemetry::Telemetry;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the cooldown ends.
    Open,
    /// One probe request is allowed through.
    HalfOpen,
}

struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    opened_at_ms: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// What a request asks of the router.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Operation (`predict`, `chain_of_thought`, ...).
    pub op: &'a str,
    /// `Ok` when the native engine can run it; else why not.
    pub native: std::result::Result<(), &'a str>,
    /// The caller's preference (the configured one when `None`).
    pub prefer: Option<RoutePreference>,
    /// Python pool to use (the default pool when `None`).
    pub pool: Option<&'a str>,
    /// Force shadowing on or off (the configured rate when `None`).
    pub shadow: Option<bool>,
    /// Whether there is Python to run on (a local pool or the cluster's):
    /// without it nothing falls back to Python.
    pub python: bool,
    /// `Some(why)` when Python cannot run this program as specified (a
    /// user template): no fallback, shadow or `python` preference then.
    pub python_unsupported: Option<&'a str>,
}

/// Where a request runs: its targets in order — the first, then each one
/// a failure may fall back to — an optional shadow, and why. The
/// dispatcher executes plans; the router makes them and nothing else does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Targets, tried in order while a failure allows a fallback
    /// ([`Router::may_fall_back`]) and the deadline has time left.
    pub targets: Vec<Route>,
    /// Also run here, compare, and keep the first target's answer.
    pub shadow: Option<Route>,
    /// Why.
    pub reason: Cow<'static, str>,
}

impl Plan {
    /// The first target.
    pub fn primary(&self) -> &Route {
        // A plan always has a target: the router builds none without one.
        &self.targets[0]
    }

    fn to(primary: Route, reason: impl Into<Cow<'static, str>>) -> Plan {
        Plan { targets: vec![primary], shadow: None, reason: reason.into() }
    }
}

/// One logged decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DecisionRecord {
    /// Milliseconds since the router started.
    pub at_ms: u64,
    /// Operation.
    pub op: String,
    /// Where it went (`native`, `python:<pool>`).
    pub route: String,
    /// Why.
    pub reason: String,
}

/// A recorded native/Python disagreement.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Divergence {
    /// Operation.
    pub op: String,
    /// What differed.
    pub detail: String,
}

/// The router's counters and recent history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouterStats {
    /// Requests per route.
    pub routes: HashMap<String, u64>,
    /// Native failures answered by Python.
    pub fallbacks: u64,
    /// Requests also run on the shadow route.
    pub shadowed: u64,
    /// Shadow runs that disagreed.
    pub divergences: u64,
    /// Breaker state per target.
    pub breakers: HashMap<String, BreakerState>,
    /// Recent decisions, oldest first.
    pub recent: Vec<DecisionRecord>,
    /// Recent divergences, oldest first.
    pub recent_divergences: Vec<Divergence>,
}

/// The routing table, breakers, decision log and counters. Shared by every
/// request; see the [module docs](self).
pub struct Router {
    config: RwLock<RouterConfig>,
    breakers: RwLock<HashMap<Route, Arc<Breaker>>>,
    log: Mutex<VecDeque<DecisionRecord>>,
    divergence_log: Mutex<VecDeque<Divergence>>,
    native_count: AtomicU64,
    python_counts: RwLock<HashMap<String, Arc<AtomicU64>>>,
    fallbacks: AtomicU64,
    shadowed: AtomicU64,
    divergences: AtomicU64,
    shadow_seq: AtomicU64,
    epoch: Instant,
    telemetry: Telemetry,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("config", &*self.config.read()).finish()
    }
}

/// Whether an error says something about the target's health (and so counts
/// against its breaker and allows a fallback) rather than about the request.
///
/// A reply that does not parse is the LM's doing, not the target's: both
/// routes parse alike, so a fallback would pay for the same LM call to fail
/// the same way, and a small model that often strays from the format would
/// otherwise open a healthy route's circuit.
pub fn is_target_failure(e: &Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Parse
            | ErrorKind::InvalidRequest
            | ErrorKind::InvalidSignature
            | ErrorKind::Validation
            | ErrorKind::NotFound
            | ErrorKind::Cancelled
            | ErrorKind::Config
            | ErrorKind::Unsupported
            | ErrorKind::Python
    )
}

impl Router {
    /// A router with these settings.
    pub fn new(config: RouterConfig, telemetry: Telemetry) -> Router {
        Router {
            config: RwLock::new(config),
            breakers: RwLock::new(HashMap::new()),
            log: Mutex::new(VecDeque::new()),
            divergence_log: Mutex::new(VecDeque::new()),
            native_count: AtomicU64::new(0),
            python_counts: RwLock::new(HashMap::new()),
            fallbacks: AtomicU64::new(0),
            shadowed: AtomicU64::new(0),
            divergences: AtomicU64::new(0),
            shadow_seq: AtomicU64::new(0),
            epoch: Instant::now(),
            telemetry,
        }
    }

    /// The current settings.
    pub fn config(&self) -> RouterConfig {
        self.config.read().clone()
    }

    /// The configured route preference (without copying the settings).
    pub fn preference(&self) -> RoutePreference {
        self.config.read().prefer
    }

    /// Change the settings (preference, breaker thresholds, shadow rate, ...).
    pub fn set_config(&self, config: RouterConfig) {
        *self.config.write() = config;
    }

    fn breaker(&self, route: &Route) -> Arc<Breaker> {
        if let Some(b) = self.breakers.read().get(route) {
            return b.clone();
        }
        self.breakers.write().entry(route.clone()).or_insert_with(|| Arc::new(Breaker::new())).clone()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether `route`'s breaker lets a request through now (an open breaker
    /// past its cooldown lets exactly one probe through).
    pub fn allow(&self, route: &Route) -> bool {
        let b = self.breaker(route);
        match b.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                let cooldown = self.config.read().breaker_cooldown_ms;
                if self.now_ms().saturating_sub(b.opened_at_ms.load(Ordering::Acquire)) < cooldown {
                    return false;
                }
                if b.state.compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    b.probing.store(true, Ordering::Release);
                    self.breaker_event(route, "half_open");
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// Record how a request on `route` ended.
    ///
    /// For a Python pool only failures of what the pool depends on count (the
    /// LM, the protocol): a crashed worker is the pool supervisor's business
    /// (it is replaced, idempotent requests are retried) and a full queue
    /// already sheds load with `Overloaded`; opening the circuit on those
    /// would turn a restart of a few seconds into an outage of a cooldown.
    pub fn record(&self, route: &Route, outcome: std::result::Result<(), &Error>) {
        let b = self.breaker(route);
        let failed = matches!(outcome, Err(e) if is_target_failure(e)
            && !(matches!(route, Route::Python(_))
                && matches!(e.kind(), ErrorKind::WorkerCrashed | ErrorKind::Overloaded | ErrorKind::Timeout)));
        match b.state.load(Ordering::Acquire) {
            HALF_OPEN => {
                if !b.probing.swap(false, Ordering::AcqRel) {
                    return;
                }
                if failed {
                    b.opened_at_ms.store(self.now_ms(), Ordering::Release);
                    b.state.store(OPEN, Ordering::Release);
                    self.breaker_event(route, "open");
                } else {
                    b.failures.store(0, Ordering::Release);
                    b.state.store(CLOSED, Ordering::Release);
                    self.breaker_event(route, "closed");
                }
            }
            CLOSED => {
                if !failed {
                    if b.failures.load(Ordering::Relaxed) != 0 {
                        b.failures.store(0, Ordering::Release);
                    }
                    return;
                }
                let n = b.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= self.config.read().breaker_failures.max(1)
                    && b.state.compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok()
                {
                    b.opened_at_ms.store(self.now_ms(), Ordering::Release);
                    self.breaker_event(route, "open");
                }
            }
            _ => {}
        }
    }

    fn breaker_event(&self, route: &Route, what: &str) {
        self.telemetry.emit(
            None,
            EventKind::Lifecycle { actor: "router".into(), what: format!("breaker_{what}"), detail: route.label() },
        );
    }

    /// A breaker's state.
    pub fn breaker_state(&self, route: &Route) -> BreakerState {
        self.breaker(route).state()
    }

    /// Plan where a program request runs. Fails when the caller asked for a
    /// route that cannot take it (`native` for a Python-only program:
    /// `Unsupported`; an open breaker on the only allowed route: `Overloaded`).
    pub fn plan(&self, req: &RouteRequest<'_>) -> Result<Plan> {
        let (prefer, shadow_rate, default_pool) = {
            let c = self.config.read();
            (req.prefer.unwrap_or(c.prefer), c.shadow_rate, req.pool.is_none().then(|| c.default_pool.clone()))
        };
        let pool = match req.pool {
            Some(p) => Route::Python(p.to_string()),
            None => Route::Python(default_pool.unwrap_or_default()),
        };
        let python = req.python && req.python_unsupported.is_none();
        let plan = match prefer {
            RoutePreference::Native => {
                if let Err(why) = req.native {
                    return Err(Error::unsupported(format!("{} cannot run natively: {why}", req.op)));
                }
                Plan::to(Route::Native, "native requested")
            }
            RoutePreference::Python => {
                if let Some(why) = req.python_unsupported {
                    return Err(Error::unsupported(format!("{} cannot run in Python: {why}", req.op)));
                }
                if !self.allow(&pool) {
                    return Err(self.open_error(&pool));
                }
                Plan::to(pool, "python requested")
            }
            // Only `auto` falls back, and only from native to Python.
            RoutePreference::Auto => match (req.native, req.python_unsupported) {
                (Ok(()), _) if self.allow(&Route::Native) => {
                    let shadow = python
                        && match req.shadow {
                            Some(on) => on,
                            None => self.sample_shadow(shadow_rate),
                        };
                    let shadow = shadow.then(|| pool.clone());
                    let targets = if python { vec![Route::Native, pool] } else { vec![Route::Native] };
                    Plan { shadow, targets, reason: Cow::Borrowed("native engine supports it") }
                }
                // No Python to take over while the native circuit is open.
                (Ok(()), _) if !python => return Err(self.open_error(&Route::Native)),
                (Err(why), Some(py)) => {
                    return Err(Error::unsupported(format!(
                        "{} cannot run natively ({why}) nor in Python ({py})",
                        req.op
                    )));
                }
                (native, _) => {
                    if !self.allow(&pool) {
                        return Err(self.open_error(&pool));
                    }
                    let reason = match native {
                        Ok(()) => Cow::Borrowed("native circuit open"),
                        Err(why) => Cow::Owned(format!("needs Python: {why}")),
                    };
                    Plan::to(pool, reason)
                }
            },
        };
        self.count(plan.primary());
        self.log(req.op, plan.primary(), &plan.reason);
        self.telemetry.emit_lazy(None, || EventKind::RouterRoute {
            op: req.op.to_string(),
            route: plan.primary().clone(),
            reason: plan.reason.to_string(),
        });
        Ok(plan)
    }

    /// Plan a worker command on `pool`: no choice to make, but the pool's
    /// breaker still applies (`Overloaded` while open) and the route is counted.
    pub fn plan_command(&self, command: &str, pool: &str) -> Result<Plan> {
        let route = Route::Python(pool.to_string());
        if !self.allow(&route) {
            return Err(self.open_error(&route).with_pool(pool));
        }
        self.count(&route);
        self.log(command, &route, "command");
        Ok(Plan::to(route, "command"))
    }

    /// Whether a native failure may be retried on Python under `auto`.
    pub fn may_fall_back(&self, error: &Error) -> bool {
        error.kind() == ErrorKind::Unsupported || (self.config.read().fallback_on_failure && is_target_failure(error))
    }

    /// Count a fallback that happened.
    pub fn record_fallback(&self, op: &str, error: &Error, to: &Route) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.count(to);
        self.log(op, to, &format!("fallback after native {}: {}", error.kind(), error.message()));
    }

    fn open_error(&self, route: &Route) -> Error {
        Error::new(ErrorKind::Overloaded, format!("the circuit for {} is open after repeated failures", route.label()))
            .with_retryable(true)
    }

    fn sample_shadow(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        // Deterministic sampling: every ⌈1/rate⌉-th eligible request.
        let every = (1.0 / rate).round().max(1.0) as u64;
        self.shadow_seq.fetch_add(1, Ordering::Relaxed) % every == 0
    }

    fn count(&self, route: &Route) {
        match route {
            Route::Native => {
                self.native_count.fetch_add(1, Ordering::Relaxed);
            }
            Route::Python(pool) => {
                if let Some(c) = self.python_counts.read().get(pool) {
                    c.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.python_counts.write().entry(pool.clone()).or_default().fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn log(&self, op: &str, route: &Route, reason: &str) {
        let cap = self.config.read().decision_log;
        if cap == 0 {
            return;
        }
        let record = DecisionRecord {
            at_ms: self.now_ms(),
            op: op.to_string(),
            route: route.label(),
            reason: reason.to_string(),
        };
        let mut log = self.log.lock();
        if log.len() >= cap {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Compare a shadow run's fields with the primary's; record a divergence.
    pub fn compare_shadow(
        &self,
        op: &str,
        trace_id: Option<&str>,
        primary: &Map,
        shadow: std::result::Result<&Map, &Error>,
    ) {
        self.shadowed.fetch_add(1, Ordering::Relaxed);
        let detail = match shadow {
            Err(e) => Some(format!("the shadow run failed: {e}")),
            Ok(other) => {
                let mut diffs = Vec::new();
                for (k, v) in primary {
                    match other.get(k) {
                        Some(o) if o == v => {}
                        Some(o) => diffs.push(format!("{k}: primary {v} vs shadow {o}")),
                        None => diffs.push(format!("{k}: missing from the shadow run")),
                    }
                }
                for k in other.keys().filter(|k| !primary.contains_key(*k)) {
                    diffs.push(format!("{k}: only in the shadow run"));
                }
                (!diffs.is_empty()).then(|| diffs.join("; "))
            }
        };
        let Some(detail) = detail else { return };
        self.divergences.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(op, trace = trace_id.unwrap_or("-"), "shadow divergence: {detail}");
        self.telemetry.emit(trace_id, EventKind::ShadowDivergence { op: op.to_string(), detail: detail.clone() });
        let cap = self.config.read().decision_log.max(1);
        let mut log = self.divergence_log.lock();
        if log.len() >= cap {
            log.pop_front();
        }
        log.push_back(Divergence { op: op.to_string(), detail });
    }

    /// Counters, breaker states and recent decisions.
    pub fn stats(&self) -> RouterStats {
        let mut routes: HashMap<String, u64> = HashMap::new();
        routes.insert("native".into(), self.native_count.load(Ordering::Relaxed));
        for (pool, c) in self.python_counts.read().iter() {
            routes.insert(format!("python:{pool}"), c.load(Ordering::Relaxed));
        }
        RouterStats {
            routes,
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            shadowed: self.shadowed.load(Ordering::Relaxed),
            divergences: self.divergences.load(Ordering::Relaxed),
            breakers: self.breakers.read().iter().map(|(r, b)| (r.label(), b.state())).collect(),
            recent: self.log.lock().iter().cloned().collect(),
            recent_divergences: self.divergence_log.lock().iter().cloned().collect(),
        }
    }
}

impl std::fmt::Debug for RouterMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouterMsg::Stats(_) => f.write_str("Stats"),
            RouterMsg::Plan { op, .. } => f.debug_struct("Plan").field("op", op).finish_non_exhaustive(),
        }
    }
}

/// Messages of the `router` actor.
pub enum RouterMsg {
    /// Counters, breakers and recent decisions.
    Stats(RpcReplyPort<RouterStats>),
    /// A plan made through the mailbox (for comparison with the direct call).
    Plan {
        /// Operation.
        op: String,
        /// Native capability (`None` when the engine can run it).
        native_unsupported: Option<String>,
        /// Preference.
        prefer: Option<RoutePreference>,
        /// Reply.
        reply: RpcReplyPort<Result<Plan>>,
    },
}

/// The `router` actor: holds the shared [`Router`] in the tree and answers
/// administrative messages.
#[derive(Debug)]
pub struct RouterActor {
    router: Arc<Router>,
}

impl RouterActor {
    /// An actor serving `router`.
    pub fn new(router: Arc<Router>) -> RouterActor {
        RouterActor { router }
    }

    /// The child spec for the tree.
    pub fn child_spec(router: Arc<Router>) -> ChildSpec {
        let info_router = router.clone();
        let start = crate::supervisor::start_fn(move || RouterActor::new(router.clone()), || ());
        ChildSpec::new("router", Restart::Permanent, start).kind("router").info(Arc::new(move || {
            let s = info_router.stats();
            let mut extra = Map::new();
            for (k, v) in &s.routes {
                extra.insert(format!("routes.{k}"), (*v).into());
            }
            extra.insert("fallbacks".into(), s.fallbacks.into());
            extra.insert("divergences".into(), s.divergences.into());
            NodeInfo { extra, ..Default::default() }
        }))
    }
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<RouterMsg>, _: ()) -> std::result::Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<RouterMsg>,
        msg: RouterMsg,
        _: &mut (),
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Stats(reply) => {
                let _ = reply.send(self.router.stats());
            }
            RouterMsg::Plan { op, native_unsupported, prefer, reply } => {
                let req = RouteRequest {
                    op: &op,
                    native: match &native_unsupported {
                        None => Ok(()),
                        Some(why) => Err(why.as_str()),
                    },
                    prefer,
                    pool: None,
                    shadow: None,
                    python: true,
                    python_unsupported: None,
                };
                let _ = reply.send(self.router.plan(&req));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(cfg: RouterConfig) -> Router {
        Router::new(cfg, Telemetry::new().with_metrics(false))
    }

    fn req<'a>(native: std::result::Result<(), &'a str>, prefer: Option<RoutePreference>) -> RouteRequest<'a> {
        RouteRequest { op: "predict", native, prefer, pool: None, shadow: None, python: true, python_unsupported: None }
    }

    #[test]
    fn a_program_python_cannot_run_has_no_python_route() {
        let r = router(RouterConfig { shadow_rate: 1.0, ..RouterConfig::default() });
        let native_only =
            |native, prefer| RouteRequest { python_unsupported: Some("a user template"), ..req(native, prefer) };
        let plan = r.plan(&native_only(Ok(()), None)).unwrap();
        assert_eq!((plan.targets.clone(), plan.shadow.clone()), (vec![Route::Native], None), "no fallback, no shadow");
        let err = r.plan(&native_only(Ok(()), Some(RoutePreference::Python))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        let err = r.plan(&native_only(Err("bad template"), None)).unwrap_err();
        assert!(err.message().contains("bad template") && err.message().contains("a user template"), "{err}");
    }

    #[tokio::test]
    async fn the_router_actor_answers_like_the_router_and_settings_change_live() {
        let r = Arc::new(router(RouterConfig::default()));
        let (actor, _h) = Actor::spawn(None, RouterActor::new(r.clone()), ()).await.unwrap();
        let d = ractor::call!(actor, |reply| RouterMsg::Plan {
            op: "predict".into(),
            native_unsupported: None,
            prefer: None,
            reply
        })
        .unwrap()
        .unwrap();
        assert_eq!(d.primary(), &Route::Native);
        let d = ractor::call!(actor, |reply| RouterMsg::Plan {
            op: "react".into(),
            native_unsupported: Some("ReAct runs in Python".into()),
            prefer: None,
            reply
        })
        .unwrap()
        .unwrap();
        assert_eq!(d.primary(), &Route::Python("general".into()));
        let stats = ractor::call!(actor, RouterMsg::Stats).unwrap();
        assert_eq!(stats.routes.get("native"), Some(&1));
        // Preferences change without a restart.
        r.set_config(RouterConfig { prefer: RoutePreference::Python, ..RouterConfig::default() });
        assert_eq!(r.preference(), RoutePreference::Python);
        assert_eq!(r.plan(&req(Ok(()), None)).unwrap().primary(), &Route::Python("general".into()));
        assert_eq!(r.breaker_state(&Route::Native), BreakerState::Closed);
        actor.stop(None);
    }

    #[test]
    fn plans_follow_capability_and_preference() {
        let r = router(RouterConfig::default());
        let d = r.plan(&req(Ok(()), None)).unwrap();
        assert_eq!(d.primary(), &Route::Native);
        assert_eq!(d.targets, vec![Route::Native, Route::Python("general".into())]);
        let d = r.plan(&req(Err("field `img` of type `dspy.Image` needs Python"), None)).unwrap();
        assert_eq!(d.primary(), &Route::Python("general".into()));
        assert!(d.reason.contains("dspy.Image"));
        let d = r.plan(&req(Ok(()), Some(RoutePreference::Python))).unwrap();
        assert_eq!(d.primary(), &Route::Python("general".into()));
        let e = r.plan(&req(Err("react"), Some(RoutePreference::Native))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let s = r.stats();
        assert_eq!(s.routes["native"], 1);
        assert_eq!(s.routes["python:general"], 2);
        assert_eq!(s.recent.len(), 3);
    }

    #[test]
    fn without_python_a_native_plan_has_nothing_to_fall_back_to() {
        let r = router(RouterConfig::default());
        let plan = r.plan(&RouteRequest { python: false, shadow: Some(true), ..req(Ok(()), None) }).unwrap();
        assert_eq!((plan.targets.clone(), plan.shadow.clone()), (vec![Route::Native], None));
        assert_eq!(r.plan(&req(Ok(()), None)).unwrap().targets.len(), 2, "with Python: native, then the pool");
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let r = router(RouterConfig { breaker_failures: 2, breaker_cooldown_ms: 30, ..Default::default() });
        let lm_down = Error::new(ErrorKind::Transport, "connection refused");
        r.record(&Route::Native, Err(&lm_down));
        assert_eq!(r.breaker_state(&Route::Native), BreakerState::Closed);
        r.record(&Route::Native, Err(&lm_down));
        assert_eq!(r.breaker_state(&Route::Native), BreakerState::Open);
        // Open: auto goes to Python; with no Python anywhere it sheds.
        assert_eq!(r.plan(&req(Ok(()), None)).unwrap().primary(), &Route::Python("general".into()));
        let alone = RouteRequest { python: false, ..req(Ok(()), None) };
        assert_eq!(r.plan(&alone).unwrap_err().kind(), ErrorKind::Overloaded);
        std::thread::sleep(std::time::Duration::from_millis(40));
        // The probe goes native; a second request meanwhile does not.
        assert_eq!(r.plan(&req(Ok(()), None)).unwrap().primary(), &Route::Native);
        assert_eq!(r.breaker_state(&Route::Native), BreakerState::HalfOpen);
        assert_eq!(r.plan(&req(Ok(()), None)).unwrap().primary(), &Route::Python("general".into()));
        r.record(&Route::Native, Ok(()));
        assert_eq!(r.breaker_state(&Route::Native), BreakerState::Closed);
        // Caller errors, and LM replies that do not parse, do not count.
        let bad = Error::new(ErrorKind::Validation, "bad input");
        let garbled = Error::new(ErrorKind::Parse, "LM response cannot be serialized to a JSON object.");
        for _ in 0..5 {
            r.record(&Route::Native, Err(&bad));
            r.record(&Route::Python("general".into()), Err(&garbled));
        }
        assert_eq!(r.breaker_state(&Route::Native), BreakerState::Closed);
        assert_eq!(r.breaker_state(&Route::Python("general".into())), BreakerState::Closed);
        assert!(!r.may_fall_back(&garbled), "a parse failure would fail the same way on the other route");
    }

    #[test]
    fn shadow_sampling_and_divergence() {
        let r = router(RouterConfig { shadow_rate: 0.5, ..Default::default() });
        let shadowed = (0..10).filter(|_| r.plan(&req(Ok(()), None)).unwrap().shadow.is_some()).count();
        assert_eq!(shadowed, 5);
        let a: Map = serde_json::from_str(r#"{"answer": "4"}"#).unwrap();
        let b: Map = serde_json::from_str(r#"{"answer": "four"}"#).unwrap();
        r.compare_shadow("predict", None, &a, Ok(&a));
        r.compare_shadow("predict", None, &a, Ok(&b));
        let s = r.stats();
        assert_eq!((s.shadowed, s.divergences), (2, 1));
        assert!(s.recent_divergences[0].detail.contains("four"));
    }
}
