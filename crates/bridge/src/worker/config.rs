//! What a worker is started and called with: its configuration and
//! environment, per-request options, stream items and how it ended.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_core::Value;

use crate::process::ChildLimits;
use crate::protocol::{CodecChoice, DEFAULT_MAX_FRAME};
use crate::runs::RunRegistry;

/// Environment variables passed through from the runtime unless configured otherwise.
pub const DEFAULT_ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// How to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Name for logs and errors, e.g. `worker:general:0`.
    pub name: String,
    /// The Python interpreter (absolute path: a shim adds ~100 ms per start).
    pub python: PathBuf,
    /// Arguments after the interpreter (`-m dspex_worker` by default).
    pub args: Vec<OsString>,
    /// Prepended to `PYTHONPATH` (the embedded worker sources, user code).
    pub python_path: Vec<PathBuf>,
    /// Variables set for this worker (they win over everything else).
    pub env: Vec<(String, String)>,
    /// Variables passed through from the runtime's environment.
    pub env_allowlist: Vec<String>,
    /// Requests the worker runs at once (its thread pool size).
    pub concurrency: u32,
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    /// Threads for numeric libraries (OpenMP, BLAS, MKL, ...); `None` leaves them alone.
    pub thread_caps: Option<u32>,
    /// Address-space limit, CPU priority, CPU affinity.
    pub limits: ChildLimits,
    /// `CUDA_VISIBLE_DEVICES` for this worker.
    pub cuda_visible_devices: Option<String>,
    /// Python modules that register user commands.
    pub user_modules: Vec<String>,
    /// Import DSPy (and warm it up) before saying hello.
    pub preload_dspy: bool,
    /// How long start-up (through `hello`) may take.
    pub start_timeout: Duration,
    /// Codec for requests (and their replies) unless a call asks for
    /// another; `auto`: per message, by size and shape.
    pub codec: CodecChoice,
    /// How long a request may keep running after its deadline and a cancel
    /// before the worker is considered hung and killed.
    pub hung_grace: Duration,
    /// Pipe buffer size (`F_SETPIPE_SZ`).
    pub pipe_size: usize,
    /// Ping this often; a worker that misses a pong for 5 intervals is killed.
    pub heartbeat: Option<Duration>,
    /// After each message the worker polls this long for the next one before
    /// blocking. A blocked process costs a cross-core wake-up per request
    /// (~50 µs on a small VM); polling trades a little CPU for latency.
    /// Zero disables it.
    pub spin: Duration,
    /// Record the worker in this run registry.
    pub registry: Option<Arc<RunRegistry>>,
    /// Fork the worker from this zygote instead of starting it cold (a
    /// cold start is used when the zygote refuses or fails).
    pub zygote: Option<crate::Zygote>,
    /// Send the worker's LM calls (OpenAI-compatible chat completions)
    /// through this gateway: the worker's DSPy hands each HTTP request to
    /// the runtime instead of calling the service (see `worker::lm`).
    pub lm_gateway: Option<Arc<dyn super::LmGateway>>,
}

impl WorkerConfig {
    /// Defaults for a worker named `name` run by `python`.
    pub fn new(name: impl Into<String>, python: impl Into<PathBuf>) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            python: python.into(),
            args: vec!["-m".into(), "dspex_worker".into()],
            python_path: Vec::new(),
            env: Vec::new(),
            env_allowlist: DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect(),
            concurrency: 4,
            max_frame: DEFAULT_MAX_FRAME,
            thread_caps: Some(1),
            limits: ChildLimits::default(),
            cuda_visible_devices: None,
            user_modules: Vec::new(),
            preload_dspy: true,
            start_timeout: Duration::from_secs(60),
            codec: CodecChoice::Auto,
            hung_grace: Duration::from_secs(2),
            pipe_size: 1 << 20,
            heartbeat: None,
            spin: Duration::from_micros(100),
            registry: None,
            zygote: None,
            lm_gateway: None,
        }
    }

    pub(crate) fn environment(&self, req_fd: i32, resp_fd: i32) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        for key in &self.env_allowlist {
            if let Some(v) = std::env::var_os(key) {
                env.push((key.into(), v));
            }
        }
        let mut set = |k: &str, v: String| env.push((k.into(), v.into()));
        set("DSPEX_REQ_FD", req_fd.to_string());
        set("DSPEX_RESP_FD", resp_fd.to_string());
        set("DSPEX_WORKER_ID", self.name.clone());
        set("DSPEX_WORKER_CONCURRENCY", self.concurrency.to_string());
        set("DSPEX_MAX_FRAME", self.max_frame.to_string());
        set("DSPEX_WORKER_PRELOAD_DSPY", if self.preload_dspy { "1" } else { "0" }.to_string());
        set("DSPEX_WORKER_SPIN_US", self.spin.as_micros().to_string());
        set("DSPEX_LM_GATEWAY", if self.lm_gateway.is_some() { "1" } else { "0" }.to_string());
        if !self.user_modules.is_empty() {
            set("DSPEX_WORKER_MODULES", self.user_modules.join(","));
        }
        // Lines reach the runtime's logs as they are written.
        set("PYTHONUNBUFFERED", "1".into());
        set("PYTHONDONTWRITEBYTECODE", "1".into());
        // Without it, LiteLLM fetches its cost map from the network on first use.
        set("LITELLM_LOCAL_MODEL_COST_MAP", "True".into());
        set("TOKENIZERS_PARALLELISM", "false".into());
        // Optimizers' tqdm bars would reach the logs as warnings; the worker
        // reports their progress as events instead (`dspex optimize` draws it).
        set("TQDM_DISABLE", "1".into());
        if let Some(n) = self.thread_caps {
            for k in [
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS",
            ] {
                set(k, n.to_string());
            }
        }
        if let Some(d) = &self.cuda_visible_devices {
            set("CUDA_VISIBLE_DEVICES", d.clone());
        }
        let mut paths: Vec<String> = self.python_path.iter().map(|p| p.display().to_string()).collect();
        if let Some(existing) = self.env.iter().find(|(k, _)| k == "PYTHONPATH") {
            paths.push(existing.1.clone());
        }
        if !paths.is_empty() {
            set("PYTHONPATH", paths.join(":"));
        }
        for (k, v) in &self.env {
            if k != "PYTHONPATH" {
                env.retain(|(ek, _)| ek != k.as_str());
                env.push((k.into(), v.into()));
            }
        }
        env
    }
}

/// Per-request settings.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// When the caller stops waiting; the worker is told the time left.
    pub deadline: Option<Instant>,
    /// The session the request belongs to.
    pub session: Option<String>,
    /// Trace id, shown in the worker's log lines.
    pub trace_id: Option<String>,
    /// Codec for this request; `None`: the worker's (a fixed codec is the
    /// replies' too; under `auto` each side picks per message).
    pub codec: Option<CodecChoice>,
    /// Goes with the request's LM calls to the gateway (the runtime's
    /// tenant and meter for it; the bridge does not look inside).
    pub lm_scope: Option<super::LmScopeToken>,
}

/// One item of a streamed request.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A chunk the command emitted.
    Chunk(Value),
    /// The command's result (always last).
    Done(Value),
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed.
    pub signal: Option<i32>,
    /// Why the runtime thinks it ended.
    pub reason: String,
}

impl ExitInfo {
    /// How it ended, in words: `killed by signal 9`, `exited with code 1`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (_, Some(s)) => format!("killed by signal {s}"),
            (Some(c), _) => format!("exited with code {c}"),
            _ => "ended".into(),
        }
    }
}
