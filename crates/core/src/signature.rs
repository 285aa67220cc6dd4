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

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

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

/// A constant allowed in a `Literal[...]` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LiteralValue {
    /// A string constant.
    Str(String),
    /// An integer constant.
    Int(i64),
    /// `True` or `False`.
    Bool(bool),
    /// `None`.
    None,
}

impl LiteralValue {
    /// The constant as a JSON value.
    pub fn to_json(&self) -> Value {
        match self {
            LiteralValue::Str(s) => Value::String(s.clone()),
            LiteralValue::Int(i) => Value::from(*i),
            LiteralValue::Bool(b) => Value::Bool(*b),
            LiteralValue::None => Value::Null,
        }
    }

    /// Python's `str()` of the constant.
    pub fn py_str(&self) -> String {
        match self {
            LiteralValue::Str(s) => s.clone(),
            LiteralValue::Int(i) => i.to_string(),
            LiteralValue::Bool(true) => "True".into(),
            LiteralValue::Bool(false) => "False".into(),
            LiteralValue::None => "None".into(),
        }
    }
}

/// DSPy's own value types that can appear in signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DspyType {
    /// `dspy.History`: earlier turns of a conversation.
    History,
    /// `dspy.Image`.
    Image,
    /// `dspy.Audio`.
    Audio,
    /// `dspy.File`.
    File,
    /// `dspy.Tool`.
    Tool,
    /// `dspy.ToolCalls`.
    ToolCalls,
    /// `dspy.Code`.
    Code,
    /// `dspy.Reasoning`.
    Reasoning,
    /// `dspy.Document`.
    Document,
    /// `dspy.Citations`.
    Citations,
}

impl DspyType {
    /// All DSPy types, for lookups by name.
    pub const ALL: [DspyType; 10] = [
        DspyType::History,
        DspyType::Image,
        DspyType::Audio,
        DspyType::File,
        DspyType::Tool,
        DspyType::ToolCalls,
        DspyType::Code,
        DspyType::Reasoning,
        DspyType::Document,
        DspyType::Citations,
    ];

    /// The class name, as in `dspy.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            DspyType::History => "History",
            DspyType::Image => "Image",
            DspyType::Audio => "Audio",
            DspyType::File => "File",
            DspyType::Tool => "Tool",
            DspyType::ToolCalls => "ToolCalls",
            DspyType::Code => "Code",
            DspyType::Reasoning => "Reasoning",
            DspyType::Document => "Document",
            DspyType::Citations => "Citations",
        }
    }

    /// Look a type up by its class name.
    pub fn from_name(name: &str) -> Option<DspyType> {
        DspyType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The type of a field, as DSPy (that is, Python's `typing`) sees it.
///
/// Unions are kept normalised the way `typing.Union` normalises them: nested
/// unions are flattened, duplicates dropped, a one-member union is that member.
/// Build them with [`FieldType::union`] or [`FieldType::optional`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldType {
    /// `str` (also the type of untyped fields).
    Str,
    /// `int`.
    Int,
    /// `float`.
    Float,
    /// `bool`.
    Bool,
    /// `bytes`.
    Bytes,
    /// `complex`.
    Complex,
    /// `NoneType`.
    None,
    /// `typing.Any`.
    Any,
    /// `list` or `list[T]`.
    List(Option<Box<FieldType>>),
    /// `set` or `set[T]`.
    Set(Option<Box<FieldType>>),
    /// `frozenset` or `frozenset[T]`.
    FrozenSet(Option<Box<FieldType>>),
    /// `dict` or `dict[K, V]`.
    Dict(Option<(Box<FieldType>, Box<FieldType>)>),
    /// `tuple` (no arguments) or `tuple[A, B, ...]` with fixed positions.
    Tuple(Option<Vec<FieldType>>),
    /// `tuple[T, ...]`: any length, every item a `T`.
    VarTuple(Box<FieldType>),
    /// `Union[A, B, ...]`; `Optional[T]` is `Union[T, NoneType]`.
    Union(Vec<FieldType>),
    /// `Literal[...]`.
    Literal(Vec<LiteralValue>),
    /// One of DSPy's value types.
    Dspy(DspyType),
    /// A type DSPy accepts that this runtime can name but not run natively,
    /// for example `Sequence[str]`. `name` is the origin's `__name__`.
    Other {
        /// The origin's name, e.g. `Sequence`.
        name: String,
        /// Type arguments.
        args: Vec<FieldType>,
    },
}

impl FieldType {
    /// `list[item]`.
    pub fn list(item: FieldType) -> FieldType {
        FieldType::List(Some(Box::new(item)))
    }

    /// `dict[key, value]`.
    pub fn dict(key: FieldType, value: FieldType) -> FieldType {
        FieldType::Dict(Some((Box::new(key), Box::new(value))))
    }

    /// `Optional[inner]`, i.e. `Union[inner, NoneType]`.
    pub fn optional(inner: FieldType) -> FieldType {
        FieldType::union(vec![inner, FieldType::None])
    }

    /// `Literal[...]` of strings.
    pub fn literal_strs<I, S>(values: I) -> FieldType
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        FieldType::Literal(values.into_iter().map(|s| LiteralValue::Str(s.into())).collect())
    }

    /// `Union[...]` normalised as `typing.Union` does: flattened, without
    /// duplicates, collapsed when one member is left.
    pub fn union(members: Vec<FieldType>) -> FieldType {
        let mut flat: Vec<FieldType> = Vec::with_capacity(members.len());
        for m in members {
            match m {
                FieldType::Union(inner) => {
                    for t in inner {
                        if !flat.contains(&t) {
                            flat.push(t);
                        }
                    }
                }
                t => {
                    if !flat.contains(&t) {
                        flat.push(t);
                    }
                }
            }
        }
        if flat.len() == 1 {
            flat.pop().unwrap_or(FieldType::None)
        } else {
            FieldType::Union(flat)
        }
    }

    /// Whether `None` is an allowed value (DSPy's `annotation_allows_none`).
    #[inline]
    pub fn allows_none(&self) -> bool {
        match self {
            FieldType::None => true,
            FieldType::Union(members) => members.iter().any(FieldType::allows_none),
            _ => false,
        }
    }

    /// The name DSPy prints for this type in prompts (`get_annotation_name`),
    /// e.g. `list[str]`, `Union[int, NoneType]`, `Literal['a', 'b']`.
    pub fn annotation_name(&self) -> String {
        let mut out = String::new();
        self.write_annotation_name(&mut out);
        out
    }

    fn write_annotation_name(&self, out: &mut String) {
        fn args(out: &mut String, origin: &str, items: &[&FieldType]) {
            out.push_str(origin);
            out.push('[');
            for (i, t) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                t.write_annotation_name(out);
            }
            out.push(']');
        }
        match self {
            FieldType::Str => out.push_str("str"),
            FieldType::Int => out.push_str("int"),
            FieldType::Float => out.push_str("float"),
            FieldType::Bool => out.push_str("bool"),
            FieldType::Bytes => out.push_str("bytes"),
            FieldType::Complex => out.push_str("complex"),
            FieldType::None => out.push_str("NoneType"),
            FieldType::Any => out.push_str("Any"),
            FieldType::List(None) => out.push_str("list"),
            FieldType::List(Some(t)) => args(out, "list", &[t]),
            FieldType::Set(None) => out.push_str("set"),
            FieldType::Set(Some(t)) => args(out, "set", &[t]),
            FieldType::FrozenSet(None) => out.push_str("frozenset"),
            FieldType::FrozenSet(Some(t)) => args(out, "frozenset", &[t]),
            FieldType::Dict(None) => out.push_str("dict"),
            FieldType::Dict(Some((k, v))) => args(out, "dict", &[k, v]),
            FieldType::Tuple(None) => out.push_str("tuple"),
            FieldType::Tuple(Some(items)) => {
                let refs: Vec<&FieldType> = items.iter().collect();
                args(out, "tuple", &refs);
            }
            FieldType::VarTuple(t) => {
                out.push_str("tuple[");
                t.write_annotation_name(out);
                out.push_str(", Ellipsis]");
            }
            FieldType::Union(items) => {
                let refs: Vec<&FieldType> = items.iter().collect();
                args(out, "Union", &refs);
            }
            FieldType::Literal(values) => {
                out.push_str("Literal[");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    match v {
                        LiteralValue::Str(s) => push_literal_quoted(out, s),
                        other => out.push_str(&other.py_str()),
                    }
                }
                out.push(']');
            }
            // DSPy prints `Reasoning` as `str` for backward compatibility.
            FieldType::Dspy(DspyType::Reasoning) => out.push_str("str"),
            FieldType::Dspy(t) => out.push_str(t.name()),
            FieldType::Other { name, args: a } => {
                if a.is_empty() {
                    out.push_str(name);
                } else {
                    let refs: Vec<&FieldType> = a.iter().collect();
                    args(out, name, &refs);
                }
            }
        }
    }

    /// Whether the native engine can format, parse and validate values of
    /// this type exactly as DSPy does.
    pub fn is_native(&self) -> bool {
        match self {
            FieldType::Complex | FieldType::Other { .. } => false,
            FieldType::Dspy(t) => *t == DspyType::History,
            FieldType::List(t) | FieldType::Set(t) | FieldType::FrozenSet(t) => {
                t.as_deref().is_none_or(FieldType::is_native_value)
            }
            FieldType::Dict(kv) => kv.as_ref().is_none_or(|(k, v)| k.is_native_value() && v.is_native_value()),
            FieldType::Tuple(items) => items.as_ref().is_none_or(|i| i.iter().all(FieldType::is_native_value)),
            FieldType::VarTuple(t) => t.is_native_value(),
            FieldType::Union(items) => items.iter().all(FieldType::is_native_value),
            _ => true,
        }
    }

    fn is_native_value(&self) -> bool {
        !matches!(self, FieldType::Dspy(_)) && self.is_native()
    }
}

/// DSPy's quoting of string constants inside `Literal[...]` names: no
/// escaping except `\'` when both quote kinds occur.
fn push_literal_quoted(out: &mut String, s: &str) {
    let single = s.contains('\'');
    let double = s.contains('"');
    match (single, double) {
        (true, false) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        (true, true) => {
            out.push('\'');
            out.push_str(&s.replace('\'', "\\'"));
            out.push('\'');
        }
        _ => {
            out.push('\'');
            out.push_str(s);
            out.push('\'');
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.annotation_name())
    }
}

/// A pydantic field constraint, shown to the LM as DSPy shows it
/// (`greater than or equal to: 0`). Values are numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// `gt`
    Gt(serde_json::Number),
    /// `ge`
    Ge(serde_json::Number),
    /// `lt`
    Lt(serde_json::Number),
    /// `le`
    Le(serde_json::Number),
    /// `min_length`
    MinLength(u64),
    /// `max_length`
    MaxLength(u64),
    /// `multiple_of`
    MultipleOf(serde_json::Number),
    /// `allow_inf_nan`
    AllowInfNan(bool),
}

impl Constraint {
    /// The keyword argument name pydantic uses.
    pub fn key(&self) -> &'static str {
        match self {
            Constraint::Gt(_) => "gt",
            Constraint::Ge(_) => "ge",
            Constraint::Lt(_) => "lt",
            Constraint::Le(_) => "le",
            Constraint::MinLength(_) => "min_length",
            Constraint::MaxLength(_) => "max_length",
            Constraint::MultipleOf(_) => "multiple_of",
            Constraint::AllowInfNan(_) => "allow_inf_nan",
        }
    }

    /// The label DSPy prints before the value.
    pub fn label(&self) -> &'static str {
        match self {
            Constraint::Gt(_) => "greater than: ",
            Constraint::Ge(_) => "greater than or equal to: ",
            Constraint::Lt(_) => "less than: ",
            Constraint::Le(_) => "less than or equal to: ",
            Constraint::MinLength(_) => "minimum length: ",
            Constraint::MaxLength(_) => "maximum length: ",
            Constraint::MultipleOf(_) => "a multiple of the given number: ",
            Constraint::AllowInfNan(_) => "allow 'inf', '-inf', 'nan' values: ",
        }
    }

    /// The constraint's value as JSON.
    pub fn value(&self) -> Value {
        match self {
            Constraint::Gt(n)
            | Constraint::Ge(n)
            | Constraint::Lt(n)
            | Constraint::Le(n)
            | Constraint::MultipleOf(n) => Value::Number(n.clone()),
            Constraint::MinLength(n) | Constraint::MaxLength(n) => Value::from(*n),
            Constraint::AllowInfNan(b) => Value::Bool(*b),
        }
    }

    /// Build a constraint from pydantic's keyword and a JSON value.
    pub fn from_key(key: &str, value: &Value) -> Result<Constraint> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidSignature,
                format!(
                    "constraint `{key}` needs a {} value, got {value}",
                    if key.ends_with("length") { "non-negative integer" } else { "numeric" }
                ),
            )
        };
        let num = || match value {
            Value::Number(n) => Ok(n.clone()),
            _ => Err(bad()),
        };
        Ok(match key {
            "gt" => Constraint::Gt(num()?),
            "ge" => Constraint::Ge(num()?),
            "lt" => Constraint::Lt(num()?),
            "le" => Constraint::Le(num()?),
            "multiple_of" => Constraint::MultipleOf(num()?),
            "min_length" => Constraint::MinLength(value.as_u64().ok_or_else(bad)?),
            "max_length" => Constraint::MaxLength(value.as_u64().ok_or_else(bad)?),
            "allow_inf_nan" => Constraint::AllowInfNan(value.as_bool().ok_or_else(bad)?),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidSignature,
                    format!(
                        "unknown constraint `{other}` (known: gt, ge, lt, le, min_length, max_length, multiple_of, allow_inf_nan)"
                    ),
                ))
            }
        })
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

/// DSPy's `infer_prefix`: `camelCaseText` → `Camel Case Text`,
/// `text2number` → `Text 2 Number`, `HTMLParser` → `HTML Parser`.
pub fn infer_prefix(name: &str) -> String {
    if name.is_ascii() {
        return infer_prefix_ascii(name.as_bytes());
    }
    infer_prefix_general(name)
}

fn infer_prefix_general(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    // re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    let mut s1: Vec<char> = Vec::with_capacity(chars.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '\n' && i + 1 < chars.len() && chars[i + 1].is_ascii_uppercase() {
            let lower_run = chars[i + 2..].iter().take_while(|c| c.is_ascii_lowercase()).count();
            if lower_run > 0 {
                s1.push(c);
                s1.push('_');
                s1.extend_from_slice(&chars[i + 1..i + 2 + lower_run]);
                i += 2 + lower_run;
                continue;
            }
        }
        s1.push(c);
        i += 1;
    }
    // re.sub("([a-z0-9])([A-Z])", r"\1_\2", s1)
    let s2 = insert_between(&s1, |a| a.is_ascii_lowercase() || a.is_ascii_digit(), |b| b.is_ascii_uppercase());
    // re.sub(r"([a-zA-Z])(\d)", ...) then re.sub(r"(\d)([a-zA-Z])", ...)
    let s3 = insert_between(&s2, |a| a.is_ascii_alphabetic(), is_decimal);
    let s4 = insert_between(&s3, is_decimal, |b| b.is_ascii_alphabetic());
    let joined: String = s4.into_iter().collect();
    joined
        .split('_')
        .map(|word| if py_isupper(word) { word.to_string() } else { py_capitalize(word) })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `infer_prefix` for ASCII names, in one pass: word boundaries are found on
/// the bytes, then each word is title-cased unless it is all upper case.
fn infer_prefix_ascii(b: &[u8]) -> String {
    // Step 1: `(.)([A-Z][a-z]+)` inserts a break before an upper-case letter that
    // starts a lower-case run (not at the very start).
    let mut breaks = vec![false; b.len() + 1];
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] != b'\n' && b[i + 1].is_ascii_uppercase() && b.get(i + 2).is_some_and(u8::is_ascii_lowercase) {
            breaks[i + 1] = true;
            let mut j = i + 2;
            while j < b.len() && b[j].is_ascii_lowercase() {
                j += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    // Steps 2-4 run on the text with step 1's underscores; an inserted `_`
    // separates the pair, so a pair only counts where no break was inserted.
    let pair_pass = |breaks: &mut Vec<bool>, first: &dyn Fn(u8) -> bool, second: &dyn Fn(u8) -> bool| {
        let mut i = 0;
        while i + 1 < b.len() {
            if !breaks[i + 1] && first(b[i]) && second(b[i + 1]) {
                breaks[i + 1] = true;
                i += 2;
            } else {
                i += 1;
            }
        }
    };
    pair_pass(&mut breaks, &|a| a.is_ascii_lowercase() || a.is_ascii_digit(), &|c| c.is_ascii_uppercase());
    pair_pass(&mut breaks, &|a| a.is_ascii_alphabetic(), &|c| c.is_ascii_digit());
    pair_pass(&mut breaks, &|a| a.is_ascii_digit(), &|c| c.is_ascii_alphabetic());
    let mut out = String::with_capacity(b.len() + 8);
    let mut word_start = 0;
    let emit = |out: &mut String, word: &[u8], first: bool| {
        if !first {
            out.push(' ');
        }
        let upper = word.iter().any(u8::is_ascii_uppercase) && !word.iter().any(u8::is_ascii_lowercase);
        for (k, &c) in word.iter().enumerate() {
            let c = if upper {
                c
            } else if k == 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            out.push(c as char);
        }
    };
    let mut first = true;
    for k in 0..=b.len() {
        let split = k == b.len() || b[k] == b'_' || breaks[k];
        if split {
            emit(&mut out, &b[word_start..k], first);
            first = false;
            word_start = if k < b.len() && b[k] == b'_' { k + 1 } else { k };
        }
    }
    out
}

/// Non-overlapping left-to-right `re.sub("(A)(B)", r"\1_\2")`.
fn insert_between(chars: &[char], first: impl Fn(char) -> bool, second: impl Fn(char) -> bool) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            out.push(chars[i]);
            out.push('_');
            out.push(chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Python's `\d` in a str pattern: Unicode decimal digits (category Nd).
fn is_decimal(c: char) -> bool {
    c.is_ascii_digit() || decimal_like(c)
}

fn decimal_like(c: char) -> bool {
    // Nd digits come in contiguous runs of ten starting at a code point ending in 0 or 6;
    // `char::is_numeric` also admits No/Nl (like '²' or 'Ⅻ'), which Python's \d rejects.
    const ND_ZEROS: &[u32] = &[
        0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0, 0xF20,
        0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0,
        0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    ];
    let cp = c as u32;
    ND_ZEROS.iter().any(|&z| cp >= z && cp < z + 10)
}

/// Python's `str.isupper()`: at least one cased character and no lowercase ones.
fn py_isupper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_lowercase() {
            return false;
        }
        if c.is_uppercase() {
            cased = true;
        }
    }
    cased
}

/// Python's `str.capitalize()`: first character title-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => {
            let mut out: String = titlecase(first);
            for c in chars {
                out.extend(c.to_lowercase());
            }
            out
        }
    }
}

fn titlecase(c: char) -> String {
    // The few characters whose title case differs from their upper case.
    match c {
        'Ǆ' | 'ǅ' | 'ǆ' => "ǅ".into(),
        'Ǉ' | 'ǈ' | 'ǉ' => "ǈ".into(),
        'Ǌ' | 'ǋ' | 'ǌ' => "ǋ".into(),
        'Ǳ' | 'ǲ' | 'ǳ' => "ǲ".into(),
        _ => c.to_uppercase().collect(),
    }
}

/// Python's `inspect.cleandoc`: expand tabs, drop the common indentation of
/// all lines after the first, strip the first line's indentation, and drop
/// leading and trailing blank lines.
pub fn cleandoc(doc: &str) -> String {
    let expanded = expandtabs(doc, 8);
    let lines: Vec<&str> = expanded.split('\n').collect();
    let margin = lines
        .iter()
        .skip(1)
        .filter_map(|l| {
            let content = l.trim_start_matches(' ');
            if content.is_empty() {
                None
            } else {
                Some(l.len() - content.len())
            }
        })
        .min()
        .unwrap_or(usize::MAX);
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    out.push(lines[0].trim_start_matches(' ').to_string());
    for l in &lines[1..] {
        if margin == usize::MAX {
            out.push((*l).to_string());
        } else {
            out.push(l.get(margin.min(l.len())..).unwrap_or("").to_string());
        }
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    let first_content = out.iter().position(|l| !l.is_empty()).unwrap_or(out.len());
    out.drain(..first_content);
    out.join("\n")
}

/// Python's `str.expandtabs(tabsize)`.
pub fn expandtabs(s: &str, tabsize: usize) -> String {
    if !s.contains('\t') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut col = 0usize;
    for c in s.chars() {
        match c {
            '\t' => {
                let n = tabsize - (col % tabsize);
                out.extend(std::iter::repeat_n(' ', n));
                col += n;
            }
            '\n' | '\r' => {
                out.push(c);
                col = 0;
            }
            _ => {
                out.push(c);
                col += 1;
            }
        }
    }
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
    fn infer_prefix_matches_dspy_examples() {
        assert_eq!(infer_prefix("camelCaseText"), "Camel Case Text");
        assert_eq!(infer_prefix("snake_case_text"), "Snake Case Text");
        assert_eq!(infer_prefix("text2number"), "Text 2 Number");
        assert_eq!(infer_prefix("HTMLParser"), "HTML Parser");
        assert_eq!(infer_prefix("x_1"), "X 1");
        assert_eq!(infer_prefix("y2z"), "Y 2 Z");
        assert_eq!(infer_prefix("ABC"), "ABC");
        assert_eq!(infer_prefix("getHTTPResponseCode"), "Get HTTP Response Code");
        assert_eq!(infer_prefix("a2B"), "A 2 B");
        assert_eq!(infer_prefix("é"), "É");
        assert_eq!(infer_prefix("question"), "Question");
        // Outputs of DSPy's own infer_prefix; both implementations must agree.
        let cases = [
            ("camelCaseText", "Camel Case Text"),
            ("HTMLParser", "HTML Parser"),
            ("text2number", "Text 2 Number"),
            ("x_1", "X 1"),
            ("y2z", "Y 2 Z"),
            ("ABC", "ABC"),
            ("getHTTPResponseCode", "Get HTTP Response Code"),
            ("a2B", "A 2 B"),
            ("__a__b", "  A  B"),
            ("a__b", "A  B"),
            ("_", " "),
            ("A", "A"),
            ("aB", "A B"),
            ("AbcDEF", "Abc DEF"),
            ("v2Beta3Gamma", "V 2 Beta 3 Gamma"),
            ("MAX_LEN", "MAX LEN"),
            ("snake_Case_Text", "Snake  Case  Text"),
            ("iPhone12Pro", "I Phone 12 Pro"),
            ("a1b2c3", "A 1 B 2 C 3"),
            ("ab12CD34ef", "Ab 12 CD 34 Ef"),
            ("XMLHttp2Request", "XML Http 2 Request"),
            ("a_", "A "),
            ("9lives", "9 Lives"),
            ("x9Y", "X 9 Y"),
        ];
        for (name, want) in cases {
            assert_eq!(infer_prefix(name), want, "{name}");
            assert_eq!(infer_prefix_general(name), want, "{name} (general path)");
        }
    }

    #[test]
    fn cleandoc_like_python() {
        assert_eq!(cleandoc("  First.\n      More.\n    Less.\n\n\tTab\n"), "First.\n  More.\nLess.\n\n    Tab");
        assert_eq!(cleandoc("\n\n  x\n"), "x");
        assert_eq!(cleandoc(""), "");
    }

    #[test]
    fn union_normalises_like_typing() {
        let t = FieldType::union(vec![FieldType::Int, FieldType::union(vec![FieldType::Int, FieldType::None])]);
        assert_eq!(t.annotation_name(), "Union[int, NoneType]");
        assert_eq!(FieldType::union(vec![FieldType::Int, FieldType::Int]), FieldType::Int);
        assert!(FieldType::optional(FieldType::Str).allows_none());
    }

    #[test]
    fn literal_names_quote_like_dspy() {
        let t = FieldType::Literal(vec![
            LiteralValue::Str("x".into()),
            LiteralValue::Str("y's".into()),
            LiteralValue::Str("say \"hi\" it's".into()),
            LiteralValue::Int(1),
            LiteralValue::Bool(true),
            LiteralValue::None,
        ]);
        assert_eq!(t.annotation_name(), r#"Literal['x', "y's", 'say "hi" it\'s', 1, True, None]"#);
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

    #[test]
    fn native_support_is_explicit() {
        assert!(FieldType::list(FieldType::Str).is_native());
        assert!(FieldType::Dspy(DspyType::History).is_native());
        assert!(!FieldType::list(FieldType::Dspy(DspyType::Image)).is_native());
        assert!(!FieldType::Complex.is_native());
        assert_eq!(DspyType::from_name("ToolCalls"), Some(DspyType::ToolCalls));
    }

    #[test]
    fn constraints_from_keys() {
        let c = Constraint::from_key("ge", &serde_json::json!(0.5)).unwrap();
        assert_eq!(c.label(), "greater than or equal to: ");
        assert_eq!(c.key(), "ge");
        assert!(Constraint::from_key("min_length", &serde_json::json!(-1)).is_err());
        assert!(Constraint::from_key("bogus", &serde_json::json!(1)).is_err());
    }
}
