//! Integration tests over the public API, in one binary (shared helpers in `support`).

mod bridge;
mod chaos;
mod cli;
#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "cluster")]
mod cluster_sessions;
mod console;
mod docs;
mod dspy_parity;
mod exhaustion;
mod fuzz_corpus;
mod gateway;
mod http;
mod lm_client;
mod lm_settings;
mod metrics;
mod modules;
mod native_only;
#[cfg(feature = "cluster")]
mod nats;
mod operations;
mod optimize;
mod optimizers;
#[cfg(all(feature = "otel", feature = "http"))]
mod otel;
mod parity;
mod pipelines;
mod real_lm;
mod robustness;
mod runtime;
mod secrets;
mod sessions;
mod supervision;
mod support;
#[cfg(feature = "top")]
mod top;
mod zygote;
