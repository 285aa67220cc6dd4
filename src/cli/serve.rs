//! `dspex serve` and `dspex run`: a long-running runtime with the console,
//! and one pipeline run.

use std::io::Write;
use std::path::{Path, PathBuf};

use dspex::actors::console::{default_socket, token_file, ConsoleEndpoint};
use dspex::{Error, ErrorKind, LmSettings, Map, PoolConfig, Result, Runtime, RuntimeBuilder, RuntimeConfig, Value};

use super::cluster::{self, ClusterFlags, Joined};
use super::common::{describe, lm_setup, settle, LmFlags, LmSetup};

/// A runtime built for a command, its offline LM (kept alive), and its
/// cluster membership.
pub struct Built {
    pub rt: Runtime,
    _lm: Option<LmSetup>,
    pub joined: Option<Joined>,
}

impl Built {
    /// Leave the cluster (after up to 5 s of remote work), then stop.
    pub async fn shutdown(self) -> Result<()> {
        cluster::leave(self.joined, std::time::Duration::from_secs(5)).await;
        self.rt.shutdown().await
    }
}

/// The runtime for `serve`, `run` and `call`: the file's settings, or a
/// `general` pool of `default_size` workers (none with `default_pool =
/// false`: a client-only node); its LM, or the environment's, or the
/// offline one; in the cluster the file or the flags name.
pub async fn build(config: Option<&Path>, default_size: usize, lm: LmFlags, flags: &ClusterFlags) -> Result<Built> {
    build_with(config, default_size, lm, flags, Local::Default, false).await
}

/// Whether a file without `[[pools]]` gets the default pool.
#[derive(PartialEq)]
enum Local {
    /// Yes (unless `default_pool = false`).
    Default,
    /// Not in a cluster: other nodes run the Python.
    NoneInCluster,
}

async fn build_with(
    config: Option<&Path>,
    default_size: usize,
    lm: LmFlags,
    flags: &ClusterFlags,
    local: Local,
    // Record Prometheus metrics (also whenever the file has `[http]`).
    prometheus: bool,
) -> Result<Built> {
    let settings = lm.settings()?;
    let mut cfg = match config {
        Some(path) => RuntimeConfig::from_toml_file(path)?,
        None => RuntimeConfig::default(),
    };
    let cluster_config = flags.settle(cfg.cluster.take());
    if let Some(c) = &cluster_config {
        cluster::available()?;
        c.check()?;
    }
    if cluster_config.is_some() && local == Local::NoneInCluster && cfg.pools.is_empty() {
        cfg.default_pool = false;
    }
    if cfg.pools.is_empty() && cfg.default_pool {
        cfg.pools.push(PoolConfig::preset("general").unwrap_or_else(|| PoolConfig::new("general")).size(default_size));
    }
    // A key kept out of the file comes from the environment.
    if let Some(lm) = cfg.lm.as_mut().filter(|lm| lm.api_key.is_none()) {
        if let Some(key) = ["DSPEX_LM_API_KEY", "OPENAI_API_KEY"].iter().find_map(|k| std::env::var(k).ok()) {
            *lm = lm.clone().with_api_key(key);
        }
    }
    let setup = match cfg.lm.take() {
        None => {
            let setup = lm_setup(settings, LmSettings::default()).await?;
            eprintln!("LM: {}", setup.label);
            cfg.lm = Some(setup.config.clone());
            Some(setup)
        }
        Some(lm) => {
            let lm = settle(lm, settings, LmSettings::default())?;
            eprintln!("LM: {} at {}{}", lm.model, lm.base_url.as_deref().unwrap_or("OpenAI"), describe(&lm));
            cfg.lm = Some(lm);
            None
        }
    };
    #[cfg(feature = "prometheus")]
    let prometheus = prometheus || cfg.http.is_some();
    let builder = RuntimeBuilder::from_config(cfg).on_progress(|m| eprintln!("  … {m}"));
    #[cfg(feature = "prometheus")]
    let builder = if prometheus { builder.prometheus() } else { builder };
    #[cfg(not(feature = "prometheus"))]
    let _ = prometheus;
    let rt = builder.start().await?;
    let joined = match cluster::join(&rt, cluster_config).await {
        Ok(j) => j,
        Err(e) => {
            let _ = rt.shutdown().await;
            return Err(e);
        }
    };
    Ok(Built { rt, _lm: setup, joined })
}

/// What `dspex serve` was asked for.
pub struct ServeOptions {
    /// Runtime settings file.
    pub config: Option<PathBuf>,
    /// Console unix socket.
    pub socket: Option<PathBuf>,
    /// Console TCP address.
    pub tcp: Option<String>,
    /// Console token (TCP).
    pub token: Option<String>,
    /// Prometheus address.
    pub metrics: Option<String>,
    /// HTTP API address (over the config's `[http] addr`).
    pub http: Option<String>,
    /// LM settings from flags.
    pub lm: LmFlags,
    /// Cluster settings from flags.
    pub cluster: ClusterFlags,
}

/// `dspex serve`: run until SIGTERM or SIGINT.
pub async fn serve(opts: ServeOptions) -> Result<()> {
    let ServeOptions { config, socket, tcp, token, metrics, http, lm, cluster } = opts;
    #[cfg(not(feature = "prometheus"))]
    if metrics.is_some() {
        return Err(Error::new(ErrorKind::Config, "this dspex was built without the `prometheus` feature"));
    }
    // Metrics are recorded when they are served: on their own address or by
    // the HTTP API (`--http` here, or `[http]` in the file).
    let record = metrics.is_some() || http.is_some();
    let endpoint = match tcp {
        Some(addr) => {
            let addr = addr
                .parse()
                .map_err(|_| Error::new(ErrorKind::Config, format!("--console-tcp {addr} is not an address")))?;
            let token = token
                .ok_or_else(|| Error::new(ErrorKind::Config, "--console-tcp needs --token (at least 8 characters)"))?;
            ConsoleEndpoint::Tcp { addr, token }
        }
        None => ConsoleEndpoint::Unix(socket.unwrap_or_else(default_socket)),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot watch SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot watch SIGINT: {e}")))?;
    let built = build_with(config.as_deref(), 2, lm, &cluster, Local::Default, record).await?;
    let rt = &built.rt;
    let metrics_at = match metrics {
        #[cfg(feature = "prometheus")]
        Some(addr) => match serve_metrics(&addr).await {
            Ok(a) => Some(a),
            Err(e) => {
                let _ = built.shutdown().await;
                return Err(e);
            }
        },
        _ => None::<std::net::SocketAddr>,
    };
    let (bound, _token) = rt.serve_console(endpoint).await?;
    let at = match &bound {
        ConsoleEndpoint::Unix(p) => format!("{} (token in {})", p.display(), token_file(p).display()),
        ConsoleEndpoint::Tcp { addr, .. } => format!("tcp {addr}"),
    };
    let http_server = match serve_http(rt, http).await {
        Ok(s) => s,
        Err(e) => {
            let _ = built.shutdown().await;
            return Err(e);
        }
    };
    let pools: Vec<String> = rt.pool_stats().iter().map(|p| format!("{} ({} workers)", p.name, p.size)).collect();
    let mut metrics_note = metrics_at.map(|a| format!(" — metrics at http://{a}/metrics")).unwrap_or_default();
    if let Some(note) = http_note(&http_server) {
        metrics_note.push_str(&note);
    }
    let node_note = rt.node_name().map(|n| format!(" — cluster node {n}")).unwrap_or_default();
    let pools = if pools.is_empty() { "none (client-only)".to_string() } else { pools.join(", ") };
    println!("dspex serve: ready — pools {pools} — console at {at}{metrics_note}{node_note}");
    let _ = std::io::stdout().flush();
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("dspex serve: {why}; stopping");
    stop_http(http_server).await;
    let uptime = rt.uptime();
    built.shutdown().await?;
    eprintln!("dspex serve: stopped after {:.1}s", uptime.as_secs_f64());
    Ok(())
}

#[cfg(feature = "http")]
type HttpServer = Option<dspex::http::HttpServer>;
#[cfg(not(feature = "http"))]
type HttpServer = Option<()>;

/// The HTTP API, when `--http` or `[http]` asks for it.
async fn serve_http(rt: &Runtime, addr: Option<String>) -> Result<HttpServer> {
    let wanted = addr.is_some() || rt.config().http.is_some();
    if !wanted {
        return Ok(None);
    }
    #[cfg(feature = "http")]
    {
        let mut config = rt.config().http.clone().unwrap_or_default();
        if let Some(addr) = addr {
            config.addr = addr;
        }
        Ok(Some(dspex::http::HttpApi::from_config(rt, rt.config())?.config(config).serve().await?))
    }
    #[cfg(not(feature = "http"))]
    {
        Err(Error::new(ErrorKind::Config, "this dspex was built without the `http` feature"))
    }
}

/// `GET /metrics` of the process's Prometheus registry (the runtime's) on
/// `addr` (read-only, so any address may serve it). Returns the bound address.
#[cfg(feature = "prometheus")]
async fn serve_metrics(addr: &str) -> Result<std::net::SocketAddr> {
    use axum::http::{header, StatusCode};
    let registry = dspex::actors::prometheus::install()?;
    let cannot = |e: std::io::Error| Error::new(ErrorKind::Config, format!("cannot serve metrics on {addr}: {e}"));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(cannot)?;
    let local = listener.local_addr().map_err(cannot)?;
    let metrics = move || {
        let text = registry.render();
        async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
    };
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try GET /metrics\n") });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(target: "dspex::metrics", "the metrics endpoint failed: {e}");
        }
    });
    Ok(local)
}

#[cfg(feature = "http")]
fn http_note(server: &HttpServer) -> Option<String> {
    server.as_ref().map(|s| {
        let auth = if s.token().is_some() { ", bearer token" } else { "" };
        format!(" — HTTP API at http://{}{auth}", s.local_addr())
    })
}

#[cfg(not(feature = "http"))]
fn http_note(_: &HttpServer) -> Option<String> {
    None
}

async fn stop_http(server: HttpServer) {
    #[cfg(feature = "http")]
    if let Some(s) = server {
        s.stop(std::time::Duration::from_secs(5)).await;
    }
    #[cfg(not(feature = "http"))]
    let _ = server;
}

/// Inputs from `--input k=v` (v parsed as JSON when it is JSON) and a JSON file.
pub fn inputs(pairs: &[String], file: Option<&Path>) -> Result<Map> {
    let mut out = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read {}: {e}", p.display())))?;
            match serde_json::from_str(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(Error::invalid_request(format!("{} must hold a JSON object", p.display()))),
                Err(e) => return Err(Error::invalid_request(format!("{}: {e}", p.display()))),
            }
        }
        None => Map::new(),
    };
    for pair in pairs {
        let (k, v) =
            pair.split_once('=').ok_or_else(|| Error::invalid_request(format!("--input {pair:?} is not KEY=VALUE")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

/// `dspex run PIPELINE`: the result as JSON.
pub async fn run(pipeline: &Path, inputs: Map, config: Option<PathBuf>, lm: LmFlags) -> Result<Value> {
    let p = dspex::Pipeline::from_file(pipeline)?;
    let built = build(config.as_deref(), 1, lm, &ClusterFlags::default()).await?;
    let result = built.rt.run_pipeline(&p, inputs).await;
    built.shutdown().await?;
    let result = result?;
    serde_json::to_value(&result).map_err(|e| Error::internal(e.to_string()))
}

/// What `dspex call` was asked for.
pub struct CallArgs {
    /// Pool and command.
    pub pool: String,
    pub command: String,
    /// Arguments (a JSON object).
    pub args: Option<String>,
    /// Runtime settings file.
    pub config: Option<PathBuf>,
    /// Run on this cluster node.
    pub on_node: Option<String>,
    /// Safe to run twice (retried on another worker or node if its own is lost).
    pub idempotent: bool,
    /// Deadline in seconds.
    pub timeout: Option<f64>,
    pub lm: LmFlags,
    pub cluster: ClusterFlags,
}

/// `dspex call POOL COMMAND [ARGS]`: one request through a local or cluster
/// runtime; the result and its `Meta` as JSON. In a cluster, with no
/// `[[pools]]` in the file, the runtime is a client-only node: no Python here.
pub async fn call(a: CallArgs) -> Result<Value> {
    let args = match a.args.as_deref() {
        None => Value::Object(Map::new()),
        Some(text) => match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(Error::invalid_request("ARGS must be a JSON object")),
            Err(e) => return Err(Error::invalid_request(format!("ARGS is not JSON: {e}"))),
        },
    };
    let built = build_with(a.config.as_deref(), 1, a.lm, &a.cluster, Local::NoneInCluster, false).await?;
    let mut opts = dspex::RequestOptions::default().idempotent(a.idempotent);
    if let Some(t) = a.timeout {
        opts = opts.timeout(std::time::Duration::from_secs_f64(t.max(0.001)));
    }
    if let Some(n) = a.on_node {
        opts = opts.on_node(n);
    }
    let out = built.rt.call(&a.pool, &a.command, args, opts).await;
    built.shutdown().await?;
    let out = out?;
    Ok(serde_json::json!({"value": out.value, "meta": out.meta}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call_args(command: &str, args: Option<&str>, config: Option<PathBuf>) -> CallArgs {
        CallArgs {
            pool: "general".into(),
            command: command.into(),
            args: args.map(String::from),
            config,
            on_node: None,
            idempotent: true,
            timeout: Some(120.0),
            lm: LmFlags::default(),
            cluster: ClusterFlags::default(),
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dspex-serve-test-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_runs_one_worker_command_on_the_default_pool_and_reports_where() {
        let out = call(call_args("echo", Some(r#"{"x": [1, 2]}"#), None)).await.unwrap();
        assert_eq!(out["value"], json!({"x": [1, 2]}));
        assert_eq!(out["meta"]["pool"], "general");
        assert!(out["meta"]["pid"].as_u64().is_some_and(|p| p > 0), "{out}");
        assert!(out["meta"]["node"].is_null(), "not in a cluster: {out}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_uses_the_pools_and_lm_of_a_config_file() {
        let config = temp_file(
            "dspex.toml",
            "[lm]\nmodel = \"openai/never-called\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
             [[pools]]\nname = \"tools\"\nsize = 1\n",
        );
        let mut args = call_args("commands", None, Some(config.clone()));
        args.pool = "tools".into();
        let out = call(args).await.unwrap();
        assert!(out["value"].as_array().is_some_and(|names| names.contains(&json!("echo"))), "{out}");
        assert_eq!(out["meta"]["pool"], "tools");
        // The file's pools replace the default one.
        let err = call(call_args("echo", None, Some(config))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }

    #[tokio::test]
    async fn call_refuses_arguments_that_are_not_a_json_object_before_starting_anything() {
        for (args, says) in [("[1, 2]", "must be a JSON object"), ("{nope", "is not JSON")] {
            let err = call(call_args("echo", Some(args), None)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
            assert!(err.message().contains(says), "{args}: {err}");
        }
        let err = call(call_args("echo", None, Some("/nonexistent/dspex.toml".into()))).await.unwrap_err();
        assert!(err.message().contains("/nonexistent/dspex.toml"), "{err}");
    }

    #[test]
    fn inputs_come_from_a_json_file_then_key_value_pairs() {
        let file = temp_file("in.json", r#"{"question": "from file", "k": 1}"#);
        let got = inputs(&["k=2".into(), "note=plain text".into()], Some(&file)).unwrap();
        assert_eq!(Value::Object(got), json!({"question": "from file", "k": 2, "note": "plain text"}));
        for (text, says) in [("[1]", "must hold a JSON object"), ("{", "in.json")] {
            let err = inputs(&[], Some(&temp_file("in.json", text))).unwrap_err();
            assert!(err.message().contains(says), "{text}: {err}");
        }
        assert!(inputs(&[], Some(Path::new("/nonexistent/in.json"))).unwrap_err().message().contains("cannot read"));
        assert!(inputs(&["no-equals".into()], None).unwrap_err().message().contains("KEY=VALUE"));
    }
}
