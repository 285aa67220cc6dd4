//! The result cache for deterministic requests.
//!
//! A request is deterministic when its LM settings pin the temperature to 0
//! and ask for one generation; only those are cached. Keys are canonical:
//! the same program, inputs and LM settings give the same key whatever the
//! order of their JSON maps. The cache is bounded by entry count (evicting
//! by S3-FIFO, so entries that are read again stay) and entries expire
//! after a TTL.

use std::time::{Duration, Instant};

use dspex_core::Value;

/// A canonical cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => canonical_map(map, out),
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

impl CacheKey {
    /// The key for an operation over these canonicalised parts.
    pub fn new(op: &str, parts: &[&Value]) -> CacheKey {
        CacheKey::extend("", op, parts)
    }

    /// A key that starts with another key's text (a program's, computed once).
    pub fn extend(prefix: &str, op: &str, parts: &[&Value]) -> CacheKey {
        let mut s = String::with_capacity(prefix.len() + 128);
        s.push_str(prefix);
        s.push('\u{1e}');
        s.push_str(op);
        for p in parts {
            s.push('\u{1f}');
            canonical(p, &mut s);
        }
        CacheKey(s)
    }

    /// A key's canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key for a map of values (canonical, like [`CacheKey::new`]).
    pub fn push_map(&mut self, map: &dspex_core::Map) {
        self.0.push('\u{1f}');
        canonical_map(map, &mut self.0);
    }
}

fn canonical_map(map: &dspex_core::Map, out: &mut String) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        canonical(&map[k.as_str()], out);
    }
    out.push('}');
}

/// Whether call settings make a request deterministic (temperature 0, one generation).
pub fn is_deterministic(params: &[&serde_json::Map<String, Value>]) -> bool {
    let mut temperature = None;
    let mut n = None;
    for p in params {
        if let Some(t) = p.get("temperature").and_then(Value::as_f64) {
            temperature = Some(t);
        }
        if let Some(x) = p.get("n").and_then(Value::as_u64) {
            n = Some(x);
        }
    }
    temperature == Some(0.0) && n.unwrap_or(1) <= 1
}

/// A bounded, expiring map from [`CacheKey`] to results, on quick_cache:
/// S3-FIFO eviction (an entry read since it came in outlives one-off
/// entries), sharded locks, and a TTL checked on every read.
pub struct ResultCache<V> {
    entries: quick_cache::sync::Cache<CacheKey, (Instant, V)>,
    ttl: Duration,
}

impl<V> std::fmt::Debug for ResultCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl<V: Clone> ResultCache<V> {
    /// A cache of at most `capacity` entries living `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> ResultCache<V> {
        ResultCache { entries: quick_cache::sync::Cache::new(capacity.max(1)), ttl }
    }

    /// A live entry (an expired one is dropped).
    pub fn get(&self, key: &CacheKey) -> Option<V> {
        let (at, value) = self.entries.get(key)?;
        if at.elapsed() < self.ttl {
            return Some(value);
        }
        self.entries.remove_if(key, |(stored, _)| *stored == at);
        None
    }

    /// Store an entry (eviction makes room when the cache is full).
    pub fn put(&self, key: CacheKey, value: V) {
        self.entries.insert(key, (Instant::now(), value));
    }

    /// Entries stored (expired ones included until read or evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drop everything.
    pub fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_ignore_map_order() {
        let a = CacheKey::new("predict", &[&json!({"a": 1, "b": {"x": [1, 2], "y": null}})]);
        let b = CacheKey::new("predict", &[&json!({"b": {"y": null, "x": [1, 2]}, "a": 1})]);
        assert_eq!(a, b);
        assert_ne!(a, CacheKey::new("cot", &[&json!({"a": 1, "b": {"x": [1, 2], "y": null}})]));
    }

    #[test]
    fn bounded_and_expiring() {
        let c: ResultCache<u32> = ResultCache::new(16, Duration::from_millis(50));
        for i in 0..100 {
            c.put(CacheKey::new("k", &[&json!(i)]), i);
        }
        assert!(c.len() <= 16);
        assert_eq!(c.get(&CacheKey::new("k", &[&json!(99)])), Some(99));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&CacheKey::new("k", &[&json!(99)])), None);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn entries_read_again_survive_a_scan() {
        let c: ResultCache<u32> = ResultCache::new(64, Duration::from_secs(60));
        let hot = CacheKey::new("k", &[&json!("hot")]);
        c.put(hot.clone(), 7);
        for i in 0..1000 {
            assert_eq!(c.get(&hot), Some(7), "after {i} one-off entries");
            c.put(CacheKey::new("k", &[&json!(i)]), i);
        }
        assert!(c.len() <= 64);
    }

    #[test]
    fn determinism() {
        let t0 = json!({"temperature": 0.0}).as_object().cloned().unwrap();
        let n2 = json!({"n": 2}).as_object().cloned().unwrap();
        let t1 = json!({"temperature": 0.7}).as_object().cloned().unwrap();
        assert!(is_deterministic(&[&t0]));
        assert!(!is_deterministic(&[&t0, &n2]));
        assert!(!is_deterministic(&[&t0, &t1]));
        assert!(!is_deterministic(&[]));
    }
}
