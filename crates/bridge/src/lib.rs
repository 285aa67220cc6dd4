//! # dspex-bridge
//!
//! One Python worker process, run safely: [`Worker`] spawns `python -m
//! dspex_worker` with two dedicated pipes (requests in, responses out) in its
//! own process group with a parent-death signal, speaks the framed
//! [`protocol`] (JSON or MessagePack), correlates many in-flight requests,
//! enforces one deadline per request, streams chunks with backpressure,
//! pings, and always ends and reaps the process — a caller gets a result or
//! a classified error, never a hang. [`runs`] records workers so a later
//! start can clean up after a killed runtime; [`env`] builds the Python
//! environments pools run in.
//!
//! This crate does not decide routing or restart policy; the actor runtime
//! does.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
// Only `process` talks to the OS directly (signals, limits, `/proc`).
#![deny(unsafe_code)]

pub mod commands;
pub mod env;
#[allow(unsafe_code)]
mod process;
pub mod protocol;
pub mod runs;
mod worker;
pub mod zygote;

pub use env::{default_cache_dir, worker_sources, EnvSpec, PythonEnv};
pub use process::{
    group_members, process_alive, process_start_time, resident_bytes, runtime_dir, signal_group, ChildLimits,
};
pub use protocol::{error_kind_from_wire, Codec, CodecChoice, Hello};
pub use runs::{RunRegistry, SweepReport};
pub use worker::{
    CallOptions, CodecCounts, ExitInfo, LmAnswer, LmBody, LmCall, LmGateway, LmScopeToken, StreamItem, Worker,
    WorkerConfig, WorkerStream, DEFAULT_ENV_ALLOWLIST,
};
pub use zygote::Zygote;
