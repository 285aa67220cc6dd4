//! # dspex-native
//!
//! The native engine: everything DSPy does around an LM call, in Rust, with
//! byte-for-byte the same results.
//!
//! - [`parse_signature`]: DSPy's string-signature syntax, errors included.
//! - [`adapter`]: `ChatAdapter` and `JSONAdapter` formatting and parsing.
//! - [`schema`]: the JSON schema DSPy shows the LM for typed outputs.
//! - [`validate`]: checking values against field types.
//! - [`template`]: user-defined prompt templates.
//! - [`metrics`]: `dspy.evaluate` metrics.
//! - [`lm`]: the `LanguageModel` trait and an OpenAI-compatible client.
//! - [`Predict`] / [`ChainOfThought`]: native modules, including programs saved by DSPy.
//!
//! Anything DSPy can do that this engine does not model exactly fails with
//! [`ErrorKind::Unsupported`](dspex_core::ErrorKind::Unsupported): the router
//! runs such programs in Python instead.
// `unsafe` is confined to `scan` (SSE2 byte scans on the parse hot path),
// which opts back in; everything else is checked safe code.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod adapter;
pub mod lm;
pub mod metrics;
mod predict;
mod pyemu;
mod scan;
pub mod schema;
pub mod signature;
pub mod template;
pub mod validate;

/// Python's text rules (`str()`, `repr()`, `json.dumps`, `str.strip()`, ...),
/// which every prompt byte depends on. The rest of the engine's Python
/// emulation (parsing, `json_repair`, pydantic) stays internal.
pub use pyemu::text as py;

pub use predict::{
    chain_of_thought_signature, ChainOfThought, InputCheck, NativeProgram, Predict, PredictEvent, PredictOptions,
    PredictStream,
};
pub use signature::{parse_signature, parse_signature_uncached, parse_type, signature_from_class, signature_from_spec};

/// The pydantic minor version whose messages (and documentation links) the
/// engine reproduces: the one DSPy 3.4.1 runs with in this project's pinned
/// environment.
pub const PYDANTIC_DOCS_VERSION: &str = "2.14";

/// The DSPy version this engine is checked against.
pub const DSPY_VERSION: &str = "3.4.1";
