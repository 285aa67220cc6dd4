//! Signatures: the typed input → output contract of a DSPy program.
//!
//! A [`Signature`] is what DSPy builds from `"question, context: list[str] -> answer"`
//! or from a class deriving `dspy.Signature`: instructions plus ordered input and
//! output [`Field`]s, each with a [`FieldType`], a prompt prefix and a description.
//! This module holds the data and the rules DSPy applies while building one
//! (default instructions, prefix inference, the checks on field names); parsing
//! the string syntax is the native engine's job (`dspex_native::parse_signature`).
//!
//! The [`SignatureBuilder`] covers what class-based signatures do:
//!
//! ```
//! use dspex_core::{Constraint, FieldSpec, FieldType, Signature};
//!
//! let sig = Signature::builder()
//!     .instructions("Rate the essay.")
//!     .input(FieldSpec::new("essay", FieldType::Str).desc("The essay to grade"))
//!     .output(
//!         FieldSpec::new("score", FieldType::Int)
//!             .constraint(Constraint::Ge(1.into()))
//!             .constraint(Constraint::Le(10.into())),
//!     )
//!     .build()
//!     .unwrap();
//! assert_eq!(sig.instructions(), "Rate the essay.");
//! assert_eq!(sig.outputs()[0].prefix(), "Score:");
//! assert_eq!(sig.to_string(), "essay -> score");
//! ```
//!
//! The data model lives here ([`Signature`], [`Field`], [`FieldSpec`],
//! [`SignatureBuilder`]); the type system DSPy borrows from Python's
//! `typing` is in `types` ([`FieldType`]), pydantic's field constraints in
//! `constraint` ([`Constraint`]), and the Python string functions DSPy
//! applies while building (prefix inference, `inspect.cleandoc`) in `text`.
//! All of them are re-exported from this module.

mod constraint;
mod text;
mod types;

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

pub use constraint::Constraint;
pub use text::{cleandoc, expandtabs, float_repr, infer_prefix, write_float_repr, write_number};
pub use types::{DspyType, FieldType, LiteralValue};

/// Whether a field is given to the program or produced by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldRole {
    /// An input field (`dspy.InputField`).
    Input,
    /// An output field (`dspy.OutputField`).
    Output,
}

impl FieldRole {
    /// `"input"` or `"output"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldRole::Input => "input",
            FieldRole::Output => "output",
        }
    }
}

/// One field of a signature. Built through [`FieldSpec`] and [`SignatureBuilder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    name: String,
    role: FieldRole,
    ty: FieldType,
    prefix: String,
    desc: String,
    constraints: Vec<Constraint>,
    type_constraints: Vec<Constraint>,
    type_declared: bool,
    default: Option<Value>,
}

impl Field {
    /// The field's name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Input or output.
    #[inline]
    pub fn role(&self) -> FieldRole {
        self.role
    }
    /// The field's type.
    #[inline]
    pub fn ty(&self) -> &FieldType {
        &self.ty
    }
    /// The prompt prefix, e.g. `Question:`.
    #[inline]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The description; DSPy's default is `${name}`.
    #[inline]
    pub fn desc(&self) -> &str {
        &self.desc
    }
    /// Whether the description is DSPy's placeholder `${name}` (not shown in prompts).
    pub fn has_default_desc(&self) -> bool {
        self.desc.len() == self.name.len() + 3
            && self.desc.starts_with("${")
            && self.desc.ends_with('}')
            && self.desc[2..self.desc.len() - 1] == self.name
    }
    /// Pydantic constraints, in declaration order.
    #[inline]
    pub fn constraints(&self) -> &[Constraint] {
        &self.constraints
    }
    /// Constraints written into the type, `a: Annotated[int, Field(gt=0)]`,
    /// in pydantic's order. pydantic lifts them off the field's type, so DSPy
    /// neither shows them to the LM nor checks parsed outputs against them
    /// (nor does the engine); strict input checks apply them.
    #[inline]
    pub fn type_constraints(&self) -> &[Constraint] {
        &self.type_constraints
    }
    /// False when the signature string gave no type (the type is then `str`).
    #[inline]
    pub fn type_declared(&self) -> bool {
        self.type_declared
    }
    /// The default value, if the field declares one.
    #[inline]
    pub fn default(&self) -> Option<&Value> {
        self.default.as_ref()
    }
}

/// The description of one field for [`SignatureBuilder`], mirroring
/// `dspy.InputField(...)` / `dspy.OutputField(...)` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    name: String,
    ty: FieldType,
    desc: Option<String>,
    prefix: Option<String>,
    constraints: Vec<Constraint>,
    type_constraints: Vec<Constraint>,
    type_declared: bool,
    default: Option<Value>,
}

impl FieldSpec {
    /// A field called `name` of type `ty`.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        FieldSpec {
            name: name.into(),
            ty,
            desc: None,
            prefix: None,
            constraints: Vec::new(),
            type_constraints: Vec::new(),
            type_declared: true,
            default: None,
        }
    }

    /// A `str` field whose type was not written (untyped string-signature field).
    pub fn untyped(name: impl Into<String>) -> Self {
        FieldSpec { type_declared: false, ..FieldSpec::new(name, FieldType::Str) }
    }

    /// The description shown to the LM.
    pub fn desc(mut self, desc: impl Into<String>) -> Self {
        self.desc = Some(desc.into());
        self
    }

    /// An explicit prompt prefix (otherwise inferred from the name).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Add a pydantic constraint.
    pub fn constraint(mut self, c: Constraint) -> Self {
        self.constraints.push(c);
        self
    }

    /// Constraints from the type's `Annotated[T, Field(...)]` (see
    /// [`Field::type_constraints`]).
    pub fn type_constraints(mut self, constraints: Vec<Constraint>) -> Self {
        self.type_constraints = constraints;
        self
    }

    /// A default value.
    pub fn default_value(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }

    /// Replace the type, and record whether it was written out.
    pub fn with_type(mut self, ty: FieldType, declared: bool) -> Self {
        self.ty = ty;
        self.type_declared = declared;
        self
    }

    /// The field's name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A value the engine derives from a signature alone and caches on it.
pub type Memo = Arc<dyn std::any::Any + Send + Sync>;

/// Number of memo slots a signature carries for the engine's cached renderings.
pub const MEMO_SLOTS: usize = 4;

/// A finished signature. Immutable; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Signature {
    instructions: String,
    fields: Vec<Field>,
    n_inputs: usize,
    all_native: bool,
    memo: Arc<[OnceLock<Memo>; MEMO_SLOTS]>,
}

impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        self.instructions == other.instructions && self.fields == other.fields && self.n_inputs == other.n_inputs
    }
}

impl Signature {
    /// Start building a signature.
    pub fn builder() -> SignatureBuilder {
        SignatureBuilder::default()
    }

    /// The instructions (after `inspect.cleandoc`, or DSPy's default text).
    #[inline]
    pub fn instructions(&self) -> &str {
        &self.instructions
    }

    /// All fields, inputs first.
    #[inline]
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Input fields in order.
    #[inline]
    pub fn inputs(&self) -> &[Field] {
        &self.fields[..self.n_inputs]
    }

    /// Output fields in order.
    #[inline]
    pub fn outputs(&self) -> &[Field] {
        &self.fields[self.n_inputs..]
    }

    /// A field by name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// An input field by name.
    pub fn input(&self, name: &str) -> Option<&Field> {
        self.inputs().iter().find(|f| f.name == name)
    }

    /// An output field by name.
    pub fn output(&self, name: &str) -> Option<&Field> {
        self.outputs().iter().find(|f| f.name == name)
    }

    /// Whether every field's type can run natively.
    #[inline]
    pub fn is_native(&self) -> bool {
        self.all_native
    }

    /// A new signature with different instructions (`with_instructions`).
    pub fn with_instructions(&self, instructions: &str) -> Signature {
        let mut b = self.to_builder();
        b.instructions = Some(instructions.to_string());
        b.build_unchecked()
    }

    /// A new signature with `field` inserted first among its role's fields
    /// (`Signature.prepend`), as `dspy.ChainOfThought` does with `reasoning`.
    pub fn prepend(&self, role: FieldRole, field: FieldSpec) -> Result<Signature> {
        let mut b = self.to_builder();
        match role {
            FieldRole::Input => b.inputs.insert(0, field),
            FieldRole::Output => b.outputs.insert(0, field),
        }
        b.build()
    }

    /// A new signature without the field `name` (`Signature.delete`); unchanged if absent.
    pub fn without(&self, name: &str) -> Signature {
        let mut b = self.to_builder();
        b.inputs.retain(|f| f.name != name);
        b.outputs.retain(|f| f.name != name);
        b.build_unchecked()
    }

    /// A new signature with the instructions and each field's prefix and
    /// description replaced, as DSPy's `Signature.load_state` does with saved
    /// state (fields matched by position, extra entries ignored).
    pub fn with_state(&self, instructions: &str, prefixes_and_descs: &[(String, String)]) -> Signature {
        let mut b = self.to_builder();
        b.instructions = Some(instructions.to_string());
        let all = b.inputs.iter_mut().chain(b.outputs.iter_mut());
        for (spec, (prefix, desc)) in all.zip(prefixes_and_descs) {
            spec.prefix = Some(prefix.clone());
            spec.desc = Some(desc.clone());
        }
        b.build_unchecked()
    }

    /// The builder this signature came from (explicit values only).
    pub fn to_builder(&self) -> SignatureBuilder {
        let spec = |f: &Field| FieldSpec {
            name: f.name.clone(),
            ty: f.ty.clone(),
            desc: Some(f.desc.clone()),
            prefix: Some(f.prefix.clone()),
            constraints: f.constraints.clone(),
            type_constraints: f.type_constraints.clone(),
            type_declared: f.type_declared,
            default: f.default.clone(),
        };
        SignatureBuilder {
            instructions: Some(self.instructions.clone()),
            inputs: self.inputs().iter().map(spec).collect(),
            outputs: self.outputs().iter().map(spec).collect(),
        }
    }

    /// A slot for a rendering the engine derives from this signature alone
    /// (for example a system message), computed once and shared by clones.
    /// Slots are assigned by the engine; the signature does not interpret them.
    #[inline]
    pub fn memo(&self, slot: usize) -> Option<&OnceLock<Memo>> {
        self.memo.get(slot)
    }
}

impl AsRef<Signature> for Signature {
    fn as_ref(&self) -> &Signature {
        self
    }
}

impl fmt::Display for Signature {
    /// DSPy's `signature` string: `a, b -> c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |fields: &[Field]| fields.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ");
        write!(f, "{} -> {}", names(self.inputs()), names(self.outputs()))
    }
}

/// Builds a [`Signature`] the way a class deriving `dspy.Signature` does.
#[derive(Debug, Clone, Default)]
pub struct SignatureBuilder {
    instructions: Option<String>,
    inputs: Vec<FieldSpec>,
    outputs: Vec<FieldSpec>,
}

impl SignatureBuilder {
    /// The instructions (the class docstring). They are cleaned with
    /// `inspect.cleandoc` rules; empty instructions mean DSPy's default text.
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        self.instructions = Some(text.into());
        self
    }

    /// Add an input field.
    pub fn input(mut self, field: FieldSpec) -> Self {
        self.inputs.push(field);
        self
    }

    /// Add an output field.
    pub fn output(mut self, field: FieldSpec) -> Self {
        self.outputs.push(field);
        self
    }

    /// Check the fields as DSPy and pydantic do and build the signature.
    ///
    /// Errors carry DSPy's exception name in [`Error::python_type`].
    pub fn build(self) -> Result<Signature> {
        for spec in self.inputs.iter().chain(&self.outputs) {
            check_field_name(&spec.name)?;
        }
        let mut seen = std::collections::HashSet::new();
        for spec in self.inputs.iter().chain(&self.outputs) {
            if !seen.insert(spec.name.as_str()) {
                if self.inputs.iter().any(|f| f.name == spec.name) && self.outputs.iter().any(|f| f.name == spec.name) {
                    let mut dups: Vec<&str> = self
                        .inputs
                        .iter()
                        .filter(|i| self.outputs.iter().any(|o| o.name == i.name))
                        .map(|f| f.name.as_str())
                        .collect();
                    dups.sort_unstable();
                    dups.dedup();
                    return Err(Error::new(
                        ErrorKind::InvalidSignature,
                        format!(
                            "Input and output fields must have distinct names, but found duplicates: '{}'.",
                            dups.join(", ")
                        ),
                    )
                    .with_python_type("ValueError"));
                }
                return Err(Error::new(
                    ErrorKind::InvalidSignature,
                    format!("field `{}` is declared twice", spec.name),
                )
                .with_field(spec.name.clone()));
            }
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> Signature {
        let instructions = match self.instructions.as_deref().map(cleandoc) {
            Some(text) if !text.is_empty() => text,
            _ => default_instructions(&self.inputs, &self.outputs),
        };
        let n_inputs = self.inputs.len();
        let make = |spec: FieldSpec, role: FieldRole| Field {
            prefix: spec.prefix.unwrap_or_else(|| {
                let mut p = infer_prefix(&spec.name);
                p.push(':');
                p
            }),
            desc: spec.desc.unwrap_or_else(|| {
                let mut d = String::with_capacity(spec.name.len() + 3);
                d.push_str("${");
                d.push_str(&spec.name);
                d.push('}');
                d
            }),
            name: spec.name,
            role,
            ty: spec.ty,
            constraints: spec.constraints,
            type_constraints: spec.type_constraints,
            type_declared: spec.type_declared,
            default: spec.default,
        };
        let fields: Vec<Field> = self
            .inputs
            .into_iter()
            .map(|s| make(s, FieldRole::Input))
            .chain(self.outputs.into_iter().map(|s| make(s, FieldRole::Output)))
            .collect();
        let all_native = fields.iter().all(|f: &Field| f.ty.is_native());
        Signature { instructions, fields, n_inputs, all_native, memo: Arc::new(Default::default()) }
    }
}

/// The checks pydantic applies to a field name (no leading underscore) and
/// that it is an identifier. Errors carry DSPy's exception name.
pub fn check_field_name(name: &str) -> Result<()> {
    if name.starts_with('_') {
        return Err(Error::new(
            ErrorKind::InvalidSignature,
            format!(
                "Fields must not use names with leading underscores; e.g., use '{}' instead of '{}'.",
                name.trim_start_matches('_'),
                name
            ),
        )
        .with_python_type("PydanticUserError")
        .with_field(name.to_string()));
    }
    let mut chars = name.chars();
    let valid = match chars.next() {
        Some(c) => (c.is_alphabetic() || c == '_') && chars.all(|c| c.is_alphanumeric() || c == '_'),
        None => false,
    };
    if !valid {
        return Err(Error::new(ErrorKind::InvalidSignature, format!("field name {name:?} is not a valid identifier"))
            .with_field(name.to_string()));
    }
    Ok(())
}

/// DSPy's default instructions: ``Given the fields `a`, produce the fields `b`.``
pub fn default_instructions(inputs: &[FieldSpec], outputs: &[FieldSpec]) -> String {
    let mut out = String::with_capacity(48 + 6 * (inputs.len() + outputs.len()));
    let list = |out: &mut String, fields: &[FieldSpec]| {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push('`');
            out.push_str(&f.name);
            out.push('`');
        }
    };
    out.push_str("Given the fields ");
    list(&mut out, inputs);
    out.push_str(", produce the fields ");
    list(&mut out, outputs);
    out.push('.');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_constraints_and_signature_edits_have_stable_names() {
        let names: Vec<String> = [
            FieldType::Set(Some(Box::new(FieldType::Int))),
            FieldType::Set(None),
            FieldType::FrozenSet(Some(Box::new(FieldType::Str))),
            FieldType::FrozenSet(None),
            FieldType::List(None),
            FieldType::Any,
            FieldType::Dspy(DspyType::History),
            FieldType::literal_strs(["a", "b"]),
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        assert_eq!(
            names,
            ["set[int]", "set", "frozenset[str]", "frozenset", "list", "Any", "History", "Literal['a', 'b']"]
        );
        for d in [DspyType::Audio, DspyType::File, DspyType::Tool, DspyType::ToolCalls, DspyType::Code] {
            assert_eq!(DspyType::from_name(d.name()), Some(d));
        }
        let n = |x: i64| serde_json::Number::from(x);
        let keys: Vec<&str> = [
            Constraint::Gt(n(1)),
            Constraint::Ge(n(1)),
            Constraint::Lt(n(1)),
            Constraint::Le(n(1)),
            Constraint::MinLength(1),
            Constraint::MaxLength(1),
            Constraint::MultipleOf(n(2)),
            Constraint::AllowInfNan(false),
        ]
        .iter()
        .map(Constraint::key)
        .collect();
        assert_eq!(keys, ["gt", "ge", "lt", "le", "min_length", "max_length", "multiple_of", "allow_inf_nan"]);
        for c in [Constraint::MultipleOf(n(2)), Constraint::AllowInfNan(true)] {
            assert_eq!(Constraint::from_key(c.key(), &c.value()).unwrap(), c);
        }

        let sig = Signature::builder()
            .input(FieldSpec::new("question", FieldType::Str).default_value(Value::from("why?")))
            .output(FieldSpec::new("answer", FieldType::Str))
            .build()
            .unwrap();
        assert_eq!(sig.field("question").and_then(|f| f.default()), Some(&Value::from("why?")));
        assert!(sig.field("nope").is_none());
        let edited = sig.with_instructions("Be brief.");
        assert_eq!(edited.instructions(), "Be brief.");
        assert_eq!(edited.fields().len(), 2);
        assert_eq!(infer_prefix("ǆemal"), "ǅemal");
    }

    #[test]
    fn builder_rejects_like_dspy() {
        let err = Signature::builder().input(FieldSpec::untyped("_a")).build().unwrap_err();
        assert_eq!(err.python_type(), Some("PydanticUserError"));
        let err = Signature::builder()
            .input(FieldSpec::untyped("b"))
            .input(FieldSpec::untyped("a"))
            .output(FieldSpec::untyped("a"))
            .output(FieldSpec::untyped("b"))
            .build()
            .unwrap_err();
        assert_eq!(err.message(), "Input and output fields must have distinct names, but found duplicates: 'a, b'.");
        let err =
            Signature::builder().input(FieldSpec::untyped("a")).input(FieldSpec::untyped("a")).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSignature);
        assert!(Signature::builder().input(FieldSpec::untyped("my-field")).build().is_err());
    }

    #[test]
    fn defaults_prepend_and_state() {
        let sig = Signature::builder()
            .input(FieldSpec::untyped("question"))
            .output(FieldSpec::untyped("answer"))
            .build()
            .unwrap();
        assert_eq!(sig.instructions(), "Given the fields `question`, produce the fields `answer`.");
        assert!(sig.outputs()[0].has_default_desc());
        let cot = sig.prepend(FieldRole::Output, FieldSpec::new("reasoning", FieldType::Str)).unwrap();
        assert_eq!(cot.to_string(), "question -> reasoning, answer");
        // Instructions survive: prepend keeps the explicit text.
        assert_eq!(cot.instructions(), sig.instructions());
        let loaded = cot.with_state("New.", &[("Q:".into(), "the q".into()), ("R:".into(), "why".into())]);
        assert_eq!(loaded.instructions(), "New.");
        assert_eq!(loaded.inputs()[0].prefix(), "Q:");
        assert_eq!(loaded.outputs()[0].desc(), "why");
        assert_eq!(loaded.outputs()[1].prefix(), "Answer:");
        assert_eq!(cot.without("reasoning"), sig);
        assert!(sig.memo(0).is_some() && sig.memo(MEMO_SLOTS).is_none());
    }
}
