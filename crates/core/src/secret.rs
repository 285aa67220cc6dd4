//! Secrets (API keys, tokens) that never leave the process as text.
//!
//! A [`Secret`] prints as `Secret(***)` and serializes as its fingerprint,
//! `secret:sha256:` and the first 16 hex digits of its SHA-256 — in session
//! snapshots, the cluster's store, messages between nodes, console and HTTP
//! replies alike. Only [`Secret::expose`] gives the text, for the one place
//! that sends it (an `Authorization` header, a worker's LM settings).
//!
//! Reading a fingerprint back gives the secret again when this process
//! knows it: every secret it was given — in configuration, the environment
//! or a request — is remembered (in memory only) under its fingerprint. A
//! fingerprint it does not know (a key given to a process that has since
//! restarted, or to another node) reads back as an *unresolved* secret,
//! which refuses to be used with an error that says so.
//!
//! ```
//! use dspex_core::Secret;
//!
//! let key = Secret::new("sk-live-1234567890");
//! let text = serde_json::to_string(&key).unwrap();
//! assert!(text.starts_with("\"secret:sha256:") && !text.contains("1234567890"));
//! let back: Secret = serde_json::from_str(&text).unwrap();
//! assert_eq!(back.expose(), "sk-live-1234567890");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

const PREFIX: &str = "secret:sha256:";

/// A secret string: never shown, never serialized as text (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct Secret {
    /// `None`: only the fingerprint is known here.
    value: Option<Arc<str>>,
    fingerprint: Arc<str>,
}

/// The secrets this process was given, by fingerprint. Bounded: past
/// [`KEEP`] the map is cleared (secrets in live configurations stay usable;
/// only reading *their fingerprints* back would then fail).
const KEEP: usize = 4096;

fn known() -> &'static Mutex<HashMap<Arc<str>, Arc<str>>> {
    static KNOWN: OnceLock<Mutex<HashMap<Arc<str>, Arc<str>>>> = OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

fn fingerprint_of(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(PREFIX.len() + 16);
    out.push_str(PREFIX);
    for b in &digest[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Secret {
    /// Wrap a secret (and remember it, so its fingerprint reads back).
    pub fn new(value: impl Into<String>) -> Secret {
        let value: Arc<str> = Arc::from(value.into());
        let fingerprint: Arc<str> = Arc::from(fingerprint_of(&value));
        let mut known = known().lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KEEP && !known.contains_key(&fingerprint) {
            known.clear();
        }
        known.insert(fingerprint.clone(), value.clone());
        Secret { value: Some(value), fingerprint }
    }

    /// The secret itself; use only where it is sent. Empty for an
    /// unresolved secret (check [`Secret::resolved`] first, or use
    /// [`Secret::require`]).
    pub fn expose(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    /// Whether this process knows the secret (not only its fingerprint).
    pub fn resolved(&self) -> bool {
        self.value.is_some()
    }

    /// The secret, or an error naming `what` when only its fingerprint is
    /// known here.
    pub fn require(&self, what: &str) -> crate::Result<&str> {
        self.value.as_deref().ok_or_else(|| {
            crate::Error::new(
                crate::ErrorKind::Config,
                format!(
                    "{what} is not known in this process (only its fingerprint {} is): secrets are never \
                     written to snapshots, the cluster's store or messages between nodes, so give it again \
                     (or configure it on every node)",
                    self.fingerprint
                ),
            )
        })
    }

    /// Its fingerprint: `secret:sha256:` and 16 hex digits.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.fingerprint)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Secret, D::Error> {
        let text = String::deserialize(d)?;
        if !text.starts_with(PREFIX) {
            return Ok(Secret::new(text));
        }
        let fingerprint: Arc<str> = Arc::from(text);
        let value = known().lock().unwrap_or_else(|e| e.into_inner()).get(&fingerprint).cloned();
        Ok(Secret { value, fingerprint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_travels_as_its_fingerprint_and_comes_back_when_known() {
        let s = Secret::new("sk-test-known-0001");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("known-0001"), "{json}");
        assert_eq!(json.len(), 2 + PREFIX.len() + 16);
        let back: Secret = serde_json::from_str(&json).unwrap();
        assert!(back.resolved());
        assert_eq!(back.expose(), "sk-test-known-0001");
        assert_eq!(back, s);
        // The same text gives the same fingerprint (other nodes resolve it).
        assert_eq!(Secret::new("sk-test-known-0001").fingerprint(), s.fingerprint());
    }

    #[test]
    fn an_unknown_fingerprint_reads_back_unresolved_and_refuses_use() {
        let text = format!("\"{PREFIX}00112233aabbccdd\"");
        let s: Secret = serde_json::from_str(&text).unwrap();
        assert!(!s.resolved());
        assert_eq!(s.expose(), "");
        let err = s.require("the LM's API key").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert!(err.message().contains("00112233aabbccdd"), "{err}");
        // Plain text reads as the secret itself (a config file, a request).
        let plain: Secret = serde_json::from_str("\"sk-plain-2\"").unwrap();
        assert_eq!(plain.require("key").unwrap(), "sk-plain-2");
    }
}
