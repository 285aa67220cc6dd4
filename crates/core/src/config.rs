//! Configuration structs shared by every layer (read from TOML or built in code).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret string (an API key): never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself; use only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to reach an OpenAI-compatible chat-completions service.
///
/// ```
/// use dspex_core::LmConfig;
///
/// let lm = LmConfig::new("gpt-4o-mini").with_base_url("http://127.0.0.1:8000/v1");
/// assert_eq!(lm.base_url.as_deref(), Some("http://127.0.0.1:8000/v1"));
/// assert_eq!(lm.temperature, None);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    /// Model name as the service knows it (an `openai/` prefix, as LiteLLM
    /// writes it, is stripped before sending).
    pub model: String,
    /// Base URL up to and including `/v1`; OpenAI's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// API key sent as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Completion length limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Per-attempt timeout in milliseconds (the request deadline still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries after the first attempt on 429 / 5xx / transport errors.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
}

fn default_retries() -> u32 {
    3
}

impl LmConfig {
    /// Settings for `model` with defaults elsewhere.
    pub fn new(model: impl Into<String>) -> LmConfig {
        LmConfig {
            model: model.into(),
            base_url: None,
            api_key: None,
            temperature: None,
            max_tokens: None,
            timeout_ms: None,
            max_retries: default_retries(),
        }
    }

    /// Set the base URL.
    pub fn with_base_url(mut self, url: impl Into<String>) -> LmConfig {
        self.base_url = Some(url.into());
        self
    }

    /// Set the API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> LmConfig {
        self.api_key = Some(Secret::new(key));
        self
    }

    /// Set the temperature.
    pub fn with_temperature(mut self, t: f64) -> LmConfig {
        self.temperature = Some(t);
        self
    }

    /// The per-attempt timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_hidden() {
        let lm = LmConfig::new("m").with_api_key("sk-123");
        assert!(!format!("{lm:?}").contains("sk-123"));
        assert_eq!(lm.api_key.as_ref().map(Secret::expose), Some("sk-123"));
        let json = serde_json::to_string(&lm).unwrap();
        let back: LmConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, lm);
        assert_eq!(back.max_retries, 3);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<LmConfig>(r#"{"model": "m", "temprature": 0}"#).unwrap_err();
        assert!(err.to_string().contains("temprature"));
    }
}
