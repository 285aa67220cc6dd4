//! # dspex-core
//!
//! The data and contracts every part of dspex shares: [`Signature`]s and their
//! [`Field`]s and [`FieldType`]s, [`Example`]s and [`Prediction`]s, serializable
//! [`ProgramSpec`]s, configuration, and the one error taxonomy ([`Error`]).
//!
//! This crate does no I/O, spawns nothing and starts no actors; the engine
//! (`dspex-native`), the Python bridge and the actor tree build on it.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod cluster;
pub mod config;
pub mod error;
pub mod example;
pub mod gateway;
pub mod hash;
pub mod program;
pub mod runtime_config;
pub mod secret;
pub mod signature;
pub mod telemetry;
pub mod trace;
pub mod wire;

pub use cluster::{ClusterConfig, NodeStatus, PoolStatus};
pub use config::{LmConfig, LmSettings, Secret};
pub use error::{Error, ErrorBody, ErrorContext, ErrorKind, ErrorReply, Result};
pub use example::{Example, Map, Prediction, Usage};
pub use gateway::{
    BudgetConfig, GatewayCacheConfig, GatewayConfig, GatewayShare, LmCalls, LmPolicy, Price, TenantSpend,
};
pub use program::{
    AdapterKind, ClassSignature, FieldDecl, ModuleKind, ProgramSpec, Reward, SignatureSpec, TemplateSpec,
};
pub use runtime_config::{
    CacheConfig, CodecChoice, HttpConfig, IntensityConfig, PoolConfig, ProgramEntry, PythonConfig, RoutePreference,
    RouterConfig, RuntimeConfig, SessionConfig,
};
pub use signature::{
    check_field_name, cleandoc, infer_prefix, Constraint, DspyType, Field, FieldRole, FieldSpec, FieldType,
    LiteralValue, Memo, Signature, SignatureBuilder,
};
pub use telemetry::{Event, EventKind, Route};

/// JSON values, as used for every field value.
pub use serde_json::Value;
