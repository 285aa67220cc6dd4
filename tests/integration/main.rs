//! Integration tests over the public API, in one binary (shared helpers in `support`).

mod bridge;
mod chaos;
mod cli;
mod dspy_parity;
mod lm_client;
mod parity;
mod robustness;
mod runtime;
mod supervision;
mod support;
