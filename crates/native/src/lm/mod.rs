//! Language models: the [`LanguageModel`] trait, an OpenAI-compatible HTTP
//! client ([`OpenAiClient`]), and a local OpenAI-compatible server
//! ([`server::LmServer`]) for tests, benchmarks and offline demos.
//!
//! Every call carries one absolute deadline ([`LmRequest::deadline`]): retries,
//! back-off sleeps and streaming reads all stop when it passes.

pub mod gateway;
mod h1;
pub mod offline;
mod openai;
pub mod server;
mod sse;

use std::pin::Pin;
use std::time::Instant;

use dspex_core::{Map, Result, Usage};
use futures_util::future::BoxFuture;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

pub use gateway::{CallMeter, Gateway, GatewayEvent, HttpCall, HttpReply, MeterReading, ReplyBody};
pub use openai::OpenAiClient;

#[doc(hidden)]
pub use h1::read_answer;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The user's turn.
    User,
    /// The model's turn.
    Assistant,
}

/// One chat message, as OpenAI-compatible APIs take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Message {
        Message { role: Role::System, content: content.into() }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        Message { role: Role::User, content: content.into() }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message { role: Role::Assistant, content: content.into() }
    }
}

/// One call to a chat model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LmRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Call arguments merged into the request body (`temperature`, `n`,
    /// `max_tokens`, `response_format`, ...).
    pub params: Map,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// Sent as `X-Request-Id` so server logs can be correlated.
    pub request_id: Option<String>,
    /// Who the call is for, as the gateway sees it.
    pub scope: LmScope,
}

/// Who an LM call is for, as the [`Gateway`] sees it: the tenant whose
/// budget it counts against, the meter of the request it belongs to, and
/// whether the shared response cache may answer it.
#[derive(Debug, Clone, Default)]
pub struct LmScope {
    /// The tenant (`None`: no budget applies).
    pub tenant: Option<String>,
    /// Where the request sums its LM use.
    pub meter: Option<std::sync::Arc<CallMeter>>,
    /// Keep the call out of the shared response cache.
    pub no_cache: bool,
}

impl PartialEq for LmScope {
    fn eq(&self, other: &Self) -> bool {
        let same_meter = match (&self.meter, &other.meter) {
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.tenant == other.tenant && same_meter && self.no_cache == other.no_cache
    }
}

impl LmRequest {
    /// A request for these messages with no extra parameters.
    pub fn new(messages: Vec<Message>) -> LmRequest {
        LmRequest { messages, ..Default::default() }
    }
}

/// What the model answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LmResponse {
    /// One text per choice (`n`); `None` where the service returned no content.
    pub outputs: Vec<Option<String>>,
    /// Token usage, when the service reports it.
    pub usage: Option<Usage>,
    /// The model the service says it used.
    pub model: Option<String>,
    /// Why each choice ended (`stop`, `length`, ...), when the service says.
    pub finish_reasons: Vec<Option<String>>,
}

impl LmResponse {
    /// One text answer, as a service that reports nothing else returns it.
    pub fn text(text: impl Into<String>) -> LmResponse {
        LmResponse { outputs: vec![Some(text.into())], ..Default::default() }
    }

    /// Whether a choice was cut off by the length limit (`finish_reason`
    /// `length`): its text is incomplete, and parsing it may fail.
    pub fn truncated(&self) -> bool {
        self.finish_reasons.iter().any(|r| r.as_deref() == Some("length"))
    }
}

/// One event of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum LmEvent {
    /// New text for choice `index`.
    Delta {
        /// Choice index.
        index: usize,
        /// The new text.
        text: String,
    },
    /// The stream ended; the full response.
    Done(LmResponse),
}

/// A streamed completion: deltas, then one `Done`.
pub type LmStream = Pin<Box<dyn Stream<Item = Result<LmEvent>> + Send>>;

/// A chat model. Implementations must honour [`LmRequest::deadline`].
pub trait LanguageModel: Send + Sync + 'static {
    /// Complete the conversation.
    fn complete(&self, request: LmRequest) -> BoxFuture<'_, Result<LmResponse>>;

    /// Stream the completion. The default completes, then yields the text as one delta.
    fn stream(&self, request: LmRequest) -> BoxFuture<'_, Result<LmStream>> {
        Box::pin(async move {
            let response = self.complete(request).await?;
            let mut events: Vec<Result<LmEvent>> = Vec::new();
            for (index, text) in response.outputs.iter().enumerate() {
                if let Some(text) = text {
                    events.push(Ok(LmEvent::Delta { index, text: text.clone() }));
                }
            }
            events.push(Ok(LmEvent::Done(response)));
            Ok(Box::pin(futures_util::stream::iter(events)) as LmStream)
        })
    }

    /// A short description for logs and metadata (the model name).
    fn describe(&self) -> String;
}

/// The LM named by the environment: `DSPEX_LM_BASE_URL` (required),
/// `DSPEX_LM_MODEL` (default `gpt-4o-mini`), `DSPEX_LM_API_KEY` or
/// `OPENAI_API_KEY`, and the generation settings `DSPEX_LM_MAX_TOKENS` and
/// `DSPEX_LM_TEMPERATURE` ([`dspex_core::LmSettings`]). `None` when no base
/// URL is set; an error when a setting is malformed.
pub fn config_from_env() -> Result<Option<dspex_core::LmConfig>> {
    let Some(url) = std::env::var("DSPEX_LM_BASE_URL").ok().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let model = std::env::var("DSPEX_LM_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
    let mut cfg = dspex_core::LmConfig::new(model).with_base_url(url);
    if let Ok(key) = std::env::var("DSPEX_LM_API_KEY").or_else(|_| std::env::var("OPENAI_API_KEY")) {
        cfg = cfg.with_api_key(key);
    }
    Ok(Some(cfg.with_settings(dspex_core::LmSettings::from_env()?)))
}
