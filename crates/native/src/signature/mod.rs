//! DSPy's string-signature syntax, parsed exactly as DSPy 3.4.1 parses it.
//!
//! `"question, context: list[str] -> answer"` becomes a [`Signature`] with the
//! same fields, types, prefixes, descriptions and default instructions DSPy
//! would build, and a string DSPy rejects is rejected with DSPy's exception
//! name ([`Error::python_type`]) and message, in the order DSPy checks:
//!
//! ```
//! use dspex_native::parse_signature;
//!
//! let sig = parse_signature("question, context: list[str] -> answer", None).unwrap();
//! assert_eq!(sig.inputs()[1].ty().annotation_name(), "list[str]");
//! assert_eq!(sig.instructions(), "Given the fields `question`, `context`, produce the fields `answer`.");
//!
//! let err = parse_signature("a -> b -> c", None).unwrap_err();
//! assert_eq!(err.python_type(), Some("ValueError"));
//! assert_eq!(err.message(), "Invalid signature format: 'a -> b -> c', must contain exactly one '->'.");
//! ```
//!
//! Parsed signatures are cached (bounded), so parsing the same string again is
//! a hash lookup.
//!
//! The tokenizer and parser are Python's and live with the rest of the Python
//! emulation (`crate::pyemu::syntax`); this module does what DSPy does with
//! the tree: `resolve` turns annotations into types as `_parse_type_node`
//! does, and [`parse_signature_uncached`] applies `make_signature`'s checks in
//! its order before building the [`Signature`].

mod resolve;

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use dspex_core::{
    ClassSignature, Constraint, Error, ErrorKind, FieldSpec, FieldType, Result, Signature, SignatureSpec,
};
use parking_lot::RwLock;

use crate::pyemu::syntax::ast::Const;
use crate::pyemu::syntax::parser::{parse_params, Params};
use resolve::{check_is_type, into_field_type, resolve, Py, ResolveError};

fn sig_error(category: &str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidSignature, message).with_python_type(category)
}

fn from_resolve(e: ResolveError) -> Error {
    match e {
        ResolveError::Dspy { category, message } => sig_error(category, message),
        ResolveError::Unsupported(what) => Error::unsupported(format!(
            "{what} is not supported by the native signature parser; run this program in Python"
        )),
    }
}

/// One parsed side of the arrow: (name, resolved annotation or `None` if untyped).
type Side = Vec<(String, Option<Py>)>;

fn parse_side(text: &str) -> Result<Side> {
    let Params { args } = parse_params(text).map_err(|e| {
        if e.unsupported {
            Error::unsupported(format!("{}; run this program in Python", e.message))
        } else {
            sig_error("SyntaxError", e.to_python())
        }
    })?;
    args.into_iter()
        .map(|p| {
            let ty = match &p.annotation {
                Some(expr) => Some(resolve(expr).map_err(from_resolve)?),
                None => None,
            };
            Ok((p.name, ty))
        })
        .collect()
}

/// A field on its way into a signature: name, resolved type (`None`: untyped), spec extras.
struct Pending {
    name: String,
    ty: Option<Py>,
    extra: Option<FieldSpec>,
}

/// DSPy's `make_signature` checks, in DSPy's order, then the build.
fn finish(inputs: Vec<Pending>, outputs: Vec<Pending>, instructions: Option<&str>) -> Result<Signature> {
    // 1. Every field type must be a type.
    for p in inputs.iter().chain(&outputs) {
        if let Some(ty) = &p.ty {
            // `a: None` means "no type" to DSPy.
            if !matches!(ty, Py::Const(Const::None)) {
                check_is_type(ty).map_err(from_resolve)?;
            }
        }
    }
    // 2. pydantic: names with leading underscores (schema errors come after).
    for p in inputs.iter().chain(&outputs) {
        dspex_core::check_field_name(&p.name)?;
    }
    let convert = |p: Pending| -> Result<FieldSpec> {
        let declared = p.ty.is_some();
        let ty = match p.ty {
            None | Some(Py::Const(Const::None)) => FieldType::Str,
            Some(py) => into_field_type(py).map_err(from_resolve)?,
        };
        let spec = p.extra.unwrap_or_else(|| FieldSpec::new(p.name, FieldType::Str));
        // pydantic lifts `Annotated[T, Field(...)]` at the top of a field's type
        // into the field itself: the type is `T`, the constraints its metadata.
        Ok(match ty {
            FieldType::Annotated { inner, constraints, .. } => {
                spec.with_type(*inner, declared).type_constraints(constraints)
            }
            ty => spec.with_type(ty, declared),
        })
    };
    let mut b = Signature::builder();
    if let Some(text) = instructions {
        b = b.instructions(text);
    }
    let n_in = inputs.len();
    let mut all = inputs.into_iter().chain(outputs).enumerate();
    for (i, p) in all.by_ref() {
        let spec = convert(p)?;
        b = if i < n_in { b.input(spec) } else { b.output(spec) };
    }
    b.build()
}

/// Parse DSPy's string syntax (`"a, b: int -> c"`) without the cache.
pub fn parse_signature_uncached(text: &str, instructions: Option<&str>) -> Result<Signature> {
    let arrows = text.matches("->").count();
    if arrows != 1 {
        return Err(sig_error(
            "ValueError",
            format!("Invalid signature format: '{text}', must contain exactly one '->'."),
        ));
    }
    let (inputs_str, outputs_str) = text.split_once("->").unwrap_or((text, ""));
    let inputs = parse_side(inputs_str)?;
    let outputs = parse_side(outputs_str)?;
    let mut dups: Vec<&str> =
        inputs.iter().filter(|(n, _)| outputs.iter().any(|(m, _)| m == n)).map(|(n, _)| n.as_str()).collect();
    if !dups.is_empty() {
        dups.sort_unstable();
        dups.dedup();
        return Err(sig_error(
            "ValueError",
            format!("Input and output fields must have distinct names, but found duplicates: '{}'.", dups.join(", ")),
        ));
    }
    // Later duplicates on one side replace the earlier value in place, as a dict does.
    let dedup = |side: Side| -> Vec<Pending> {
        let mut out: Vec<Pending> = Vec::new();
        for (name, ty) in side {
            match out.iter_mut().find(|p| p.name == name) {
                Some(existing) => existing.ty = ty,
                None => out.push(Pending { name, ty, extra: None }),
            }
        }
        out
    };
    finish(dedup(inputs), dedup(outputs), instructions)
}

/// Parse a Python type annotation such as `list[str]` or `Optional[int]`.
pub fn parse_type(annotation: &str) -> Result<FieldType> {
    let side = parse_side(&format!("x: {annotation}"))?;
    let Some((_, Some(py))) = side.into_iter().next() else {
        return Err(sig_error("SyntaxError", format!("`{annotation}` is not a type annotation")));
    };
    if matches!(py, Py::Const(Const::None)) {
        return Ok(FieldType::Str);
    }
    check_is_type(&py).map_err(from_resolve)?;
    into_field_type(py).map_err(from_resolve)
}

/// Build a signature from a class-style description (what a class deriving
/// `dspy.Signature` declares).
pub fn signature_from_class(spec: &ClassSignature) -> Result<Signature> {
    let pending = |decls: &[dspex_core::FieldDecl]| -> Result<Vec<Pending>> {
        decls
            .iter()
            .map(|d| {
                let ty = match &d.ty {
                    Some(t) => {
                        let side = parse_side(&format!("x: {t}")).map_err(|e| e.with_field(d.name.clone()))?;
                        side.into_iter().next().and_then(|(_, ty)| ty)
                    }
                    None => None,
                };
                let mut extra = FieldSpec::new(d.name.clone(), FieldType::Str);
                if let Some(desc) = &d.desc {
                    extra = extra.desc(desc.clone());
                }
                if let Some(prefix) = &d.prefix {
                    extra = extra.prefix(prefix.clone());
                }
                for (k, v) in &d.constraints {
                    extra = extra.constraint(Constraint::from_key(k, v).map_err(|e| e.with_field(d.name.clone()))?);
                }
                Ok(Pending { name: d.name.clone(), ty, extra: Some(extra) })
            })
            .collect()
    };
    finish(pending(&spec.inputs)?, pending(&spec.outputs)?, spec.instructions.as_deref())
}

/// Build a signature from either form of [`SignatureSpec`], through the cache
/// for the string form.
pub fn signature_from_spec(spec: &SignatureSpec) -> Result<Arc<Signature>> {
    match spec {
        SignatureSpec::Text(text) => parse_signature(text, None),
        SignatureSpec::Class(class) => signature_from_class(class).map(Arc::new),
    }
}

const CACHE_CAPACITY: usize = 4096;

/// (signature text, instructions, parsed signature)
type CacheEntry = (Box<str>, Option<Box<str>>, Arc<Signature>);

#[derive(Default)]
struct Cache {
    map: HashMap<u64, Vec<CacheEntry>>,
    order: VecDeque<u64>,
}

fn cache() -> &'static RwLock<Cache> {
    static CACHE: OnceLock<RwLock<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn key(text: &str, instructions: Option<&str>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    instructions.hash(&mut h);
    h.finish()
}

/// Parse DSPy's string syntax, with explicit instructions or DSPy's default
/// text. Results are cached; errors are not.
pub fn parse_signature(text: &str, instructions: Option<&str>) -> Result<Arc<Signature>> {
    let k = key(text, instructions);
    if let Some(entries) = cache().read().map.get(&k) {
        if let Some((_, _, sig)) = entries.iter().find(|(t, i, _)| &**t == text && i.as_deref() == instructions) {
            return Ok(sig.clone());
        }
    }
    let sig = Arc::new(parse_signature_uncached(text, instructions)?);
    let mut c = cache().write();
    if c.order.len() >= CACHE_CAPACITY {
        if let Some(old) = c.order.pop_front() {
            c.map.remove(&old);
        }
    }
    c.map.entry(k).or_default().push((text.into(), instructions.map(Into::into), sig.clone()));
    c.order.push_back(k);
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_parses_share_the_signature() {
        let a = parse_signature("q -> a", None).unwrap();
        let b = parse_signature("q -> a", None).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = parse_signature("q -> a", Some("Other.")).unwrap();
        assert_eq!(c.instructions(), "Other.");
    }

    #[test]
    fn types_and_errors() {
        assert_eq!(parse_type("Optional[list[int]]").unwrap().annotation_name(), "Union[list[int], NoneType]");
        assert_eq!(parse_type("None").unwrap(), FieldType::Str);
        let e = parse_type("List").unwrap_err();
        assert_eq!(e.python_type(), Some("ValueError"));
        let e = parse_signature_uncached("a: lambda: 1 -> b", None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let e = parse_signature_uncached("a: os -> b", None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let e = parse_signature_uncached("a: List[int, str] -> b", None).unwrap_err();
        assert_eq!(e.message(), "Too many arguments for typing.List; actual 2, expected 1");
        let e = parse_signature_uncached("a -> b: Optional", None).unwrap_err();
        assert_eq!(e.python_type(), Some("PydanticSchemaGenerationError"));
    }

    #[test]
    fn class_spec_keeps_descriptions_and_constraints() {
        let spec: ClassSignature = serde_json::from_value(serde_json::json!({
            "instructions": "Score it.",
            "inputs": [{"name": "essay", "desc": "The essay"}],
            "outputs": [{"name": "score", "type": "int", "prefix": "Score (1-10):", "constraints": {"ge": 1, "le": 10}}]
        }))
        .unwrap();
        let sig = signature_from_class(&spec).unwrap();
        assert_eq!(sig.inputs()[0].desc(), "The essay");
        assert!(!sig.inputs()[0].type_declared());
        assert_eq!(sig.outputs()[0].ty(), &FieldType::Int);
        assert_eq!(sig.outputs()[0].prefix(), "Score (1-10):");
        assert_eq!(sig.outputs()[0].constraints().len(), 2);
        let bad: ClassSignature =
            serde_json::from_value(serde_json::json!({"outputs": [{"name": "x", "constraints": {"nope": 1}}]}))
                .unwrap();
        assert_eq!(signature_from_class(&bad).unwrap_err().context().field.as_deref(), Some("x"));
    }
}
