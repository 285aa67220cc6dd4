//! Turning annotation expressions into types, as DSPy's `_parse_type_node`
//! and `make_signature` do — including the order in which they fail.
//!
//! Anything DSPy would accept or reject in a way this module does not model
//! exactly becomes `Unsupported`: the router then sends the program to Python,
//! where DSPy itself gives the answer.

use dspex_core::{Constraint, DspyType, FieldType, LiteralValue};

use crate::pyemu::syntax::ast::{BinOp, Const, Expr};

/// A Python object an annotation evaluates to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Py {
    /// A type the engine represents.
    Type(FieldType),
    /// A bare `typing` special form: `Union`, `Optional`, `Literal`, ...
    SpecialForm(&'static str),
    /// A bare `typing` generic alias such as `typing.List` (not a type by DSPy's test).
    Alias(&'static str),
    /// A module (`dspy`, `typing`).
    Module(&'static str),
    /// A constant.
    Const(Const),
    /// A tuple of objects.
    Tuple(Vec<Py>),
    /// A generic or union pydantic cannot build a schema for; `bad` is the
    /// `repr` of the part it chokes on.
    Unschematizable { display: String, bad: String },
    /// Something DSPy resolves that is not a type, known only by its `str`
    /// and class (`<attribute 'real' of 'int' objects>`).
    Opaque { display: String, class: &'static str },
    /// pydantic's `Field(...)`: the keywords the engine models, or why not.
    FieldInfo(Result<FieldInfo, String>),
}

/// The part of a `pydantic.Field(...)` an `Annotated[T, Field(...)]` can carry natively.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct FieldInfo {
    /// In pydantic's order.
    constraints: Vec<Constraint>,
    description: Option<String>,
}

/// Why resolution stopped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ResolveError {
    /// DSPy raises this exception with this message.
    Dspy { category: &'static str, message: String },
    /// DSPy's behaviour here is not modelled natively.
    Unsupported(String),
}

fn value_error(message: String) -> ResolveError {
    ResolveError::Dspy { category: "ValueError", message }
}

fn unsupported(what: impl Into<String>) -> ResolveError {
    ResolveError::Unsupported(what.into())
}

const SPECIAL_FORMS: &[&str] = &[
    "Annotated",
    "Union",
    "Optional",
    "Literal",
    "ClassVar",
    "Final",
    "NoReturn",
    "Never",
    "Self",
    "LiteralString",
    "TypeAlias",
    "Concatenate",
    "TypeGuard",
    "Unpack",
    "Required",
    "NotRequired",
];

/// `typing` aliases and the `__name__` of their origin.
const ALIASES: &[(&str, &str)] = &[
    ("List", "list"),
    ("Dict", "dict"),
    ("Set", "set"),
    ("FrozenSet", "frozenset"),
    ("Tuple", "tuple"),
    ("Type", "type"),
    ("Callable", "Callable"),
    ("Sequence", "Sequence"),
    ("MutableSequence", "MutableSequence"),
    ("Mapping", "Mapping"),
    ("MutableMapping", "MutableMapping"),
    ("Iterable", "Iterable"),
    ("Iterator", "Iterator"),
    ("Collection", "Collection"),
    ("Container", "Container"),
    ("AbstractSet", "Set"),
    ("MutableSet", "MutableSet"),
    ("Deque", "deque"),
    ("DefaultDict", "defaultdict"),
    ("OrderedDict", "OrderedDict"),
    ("Counter", "Counter"),
    ("ChainMap", "ChainMap"),
    ("Generator", "Generator"),
    ("AsyncGenerator", "AsyncGenerator"),
    ("Awaitable", "Awaitable"),
    ("Coroutine", "Coroutine"),
    ("AsyncIterable", "AsyncIterable"),
    ("AsyncIterator", "AsyncIterator"),
    ("Reversible", "Reversible"),
    ("Sized", "Sized"),
    ("Hashable", "Hashable"),
    ("ByteString", "ByteString"),
    ("MappingView", "MappingView"),
    ("KeysView", "KeysView"),
    ("ItemsView", "ItemsView"),
    ("ValuesView", "ValuesView"),
    ("ContextManager", "AbstractContextManager"),
    ("AsyncContextManager", "AbstractAsyncContextManager"),
    ("Pattern", "Pattern"),
    ("Match", "Match"),
];

fn alias_class(name: &str) -> &'static str {
    match name {
        "Tuple" => "typing._TupleType",
        "Callable" => "typing._CallableType",
        _ => "typing._SpecialGenericAlias",
    }
}

fn builtin(name: &str) -> Option<FieldType> {
    Some(match name {
        "int" => FieldType::Int,
        "str" => FieldType::Str,
        "float" => FieldType::Float,
        "bool" => FieldType::Bool,
        "list" => FieldType::List(None),
        "tuple" => FieldType::Tuple(None),
        "dict" => FieldType::Dict(None),
        "set" => FieldType::Set(None),
        "frozenset" => FieldType::FrozenSet(None),
        "complex" => FieldType::Complex,
        "bytes" => FieldType::Bytes,
        _ => return None,
    })
}

/// A name from `typing.__dict__` (DSPy looks there first).
fn typing_name(name: &str) -> Option<Result<Py, ResolveError>> {
    if let Some(form) = SPECIAL_FORMS.iter().find(|f| **f == name) {
        return Some(Ok(Py::SpecialForm(form)));
    }
    if let Some((alias, _)) = ALIASES.iter().find(|(a, _)| *a == name) {
        return Some(Ok(Py::Alias(alias)));
    }
    Some(Ok(match name {
        "Any" => Py::Type(FieldType::Any),
        "Text" => Py::Type(FieldType::Str),
        "TYPE_CHECKING" => Py::Const(Const::Bool(false)),
        // Present in `typing.__dict__` but nothing a signature can use natively.
        "Generic" | "Protocol" | "TypeVar" | "ParamSpec" | "TypeVarTuple" | "ForwardRef" | "NewType" | "NamedTuple"
        | "TypedDict" | "IO" | "TextIO" | "BinaryIO" | "AnyStr" | "T" | "KT" | "VT" | "T_co" | "V_co" | "VT_co"
        | "T_contra" | "CT_co" | "cast" | "overload" | "final" | "get_type_hints" | "get_origin" | "get_args"
        | "collections" | "functools" | "operator" | "sys" | "types" | "warnings" | "contextlib" | "re" | "io"
        | "abstractmethod" | "ABCMeta" | "defaultdict" | "SupportsInt" | "SupportsFloat" | "SupportsComplex"
        | "SupportsBytes" | "SupportsIndex" | "SupportsAbs" | "SupportsRound" => {
            return Some(Err(unsupported(format!("`{name}` from typing"))))
        }
        _ => return None,
    }))
}

/// DSPy's `resolve_name`: typing names, `NoneType`, builtins, then importable modules.
fn resolve_name(name: &str) -> Result<Py, ResolveError> {
    if let Some(found) = typing_name(name) {
        return found;
    }
    if name == "NoneType" {
        return Ok(Py::Type(FieldType::None));
    }
    if let Some(t) = builtin(name) {
        return Ok(Py::Type(t));
    }
    if name == "bytearray" {
        return Ok(Py::Unschematizable { display: "<class 'bytearray'>".into(), bad: "<class 'bytearray'>".into() });
    }
    match name {
        "dspy" => Ok(Py::Module("dspy")),
        "typing" => Ok(Py::Module("typing")),
        // `importlib.import_module` would succeed for any installed module.
        _ if is_common_module(name) => Err(unsupported(format!("module `{name}` used as a type"))),
        _ => Err(value_error(format!("Unknown name: {name}"))),
    }
}

fn is_common_module(name: &str) -> bool {
    const MODULES: &[&str] = &[
        "os",
        "sys",
        "re",
        "json",
        "math",
        "time",
        "datetime",
        "decimal",
        "uuid",
        "pathlib",
        "enum",
        "types",
        "collections",
        "pydantic",
        "numpy",
        "pandas",
        "abc",
        "io",
        "string",
        "random",
        "itertools",
        "functools",
        "operator",
        "copy",
        "logging",
        "asyncio",
        "inspect",
        "ast",
        "builtins",
        "dataclasses",
        "fractions",
        "ipaddress",
        "litellm",
        "openai",
        "requests",
        "httpx",
        "PIL",
    ];
    MODULES.contains(&name)
}

/// Python's `repr()` of a resolved object (what pydantic and tuples print).
pub(crate) fn py_repr(p: &Py) -> String {
    match p {
        Py::Type(t) => type_repr(t),
        Py::SpecialForm(f) => format!("typing.{f}"),
        Py::Alias(a) => format!("typing.{a}"),
        Py::Module(m) => format!("<module '{m}'>"),
        Py::Const(c) => c.repr(),
        Py::Tuple(items) => {
            let inner: Vec<String> = items.iter().map(py_repr).collect();
            if inner.len() == 1 {
                format!("({},)", inner[0])
            } else {
                format!("({})", inner.join(", "))
            }
        }
        Py::Unschematizable { display, .. } => display.clone(),
        Py::Opaque { display, .. } => display.clone(),
        Py::FieldInfo(_) => "FieldInfo(...)".into(),
    }
}

/// Python's `str()` of a resolved object.
fn py_str(p: &Py) -> String {
    match p {
        Py::Const(c) => c.str(),
        other => py_repr(other),
    }
}

fn py_class(p: &Py) -> String {
    match p {
        Py::Type(_) | Py::Unschematizable { .. } => "type".into(),
        Py::SpecialForm("Literal") => "typing._LiteralSpecialForm".into(),
        Py::SpecialForm(_) => "typing._SpecialForm".into(),
        Py::Alias(a) => alias_class(a).into(),
        Py::Module(_) => "module".into(),
        Py::Const(c) => c.class_name().into(),
        Py::Tuple(_) => "tuple".into(),
        Py::Opaque { class, .. } => (*class).into(),
        Py::FieldInfo(_) => "pydantic.fields.FieldInfo".into(),
    }
}

/// Whether `py_repr` prints `p` exactly as Python would. A parameterised
/// container is not: `typing.List[int]` and `list[int]` resolve alike but
/// print differently, as do a `None` argument and `NoneType`.
fn repr_is_exact(p: &Py) -> bool {
    fn exact_type(t: &FieldType) -> bool {
        match t {
            FieldType::Any => true,
            FieldType::Union(items) => items.iter().all(exact_type),
            FieldType::Literal(_) => true,
            other => class_name(other).is_some(),
        }
    }
    match p {
        Py::Type(t) => exact_type(t),
        // `typing.Annotated` is a class in Python 3.11, printed as one.
        Py::SpecialForm(f) => *f != "Annotated",
        Py::Const(_) | Py::Alias(_) => true,
        Py::Tuple(items) => items.iter().all(repr_is_exact),
        // A union's display is built from its members' reprs.
        Py::Opaque { class, .. } => *class != "typing._UnionGenericAlias",
        Py::Module(_) | Py::Unschematizable { .. } | Py::FieldInfo(_) => false,
    }
}

/// The qualified name of a class type (`int`, `dspy.adapters.types.image.Image`),
/// or None for the typing forms and parameterised generics.
fn class_name(t: &FieldType) -> Option<String> {
    let name = match t {
        FieldType::Str => "str",
        FieldType::Int => "int",
        FieldType::Float => "float",
        FieldType::Bool => "bool",
        FieldType::Bytes => "bytes",
        FieldType::Complex => "complex",
        FieldType::None => "NoneType",
        FieldType::List(None) => "list",
        FieldType::Set(None) => "set",
        FieldType::FrozenSet(None) => "frozenset",
        FieldType::Dict(None) => "dict",
        FieldType::Tuple(None) => "tuple",
        FieldType::Dspy(d) => {
            // Where DSPy 3.4.1 defines each type (its `__module__`).
            let module = match d {
                DspyType::History => "history",
                DspyType::Image => "image",
                DspyType::Audio => "audio",
                DspyType::File => "file",
                DspyType::Tool | DspyType::ToolCalls => "tool",
                DspyType::Code => "code",
                DspyType::Reasoning => "reasoning",
                DspyType::Document => "document",
                DspyType::Citations => "citation",
                #[allow(unreachable_patterns)]
                _ => return None,
            };
            return Some(format!("dspy.adapters.types.{module}.{}", d.name()));
        }
        _ => return None,
    };
    Some(name.into())
}

/// `typing._type_repr`: a type as it prints inside another's brackets
/// (`list[int]`, not `list[<class 'int'>]`).
fn arg_repr(t: &FieldType) -> String {
    class_name(t).unwrap_or_else(|| type_repr(t))
}

/// `repr()` of a type, as `typing` prints it.
fn type_repr(t: &FieldType) -> String {
    if let Some(name) = class_name(t) {
        return format!("<class '{name}'>");
    }
    let args = |items: &[&FieldType]| items.iter().map(|t| arg_repr(t)).collect::<Vec<_>>().join(", ");
    match t {
        FieldType::Any => "typing.Any".into(),
        FieldType::List(Some(i)) => format!("list[{}]", args(&[i])),
        FieldType::Set(Some(i)) => format!("set[{}]", args(&[i])),
        FieldType::FrozenSet(Some(i)) => format!("frozenset[{}]", args(&[i])),
        FieldType::Dict(Some((k, v))) => format!("dict[{}]", args(&[k, v])),
        FieldType::Tuple(Some(items)) => {
            format!("tuple[{}]", args(&items.iter().collect::<Vec<_>>()))
        }
        FieldType::VarTuple(i) => format!("tuple[{}, ...]", args(&[i])),
        FieldType::Union(items) => {
            let non_none: Vec<&FieldType> = items.iter().filter(|t| **t != FieldType::None).collect();
            if items.len() == 2 && non_none.len() == 1 {
                format!("typing.Optional[{}]", args(&non_none))
            } else {
                format!("typing.Union[{}]", args(&items.iter().collect::<Vec<_>>()))
            }
        }
        FieldType::Literal(values) => {
            let inner: Vec<String> = values
                .iter()
                .map(|v| match v {
                    LiteralValue::Str(s) => crate::py::str_repr(s),
                    other => other.py_str(),
                })
                .collect();
            format!("typing.Literal[{}]", inner.join(", "))
        }
        FieldType::Other { name, args: a } => {
            if a.is_empty() {
                format!("typing.{name}")
            } else {
                format!("typing.{name}[{}]", args(&a.iter().collect::<Vec<_>>()))
            }
        }
        // `FieldType` is non-exhaustive for users, not for this crate.
        #[allow(unreachable_patterns)]
        _ => t.annotation_name(),
    }
}

/// Evaluate an annotation expression as `_parse_type_node` does.
pub(crate) fn resolve(expr: &Expr) -> Result<Py, ResolveError> {
    crate::pyemu::with_stack(|| resolve_here(expr))
}

fn resolve_here(expr: &Expr) -> Result<Py, ResolveError> {
    match expr {
        Expr::Name(id) => resolve_name(id),
        Expr::Attribute(base, attr) => {
            let base = resolve(base)?;
            match base {
                // `dspy.Document` and `dspy.Citations` are not attributes of
                // DSPy 3.4.1's top-level module: DSPy rejects them there.
                Py::Module("dspy") => match DspyType::from_name(attr) {
                    Some(t) if !matches!(t, DspyType::Document | DspyType::Citations) => {
                        Ok(Py::Type(FieldType::Dspy(t)))
                    }
                    _ => Err(unsupported(format!("`dspy.{attr}` as a type"))),
                },
                Py::Module("typing") => match typing_name(attr) {
                    Some(found) => found,
                    None => Err(unsupported(format!("`typing.{attr}` as a type"))),
                },
                Py::Type(FieldType::Int) | Py::Type(FieldType::Float) | Py::Type(FieldType::Complex)
                    if matches!(attr.as_str(), "real" | "imag") =>
                {
                    let owner = match base {
                        Py::Type(FieldType::Int) => "int",
                        Py::Type(FieldType::Float) => "float",
                        _ => "complex",
                    };
                    let class = if owner == "int" { "getset_descriptor" } else { "member_descriptor" };
                    Ok(Py::Opaque { display: format!("<attribute '{attr}' of '{owner}' objects>"), class })
                }
                _ => Err(unsupported(format!("attribute `{attr}` in a type annotation"))),
            }
        }
        Expr::Subscript(base, slice) => {
            let base = resolve(base)?;
            let args: Vec<Py> = match slice.as_ref() {
                Expr::Tuple(items) => items.iter().map(resolve).collect::<Result<_, _>>()?,
                other => vec![resolve(other)?],
            };
            subscript(base, args)
        }
        Expr::BinOp(left, BinOp::BitOr, right) => {
            let l = resolve(left)?;
            let r = resolve(right)?;
            Ok(make_union(vec![l, r]))
        }
        Expr::Tuple(items) => Ok(Py::Tuple(items.iter().map(resolve).collect::<Result<_, _>>()?)),
        Expr::Constant(c) => Ok(Py::Const(c.clone())),
        Expr::Call { func, keywords, .. } if matches!(func.as_ref(), Expr::Name(n) if n == "Field") => {
            field_call(keywords)
        }
        other => Err(value_error(format!(
            "Failed to parse string-base Signature due to unhandled AST node type in annotation: {}. Please consider using class-based DSPy Signatures instead.",
            other.dump()
        ))),
    }
}

/// DSPy's reading of `Field(k=v, ...)`: positional arguments are ignored,
/// constant values taken as they are, any other value evaluated as a type
/// expression (so `Field(gt=-1)` fails as DSPy fails on the unary minus).
fn field_call(keywords: &[(Option<String>, Expr)]) -> Result<Py, ResolveError> {
    let mut info = FieldInfo::default();
    let mut why_not: Option<String> = None;
    for (key, value) in keywords {
        let value = match value {
            Expr::Constant(c) => Some(c),
            other => {
                resolve(other)?;
                None
            }
        };
        if why_not.is_some() {
            continue;
        }
        let Some(key) = key else {
            why_not = Some("`**` in `Field(...)`".into());
            continue;
        };
        match (key.as_str(), value) {
            ("description", Some(Const::Str { value, .. })) if repr_is_plain(value) => {
                info.description = Some(value.clone())
            }
            ("gt" | "ge" | "lt" | "le" | "multiple_of", Some(c @ (Const::Int(_) | Const::Float(_)))) => {
                let number = match c {
                    Const::Int(i) => i64::try_from(*i).ok().map(serde_json::Number::from),
                    Const::Float(f) => serde_json::Number::from_f64(*f),
                    _ => None,
                };
                match number.map(|n| Constraint::from_key(key, &serde_json::Value::Number(n))) {
                    Some(Ok(c)) => info.constraints.push(c),
                    _ => why_not = Some(format!("`Field({key}={})`", c.repr())),
                }
            }
            ("min_length" | "max_length", Some(Const::Int(i))) if u64::try_from(*i).is_ok() => {
                let n = serde_json::Value::from(u64::try_from(*i).unwrap_or_default());
                match Constraint::from_key(key, &n) {
                    Ok(c) => info.constraints.push(c),
                    Err(e) => why_not = Some(e.message().to_string()),
                }
            }
            ("allow_inf_nan", Some(Const::Bool(b))) => info.constraints.push(Constraint::AllowInfNan(*b)),
            (key, _) => why_not = Some(format!("`Field({key}=...)`")),
        }
    }
    info.constraints.sort_by_key(Constraint::pydantic_order);
    Ok(Py::FieldInfo(match why_not {
        None => Ok(info),
        Some(why) => Err(why),
    }))
}

/// Whether Python's `repr` of `s` escapes nothing beyond what the engine's
/// type names escape (quotes, backslashes, ASCII control characters).
fn repr_is_plain(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 0x7f || crate::py::is_printable(c))
}

/// `Annotated[t, Field(...)]`, where pydantic's behaviour is modelled: the
/// constraints pydantic accepts for `t` (others make it fail building a
/// schema, or change the error text), on the types the engine validates.
fn annotated(args: Vec<Py>) -> Result<Py, ResolveError> {
    let mut args = args.into_iter();
    let (Some(Py::Type(inner)), Some(Py::FieldInfo(info)), None) = (args.next(), args.next(), args.next()) else {
        return Err(unsupported("`Annotated[...]` other than `Annotated[T, Field(...)]`"));
    };
    let info = info.map_err(|why| unsupported(format!("{why} in `Annotated[...]`")))?;
    let is_int_number = |n: &serde_json::Number| n.is_i64() || n.is_u64();
    let positive = |n: &serde_json::Number| n.as_f64().is_some_and(|f| f > 0.0);
    for c in &info.constraints {
        let fits = match (&inner, c) {
            (FieldType::Int, Constraint::Gt(n) | Constraint::Ge(n) | Constraint::Lt(n) | Constraint::Le(n)) => {
                is_int_number(n)
            }
            (FieldType::Int, Constraint::MultipleOf(n)) => is_int_number(n) && positive(n),
            (FieldType::Float, Constraint::Gt(_) | Constraint::Ge(_) | Constraint::Lt(_) | Constraint::Le(_)) => true,
            (FieldType::Float, Constraint::MultipleOf(n)) => positive(n),
            (FieldType::Float, Constraint::AllowInfNan(_)) => true,
            (
                FieldType::Str
                | FieldType::List(_)
                | FieldType::Set(_)
                | FieldType::FrozenSet(_)
                | FieldType::VarTuple(_)
                | FieldType::Tuple(None)
                | FieldType::Dict(_),
                Constraint::MinLength(_) | Constraint::MaxLength(_),
            ) => true,
            _ => false,
        };
        if !fits {
            return Err(unsupported(format!("`{}` on `{}` in `Annotated[...]`", c.key(), inner.annotation_name())));
        }
    }
    let plain = matches!(
        inner,
        FieldType::Int
            | FieldType::Float
            | FieldType::Str
            | FieldType::Bool
            | FieldType::List(_)
            | FieldType::Set(_)
            | FieldType::FrozenSet(_)
            | FieldType::VarTuple(_)
            | FieldType::Tuple(None)
            | FieldType::Dict(_)
    );
    if !plain {
        return Err(unsupported(format!("`Annotated[{}, ...]`", inner.annotation_name())));
    }
    Ok(Py::Type(FieldType::Annotated {
        inner: Box::new(inner),
        constraints: info.constraints,
        description: info.description,
    }))
}

fn is_none(p: &Py) -> bool {
    matches!(p, Py::Type(FieldType::None) | Py::Const(Const::None))
}

/// `typing.Union[members]`: flattened, deduplicated, `None` as `NoneType`.
fn make_union(members: Vec<Py>) -> Py {
    let members: Vec<Py> =
        members.into_iter().map(|m| if is_none(&m) { Py::Type(FieldType::None) } else { m }).collect();
    if members.iter().all(|m| matches!(m, Py::Type(_))) {
        let types = members
            .into_iter()
            .filter_map(|m| match m {
                Py::Type(t) => Some(t),
                _ => None,
            })
            .collect();
        return Py::Type(FieldType::union(types));
    }
    let mut flat: Vec<Py> = Vec::new();
    for m in members {
        if !flat.contains(&m) {
            flat.push(m);
        }
    }
    if flat.len() == 1 {
        return flat.pop().unwrap_or(Py::Type(FieldType::None));
    }
    let display = format!("typing.Union[{}]", flat.iter().map(py_repr).collect::<Vec<_>>().join(", "));
    match flat.iter().find(|m| !matches!(m, Py::Type(_))) {
        Some(Py::Unschematizable { bad, .. }) => Py::Unschematizable { display, bad: bad.clone() },
        Some(Py::Const(c)) => Py::Unschematizable { display, bad: c.repr() },
        _ => Py::Opaque { display, class: "typing._UnionGenericAlias" },
    }
}

/// A generic argument as a type (`None` means `NoneType`); pydantic fails on constants.
fn type_arg(p: Py) -> Result<Result<FieldType, String>, ResolveError> {
    match p {
        Py::Type(t) => Ok(Ok(t)),
        Py::Const(Const::None) => Ok(Ok(FieldType::None)),
        Py::Const(c) => Ok(Err(c.repr())),
        Py::Unschematizable { bad, .. } => Ok(Err(bad)),
        Py::SpecialForm(f) if matches!(f, "Optional" | "Union" | "Literal") => Ok(Err(format!("typing.{f}"))),
        other => Err(unsupported(format!("`{}` as a type argument", py_repr(&other)))),
    }
}

fn subscript(base: Py, args: Vec<Py>) -> Result<Py, ResolveError> {
    match base {
        Py::SpecialForm("Annotated") => annotated(args),
        Py::SpecialForm("Union") => Ok(make_union(args)),
        Py::SpecialForm("Optional") => {
            if args.len() != 1 {
                return Err(value_error("Optional must have exactly one type argument".into()));
            }
            let mut args = args;
            args.push(Py::Type(FieldType::None));
            Ok(make_union(args))
        }
        Py::SpecialForm("Literal") => {
            let mut values: Vec<LiteralValue> = Vec::new();
            for a in args {
                let items = match a {
                    Py::Const(Const::Str { value, .. }) => vec![LiteralValue::Str(value)],
                    Py::Const(Const::Int(i)) => {
                        vec![LiteralValue::Int(
                            i64::try_from(i).map_err(|_| unsupported("a Literal integer beyond 64 bits"))?,
                        )]
                    }
                    Py::Const(Const::Bool(b)) => vec![LiteralValue::Bool(b)],
                    Py::Const(Const::None) => vec![LiteralValue::None],
                    Py::Type(FieldType::Literal(inner)) => inner,
                    other => return Err(unsupported(format!("`{}` inside Literal[...]", py_repr(&other)))),
                };
                for v in items {
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
            }
            Ok(Py::Type(FieldType::Literal(values)))
        }
        Py::Alias(alias) => {
            let origin = ALIASES.iter().find(|(a, _)| *a == alias).map(|(_, o)| *o).unwrap_or(alias);
            let expected = match alias {
                "List" | "Set" | "FrozenSet" => Some(1),
                "Dict" => Some(2),
                _ => None,
            };
            if let Some(n) = expected {
                if args.len() != n {
                    let which = if args.len() > n { "many" } else { "few" };
                    return Err(ResolveError::Dspy {
                        category: "TypeError",
                        message: format!(
                            "Too {which} arguments for typing.{alias}; actual {}, expected {n}",
                            args.len()
                        ),
                    });
                }
            }
            match alias {
                "List" | "Set" | "FrozenSet" | "Dict" | "Tuple" => generic(origin, args),
                _ => {
                    let mut types = Vec::new();
                    for a in args {
                        match type_arg(a)? {
                            Ok(t) => types.push(t),
                            Err(_) => return Err(unsupported(format!("typing.{alias} with a non-type argument"))),
                        }
                    }
                    Ok(Py::Type(FieldType::Other { name: origin.to_string(), args: types }))
                }
            }
        }
        Py::Type(FieldType::List(None)) => generic("list", args),
        Py::Type(FieldType::Set(None)) => generic("set", args),
        Py::Type(FieldType::FrozenSet(None)) => generic("frozenset", args),
        Py::Type(FieldType::Dict(None)) => generic("dict", args),
        Py::Type(FieldType::Tuple(None)) => generic("tuple", args),
        other => Err(unsupported(format!("subscripting `{}`", py_repr(&other)))),
    }
}

fn generic(origin: &str, args: Vec<Py>) -> Result<Py, ResolveError> {
    // `tuple[T, ...]`
    if origin == "tuple" && args.len() == 2 && args[1] == Py::Const(Const::Ellipsis) {
        let mut args = args;
        args.pop();
        return match type_arg(args.remove(0))? {
            Ok(t) => Ok(Py::Type(FieldType::VarTuple(Box::new(t)))),
            Err(bad) => Ok(Py::Unschematizable { display: format!("tuple[{bad}, ...]"), bad }),
        };
    }
    let n = args.len();
    let mut types = Vec::with_capacity(n);
    for a in args {
        match type_arg(a)? {
            Ok(t) => types.push(t),
            Err(bad) => {
                return Ok(Py::Unschematizable { display: format!("{origin}[...]"), bad });
            }
        }
    }
    let one = |types: &mut Vec<FieldType>| Box::new(types.remove(0));
    Ok(Py::Type(match (origin, n) {
        ("list", 1) => FieldType::List(Some(one(&mut types))),
        ("set", 1) => FieldType::Set(Some(one(&mut types))),
        ("frozenset", 1) => FieldType::FrozenSet(Some(one(&mut types))),
        ("dict", 2) => {
            let k = types.remove(0);
            FieldType::dict(k, types.remove(0))
        }
        ("tuple", _) if n > 0 => FieldType::Tuple(Some(types)),
        _ => return Err(unsupported(format!("{origin}[...] with {n} type arguments"))),
    }))
}

/// `make_signature`'s check: is this object a type (or typing form)?
/// On failure, DSPy's message.
pub(crate) fn check_is_type(p: &Py) -> Result<(), ResolveError> {
    let ok = matches!(p, Py::Type(_) | Py::SpecialForm(_) | Py::Unschematizable { .. })
        || matches!(p, Py::Opaque { class: "typing._UnionGenericAlias", .. });
    if ok {
        return Ok(());
    }
    if let Py::Module(_) = p {
        // DSPy's message includes the module's file path.
        return Err(unsupported("a module used as a field type"));
    }
    if !repr_is_exact(p) {
        return Err(unsupported("a non-type annotation whose Python repr is not modelled exactly"));
    }
    Err(value_error(format!(
        "Field types must be types, but received: {} of type <class '{}'>.",
        py_str(p),
        py_class(p)
    )))
}

/// The message pydantic gives when it cannot build a schema for `bad`.
pub(crate) fn schema_error_message(bad: &str) -> String {
    format!(
        "Unable to generate pydantic-core schema for {bad}. Set `arbitrary_types_allowed=True` in the model_config to ignore this error or implement `__get_pydantic_core_schema__` on your type to fully support it.\n\nIf you got this error by calling handler(<some type>) within `__get_pydantic_core_schema__` then you likely need to call `handler.generate_schema(<some type>)` since we do not call `__get_pydantic_core_schema__` on `<some type>` otherwise to avoid infinite recursion.\n\nFor further information visit https://errors.pydantic.dev/{}/u/schema-for-unknown-type",
        crate::PYDANTIC_DOCS_VERSION
    )
}

/// pydantic's schema step: the final type, or its error.
pub(crate) fn into_field_type(p: Py) -> Result<FieldType, ResolveError> {
    match p {
        Py::Type(t) => Ok(t),
        Py::Unschematizable { bad, .. } => {
            Err(ResolveError::Dspy { category: "PydanticSchemaGenerationError", message: schema_error_message(&bad) })
        }
        Py::SpecialForm(f @ ("Optional" | "Union" | "Literal")) => Err(ResolveError::Dspy {
            category: "PydanticSchemaGenerationError",
            message: schema_error_message(&format!("typing.{f}")),
        }),
        other => Err(unsupported(format!("`{}` as a field type", py_repr(&other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each string is what Python 3.11's `repr()` prints for the same type
    /// (checked against the pinned DSPy environment).
    #[test]
    fn types_print_as_python_prints_them() {
        let image = FieldType::Dspy(DspyType::Image);
        let cases: Vec<(FieldType, &str)> = vec![
            (FieldType::Int, "<class 'int'>"),
            (FieldType::None, "<class 'NoneType'>"),
            (FieldType::Dict(None), "<class 'dict'>"),
            (image.clone(), "<class 'dspy.adapters.types.image.Image'>"),
            (FieldType::Dspy(DspyType::ToolCalls), "<class 'dspy.adapters.types.tool.ToolCalls'>"),
            (FieldType::Dspy(DspyType::Citations), "<class 'dspy.adapters.types.citation.Citations'>"),
            (FieldType::List(Some(Box::new(FieldType::Int))), "list[int]"),
            (
                FieldType::Dict(Some((
                    Box::new(FieldType::Str),
                    Box::new(FieldType::List(Some(Box::new(FieldType::Float)))),
                ))),
                "dict[str, list[float]]",
            ),
            (FieldType::VarTuple(Box::new(FieldType::Int)), "tuple[int, ...]"),
            (FieldType::Tuple(Some(vec![FieldType::Int, FieldType::Str])), "tuple[int, str]"),
            (FieldType::Set(Some(Box::new(FieldType::Bytes))), "set[bytes]"),
            (FieldType::FrozenSet(Some(Box::new(FieldType::Complex))), "frozenset[complex]"),
            (FieldType::List(Some(Box::new(FieldType::Any))), "list[typing.Any]"),
            (FieldType::List(Some(Box::new(image.clone()))), "list[dspy.adapters.types.image.Image]"),
            (FieldType::optional(FieldType::Int), "typing.Optional[int]"),
            (FieldType::optional(image), "typing.Optional[dspy.adapters.types.image.Image]"),
            (FieldType::optional(FieldType::List(None)), "typing.Optional[list]"),
            (
                FieldType::union(vec![FieldType::Int, FieldType::None, FieldType::Str]),
                "typing.Union[int, NoneType, str]",
            ),
            (
                FieldType::Literal(vec![LiteralValue::Str("a".into()), LiteralValue::Int(1), LiteralValue::Bool(true)]),
                "typing.Literal['a', 1, True]",
            ),
            (
                FieldType::union(vec![
                    FieldType::List(Some(Box::new(FieldType::Int))),
                    FieldType::Literal(vec![LiteralValue::Str("x".into())]),
                ]),
                "typing.Union[list[int], typing.Literal['x']]",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(type_repr(&t), want, "{t:?}");
        }
    }

    #[test]
    fn non_types_dspy_would_print_differently_go_to_python() {
        let tuple = |items: Vec<Py>| Py::Tuple(items);
        let plain = tuple(vec![Py::Type(FieldType::Int), Py::Type(FieldType::Str)]);
        assert!(matches!(check_is_type(&plain), Err(ResolveError::Dspy { .. })), "DSPy's message, exactly");
        for p in [
            tuple(vec![Py::Type(FieldType::List(Some(Box::new(FieldType::Int)))), Py::Type(FieldType::Str)]),
            tuple(vec![Py::Module("dspy"), Py::Type(FieldType::Int)]),
            tuple(vec![Py::Opaque { display: "x".into(), class: "typing._UnionGenericAlias" }]),
        ] {
            assert!(matches!(check_is_type(&p), Err(ResolveError::Unsupported(_))), "{p:?}");
        }
    }

    #[test]
    fn dspy_attributes_are_the_ones_dspy_has() {
        for ok in ["History", "Image", "Audio", "File", "Tool", "ToolCalls", "Code", "Reasoning"] {
            let expr = Expr::Attribute(Box::new(Expr::Name("dspy".into())), ok.into());
            assert!(matches!(resolve(&expr), Ok(Py::Type(FieldType::Dspy(_)))), "dspy.{ok}");
        }
        // DSPy 3.4.1: "Unknown attribute: Document on <module 'dspy' ...>".
        for missing in ["Document", "Citations", "Nope"] {
            let expr = Expr::Attribute(Box::new(Expr::Name("dspy".into())), missing.into());
            assert!(matches!(resolve(&expr), Err(ResolveError::Unsupported(_))), "dspy.{missing}");
        }
    }
}
