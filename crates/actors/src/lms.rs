//! Which LM a program's request uses, on each route.
//!
//! The native route needs a client ([`LanguageModel`]); the Python route
//! needs a description a worker can build a `dspy.LM` from. A program may
//! name its own LM; otherwise the runtime's applies. Clients for programs'
//! own LMs are built once and kept (a small LRU), so a request never pays
//! for building an HTTP client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_bridge::{LmAnswer, LmBody, LmCall, LmGateway};
use dspex_core::{LmConfig, Map, Result, Value};
use dspex_native::lm::{
    Gateway, HttpCall, LanguageModel, LmEvent, LmRequest, LmResponse, LmScope, LmStream, OpenAiClient, ReplyBody,
};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::program::Program;

/// Clients kept for programs that name their own LM.
const KEPT_CLIENTS: usize = 32;

/// The runtime's LMs and the clients built for programs' own.
pub(crate) struct Lms {
    /// Every native client sends through it, as the pools' workers do.
    gateway: Gateway,
    /// The runtime's LM settings (also the cache key's LM identity).
    config: Option<LmConfig>,
    /// The native client for programs that name no LM.
    native: Option<Arc<dyn LanguageModel>>,
    /// Clients for programs' own LMs, most recent last.
    clients: Mutex<Vec<(LmConfig, Arc<dyn LanguageModel>)>>,
    /// What Python workers get for programs that name no LM.
    python: Option<Value>,
}

impl std::fmt::Debug for Lms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lms").field("model", &self.config.as_ref().map(|c| &c.model)).finish()
    }
}

/// The LM as Python workers describe it (its API key in clear: the worker
/// sends it). An API key only known here by its fingerprint sends none;
/// [`Lms::python_for`] refuses such a program.
pub fn python_lm_spec(lm: &LmConfig) -> Value {
    let mut m = Map::new();
    m.insert("model".into(), lm.model.clone().into());
    if let Some(u) = &lm.base_url {
        m.insert("base_url".into(), u.clone().into());
    }
    if let Some(k) = lm.api_key.as_ref().filter(|k| k.resolved()) {
        m.insert("api_key".into(), k.expose().into());
    }
    if let Some(t) = lm.temperature {
        m.insert("temperature".into(), t.into());
    }
    if let Some(t) = lm.max_tokens {
        m.insert("max_tokens".into(), t.into());
    }
    m.insert("num_retries".into(), lm.max_retries.into());
    Value::Object(m)
}

impl Lms {
    /// The runtime's LM `config`; `native` and `python` override what each
    /// route gets for programs that name no LM.
    pub(crate) fn new(
        config: Option<LmConfig>,
        native: Option<Arc<dyn LanguageModel>>,
        python: Option<Value>,
        gateway: Gateway,
    ) -> dspex_core::Result<Lms> {
        let native = match (native, &config) {
            (Some(lm), _) => Some(lm),
            (None, Some(cfg)) => {
                Some(Arc::new(OpenAiClient::new(cfg)?.with_gateway(gateway.clone())) as Arc<dyn LanguageModel>)
            }
            (None, None) => None,
        };
        let python = python.or_else(|| config.as_ref().map(python_lm_spec));
        Ok(Lms { gateway, config, native, clients: Mutex::new(Vec::new()), python })
    }

    /// The gateway every LM call goes through.
    pub(crate) fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The native client for `program`, or why there is none.
    pub(crate) fn native_for(&self, program: &Program) -> Result<Arc<dyn LanguageModel>, String> {
        let Some(cfg) = &program.spec().lm else {
            return self.native.clone().ok_or_else(|| "no OpenAI-compatible LM is configured".to_string());
        };
        let mut clients = self.clients.lock();
        if let Some(i) = clients.iter().position(|(c, _)| c == cfg) {
            let kept = clients.remove(i);
            let lm = kept.1.clone();
            clients.push(kept);
            return Ok(lm);
        }
        let client = OpenAiClient::new(cfg).map_err(|e| e.to_string())?.with_gateway(self.gateway.clone());
        let lm: Arc<dyn LanguageModel> = Arc::new(client);
        if clients.len() >= KEPT_CLIENTS {
            clients.remove(0);
        }
        clients.push((cfg.clone(), lm.clone()));
        Ok(lm)
    }

    /// What a Python worker gets as `lm` for `program`.
    pub(crate) fn python_for(&self, program: &Program) -> dspex_core::Result<Value> {
        match &program.spec().lm {
            Some(cfg) => {
                if let Some(key) = &cfg.api_key {
                    key.require("the program's LM API key")?;
                }
                Ok(python_lm_spec(cfg))
            }
            None => Ok(self.python.clone().unwrap_or(Value::Null)),
        }
    }

    /// The LM's part of a result-cache key for `program`: its sampling
    /// settings (to judge determinism) and its identity.
    pub(crate) fn cache_identity(&self, program: &Program) -> (Map, Value) {
        let mut params = Map::new();
        if let Some(t) = program.spec().lm.as_ref().or(self.config.as_ref()).and_then(|l| l.temperature) {
            params.insert("temperature".into(), t.into());
        }
        if let Some(Value::Object(py)) = &self.python {
            if let Some(t) = py.get("temperature") {
                params.insert("temperature".into(), t.clone());
            }
        }
        let identity = match (&program.spec().lm, &self.config) {
            (Some(l), _) | (None, Some(l)) => {
                Value::String(format!("{}@{}", l.model, l.base_url.as_deref().unwrap_or("")))
            }
            _ => self.python.clone().unwrap_or(Value::Null),
        };
        (params, identity)
    }
}

/// The gateway as the pools' workers reach it: a worker's DSPy HTTP
/// request, with its request's tenant and meter, through the same policies
/// as the native route's calls.
#[derive(Debug, Clone)]
pub(crate) struct WorkerGateway(pub(crate) Gateway);

impl LmGateway for WorkerGateway {
    fn call(&self, call: LmCall) -> BoxFuture<'static, Result<LmAnswer>> {
        let gateway = self.0.clone();
        Box::pin(async move {
            let scope = call.scope.as_ref().and_then(|s| s.downcast_ref::<LmScope>()).cloned().unwrap_or_default();
            let mut http = HttpCall::new(call.url, call.headers, call.body);
            http.deadline = call.deadline;
            http.max_retries = call.max_retries;
            http.tenant = scope.tenant;
            http.meter = scope.meter;
            http.cache = !scope.no_cache;
            let reply = gateway.send(http).await.map_err(|e| e.with_worker(call.worker))?;
            let body = match reply.body {
                ReplyBody::Full(b) => LmBody::Whole(b),
                ReplyBody::Stream(s) => LmBody::Stream(s),
            };
            Ok(LmAnswer { status: reply.status, headers: reply.headers, body })
        })
    }
}

/// An LM that adds up how long its calls take, so a native request's own
/// cost (its time minus the model's) can be told apart. A stream's time runs
/// from the call to its last event.
pub(crate) struct TimedLm {
    inner: Arc<dyn LanguageModel>,
    spent_us: Arc<AtomicU64>,
}

impl TimedLm {
    /// Time the calls made through `inner`.
    pub(crate) fn new(inner: Arc<dyn LanguageModel>) -> TimedLm {
        TimedLm { inner, spent_us: Arc::new(AtomicU64::new(0)) }
    }

    /// A reader of the time spent so far, that outlives the LM.
    pub(crate) fn clock(&self) -> LmClock {
        LmClock(self.spent_us.clone())
    }
}

/// The time a [`TimedLm`] has spent in its model.
#[derive(Clone)]
pub(crate) struct LmClock(Arc<AtomicU64>);

impl LmClock {
    /// Time spent in the model so far.
    pub(crate) fn spent(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

fn add_since(spent: &AtomicU64, since: Instant) {
    spent.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// One native LM call (the HTTP client sends the span as `traceparent`).
fn lm_span(request: &LmRequest) -> tracing::Span {
    tracing::debug_span!("dspex.lm.call", messages = request.messages.len(), "otel.kind" = "client")
}

impl LanguageModel for TimedLm {
    fn complete(&self, request: LmRequest) -> BoxFuture<'_, Result<LmResponse>> {
        let span = lm_span(&request);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let t = Instant::now();
                let response = self.inner.complete(request).await;
                add_since(&self.spent_us, t);
                response
            },
            span,
        ))
    }

    fn stream(&self, request: LmRequest) -> BoxFuture<'_, Result<LmStream>> {
        // The span covers the request until the LM starts answering.
        let span = lm_span(&request);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let t = Instant::now();
                let stream = match self.inner.stream(request).await {
                    Ok(s) => s,
                    Err(e) => {
                        add_since(&self.spent_us, t);
                        return Err(e);
                    }
                };
                let spent = self.spent_us.clone();
                let timed = stream.inspect(move |event| {
                    if matches!(event, Ok(LmEvent::Done(_)) | Err(_)) {
                        add_since(&spent, t);
                    }
                });
                Ok(Box::pin(timed) as LmStream)
            },
            span,
        ))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
