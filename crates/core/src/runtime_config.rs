//! The runtime's configuration: pools, routing, caching, supervision.
//!
//! Every struct here reads from TOML (or JSON) with the same field names the
//! builders use; unknown keys are rejected with the key's name.
//!
//! ```
//! use dspex_core::RuntimeConfig;
//!
//! let cfg = RuntimeConfig::from_toml(r#"
//!     [lm]
//!     model = "gpt-4o-mini"
//!
//!     [[pools]]
//!     name = "general"
//!     size = 2
//!
//!     [router]
//!     prefer = "auto"
//! "#).unwrap();
//! assert_eq!(cfg.pools[0].size, 2);
//! assert!(RuntimeConfig::from_toml("[router]\npreffer = 'auto'").unwrap_err().message().contains("preffer"));
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::LmConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::program::ProgramSpec;

/// Where a pool's Python comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct PythonConfig {
    /// Use this interpreter as is (a venv's `bin/python`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<PathBuf>,
    /// Build an environment with these requirements (the preset's when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// The interpreter that creates provisioned environments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
}

/// Restart intensity: at most `max_restarts` within `period_ms`, else escalate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntensityConfig {
    /// Restarts allowed in the period.
    pub max_restarts: u32,
    /// The period, in milliseconds.
    pub period_ms: u64,
    /// First restart delay, in milliseconds (doubles per restart in the period).
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Longest restart delay, in milliseconds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Judge each child on its own (ms; 0 keeps Erlang's rule, every
    /// restart counted within the period): a child that had run at least
    /// this long before it ended is replaced at once — it was killed from
    /// outside (OOM killer, operator, chaos), not caught in a crash loop —
    /// and one that ends sooner is backed off by its own count of such ends
    /// in a row, escalating past `max_restarts` of them. Pools of
    /// interchangeable workers use 250 by default.
    #[serde(default)]
    pub healthy_after_ms: u64,
}

fn default_backoff_initial() -> u64 {
    50
}

fn default_backoff_max() -> u64 {
    5_000
}

impl IntensityConfig {
    /// `max_restarts` within `period`.
    pub fn new(max_restarts: u32, period: Duration) -> IntensityConfig {
        IntensityConfig {
            max_restarts,
            period_ms: period.as_millis() as u64,
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            healthy_after_ms: 0,
        }
    }

    /// Replace children that had run `after` or longer at once, uncounted.
    pub fn healthy_after(mut self, after: Duration) -> IntensityConfig {
        self.healthy_after_ms = after.as_millis() as u64;
        self
    }
}

/// Which codec requests to Python workers (and the replies to them) travel
/// in: one codec, or chosen per message by size and shape. In TOML:
/// `codec = "auto"` (the default), `"msgpack"`, `"json"` or `"arrow"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum CodecChoice {
    /// Per message: Arrow for large columnar payloads (datasets of records,
    /// float arrays, embeddings) when both ends read Arrow (the `arrow`
    /// feature, `pyarrow` in the worker); MessagePack otherwise.
    #[default]
    Auto,
    /// Always JSON.
    Json,
    /// Always MessagePack.
    #[serde(rename = "msgpack")]
    MsgPack,
    /// Always Arrow (its columnar values as Arrow, the rest MessagePack).
    Arrow,
}

impl CodecChoice {
    /// The name in configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CodecChoice::Auto => "auto",
            CodecChoice::Json => "json",
            CodecChoice::MsgPack => "msgpack",
            CodecChoice::Arrow => "arrow",
        }
    }
}

impl std::fmt::Display for CodecChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CodecChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<CodecChoice> {
        Ok(match s {
            "auto" => CodecChoice::Auto,
            "json" => CodecChoice::Json,
            "msgpack" => CodecChoice::MsgPack,
            "arrow" => CodecChoice::Arrow,
            other => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("unknown codec `{other}` (known: auto, json, msgpack, arrow)"),
                ))
            }
        })
    }
}

/// A pool of Python workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name; presets are `general`, `optimizer`, `neural`.
    pub name: String,
    /// Workers.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Requests each worker runs at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Requests allowed to wait for a free worker; more are shed with `Overloaded`.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// How long a request may wait for a free worker, in milliseconds.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout_ms: u64,
    /// Address-space limit per worker, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    /// Largest message to or from a worker, in MiB (64 by default; at most
    /// 4095). A request over it is refused with `invalid_request` before it
    /// is sent, a result over it comes back as that error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_mb: Option<u64>,
    /// CPU priority (`nice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i32>,
    /// CPUs the workers may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_affinity: Option<Vec<usize>>,
    /// GPUs handed out round-robin, one per worker (`CUDA_VISIBLE_DEVICES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    /// Recycle a worker after this many requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    /// Recycle a worker after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Recycle a worker whose resident memory passes this many MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_mb: Option<u64>,
    /// Heartbeat interval, in milliseconds (0 disables).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Python modules that register user commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// Extra `PYTHONPATH` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python_path: Vec<PathBuf>,
    /// Environment variables for this pool's workers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Import DSPy before a worker reports ready.
    #[serde(default = "default_true")]
    pub preload_dspy: bool,
    /// Where the Python comes from.
    #[serde(default)]
    pub python: PythonConfig,
    /// Restart intensity for this pool's workers.
    #[serde(default = "default_worker_intensity")]
    pub intensity: IntensityConfig,
    /// How long a worker may keep polling before it blocks (µs; see the bridge docs).
    #[serde(default = "default_spin")]
    pub spin_us: u64,
    /// Fork workers from a zygote that has imported DSPy and the modules
    /// once (milliseconds and a few MiB per worker) instead of starting each
    /// cold. Off for pools whose modules start threads or initialise a GPU
    /// at import (the zygote refuses to fork then anyway, and says why).
    #[serde(default = "default_true")]
    pub zygote: bool,
    /// Idle workers the zygote keeps forked and ready beside the pool's
    /// `size`: a worker that dies is replaced by promoting one (a rename,
    /// well under a millisecond) instead of a fork. Each costs a few MiB of
    /// private memory; 0 turns standby off. Ignored without a zygote and
    /// for pools with `gpus` (a worker's GPU is fixed when it starts).
    #[serde(default = "default_standby")]
    pub standby: usize,
    /// How requests to this pool's workers (and their replies) are encoded:
    /// `auto` (the default: MessagePack, Arrow for large columnar payloads
    /// when the build has the `arrow` feature and the workers `pyarrow`),
    /// `msgpack`, `json` or `arrow`.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub codec: CodecChoice,
    /// How the workers' DSPy calls LMs: through the runtime's gateway
    /// (`gateway`, the default: its limits, budgets, cache and accounting
    /// cover them) or `direct`ly.
    #[serde(default, skip_serializing_if = "is_gateway")]
    pub lm_calls: crate::LmCalls,
}

fn is_gateway(c: &crate::LmCalls) -> bool {
    *c == crate::LmCalls::Gateway
}

fn is_auto(c: &CodecChoice) -> bool {
    *c == CodecChoice::Auto
}

fn default_standby() -> usize {
    1
}

fn default_size() -> usize {
    2
}
fn default_concurrency() -> u32 {
    4
}
fn default_max_queue() -> usize {
    1024
}
fn default_queue_timeout() -> u64 {
    30_000
}
fn default_heartbeat() -> u64 {
    5_000
}
fn default_true() -> bool {
    true
}
fn default_spin() -> u64 {
    100
}
fn default_worker_intensity() -> IntensityConfig {
    // Workers are interchangeable and (forked from a zygote) cheap to
    // replace: one killed after running 250 ms is replaced at once; only a
    // worker that keeps dying sooner — a crash loop — backs off and, after
    // 20 such ends in a row, escalates.
    IntensityConfig::new(20, Duration::from_secs(30)).healthy_after(Duration::from_millis(250))
}

impl PoolConfig {
    /// A pool named `name` with default settings.
    pub fn new(name: impl Into<String>) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            size: default_size(),
            concurrency: default_concurrency(),
            max_queue: default_max_queue(),
            queue_timeout_ms: default_queue_timeout(),
            memory_limit_mb: None,
            max_frame_mb: None,
            nice: None,
            cpu_affinity: None,
            gpus: Vec::new(),
            max_requests: None,
            ttl_secs: None,
            max_rss_mb: None,
            heartbeat_ms: default_heartbeat(),
            modules: Vec::new(),
            python_path: Vec::new(),
            env: Default::default(),
            preload_dspy: true,
            python: PythonConfig::default(),
            intensity: default_worker_intensity(),
            spin_us: default_spin(),
            codec: CodecChoice::Auto,
            lm_calls: crate::LmCalls::Gateway,
            zygote: true,
            standby: default_standby(),
        }
    }

    /// A preset: `general` (2 workers × 4), `optimizer` (1 worker, 1 at a
    /// time, long queue wait: optimizers run for minutes), `neural` (1 worker,
    /// 2 at a time, memory capped at 8 GiB, started cold: no zygote).
    pub fn preset(name: &str) -> Option<PoolConfig> {
        let base = PoolConfig::new(name);
        Some(match name {
            "general" => base,
            "optimizer" => PoolConfig { size: 1, concurrency: 1, queue_timeout_ms: 3_600_000, ..base },
            // CUDA does not survive a fork: neural workers start cold.
            "neural" => PoolConfig { size: 1, concurrency: 2, memory_limit_mb: Some(8192), zygote: false, ..base },
            _ => return None,
        })
    }

    /// Fork workers from a zygote (the default) or start each cold.
    pub fn zygote(mut self, on: bool) -> PoolConfig {
        self.zygote = on;
        self
    }

    /// Keep `n` forked workers on standby (default 1; 0 for none).
    pub fn standby(mut self, n: usize) -> PoolConfig {
        self.standby = n;
        self
    }

    /// Set the number of workers.
    pub fn size(mut self, n: usize) -> PoolConfig {
        self.size = n;
        self
    }

    /// Set the per-worker concurrency.
    pub fn concurrency(mut self, n: u32) -> PoolConfig {
        self.concurrency = n;
        self
    }

    /// Encode requests to the workers (and their replies) with `codec`.
    pub fn codec(mut self, codec: CodecChoice) -> PoolConfig {
        self.codec = codec;
        self
    }

    /// Use this interpreter.
    pub fn interpreter(mut self, python: impl Into<PathBuf>) -> PoolConfig {
        self.python.interpreter = Some(python.into());
        self
    }

    /// The queue timeout.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
}

/// Which implementation the router prefers when both can run a request.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutePreference {
    /// Native when it can, Python otherwise.
    #[default]
    Auto,
    /// Native only (fails with `Unsupported` if it cannot).
    Native,
    /// Python only.
    Python,
}

/// Router settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Default preference.
    #[serde(default)]
    pub prefer: RoutePreference,
    /// Retry on Python when the native path fails with a retryable error
    /// (it always does on `Unsupported` under `auto`).
    #[serde(default = "default_true")]
    pub fallback_on_failure: bool,
    /// Pool for Python requests that name none.
    #[serde(default = "default_pool_name")]
    pub default_pool: String,
    /// Consecutive failures that open a target's circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit stays open before a probe, in milliseconds.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown_ms: u64,
    /// Fraction of native-capable requests also run on Python and compared (0 disables).
    #[serde(default)]
    pub shadow_rate: f64,
    /// Decisions kept in the log.
    #[serde(default = "default_decision_log")]
    pub decision_log: usize,
}

fn default_pool_name() -> String {
    "general".into()
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> u64 {
    10_000
}
fn default_decision_log() -> usize {
    256
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            prefer: RoutePreference::Auto,
            fallback_on_failure: true,
            default_pool: default_pool_name(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown(),
            shadow_rate: 0.0,
            decision_log: default_decision_log(),
        }
    }
}

/// Result cache settings (deterministic requests only: temperature 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether the cache is used at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Entries kept.
    #[serde(default = "default_cache_capacity")]
    pub capacity: usize,
    /// Entry lifetime, in seconds.
    #[serde(default = "default_cache_ttl")]
    pub ttl_secs: u64,
}

fn default_cache_capacity() -> usize {
    10_000
}
fn default_cache_ttl() -> u64 {
    3600
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { enabled: true, capacity: default_cache_capacity(), ttl_secs: default_cache_ttl() }
    }
}

/// Session settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Idle sessions expire after this many seconds.
    #[serde(default = "default_session_ttl")]
    pub idle_ttl_secs: u64,
    /// Most sessions at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Where session snapshots are kept (none: not persisted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_dir: Option<PathBuf>,
    /// Turns of history a session keeps per program, the latest ones (none:
    /// all of them). Bounds both the session's memory and its prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_turns: Option<usize>,
}

fn default_session_ttl() -> u64 {
    1800
}
fn default_max_sessions() -> usize {
    10_000
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_ttl_secs: default_session_ttl(),
            max_sessions: default_max_sessions(),
            snapshot_dir: None,
            history_turns: None,
        }
    }
}

/// The whole runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The default LM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm: Option<LmConfig>,
    /// Python pools.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Start a `general` pool when `pools` is empty (the default). With
    /// `false` and no pools the runtime is native-only: it needs no Python,
    /// and a request that does fails with `config`.
    #[serde(default = "default_true")]
    pub default_pool: bool,
    /// Routing.
    #[serde(default)]
    pub router: RouterConfig,
    /// Result cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Sessions.
    #[serde(default)]
    pub sessions: SessionConfig,
    /// The interpreter pools use when they name none (else `DSPEX_PYTHON`, else
    /// a provisioned environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PathBuf>,
    /// Cache directory for environments and worker sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Restart intensity of the pools supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools_intensity: Option<IntensityConfig>,
    /// Deadline of a request that sets none, in milliseconds (every request has one).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Join a cluster of nodes over NATS (needs the `cluster` feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::ClusterConfig>,
    /// Serve the programs and pipelines below over HTTP (`dspex serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
    /// Programs by name (`[programs.NAME]`), for the HTTP API.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub programs: BTreeMap<String, ProgramEntry>,
    /// Pipeline files by name (`[pipelines]`, `NAME = "file.toml"`), for the
    /// HTTP API.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pipelines: BTreeMap<String, PathBuf>,
    /// The LM gateway every LM call goes through (`[gateway]`): rate
    /// limits, budgets, the shared response cache, retries, fallbacks, cost.
    #[serde(default)]
    pub gateway: crate::GatewayConfig,
}

/// `[http]`: the HTTP API of `dspex serve`.
///
/// Without a `token_file` the API answers without authentication and may
/// only listen on a loopback address; with one, every request but the
/// health checks needs `Authorization: Bearer <token>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to listen, e.g. `127.0.0.1:8080` (port 0: any free port).
    #[serde(default = "default_http_addr")]
    pub addr: String,
    /// A file holding the bearer token; created (mode 0600, a random token)
    /// when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes (larger: `413`).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests served at once; more are shed at once with `503` and
    /// `Retry-After` (the runtime's own queues shed with the same status).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Longest deadline a client may ask for with `X-Dspex-Timeout-Ms`;
    /// requests without the header get the runtime's request timeout.
    #[serde(default = "default_max_timeout")]
    pub max_timeout_ms: u64,
}

fn default_http_addr() -> String {
    "127.0.0.1:8080".to_string()
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}

fn default_max_in_flight() -> usize {
    1024
}

fn default_max_timeout() -> u64 {
    600_000
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: default_http_addr(),
            token_file: None,
            max_body_bytes: default_max_body(),
            max_in_flight: default_max_in_flight(),
            max_timeout_ms: default_max_timeout(),
        }
    }
}

/// `[programs.NAME]`: a program served by name — a [`ProgramSpec`]'s fields
/// (`module`, `signature`, `demos`, ...) and, optionally, the JSON DSPy's
/// `program.save(path)` wrote for it (`state_file`), applied as its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramEntry {
    /// The program.
    #[serde(flatten)]
    pub spec: ProgramSpec,
    /// A saved DSPy program (JSON), relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
}

impl ProgramEntry {
    /// The program with its saved state read in.
    pub fn load(&self) -> Result<ProgramSpec> {
        let mut spec = self.spec.clone();
        if let Some(path) = &self.state_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::new(ErrorKind::Config, format!("cannot read {}: {e}", path.display())))?;
            let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::new(ErrorKind::Config, format!("{} is not a saved DSPy program (JSON): {e}", path.display()))
            })?;
            spec.state = Some(state);
        }
        Ok(spec)
    }
}

fn default_request_timeout() -> u64 {
    120_000
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            lm: None,
            pools: Vec::new(),
            default_pool: true,
            router: RouterConfig::default(),
            cache: CacheConfig::default(),
            sessions: SessionConfig::default(),
            python: None,
            cache_dir: None,
            pools_intensity: None,
            request_timeout_ms: default_request_timeout(),
            cluster: None,
            http: None,
            programs: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            gateway: crate::GatewayConfig::default(),
        }
    }
}

impl RuntimeConfig {
    /// Read a TOML document; errors name the offending key or line.
    pub fn from_toml(text: &str) -> Result<RuntimeConfig> {
        toml::from_str(text).map_err(|e| Error::new(ErrorKind::Config, format!("invalid runtime configuration: {e}")))
    }

    /// Read a TOML file.
    pub fn from_toml_file(path: &std::path::Path) -> Result<RuntimeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot read {}: {e}", path.display())))?;
        let mut config = RuntimeConfig::from_toml(&text)
            .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {}", path.display(), e.message())))?;
        // Files the config names are relative to it.
        if let Some(dir) = path.parent() {
            let near = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            config.programs.values_mut().filter_map(|p| p.state_file.as_mut()).for_each(near);
            config.pipelines.values_mut().for_each(near);
            if let Some(token) = config.http.as_mut().and_then(|h| h.token_file.as_mut()) {
                near(token);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_builders() {
        assert_eq!(PoolConfig::preset("optimizer").unwrap().concurrency, 1);
        assert_eq!(PoolConfig::preset("neural").unwrap().memory_limit_mb, Some(8192));
        assert!(PoolConfig::preset("x").is_none());
        let p = PoolConfig::new("p").size(3).concurrency(2).interpreter("/usr/bin/python3");
        assert_eq!((p.size, p.concurrency), (3, 2));
        assert_eq!(p.queue_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn toml_round_trip_and_errors() {
        let cfg = RuntimeConfig::from_toml(
            "[[pools]]\nname = 'gpu'\nsize = 1\ngpus = ['0', '1']\n[pools.env]\nHF_HOME = '/tmp/hf'\n[cache]\nttl_secs = 5\n",
        )
        .unwrap();
        assert_eq!(cfg.pools[0].gpus, vec!["0", "1"]);
        assert_eq!(cfg.pools[0].env["HF_HOME"], "/tmp/hf");
        assert_eq!(cfg.cache.ttl_secs, 5);
        let err = RuntimeConfig::from_toml("[[pools]]\nname = 'x'\nsise = 2\n").unwrap_err();
        assert!(err.message().contains("sise"), "{err}");
        let err = RuntimeConfig::from_toml_file(std::path::Path::new("/nonexistent.toml")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
