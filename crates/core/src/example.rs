//! Examples (inputs with known outputs) and predictions (what a program produced).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An ordered JSON object: field name → value.
pub type Map = serde_json::Map<String, Value>;

/// A `dspy.Example`: named values, some of which are marked as inputs.
///
/// ```
/// use dspex_core::Example;
/// use serde_json::json;
///
/// let ex = Example::from_json(json!({"question": "2+2?", "answer": "4"}))
///     .unwrap()
///     .with_inputs(["question"]);
/// assert_eq!(ex.inputs().get("question"), Some(&json!("2+2?")));
/// assert_eq!(ex.labels().get("answer"), Some(&json!("4")));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// All values.
    pub fields: Map,
    /// Names of the fields that are inputs (empty: not declared yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_keys: Vec<String>,
}

impl Example {
    /// An example from a JSON object; `None` if `value` is not an object.
    pub fn from_json(value: Value) -> Option<Example> {
        match value {
            Value::Object(fields) => Some(Example { fields, input_keys: Vec::new() }),
            _ => None,
        }
    }

    /// Mark which fields are inputs (`Example.with_inputs`).
    pub fn with_inputs<I, S>(mut self, keys: I) -> Example
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.input_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// A value by name.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The input fields.
    pub fn inputs(&self) -> Map {
        self.fields
            .iter()
            .filter(|(k, _)| self.input_keys.iter().any(|i| i == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The non-input fields (the labels).
    pub fn labels(&self) -> Map {
        self.fields
            .iter()
            .filter(|(k, _)| !self.input_keys.iter().any(|i| i == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Token accounting reported by the LM.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Sum of both, as the service reports it.
    pub total_tokens: u64,
}

impl Usage {
    /// Add another call's usage to this one.
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// A `dspy.Prediction`: the output fields a program produced, plus the other
/// completions when the LM was asked for several (`n > 1`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Output fields of the first completion.
    pub fields: Map,
    /// Every completion's fields, first one included, when there were several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completions: Vec<Map>,
    /// Token usage of the calls that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The LM's reply was cut at its length limit (`finish_reason`
    /// `length`), so the fields may be incomplete; raise `max_tokens`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Prediction {
    /// A prediction with these fields.
    pub fn new(fields: Map) -> Prediction {
        Prediction { fields, completions: Vec::new(), usage: None, truncated: false }
    }

    /// A field by name.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// A field as a string slice, if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }
}
