//! The payloads of the worker's DSPy and session commands, typed once.
//!
//! The runtime sends these as a request's `args` and reads the replies with
//! them; nothing else in the runtime spells a command's field names. The
//! Python side (`dspex_worker`) is held to the same shapes by golden
//! fixtures in `tests/fixtures/commands/`: the Rust tests below check that
//! these types encode to exactly those arguments and decode those replies,
//! and the worker's tests run every fixture's arguments through the real
//! command and check its reply has the fixture's shape.

use dspex_core::{Map, Usage, Value};
use serde::{Deserialize, Serialize};

/// `dspy.run` (and `dspy.stream`, which takes the same arguments): run a
/// program once.
pub const RUN: &str = "dspy.run";
/// `dspy.stream`: run a program, streaming [`StreamChunk`]s, then a [`RunReply`].
pub const STREAM: &str = "dspy.stream";
/// `dspy.optimize`: compile a program with an optimizer ([`OptimizeArgs`]).
pub const OPTIMIZE: &str = "dspy.optimize";
/// `dspy.evaluate`: score a program on a dev set ([`EvaluateArgs`]).
pub const EVALUATE: &str = "dspy.evaluate";
/// `dspy.parallel`: run a program over many inputs ([`ParallelArgs`]).
pub const PARALLEL: &str = "dspy.parallel";
/// `session.define`: build a program and keep it for a session ([`DefineArgs`]).
pub const SESSION_DEFINE: &str = "session.define";
/// `session.run`: run a program a session defined ([`SessionRunArgs`]).
pub const SESSION_RUN: &str = "session.run";
/// `session.drop`: forget a session's objects (no arguments).
pub const SESSION_DROP: &str = "session.drop";

/// Arguments of [`RUN`] and [`STREAM`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunArgs {
    /// The program as the worker builds it (`ProgramSpec` in wire form).
    pub program: Value,
    /// Its inputs.
    pub inputs: Map,
    /// The LM (`null`: the worker's configured one).
    pub lm: Value,
}

/// The reply of [`RUN`], [`SESSION_RUN`] and a [`STREAM`]'s end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReply {
    /// The prediction's fields.
    #[serde(default)]
    pub fields: Map,
    /// Token usage, when the LM reported it.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Time the worker spent, in microseconds.
    #[serde(default)]
    pub elapsed_us: u64,
    /// An LM reply was cut at its length limit (DSPy logged "LM response
    /// was truncated").
    #[serde(default)]
    pub truncated: bool,
}

/// One chunk of a [`STREAM`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// The output field the text belongs to, when known.
    #[serde(default)]
    pub field: Option<String>,
    /// The text.
    #[serde(default)]
    pub text: String,
}

/// Arguments of [`SESSION_DEFINE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefineArgs {
    /// The name the session knows the program by.
    pub name: String,
    /// The program, as for [`RunArgs::program`].
    pub program: Value,
}

/// Arguments of [`SESSION_RUN`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRunArgs {
    /// The program's name in the session.
    pub name: String,
    /// Its inputs.
    pub inputs: Map,
    /// The LM, as for [`RunArgs::lm`].
    pub lm: Value,
}

/// Arguments of [`OPTIMIZE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizeArgs {
    /// Optimizer name (`BootstrapFewShot`, `MIPROv2`, ...).
    pub optimizer: String,
    /// The program to compile.
    pub program: Value,
    /// Training examples.
    pub trainset: Vec<Map>,
    /// Metric name or import path.
    pub metric: String,
    /// The LM.
    pub lm: Value,
    /// Optimizer constructor arguments.
    pub params: Map,
    /// `compile()` arguments.
    pub compile_params: Map,
    /// Which example keys are inputs (all but the outputs when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_keys: Vec<String>,
    /// Validation examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valset: Option<Vec<Map>>,
}

/// The reply of [`OPTIMIZE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizeReply {
    /// The compiled program's saved state (`program.dump_state()`).
    #[serde(default)]
    pub state: Value,
    /// Demos across its predictors.
    #[serde(default)]
    pub demos: u64,
    /// What `program.save` adds to the state: `{"dependency_versions": ...}`.
    #[serde(default)]
    pub metadata: Value,
}

/// Arguments of [`EVALUATE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateArgs {
    /// The program to score.
    pub program: Value,
    /// Examples.
    pub devset: Vec<Map>,
    /// Metric name or import path.
    pub metric: String,
    /// The LM.
    pub lm: Value,
    /// Which example keys are inputs (all but `answer` when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_keys: Vec<String>,
    /// Examples scored at once (`dspy.Evaluate`'s `num_threads`).
    #[serde(default = "one")]
    pub num_threads: usize,
}

fn one() -> usize {
    1
}

/// Arguments of [`PARALLEL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParallelArgs {
    /// The program to run.
    pub program: Value,
    /// One input map per item.
    pub inputs: Vec<Map>,
    /// The LM.
    pub lm: Value,
    /// Items run at once (`dspy.Parallel`'s `num_threads`).
    pub num_threads: usize,
}

/// The reply of [`PARALLEL`]: one entry per input, in input order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParallelReply {
    /// Each item's outcome.
    #[serde(default)]
    pub results: Vec<ParallelItem>,
}

/// One item of a [`ParallelReply`]: its fields, or the error it raised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParallelItem {
    /// The prediction's fields, when the item succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Map>,
    /// The item's error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::protocol::WireError>,
}

/// The reply of [`EVALUATE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluateReply {
    /// The score (DSPy's scale: percent).
    #[serde(default)]
    pub score: f64,
    /// One row per example.
    #[serde(default)]
    pub results: Vec<Value>,
}

/// Encode arguments for a request (they are plain data: this cannot fail
/// short of a non-string map key, which these types do not have).
pub fn to_args<T: Serialize>(args: &T) -> Value {
    serde_json::to_value(args).unwrap_or(Value::Null)
}

/// Decode a reply; a reply of the wrong shape is a protocol error of the
/// command that sent it.
pub fn from_reply<T: serde::de::DeserializeOwned>(command: &str, reply: Value) -> dspex_core::Result<T> {
    serde_json::from_value(reply).map_err(|e| {
        dspex_core::Error::new(
            dspex_core::ErrorKind::Protocol,
            format!("{command} replied in an unexpected shape: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixtures() -> Vec<Value> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/commands");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files.iter().map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect()
    }

    fn fixture(command: &str) -> Value {
        fixtures().into_iter().find(|f| f["command"] == command).unwrap_or_else(|| panic!("no fixture for {command}"))
    }

    fn round_trip<A: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(command: &str) {
        let f = fixture(command);
        let args: A = serde_json::from_value(f["args"].clone()).unwrap();
        assert_eq!(to_args(&args), f["args"], "{command}: the typed arguments re-encode to the fixture");
    }

    #[test]
    fn every_command_fixture_matches_its_type() {
        round_trip::<RunArgs>(RUN);
        round_trip::<RunArgs>(STREAM);
        round_trip::<DefineArgs>(SESSION_DEFINE);
        round_trip::<SessionRunArgs>(SESSION_RUN);
        round_trip::<OptimizeArgs>(OPTIMIZE);
        round_trip::<EvaluateArgs>(EVALUATE);
        round_trip::<ParallelArgs>(PARALLEL);
        let par: ParallelReply = from_reply(PARALLEL, fixture(PARALLEL)["reply"].clone()).unwrap();
        assert!(par.results[0].fields.is_some() && par.results[1].error.is_some(), "{par:?}");
        let run: RunReply = from_reply(RUN, fixture(RUN)["reply"].clone()).unwrap();
        assert!(run.fields.contains_key("answer") && run.elapsed_us > 0);
        let _: RunReply = from_reply(SESSION_RUN, fixture(SESSION_RUN)["reply"].clone()).unwrap();
        let chunk: StreamChunk = from_reply(STREAM, fixture(STREAM)["chunks"][0].clone()).unwrap();
        assert!(!chunk.text.is_empty());
        let opt: OptimizeReply = from_reply(OPTIMIZE, fixture(OPTIMIZE)["reply"].clone()).unwrap();
        assert!(opt.state.is_object());
        let eval: EvaluateReply = from_reply(EVALUATE, fixture(EVALUATE)["reply"].clone()).unwrap();
        assert_eq!(eval.results.len(), 2);
        let names: Vec<String> = fixtures().iter().map(|f| f["command"].as_str().unwrap().to_string()).collect();
        for c in [RUN, STREAM, OPTIMIZE, EVALUATE, PARALLEL, SESSION_DEFINE, SESSION_RUN, SESSION_DROP] {
            assert!(names.iter().any(|n| n == c), "{c} has a fixture");
        }
    }

    #[test]
    fn a_reply_of_the_wrong_shape_is_a_protocol_error() {
        let e = from_reply::<RunReply>(RUN, json!({"fields": 3})).unwrap_err();
        assert_eq!(e.kind(), dspex_core::ErrorKind::Protocol);
        assert!(e.message().contains("dspy.run"));
        assert_eq!(from_reply::<RunReply>(RUN, json!({})).unwrap(), RunReply::default());
    }
}
