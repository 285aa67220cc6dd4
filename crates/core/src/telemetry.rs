//! Telemetry events: what the runtime reports about itself.
//!
//! The actor runtime publishes these on a bounded in-process bus (slow
//! subscribers lose old events, never block the runtime), logs them with
//! `tracing`, and counts them as `metrics`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// Where a request ran.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "target", content = "pool")]
pub enum Route {
    /// The native engine.
    Native,
    /// A Python pool.
    Python(String),
}

impl Route {
    /// `native` or `python:<pool>`.
    pub fn label(&self) -> String {
        match self {
            Route::Native => "native".into(),
            Route::Python(p) => format!("python:{p}"),
        }
    }
}

/// One telemetry event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The router chose where a request runs.
    RouterRoute {
        /// Operation (`predict`, `chain_of_thought`, a command name, ...).
        op: String,
        /// Chosen route.
        route: Route,
        /// Why.
        reason: String,
    },
    /// The native engine ran a request.
    NativeExecute {
        /// Operation.
        op: String,
        /// Time taken.
        elapsed_us: u64,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A Python worker ran a request.
    PythonExecute {
        /// Operation.
        op: String,
        /// Pool.
        pool: String,
        /// Worker.
        worker: String,
        /// Time waiting for the worker.
        queue_us: u64,
        /// Time from send to answer.
        elapsed_us: u64,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A pipeline step ended.
    PipelineStep {
        /// Pipeline run.
        run: String,
        /// Step name.
        step: String,
        /// Route it took.
        route: Option<Route>,
        /// Time taken.
        elapsed_us: u64,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A request finished with a result.
    RequestFinished {
        /// Operation.
        op: String,
        /// Where its result came from: `native`, `python:<pool>`, or `cache`.
        route: String,
        /// From the call to the result.
        total_us: u64,
        /// The runtime's own part of it: the total minus the model's time
        /// (native LM calls, or DSPy's execution in the worker).
        overhead_us: u64,
    },
    /// A result came from the cache.
    CacheHit {
        /// Operation.
        op: String,
    },
    /// A cacheable result was not in the cache.
    CacheMiss {
        /// Operation.
        op: String,
    },
    /// A request took a worker.
    PoolCheckout {
        /// Pool.
        pool: String,
        /// Worker.
        worker: String,
        /// Time it waited.
        queue_us: u64,
    },
    /// A request gave its worker back.
    PoolCheckin {
        /// Pool.
        pool: String,
        /// Worker.
        worker: String,
    },
    /// An actor or worker started, stopped or restarted.
    Lifecycle {
        /// The actor's name.
        actor: String,
        /// `started`, `exited`, `restarting`, `escalated`, `recycled`, ...
        what: String,
        /// Details.
        detail: String,
    },
    /// Native and Python disagreed on a shadowed request.
    ShadowDivergence {
        /// Operation.
        op: String,
        /// What differed.
        detail: String,
    },
    /// A request failed.
    Error {
        /// Operation.
        op: String,
        /// The error's kind.
        kind: ErrorKind,
        /// The message.
        message: String,
    },
}

impl EventKind {
    /// The event's name, e.g. `router.route`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RouterRoute { .. } => "router.route",
            EventKind::NativeExecute { .. } => "native.execute",
            EventKind::PythonExecute { .. } => "python.execute",
            EventKind::PipelineStep { .. } => "pipeline.step",
            EventKind::RequestFinished { .. } => "request.finished",
            EventKind::CacheHit { .. } => "cache.hit",
            EventKind::CacheMiss { .. } => "cache.miss",
            EventKind::PoolCheckout { .. } => "pool.checkout",
            EventKind::PoolCheckin { .. } => "pool.checkin",
            EventKind::Lifecycle { .. } => "lifecycle",
            EventKind::ShadowDivergence { .. } => "shadow.divergence",
            EventKind::Error { .. } => "error",
        }
    }
}

/// An event with when it happened and the request it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Trace id of the request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// An event happening now.
    pub fn now(trace_id: Option<String>, kind: EventKind) -> Event {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64;
        Event { at_ms, trace_id, kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_flat_with_names() {
        let e = Event::now(Some("t".into()), EventKind::CacheHit { op: "predict".into() });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "cache_hit");
        assert_eq!(v["trace_id"], "t");
        assert_eq!(e.kind.name(), "cache.hit");
        assert_eq!(Route::Python("general".into()).label(), "python:general");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
