//! # dspex-actors
//!
//! The actor runtime: an Erlang-style supervision tree on ractor that owns
//! pools of Python workers, the router that plans where each request runs,
//! the dispatcher that executes those plans for every caller, the result
//! cache, the telemetry bus, sessions and pipelines. [`Runtime`] is the
//! entry point.
//!
//! Who calls whom: [`Runtime`] → `dispatch` (the one request path) →
//! [`Router::plan`] → the native engine, a [`PoolHandle`], or a caller's own
//! target (a session's pinned worker). [`Session`]s and pipelines depend on
//! the dispatcher, never on the runtime.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod blocking;
pub mod cache;
pub mod cluster;
pub mod console;
mod dispatch;
mod lms;
pub mod pipeline;
pub mod pool;
pub mod program;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod request;
pub mod router;
pub mod runtime;
pub mod session;
pub mod supervisor;
pub mod telemetry;
pub mod token;

pub use blocking::BlockingRuntime;
pub use cluster::{Cluster, RemoteStream, StoredSession};
pub use console::{ConsoleEndpoint, ConsoleServer};
pub use dispatch::ProgressFn;
pub use dspex_bridge::StreamItem;
pub use dspex_native::lm::gateway::{Gateway, GatewayStats, MeterReading, TotalsSnapshot};
pub use lms::python_lm_spec;
pub use pipeline::{
    Condition, IntoPipeline, Pipeline, PipelineBuilder, PipelineResult, PipelineRun, PipelineRunInfo, PipelineSpec,
    RetrySpec, Step, StepKind, StepRecord, StepSpec,
};
pub use pool::{PoolCallOptions, PoolHandle, PoolReply, PoolStats, WorkerStats};
pub use program::{FieldInfo, Program, ProgramInfo};
pub use request::{
    new_trace_id, CallOutput, Meta, Output, OutputStream, Ran, Request, RequestContext, RequestOptions, StreamEvent,
    Timings,
};
pub use router::{BreakerState, DecisionRecord, Plan, RouteRequest, Router, RouterStats};
pub use runtime::{
    EnvProgress, EvaluateRequest, Evaluation, OptimizeRequest, Optimized, ParallelOutput, Runtime, RuntimeBuilder,
};
pub use session::{
    RestoreReport, Session, SessionAnswer, SessionCall, SessionInfo, SessionOptions, SessionState, Sessions,
};
pub use supervisor::{NodeInfo, TreeNode};
pub use telemetry::Telemetry;
