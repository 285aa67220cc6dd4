//! An OpenAI-compatible chat-completions client.
//!
//! TLS: with the default `tls` feature, HTTPS goes through rustls with the
//! *ring* provider and Mozilla's root certificates compiled in, so the build
//! needs no system certificate store and no C toolchain beyond what ring
//! uses; without it, only `http://` endpoints (local servers) work.

use std::time::Duration;

use dspex_core::{Error, ErrorKind, LmConfig, Map, Result, Usage, Value};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tracing::warn;

use super::gateway::{Gateway, HttpCall, HttpReply, ReplyBody};
use super::sse::SseDecoder;
use super::{LanguageModel, LmEvent, LmRequest, LmResponse, LmStream};

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The body field that caps a completion's length. DSPy 3.4.1 sends
/// `max_completion_tokens` for every `openai/` chat model (its `openai`
/// dialect), reasoning models or not; OpenAI takes it for all chat models
/// and OpenAI-compatible servers (llama.cpp, vLLM, Ollama) accept it too.
/// A caller's `max_tokens` is renamed to it, so the two routes send one
/// request shape.
const MAX_TOKENS_FIELD: &str = "max_completion_tokens";

/// A client for `POST {base_url}/chat/completions`.
///
/// Its calls go through a [`Gateway`]: its own (no limits; retries of 408,
/// 429, 5xx and transport failures with back-off and jitter, honouring
/// `Retry-After`; never past the request's deadline), or the runtime's,
/// shared with the Python workers' DSPy ([`OpenAiClient::with_gateway`]).
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    gateway: Gateway,
    url: String,
    model: String,
    api_key: Option<String>,
    defaults: Map,
    max_retries: u32,
    attempt_timeout: Option<Duration>,
}

fn status_error(status: u16, body: &str) -> Error {
    let retryable = status == 408 || status == 429 || status >= 500;
    let snippet: String = body.chars().take(500).collect();
    Error::new(ErrorKind::Lm, format!("LM service answered {status}: {snippet}")).with_retryable(retryable)
}

fn parse_usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    if u.is_null() {
        return None;
    }
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
        total_tokens: n("total_tokens"),
    })
}

fn parse_response(body: &str) -> Result<LmResponse> {
    let v: Value = serde_json::from_str(body).map_err(|e| {
        Error::new(
            ErrorKind::Lm,
            format!("LM service returned invalid JSON ({e}): {}", body.chars().take(200).collect::<String>()),
        )
    })?;
    let choices = v.get("choices").and_then(Value::as_array).ok_or_else(|| {
        Error::new(
            ErrorKind::Lm,
            format!("LM response has no `choices`: {}", body.chars().take(200).collect::<String>()),
        )
    })?;
    let mut outputs = vec![None; choices.len()];
    let mut finish_reasons = vec![None; choices.len()];
    for (pos, c) in choices.iter().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).map_or(pos, |i| i as usize);
        let text = c.pointer("/message/content").and_then(Value::as_str).map(str::to_string);
        if index < outputs.len() {
            outputs[index] = text;
            finish_reasons[index] = finish_reason(c);
        }
    }
    Ok(LmResponse {
        outputs,
        usage: parse_usage(&v),
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        finish_reasons,
    })
}

fn finish_reason(choice: &Value) -> Option<String> {
    choice.get("finish_reason").and_then(Value::as_str).map(str::to_string)
}

/// Log a completion cut by the length limit, in the words DSPy uses for it.
fn warn_if_truncated(response: &LmResponse, model: &str, max_tokens: Option<&Value>) {
    if response.truncated() {
        warn!(
            model,
            max_tokens = %max_tokens.map_or_else(|| "unset".to_string(), |v| v.to_string()),
            completion_tokens = response.usage.map(|u| u.completion_tokens),
            "LM response was truncated; increase max_tokens or inspect history."
        );
    }
}

impl OpenAiClient {
    /// A client for the service and model in `config`.
    pub fn new(config: &LmConfig) -> Result<OpenAiClient> {
        config.check()?;
        let base = config.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("LM base URL must start with http:// or https://, got {base:?}"),
            ));
        }
        if base.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(Error::new(ErrorKind::Config, "HTTPS LM endpoints need dspex-native's `tls` feature"));
        }
        let mut defaults = Map::new();
        if let Some(t) = config.temperature {
            defaults.insert("temperature".into(), Value::from(t));
        }
        if let Some(m) = config.max_tokens {
            defaults.insert(MAX_TOKENS_FIELD.into(), Value::from(m));
        }
        // LiteLLM's provider prefix is not part of the model's name at the service.
        let model = config.model.strip_prefix("openai/").unwrap_or(&config.model).to_string();
        Ok(OpenAiClient {
            gateway: Gateway::passthrough(),
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model,
            api_key: config.api_key.as_ref().map(|k| k.require("the LM's API key").map(str::to_string)).transpose()?,
            defaults,
            max_retries: config.max_retries,
            attempt_timeout: config.timeout(),
        })
    }

    /// Send calls through `gateway` (the runtime's: its limits, budgets,
    /// cache and accounting cover them).
    pub fn with_gateway(mut self, gateway: Gateway) -> OpenAiClient {
        self.gateway = gateway;
        self
    }

    /// Shorten the retry back-off (tests and benchmarks).
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> OpenAiClient {
        self.gateway = self.gateway.with_backoff(base, max);
        self
    }

    fn body(&self, request: &LmRequest, stream: bool) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), Value::String(self.model.clone()));
        body.insert("messages".into(), serde_json::to_value(&request.messages).unwrap_or(Value::Null));
        for (k, v) in self.defaults.iter().chain(request.params.iter()) {
            let k = if k == "max_tokens" { MAX_TOKENS_FIELD } else { k.as_str() };
            body.insert(k.to_string(), v.clone());
        }
        if stream {
            body.insert("stream".into(), Value::Bool(true));
            // Usage arrives in a last chunk only when asked for (as DSPy asks).
            body.entry("stream_options").or_insert_with(|| serde_json::json!({"include_usage": true}));
        }
        Value::Object(body)
    }

    /// Send through the gateway; a 2xx reply, or the classified failure.
    async fn send(&self, request: &LmRequest, body: &Value) -> Result<HttpReply> {
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        if let Some(key) = &self.api_key {
            headers.push(("Authorization".into(), format!("Bearer {key}")));
        }
        if let Some(id) = &request.request_id {
            headers.push(("x-request-id".into(), id.clone()));
        }
        // W3C trace context of the runtime's LM-call span, when traced.
        if let Some(cx) = dspex_core::trace::current().filter(|cx| cx.sampled) {
            headers.push(("traceparent".into(), cx.to_traceparent()));
        }
        let mut call = HttpCall::new(self.url.clone(), headers, body.to_string());
        call.deadline = request.deadline;
        call.tenant = request.scope.tenant.clone();
        call.meter = request.scope.meter.clone();
        call.cache = !request.scope.no_cache;
        call.max_retries = self.max_retries;
        call.attempt_timeout = self.attempt_timeout;
        let reply = self.gateway.send(call).await?;
        if (200..300).contains(&reply.status) {
            return Ok(reply);
        }
        let status = reply.status;
        let text = reply.bytes().await.unwrap_or_default();
        Err(status_error(status, &String::from_utf8_lossy(&text)))
    }

    async fn complete_inner(&self, request: LmRequest) -> Result<LmResponse> {
        let body = self.body(&request, false);
        let reply = self.send(&request, &body).await?;
        let bytes = match request.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), reply.bytes())
                .await
                .map_err(|_| Error::new(ErrorKind::Timeout, "LM response body ran past the deadline"))?,
            None => reply.bytes().await,
        }?;
        let response = parse_response(&String::from_utf8_lossy(&bytes))?;
        warn_if_truncated(&response, &self.model, body.get(MAX_TOKENS_FIELD));
        Ok(response)
    }

    async fn stream_inner(&self, request: LmRequest) -> Result<LmStream> {
        let body = self.body(&request, true);
        let reply = self.send(&request, &body).await?;
        let chunks: futures_util::stream::BoxStream<'static, Result<bytes::Bytes>> = match reply.body {
            ReplyBody::Stream(s) => s,
            // A cached stream comes back whole.
            ReplyBody::Full(b) => futures_util::stream::iter([Ok(b)]).boxed(),
        };
        let deadline = request.deadline;
        let model = self.model.clone();
        let max_tokens = body.get(MAX_TOKENS_FIELD).cloned();
        struct State {
            bytes: futures_util::stream::BoxStream<'static, Result<bytes::Bytes>>,
            decoder: SseDecoder,
            pending: std::collections::VecDeque<Result<LmEvent>>,
            texts: Vec<String>,
            finish_reasons: Vec<Option<String>>,
            usage: Option<Usage>,
            model: Option<String>,
            done: bool,
        }
        let state = State {
            bytes: chunks,
            decoder: SseDecoder::default(),
            pending: Default::default(),
            texts: Vec::new(),
            finish_reasons: Vec::new(),
            usage: None,
            model: None,
            done: false,
        };
        fn absorb(st: &mut State, payload: &str) {
            if payload.trim() == "[DONE]" {
                st.done = true;
                return;
            }
            let Ok(v) = serde_json::from_str::<Value>(payload) else {
                st.pending.push_back(Err(Error::new(ErrorKind::Lm, format!("bad stream event: {payload}"))));
                st.done = true;
                return;
            };
            if let Some(u) = parse_usage(&v) {
                st.usage = Some(u);
            }
            if st.model.is_none() {
                st.model = v.get("model").and_then(Value::as_str).map(str::to_string);
            }
            for (pos, c) in v.get("choices").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let index = c.get("index").and_then(Value::as_u64).map_or(pos, |i| i as usize);
                if st.texts.len() <= index {
                    st.texts.resize(index + 1, String::new());
                    st.finish_reasons.resize(index + 1, None);
                }
                if let Some(reason) = finish_reason(c) {
                    st.finish_reasons[index] = Some(reason);
                }
                if let Some(text) = c.pointer("/delta/content").and_then(Value::as_str) {
                    if text.is_empty() {
                        continue;
                    }
                    st.texts[index].push_str(text);
                    st.pending.push_back(Ok(LmEvent::Delta { index, text: text.to_string() }));
                }
            }
        }
        let stream = futures_util::stream::unfold(Some(state), move |st| {
            let model = model.clone();
            let max_tokens = max_tokens.clone();
            async move {
                let mut st = st?;
                loop {
                    if let Some(ev) = st.pending.pop_front() {
                        return Some((ev, Some(st)));
                    }
                    if st.done {
                        let response = LmResponse {
                            outputs: std::mem::take(&mut st.texts).into_iter().map(Some).collect(),
                            usage: st.usage,
                            model: st.model.take(),
                            finish_reasons: std::mem::take(&mut st.finish_reasons),
                        };
                        warn_if_truncated(&response, &model, max_tokens.as_ref());
                        return Some((Ok(LmEvent::Done(response)), None));
                    }
                    let next = match deadline {
                        Some(d) => match tokio::time::timeout_at(d.into(), st.bytes.next()).await {
                            Ok(n) => n,
                            Err(_) => {
                                return Some((
                                    Err(Error::new(ErrorKind::Timeout, "LM stream ran past the deadline")),
                                    None,
                                ))
                            }
                        },
                        None => st.bytes.next().await,
                    };
                    match next {
                        Some(Ok(chunk)) => {
                            for payload in st.decoder.push(&chunk) {
                                absorb(&mut st, &payload);
                            }
                        }
                        Some(Err(e)) => return Some((Err(e), None)),
                        None => {
                            if let Some(payload) = st.decoder.finish() {
                                absorb(&mut st, &payload);
                            }
                            st.done = true;
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

impl LanguageModel for OpenAiClient {
    fn complete(&self, request: LmRequest) -> BoxFuture<'_, Result<LmResponse>> {
        Box::pin(self.complete_inner(request))
    }

    fn stream(&self, request: LmRequest) -> BoxFuture<'_, Result<LmStream>> {
        Box::pin(self.stream_inner(request))
    }

    fn describe(&self) -> String {
        format!("openai-compatible:{} at {}", self.model, self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let r = parse_response(r#"{"model":"m","choices":[{"index":1,"message":{"content":"b"}},{"index":0,"message":{"content":null}}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#).unwrap();
        assert_eq!(r.outputs, vec![None, Some("b".into())]);
        assert_eq!(r.usage.unwrap().total_tokens, 5);
        assert_eq!(parse_response("{}").unwrap_err().kind(), ErrorKind::Lm);
        assert_eq!(parse_response("nope").unwrap_err().kind(), ErrorKind::Lm);
    }

    #[test]
    fn config_is_checked() {
        assert_eq!(
            OpenAiClient::new(&LmConfig::new("m").with_base_url("ftp://x")).unwrap_err().kind(),
            ErrorKind::Config
        );
        let c = OpenAiClient::new(&LmConfig::new("openai/gpt-x").with_base_url("http://127.0.0.1:1/v1/")).unwrap();
        assert_eq!(c.url, "http://127.0.0.1:1/v1/chat/completions");
        assert_eq!(c.model, "gpt-x");
    }
}
