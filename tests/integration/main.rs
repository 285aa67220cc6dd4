//! Integration tests over the public API, in one binary (shared helpers in `support`).

mod dspy_parity;
mod lm_client;
mod parity;
mod support;
