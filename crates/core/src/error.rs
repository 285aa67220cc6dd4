//! The one error taxonomy of the runtime.
//!
//! Every failure a caller can see is an [`Error`]: a [`ErrorKind`] that says
//! *what* failed, a message in words, an [`ErrorContext`] that says *where*
//! (pool, worker, session, pipeline step, field, request id), and whether a
//! retry may help. Crates never invent their own public error types; they build
//! an `Error` with the constructor that names the failure and add context on
//! the way up with [`Error::with_context`] and friends.
//!
//! ```
//! use dspex_core::{Error, ErrorKind};
//!
//! let err = Error::new(ErrorKind::Overloaded, "queue of pool `general` is full (64 waiting)")
//!     .with_pool("general");
//! assert_eq!(err.kind(), ErrorKind::Overloaded);
//! assert!(err.is_retryable());
//! assert_eq!(err.context().pool.as_deref(), Some("general"));
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// What failed. The kind decides the default retry advice and how the router
/// and supervisors react (for example `Unsupported` on the native path means
/// "run it in Python", `WorkerCrashed` means "the pool replaces the worker").
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// A signature string or spec was rejected (DSPy would reject it too).
    InvalidSignature,
    /// An input or output value does not match its field's type.
    Validation,
    /// The LM's completion could not be parsed into the signature's outputs.
    Parse,
    /// A program, pipeline or request description is malformed.
    InvalidRequest,
    /// The native engine does not implement this feature; Python can run it.
    Unsupported,
    /// The language model service answered with an error.
    Lm,
    /// The network transport to a service failed before an answer arrived.
    Transport,
    /// The request's deadline passed.
    Timeout,
    /// The request was cancelled by its caller.
    Cancelled,
    /// A bounded queue was full; the request was shed.
    Overloaded,
    /// The Python worker running the request died.
    WorkerCrashed,
    /// The worker broke the wire protocol.
    Protocol,
    /// Python code raised an exception.
    Python,
    /// A named thing (session, pool, program, actor) does not exist.
    NotFound,
    /// Configuration is invalid or incomplete.
    Config,
    /// An operating-system call failed.
    Io,
    /// A bug in this runtime; please report it.
    Internal,
    /// A write lost a compare-and-set race: another node changed the state
    /// since this one read it (a session taken over by another cluster
    /// node). Retrying reaches the new owner.
    Conflict,
    /// An LM's rate limit (the runtime's gateway, or the service's own 429)
    /// leaves no room before the request's deadline. Retrying later helps.
    RateLimited,
    /// A tenant spent its budget (requests, tokens or money) for the
    /// current period; nothing was sent.
    BudgetExceeded,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 20] = [
        ErrorKind::InvalidSignature,
        ErrorKind::Validation,
        ErrorKind::Parse,
        ErrorKind::InvalidRequest,
        ErrorKind::Unsupported,
        ErrorKind::Lm,
        ErrorKind::Transport,
        ErrorKind::Timeout,
        ErrorKind::Cancelled,
        ErrorKind::Overloaded,
        ErrorKind::WorkerCrashed,
        ErrorKind::Protocol,
        ErrorKind::Python,
        ErrorKind::NotFound,
        ErrorKind::Config,
        ErrorKind::Io,
        ErrorKind::Internal,
        ErrorKind::Conflict,
        ErrorKind::RateLimited,
        ErrorKind::BudgetExceeded,
    ];

    /// The stable snake_case name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidSignature => "invalid_signature",
            ErrorKind::Validation => "validation",
            ErrorKind::Parse => "parse",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Lm => "lm",
            ErrorKind::Transport => "transport",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::WorkerCrashed => "worker_crashed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Python => "python",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Config => "config",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::Conflict => "conflict",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BudgetExceeded => "budget_exceeded",
        }
    }

    /// Whether a retry of the same request may succeed, absent better knowledge.
    pub fn default_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Transport
                | ErrorKind::Timeout
                | ErrorKind::Overloaded
                | ErrorKind::WorkerCrashed
                | ErrorKind::Protocol
                | ErrorKind::Conflict
                | ErrorKind::RateLimited
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a failure happened. Every part is optional; layers fill in what they
/// know as the error travels up.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorContext {
    /// Cluster node, e.g. `node-b`, when the failure happened on another machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Pool name, e.g. `general`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Worker name, e.g. `worker:general:1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Pipeline step name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Signature field name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Request or trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The LM a call went to (`model@base_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm: Option<String>,
    /// The tenant whose budget the request counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl ErrorContext {
    /// Whether no part is known.
    pub fn is_empty(&self) -> bool {
        self.node.is_none()
            && self.pool.is_none()
            && self.worker.is_none()
            && self.session.is_none()
            && self.step.is_none()
            && self.field.is_none()
            && self.request_id.is_none()
            && self.lm.is_none()
            && self.tenant.is_none()
    }
}

/// A classified runtime error. See the [module docs](self).
///
/// The fields live behind one box so `Result<T, Error>` stays pointer-sized
/// on the happy path.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Error {
    inner: Box<Inner>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    kind: ErrorKind,
    message: String,
    #[serde(default, skip_serializing_if = "ErrorContext::is_empty")]
    context: ErrorContext,
    retryable: bool,
    /// The name DSPy (or Python) gives this error, e.g. `ValueError` or
    /// `AdapterParseError`, where the failure mirrors one of DSPy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python_type: Option<String>,
    /// A Python traceback, for errors raised in a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceback: Option<String>,
}

impl Error {
    /// A new error of `kind` with the kind's default retry advice.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                context: ErrorContext::default(),
                retryable: kind.default_retryable(),
                python_type: None,
                traceback: None,
            }),
        }
    }

    /// An `Unsupported` error: the native engine cannot run this, Python can.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// An `Internal` error (a bug in this runtime).
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// An `InvalidRequest` error.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidRequest, message)
    }

    /// What failed.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Where it failed.
    pub fn context(&self) -> &ErrorContext {
        &self.inner.context
    }

    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        self.inner.retryable
    }

    /// DSPy's (or Python's) name for this error, where it mirrors one.
    pub fn python_type(&self) -> Option<&str> {
        self.inner.python_type.as_deref()
    }

    /// The Python traceback, for errors raised in a worker.
    pub fn traceback(&self) -> Option<&str> {
        self.inner.traceback.as_deref()
    }

    /// Override the retry advice.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = retryable;
        self
    }

    /// Record DSPy's name for this error.
    pub fn with_python_type(mut self, name: impl Into<String>) -> Self {
        self.inner.python_type = Some(name.into());
        self
    }

    /// Attach a Python traceback.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.inner.traceback = Some(traceback.into());
        self
    }

    /// Merge context: fields already set are kept (the innermost layer knows best).
    pub fn with_context(mut self, ctx: ErrorContext) -> Self {
        let c = &mut self.inner.context;
        c.node = c.node.take().or(ctx.node);
        c.pool = c.pool.take().or(ctx.pool);
        c.worker = c.worker.take().or(ctx.worker);
        c.session = c.session.take().or(ctx.session);
        c.step = c.step.take().or(ctx.step);
        c.field = c.field.take().or(ctx.field);
        c.request_id = c.request_id.take().or(ctx.request_id);
        c.lm = c.lm.take().or(ctx.lm);
        c.tenant = c.tenant.take().or(ctx.tenant);
        self
    }

    /// Set the LM (`model@base_url`), unless already set.
    pub fn with_lm(mut self, lm: impl Into<String>) -> Self {
        self.inner.context.lm.get_or_insert_with(|| lm.into());
        self
    }

    /// Set the tenant, unless already set.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.inner.context.tenant.get_or_insert_with(|| tenant.into());
        self
    }

    /// Set the pool, unless already set.
    pub fn with_pool(mut self, pool: impl Into<String>) -> Self {
        self.inner.context.pool.get_or_insert_with(|| pool.into());
        self
    }

    /// Set the cluster node, unless already set.
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.inner.context.node.get_or_insert_with(|| node.into());
        self
    }

    /// Set the worker, unless already set.
    pub fn with_worker(mut self, worker: impl Into<String>) -> Self {
        self.inner.context.worker.get_or_insert_with(|| worker.into());
        self
    }

    /// Set the session, unless already set.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.inner.context.session.get_or_insert_with(|| session.into());
        self
    }

    /// Set the pipeline step, unless already set.
    pub fn with_step(mut self, step: impl Into<String>) -> Self {
        self.inner.context.step.get_or_insert_with(|| step.into());
        self
    }

    /// Set the field, unless already set.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.inner.context.field.get_or_insert_with(|| field.into());
        self
    }

    /// Set the request id, unless already set.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.inner.context.request_id.get_or_insert_with(|| id.into());
        self
    }
}

/// An error as clients outside the process see it: what failed, where,
/// and whether a retry may help. The CLI prints it, the console answers
/// with it and the HTTP API returns it (as `{"error": ...}`, see
/// [`ErrorReply`]). A Python traceback stays out: it is for the runtime's
/// own logs, not for whoever sent the request.
///
/// ```
/// use dspex_core::{Error, ErrorKind};
///
/// let e = Error::new(ErrorKind::Validation, "answer: expected int").with_field("answer");
/// let body = serde_json::to_value(e.reply()).unwrap();
/// assert_eq!(body["error"]["kind"], "validation");
/// assert_eq!(body["error"]["context"]["field"], "answer");
/// assert_eq!(body["error"]["retryable"], false);
/// ```
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What failed.
    pub kind: ErrorKind,
    /// What happened, in words.
    pub message: String,
    /// Whether retrying the same request may succeed.
    pub retryable: bool,
    /// Where it failed (only the parts known).
    #[serde(default, skip_serializing_if = "ErrorContext::is_empty")]
    pub context: ErrorContext,
    /// DSPy's (or Python's) name for the error, where it mirrors one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_type: Option<String>,
}

/// `{"error": ErrorBody}`: the whole body of a failed reply.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The error.
    pub error: ErrorBody,
}

impl Error {
    /// What clients outside the process are told.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            kind: self.inner.kind,
            message: self.inner.message.clone(),
            retryable: self.inner.retryable,
            context: self.inner.context.clone(),
            python_type: self.inner.python_type.clone(),
        }
    }

    /// `{"error": body}`.
    pub fn reply(&self) -> ErrorReply {
        ErrorReply { error: self.body() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)?;
        let c = &self.inner.context;
        let parts = [
            ("node", &c.node),
            ("pool", &c.pool),
            ("worker", &c.worker),
            ("session", &c.session),
            ("step", &c.step),
            ("field", &c.field),
            ("request", &c.request_id),
            ("lm", &c.lm),
            ("tenant", &c.tenant),
        ];
        let mut first = true;
        for (name, value) in parts {
            if let Some(v) = value {
                f.write_str(if first { " (" } else { ", " })?;
                write!(f, "{name} {v}")?;
                first = false;
            }
        }
        if !first {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        let retryable = matches!(
            err.kind(),
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        Error::new(ErrorKind::Io, err.to_string()).with_retryable(retryable)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_once_and_bodies_carry_context() {
        // Exhaustive: a new kind fails to compile here until it is in ALL.
        let position = |k: ErrorKind| match k {
            ErrorKind::InvalidSignature
            | ErrorKind::Validation
            | ErrorKind::Parse
            | ErrorKind::InvalidRequest
            | ErrorKind::Unsupported
            | ErrorKind::Lm
            | ErrorKind::Transport
            | ErrorKind::Timeout
            | ErrorKind::Cancelled
            | ErrorKind::Overloaded
            | ErrorKind::WorkerCrashed
            | ErrorKind::Protocol
            | ErrorKind::Python
            | ErrorKind::NotFound
            | ErrorKind::Config
            | ErrorKind::Io
            | ErrorKind::Internal
            | ErrorKind::Conflict
            | ErrorKind::RateLimited
            | ErrorKind::BudgetExceeded => ErrorKind::ALL.iter().position(|x| *x == k),
        };
        let names: std::collections::BTreeSet<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            assert!(position(k).is_some());
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        let e = Error::new(ErrorKind::Lm, "boom")
            .with_python_type("LMError")
            .with_traceback("Traceback ...")
            .with_context(ErrorContext { node: Some("n1".into()), ..Default::default() });
        let body = serde_json::to_value(e.reply()).unwrap();
        assert_eq!(body["error"]["context"]["node"], "n1", "with_context merges the node too");
        assert_eq!(body["error"]["python_type"], "LMError");
        assert!(body["error"].get("traceback").is_none(), "tracebacks stay in the logs: {body}");
        let plain = serde_json::to_value(Error::internal("x").body()).unwrap();
        assert!(plain.get("context").is_none() && plain.get("python_type").is_none(), "{plain}");
    }

    #[test]
    fn display_includes_context_in_order() {
        let err = Error::new(ErrorKind::WorkerCrashed, "python exited with signal 9")
            .with_worker("worker:general:0")
            .with_pool("general")
            .with_request_id("r-1");
        assert_eq!(
            err.to_string(),
            "worker_crashed: python exited with signal 9 (pool general, worker worker:general:0, request r-1)"
        );
        assert!(err.is_retryable());
    }

    #[test]
    fn inner_context_wins() {
        let err = Error::new(ErrorKind::Validation, "bad").with_field("inner");
        let err = err.with_context(ErrorContext {
            field: Some("outer".into()),
            step: Some("s".into()),
            ..Default::default()
        });
        assert_eq!(err.context().field.as_deref(), Some("inner"));
        assert_eq!(err.context().step.as_deref(), Some("s"));
    }

    #[test]
    fn serde_roundtrip_keeps_everything() {
        let err = Error::new(ErrorKind::Parse, "no fields")
            .with_python_type("AdapterParseError")
            .with_traceback("Traceback ...")
            .with_retryable(true);
        let json = serde_json::to_string(&err).unwrap();
        let back: Error = serde_json::from_str(&json).unwrap();
        assert_eq!(back, err);
        assert_eq!(back.python_type(), Some("AdapterParseError"));
    }

    #[test]
    fn io_errors_convert() {
        let err: Error = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.is_retryable());
        assert!(!ErrorKind::Validation.default_retryable());
        assert_eq!(ErrorKind::NotFound.to_string(), "not_found");
    }
}
