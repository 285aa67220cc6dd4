//! # dspex-actors
//!
//! The actor runtime: an Erlang-style supervision tree on ractor that owns
//! pools of Python workers, the router that sends each request to the
//! native engine or to Python, the result cache, the telemetry bus, sessions
//! and pipelines. [`Runtime`] is the entry point.
#![warn(missing_docs)]

pub mod blocking;
pub mod cache;
pub mod console;
pub mod pipeline;
pub mod pool;
pub mod program;
pub mod router;
pub mod runtime;
pub mod session;
pub mod supervisor;
pub mod telemetry;

pub use blocking::BlockingRuntime;
pub use console::{ConsoleEndpoint, ConsoleServer};
pub use pipeline::{
    Condition, IntoPipeline, Pipeline, PipelineBuilder, PipelineResult, PipelineRun, PipelineRunInfo, PipelineSpec,
    RetrySpec, Step, StepKind, StepRecord, StepSpec,
};
pub use pool::{PoolCallOptions, PoolHandle, PoolReply, PoolStats, WorkerStats};
pub use program::{FieldInfo, Program, ProgramInfo};
pub use router::{BreakerState, Decision, DecisionRecord, RouteRequest, Router, RouterStats};
pub use runtime::{
    new_trace_id, CallOutput, Evaluation, Meta, OptimizeRequest, Optimized, Output, OutputStream, ProgressFn,
    RequestOptions, Runtime, RuntimeBuilder, StreamEvent, Timings,
};
pub use session::{RestoreReport, Session, SessionInfo, SessionOptions, SessionState, Sessions};
pub use supervisor::{NodeInfo, TreeNode};
pub use telemetry::Telemetry;
