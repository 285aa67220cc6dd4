//! Configuration structs shared by every layer (read from TOML or built in code).

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;

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

    /// Set the completion length limit.
    pub fn with_max_tokens(mut self, n: u32) -> LmConfig {
        self.max_tokens = Some(n);
        self
    }

    /// The per-attempt timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// Whether the model is one of OpenAI's reasoning families (o1, o3, o4,
    /// o5 and every gpt-5 but its `-chat` variants), judged as DSPy 3.4.1
    /// judges it from the name after any `provider/` prefix.
    pub fn is_reasoning_model(&self) -> bool {
        let family = self.model.rsplit('/').next().unwrap_or(&self.model).to_ascii_lowercase();
        is_o_series(&family) || is_gpt5(&family)
    }

    /// Check the settings as DSPy checks them when it builds its `dspy.LM`:
    /// a temperature in `0..=2`, a positive `max_tokens`, and for reasoning
    /// models temperature 1.0 (or none) and `max_tokens` ≥ 16000 (or none).
    ///
    /// ```
    /// use dspex_core::LmConfig;
    ///
    /// assert!(LmConfig::new("gpt-4o-mini").with_max_tokens(256).check().is_ok());
    /// assert!(LmConfig::new("openai/gpt-5-mini").with_max_tokens(256).check().is_err());
    /// ```
    pub fn check(&self) -> crate::Result<()> {
        use crate::{Error, ErrorKind};
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(Error::new(ErrorKind::Config, format!("LM temperature must be in 0..=2, got {t}"))
                    .with_field("temperature"));
            }
        }
        if self.max_tokens == Some(0) {
            return Err(Error::new(ErrorKind::Config, "LM max_tokens must be at least 1").with_field("max_tokens"));
        }
        if self.is_reasoning_model()
            && (self.temperature.is_some_and(|t| t != 1.0) || self.max_tokens.is_some_and(|m| m < 16000))
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "OpenAI's reasoning models require passing temperature=1.0 or None and max_tokens >= 16000 or \
                     None (model {:?}, as DSPy requires)",
                    self.model
                ),
            ));
        }
        Ok(())
    }

    /// These settings with `settings` over them.
    pub fn with_settings(mut self, settings: LmSettings) -> LmConfig {
        if let Some(n) = settings.max_tokens {
            self.max_tokens = Some(n);
        }
        if let Some(t) = settings.temperature {
            self.temperature = Some(t);
        }
        self
    }
}

/// `o1`, `o3-mini`, `o4-mini-2025-04-16`, ...: `o` + one of 1, 3, 4, 5, an
/// optional `-mini`/`-nano`/`-pro`, an optional `-YYYY-MM-DD`.
fn is_o_series(family: &str) -> bool {
    let Some(rest) = family.strip_prefix('o') else { return false };
    let mut chars = rest.chars();
    if !matches!(chars.next(), Some('1' | '3' | '4' | '5')) {
        return false;
    }
    let mut rest = chars.as_str();
    for size in ["-mini", "-nano", "-pro"] {
        if let Some(r) = rest.strip_prefix(size) {
            rest = r;
            break;
        }
    }
    if rest.is_empty() {
        return true;
    }
    let date = rest.strip_prefix('-').unwrap_or("");
    let b = date.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// `gpt-5`, `gpt-5-mini`, `gpt-5.1`, `gpt-5.6-luna`, but not `gpt-5-chat…`.
fn is_gpt5(family: &str) -> bool {
    let Some(mut rest) = family.strip_prefix("gpt-5") else { return false };
    // Dotted versions: (\.\d+)*
    while let Some(r) = rest.strip_prefix('.') {
        let digits = r.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &r[digits..];
    }
    rest.is_empty() || (rest.starts_with('-') && !rest.starts_with("-chat"))
}

/// Generation settings given beside an LM's configuration: from the
/// environment (`DSPEX_LM_MAX_TOKENS`, `DSPEX_LM_TEMPERATURE`) or from
/// command-line flags. Each set value replaces the configuration's.
///
/// ```
/// use dspex_core::{LmConfig, LmSettings};
///
/// let env = LmSettings::from_vars(|k| (k == "DSPEX_LM_MAX_TOKENS").then(|| "256".to_string())).unwrap();
/// let flags = LmSettings { temperature: Some(0.0), ..LmSettings::default() };
/// let lm = LmConfig::new("m").with_settings(flags.over(env));
/// assert_eq!((lm.max_tokens, lm.temperature), (Some(256), Some(0.0)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LmSettings {
    /// Completion length limit.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
}

impl LmSettings {
    /// The settings the process environment gives; a malformed value is a
    /// [`Config`](crate::ErrorKind::Config) error naming the variable.
    pub fn from_env() -> crate::Result<LmSettings> {
        LmSettings::from_vars(|k| std::env::var(k).ok())
    }

    /// The settings from variables looked up by `var` (empty means unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> crate::Result<LmSettings> {
        use crate::{Error, ErrorKind};
        let get = |k: &str| var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let max_tokens = match get("DSPEX_LM_MAX_TOKENS") {
            Some(v) => Some(v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::new(ErrorKind::Config, format!("DSPEX_LM_MAX_TOKENS must be a positive whole number, got {v:?}"))
            })?),
            None => None,
        };
        let temperature = match get("DSPEX_LM_TEMPERATURE") {
            Some(v) => Some(v.parse::<f64>().ok().filter(|t| (0.0..=2.0).contains(t)).ok_or_else(|| {
                Error::new(ErrorKind::Config, format!("DSPEX_LM_TEMPERATURE must be a number in 0..=2, got {v:?}"))
            })?),
            None => None,
        };
        Ok(LmSettings { max_tokens, temperature })
    }

    /// These settings, with `lower`'s where these set none.
    pub fn over(self, lower: LmSettings) -> LmSettings {
        LmSettings {
            max_tokens: self.max_tokens.or(lower.max_tokens),
            temperature: self.temperature.or(lower.temperature),
        }
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
    fn reasoning_models_are_named_as_dspy_names_them() {
        let reasoning = |m: &str| LmConfig::new(m).is_reasoning_model();
        for m in ["o1", "o3-mini", "openai/o4-mini-2025-04-16", "o1-pro", "gpt-5", "openai/gpt-5-mini", "gpt-5.6-luna"]
        {
            assert!(reasoning(m), "{m}");
        }
        for m in ["gpt-4o-mini", "gpt-5-chat-latest", "o2", "o3-mini-2025", "gpt-50", "gemma-3-270m", "o1x"] {
            assert!(!reasoning(m), "{m}");
        }
        assert!(LmConfig::new("o3").with_temperature(0.0).check().is_err());
        assert!(LmConfig::new("o3").with_temperature(1.0).with_max_tokens(16000).check().is_ok());
        assert!(LmConfig::new("m").with_temperature(2.5).check().is_err());
        assert_eq!(
            LmConfig::new("m").with_max_tokens(0).check().unwrap_err().context().field.as_deref(),
            Some("max_tokens")
        );
    }

    #[test]
    fn settings_come_from_variables_and_flags_win() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let env =
            LmSettings::from_vars(vars(&[("DSPEX_LM_MAX_TOKENS", "64"), ("DSPEX_LM_TEMPERATURE", " 0.5 ")])).unwrap();
        assert_eq!(env, LmSettings { max_tokens: Some(64), temperature: Some(0.5) });
        assert_eq!(LmSettings::from_vars(vars(&[("DSPEX_LM_MAX_TOKENS", "")])).unwrap(), LmSettings::default());
        for bad in [("DSPEX_LM_MAX_TOKENS", "0"), ("DSPEX_LM_MAX_TOKENS", "lots"), ("DSPEX_LM_TEMPERATURE", "hot")] {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([bad]));
            let err = LmSettings::from_vars(vars(pairs)).unwrap_err();
            assert!(err.message().contains(bad.0), "{err}");
        }
        let flags = LmSettings { max_tokens: Some(8), temperature: None };
        assert_eq!(flags.over(env), LmSettings { max_tokens: Some(8), temperature: Some(0.5) });
        let lm = LmConfig::new("m").with_max_tokens(1000).with_settings(flags);
        assert_eq!((lm.max_tokens, lm.temperature), (Some(8), None));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<LmConfig>(r#"{"model": "m", "temprature": 0}"#).unwrap_err();
        assert!(err.to_string().contains("temprature"));
    }
}
