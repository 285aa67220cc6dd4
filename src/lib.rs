//! # dspex
//!
//! An embeddable Rust runtime for DSPy programs.
//!
//! This facade re-exports what an application needs: the data model
//! ([`Signature`], [`Prediction`], [`ProgramSpec`], [`Error`]) and the native
//! engine ([`native`]): DSPy-identical signature parsing, prompt formatting
//! and completion parsing, and native `Predict` / `ChainOfThought` over any
//! OpenAI-compatible LM.
//!
//! ```
//! use dspex::{native, AdapterKind};
//! use serde_json::json;
//!
//! let sig = native::parse_signature("question -> answer: int", None)?;
//! let messages = native::adapter::format(AdapterKind::Chat, &sig, &[], json!({"question": "2+2?"}).as_object().unwrap())?;
//! assert_eq!(messages.len(), 2);
//! let fields = native::adapter::parse(AdapterKind::Chat, &sig, "[[ ## answer ## ]]\n4")?;
//! assert_eq!(fields["answer"], json!(4));
//! # Ok::<(), dspex::Error>(())
//! ```
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub use dspex_core::{
    AdapterKind, ClassSignature, Error, ErrorBody, ErrorContext, ErrorKind, ErrorReply, Example, Field, FieldDecl,
    FieldRole, FieldSpec, FieldType, LmConfig, LmSettings, Map, ModuleKind, Prediction, ProgramSpec, Result, Reward,
    Signature, SignatureSpec, Usage, Value,
};

pub use dspex_actors::{
    new_trace_id, BlockingRuntime, BreakerState, CallOutput, EvaluateRequest, Evaluation, GatewayStats, Meta, NodeInfo,
    OptimizeRequest, Optimized, Output, OutputStream, PoolHandle, PoolStats, Program, ProgramInfo, RequestOptions,
    Router, RouterStats, Runtime, RuntimeBuilder, StreamEvent, Timings, TreeNode, WorkerStats,
};
pub use dspex_actors::{
    Condition, IntoPipeline, Pipeline, PipelineBuilder, PipelineResult, PipelineRun, PipelineRunInfo, PipelineSpec,
    RestoreReport, RetrySpec, Session, SessionInfo, SessionOptions, SessionState, Sessions, Step, StepKind, StepRecord,
    StepSpec,
};
pub use dspex_core::{BudgetConfig, GatewayCacheConfig, GatewayConfig, LmCalls, LmPolicy, Price};
pub use dspex_core::{
    CacheConfig, ClusterConfig, CodecChoice, Event, EventKind, HttpConfig, IntensityConfig, NodeStatus, PoolConfig,
    PoolStatus, ProgramEntry, PythonConfig, Route, RoutePreference, RouterConfig, RuntimeConfig, SessionConfig,
};

/// The native engine (`dspex-native`).
pub use dspex_native as native;

/// The actor runtime's building blocks (`dspex-actors`): supervisors, pools,
/// the router, the cache, telemetry.
pub use dspex_actors as actors;

/// The Python bridge (`dspex-bridge`): one worker process, environments.
pub use dspex_bridge as bridge;

/// Scale out on NATS JetStream (`dspex-cluster`, the `cluster` feature):
/// [`cluster::ClusterNode::join`] puts a running runtime into a cluster.
#[cfg(feature = "cluster")]
pub use dspex_cluster as cluster;

#[cfg(feature = "http")]
pub mod http;

#[cfg(feature = "otel")]
pub mod otel;

// The README's and the guides' code blocks are compiled and run as doctests:
// an example in the docs that does not run is a bug.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../docs/getting-started.md")]
pub struct GettingStartedDoctests;

#[cfg(all(doctest, feature = "prometheus"))]
#[doc = include_str!("../docs/operations.md")]
pub struct OperationsDoctests;

#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../docs/serving.md")]
pub struct ServingDoctests;

#[cfg(all(doctest, feature = "cluster"))]
#[doc = include_str!("../docs/cluster.md")]
pub struct ClusterDoctests;
