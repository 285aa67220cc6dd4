//! The JSON schema DSPy shows the LM for typed output fields.
//!
//! DSPy asks pydantic for a type's JSON schema and then reorders every object
//! so that `type` comes first and the other keys follow alphabetically. The
//! functions here produce the same schema, in the same order, for every type
//! the engine supports natively.
//!
//! ```
//! use dspex_core::FieldType;
//! use dspex_native::schema::json_schema;
//!
//! let t = FieldType::optional(FieldType::list(FieldType::Str));
//! let schema = json_schema(&t).unwrap();
//! assert_eq!(
//!     dspex_native::py::json_dumps(&schema),
//!     r#"{"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}"#
//! );
//! ```

use dspex_core::{Constraint, DspyType, Error, Field, FieldRole, FieldType, LiteralValue, Map, Result, Value};

use crate::py;

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut pairs = pairs;
    // DSPy's `move_type_to_front`: "type" first, then alphabetical.
    pairs.sort_by(|(a, _), (b, _)| (*a != "type", *a).cmp(&(*b != "type", *b)));
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map>())
}

fn ty(name: &str) -> (&'static str, Value) {
    ("type", Value::String(name.to_string()))
}

fn literal_type(v: &LiteralValue) -> &'static str {
    match v {
        LiteralValue::Str(_) => "string",
        LiteralValue::Int(_) => "integer",
        LiteralValue::Bool(_) => "boolean",
        LiteralValue::None => "null",
    }
}

/// pydantic's JSON schema of `t`, keys ordered as DSPy prints them.
///
/// Fails with `Unsupported` for types whose schema is a pydantic model
/// (DSPy's own types) or otherwise not modelled.
pub fn json_schema(t: &FieldType) -> Result<Value> {
    let any = || Value::Object(Map::new());
    let items = |inner: &Option<Box<FieldType>>| -> Result<Value> {
        match inner {
            Some(t) => json_schema(t),
            None => Ok(any()),
        }
    };
    Ok(match t {
        FieldType::Str | FieldType::Complex => obj(vec![ty("string")]),
        FieldType::Int => obj(vec![ty("integer")]),
        FieldType::Float => obj(vec![ty("number")]),
        FieldType::Bool => obj(vec![ty("boolean")]),
        FieldType::Bytes => obj(vec![ty("string"), ("format", "binary".into())]),
        FieldType::None => obj(vec![ty("null")]),
        FieldType::Any => any(),
        FieldType::List(inner) => obj(vec![ty("array"), ("items", items(inner)?)]),
        FieldType::Set(inner) | FieldType::FrozenSet(inner) => {
            obj(vec![ty("array"), ("items", items(inner)?), ("uniqueItems", Value::Bool(true))])
        }
        FieldType::Dict(None) => obj(vec![ty("object"), ("additionalProperties", Value::Bool(true))]),
        FieldType::Dict(Some((_, v))) => {
            let values = if **v == FieldType::Any { Value::Bool(true) } else { json_schema(v)? };
            obj(vec![ty("object"), ("additionalProperties", values)])
        }
        FieldType::Tuple(None) => obj(vec![ty("array"), ("items", any())]),
        FieldType::Tuple(Some(members)) => {
            let n = Value::from(members.len());
            let prefix = members.iter().map(json_schema).collect::<Result<Vec<_>>>()?;
            obj(vec![ty("array"), ("maxItems", n.clone()), ("minItems", n), ("prefixItems", Value::Array(prefix))])
        }
        FieldType::VarTuple(inner) => obj(vec![ty("array"), ("items", json_schema(inner)?)]),
        FieldType::Union(members) => {
            // pydantic makes a union with None "nullable": null goes last.
            let mut any_of =
                members.iter().filter(|m| **m != FieldType::None).map(json_schema).collect::<Result<Vec<_>>>()?;
            if members.contains(&FieldType::None) {
                any_of.push(obj(vec![ty("null")]));
            }
            obj(vec![("anyOf", Value::Array(any_of))])
        }
        FieldType::Literal(values) => {
            let kind = literal_type(&values[0]);
            let same = values.iter().all(|v| literal_type(v) == kind);
            let json: Vec<Value> = values.iter().map(LiteralValue::to_json).collect();
            match (values.len(), same) {
                (1, _) => obj(vec![ty(kind), ("const", json[0].clone())]),
                (_, true) => obj(vec![ty(kind), ("enum", Value::Array(json))]),
                _ => obj(vec![("enum", Value::Array(json))]),
            }
        }
        FieldType::Annotated { inner, constraints, description } => {
            let Value::Object(mut schema) = json_schema(inner)? else {
                return Err(Error::unsupported("a constrained type whose schema is not an object"));
            };
            for c in constraints {
                if let Some(key) = constraint_key(inner, c) {
                    schema.insert(key.to_string(), c.value());
                }
            }
            if let Some(d) = description {
                schema.insert("description".into(), Value::String(d.clone()));
            }
            let mut pairs: Vec<(String, Value)> = schema.into_iter().collect();
            pairs.sort_by(|(a, _), (b, _)| (a != "type", a).cmp(&(b != "type", b)));
            Value::Object(pairs.into_iter().collect())
        }
        other => {
            return Err(Error::unsupported(format!(
                "the JSON schema of `{}` is not modelled natively",
                other.annotation_name()
            )))
        }
    })
}

/// The JSON Schema keyword pydantic writes for a constraint on `inner`
/// (`allow_inf_nan` has none).
pub(crate) fn constraint_key(inner: &FieldType, c: &Constraint) -> Option<&'static str> {
    let length = |min: &'static str, max: &'static str| match c {
        Constraint::MinLength(_) => Some(min),
        Constraint::MaxLength(_) => Some(max),
        _ => None,
    };
    match inner {
        FieldType::Str => length("minLength", "maxLength"),
        FieldType::Dict(_) => length("minProperties", "maxProperties"),
        FieldType::List(_)
        | FieldType::Set(_)
        | FieldType::FrozenSet(_)
        | FieldType::VarTuple(_)
        | FieldType::Tuple(_) => length("minItems", "maxItems"),
        _ => match c {
            Constraint::Gt(_) => Some("exclusiveMinimum"),
            Constraint::Ge(_) => Some("minimum"),
            Constraint::Lt(_) => Some("exclusiveMaximum"),
            Constraint::Le(_) => Some("maximum"),
            Constraint::MultipleOf(_) => Some("multipleOf"),
            _ => None,
        },
    }
}

/// DSPy's `translate_field_type`: the placeholder line for a field in the
/// system message's structure section (`{answer}` plus a note on its type for
/// outputs).
pub fn field_structure(field: &Field) -> Result<String> {
    let t = field.ty();
    let note: Option<String> =
        if field.role() == FieldRole::Input || matches!(t, FieldType::Str | FieldType::Dspy(DspyType::Reasoning)) {
            None
        } else {
            match t {
                FieldType::Bool => Some("must be True or False".into()),
                FieldType::Int => Some("must be a single int value".into()),
                FieldType::Float => Some("must be a single float value".into()),
                FieldType::Literal(values) => Some(format!(
                    "must exactly match (no extra characters) one of: {}",
                    values.iter().map(LiteralValue::py_str).collect::<Vec<_>>().join("; ")
                )),
                // `Code` carries a long description instead of its schema.
                FieldType::Dspy(DspyType::Code) => None,
                other => Some(format!("must adhere to the JSON schema: {}", py::json_dumps(&json_schema(other)?))),
            }
        };
    Ok(match note {
        Some(n) => format!("{{{}}}        # note: the value you produce {n}", field.name()),
        None => format!("{{{}}}", field.name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_type;

    fn schema(t: &str) -> String {
        py::json_dumps(&json_schema(&parse_type(t).unwrap()).unwrap())
    }

    #[test]
    fn schemas_like_pydantic() {
        assert_eq!(schema("dict[int, str]"), r#"{"type": "object", "additionalProperties": {"type": "string"}}"#);
        assert_eq!(schema("Literal['a']"), r#"{"type": "string", "const": "a"}"#);
        assert_eq!(schema("Literal[1, 'a']"), r#"{"enum": [1, "a"]}"#);
        assert_eq!(schema("Literal[True, False]"), r#"{"type": "boolean", "enum": [true, false]}"#);
        assert_eq!(schema("Literal['a', None]"), r#"{"enum": ["a", null]}"#);
        assert_eq!(
            schema("tuple[int]"),
            r#"{"type": "array", "maxItems": 1, "minItems": 1, "prefixItems": [{"type": "integer"}]}"#
        );
        assert_eq!(schema("set"), r#"{"type": "array", "items": {}, "uniqueItems": true}"#);
        assert_eq!(schema("Optional[Any]"), r#"{"anyOf": [{}, {"type": "null"}]}"#);
        assert_eq!(schema("list[None]"), r#"{"type": "array", "items": {"type": "null"}}"#);
        assert_eq!(schema("list[bytes]"), r#"{"type": "array", "items": {"type": "string", "format": "binary"}}"#);
        assert!(json_schema(&FieldType::Dspy(DspyType::History)).is_err());
    }

    #[test]
    fn constrained_schemas_like_pydantic() {
        assert_eq!(
            schema("list[Annotated[int, Field(lt=10, gt=0, multiple_of=2)]]"),
            r#"{"type": "array", "items": {"type": "integer", "exclusiveMaximum": 10, "exclusiveMinimum": 0, "multipleOf": 2}}"#
        );
        assert_eq!(
            schema("dict[str, Annotated[list[str], Field(min_length=1, description='tags')]]"),
            r#"{"type": "object", "additionalProperties": {"type": "array", "description": "tags", "items": {"type": "string"}, "minItems": 1}}"#
        );
        assert_eq!(
            schema("Optional[Annotated[float, Field(ge=0.5, allow_inf_nan=False)]]"),
            r#"{"anyOf": [{"type": "number", "minimum": 0.5}, {"type": "null"}]}"#
        );
    }
}
