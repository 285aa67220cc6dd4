//! `dspex serve` and `dspex run`: a long-running runtime with the console,
//! and one pipeline run.

use std::io::Write;
use std::path::{Path, PathBuf};

use dspex::actors::console::{default_socket, token_file, ConsoleEndpoint};
use dspex::{Error, ErrorKind, LmSettings, Map, PoolConfig, Result, Runtime, RuntimeBuilder, RuntimeConfig, Value};

use super::common::{describe, lm_setup, settle, LmFlags, LmSetup};

/// The runtime for `serve` and `run`: the file's settings, or a `general`
/// pool of `default_size` workers; its LM, or the environment's, or the
/// offline one.
async fn build(config: Option<&Path>, default_size: usize, lm: LmFlags) -> Result<(Runtime, Option<LmSetup>)> {
    let settings = lm.settings()?;
    let mut cfg = match config {
        Some(path) => RuntimeConfig::from_toml_file(path)?,
        None => RuntimeConfig::default(),
    };
    if cfg.pools.is_empty() {
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
    let rt = RuntimeBuilder::from_config(cfg).on_progress(|m| eprintln!("  … {m}")).start().await?;
    Ok((rt, setup))
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
    /// LM settings from flags.
    pub lm: LmFlags,
}

/// `dspex serve`: run until SIGTERM or SIGINT.
pub async fn serve(opts: ServeOptions) -> Result<()> {
    let ServeOptions { config, socket, tcp, token, metrics, lm } = opts;
    // The recorder goes in before the runtime emits anything.
    let metrics_at = match metrics {
        #[cfg(feature = "prometheus")]
        Some(addr) => Some(
            super::prometheus::serve(&addr)
                .await
                .map_err(|e| Error::new(ErrorKind::Config, format!("cannot serve metrics on {addr}: {e}")))?,
        ),
        #[cfg(not(feature = "prometheus"))]
        Some(_) => return Err(Error::new(ErrorKind::Config, "this dspex was built without the `prometheus` feature")),
        None => None,
    };
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
    let (rt, _lm) = build(config.as_deref(), 2, lm).await?;
    let (bound, _token) = rt.serve_console(endpoint).await?;
    let at = match &bound {
        ConsoleEndpoint::Unix(p) => format!("{} (token in {})", p.display(), token_file(p).display()),
        ConsoleEndpoint::Tcp { addr, .. } => format!("tcp {addr}"),
    };
    let pools: Vec<String> = rt.pool_stats().iter().map(|p| format!("{} ({} workers)", p.name, p.size)).collect();
    let metrics_note = metrics_at.map(|a| format!(" — metrics at http://{a}/metrics")).unwrap_or_default();
    println!("dspex serve: ready — pools {} — console at {at}{metrics_note}", pools.join(", "));
    let _ = std::io::stdout().flush();
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("dspex serve: {why}; stopping");
    let uptime = rt.uptime();
    rt.shutdown().await?;
    eprintln!("dspex serve: stopped after {:.1}s", uptime.as_secs_f64());
    Ok(())
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
    let (rt, _lm) = build(config.as_deref(), 1, lm).await?;
    let result = rt.run_pipeline(&p, inputs).await;
    rt.shutdown().await?;
    let result = result?;
    serde_json::to_value(&result).map_err(|e| Error::internal(e.to_string()))
}
