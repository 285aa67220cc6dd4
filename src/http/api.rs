//! Handlers, wire types and the edge every request passes (request id,
//! auth, shedding, deadline).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::Instrument;

use dspex_core::{DspyType, Field, FieldType};
use dspex_native::validate::{matches_type, values_schema};
use serde_json::json;

use super::openapi;
use super::MetricsRenderer;
use crate::{
    Error, ErrorKind, Map, Pipeline, Program, ProgramInfo, RequestOptions, RoutePreference, Runtime, SessionOptions,
    SessionState, StreamEvent, Value,
};

/// What every handler shares.
pub(crate) struct State {
    pub(crate) rt: Runtime,
    pub(crate) programs: BTreeMap<String, ServedProgram>,
    pub(crate) pipelines: BTreeMap<String, Pipeline>,
    pub(crate) token: Option<String>,
    /// Wrong bearer tokens, per client address.
    pub(crate) auth_throttle: dspex_actors::token::AuthThrottle,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) max_timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) metrics: Option<MetricsRenderer>,
    /// The OpenAPI document of this API (its programs, its auth).
    pub(crate) document: Value,
}

pub(crate) type Shared = Arc<State>;

impl State {
    /// A request's options: the edge's trace id and deadline applied, and
    /// a Python route refused up front by a runtime that has no Python.
    fn options(&self, edge: &Edge, options: RequestOptions) -> ApiResult<RequestOptions> {
        if options.route == Some(RoutePreference::Python) && self.rt.pools().is_empty() {
            let msg = "this server runs programs natively only (it has no Python pools): drop `options.route`";
            return Err(Error::new(ErrorKind::Unsupported, msg).into());
        }
        Ok(edge.apply(options, self.max_timeout))
    }
}

/// The header that sets a request's deadline, in milliseconds from now.
pub(crate) const TIMEOUT_HEADER: &str = "x-dspex-timeout-ms";
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

// ------------------------------------------------------------ wire types

/// A program run: the inputs and, optionally, request options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The program's input fields.
    pub inputs: Map,
    /// Route, pool, cache and LM call arguments for this request (the
    /// deadline comes from the `X-Dspex-Timeout-Ms` header).
    #[serde(default, deserialize_with = "object")]
    pub options: RequestOptions,
}

/// A pipeline run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineRunRequest {
    /// The pipeline's inputs.
    pub inputs: Map,
}

/// A new session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Its id (one is made up otherwise): letters, digits, `-`, `_`, `.`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub id: Option<String>,
    /// Python pool for its work.
    #[serde(default)]
    pub pool: Option<String>,
    /// Idle time after which it expires, in milliseconds.
    #[serde(default, with = "dspex_core::wire::opt_whole")]
    #[schemars(with = "Option<u64>")]
    pub ttl_ms: Option<u64>,
    /// Turns of history kept per program.
    #[serde(default, with = "dspex_core::wire::opt_whole_usize")]
    #[schemars(with = "Option<usize>")]
    pub history_turns: Option<usize>,
    /// The tenant whose LM budget its requests count against.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionView {
    /// Id.
    pub id: String,
    /// Programs defined in it.
    pub programs: Vec<String>,
    /// Turns of history so far, per program.
    pub turns: BTreeMap<String, usize>,
    /// Its variables.
    pub variables: Map,
    /// The pool its Python work goes to.
    pub pool: String,
    /// Idle time after which it expires, in milliseconds.
    pub ttl_ms: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Requests applied.
    pub requests: u64,
}

impl From<SessionState> for SessionView {
    fn from(s: SessionState) -> SessionView {
        SessionView {
            turns: s.history.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
            programs: s.programs.into_keys().collect(),
            id: s.id,
            variables: s.variables,
            pool: s.pool,
            ttl_ms: s.ttl_ms,
            created_ms: s.created_ms,
            requests: s.requests,
        }
    }
}

/// What is served.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Served {
    /// Programs by name.
    pub programs: BTreeMap<String, ProgramInfo>,
    /// Pipeline names.
    pub pipelines: Vec<String>,
}

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Readiness {
    /// Every pool has a worker ready.
    pub ready: bool,
    /// Per pool: `ready/size`.
    pub pools: BTreeMap<String, String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    pub(crate) status: String,
    /// Time since the runtime started, in milliseconds.
    pub(crate) uptime_ms: u64,
}

/// One `chunk` event of a stream.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Chunk {
    /// The output field the text belongs to, when known.
    pub(crate) field: Option<String>,
    /// The text.
    pub(crate) text: String,
}

// ------------------------------------------------------------ errors

/// A failed reply: a status and the error body.
pub(crate) struct ApiError {
    status: StatusCode,
    error: Error,
}

/// The one place a classified error becomes an HTTP status.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Parse | ErrorKind::Lm | ErrorKind::Transport => StatusCode::BAD_GATEWAY,
        ErrorKind::Overloaded | ErrorKind::WorkerCrashed => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        // The client went away; nobody reads this (nginx's "client closed request").
        ErrorKind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError { status: status_of(e.kind()), error: e }
    }
}

impl ApiError {
    fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { status, error: Error::new(kind, message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.error.reply())).into_response();
        if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// A struct from a JSON object only (serde would also take an array of
/// its fields in order, which no client means).
fn object<'de, D: serde::Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> std::result::Result<T, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        v @ Value::Object(_) => T::deserialize(v).map_err(D::Error::custom),
        other => Err(D::Error::custom(format!("expected an object, got {other}"))),
    }
}

/// A JSON body, refused with the API's own error body (`400`, or `413`
/// past the size limit) instead of axum's plain-text rejections.
pub(crate) struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Body<T>> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            let status = r.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, ErrorKind::InvalidRequest, "the request body is over the size limit")
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, r.body_text())
            }
        })?;
        let bad =
            |e: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, format!("request body: {e}"));
        match serde_json::from_slice::<Value>(&bytes).map_err(|e| bad(e.to_string()))? {
            v @ Value::Object(_) => serde_json::from_value(v).map(Body).map_err(|e| bad(e.to_string())),
            _ => Err(bad("expected a JSON object".into())),
        }
    }
}

// ------------------------------------------------------------ the edge

/// What the edge settled for one request.
#[derive(Clone)]
pub(crate) struct Edge {
    trace_id: String,
    timeout: Option<Duration>,
}

impl Edge {
    /// `options` with this request's trace id and deadline (a client's own
    /// timeout is capped like the header's).
    fn apply(&self, mut options: RequestOptions, max: Duration) -> RequestOptions {
        options.trace_id = Some(self.trace_id.clone());
        options.timeout = match (self.timeout, options.timeout) {
            (Some(t), _) => Some(t),
            (None, Some(t)) => Some(t.min(max)),
            (None, None) => None,
        };
        options
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn traceparent_trace(value: &str) -> Option<&str> {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [v, trace, parent, flags]
            if hex(v, 2) && hex(trace, 32) && hex(parent, 16) && hex(flags, 2) && trace.bytes().any(|b| b != b'0') =>
        {
            Some(trace)
        }
        _ => None,
    }
}

/// A client's request id: absent, or printable ASCII of at most 128 bytes.
fn request_id(headers: &HeaderMap) -> std::result::Result<Option<String>, ApiError> {
    let Some(v) = headers.get(&REQUEST_ID) else { return Ok(None) };
    match v.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(v.to_string())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
            "X-Request-Id must be 1 to 128 printable ASCII characters without spaces",
        )),
    }
}

/// `X-Dspex-Timeout-Ms`: absent, or a whole number of milliseconds above 0
/// (capped at `max`).
fn timeout(headers: &HeaderMap, max: Duration) -> std::result::Result<Option<Duration>, ApiError> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else { return Ok(None) };
    let text = v.to_str().unwrap_or("").trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.bytes().all(|b| b == b'0') {
        let msg = format!("{TIMEOUT_HEADER} must be a whole number of milliseconds above 0");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, msg));
    }
    // Longer than u64 milliseconds: the cap applies anyway.
    let ms = text.parse::<u64>().unwrap_or(u64::MAX);
    Ok(Some(Duration::from_millis(ms).min(max)))
}

/// The endpoint template a path is served by (`/v1/programs/{name}/run`),
/// for the edge span's name: low-cardinality, unlike the path itself.
fn route_of(path: &str) -> &'static str {
    static TEMPLATES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        let mut t: Vec<&'static str> = openapi::endpoints().iter().map(|e| e.path).collect();
        t.dedup();
        t
    });
    let matches = |template: &str| {
        let (mut t, mut p) = (template.split('/'), path.split('/'));
        loop {
            match (t.next(), p.next()) {
                (None, None) => return true,
                (Some(ts), Some(ps)) if ts == ps || (ts.starts_with('{') && !ps.is_empty()) => {}
                _ => return false,
            }
        }
    };
    templates.iter().copied().find(|t| matches(t)).unwrap_or("unmatched")
}

fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Request id and trace context, auth, shedding, deadline — in that order,
/// so even a refused request has its id echoed.
pub(crate) async fn edge(
    axum::extract::State(state): axum::extract::State<Shared>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let traceparent = headers.get(&TRACEPARENT).cloned();
    let trace = traceparent.as_ref().and_then(|v| v.to_str().ok()).and_then(traceparent_trace).map(String::from);
    let id = request_id(headers);
    let trace_id = id.as_ref().ok().cloned().flatten().or(trace).unwrap_or_else(crate::new_trace_id);
    let echo = |mut response: Response| {
        if let Ok(v) = HeaderValue::from_str(&trace_id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
        if let Some(tp) = &traceparent {
            response.headers_mut().insert(TRACEPARENT, tp.clone());
        }
        response
    };

    if let Err(e) = id {
        return echo(e.into_response());
    }
    if let Some(token) = state.token.as_deref().filter(|_| !is_public(req.uri().path())) {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // Wrong tokens are throttled per client address (behind a proxy,
        // the proxy's: it should authenticate itself).
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "-".to_string(), |c| c.0.ip().to_string());
        if given.is_some() {
            if let Err(wait) = state.auth_throttle.check(&peer) {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                let msg = format!("too many wrong bearer tokens from {peer}: try again in {secs} s");
                let mut response =
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited, msg).into_response();
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return echo(response);
            }
        }
        if !given.is_some_and(|g| dspex_actors::token::matches(g.trim(), token)) {
            let why = if given.is_some() {
                tracing::warn!(target: "dspex::http", peer = %peer, "wrong bearer token");
                state.auth_throttle.failed(&peer);
                "the bearer token is wrong"
            } else {
                "this API needs Authorization: Bearer <token>"
            };
            return echo(ApiError::new(StatusCode::UNAUTHORIZED, ErrorKind::InvalidRequest, why).into_response());
        }
        if given.is_some() {
            state.auth_throttle.succeeded(&peer);
        }
    }
    let timeout = match timeout(headers, state.max_timeout) {
        Ok(t) => t,
        Err(e) => return echo(e.into_response()),
    };
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        // The API's own admission limit: 429. A pool whose queue is full
        // answers `overloaded` from inside, and that is a 503.
        let msg = "too many requests in flight: try again shortly";
        return echo(ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorKind::Overloaded, msg).into_response());
    };
    req.extensions_mut().insert(Edge { trace_id: trace_id.clone(), timeout });
    let span = tracing::debug_span!(
        "dspex.http",
        "otel.name" = %format_args!("{} {}", req.method(), route_of(req.uri().path())),
        "http.route" = route_of(req.uri().path()),
        "otel.kind" = "server",
        "http.request.method" = %req.method(),
        "url.path" = req.uri().path(),
        "dspex.trace" = %trace_id,
        "http.response.status_code" = tracing::field::Empty,
    );
    #[cfg(feature = "otel")]
    crate::otel::adopt_parent(&span, traceparent.as_ref().and_then(|v| v.to_str().ok()));
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    echo(response)
}

// ------------------------------------------------------------ inputs

/// The input fields of a program, when the native engine reads its
/// signature (Python-only modules: unknown, nothing is checked).
fn input_fields(program: &Program) -> Option<&[Field]> {
    program.native().map(|n| n.predictor().signature().inputs())
}

/// A field a request must send: no default, `None` not allowed, and not
/// the conversation history (a session keeps that).
fn required(f: &Field) -> bool {
    f.default().is_none() && !f.ty().allows_none() && f.ty() != &FieldType::Dspy(DspyType::History)
}

/// The schema of a program's `inputs`: what [`check_inputs`] takes.
pub(crate) fn inputs_schema(program: &Program) -> Value {
    let Some(fields) = input_fields(program) else { return json!({"type": "object"}) };
    let properties: serde_json::Map<String, Value> = fields
        .iter()
        .map(|f| {
            let schema = match f.type_declared().then(|| values_schema(f.ty())).flatten() {
                Some(s) => json!({"anyOf": [s, {"type": "null"}]}),
                None => json!({}),
            };
            (f.name().to_string(), schema)
        })
        .collect();
    let required: Vec<&str> = fields.iter().filter(|f| required(f)).map(Field::name).collect();
    json!({"type": "object", "properties": properties, "required": required})
}

/// The schema of a pipeline's `inputs`: the names it declares.
pub(crate) fn pipeline_inputs_schema(pipeline: &Pipeline) -> Value {
    json!({"type": "object", "required": pipeline.spec().inputs})
}

/// A served program and, per input field, whether its type is checked
/// (declared, and modelled by [`values_schema`]) — settled once, not per
/// request.
pub(crate) struct ServedProgram {
    pub(crate) program: Program,
    checked: Vec<bool>,
}

impl ServedProgram {
    pub(crate) fn new(program: Program) -> ServedProgram {
        let checked = input_fields(&program)
            .unwrap_or(&[])
            .iter()
            .map(|f| f.type_declared() && values_schema(f.ty()).is_some())
            .collect();
        ServedProgram { program, checked }
    }

    /// Every required input present, every checked one of its type — or a
    /// `validation` error naming the field (`422`).
    fn check_inputs(&self, inputs: &Map) -> ApiResult<()> {
        let fields = input_fields(&self.program).unwrap_or(&[]);
        for (f, checked) in fields.iter().zip(&self.checked) {
            match inputs.get(f.name()) {
                None if required(f) => {
                    let msg = format!("missing input `{}` ({})", f.name(), f.ty().annotation_name());
                    return Err(Error::new(ErrorKind::Validation, msg).with_field(f.name()).into());
                }
                Some(v) if *checked && !v.is_null() && !matches_type(f.ty(), v) => {
                    let msg = format!("input `{}` expects {}", f.name(), f.ty().annotation_name());
                    return Err(Error::new(ErrorKind::Validation, msg).with_field(f.name()).into());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------ handlers

type St = axum::extract::State<Shared>;

impl State {
    /// A program run's parts: the served program, its checked inputs and
    /// the request's options.
    fn prepare(&self, edge: &Edge, name: &str, req: RunRequest) -> ApiResult<(&Program, Map, RequestOptions)> {
        let served = self.programs.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.programs.keys().map(String::as_str).collect();
            ApiError::from(Error::new(
                ErrorKind::NotFound,
                format!("no program {name:?} is served (served: {})", known.join(", ")),
            ))
        })?;
        served.check_inputs(&req.inputs)?;
        Ok((&served.program, req.inputs, self.options(edge, req.options)?))
    }
}

pub(crate) async fn run_program(
    axum::extract::State(state): St,
    Extension(edge): Extension<Edge>,
    Path(name): Path<String>,
    Body(req): Body<RunRequest>,
) -> ApiResult<Response> {
    let (program, inputs, opts) = state.prepare(&edge, &name, req)?;
    let out = state.rt.run(program, inputs, opts).await?;
    Ok(Json(out).into_response())
}

pub(crate) async fn stream_program(
    axum::extract::State(state): St,
    Extension(edge): Extension<Edge>,
    Path(name): Path<String>,
    Body(req): Body<RunRequest>,
) -> ApiResult<Response> {
    let (program, inputs, opts) = state.prepare(&edge, &name, req)?;
    let stream = state.rt.stream(program, inputs, opts).await?;
    // Chunks, then `done` with the prediction; a failure mid-stream is an
    // `error` event (the status line has gone out already). Nothing follows
    // `done` or `error`.
    let events = stream
        .scan(false, |ended, item| {
            if *ended {
                return futures_util::future::ready(None);
            }
            let event = match item {
                Ok(StreamEvent::Chunk { field, text }) => {
                    SseEvent::default().event("chunk").json_data(Chunk { field, text })
                }
                Ok(StreamEvent::Done(out)) => {
                    *ended = true;
                    SseEvent::default().event("done").json_data(&*out)
                }
                Err(e) => {
                    *ended = true;
                    SseEvent::default().event("error").json_data(e.reply())
                }
            };
            futures_util::future::ready(Some(event))
        })
        .map(|e| e.map_err(|e| std::io::Error::other(e.to_string())));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

pub(crate) async fn run_pipeline(
    axum::extract::State(state): St,
    Extension(_edge): Extension<Edge>,
    Path(name): Path<String>,
    Body(req): Body<PipelineRunRequest>,
) -> ApiResult<Response> {
    let pipeline = state.pipelines.get(&name).ok_or_else(|| {
        let known: Vec<&str> = state.pipelines.keys().map(String::as_str).collect();
        Error::new(ErrorKind::NotFound, format!("no pipeline {name:?} is served (served: {})", known.join(", ")))
    })?;
    let result = state.rt.run_pipeline(pipeline, req.inputs).await?;
    Ok(Json(result).into_response())
}

pub(crate) async fn create_session(
    axum::extract::State(state): St,
    Body(req): Body<CreateSession>,
) -> ApiResult<Response> {
    let opts = SessionOptions {
        id: req.id,
        pool: req.pool,
        ttl: req.ttl_ms.map(Duration::from_millis),
        history_turns: req.history_turns,
        tenant: req.tenant,
    };
    let session = state.rt.sessions().create(opts).await?;
    for (name, served) in &state.programs {
        if let Err(e) = session.define(name, served.program.spec().clone()).await {
            let _ = session.close().await;
            return Err(e.into());
        }
    }
    let view = SessionView::from(session.state().await?);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub(crate) async fn session_run(
    axum::extract::State(state): St,
    Extension(edge): Extension<Edge>,
    Path((id, name)): Path<(String, String)>,
    Body(req): Body<RunRequest>,
) -> ApiResult<Response> {
    let (_, inputs, opts) = state.prepare(&edge, &name, req)?;
    let session = state.rt.sessions().open(&id).await?;
    let out = session.run_with(&name, inputs, opts).await?;
    Ok(Json(out).into_response())
}

pub(crate) async fn get_session(axum::extract::State(state): St, Path(id): Path<String>) -> ApiResult<Response> {
    let session = state.rt.sessions().open(&id).await?;
    Ok(Json(SessionView::from(session.state().await?)).into_response())
}

pub(crate) async fn delete_session(axum::extract::State(state): St, Path(id): Path<String>) -> ApiResult<Response> {
    let session = state.rt.sessions().open(&id).await?;
    session.close().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn served(axum::extract::State(state): St) -> Response {
    let programs = state.programs.iter().map(|(k, p)| (k.clone(), p.program.inspect())).collect();
    Json(Served { programs, pipelines: state.pipelines.keys().cloned().collect() }).into_response()
}

pub(crate) async fn healthz(axum::extract::State(state): St) -> Response {
    let uptime_ms = state.rt.uptime().as_millis().min(u64::MAX as u128) as u64;
    Json(Health { status: "ok".into(), uptime_ms }).into_response()
}

pub(crate) async fn readyz(axum::extract::State(state): St) -> Response {
    let stats = state.rt.pool_stats();
    let ready = stats.iter().all(|p| p.ready > 0);
    let pools = stats.iter().map(|p| (p.name.clone(), format!("{}/{}", p.ready, p.size))).collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut response = (status, Json(Readiness { ready, pools })).into_response();
    if !ready {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

pub(crate) async fn metrics(axum::extract::State(state): St) -> ApiResult<Response> {
    let text = match &state.metrics {
        Some(render) => Some(render()),
        None => runtime_metrics(&state.rt),
    };
    let text = text.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, "metrics are not exported by this server")
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The runtime's own Prometheus registry, when it was built with one.
#[cfg(feature = "prometheus")]
fn runtime_metrics(rt: &Runtime) -> Option<String> {
    rt.metrics_text()
}

#[cfg(not(feature = "prometheus"))]
fn runtime_metrics(_: &Runtime) -> Option<String> {
    None
}

pub(crate) async fn openapi_json(axum::extract::State(state): St) -> Response {
    Json(state.document.clone()).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no such endpoint (see /openapi.json)")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::InvalidRequest,
        "method not allowed here (see /openapi.json)",
    )
}

/// The router: every endpoint of [`openapi::endpoints`], behind the edge.
pub(crate) fn router(state: State) -> axum::Router {
    let shared: Shared = Arc::new(state);
    // One route per path, its methods merged.
    let mut routes: BTreeMap<&str, axum::routing::MethodRouter<Shared>> = BTreeMap::new();
    for endpoint in openapi::endpoints() {
        let method = (endpoint.handler)();
        let merged = match routes.remove(endpoint.path) {
            Some(other) => other.merge(method),
            None => method,
        };
        routes.insert(endpoint.path, merged);
    }
    let router = routes.into_iter().fold(axum::Router::new(), |r, (path, method)| r.route(path, method));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(shared.max_body))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), edge))
        .with_state(shared)
}
