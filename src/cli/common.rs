//! What the runtime commands share: logging, the LM, rendering.

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::{LmConfig, LmSettings, Result, Value};

/// Log to stderr: `DSPEX_LOG` (or `RUST_LOG`) as the filter, `default`
/// otherwise; `DSPEX_LOG_FORMAT=json` for JSON lines. Traces go to
/// `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set (feature `otel`); a bad
/// exporter setting is reported and logging goes on without it.
pub fn init_tracing(default: &str) -> TracingGuard {
    match init_tracing_with(default, None) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("dspex: tracing export is off: {}", e.message());
            let _ = init_tracing_with(default, Some(""));
            TracingGuard::default()
        }
    }
}

/// [`init_tracing`], exporting traces to `otlp` (over the environment);
/// `Some("")` exports nowhere. Fails when the exporter cannot be set up.
pub fn init_tracing_with(default: &str, otlp: Option<&str>) -> Result<TracingGuard> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("DSPEX_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let json = std::env::var("DSPEX_LOG_FORMAT").is_ok_and(|f| f == "json");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    let guard = TracingGuard::new(otlp)?;
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otel")]
    let _ = registry.with(guard.otel.as_ref().map(|o| o.layer())).try_init();
    #[cfg(not(feature = "otel"))]
    let _ = registry.try_init();
    Ok(guard)
}

/// Keeps the trace exporter (if any) until the command ends, then flushes it.
#[derive(Default)]
pub struct TracingGuard {
    #[cfg(feature = "otel")]
    otel: Option<dspex::otel::Otel>,
}

impl TracingGuard {
    #[cfg(feature = "otel")]
    fn new(otlp: Option<&str>) -> Result<TracingGuard> {
        let config = match otlp {
            Some("") => None,
            Some(url) => Some(dspex::otel::OtelConfig::new(url).with_env()),
            None => dspex::otel::OtelConfig::from_env(),
        };
        Ok(TracingGuard { otel: config.map(dspex::otel::Otel::install).transpose()? })
    }

    #[cfg(not(feature = "otel"))]
    fn new(otlp: Option<&str>) -> Result<TracingGuard> {
        match otlp {
            Some(url) if !url.is_empty() => Err(dspex::Error::new(
                dspex::ErrorKind::Config,
                format!("cannot export traces to {url}: this dspex was built without the `otel` feature"),
            )),
            _ => Ok(TracingGuard::default()),
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = self.otel.take() {
            otel.shutdown();
        }
    }
}

/// The LM the runtime commands use: a real one from the environment, or the
/// built-in offline LM served on 127.0.0.1.
pub struct LmSetup {
    /// Its settings.
    pub config: LmConfig,
    /// What it is, for the user.
    pub label: String,
    /// True for the offline LM.
    pub offline: bool,
    _server: Option<LmServer>,
}

/// `--lm-max-tokens` and `--lm-temperature`: over `DSPEX_LM_MAX_TOKENS`,
/// `DSPEX_LM_TEMPERATURE` and the config file's `[lm]`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LmFlags {
    /// Cap each LM completion at N tokens (sent as DSPy sends it).
    #[arg(long = "lm-max-tokens", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: Option<u32>,
    /// The LM's sampling temperature (0 to 2).
    #[arg(long = "lm-temperature", value_name = "T")]
    pub temperature: Option<f64>,
}

impl LmFlags {
    /// The flags over the environment's settings.
    pub fn settings(&self) -> Result<LmSettings> {
        Ok(LmSettings { max_tokens: self.max_tokens, temperature: self.temperature }.over(LmSettings::from_env()?))
    }
}

/// A real LM when `DSPEX_LM_BASE_URL` (with `DSPEX_LM_MODEL`, `DSPEX_LM_API_KEY`
/// or `OPENAI_API_KEY`) is set; otherwise the deterministic offline LM.
/// `settings` apply over the environment's LM, then `defaults` where
/// neither sets a value (not for reasoning models, which DSPy allows only
/// their own limits).
pub async fn lm_setup(settings: LmSettings, defaults: LmSettings) -> Result<LmSetup> {
    let settle = |config: LmConfig| settle(config, settings, defaults);
    if let Some(config) = dspex::native::lm::config_from_env()? {
        let config = settle(config)?;
        let label = format!("{} at {}{}", config.model, config.base_url.as_deref().unwrap_or("?"), describe(&config));
        return Ok(LmSetup { config, label, offline: false, _server: None });
    }
    let server = LmServer::start(OfflineResponder::new()).await?;
    let config = settle(
        LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("offline").with_temperature(0.0),
    )?;
    let label = format!(
        "built-in OFFLINE LM (deterministic, not a language model) on {} — set DSPEX_LM_BASE_URL for a real one",
        server.base_url()
    );
    Ok(LmSetup { config, label, offline: true, _server: Some(server) })
}

/// `config` with `settings` over it, then `defaults` where neither sets a
/// value (not for reasoning models, which DSPy allows only their own
/// limits); checked as DSPy checks it.
pub fn settle(config: LmConfig, settings: LmSettings, defaults: LmSettings) -> Result<LmConfig> {
    let defaults = if config.is_reasoning_model() { LmSettings::default() } else { defaults };
    let config = config.with_settings(settings.over(defaults));
    config.check()?;
    Ok(config)
}

/// `" (max_tokens 256, temperature 0)"`, for what is set.
pub fn describe(config: &LmConfig) -> String {
    let mut parts = Vec::new();
    if let Some(n) = config.max_tokens {
        parts.push(format!("max_tokens {n}"));
    }
    if let Some(t) = config.temperature {
        parts.push(format!("temperature {t}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

pub fn ms(v: Option<&Value>) -> String {
    let ms = v.and_then(Value::as_u64).unwrap_or(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 120_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m", ms / 60_000)
    }
}

/// The supervision tree (as `tree` returns it) as indented text.
pub fn render_tree(node: &Value) -> String {
    let mut out = String::new();
    walk(node, "", true, true, &mut out);
    // Other cluster nodes (read-only: their own consoles show their trees).
    let remote = node.get("cluster").and_then(Value::as_array).cloned().unwrap_or_default();
    if !remote.is_empty() {
        out.push_str("cluster (other nodes, read-only)\n");
        for (i, n) in remote.iter().enumerate() {
            let last = i + 1 == remote.len();
            let accepting = if n["accepting"].as_bool() == Some(false) { "draining" } else { "accepting" };
            out.push_str(&format!(
                "{}node:{} [node] {accepting}  remote in-flight {}  seen {} ms ago\n",
                if last { "└─ " } else { "├─ " },
                n["node"].as_str().unwrap_or("?"),
                n["remote_in_flight"],
                n["age_ms"]
            ));
            let pools = n["pools"].as_array().cloned().unwrap_or_default();
            for (j, p) in pools.iter().enumerate() {
                out.push_str(&format!(
                    "{}{}pool:{} [pool] ready {}/{}  in-flight {}  queued {}{}\n",
                    if last { "   " } else { "│  " },
                    if j + 1 == pools.len() { "└─ " } else { "├─ " },
                    p["name"].as_str().unwrap_or("?"),
                    p["ready"],
                    p["size"],
                    p["in_flight"],
                    p["queued"],
                    if p["offered"].as_bool() == Some(true) { "" } else { "  (not offered)" }
                ));
            }
        }
    }
    out
}

fn walk(node: &Value, prefix: &str, last: bool, root: bool, out: &mut String) {
    let s = |k: &str| node.get(k).and_then(Value::as_str).unwrap_or("");
    let mut line = format!("{} [{}] {}", s("name"), s("kind"), s("status"));
    let restarts = node.get("restarts").and_then(Value::as_u64).unwrap_or(0);
    line.push_str(&format!("  up {}", ms(node.get("uptime_ms"))));
    if restarts > 0 {
        line.push_str(&format!("  restarts {restarts}"));
    }
    if let Some(pid) = node.get("pid").and_then(Value::as_u64) {
        line.push_str(&format!("  pid {pid}"));
    }
    if let Some(n) = node.get("in_flight").and_then(Value::as_u64) {
        line.push_str(&format!("  in-flight {n}"));
    }
    if let Some(n) = node.get("queue").and_then(Value::as_u64) {
        line.push_str(&format!("  queued {n}"));
    }
    if let Some(extra) = node.get("extra").and_then(Value::as_object) {
        for (k, v) in extra {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            line.push_str(&format!("  {k} {v}"));
        }
    }
    if root {
        out.push_str(&line);
    } else {
        out.push_str(&format!("{prefix}{}{line}", if last { "└─ " } else { "├─ " }));
    }
    out.push('\n');
    let children = node.get("children").and_then(Value::as_array).cloned().unwrap_or_default();
    let child_prefix = if root { String::new() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
    for (i, c) in children.iter().enumerate() {
        walk(c, &child_prefix, i + 1 == children.len(), false, out);
    }
}

/// Rows of objects as an aligned table of the given columns.
pub fn table(rows: &[Value], columns: &[&str]) -> String {
    let cell = |r: &Value, c: &str| match r.get(c) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    for r in rows {
        for (i, c) in columns.iter().enumerate() {
            widths[i] = widths[i].max(cell(r, c).chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join("  ")
    };
    let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(line(columns.iter().map(|c| cell(r, c)).collect()).trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trees_render_with_branches_and_facts() {
        let tree = json!({"name": "dspex", "kind": "runtime", "status": "running", "restarts": 0, "uptime_ms": 1500,
        "children": [
            {"name": "pools", "kind": "supervisor", "status": "running", "restarts": 0, "uptime_ms": 10,
             "children": [{"name": "worker:general:0", "kind": "worker", "status": "ready", "restarts": 2,
                           "uptime_ms": 5, "pid": 42, "in_flight": 1}]},
            {"name": "sessions", "kind": "supervisor", "status": "running", "restarts": 0, "uptime_ms": 10}
        ]});
        let text = render_tree(&tree);
        assert!(text.starts_with("dspex [runtime] running  up 1.5s\n"), "{text}");
        assert!(text.contains("├─ pools [supervisor]"), "{text}");
        assert!(
            text.contains("│  └─ worker:general:0 [worker] ready  up 5ms  restarts 2  pid 42  in-flight 1"),
            "{text}"
        );
        assert!(text.contains("└─ sessions"), "{text}");
        let t = table(&[json!({"a": 1, "b": "x"})], &["a", "b"]);
        assert_eq!(t, "A  B\n1  x\n");
    }
}
