//! One gateway for every LM call of a runtime: the native engine's and the
//! Python workers' DSPy alike.
//!
//! A caller hands it one HTTP exchange with an OpenAI-compatible service
//! ([`HttpCall`]: URL, headers, JSON body, deadline, tenant). The gateway
//! then applies, in this order:
//!
//! 1. the tenant's **budget** — requests, tokens and money per period —
//!    refusing the call with `BudgetExceeded` before anything is sent;
//! 2. the shared **response cache**, for deterministic requests
//!    (temperature 0, or a seed): the same request from either route is
//!    answered by the service once;
//! 3. the LM's **rate limits** — requests per second and tokens per minute,
//!    token buckets shared by every caller — waiting within the request's
//!    deadline, or failing with `RateLimited`;
//! 4. the LM's **concurrency cap** (`Overloaded` when no slot frees up in
//!    time);
//! 5. the call, **retried** on 408, 429, 5xx and transport failures with
//!    back-off and jitter, honouring `Retry-After` (seconds or an HTTP
//!    date), optionally **hedged** (a second identical request when the
//!    first is slow; the first answer wins);
//! 6. a **fallback** LM on the configured error kinds;
//!
//! and it accounts what the call used — tokens in and out, and its **cost**
//! from DSPy's price table or configured prices — per tenant and per LM
//! ([`Gateway::stats`]), and per request ([`CallMeter`]).
//!
//! An LM is a model at a base URL (`gpt-4o-mini@https://api.openai.com/v1`).
//! Bodies are forwarded as they are: what reaches the service is what the
//! caller built (DSPy's own request, for Python calls).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dspex_core::{
    BudgetConfig, Error, ErrorKind, GatewayConfig, GatewayShare, LmPolicy, Price, Result, TenantSpend, Usage, Value,
};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{debug, warn};

use super::sse::SseDecoder;

/// One HTTP exchange with an LM service, as a caller built it.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// `POST` target, e.g. `http://127.0.0.1:8080/v1/chat/completions`.
    pub url: String,
    /// Request headers (`Authorization`, `Content-Type`, ...). Never logged.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Bytes,
    /// When the caller stops waiting: queueing, retries and reads share it.
    pub deadline: Option<Instant>,
    /// Whose budget the call counts against.
    pub tenant: Option<String>,
    /// Retries after the first attempt (the LM's policy wins when it sets them).
    pub max_retries: u32,
    /// Limit on one attempt (the deadline bounds it too).
    pub attempt_timeout: Option<Duration>,
    /// May be answered from (and stored in) the shared cache.
    pub cache: bool,
    /// Where the request this call belongs to sums its LM use.
    pub meter: Option<Arc<CallMeter>>,
}

impl HttpCall {
    /// A call of `body` to `url` with `headers`, nothing else set.
    pub fn new(url: impl Into<String>, headers: Vec<(String, String)>, body: impl Into<Bytes>) -> HttpCall {
        HttpCall {
            url: url.into(),
            headers,
            body: body.into(),
            deadline: None,
            tenant: None,
            max_retries: 0,
            attempt_timeout: None,
            cache: true,
            meter: None,
        }
    }
}

/// A reply body: whole, or a stream of chunks as the service sends them.
pub enum ReplyBody {
    /// The whole body.
    Full(Bytes),
    /// Chunks (server-sent events for a streamed completion).
    Stream(BoxStream<'static, Result<Bytes>>),
}

impl std::fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            ReplyBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// The service's answer (any status: a 4xx that is not retried is passed
/// on, for the caller to read as DSPy would).
#[derive(Debug)]
pub struct HttpReply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: ReplyBody,
    /// Served from the shared cache.
    pub cached: bool,
}

impl HttpReply {
    /// The whole body (reading a stream to its end).
    pub async fn bytes(self) -> Result<Bytes> {
        match self.body {
            ReplyBody::Full(b) => Ok(b),
            ReplyBody::Stream(mut s) => {
                let mut out = Vec::new();
                while let Some(chunk) = s.next().await {
                    out.extend_from_slice(&chunk?);
                }
                Ok(out.into())
            }
        }
    }
}

/// What the LM calls of one request used: summed by the gateway as the
/// calls finish (a stream when it ends), read into the result's metadata.
#[derive(Debug, Default)]
pub struct CallMeter {
    calls: AtomicU64,
    cached: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Cost in billionths of a dollar (nano-USD), so it adds up atomically.
    cost_nano_usd: AtomicU64,
    priced: AtomicU64,
}

/// A [`CallMeter`]'s totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MeterReading {
    /// LM calls made (cache hits included).
    pub calls: u64,
    /// Calls answered from the shared cache.
    pub cached: u64,
    /// Tokens in and out, as the services reported them.
    pub usage: Usage,
    /// Cost in US dollars of the calls whose model has a price; `None`
    /// when none had.
    pub cost_usd: Option<f64>,
}

impl CallMeter {
    /// A new, empty meter.
    pub fn new() -> Arc<CallMeter> {
        Arc::new(CallMeter::default())
    }

    fn record(&self, usage: Option<Usage>, cost: Option<f64>, cached: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if cached {
            self.cached.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(u) = usage {
            self.prompt_tokens.fetch_add(u.prompt_tokens, Ordering::Relaxed);
            self.completion_tokens.fetch_add(u.completion_tokens, Ordering::Relaxed);
        }
        if let Some(c) = cost {
            self.cost_nano_usd.fetch_add((c * 1e9).round() as u64, Ordering::Relaxed);
            self.priced.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The totals so far.
    pub fn reading(&self) -> MeterReading {
        let prompt = self.prompt_tokens.load(Ordering::Relaxed);
        let completion = self.completion_tokens.load(Ordering::Relaxed);
        MeterReading {
            calls: self.calls.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            usage: Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
            cost_usd: (self.priced.load(Ordering::Relaxed) > 0)
                .then(|| self.cost_nano_usd.load(Ordering::Relaxed) as f64 / 1e9),
        }
    }
}

// ------------------------------------------------------------ rate limits

/// A token bucket that lends: a caller reserves what it needs now and
/// waits until the bucket would have refilled to it, so callers are served
/// in arrival order and the rate never exceeds `rate` beyond one `burst`.
///
/// In a cluster the nodes calling an LM split its limits: each bucket runs
/// at its share of the configured rate and burst ([`Bucket::share`]).
#[derive(Debug)]
struct Bucket {
    /// The configured rate and burst (the whole cluster's).
    full: (f64, f64),
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    level: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl BucketState {
    fn refill(&mut self, now: Instant) {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.level = (self.level + refill).min(self.burst);
        self.at = now;
    }
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Bucket {
        let (rate, burst) = (rate.max(1e-9), burst.max(1.0));
        Bucket { full: (rate, burst), state: Mutex::new(BucketState { level: burst, at: Instant::now(), rate, burst }) }
    }

    /// Reserve `n`: how long to wait before using them, or (nothing
    /// reserved) how long it would take, when that is past `deadline`.
    fn reserve(&self, n: f64, deadline: Option<Instant>) -> std::result::Result<Duration, Duration> {
        let mut s = self.state.lock();
        let now = Instant::now();
        s.refill(now);
        let after = s.level - n;
        let wait = if after >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-after / s.rate) };
        if deadline.is_some_and(|d| now + wait > d) {
            return Err(wait);
        }
        s.level = after;
        Ok(wait)
    }

    /// Put back (`n` > 0) or take more (`n` < 0) after the fact: a call's
    /// token estimate corrected by what the service reported.
    fn adjust(&self, n: f64) {
        let mut s = self.state.lock();
        s.level = (s.level + n).min(s.burst);
    }

    /// Run at one `nodes`-th of the configured rate and burst (a burst of at
    /// least one). What is already lent stays lent.
    fn share(&self, nodes: usize) {
        let n = nodes.max(1) as f64;
        let mut s = self.state.lock();
        s.refill(Instant::now());
        s.rate = self.full.0 / n;
        s.burst = (self.full.1 / n).max(1.0);
        s.level = s.level.min(s.burst);
    }

    /// The rate it runs at.
    #[cfg(test)]
    fn rate(&self) -> f64 {
        self.state.lock().rate
    }
}

// ------------------------------------------------------------ prices

/// DSPy 3.4.1's prices for OpenAI chat models (its bundled catalog, per
/// token), generated by `python/prices/generate.py` and checked for drift
/// in CI.
const PRICE_TABLE: &str = include_str!("prices.json");

fn builtin_prices() -> &'static BTreeMap<String, Price> {
    static TABLE: std::sync::OnceLock<BTreeMap<String, Price>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let doc: Value = serde_json::from_str(PRICE_TABLE).unwrap_or(Value::Null);
        doc.get("models")
            .and_then(|m| serde_json::from_value::<BTreeMap<String, Price>>(m.clone()).ok())
            .unwrap_or_default()
    })
}

/// The cost of `usage` on `model` as DSPy estimates it for OpenAI chat
/// models at the standard tier: uncached input, cached input and output
/// tokens each at their rate. `None` when the model has no price.
pub fn cost_usd(prices: &BTreeMap<String, Price>, model: &str, usage: &Usage, cached_tokens: u64) -> Option<f64> {
    let bare = model.strip_prefix("openai/").unwrap_or(model);
    let price = prices.get(bare).or_else(|| builtin_prices().get(bare))?;
    let cached = cached_tokens.min(usage.prompt_tokens);
    let cache_rate = price.cache_read_per_token.unwrap_or(price.input_per_token);
    Some(
        (usage.prompt_tokens - cached) as f64 * price.input_per_token
            + cached as f64 * cache_rate
            + usage.completion_tokens as f64 * price.output_per_token,
    )
}

// ------------------------------------------------------------ budgets

#[derive(Debug)]
struct Tenant {
    budget: Option<BudgetConfig>,
    /// What it spent here in the current period.
    spent: Mutex<TenantSpend>,
    /// What it spent on the cluster's other nodes, as they last said.
    peers: Mutex<TenantSpend>,
    totals: Totals,
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Tenant {
    /// The current period of `budget` (a fresh, empty spend).
    fn period(budget: &BudgetConfig, now: u64) -> TenantSpend {
        let period_secs = budget.period_secs.max(1);
        TenantSpend { period_secs, period: now / period_secs, ..TenantSpend::default() }
    }

    /// Admit one request, or say which limit it reached: the spend here
    /// plus the cluster's other nodes'.
    fn admit(&self, name: &str) -> Result<()> {
        let Some(b) = &self.budget else { return Ok(()) };
        let now = unix_secs();
        let current = Tenant::period(b, now);
        let peers = *self.peers.lock();
        let peers = if peers.same_period(&current) { peers } else { current };
        let mut s = self.spent.lock();
        if !s.same_period(&current) {
            *s = current;
        }
        let resets = current.period_secs - now % current.period_secs;
        let over = |what: &str, used: String, limit: String| {
            Error::new(
                ErrorKind::BudgetExceeded,
                format!(
                    "tenant `{name}` reached its {what} budget ({used} of {limit} per {} s; resets in {resets} s)",
                    current.period_secs
                ),
            )
        };
        let (requests, tokens, usd) = (s.requests + peers.requests, s.tokens + peers.tokens, s.usd + peers.usd);
        if let Some(limit) = b.requests.filter(|l| requests >= *l) {
            return Err(over("request", requests.to_string(), limit.to_string()));
        }
        if let Some(limit) = b.tokens.filter(|l| tokens >= *l) {
            return Err(over("token", tokens.to_string(), limit.to_string()));
        }
        if let Some(limit) = b.usd.filter(|l| usd >= *l) {
            return Err(over("cost", format!("${usd:.6}"), format!("${limit}")));
        }
        s.requests += 1;
        Ok(())
    }

    fn spend(&self, tokens: u64, usd: f64) {
        let Some(b) = &self.budget else { return };
        let current = Tenant::period(b, unix_secs());
        let mut s = self.spent.lock();
        if !s.same_period(&current) {
            // The call began in the last period; it counts in this one.
            *s = current;
        }
        s.tokens += tokens;
        s.usd += usd;
    }

    /// What it spent here in the current period, if it has a budget.
    fn spent_now(&self) -> Option<TenantSpend> {
        let b = self.budget.as_ref()?;
        let s = *self.spent.lock();
        s.same_period(&Tenant::period(b, unix_secs())).then_some(s)
    }
}

// ------------------------------------------------------------ statistics

/// Counters of one LM or one tenant.
#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    cache_hits: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    refused: AtomicU64,
    fallbacks: AtomicU64,
    errors: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cost_nano_usd: AtomicU64,
}

impl Totals {
    fn snapshot(&self) -> TotalsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TotalsSnapshot {
            requests: l(&self.requests),
            cache_hits: l(&self.cache_hits),
            retries: l(&self.retries),
            rate_limited: l(&self.rate_limited),
            refused: l(&self.refused),
            fallbacks: l(&self.fallbacks),
            errors: l(&self.errors),
            prompt_tokens: l(&self.prompt_tokens),
            completion_tokens: l(&self.completion_tokens),
            cost_usd: l(&self.cost_nano_usd) as f64 / 1e9,
        }
    }

    fn used(&self, usage: &Usage, cost: Option<f64>) {
        self.prompt_tokens.fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens.fetch_add(usage.completion_tokens, Ordering::Relaxed);
        if let Some(c) = cost {
            self.cost_nano_usd.fetch_add((c * 1e9).round() as u64, Ordering::Relaxed);
        }
    }
}

/// What went through the gateway for one LM or one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TotalsSnapshot {
    /// Calls admitted (cache hits included).
    pub requests: u64,
    /// Calls answered from the shared cache.
    pub cache_hits: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Calls refused (or delayed past their deadline) by a rate limit.
    pub rate_limited: u64,
    /// Calls refused by a budget.
    pub refused: u64,
    /// Calls answered by a fallback LM.
    pub fallbacks: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Tokens in.
    pub prompt_tokens: u64,
    /// Tokens out.
    pub completion_tokens: u64,
    /// Cost of the priced calls, US dollars.
    pub cost_usd: f64,
}

/// The gateway's state: per LM and per tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GatewayStats {
    /// Per LM (`model@base_url`).
    pub lms: BTreeMap<String, TotalsSnapshot>,
    /// Per tenant (`-` for calls without one).
    pub tenants: BTreeMap<String, TotalsSnapshot>,
    /// Entries in the shared response cache.
    pub cached_responses: usize,
    /// Budgeted tenants' spend in their current period, the cluster's
    /// other nodes' included.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub spend: BTreeMap<String, TenantSpend>,
    /// Rate-limited LMs: how many nodes share their limits (1: this node alone).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lm_nodes: BTreeMap<String, usize>,
}

fn add_spend(a: TenantSpend, b: TenantSpend) -> TenantSpend {
    TenantSpend { requests: a.requests + b.requests, tokens: a.tokens + b.tokens, usd: a.usd + b.usd, ..a }
}

/// A stream's bytes so far, and what to do with the whole once it ends
/// (or its reader stops).
struct StreamTally {
    seen: Vec<u8>,
    finish: Option<Finish>,
}

/// What to do with a stream's whole body once it ends.
type Finish = Box<dyn FnOnce(&[u8]) + Send>;

impl StreamTally {
    fn end(&mut self) {
        if let Some(f) = self.finish.take() {
            f(&self.seen);
        }
    }
}

impl Drop for StreamTally {
    fn drop(&mut self) {
        self.end();
    }
}

// ------------------------------------------------------------ the gateway

#[derive(Debug)]
struct Lm {
    name: String,
    policy: Option<LmPolicy>,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    slots: Option<tokio::sync::Semaphore>,
    totals: Totals,
    /// When it was last called, milliseconds after the gateway's epoch
    /// plus one (zero: never).
    last_call: AtomicU64,
}

impl Lm {
    fn limited(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    /// Split its limits among `nodes` nodes.
    fn share(&self, nodes: usize) {
        for b in [&self.requests, &self.tokens].into_iter().flatten() {
            b.share(nodes);
        }
    }
}

#[derive(Debug)]
struct Cached {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// What the gateway reports to its observer ([`Gateway::with_observer`]),
/// for metrics: each call as it ends, each refusal or failure.
#[derive(Debug, Clone, Copy)]
pub enum GatewayEvent<'a> {
    /// A call was answered (by the service, or from the cache).
    Called {
        /// The LM (`model@base_url`).
        lm: &'a str,
        /// The tenant (`-` for none).
        tenant: &'a str,
        /// Tokens, when the service reported them.
        usage: Option<Usage>,
        /// Cost, when the model has a price.
        cost_usd: Option<f64>,
        /// From the shared cache.
        cached: bool,
    },
    /// A call was refused (budget, rate limit) or failed.
    Failed {
        /// The LM, when the call got that far.
        lm: Option<&'a str>,
        /// The tenant (`-` for none).
        tenant: &'a str,
        /// Why.
        kind: ErrorKind,
    },
}

type Observer = Arc<dyn Fn(&GatewayEvent<'_>) + Send + Sync>;

struct Inner {
    observer: Option<Observer>,
    http: reqwest::Client,
    /// The HTTP/1.1 client of its own, for the URLs it serves.
    h1: Option<super::h1::Client>,
    config: GatewayConfig,
    lms: parking_lot::RwLock<BTreeMap<String, Arc<Lm>>>,
    tenants: parking_lot::RwLock<BTreeMap<String, Arc<Tenant>>>,
    cache: Option<Arc<quick_cache::sync::Cache<u64, Arc<Cached>>>>,
    backoff: (Duration, Duration),
    epoch: Instant,
    /// How many of the cluster's other live nodes call each rate-limited LM.
    peer_lms: parking_lot::RwLock<BTreeMap<String, usize>>,
}

/// The LM gateway. Cheap to clone; one per runtime. See the [module docs](self).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("lms", &self.inner.config.lms.len()).finish()
    }
}

/// The parts of a body the gateway reads.
struct BodyFacts {
    model: String,
    deterministic: bool,
    stream: bool,
    /// Tokens the call may use, estimated before it: the messages' length
    /// over four, plus the completion cap (256 when none is set).
    estimate: u64,
}

/// The members of a request body the gateway reads; the rest (the
/// messages) is skipped, not built.
#[derive(serde::Deserialize, Default)]
struct BodyHead {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    seed: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

fn body_facts(body: &[u8]) -> BodyFacts {
    let head: BodyHead = serde_json::from_slice(body).unwrap_or_default();
    let cap = head.max_completion_tokens.or(head.max_tokens).unwrap_or(256);
    BodyFacts {
        model: head.model.unwrap_or_default(),
        deterministic: head.temperature == Some(0.0) || head.seed.is_some(),
        stream: head.stream.unwrap_or(false),
        // Four bytes of JSON to a token, roughly; the service's count corrects it.
        estimate: (body.len() / 4) as u64 + cap,
    }
}

/// The base URL of a chat-completions URL (`…/v1/chat/completions` → `…/v1`).
fn base_of(url: &str) -> &str {
    url.strip_suffix("/chat/completions").unwrap_or(url).trim_end_matches('/')
}

/// JSON with every object's keys sorted: two routes' bodies for the same
/// request compare equal however each serialised it.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The cache key: the URL, the credential (one tenant's answer is never
/// another key's) and the body, canonically.
fn cache_key(call: &HttpCall) -> u64 {
    use std::hash::{Hash, Hasher};
    let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
    let mut text = String::with_capacity(call.body.len());
    canonical(&body, &mut text);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call.url.hash(&mut h);
    header(&call.headers, "authorization").hash(&mut h);
    text.hash(&mut h);
    h.finish()
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110 IMF-fixdate).
pub fn retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let at = parse_http_date(v)?;
    let now = unix_secs();
    Some(Duration::from_secs(at.saturating_sub(now).min(3600)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → seconds since the epoch.
fn parse_http_date(s: &str) -> Option<u64> {
    let rest = s.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || day == 0 || day > 31 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + (h * 3600 + m * 60 + sec) as i64).ok()
}

fn status_kind(status: u16) -> (ErrorKind, bool) {
    match status {
        408 => (ErrorKind::Timeout, true),
        429 => (ErrorKind::RateLimited, true),
        s if s >= 500 => (ErrorKind::Lm, true),
        _ => (ErrorKind::Lm, false),
    }
}

/// Tokens used and the cached share, from a completion's JSON (or the last
/// chunk of a stream that carries `usage`).
/// The `usage` member of a completion (or of a stream's last chunk).
#[derive(serde::Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(serde::Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(serde::Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// Tokens used and the cached share, from a completion's JSON (or the last
/// chunk of a stream that carries `usage`).
fn usage_of(json: &[u8]) -> Option<(Usage, u64)> {
    let u = serde_json::from_slice::<WithUsage>(json).ok()?.usage?;
    let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
    Some((
        Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total_tokens },
        cached,
    ))
}

/// The TLS settings the gateway's clients trust LMs with: the system's
/// certificate store (which `SSL_CERT_FILE` / `SSL_CERT_DIR` replace, as
/// for Python's `ssl`: what DSPy's own engine trusts), Mozilla's roots, and
/// `ca_file`'s certificates. HTTP/1.1 only, over ALPN.
///
/// Reading and parsing the system's store takes milliseconds, and every
/// gateway needs it (each `OpenAiClient` builds one): the configuration
/// without a `ca_file` is built once per process and shared.
#[cfg(feature = "tls")]
pub(super) fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    static SHARED: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> = std::sync::OnceLock::new();
    if ca_file.is_some() {
        return build_tls_config(ca_file);
    }
    if let Some(config) = SHARED.get() {
        return Ok(config.clone());
    }
    let config = build_tls_config(None)?;
    Ok(SHARED.get_or_init(|| config).clone())
}

#[cfg(feature = "tls")]
fn build_tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A store that cannot be read, or certificates in it that rustls
    // cannot use, leave the others trusted (as reqwest and Python do).
    let (_, unusable) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if unusable > 0 {
        debug!(unusable, "certificates of the system's store that rustls cannot use were left out");
    }
    if let Some(path) = ca_file {
        let bad = |what: String| Error::new(ErrorKind::Config, format!("gateway.ca_file {}: {what}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(format!("a certificate rustls cannot use: {e}")))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot set up TLS for the LM gateway: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The gateway's clients: reqwest, and the HTTP/1.1 client of its own
/// ([`super::h1`]) unless HTTP/2 is asked for or a proxy is configured.
#[cfg(feature = "tls")]
fn clients(
    builder: reqwest::ClientBuilder,
    config: &GatewayConfig,
) -> Result<(reqwest::ClientBuilder, Option<super::h1::Client>)> {
    let tls = tls_config(config.ca_file.as_deref())?;
    let mut for_reqwest = (*tls).clone();
    if config.http2 {
        for_reqwest.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    let h1 = (!config.http2 && !proxied()).then(|| super::h1::Client::new(tls));
    Ok((builder.use_preconfigured_tls(for_reqwest), h1))
}

#[cfg(not(feature = "tls"))]
fn clients(
    builder: reqwest::ClientBuilder,
    config: &GatewayConfig,
) -> Result<(reqwest::ClientBuilder, Option<super::h1::Client>)> {
    if let Some(path) = &config.ca_file {
        return Err(Error::new(
            ErrorKind::Config,
            format!("gateway.ca_file {}: this build has no TLS (the `tls` feature)", path.display()),
        ));
    }
    Ok((builder, (!config.http2 && !proxied()).then(super::h1::Client::new)))
}

/// Whether the environment names a proxy: reqwest honours them (as DSPy's
/// engine does), so every call is reqwest's then.
fn proxied() -> bool {
    ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"].iter().any(|v| {
        [v.to_string(), v.to_ascii_lowercase()].iter().any(|name| std::env::var_os(name).is_some_and(|x| !x.is_empty()))
    })
}

/// One attempt's failure: the error, and the server's `Retry-After`.
struct Failed {
    error: Error,
    hint: Option<Duration>,
}

impl Gateway {
    /// A gateway with `config`'s policies (limits, budgets, cache, prices,
    /// fallbacks).
    pub fn new(config: GatewayConfig) -> Result<Gateway> {
        let mut builder = reqwest::Client::builder().tcp_nodelay(true).pool_idle_timeout(Duration::from_secs(90));
        if !config.http2 {
            // A pooled HTTP/1.1 connection per call in flight answers sooner
            // than streams multiplexed on one HTTP/2 connection (the
            // `gateway` bench: ~0.1–0.3 ms per call over HTTPS); this
            // client serves only what the gateway's own HTTP/1.1 client
            // does not (proxies, URLs that are not plain ASCII).
            builder = builder.http1_only();
        }
        let (builder, h1) = clients(builder, &config)?;
        let http = builder
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot build the LM gateway's HTTP client: {e}")))?;
        let cache = (config.cache.enabled && config.cache.capacity > 0)
            .then(|| Arc::new(quick_cache::sync::Cache::new(config.cache.capacity)));
        Ok(Gateway {
            inner: Arc::new(Inner {
                observer: None,
                http,
                h1,
                config,
                lms: Default::default(),
                tenants: Default::default(),
                cache,
                backoff: (Duration::from_millis(250), Duration::from_secs(8)),
                epoch: Instant::now(),
                peer_lms: Default::default(),
            }),
        })
    }

    /// A gateway with no policies: calls go straight through, retried as
    /// each asks; usage and cost are still accounted.
    pub fn passthrough() -> Gateway {
        Gateway::new(GatewayConfig::default()).unwrap_or_else(|_| Gateway::fallback_client())
    }

    #[cold]
    fn fallback_client() -> Gateway {
        // `reqwest::Client::new` with default settings cannot fail in practice;
        // this keeps `passthrough` infallible without a panic path.
        Gateway {
            inner: Arc::new(Inner {
                observer: None,
                http: reqwest::Client::new(),
                h1: None,
                config: GatewayConfig::default(),
                lms: Default::default(),
                tenants: Default::default(),
                cache: None,
                backoff: (Duration::from_millis(250), Duration::from_secs(8)),
                epoch: Instant::now(),
                peer_lms: Default::default(),
            }),
        }
    }

    /// Shorten retry back-off (tests and benchmarks).
    pub fn with_backoff(self, base: Duration, max: Duration) -> Gateway {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.backoff = (base, max);
                inner
            }
            Err(shared) => return Gateway { inner: shared },
        };
        Gateway { inner: Arc::new(inner) }
    }

    /// Report every call and refusal to `observer` (metrics). Set before
    /// the gateway is shared; on a shared one it is ignored.
    pub fn with_observer(mut self, observer: impl Fn(&GatewayEvent<'_>) + Send + Sync + 'static) -> Gateway {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.observer = Some(Arc::new(observer));
        }
        self
    }

    fn observe(&self, event: GatewayEvent<'_>) {
        if let Some(o) = &self.inner.observer {
            o(&event);
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    fn lm(&self, model: &str, base: &str) -> Arc<Lm> {
        let name = format!("{model}@{base}");
        if let Some(lm) = self.inner.lms.read().get(&name) {
            return lm.clone();
        }
        let policy = self
            .inner
            .config
            .lms
            .iter()
            .find(|p| {
                let bare = |m: &str| m.strip_prefix("openai/").unwrap_or(m).to_string();
                bare(&p.model) == bare(model) && p.base_url.as_deref().is_none_or(|b| b.trim_end_matches('/') == base)
            })
            .cloned();
        let requests = policy
            .as_ref()
            .and_then(|p| p.requests_per_sec.map(|r| Bucket::new(r, p.burst.map_or(r.ceil().max(1.0), f64::from))));
        let tokens = policy.as_ref().and_then(|p| p.tokens_per_min.map(|t| Bucket::new(t as f64 / 60.0, t as f64)));
        let slots = policy.as_ref().and_then(|p| p.max_concurrency).map(tokio::sync::Semaphore::new);
        let lm =
            Lm { name: name.clone(), policy, requests, tokens, slots, totals: Totals::default(), last_call: 0.into() };
        if let Some(peers) = self.inner.peer_lms.read().get(&name) {
            lm.share(peers + 1);
        }
        let lm = Arc::new(lm);
        self.inner.lms.write().entry(name).or_insert(lm).clone()
    }

    fn tenant(&self, name: &str) -> Arc<Tenant> {
        if let Some(t) = self.inner.tenants.read().get(name) {
            return t.clone();
        }
        let budget = self.inner.config.budgets.get(name).cloned().or_else(|| self.inner.config.default_budget.clone());
        let t = Arc::new(Tenant {
            budget,
            spent: Mutex::new(TenantSpend::default()),
            peers: Mutex::new(TenantSpend::default()),
            totals: Totals::default(),
        });
        self.inner.tenants.write().entry(name.to_string()).or_insert(t).clone()
    }

    /// Send `call` through the gateway's policies (see the [module docs](self)).
    pub async fn send(&self, call: HttpCall) -> Result<HttpReply> {
        let facts = body_facts(&call.body);
        let tenant_name = call.tenant.clone().unwrap_or_else(|| "-".into());
        let tenant = self.tenant(&tenant_name);
        tenant.totals.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = tenant.admit(&tenant_name) {
            tenant.totals.refused.fetch_add(1, Ordering::Relaxed);
            self.observe(GatewayEvent::Failed { lm: None, tenant: &tenant_name, kind: e.kind() });
            return Err(e.with_tenant(tenant_name));
        }
        let lm = self.lm(&facts.model, base_of(&call.url));
        lm.totals.requests.fetch_add(1, Ordering::Relaxed);
        // The shared cache: deterministic requests only.
        let key = (call.cache && facts.deterministic).then(|| cache_key(&call));
        if let (Some(cache), Some(key)) = (&self.inner.cache, key) {
            if let Some(hit) = cache.get(&key) {
                lm.totals.cache_hits.fetch_add(1, Ordering::Relaxed);
                tenant.totals.cache_hits.fetch_add(1, Ordering::Relaxed);
                let usage = body_usage(&hit.body, facts.stream);
                let cost = usage.and_then(|(u, c)| self.cost(&facts.model, &u, c));
                if let Some(m) = &call.meter {
                    m.record(usage.map(|u| u.0), cost, true);
                }
                self.observe(GatewayEvent::Called {
                    lm: &lm.name,
                    tenant: &tenant_name,
                    usage: usage.map(|u| u.0),
                    cost_usd: cost,
                    cached: true,
                });
                return Ok(HttpReply {
                    status: hit.status,
                    headers: hit.headers.clone(),
                    body: ReplyBody::Full(hit.body.clone()),
                    cached: true,
                });
            }
        }
        let outcome = self.send_to(&lm, &call, &facts).await;
        let outcome = match outcome {
            Err(e) if self.falls_back(&lm, &e) => {
                let Some(target) = lm.policy.as_ref().and_then(|p| p.fallback.clone()) else { return Err(e) };
                warn!(lm = %lm.name, error = %e, fallback = %target.model, "LM call falls back");
                let call = fallback_call(&call, &target);
                let facts = body_facts(&call.body);
                let fb = self.lm(&facts.model, base_of(&call.url));
                lm.totals.fallbacks.fetch_add(1, Ordering::Relaxed);
                tenant.totals.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.send_to(&fb, &call, &facts).await.map(|r| (r, fb, facts))
            }
            other => other.map(|r| (r, lm.clone(), facts)),
        };
        let (reply, used_lm, facts) = match outcome {
            Ok(ok) => ok,
            Err(e) => {
                tenant.totals.errors.fetch_add(1, Ordering::Relaxed);
                if e.kind() == ErrorKind::RateLimited {
                    tenant.totals.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                self.observe(GatewayEvent::Failed { lm: Some(&lm.name), tenant: &tenant_name, kind: e.kind() });
                let e = e.with_lm(lm.name.clone());
                return Err(if tenant_name == "-" { e } else { e.with_tenant(tenant_name) });
            }
        };
        Ok(self.account(reply, used_lm, tenant, &call, &facts, key))
    }

    fn falls_back(&self, lm: &Lm, e: &Error) -> bool {
        lm.policy.as_ref().is_some_and(|p| p.fallback.is_some() && p.fallback_on.contains(&e.kind()))
    }

    fn cost(&self, model: &str, usage: &Usage, cached: u64) -> Option<f64> {
        cost_usd(&self.inner.config.prices, model, usage, cached)
    }

    /// Account a reply's usage and cost (at the end of a stream), cache it,
    /// correct the token bucket's estimate.
    fn account(
        &self,
        reply: HttpReply,
        lm: Arc<Lm>,
        tenant: Arc<Tenant>,
        call: &HttpCall,
        facts: &BodyFacts,
        key: Option<u64>,
    ) -> HttpReply {
        let ok = (200..300).contains(&reply.status);
        let gateway = self.clone();
        let tenant_name = call.tenant.clone().unwrap_or_else(|| "-".into());
        let meter = call.meter.clone();
        let model = facts.model.clone();
        let estimate = facts.estimate;
        let stream = facts.stream;
        let finish = move |body: &[u8]| {
            let usage = body_usage(body, stream);
            let cost = usage.and_then(|(u, c)| gateway.cost(&model, &u, c));
            if let Some((u, _)) = usage {
                lm.totals.used(&u, cost);
                tenant.totals.used(&u, cost);
                tenant.spend(u.total_tokens.max(u.prompt_tokens + u.completion_tokens), cost.unwrap_or(0.0));
                if let Some(b) = &lm.tokens {
                    b.adjust(estimate as f64 - (u.prompt_tokens + u.completion_tokens) as f64);
                }
            }
            if let Some(m) = &meter {
                m.record(usage.map(|u| u.0), cost, false);
            }
            gateway.observe(GatewayEvent::Called {
                lm: &lm.name,
                tenant: &tenant_name,
                usage: usage.map(|u| u.0),
                cost_usd: cost,
                cached: false,
            });
        };
        let cache = key.filter(|_| ok).and_then(|k| self.inner.cache.clone().map(|c| (c, k)));
        match reply.body {
            ReplyBody::Full(body) => {
                finish(&body);
                if let Some((c, k)) = cache {
                    c.insert(
                        k,
                        Arc::new(Cached { status: reply.status, headers: reply.headers.clone(), body: body.clone() }),
                    );
                }
                HttpReply { status: reply.status, headers: reply.headers, body: ReplyBody::Full(body), cached: false }
            }
            ReplyBody::Stream(inner) => {
                let headers = reply.headers.clone();
                // Pass chunks through as they come; account (and cache) the
                // whole when the stream ends, or when its reader stops (a
                // client stops at `[DONE]`, before the connection closes).
                let tally = StreamTally {
                    seen: Vec::new(),
                    finish: Some(Box::new(move |body: &[u8]| {
                        finish(body);
                        if let Some((c, k)) = cache {
                            if memchr::memmem::find(body, b"data: [DONE]").is_some() {
                                c.insert(
                                    k,
                                    Arc::new(Cached { status: reply.status, headers, body: body.to_vec().into() }),
                                );
                            }
                        }
                    })),
                };
                let headers_out = reply.headers.clone();
                let s = futures_util::stream::unfold((inner, tally), |(mut inner, mut tally)| async move {
                    match inner.next().await {
                        Some(Ok(chunk)) => {
                            tally.seen.extend_from_slice(&chunk);
                            Some((Ok(chunk), (inner, tally)))
                        }
                        Some(Err(e)) => {
                            tally.finish = None;
                            Some((Err(e), (inner, tally)))
                        }
                        None => {
                            tally.end();
                            None
                        }
                    }
                });
                HttpReply {
                    status: reply.status,
                    headers: headers_out,
                    body: ReplyBody::Stream(s.boxed()),
                    cached: false,
                }
            }
        }
    }

    /// The LM's limits, then attempts (retried, hedged) until one answers.
    async fn send_to(&self, lm: &Arc<Lm>, call: &HttpCall, facts: &BodyFacts) -> Result<HttpReply> {
        let limited = |what: &str, wait: Duration| {
            lm.totals.rate_limited.fetch_add(1, Ordering::Relaxed);
            Error::new(
                ErrorKind::RateLimited,
                format!(
                    "LM {} is at its {what} limit: the next slot is {:.0} ms away, past the request's deadline",
                    lm.name,
                    wait.as_secs_f64() * 1000.0
                ),
            )
            .with_retryable(true)
        };
        if lm.limited() {
            let now = self.inner.epoch.elapsed().as_millis() as u64 + 1;
            lm.last_call.store(now, Ordering::Relaxed);
        }
        let mut wait = Duration::ZERO;
        if let Some(b) = &lm.requests {
            wait = b.reserve(1.0, call.deadline).map_err(|w| limited("request-rate", w))?;
        }
        if let Some(b) = &lm.tokens {
            match b.reserve(facts.estimate as f64, call.deadline) {
                Ok(w) => wait = wait.max(w),
                Err(w) => {
                    if let Some(r) = &lm.requests {
                        r.adjust(1.0);
                    }
                    return Err(limited("token-rate", w));
                }
            }
        }
        if !wait.is_zero() {
            debug!(lm = %lm.name, ?wait, "LM call waits for its rate limit");
            tokio::time::sleep(wait).await;
        }
        let _slot = match &lm.slots {
            Some(sem) => {
                let acquire = sem.acquire();
                let permit = match call.deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), acquire).await.map_err(|_| {
                        Error::new(
                            ErrorKind::Overloaded,
                            format!("LM {} is at its concurrency cap until past the request's deadline", lm.name),
                        )
                        .with_retryable(true)
                    })?,
                    None => acquire.await,
                };
                Some(permit.map_err(|_| Error::new(ErrorKind::Internal, "the LM's concurrency gate closed"))?)
            }
            None => None,
        };
        let policy = lm.policy.as_ref();
        let max_retries = policy.and_then(|p| p.max_retries).unwrap_or(call.max_retries);
        let hedge = policy.and_then(|p| p.hedge_after_ms).filter(|_| !facts.stream).map(Duration::from_millis);
        let mut attempt = 0u32;
        loop {
            let result = match hedge {
                // Boxed: two attempts' futures would double the size of
                // every call's future, hedged or not.
                Some(after) => Box::pin(self.hedged(lm, call, after)).await,
                None => self.attempt(call, facts.stream).await,
            };
            let failed = match result {
                Ok(reply) => return Ok(reply),
                Err(f) => f,
            };
            if !failed.error.is_retryable() || attempt >= max_retries {
                lm.totals.errors.fetch_add(1, Ordering::Relaxed);
                return Err(failed.error);
            }
            let delay = failed.hint.unwrap_or_else(|| self.delay(attempt));
            if call.deadline.is_some_and(|d| Instant::now() + delay >= d) {
                warn!(lm = %lm.name, attempt, "no time left to retry the LM call");
                lm.totals.errors.fetch_add(1, Ordering::Relaxed);
                return Err(failed.error);
            }
            debug!(lm = %lm.name, attempt, ?delay, error = %failed.error, "retrying LM call");
            lm.totals.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let (base, max) = self.inner.backoff;
        let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
        // Half fixed, half random: retries spread out but never collapse to zero.
        let half = exp / 2;
        half + Duration::from_micros(fastrand::u64(0..=half.as_micros() as u64))
    }

    /// The first of two identical attempts to answer, the second started
    /// `after` the first if it has not answered by then.
    async fn hedged(&self, lm: &Lm, call: &HttpCall, after: Duration) -> std::result::Result<HttpReply, Failed> {
        let first = self.attempt(call, false);
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => return r,
            _ = tokio::time::sleep(after) => {}
        }
        debug!(lm = %lm.name, ?after, "LM call hedged");
        let second = self.attempt(call, false);
        tokio::pin!(second);
        tokio::select! {
            r = &mut first => match r {
                Ok(reply) => Ok(reply),
                Err(_) => second.await,
            },
            r = &mut second => match r {
                Ok(reply) => Ok(reply),
                Err(_) => first.await,
            },
        }
    }

    /// One HTTP attempt: a reply to pass on, or a failure to retry or report.
    async fn attempt(&self, call: &HttpCall, stream: bool) -> std::result::Result<HttpReply, Failed> {
        let started = Instant::now();
        let remaining = match call.deadline {
            Some(d) => match d.checked_duration_since(started) {
                Some(r) if !r.is_zero() => Some(r),
                _ => {
                    return Err(Failed {
                        error: Error::new(ErrorKind::Timeout, "deadline passed before the LM call"),
                        hint: None,
                    })
                }
            },
            None => None,
        };
        let timeout = match (call.attempt_timeout, remaining) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        let exchange = self.exchange(call, stream);
        let sent = match timeout {
            // A stream's head must come within the time left, its body is
            // read by the caller, cut at the deadline; any other answer
            // must come whole within it.
            Some(t) => match tokio::time::timeout(t, exchange).await {
                Ok(r) => r,
                Err(_) if stream => {
                    Err(Error::new(ErrorKind::Timeout, "LM stream did not start in time").with_retryable(true))
                }
                Err(_) => {
                    Err(Error::new(ErrorKind::Timeout, format!("LM call to {} ran past its time limit", call.url))
                        .with_retryable(true))
                }
            },
            None => exchange.await,
        };
        let (status, headers, body) = match sent {
            Ok(r) => r,
            Err(error) => {
                let deadline_hit = call.deadline.is_some_and(|d| Instant::now() >= d);
                let error = if error.kind() == ErrorKind::Timeout && deadline_hit {
                    Error::new(ErrorKind::Timeout, format!("LM call to {} ran past the deadline", call.url))
                } else {
                    error
                };
                return Err(Failed { error, hint: None });
            }
        };
        if (200..300).contains(&status) {
            let body = match body {
                ReplyBody::Stream(s) => {
                    let deadline = call.deadline;
                    ReplyBody::Stream(
                        s.take_until(async move {
                            match deadline {
                                Some(d) => tokio::time::sleep_until(d.into()).await,
                                None => futures_util::future::pending::<()>().await,
                            }
                        })
                        .boxed(),
                    )
                }
                whole => whole,
            };
            return Ok(HttpReply { status, headers, body, cached: false });
        }
        let (kind, retryable) = status_kind(status);
        let hint = header(&headers, "retry-after").and_then(retry_after);
        if retryable {
            let text = match &body {
                ReplyBody::Full(b) => String::from_utf8_lossy(b).chars().take(500).collect(),
                ReplyBody::Stream(_) => String::new(),
            };
            let error = Error::new(kind, format!("LM service answered {status}: {text}")).with_retryable(true);
            return Err(Failed { error, hint });
        }
        // Not retried: passed on as the service sent it, for the caller
        // (DSPy, or the native client) to read as it reads such answers.
        Ok(HttpReply { status, headers, body, cached: false })
    }

    /// Send `call` and read its answer: its status, headers, and body —
    /// streamed when `stream` and the status is 2xx, else whole (a body that
    /// breaks off is empty then: the status says what happened).
    async fn exchange(&self, call: &HttpCall, stream: bool) -> Result<(u16, Vec<(String, String)>, ReplyBody)> {
        if let Some((h1, target)) = self.inner.h1.as_ref().and_then(|h1| Some((h1, h1.target(&call.url)?))) {
            let (head, body) = h1.post(&target, &call.url, &call.headers, &call.body).await?;
            let ok = (200..300).contains(&head.status);
            let body = match (stream && ok, ok) {
                (true, _) => ReplyBody::Stream(body.into_stream()),
                (false, true) => ReplyBody::Full(body.bytes().await?),
                (false, false) => ReplyBody::Full(body.bytes().await.unwrap_or_default()),
            };
            return Ok((head.status, head.headers, body));
        }
        // Boxed: the common path's future stays small (it is moved as a
        // call's future is built).
        Box::pin(self.exchange_reqwest(call, stream)).await
    }

    /// [`Gateway::exchange`] through reqwest.
    async fn exchange_reqwest(&self, call: &HttpCall, stream: bool) -> Result<(u16, Vec<(String, String)>, ReplyBody)> {
        let mut req = self.inner.http.post(&call.url).body(call.body.clone());
        for (k, v) in &call.headers {
            // The client sets its own framing headers.
            if !(k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("host")) {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let resp = req.send().await.map_err(|e| transport_error(e, &call.url))?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string())))
            .collect();
        let ok = (200..300).contains(&status);
        let body = if stream && ok {
            let url = call.url.clone();
            ReplyBody::Stream(resp.bytes_stream().map(move |c| c.map_err(|e| transport_error(e, &url))).boxed())
        } else if ok {
            ReplyBody::Full(resp.bytes().await.map_err(|e| transport_error(e, &call.url))?)
        } else {
            ReplyBody::Full(resp.bytes().await.unwrap_or_default())
        };
        Ok((status, headers, body))
    }

    /// Per LM and per tenant: requests, cache hits, retries, refusals,
    /// tokens and cost.
    pub fn stats(&self) -> GatewayStats {
        let lms = self.inner.lms.read();
        let tenants = self.inner.tenants.read();
        let peer_lms = self.inner.peer_lms.read();
        GatewayStats {
            lms: lms.iter().map(|(k, v)| (k.clone(), v.totals.snapshot())).collect(),
            tenants: tenants.iter().map(|(k, v)| (k.clone(), v.totals.snapshot())).collect(),
            cached_responses: self.inner.cache.as_ref().map_or(0, |c| c.len()),
            spend: tenants
                .iter()
                .filter_map(|(k, t)| {
                    let current = Tenant::period(t.budget.as_ref()?, unix_secs());
                    let here = t.spent_now().unwrap_or(current);
                    let peers = *t.peers.lock();
                    Some((k.clone(), if peers.same_period(&here) { add_spend(here, peers) } else { here }))
                })
                .collect(),
            lm_nodes: lms
                .iter()
                .filter(|(_, lm)| lm.limited())
                .map(|(k, _)| (k.clone(), peer_lms.get(k).map_or(1, |n| n + 1)))
                .collect(),
        }
    }

    // -------------------------------------------------------- cluster

    /// This node's part of its cluster's LM traffic: each budgeted tenant's
    /// spend in its current period, and the rate-limited LMs called within
    /// `active_within`. The cluster publishes it in its key-value store.
    pub fn share(&self, active_within: Duration) -> GatewayShare {
        let now = self.inner.epoch.elapsed();
        let recent = |lm: &Lm| match lm.last_call.load(Ordering::Relaxed) {
            0 => false,
            at => now.saturating_sub(Duration::from_millis(at - 1)) < active_within,
        };
        GatewayShare {
            spend: self.inner.tenants.read().iter().filter_map(|(k, t)| Some((k.clone(), t.spent_now()?))).collect(),
            active_lms: self.inner.lms.read().values().filter(|lm| recent(lm)).map(|lm| lm.name.clone()).collect(),
        }
    }

    /// What the cluster's other nodes published: their spend counts against
    /// each tenant's budget here, and the limits of an LM are split evenly
    /// among the live nodes calling it (pass a node that is gone with no
    /// `active_lms`: its spend still counts until its period ends).
    pub fn set_peers(&self, peers: &[GatewayShare]) {
        let mut spend: BTreeMap<&str, TenantSpend> = BTreeMap::new();
        let mut active: BTreeMap<String, usize> = BTreeMap::new();
        for peer in peers {
            for (tenant, s) in &peer.spend {
                spend
                    .entry(tenant.as_str())
                    .and_modify(|sum| {
                        if sum.same_period(s) {
                            *sum = add_spend(*sum, *s);
                        } else if (s.period + 1) * s.period_secs > (sum.period + 1) * sum.period_secs {
                            // A later period than the sum's: it starts over.
                            *sum = *s;
                        }
                    })
                    .or_insert(*s);
            }
            for lm in &peer.active_lms {
                *active.entry(lm.clone()).or_default() += 1;
            }
        }
        for t in spend.keys() {
            self.tenant(t);
        }
        let tenants: Vec<(String, Arc<Tenant>)> =
            self.inner.tenants.read().iter().map(|(k, t)| (k.clone(), t.clone())).collect();
        for (name, tenant) in tenants {
            *tenant.peers.lock() = spend.get(name.as_str()).copied().unwrap_or_default();
        }
        for (name, lm) in self.inner.lms.read().iter() {
            lm.share(active.get(name).map_or(1, |n| n + 1));
        }
        *self.inner.peer_lms.write() = active;
    }

    /// Take back this node's own spend from the cluster's store (a node that
    /// restarted, or joined again): per tenant, the larger of what it holds
    /// and what the store says, within the current period.
    pub fn restore(&self, own: &GatewayShare) {
        for (name, saved) in &own.spend {
            let tenant = self.tenant(name);
            let Some(b) = &tenant.budget else { continue };
            let current = Tenant::period(b, unix_secs());
            if !saved.same_period(&current) {
                continue;
            }
            let mut s = tenant.spent.lock();
            if !s.same_period(&current) {
                *s = current;
            }
            s.requests = s.requests.max(saved.requests);
            s.tokens = s.tokens.max(saved.tokens);
            s.usd = s.usd.max(saved.usd);
        }
    }
}

fn transport_error(e: reqwest::Error, url: &str) -> Error {
    if e.is_timeout() {
        return Error::new(ErrorKind::Timeout, format!("LM call to {url} ran past its time limit"))
            .with_retryable(true);
    }
    // reqwest's message is generic ("error sending request"); the cause
    // (connection refused, too many open files, ...) is in its sources.
    let mut message = format!("request to {url} failed: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    connection_error(message, &e)
}

/// A failed connection to an LM: retryable (another attempt may find the
/// service up), unless `cause` is the LM's certificate failing verification
/// — no retry makes a certificate trusted.
pub(super) fn connection_error(mut message: String, cause: &(dyn std::error::Error + 'static)) -> Error {
    if certificate_refused(cause) {
        message.push_str(" (the gateway does not trust the LM's certificate: add its CA with gateway.ca_file)");
        return Error::new(ErrorKind::Transport, message).with_retryable(false);
    }
    Error::new(ErrorKind::Transport, message).with_retryable(true)
}

/// Whether `e`, or an error it wraps, is a certificate refused.
#[cfg(feature = "tls")]
fn certificate_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_rustls::rustls;
    let mut next = Some(e);
    while let Some(err) = next {
        if matches!(err.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        // An io::Error's `source` skips the error it wraps (sometimes
        // another io::Error): look inside.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if certificate_refused(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

#[cfg(not(feature = "tls"))]
fn certificate_refused(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// Usage from a reply body: a completion's JSON, or the last SSE event with
/// a `usage` member.
fn body_usage(body: &[u8], stream: bool) -> Option<(Usage, u64)> {
    if !stream {
        return usage_of(body);
    }
    let mut d = SseDecoder::default();
    let mut events = d.push(body);
    events.extend(d.finish());
    events.iter().rev().find_map(|e| usage_of(e.as_bytes()))
}

/// `call` aimed at the fallback LM: its URL, model and key.
fn fallback_call(call: &HttpCall, target: &dspex_core::LmConfig) -> HttpCall {
    let mut call = call.clone();
    let path = call.url.strip_prefix(base_of(&call.url)).unwrap_or("/chat/completions").to_string();
    if let Some(base) = &target.base_url {
        call.url = format!("{}{path}", base.trim_end_matches('/'));
    }
    if let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&call.body) {
        let model = target.model.strip_prefix("openai/").unwrap_or(&target.model);
        body.insert("model".into(), Value::String(model.to_string()));
        call.body = Value::Object(body).to_string().into();
    }
    call.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
    if let Some(key) = &target.api_key {
        // An unresolved key sends none: the fallback answers 401, classified.
        if key.resolved() {
            call.headers.push(("Authorization".into(), format!("Bearer {}", key.expose())));
        }
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let g = Gateway::passthrough().with_backoff(Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 0..8 {
            let d = g.delay(attempt);
            let exp = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_secs(1));
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn a_shared_bucket_runs_at_its_part_of_the_rate() {
        let b = Bucket::new(10.0, 4.0);
        b.share(2);
        assert_eq!(b.rate(), 5.0);
        assert_eq!(b.reserve(2.0, None), Ok(Duration::ZERO), "half the burst");
        let next = b.reserve(1.0, None).unwrap();
        assert!(next > Duration::from_millis(180) && next <= Duration::from_millis(200), "{next:?}");
        b.share(1);
        assert_eq!(b.rate(), 10.0);
    }

    fn budgeted(requests: u64) -> Gateway {
        let mut config = GatewayConfig::default();
        config.budgets.insert("t".into(), BudgetConfig::per(3600).requests(requests));
        config.lms.push(LmPolicy::new("m").requests_per_sec(10.0, 4));
        Gateway::new(config).unwrap()
    }

    fn spend_now(requests: u64) -> TenantSpend {
        TenantSpend { period_secs: 3600, period: unix_secs() / 3600, requests, tokens: 0, usd: 0.0 }
    }

    #[test]
    fn peers_spend_counts_against_a_budget_in_the_same_period_only() {
        let g = budgeted(3);
        let peer = |s: TenantSpend| GatewayShare { spend: [("t".to_string(), s)].into(), active_lms: vec![] };
        g.set_peers(&[peer(spend_now(1)), peer(spend_now(1))]);
        g.tenant("t").admit("t").unwrap();
        let err = g.tenant("t").admit("t").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BudgetExceeded);
        assert!(err.message().contains("3 of 3"), "{err}");
        assert_eq!(g.stats().spend["t"].requests, 3, "here and elsewhere");
        assert_eq!(g.share(Duration::from_secs(1)).spend["t"].requests, 1, "only this node's own");
        // Last period's spend is over.
        let old = TenantSpend { period: spend_now(0).period - 1, ..spend_now(5) };
        g.set_peers(&[peer(old)]);
        g.tenant("t").admit("t").unwrap();
        // A peer that went away no longer counts.
        g.set_peers(&[]);
        assert_eq!(g.stats().spend["t"].requests, 2);
    }

    #[test]
    fn a_restarted_node_takes_back_its_own_spend() {
        let g = budgeted(3);
        let saved = GatewayShare { spend: [("t".to_string(), spend_now(3))].into(), active_lms: vec![] };
        g.restore(&saved);
        assert_eq!(g.tenant("t").admit("t").unwrap_err().kind(), ErrorKind::BudgetExceeded);
        assert_eq!(g.share(Duration::from_secs(1)), saved);
    }

    #[test]
    fn nodes_calling_a_limited_lm_split_its_rate() {
        let g = budgeted(3);
        let lm = g.lm("m", "http://lm");
        let name = lm.name.clone();
        assert!(g.share(Duration::from_secs(60)).active_lms.is_empty(), "not called yet");
        lm.last_call.store(g.inner.epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        assert_eq!(g.share(Duration::from_secs(60)).active_lms, vec![name.clone()]);
        let active = GatewayShare { spend: BTreeMap::new(), active_lms: vec![name.clone()] };
        g.set_peers(&[active.clone(), active.clone(), GatewayShare::default()]);
        assert_eq!(lm.requests.as_ref().map(Bucket::rate), Some(10.0 / 3.0));
        assert_eq!(g.stats().lm_nodes[&name], 3);
        // An LM first called after the peers spoke starts at its share.
        g.set_peers(&[GatewayShare { spend: BTreeMap::new(), active_lms: vec!["m@http://other".into()] }]);
        assert_eq!(lm.requests.as_ref().map(Bucket::rate), Some(10.0));
        let other = g.lm("m", "http://other");
        assert_eq!(other.requests.as_ref().map(Bucket::rate), Some(5.0));
    }

    #[test]
    fn buckets_lend_in_order_and_refuse_past_the_deadline() {
        let b = Bucket::new(10.0, 2.0);
        assert_eq!(b.reserve(1.0, None), Ok(Duration::ZERO));
        assert_eq!(b.reserve(1.0, None), Ok(Duration::ZERO));
        let third = b.reserve(1.0, None).unwrap();
        assert!(third > Duration::from_millis(90) && third <= Duration::from_millis(100), "{third:?}");
        let soon = Some(Instant::now() + Duration::from_millis(50));
        let refused = b.reserve(1.0, soon).unwrap_err();
        assert!(refused > Duration::from_millis(150), "{refused:?}");
        b.adjust(10.0);
        assert_eq!(b.reserve(1.0, None), Ok(Duration::ZERO), "refunds refill up to the burst");
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        let later = unix_secs() + 5;
        let date = {
            // Format `later` as an IMF-fixdate, the inverse of parse_http_date.
            let days = (later / 86_400) as i64;
            let secs = later % 86_400;
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
            format!(
                "Mon, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
                month[(m - 1) as usize],
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            )
        };
        let d = retry_after(&date).unwrap();
        assert!(d >= Duration::from_secs(3) && d <= Duration::from_secs(5), "{date}: {d:?}");
        assert_eq!(retry_after("soon"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }

    #[test]
    fn bodies_are_keyed_canonically() {
        let a = HttpCall::new("http://x/v1/chat/completions", vec![], r#"{"model":"m","temperature":0,"messages":[]}"#);
        let b = HttpCall::new(
            "http://x/v1/chat/completions",
            vec![],
            r#"{"messages": [], "temperature": 0, "model": "m"}"#,
        );
        assert_eq!(cache_key(&a), cache_key(&b));
        let other_key = HttpCall::new(
            "http://x/v1/chat/completions",
            vec![("Authorization".into(), "Bearer other".into())],
            r#"{"model":"m","temperature":0,"messages":[]}"#,
        );
        assert_ne!(cache_key(&a), cache_key(&other_key), "a credential's answers are its own");
        let f = body_facts(br#"{"model":"m","temperature":0.0,"max_completion_tokens":100,"messages":[{"role":"user","content":"abcdefgh"}]}"#);
        assert!(f.deterministic && !f.stream);
        assert!(f.estimate > 100 && f.estimate < 140, "{}", f.estimate);
        assert!(body_facts(br#"{"model":"m","seed":7}"#).deterministic);
        assert!(!body_facts(br#"{"model":"m","temperature":0.7}"#).deterministic);
    }

    #[test]
    fn costs_follow_the_price_table() {
        let usage = Usage { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 };
        let cost = cost_usd(&BTreeMap::new(), "openai/gpt-4o-mini", &usage, 0).unwrap();
        assert!((cost - 4.5e-6).abs() < 1e-12, "DSPy prices this call at 4.5e-06: {cost}");
        let mine = BTreeMap::from([(
            "local".to_string(),
            Price { input_per_token: 1e-6, output_per_token: 2e-6, cache_read_per_token: Some(5e-7) },
        )]);
        let cost = cost_usd(&mine, "local", &usage, 4).unwrap();
        assert!((cost - (6e-6 + 2e-6 + 10e-6)).abs() < 1e-12, "{cost}");
        assert_eq!(cost_usd(&mine, "unknown-model", &usage, 0), None);
    }

    #[test]
    fn usage_is_read_from_bodies_and_streams() {
        let body = br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":1}}}"#;
        assert_eq!(body_usage(body, false).map(|u| (u.0.total_tokens, u.1)), Some((5, 1)));
        let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}\n\ndata: [DONE]\n\n";
        assert_eq!(body_usage(sse, true).map(|u| u.0.prompt_tokens), Some(4));
        assert_eq!(body_usage(b"not json", false), None);
    }

    #[test]
    fn meters_sum_calls() {
        let m = CallMeter::new();
        m.record(Some(Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }), Some(1.5e-6), false);
        m.record(Some(Usage { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }), None, true);
        let r = m.reading();
        assert_eq!((r.calls, r.cached, r.usage.total_tokens), (2, 1, 7));
        assert!((r.cost_usd.unwrap() - 1.5e-6).abs() < 1e-12);
        assert_eq!(CallMeter::new().reading().cost_usd, None);
    }
}
