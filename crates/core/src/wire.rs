//! Serde helpers for what arrives from other programs: numbers in JSON,
//! and MessagePack with bounded nesting.
//!
//! JSON has one number type: `30.0` is as whole as `30` (JSON Schema's
//! `integer` accepts both), so a whole-number field takes either and
//! refuses fractions and negatives with a clear message; a whole number
//! past `u64` is read as `u64::MAX`.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Options {
//!     #[serde(default, with = "dspex_core::wire::opt_millis")]
//!     timeout_ms: Option<std::time::Duration>,
//! }
//!
//! let o: Options = serde_json::from_str(r#"{"timeout_ms": 250.0}"#).unwrap();
//! assert_eq!(o.timeout_ms, Some(std::time::Duration::from_millis(250)));
//! assert!(serde_json::from_str::<Options>(r#"{"timeout_ms": 2.5}"#).is_err());
//! ```

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A whole, non-negative JSON number as `u64`.
fn whole<'de, D: Deserializer<'de>>(v: serde_json::Number) -> Result<u64, D::Error> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        // Past u64 (only a float can be): the largest there is, which a
        // deadline or an expiry then caps.
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(if f >= u64::MAX as f64 { u64::MAX } else { f as u64 }),
        _ => Err(D::Error::custom(format!("expected a whole number of at least 0, got {v}"))),
    }
}

/// `Option<u64>` from a whole JSON number (or null).
pub mod opt_whole {
    use super::*;

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?.map(whole::<D>).transpose()
    }

    /// Serialize.
    pub fn serialize<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(v, s)
    }
}

/// `Option<usize>` from a whole JSON number (or null).
pub mod opt_whole_usize {
    use super::*;

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        match super::opt_whole::deserialize(d)? {
            None => Ok(None),
            Some(n) => usize::try_from(n).map(Some).map_err(|_| D::Error::custom(format!("{n} is too large"))),
        }
    }

    /// Serialize.
    pub fn serialize<S: serde::Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(v, s)
    }
}

/// `Option<Duration>` as whole milliseconds.
pub mod opt_millis {
    use super::*;
    use std::time::Duration;

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(super::opt_whole::deserialize(d)?.map(Duration::from_millis))
    }

    /// Serialize.
    pub fn serialize<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        let ms = v.map(|d| d.as_millis().min(u64::MAX as u128) as u64);
        serde::Serialize::serialize(&ms, s)
    }
}

/// How deeply a MessagePack payload from another process (a worker, a
/// cluster peer) may nest maps and arrays: serde_json's own limit. Decoding
/// recurses, so a peer's `[[[[…` must be refused before it overflows the
/// stack.
pub const MAX_MSGPACK_DEPTH: usize = 128;

/// Decode MessagePack from another process, nesting at most
/// [`MAX_MSGPACK_DEPTH`] deep.
///
/// ```
/// let deep = [vec![0x91u8; 1000], vec![0xc0]].concat(); // [[[…[nil]…]]]
/// assert!(dspex_core::wire::from_msgpack::<serde_json::Value>(&deep).is_err());
/// let v: serde_json::Value = dspex_core::wire::from_msgpack(&[0x92, 0x01, 0xc3]).unwrap();
/// assert_eq!(v, serde_json::json!([1, true]));
/// ```
pub fn from_msgpack<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_MSGPACK_DEPTH);
    T::deserialize(&mut de)
}
