//! A Prometheus endpoint for `dspex serve --metrics ADDR` (Cargo feature
//! `prometheus`): a small `metrics` recorder and `GET /metrics` in the text
//! exposition format. No extra dependencies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bounds of the histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Hist {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds-of-a-unit (f64 bits would need a CAS loop).
    sum_micros: AtomicU64,
}

impl metrics::HistogramFn for Hist {
    fn record(&self, value: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if value <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Metrics of one type by (name, rendered labels).
type Series<T> = Arc<Mutex<BTreeMap<(String, String), Arc<T>>>>;

/// The recorder: every metric by name and labels.
#[derive(Default, Clone)]
pub struct Registry {
    counters: Series<AtomicU64>,
    gauges: Series<AtomicU64>,
    histograms: Series<Hist>,
}

fn labels(key: &Key) -> String {
    key.labels()
        .map(|l| format!("{}=\"{}\"", l.key(), l.value().replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",")
}

fn id(key: &Key) -> (String, String) {
    (key.name().to_string(), labels(key))
}

impl Recorder for Registry {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.counters.lock().entry(id(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.gauges.lock().entry(id(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.lock().entry(id(key)).or_default().clone())
    }
}

fn series(name: &str, labels: &str, extra: Option<String>) -> String {
    let all: Vec<String> = [Some(labels.to_string()).filter(|l| !l.is_empty()), extra].into_iter().flatten().collect();
    if all.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", all.join(","))
    }
}

impl Registry {
    /// Everything in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = String::new();
        for ((name, labels), v) in self.counters.lock().iter() {
            if *name != last {
                out.push_str(&format!("# TYPE {name} counter\n"));
                last = name.clone();
            }
            out.push_str(&format!("{} {}\n", series(name, labels, None), v.load(Ordering::Relaxed)));
        }
        for ((name, labels), v) in self.gauges.lock().iter() {
            if *name != last {
                out.push_str(&format!("# TYPE {name} gauge\n"));
                last = name.clone();
            }
            let value = f64::from_bits(v.load(Ordering::Relaxed));
            out.push_str(&format!("{} {value}\n", series(name, labels, None)));
        }
        for ((name, labels), h) in self.histograms.lock().iter() {
            if *name != last {
                out.push_str(&format!("# TYPE {name} histogram\n"));
                last = name.clone();
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                let le = Some(format!("le=\"{b}\""));
                out.push_str(&format!(
                    "{} {}\n",
                    series(&format!("{name}_bucket"), labels, le),
                    h.buckets[i].load(Ordering::Relaxed)
                ));
            }
            let count = h.count.load(Ordering::Relaxed);
            out.push_str(&format!(
                "{} {count}\n",
                series(&format!("{name}_bucket"), labels, Some("le=\"+Inf\"".into()))
            ));
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            out.push_str(&format!("{} {sum}\n", series(&format!("{name}_sum"), labels, None)));
            out.push_str(&format!("{} {count}\n", series(&format!("{name}_count"), labels, None)));
        }
        out
    }
}

/// Install the recorder (once per process).
pub fn install() -> std::io::Result<Registry> {
    let registry = Registry::default();
    metrics::set_global_recorder(registry.clone())
        .map_err(|_| std::io::Error::other("a metrics recorder is already installed"))?;
    Ok(registry)
}

/// Serve `GET /metrics` of `registry` on `addr` (loopback or not: metrics
/// are read-only). Returns the bound address.
pub async fn serve(addr: &str, registry: Registry) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /metrics") {
                    ("200 OK", registry.render())
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let r = Registry::default();
        let key = Key::from_parts("dspex_python_requests_total", vec![metrics::Label::new("pool", "general")]);
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        r.register_counter(&key, &meta).increment(3);
        r.register_histogram(&Key::from_name("dspex_native_seconds"), &meta).record(0.002);
        let text = r.render();
        assert!(text.contains("# TYPE dspex_python_requests_total counter\n"), "{text}");
        assert!(text.contains("dspex_python_requests_total{pool=\"general\"} 3\n"), "{text}");
        assert!(text.contains("dspex_native_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("dspex_native_seconds_bucket{le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("dspex_native_seconds_count 1\n"), "{text}");
    }
}
