//! Serializable descriptions of programs: what to run, independent of where.
//!
//! A [`ProgramSpec`] names a DSPy module (`Predict`, `ChainOfThought`, …), its
//! signature (as DSPy's string syntax or a class-style [`SignatureSpec`]), its
//! demos and its LM settings. The router hands the same spec to the native
//! engine or to a Python worker, so both run the same program.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::LmConfig;
use crate::example::Map;

/// A signature as users write it: DSPy's string syntax, or the fields of a
/// class-based signature.
///
/// In JSON, a string or `{"instructions", "inputs": [...], "outputs": [...]}`:
///
/// ```
/// use dspex_core::SignatureSpec;
///
/// let s: SignatureSpec = serde_json::from_str(r#""question -> answer""#).unwrap();
/// assert!(matches!(s, SignatureSpec::Text(_)));
/// let c: SignatureSpec = serde_json::from_str(
///     r#"{"instructions": "Be brief.", "inputs": [{"name": "q"}], "outputs": [{"name": "a", "type": "int"}]}"#,
/// ).unwrap();
/// assert!(matches!(c, SignatureSpec::Class(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SignatureSpec {
    /// `"question, context: list[str] -> answer"`.
    Text(String),
    /// The fields of a class-based signature.
    Class(ClassSignature),
}

impl From<&str> for SignatureSpec {
    fn from(s: &str) -> Self {
        SignatureSpec::Text(s.to_string())
    }
}

/// A class-based signature: docstring instructions and declared fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSignature {
    /// The docstring (cleaned like `inspect.cleandoc`); empty or absent means DSPy's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Input fields in order.
    #[serde(default)]
    pub inputs: Vec<FieldDecl>,
    /// Output fields in order.
    #[serde(default)]
    pub outputs: Vec<FieldDecl>,
}

/// One declared field of a [`ClassSignature`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDecl {
    /// Field name.
    pub name: String,
    /// Python type annotation, e.g. `list[str]`; absent means `str`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// Description (`desc=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Prompt prefix (`prefix=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Pydantic constraints such as `{"ge": 0, "le": 1}`, in order.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub constraints: Map,
}

/// Which DSPy module a program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// `dspy.Predict`.
    #[default]
    Predict,
    /// `dspy.ChainOfThought`.
    ChainOfThought,
    /// `dspy.ReAct` (tools named in `params.tools` as import paths; Python only).
    React,
    /// `dspy.ProgramOfThought` (generated code runs in DSPy's Deno sandbox,
    /// from DSPy's `deno` extra; Python only).
    ProgramOfThought,
    /// `dspy.MultiChainComparison` (`params.M`; Python only).
    MultiChainComparison,
    /// `dspy.BestOfN` (`params.N`, `params.threshold` and the required
    /// reward: `params.reward_fn`, an import path, or `params.reward_metric`,
    /// a metric by name; see [`Reward`]; Python only).
    BestOfN,
    /// `dspy.Refine` (as `BestOfN`; Python only).
    Refine,
    /// `dspy.CodeAct` (the LM writes Python that calls the tools, named in
    /// `params.tools` as import paths of plain functions; it runs in the
    /// Deno sandbox, as ProgramOfThought's does; Python only).
    CodeAct,
    /// `dspy.ReActV2` (tools as for `React`; Python only).
    #[serde(rename = "react_v2")]
    ReactV2,
}

impl ModuleKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Predict => "predict",
            ModuleKind::ChainOfThought => "chain_of_thought",
            ModuleKind::React => "react",
            ModuleKind::ProgramOfThought => "program_of_thought",
            ModuleKind::MultiChainComparison => "multi_chain_comparison",
            ModuleKind::BestOfN => "best_of_n",
            ModuleKind::Refine => "refine",
            ModuleKind::CodeAct => "code_act",
            ModuleKind::ReactV2 => "react_v2",
        }
    }

    /// Whether the native engine models this module (`Predict`, `ChainOfThought`).
    pub fn is_native(self) -> bool {
        matches!(self, ModuleKind::Predict | ModuleKind::ChainOfThought)
    }
}

/// How prompts are formatted and completions parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// `dspy.ChatAdapter` (`[[ ## field ## ]]` sections), DSPy's default.
    #[default]
    Chat,
    /// `dspy.JSONAdapter` (a JSON object).
    Json,
}

impl AdapterKind {
    /// `"chat"` or `"json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Chat => "chat",
            AdapterKind::Json => "json",
        }
    }
}

/// A runnable program description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramSpec {
    /// The module.
    #[serde(default)]
    pub module: ModuleKind,
    /// The signature.
    pub signature: SignatureSpec,
    /// Few-shot demos, each a map of field values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demos: Vec<Map>,
    /// Prompt format.
    #[serde(default)]
    pub adapter: AdapterKind,
    /// LM settings for this program; the runtime's default LM otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm: Option<LmConfig>,
    /// Extra LM call arguments (`temperature`, `n`, `max_tokens`, ...), as `Predict(**config)`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map,
    /// Module-specific parameters (`tools` and `max_iters` for ReAct, `M`, `N`, `reward_fn`, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map,
    /// A saved program state (what DSPy's `program.save(path)` writes), applied after the demos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// A user prompt template in place of the adapter's formatting. The
    /// native engine renders it (minijinja); DSPy has no equivalent, so a
    /// program with one runs natively only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSpec>,
    /// Check every input against its field's type before the call, on
    /// either route, and fail with `Validation` (DSPy only warns).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict_inputs: bool,
}

/// A user prompt template: minijinja sources for the system message
/// (optional: none is sent when absent) and the user message, over
/// `signature`, `inputs` and `demos` (see `dspex_native::template`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// The system message's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The user message's template.
    pub user: String,
}

impl ProgramSpec {
    /// A `Predict` program for `signature`.
    pub fn predict(signature: impl Into<SignatureSpec>) -> ProgramSpec {
        ProgramSpec {
            module: ModuleKind::Predict,
            signature: signature.into(),
            demos: Vec::new(),
            adapter: AdapterKind::Chat,
            lm: None,
            config: Map::new(),
            params: Map::new(),
            state: None,
            template: None,
            strict_inputs: false,
        }
    }

    /// A `ChainOfThought` program for `signature`.
    pub fn chain_of_thought(signature: impl Into<SignatureSpec>) -> ProgramSpec {
        ProgramSpec { module: ModuleKind::ChainOfThought, ..ProgramSpec::predict(signature) }
    }

    /// A `ReAct` program for `signature` with tools given as Python import
    /// paths (`package.module:function`).
    pub fn react<I, S>(signature: impl Into<SignatureSpec>, tools: I) -> ProgramSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tools: Vec<Value> = tools.into_iter().map(|t| Value::String(t.into())).collect();
        ProgramSpec { module: ModuleKind::React, ..ProgramSpec::predict(signature) }
            .with_param("tools", Value::Array(tools))
    }

    /// A `CodeAct` program: the LM writes Python that calls `tools` (import
    /// paths of plain functions), run in the Deno sandbox until it is done.
    pub fn code_act<I, S>(signature: impl Into<SignatureSpec>, tools: I) -> ProgramSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ProgramSpec { module: ModuleKind::CodeAct, ..ProgramSpec::react(signature, tools) }
    }

    /// A `ReActV2` program with `tools` (import paths).
    pub fn react_v2<I, S>(signature: impl Into<SignatureSpec>, tools: I) -> ProgramSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ProgramSpec { module: ModuleKind::ReactV2, ..ProgramSpec::react(signature, tools) }
    }

    /// A `ProgramOfThought` program: the LM writes Python, DSPy runs it in
    /// its sandboxed interpreter (Pyodide on Deno) and answers from the output.
    pub fn program_of_thought(signature: impl Into<SignatureSpec>) -> ProgramSpec {
        ProgramSpec { module: ModuleKind::ProgramOfThought, ..ProgramSpec::predict(signature) }
    }

    /// A `MultiChainComparison` program over `m` reasoning attempts (the
    /// `completions` input).
    pub fn multi_chain_comparison(signature: impl Into<SignatureSpec>, m: u32) -> ProgramSpec {
        ProgramSpec { module: ModuleKind::MultiChainComparison, ..ProgramSpec::predict(signature) }
            .with_param("M", Value::from(m))
    }

    /// A `BestOfN` program: up to `n` ChainOfThought attempts, the first whose
    /// reward reaches `threshold` wins. The reward is required (a `&str` is
    /// the import path of a Python function `(args, prediction) -> float`;
    /// [`Reward::metric`] names a metric); there is no default.
    pub fn best_of_n(
        signature: impl Into<SignatureSpec>,
        n: u32,
        reward: impl Into<Reward>,
        threshold: f64,
    ) -> ProgramSpec {
        let spec = ProgramSpec { module: ModuleKind::BestOfN, ..ProgramSpec::predict(signature) }
            .with_param("N", Value::from(n))
            .with_param("threshold", Value::from(threshold));
        match reward.into() {
            Reward::Python(path) => spec.with_param("reward_fn", Value::String(path)),
            Reward::Metric { name, field, expected } => spec
                .with_param("reward_metric", serde_json::json!({"name": name, "field": field, "expected": expected})),
        }
    }

    /// A `Refine` program: as [`ProgramSpec::best_of_n`], with DSPy's
    /// feedback between attempts.
    pub fn refine(
        signature: impl Into<SignatureSpec>,
        n: u32,
        reward: impl Into<Reward>,
        threshold: f64,
    ) -> ProgramSpec {
        ProgramSpec { module: ModuleKind::Refine, ..ProgramSpec::best_of_n(signature, n, reward, threshold) }
    }

    /// Format prompts with a user template (native only; see [`TemplateSpec`]).
    pub fn with_template(mut self, system: Option<&str>, user: &str) -> ProgramSpec {
        self.template = Some(TemplateSpec { system: system.map(str::to_string), user: user.to_string() });
        self
    }

    /// Fail requests whose inputs do not match their field types.
    pub fn with_strict_inputs(mut self) -> ProgramSpec {
        self.strict_inputs = true;
        self
    }

    /// Set one module parameter.
    pub fn with_param(mut self, key: &str, value: Value) -> ProgramSpec {
        self.params.insert(key.to_string(), value);
        self
    }

    /// Set the few-shot demos.
    pub fn with_demos(mut self, demos: Vec<Map>) -> ProgramSpec {
        self.demos = demos;
        self
    }

    /// Set the adapter.
    pub fn with_adapter(mut self, adapter: AdapterKind) -> ProgramSpec {
        self.adapter = adapter;
        self
    }

    /// Set the program's own LM.
    pub fn with_lm(mut self, lm: LmConfig) -> ProgramSpec {
        self.lm = Some(lm);
        self
    }

    /// Set one LM call argument.
    pub fn with_config(mut self, key: &str, value: Value) -> ProgramSpec {
        self.config.insert(key.to_string(), value);
        self
    }
}

/// How `BestOfN` and `Refine` score an attempt: DSPy calls the reward with
/// the module's inputs and the attempt's prediction.
///
/// ```
/// use dspex_core::{ProgramSpec, Reward};
///
/// // A Python function `(args, prediction) -> float`, by import path.
/// let by_path = ProgramSpec::best_of_n("question -> answer", 3, "my_rewards:short", 1.0);
/// assert_eq!(by_path.params["reward_fn"], "my_rewards:short");
/// // A metric by name: is the answer in the passages it was given?
/// let grounded = Reward::metric("passage_match", "answer", "context");
/// let spec = ProgramSpec::refine("context, question -> answer", 3, grounded, 1.0);
/// assert_eq!(spec.params["reward_metric"]["name"], "passage_match");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reward {
    /// The import path of a Python function `(args, prediction) -> float`.
    Python(String),
    /// A metric DSPy has (and the native engine scores alike,
    /// `dspex_native::metrics`), comparing the prediction's `field` with
    /// the input `expected`: `exact_match` (1.0 when they match, after
    /// DSPy's normalisation; `expected` may be a list of answers), `f1`
    /// (the best token F1 against them) or `passage_match` (1.0 when the
    /// prediction appears in the passages of `expected`). The reference is
    /// an input, so the LM sees it; a hidden reference needs a Python reward.
    Metric {
        /// `exact_match`, `f1` or `passage_match`.
        name: String,
        /// The prediction's field scored.
        field: String,
        /// The input field it is scored against.
        expected: String,
    },
}

impl Reward {
    /// A metric by name (see [`Reward::Metric`]).
    pub fn metric(name: &str, field: &str, expected: &str) -> Reward {
        Reward::Metric { name: name.into(), field: field.into(), expected: expected.into() }
    }
}

impl From<&str> for Reward {
    fn from(path: &str) -> Reward {
        Reward::Python(path.to_string())
    }
}

impl From<String> for Reward {
    fn from(path: String) -> Reward {
        Reward::Python(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_round_trip_through_serde_and_builders_set_fields() {
        for m in [
            ModuleKind::Predict,
            ModuleKind::ChainOfThought,
            ModuleKind::React,
            ModuleKind::ProgramOfThought,
            ModuleKind::MultiChainComparison,
            ModuleKind::BestOfN,
            ModuleKind::Refine,
            ModuleKind::CodeAct,
            ModuleKind::ReactV2,
        ] {
            let json = serde_json::to_value(m).unwrap();
            assert_eq!(json, m.as_str());
            assert_eq!(m.is_native(), matches!(m, ModuleKind::Predict | ModuleKind::ChainOfThought));
        }
        let demo: Map = serde_json::from_str(r#"{"q": "1+1?", "a": "2"}"#).unwrap();
        let spec = ProgramSpec::predict("q -> a").with_demos(vec![demo]).with_adapter(AdapterKind::Json);
        assert_eq!(spec.demos.len(), 1);
        assert_eq!(spec.adapter, AdapterKind::Json);
        let back: ProgramSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
