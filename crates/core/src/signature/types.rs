//! Field types as DSPy sees them, which is as Python's `typing` does:
//! `list[str]`, `Optional[int]` (a normalised `Union`), `Literal[...]`,
//! DSPy's own value types, and the names DSPy prints for them in prompts.

use std::fmt;

use serde_json::Value;

use super::Constraint;

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
    /// `Annotated[T, Field(...)]` inside another type, as in
    /// `list[Annotated[int, Field(gt=0)]]`: pydantic checks every value
    /// against the constraints. (At the top of a field's type pydantic lifts
    /// them off instead: see [`Field::type_constraints`](super::Field::type_constraints).)
    Annotated {
        /// The constrained type.
        inner: Box<FieldType>,
        /// The constraints, in pydantic's order.
        constraints: Vec<Constraint>,
        /// `Field(description=...)`, shown in the type's name and JSON schema.
        description: Option<String>,
    },
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
            FieldType::Annotated { inner, .. } => inner.allows_none(),
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
            // `get_annotation_name` prints the `FieldInfo` by its `str()`.
            FieldType::Annotated { inner, constraints, description } => {
                out.push_str("Annotated[");
                inner.write_annotation_name(out);
                out.push_str(", annotation=NoneType required=True");
                if let Some(d) = description {
                    out.push_str(" description=");
                    push_ascii_str_repr(out, d);
                }
                if !constraints.is_empty() {
                    out.push_str(" metadata=[");
                    for (i, c) in constraints.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        out.push_str(&c.py_repr());
                    }
                    out.push(']');
                }
                out.push(']');
            }
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
            FieldType::Annotated { inner, .. } => inner.is_native_value(),
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

/// Python's `repr(str)` for text whose every character Python prints as
/// itself or as one of the escapes below (the signature parser sends any
/// other text to Python, whose `repr` escapes more).
fn push_ascii_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.annotation_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn native_support_is_explicit() {
        assert!(FieldType::list(FieldType::Str).is_native());
        assert!(FieldType::Dspy(DspyType::History).is_native());
        assert!(!FieldType::list(FieldType::Dspy(DspyType::Image)).is_native());
        assert!(!FieldType::Complex.is_native());
        assert_eq!(DspyType::from_name("ToolCalls"), Some(DspyType::ToolCalls));
    }
}
