//! Prometheus metrics for embedders (Cargo feature `prometheus`).
//!
//! The runtime records everything it measures through the [`metrics`]
//! facade (see [`Telemetry`](crate::Telemetry)); nothing is kept unless a
//! recorder is installed. [`install`] — or
//! [`RuntimeBuilder::prometheus`](crate::RuntimeBuilder::prometheus) — installs a Prometheus recorder
//! (metrics-exporter-prometheus) as the process's recorder, once per process,
//! and returns a handle that renders the text exposition format for a
//! `GET /metrics` endpoint of the application's choosing.
//!
//! Time histograms are Prometheus histograms in seconds, with buckets from
//! 50 µs to 30 s, so they aggregate across instances. The ones that matter
//! most:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `dspex_request_seconds` | `route` | a request, from the call to its result |
//! | `dspex_overhead_seconds` | `route` | the runtime's own part: the request minus the model's time |
//! | `dspex_native_seconds` | | the native engine's execution, LM call included |
//! | `dspex_python_seconds` | `pool` | a worker round trip |
//! | `dspex_queue_seconds` | `pool` | waiting for a worker |
//!
//! `route` is `native`, `python:<pool>`, or `cache` for results served from
//! the result cache.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> dspex_core::Result<()> {
//! let metrics = dspex_actors::prometheus::install()?;
//! metrics::counter!("my_app_requests_total").increment(1);
//! assert!(metrics.render().contains("my_app_requests_total 1"));
//! # Ok(())
//! # }
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use dspex_core::{Error, ErrorKind, Result};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Upper bounds of the time histograms' buckets, in seconds.
const BUCKETS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// How often recorded samples are folded into the histograms, between
/// scrapes (keeps memory flat when nothing scrapes).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder. Cheap to clone.
#[derive(Clone)]
pub struct PrometheusMetrics {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusMetrics").finish_non_exhaustive()
    }
}

impl PrometheusMetrics {
    /// Everything recorded, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Install the Prometheus recorder as this process's `metrics` recorder, or
/// return the one installed before: every runtime of a process shares it.
///
/// Fails with [`ErrorKind::Config`] when the application installed a
/// different recorder first (a process has one).
pub fn install() -> Result<PrometheusMetrics> {
    static INSTALLED: OnceLock<std::result::Result<PrometheusMetrics, String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .map_err(|e| format!("invalid histogram buckets: {e}"))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|_| "another metrics recorder is already installed in this process".to_string())?;
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("dspex-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            })
            .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
        Ok(PrometheusMetrics { handle })
    });
    installed.clone().map_err(|why| Error::new(ErrorKind::Config, format!("cannot record Prometheus metrics: {why}")))
}
