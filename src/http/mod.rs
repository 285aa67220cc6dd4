//! The HTTP API (Cargo feature `http`): a runtime's programs, pipelines and
//! sessions served by name over HTTP/1.1 with JSON bodies.
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /v1/programs/{name}/run` | run a program: `{"inputs": {...}, "options": {...}}` → `{"prediction", "meta"}` |
//! | `POST /v1/programs/{name}/stream` | the same as Server-Sent Events: `chunk` events, then `done` (or `error`) |
//! | `POST /v1/pipelines/{name}/run` | run a pipeline: `{"inputs": {...}}` → its result and step records |
//! | `POST /v1/sessions` | start a session with every served program defined in it |
//! | `POST /v1/sessions/{id}/programs/{name}/run` | run a program with the session's history |
//! | `GET`, `DELETE /v1/sessions/{id}` | a session's state; end it |
//! | `GET /v1/programs` | what is served |
//! | `GET /healthz`, `/readyz` | alive; ready (every pool has a ready worker) |
//! | `GET /metrics` | Prometheus text: the renderer given, else the runtime's registry ([`RuntimeBuilder::prometheus`](crate::RuntimeBuilder::prometheus)) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document, generated from the wire types |
//!
//! Every failure is one HTTP status and the same JSON body the CLI prints
//! (`{"error": {"kind", "message", "retryable", "context"}}`, see
//! [`ErrorReply`](crate::ErrorReply)). With a token, every request but the
//! health checks needs `Authorization: Bearer <token>` (after five wrong
//! tokens a client address waits before each further try, 250 ms doubling
//! to a minute, and is answered `429` with `Retry-After` meanwhile); without
//! one the API only listens on loopback. `X-Dspex-Timeout-Ms` sets a request's deadline
//! (capped by `max_timeout_ms`); `X-Request-Id` and `traceparent` are taken
//! as the request's trace id and echoed. Past `max_in_flight` requests, or
//! past `max_in_flight` requests are shed with `429`, and when a pool's
//! queue is full with `503`, both with `Retry-After`.
//!
//! ```no_run
//! # async fn demo() -> dspex::Result<()> {
//! use dspex::http::HttpApi;
//! use dspex::{HttpConfig, ProgramSpec, Runtime};
//!
//! let rt = Runtime::builder().native_only().start().await?;
//! let server = HttpApi::new(&rt)
//!     .program("qa", ProgramSpec::predict("question -> answer"))
//!     .config(HttpConfig { addr: "127.0.0.1:0".into(), ..HttpConfig::default() })
//!     .serve()
//!     .await?;
//! println!("POST http://{}/v1/programs/qa/run", server.local_addr());
//! # Ok(()) }
//! ```

mod api;
mod openapi;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dspex_actors::token;

use crate::{Error, ErrorKind, HttpConfig, Pipeline, Program, Result, Runtime, RuntimeConfig};

pub use api::{CreateSession, PipelineRunRequest, Readiness, RunRequest, Served, SessionView};

/// Renders the Prometheus text exposition for `GET /metrics`.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// What to serve and how: built from a runtime, then [`serve`](HttpApi::serve)d
/// on its own listener or turned into an [`axum::Router`] to mount in an
/// application's own server.
pub struct HttpApi {
    rt: Runtime,
    programs: BTreeMap<String, Program>,
    pipelines: BTreeMap<String, Pipeline>,
    config: HttpConfig,
    metrics: Option<MetricsRenderer>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("programs", &self.programs.keys().collect::<Vec<_>>())
            .field("pipelines", &self.pipelines.keys().collect::<Vec<_>>())
            .field("addr", &self.config.addr)
            .finish()
    }
}

impl HttpApi {
    /// Nothing served yet, default settings (`127.0.0.1:8080`, no token).
    pub fn new(rt: &Runtime) -> HttpApi {
        HttpApi {
            rt: rt.clone(),
            programs: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            config: HttpConfig::default(),
            metrics: None,
        }
    }

    /// The programs (`[programs.NAME]`, saved DSPy programs read in),
    /// pipelines (`[pipelines]`) and settings (`[http]`) of a configuration.
    pub fn from_config(rt: &Runtime, config: &RuntimeConfig) -> Result<HttpApi> {
        let mut api = HttpApi::new(rt);
        if let Some(http) = &config.http {
            api.config = http.clone();
        }
        for (name, entry) in &config.programs {
            let spec = entry.load().map_err(|e| prefixed(e, &format!("[programs.{name}]")))?;
            api = api.program(name, spec);
        }
        for (name, path) in &config.pipelines {
            let pipeline = Pipeline::from_file(path).map_err(|e| prefixed(e, &format!("[pipelines] {name}")))?;
            api = api.pipeline(name, pipeline);
        }
        Ok(api)
    }

    /// Serve `program` as `name`.
    pub fn program(mut self, name: &str, program: impl Into<Program>) -> HttpApi {
        self.programs.insert(name.to_string(), program.into());
        self
    }

    /// Serve `pipeline` as `name`.
    pub fn pipeline(mut self, name: &str, pipeline: Pipeline) -> HttpApi {
        self.pipelines.insert(name.to_string(), pipeline);
        self
    }

    /// Listen address, token file, limits.
    pub fn config(mut self, config: HttpConfig) -> HttpApi {
        self.config = config;
        self
    }

    /// Answer `GET /metrics` with what `render` returns (by default, the
    /// runtime's Prometheus registry when it has one).
    pub fn metrics(mut self, render: MetricsRenderer) -> HttpApi {
        self.metrics = Some(render);
        self
    }

    /// The OpenAPI 3.1 document of this API (what `GET /openapi.json`
    /// answers): its endpoints with the served programs' and pipelines'
    /// names, every schema generated from the type that is (de)serialized,
    /// and bearer auth when `auth`.
    pub fn openapi(&self, auth: bool) -> serde_json::Value {
        let programs: Vec<(&str, serde_json::Value)> =
            self.programs.iter().map(|(k, p)| (k.as_str(), api::inputs_schema(p))).collect();
        let pipelines: Vec<(&str, serde_json::Value)> =
            self.pipelines.iter().map(|(k, p)| (k.as_str(), api::pipeline_inputs_schema(p))).collect();
        openapi::document(&programs, &pipelines, auth)
    }

    /// The token requests need: read from (or created in) the configured
    /// token file; `None` without one.
    fn token(&self) -> Result<Option<String>> {
        self.config.token_file.as_deref().map(token::read_or_create).transpose()
    }

    /// The API as a router, and the token it checks, to mount in an
    /// application's own axum server.
    pub fn into_router(self) -> Result<(axum::Router, Option<String>)> {
        let names = self.programs.keys().map(|n| ("program", n)).chain(self.pipelines.keys().map(|n| ("pipeline", n)));
        for (what, name) in names {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{what} name {name:?} cannot be a URL path segment: use letters, digits, `-`, `_` or `.`"),
                ));
            }
        }
        let token = self.token()?;
        let document = self.openapi(token.is_some());
        let router = api::router(api::State {
            rt: self.rt,
            programs: self.programs.into_iter().map(|(k, p)| (k, api::ServedProgram::new(p))).collect(),
            pipelines: self.pipelines,
            token: token.clone(),
            auth_throttle: dspex_actors::token::AuthThrottle::new(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(self.config.max_in_flight.max(1))),
            max_timeout: Duration::from_millis(self.config.max_timeout_ms.max(1)),
            max_body: self.config.max_body_bytes,
            metrics: self.metrics,
            document,
        });
        Ok((router, token))
    }

    /// Listen on the configured address and serve until
    /// [`HttpServer::stop`] (or the server is dropped). Without a token the
    /// address must be a loopback one.
    pub async fn serve(self) -> Result<HttpServer> {
        let addr: SocketAddr = self.config.addr.parse().map_err(|_| {
            Error::new(ErrorKind::Config, format!("[http] addr {:?} is not an IP address and port", self.config.addr))
        })?;
        if self.config.token_file.is_none() && !addr.ip().is_loopback() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("the HTTP API would listen on {addr} without a token: set [http] token_file, or listen on a loopback address"),
            ));
        }
        let (router, token) = self.into_router()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::new(ErrorKind::Io, format!("listener address: {e}")))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                });
            if let Err(e) = serve.await {
                tracing::error!(target: "dspex::http", "HTTP server failed: {e}");
            }
        });
        Ok(HttpServer { addr: local, token, stop: Some(stop), task })
    }
}

fn prefixed(e: Error, what: &str) -> Error {
    let message = format!("{what}: {}", e.message());
    Error::new(e.kind(), message)
}

/// A running HTTP API.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    token: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token requests need, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Stop taking connections and let the requests in flight finish (up
    /// to `grace`; then they are dropped, which cancels them).
    pub async fn stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
