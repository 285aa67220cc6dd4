//! OpenTelemetry traces over OTLP (feature `otel`).
//!
//! One trace per request: the HTTP edge's span (a child of the caller's
//! `traceparent`, when it sent one), the dispatcher's `dspex.request`, its
//! phases (`dspex.route`, `dspex.pool.checkout`, `dspex.worker.call`,
//! `dspex.session.lock`, `dspex.pipeline.step`, `dspex.lm.call`), and under
//! the worker call the Python worker's own spans — its command, DSPy's
//! modules, LM calls and tools — which the worker records in the trace
//! context it was sent and returns with its response. Native LM calls send
//! `traceparent` to the LM server too.
//!
//! [`Otel::install`] sets up the exporter (a batch span processor posting
//! OTLP/HTTP, protobuf or JSON); [`Otel::layer`] is the `tracing` layer to
//! add to the application's subscriber; [`Otel::shutdown`] flushes.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! let otel = dspex::otel::Otel::install(dspex::otel::OtelConfig::new("http://127.0.0.1:4318"))?;
//! tracing_subscriber::registry().with(otel.layer()).init();
//! // ... build and use a Runtime ...
//! otel.shutdown();
//! # Ok::<(), dspex::Error>(())
//! ```
//!
//! The runtime's spans are at `DEBUG` level under the `dspex*` targets, so
//! they cost nothing without this layer; the layer enables them (and
//! anything at `INFO` and above) with its own filter, so a log filter on
//! another layer is not affected.

use std::time::{Duration, UNIX_EPOCH};

use dspex_core::trace::{RemoteSpan, TraceContext, TraceHooks};
use dspex_core::{Error, ErrorKind, Result};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;

/// Where and how to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`); spans go to
    /// `/v1/traces` under it unless it already ends with that.
    pub endpoint: String,
    /// JSON instead of protobuf.
    pub json: bool,
    /// `service.name` of the spans.
    pub service_name: String,
}

impl OtelConfig {
    /// Export to `endpoint` as protobuf, service `dspex`.
    pub fn new(endpoint: impl Into<String>) -> OtelConfig {
        OtelConfig { endpoint: endpoint.into(), json: false, service_name: "dspex".into() }
    }

    /// From the standard variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// (`http/json` or `http/protobuf`), `OTEL_SERVICE_NAME`; `None` without an
    /// endpoint.
    pub fn from_env() -> Option<OtelConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        Some(OtelConfig::new(endpoint).with_env())
    }

    /// Protocol and service name from `OTEL_EXPORTER_OTLP_PROTOCOL` and
    /// `OTEL_SERVICE_NAME` when they are set (the endpoint stays).
    pub fn with_env(mut self) -> OtelConfig {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(protocol) = var("OTEL_EXPORTER_OTLP_PROTOCOL") {
            self.json = protocol.trim() == "http/json";
        }
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            self.service_name = name;
        }
        self
    }

    /// Send JSON (`http/json`) instead of protobuf.
    pub fn json(mut self, json: bool) -> OtelConfig {
        self.json = json;
        self
    }

    fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// An installed exporter; see the [module docs](self).
#[derive(Debug)]
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Otel {
    /// Build the exporter and install it: the global tracer provider, and
    /// the trace hooks that carry context to Python workers and bring their
    /// spans back. Once per process: a second call fails with `config`.
    pub fn install(config: OtelConfig) -> Result<Otel> {
        let url = config.traces_url();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::new(ErrorKind::Config, format!("OTLP endpoint {url}: not an http(s) URL")));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(if config.json { Protocol::HttpJson } else { Protocol::HttpBinary })
            .with_endpoint(&url)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, format!("OTLP exporter for {url}: {e}")))?;
        let resource = Resource::builder().with_service_name(config.service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("dspex");
        if !dspex_core::trace::install(TraceHooks { current, record }) {
            return Err(Error::new(
                ErrorKind::Config,
                "an OpenTelemetry exporter is already installed in this process",
            ));
        }
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Otel { provider, tracer })
    }

    /// The `tracing` layer that turns the runtime's spans into OpenTelemetry
    /// spans: the `dspex*` targets' spans from `DEBUG`, other spans and every
    /// event (as span events) from `INFO`; the actor library's per-actor
    /// spans are left out (they last as long as the actor, not a request).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let filter = tracing_subscriber::filter::filter_fn(|meta| {
            let target = meta.target();
            if target.starts_with("ractor") {
                return false;
            }
            let level = *meta.level();
            level <= tracing::Level::INFO || (meta.is_span() && target.starts_with("dspex"))
        });
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone()).with_filter(filter)
    }

    /// Export what is buffered and stop (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!("flushing OpenTelemetry spans: {e}");
        }
        let _ = self.provider.shutdown();
    }
}

/// Make `span` a child of the caller's W3C `traceparent` (the HTTP edge).
pub(crate) fn adopt_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(cx) = traceparent.and_then(TraceContext::parse) else { return };
    let remote = SpanContext::new(
        TraceId::from_bytes(cx.trace_id),
        SpanId::from_bytes(cx.span_id),
        if cx.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

/// The trace hook: the current `tracing` span's OpenTelemetry context.
fn current() -> Option<TraceContext> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}

/// The trace hook: export a span a Python worker recorded, with its own ids
/// and times, under the parent it names.
fn record(span: RemoteSpan) {
    let (Ok(trace_id), Ok(span_id), Ok(parent_id)) =
        (TraceId::from_hex(&span.trace_id), SpanId::from_hex(&span.span_id), SpanId::from_hex(&span.parent_span_id))
    else {
        tracing::debug!(name = %span.name, "a worker span with malformed ids was dropped");
        return;
    };
    let parent = SpanContext::new(trace_id, parent_id, TraceFlags::SAMPLED, true, TraceState::default());
    let cx = Context::new().with_remote_span_context(parent);
    let at = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let mut kind = SpanKind::Internal;
    let mut attributes = Vec::with_capacity(span.attributes.len());
    for (key, value) in span.attributes {
        let value: opentelemetry::Value = match value {
            serde_json::Value::Bool(b) => b.into(),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n.as_f64().unwrap_or_default().into(),
            },
            serde_json::Value::String(s) if key == "otel.kind" => {
                kind = if s == "server" { SpanKind::Server } else { SpanKind::Client };
                continue;
            }
            serde_json::Value::String(s) => s.into(),
            serde_json::Value::Null => continue,
            other => other.to_string().into(),
        };
        attributes.push(KeyValue::new(key, value));
    }
    let tracer = opentelemetry::global::tracer("dspex-python");
    let mut builder = tracer
        .span_builder(span.name)
        .with_span_id(span_id)
        .with_kind(kind)
        .with_start_time(at(span.start_unix_ns))
        .with_end_time(at(span.end_unix_ns))
        .with_attributes(attributes);
    if let Some(error) = span.error {
        builder = builder.with_status(Status::error(error));
    }
    let mut exported = tracer.build_with_context(builder, &cx);
    opentelemetry::trace::Span::end_with_timestamp(&mut exported, at(span.end_unix_ns));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_once() {
        assert_eq!(OtelConfig::new("http://h:4318").traces_url(), "http://h:4318/v1/traces");
        assert_eq!(OtelConfig::new("http://h:4318/").traces_url(), "http://h:4318/v1/traces");
        assert_eq!(OtelConfig::new("http://h:4318/v1/traces").traces_url(), "http://h:4318/v1/traces");
    }
}
