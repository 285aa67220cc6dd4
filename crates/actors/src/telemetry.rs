//! The telemetry bus: every event goes to `tracing`, to `metrics` counters
//! and histograms, and to in-process subscribers through a bounded broadcast
//! channel (a slow subscriber loses old events; the runtime never waits).

use std::sync::Arc;

use dspex_core::{Event, EventKind};

use crate::request::Meta;
use tokio::sync::broadcast;

/// Events kept for a subscriber that falls behind.
pub const BUS_CAPACITY: usize = 4096;

/// Publishes runtime events. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    tx: broadcast::Sender<Arc<Event>>,
    metrics: bool,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("subscribers", &self.tx.receiver_count()).finish()
    }
}

impl Telemetry {
    /// A bus with no subscribers yet.
    pub fn new() -> Telemetry {
        let (tx, _) = broadcast::channel(BUS_CAPACITY);
        Telemetry { tx, metrics: true }
    }

    /// Whether events are also recorded as `metrics` (on by default; a
    /// recorder such as a Prometheus exporter must be installed to see them).
    pub fn with_metrics(mut self, on: bool) -> Telemetry {
        self.metrics = on;
        self
    }

    /// Whether anything would see a routine event: a subscriber, metrics, or
    /// a `tracing` subscriber listening at debug level.
    pub fn active(&self) -> bool {
        self.metrics
            || self.tx.receiver_count() > 0
            || tracing::enabled!(target: "dspex::telemetry", tracing::Level::DEBUG)
    }

    /// Publish a routine event built only if something would see it (the
    /// hot paths use this so an unobserved runtime does not pay for events).
    pub fn emit_lazy(&self, trace_id: Option<&str>, kind: impl FnOnce() -> EventKind) {
        if self.active() {
            self.emit(trace_id, kind());
        }
    }

    /// Report a request's result: its total time and the runtime's own
    /// part of it (the overhead histogram).
    pub(crate) fn finished(&self, op: &str, meta: &Meta) {
        self.emit_lazy(Some(&meta.trace_id), || EventKind::RequestFinished {
            op: op.into(),
            route: if meta.cached { "cache".into() } else { meta.route.label() },
            total_us: meta.timings.total_us,
            overhead_us: meta.timings.overhead_us,
        });
    }

    /// Subscribers right now.
    pub fn subscriber_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Receive every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Publish an event.
    pub fn emit(&self, trace_id: Option<&str>, kind: EventKind) {
        if self.metrics {
            record_metrics(&kind);
        }
        log(trace_id, &kind);
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(Event::now(trace_id.map(str::to_string), kind)));
        }
    }
}

/// The LM gateway's calls and refusals as metrics: calls, tokens and cost
/// per LM and tenant (`dspex_lm_calls_total`, `dspex_lm_tokens_total`,
/// `dspex_lm_cost_usd_total`, `dspex_lm_failures_total`).
pub(crate) fn record_gateway(event: &dspex_native::lm::GatewayEvent<'_>) {
    use dspex_native::lm::GatewayEvent;
    match *event {
        GatewayEvent::Called { lm, tenant, usage, cost_usd, cached } => {
            let (lm, tenant) = (lm.to_string(), tenant.to_string());
            metrics::counter!("dspex_lm_calls_total", "lm" => lm.clone(), "tenant" => tenant.clone(), "cached" => cached.to_string())
                .increment(1);
            if let Some(u) = usage {
                metrics::counter!("dspex_lm_tokens_total", "lm" => lm.clone(), "tenant" => tenant.clone(), "direction" => "prompt")
                    .increment(u.prompt_tokens);
                metrics::counter!("dspex_lm_tokens_total", "lm" => lm.clone(), "tenant" => tenant.clone(), "direction" => "completion")
                    .increment(u.completion_tokens);
            }
            if let Some(c) = cost_usd {
                metrics::gauge!("dspex_lm_cost_usd_total", "lm" => lm, "tenant" => tenant).increment(c);
            }
        }
        GatewayEvent::Failed { lm, tenant, kind } => {
            metrics::counter!("dspex_lm_failures_total", "lm" => lm.unwrap_or("-").to_string(),
                "tenant" => tenant.to_string(), "kind" => kind.as_str())
            .increment(1);
        }
    }
}

fn record_metrics(kind: &EventKind) {
    let name = kind.name();
    match kind {
        EventKind::RouterRoute { route, .. } => {
            metrics::counter!("dspex_router_routes_total", "route" => route.label()).increment(1);
        }
        EventKind::NativeExecute { elapsed_us, ok, .. } => {
            metrics::counter!("dspex_native_requests_total", "ok" => ok.to_string()).increment(1);
            metrics::histogram!("dspex_native_seconds").record(*elapsed_us as f64 / 1e6);
        }
        EventKind::PythonExecute { pool, elapsed_us, queue_us, ok, .. } => {
            metrics::counter!("dspex_python_requests_total", "pool" => pool.clone(), "ok" => ok.to_string())
                .increment(1);
            metrics::histogram!("dspex_python_seconds", "pool" => pool.clone()).record(*elapsed_us as f64 / 1e6);
            metrics::histogram!("dspex_queue_seconds", "pool" => pool.clone()).record(*queue_us as f64 / 1e6);
        }
        EventKind::RequestFinished { route, total_us, overhead_us, .. } => {
            metrics::histogram!("dspex_request_seconds", "route" => route.clone()).record(*total_us as f64 / 1e6);
            metrics::histogram!("dspex_overhead_seconds", "route" => route.clone()).record(*overhead_us as f64 / 1e6);
        }
        EventKind::PipelineStep { elapsed_us, ok, .. } => {
            metrics::counter!("dspex_pipeline_steps_total", "ok" => ok.to_string()).increment(1);
            metrics::histogram!("dspex_pipeline_step_seconds").record(*elapsed_us as f64 / 1e6);
        }
        EventKind::Error { kind, .. } => {
            metrics::counter!("dspex_errors_total", "kind" => kind.as_str()).increment(1);
        }
        _ => metrics::counter!("dspex_events_total", "event" => name).increment(1),
    }
}

fn log(trace_id: Option<&str>, kind: &EventKind) {
    let trace = trace_id.unwrap_or("-");
    match kind {
        EventKind::Error { op, kind, message } => {
            tracing::warn!(target: "dspex::telemetry", event = "error", trace, op, kind = %kind, "{message}")
        }
        EventKind::Lifecycle { actor, what, detail } => {
            tracing::info!(target: "dspex::telemetry", event = "lifecycle", actor, what, "{detail}")
        }
        EventKind::ShadowDivergence { op, detail } => {
            tracing::warn!(target: "dspex::telemetry", event = "shadow.divergence", trace, op, "{detail}")
        }
        other => tracing::debug!(target: "dspex::telemetry", event = other.name(), trace, ?other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_receive_events() {
        let t = Telemetry::new();
        t.emit(None, EventKind::CacheMiss { op: "x".into() });
        let mut rx = t.subscribe();
        t.emit(Some("t1"), EventKind::CacheHit { op: "predict".into() });
        let e = rx.recv().await.unwrap();
        assert_eq!(e.kind.name(), "cache.hit");
        assert_eq!(e.trace_id.as_deref(), Some("t1"));
    }
}
