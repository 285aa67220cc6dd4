//! Configuration of the LM gateway (`[gateway]`): the one place every LM
//! call of a runtime goes through, native or from a Python worker's DSPy.
//!
//! ```toml
//! [gateway]
//! ca_file = "/etc/ssl/internal-ca.pem"  # an internal CA, beside the system's roots
//! http2 = false                        # HTTP/1.1 connections, pooled (the default)
//! default_budget = { requests = 10000, usd = 5.0, period_secs = 86400 }
//!
//! [[gateway.lms]]                      # one LM: a model, at a base URL (any when unset)
//! model = "gpt-4o-mini"
//! requests_per_sec = 50.0
//! burst = 10
//! tokens_per_min = 200000
//! max_concurrency = 32
//! max_retries = 3
//! hedge_after_ms = 2000                # a second request when the first is slow
//! fallback = { model = "gpt-4o", base_url = "https://api.openai.com/v1" }
//! fallback_on = ["lm", "timeout", "transport", "rate_limited"]
//!
//! [gateway.budgets.acme]               # per tenant (RequestOptions::tenant)
//! tokens = 1000000
//! usd = 20.0
//! period_secs = 86400
//!
//! [gateway.cache]
//! capacity = 4096                      # deterministic requests: temperature 0 or a seed
//!
//! [gateway.prices."my-local-model"]    # over DSPy's price table
//! input_per_token = 0.0
//! output_per_token = 0.0
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::LmConfig;
use crate::error::ErrorKind;

/// `[gateway]`: limits per LM, budgets per tenant, the shared response
/// cache and prices. The defaults: no limits, no budgets, the cache on.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Policies by LM (the first whose model and base URL match a call).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lms: Vec<LmPolicy>,
    /// Budgets by tenant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub budgets: BTreeMap<String, BudgetConfig>,
    /// The budget of a tenant `budgets` does not name (calls with no tenant
    /// have none unless `budgets` names `-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_budget: Option<BudgetConfig>,
    /// The shared response cache.
    #[serde(default)]
    pub cache: GatewayCacheConfig,
    /// Prices by model name, over DSPy's price table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, Price>,
    /// A PEM file of root certificates the gateway trusts for HTTPS LMs
    /// (an internal CA), beside Mozilla's roots and the system's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Offer HTTP/2 to HTTPS LMs (one connection carries every call in
    /// flight); off, the gateway keeps a pool of HTTP/1.1 connections, which
    /// answer each call sooner.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
}

/// The policy of one LM: a model, at a base URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmPolicy {
    /// The model (`gpt-4o-mini`; an `openai/` prefix is ignored).
    pub model: String,
    /// The service's base URL (`https://api.openai.com/v1`); any when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Requests per second, shared by every caller (both routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<f64>,
    /// Requests that may go at once after a quiet spell (default: one
    /// second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Tokens per minute (prompt and completion; estimated before a call,
    /// corrected by what the service reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_min: Option<u64>,
    /// Calls in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// Retries after a failed attempt (408, 429, 5xx, transport); else the
    /// caller's (`LmConfig::max_retries`, or the Python LM's `num_retries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Send a second identical request when the first has not answered
    /// after this many milliseconds; the first answer wins (not streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_after_ms: Option<u64>,
    /// The LM a call goes to when this one fails with a `fallback_on` kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<LmConfig>,
    /// Which failures fall back.
    #[serde(default = "default_fallback_on")]
    pub fallback_on: Vec<ErrorKind>,
}

impl LmPolicy {
    /// No limits, for `model` at any base URL.
    pub fn new(model: impl Into<String>) -> LmPolicy {
        LmPolicy {
            model: model.into(),
            base_url: None,
            requests_per_sec: None,
            burst: None,
            tokens_per_min: None,
            max_concurrency: None,
            max_retries: None,
            hedge_after_ms: None,
            fallback: None,
            fallback_on: default_fallback_on(),
        }
    }

    /// Only at `base_url`.
    pub fn at(mut self, base_url: impl Into<String>) -> LmPolicy {
        self.base_url = Some(base_url.into());
        self
    }

    /// At most `rate` requests per second, `burst` at once.
    pub fn requests_per_sec(mut self, rate: f64, burst: u32) -> LmPolicy {
        self.requests_per_sec = Some(rate);
        self.burst = Some(burst);
        self
    }

    /// At most `tokens` tokens per minute.
    pub fn tokens_per_min(mut self, tokens: u64) -> LmPolicy {
        self.tokens_per_min = Some(tokens);
        self
    }

    /// At most `n` calls at once.
    pub fn max_concurrency(mut self, n: usize) -> LmPolicy {
        self.max_concurrency = Some(n);
        self
    }

    /// Retry failed attempts `n` times.
    pub fn max_retries(mut self, n: u32) -> LmPolicy {
        self.max_retries = Some(n);
        self
    }

    /// Hedge a call still unanswered after `ms` milliseconds.
    pub fn hedge_after_ms(mut self, ms: u64) -> LmPolicy {
        self.hedge_after_ms = Some(ms);
        self
    }

    /// Fall back to `lm` on `on` (the default kinds when empty).
    pub fn fallback(mut self, lm: LmConfig, on: &[ErrorKind]) -> LmPolicy {
        self.fallback = Some(lm);
        if !on.is_empty() {
            self.fallback_on = on.to_vec();
        }
        self
    }
}

fn default_fallback_on() -> Vec<ErrorKind> {
    vec![ErrorKind::Lm, ErrorKind::Timeout, ErrorKind::Transport, ErrorKind::RateLimited]
}

/// What a tenant may spend per period; a limit left unset is no limit.
/// A call is refused once a limit is reached; tokens and money are counted
/// when a call ends, so the call that crosses a limit completes (a budget
/// may be overrun by at most the calls already in flight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// LM calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Tokens, prompt and completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// US dollars, as priced by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The period, in seconds (fixed windows aligned to the epoch; a day by default).
    #[serde(default = "default_period")]
    pub period_secs: u64,
}

impl BudgetConfig {
    /// No limits, per `period_secs`.
    pub fn per(period_secs: u64) -> BudgetConfig {
        BudgetConfig { requests: None, tokens: None, usd: None, period_secs }
    }

    /// At most `n` LM calls.
    pub fn requests(mut self, n: u64) -> BudgetConfig {
        self.requests = Some(n);
        self
    }

    /// At most `n` tokens.
    pub fn tokens(mut self, n: u64) -> BudgetConfig {
        self.tokens = Some(n);
        self
    }

    /// At most `usd` dollars.
    pub fn usd(mut self, usd: f64) -> BudgetConfig {
        self.usd = Some(usd);
        self
    }
}

fn default_period() -> u64 {
    86_400
}

/// The shared response cache of deterministic requests (temperature 0, or
/// a seed): keyed by the exact request (URL, credential, body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayCacheConfig {
    /// Use it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Responses kept (the least recently used go first).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

impl Default for GatewayCacheConfig {
    fn default() -> Self {
        GatewayCacheConfig { enabled: true, capacity: default_capacity() }
    }
}

fn default_true() -> bool {
    true
}

fn default_capacity() -> usize {
    4096
}

/// What a model costs per token, in US dollars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per prompt token.
    pub input_per_token: f64,
    /// Per completion token.
    pub output_per_token: f64,
    /// Per prompt token served from the provider's prompt cache (else the
    /// prompt rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_token: Option<f64>,
}

/// How a pool's workers call LMs (`lm_calls` in `[[pools]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LmCalls {
    /// Through the runtime's gateway (OpenAI-compatible chat completions;
    /// other APIs stay direct, and the worker logs which).
    #[default]
    Gateway,
    /// DSPy calls the service itself, as without a runtime.
    Direct,
}

/// A node's part of its cluster's LM traffic, which the gateways of a
/// cluster share through its key-value store: each node's spend per tenant
/// and the rate-limited LMs it calls.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GatewayShare {
    /// What each tenant with a budget spent on this node in its current period.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spend: BTreeMap<String, TenantSpend>,
    /// The LMs with rate limits this node called lately (`model@base_url`):
    /// the nodes that call an LM share its limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_lms: Vec<String>,
}

/// What a tenant spent in one budget period.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TenantSpend {
    /// The period's length, seconds.
    pub period_secs: u64,
    /// Which period: seconds since the Unix epoch over `period_secs`.
    pub period: u64,
    /// LM calls admitted.
    pub requests: u64,
    /// Tokens used, prompt and completion.
    pub tokens: u64,
    /// US dollars, as priced by the gateway.
    pub usd: f64,
}

impl TenantSpend {
    /// Whether `other` counts the same period as this.
    pub fn same_period(&self, other: &TenantSpend) -> bool {
        self.period_secs == other.period_secs && self.period == other.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        // The module docs' example, as written there.
        let example = include_str!("gateway.rs").split("```toml\n").nth(1).unwrap_or("");
        let toml_text: String = example
            .lines()
            .map(|l| l.strip_prefix("//! ").or(l.strip_prefix("//!")).unwrap_or(l))
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        #[derive(Deserialize)]
        struct Doc {
            gateway: GatewayConfig,
        }
        let parsed: Doc = toml::from_str(&toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
        let g = parsed.gateway;
        assert_eq!(g.lms[0].requests_per_sec, Some(50.0));
        assert_eq!(g.lms[0].fallback.as_ref().map(|f| f.model.as_str()), Some("gpt-4o"));
        assert_eq!(g.budgets["acme"].tokens, Some(1_000_000));
        assert_eq!(g.default_budget.as_ref().and_then(|b| b.requests), Some(10_000));
        assert!(g.cache.enabled);
        assert_eq!(g.prices["my-local-model"].input_per_token, 0.0);
        assert_eq!(LmPolicy::new("m").fallback_on, default_fallback_on());
    }
}
