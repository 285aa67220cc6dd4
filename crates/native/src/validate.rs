//! Checking values against field types.
//!
//! [`check_inputs`] tells a caller, before any LM call, which input does not
//! match its declared type: the error names the field, the expected type
//! and the offending value. Output values are checked (and coerced, as
//! pydantic does) when a completion is parsed.
//!
//! ```
//! use dspex_native::{parse_signature, validate::check_inputs};
//! use serde_json::json;
//!
//! let sig = parse_signature("question, k: int -> answer", None).unwrap();
//! assert!(check_inputs(&sig, json!({"question": "q", "k": 3}).as_object().unwrap()).is_ok());
//! let err = check_inputs(&sig, json!({"question": "q", "k": "three"}).as_object().unwrap()).unwrap_err();
//! assert_eq!(err.message(), "input `k` expects int, got 'three'");
//! assert_eq!(err.context().field.as_deref(), Some("k"));
//! ```

use dspex_core::{Constraint, DspyType, Error, ErrorKind, FieldType, LiteralValue, Map, Result, Signature, Value};

use crate::py;
use crate::pyemu::pydantic::constraint_violation;

/// Whether `value` is a valid value of type `ty` (ints count as floats; a
/// `str` field also takes a list of strings, as DSPy allows).
pub fn matches_type(ty: &FieldType, value: &Value) -> bool {
    let all = |items: &Vec<Value>, t: &Option<Box<FieldType>>| match t {
        Some(t) => items.iter().all(|v| matches_type(t, v)),
        None => true,
    };
    match (ty, value) {
        (FieldType::Any, _) => true,
        (FieldType::Str, Value::String(_)) => true,
        (FieldType::Str, Value::Array(items)) => items.iter().all(Value::is_string),
        (FieldType::Bytes, Value::String(_)) => true,
        // pydantic (lax) takes a float without a fractional part as an int.
        (FieldType::Int, Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        (FieldType::Int, Value::Bool(_)) => true,
        (FieldType::Float, Value::Number(_)) => true,
        (FieldType::Bool, Value::Bool(_)) => true,
        (FieldType::None, Value::Null) => true,
        (FieldType::List(t) | FieldType::Set(t) | FieldType::FrozenSet(t), Value::Array(items)) => all(items, t),
        (FieldType::Tuple(None), Value::Array(_)) => true,
        (FieldType::Tuple(Some(members)), Value::Array(items)) => {
            members.len() == items.len() && members.iter().zip(items).all(|(t, v)| matches_type(t, v))
        }
        (FieldType::VarTuple(t), Value::Array(items)) => items.iter().all(|v| matches_type(t, v)),
        (FieldType::Dict(None), Value::Object(_)) => true,
        (FieldType::Dict(Some((k, v))), Value::Object(map)) => map.iter().all(|(key, val)| {
            let key_ok = match k.as_ref() {
                FieldType::Str | FieldType::Any => true,
                FieldType::Int => key.parse::<i64>().is_ok(),
                other => matches_type(other, &Value::String(key.clone())),
            };
            key_ok && matches_type(v, val)
        }),
        (FieldType::Literal(values), v) => values.iter().any(|l| literal_matches(l, v)),
        (FieldType::Union(members), v) => members.iter().any(|t| matches_type(t, v)),
        (FieldType::Annotated { inner, constraints, .. }, v) => {
            matches_type(inner, v) && constraint_violation(inner, constraints, v).is_none()
        }
        (FieldType::Dspy(DspyType::History), Value::Object(o)) => {
            o.len() == 1 && o.get("messages").and_then(Value::as_array).is_some_and(|m| m.iter().all(Value::is_object))
        }
        _ => false,
    }
}

/// The JSON Schema (2020-12) of exactly the values [`matches_type`] takes
/// for `ty` — what an API that checks its inputs with it documents for a
/// typed input field — or `None` where a part of the type is not modelled
/// (DSPy's own types but `History`, classes, `complex`): such a field is
/// best left unchecked. (`null`, which [`check_inputs`] lets through for
/// every field, is the caller's to add.)
///
/// ```
/// use dspex_native::{parse_type, validate::values_schema};
/// use serde_json::json;
///
/// let t = parse_type("list[int]").unwrap();
/// assert_eq!(values_schema(&t), Some(json!({"type": "array", "items": {"type": ["integer", "boolean"]}})));
/// assert_eq!(values_schema(&parse_type("dspy.Image").unwrap()), None);
/// ```
pub fn values_schema(ty: &FieldType) -> Option<Value> {
    use serde_json::json;
    let items = |t: &Option<Box<FieldType>>| -> Option<Value> {
        Some(match t {
            Some(t) => json!({"type": "array", "items": values_schema(t)?}),
            None => json!({"type": "array"}),
        })
    };
    let all = |ts: &[FieldType]| ts.iter().map(values_schema).collect::<Option<Vec<Value>>>();
    Some(match ty {
        FieldType::Any => json!({}),
        FieldType::Str => json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
        FieldType::Bytes => json!({"type": "string"}),
        FieldType::Int => json!({"type": ["integer", "boolean"]}),
        FieldType::Float => json!({"type": "number"}),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::None => json!({"type": "null"}),
        FieldType::List(t) | FieldType::Set(t) | FieldType::FrozenSet(t) => items(t)?,
        FieldType::Tuple(None) => json!({"type": "array"}),
        FieldType::Tuple(Some(members)) => json!({
            "type": "array",
            "prefixItems": all(members)?,
            "minItems": members.len(),
            "maxItems": members.len(),
        }),
        FieldType::VarTuple(t) => json!({"type": "array", "items": values_schema(t)?}),
        FieldType::Dict(None) => json!({"type": "object"}),
        FieldType::Dict(Some((k, v))) => {
            let mut schema = json!({"type": "object", "additionalProperties": values_schema(v)?});
            match k.as_ref() {
                FieldType::Str | FieldType::Any => {}
                FieldType::Int => schema["propertyNames"] = json!({"pattern": "^[+-]?[0-9]+$"}),
                other => schema["propertyNames"] = values_schema(other)?,
            }
            schema
        }
        FieldType::Literal(values) => {
            let values: Vec<Value> = values
                .iter()
                .map(|l| match l {
                    LiteralValue::Str(s) => Value::String(s.clone()),
                    LiteralValue::Int(i) => json!(i),
                    LiteralValue::Bool(b) => Value::Bool(*b),
                    LiteralValue::None => Value::Null,
                })
                .collect();
            json!({"enum": values})
        }
        FieldType::Union(members) => json!({"anyOf": all(members)?}),
        FieldType::Annotated { inner, constraints, .. } => {
            let mut schema = values_schema(inner)?;
            add_constraints(&mut schema, inner, constraints);
            schema
        }
        FieldType::Dspy(DspyType::History) => json!({
            "type": "object",
            "required": ["messages"],
            "additionalProperties": false,
            "properties": {"messages": {"type": "array", "items": {"type": "object"}}},
        }),
        _ => return None,
    })
}

/// `constraints` on values of `ty` as JSON Schema keywords, added to `schema`
/// (a string's length also at the top of its list-of-strings alternative:
/// the keyword only ever applies to strings).
fn add_constraints(schema: &mut Value, ty: &FieldType, constraints: &[Constraint]) {
    if let Value::Object(map) = schema {
        for c in constraints {
            if let Some(key) = crate::schema::constraint_key(ty, c) {
                map.insert(key.to_string(), c.value());
            }
        }
    }
}

fn literal_matches(l: &LiteralValue, v: &Value) -> bool {
    match (l, v) {
        (LiteralValue::Str(a), Value::String(b)) => a == b,
        (LiteralValue::Int(a), Value::Number(n)) => n.as_i64() == Some(*a),
        (LiteralValue::Bool(a), Value::Bool(b)) => a == b,
        (LiteralValue::None, Value::Null) => true,
        _ => false,
    }
}

/// Check every provided input against its field's type. Inputs that are
/// missing, `null`, or were declared without a type are not checked (DSPy
/// does not either); names not in the signature are ignored.
pub fn check_inputs(sig: &Signature, inputs: &Map) -> Result<()> {
    for field in sig.inputs() {
        let Some(value) = inputs.get(field.name()) else {
            continue;
        };
        if value.is_null() || !field.type_declared() {
            continue;
        }
        let broken = if !matches_type(field.ty(), value) {
            Some(String::new())
        } else {
            constraint_violation(field.ty(), field.type_constraints(), value).map(|msg| format!(": {msg}"))
        };
        if let Some(why) = broken {
            let mut shown = py::value_repr(value);
            if shown.chars().count() > 200 {
                shown = shown.chars().take(200).collect::<String>() + "…";
            }
            return Err(Error::new(
                ErrorKind::Validation,
                format!("input `{}` expects {}, got {shown}{why}", field.name(), field.ty().annotation_name()),
            )
            .with_field(field.name()));
        }
    }
    Ok(())
}

/// Names of inputs the signature declares but `inputs` lacks (and whose type
/// does not allow `None`), as DSPy warns about.
pub fn missing_inputs(sig: &Signature, inputs: &Map) -> Vec<String> {
    sig.inputs()
        .iter()
        .filter(|f| !inputs.contains_key(f.name()) && f.default().is_none() && !f.ty().allows_none())
        .map(|f| f.name().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_type;
    use serde_json::json;

    fn ok(t: &str, v: Value) -> bool {
        matches_type(&parse_type(t).unwrap(), &v)
    }

    #[test]
    fn types() {
        assert!(ok("list[int]", json!([1, 2])));
        assert!(!ok("list[int]", json!([1, "2"])));
        assert!(ok("float", json!(1)));
        assert!(!ok("int", json!(1.5)));
        assert!(ok("dict[int, str]", json!({"1": "a"})));
        assert!(!ok("dict[int, str]", json!({"x": "a"})));
        assert!(ok("Optional[Literal['a', 1]]", json!(1)));
        assert!(ok("Optional[Literal['a', 1]]", json!(null)));
        assert!(!ok("Literal['a', 1]", json!("b")));
        assert!(ok("tuple[int, str]", json!([1, "a"])));
        assert!(!ok("tuple[int, str]", json!([1])));
        assert!(ok("str", json!(["a", "b"])));
        assert!(ok("dspy.History", json!({"messages": [{"q": "x"}]})));
        assert!(!ok("dspy.History", json!({"messages": "x"})));
        assert!(ok("list[Annotated[int, Field(gt=0)]]", json!([1, 2])));
        assert!(!ok("list[Annotated[int, Field(gt=0)]]", json!([1, 0])));
        assert!(!ok("dict[str, Annotated[str, Field(max_length=2)]]", json!({"a": "abc"})));
    }

    #[test]
    fn constraints_in_the_type_are_checked_on_inputs() {
        let sig =
            crate::parse_signature("q: Annotated[str, Field(min_length=3)], n: Annotated[int, Field(le=5)] -> a", None)
                .unwrap();
        assert_eq!(sig.inputs()[0].ty(), &FieldType::Str, "pydantic lifts the constraints off the type");
        let err = check_inputs(&sig, json!({"q": "ab"}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.message(), "input `q` expects str, got 'ab': String should have at least 3 characters");
        let err = check_inputs(&sig, json!({"q": "abc", "n": 6}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.message(), "input `n` expects int, got 6: Input should be less than or equal to 5");
        assert!(check_inputs(&sig, json!({"q": "abc", "n": 5}).as_object().unwrap()).is_ok());
        assert_eq!(
            values_schema(&parse_type("list[Annotated[int, Field(gt=0)]]").unwrap()),
            Some(json!({"type": "array", "items": {"type": ["integer", "boolean"], "exclusiveMinimum": 0}}))
        );
    }

    #[test]
    fn errors_name_field_type_and_value() {
        let sig = crate::parse_signature("a: list[int], b -> c", None).unwrap();
        let err = check_inputs(&sig, json!({"a": [1, "x"], "b": 3}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.message(), "input `a` expects list[int], got [1, 'x']");
        // `b` is untyped: anything goes, as in DSPy.
        assert!(check_inputs(&sig, json!({"a": [1], "b": 3}).as_object().unwrap()).is_ok());
        assert_eq!(missing_inputs(&sig, json!({"a": [1]}).as_object().unwrap()), vec!["b".to_string()]);
    }
}
