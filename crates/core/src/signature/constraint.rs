//! pydantic field constraints (`ge`, `max_length`, ...), as a signature
//! declares them and as DSPy describes them to the LM.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// A pydantic field constraint, shown to the LM as DSPy shows it
/// (`greater than or equal to: 0`). Values are numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// Where pydantic puts this constraint among a field's metadata: `Field()`
    /// collects them in this fixed order, whatever order the keywords came in.
    pub fn pydantic_order(&self) -> u8 {
        match self {
            Constraint::Gt(_) => 0,
            Constraint::Ge(_) => 1,
            Constraint::Lt(_) => 2,
            Constraint::Le(_) => 3,
            Constraint::MultipleOf(_) => 4,
            Constraint::MinLength(_) => 5,
            Constraint::MaxLength(_) => 6,
            Constraint::AllowInfNan(_) => 7,
        }
    }

    /// Python's `repr()` of the annotated-types object pydantic keeps for
    /// this constraint: `Gt(gt=0)`, `MinLen(min_length=1)`, `Ge(ge=1e-07)`.
    pub fn py_repr(&self) -> String {
        let class = match self {
            Constraint::Gt(_) => "Gt",
            Constraint::Ge(_) => "Ge",
            Constraint::Lt(_) => "Lt",
            Constraint::Le(_) => "Le",
            Constraint::MinLength(_) => "MinLen",
            Constraint::MaxLength(_) => "MaxLen",
            Constraint::MultipleOf(_) => "MultipleOf",
            Constraint::AllowInfNan(_) => "AllowInfNan",
        };
        let mut out = format!("{class}({}=", self.key());
        match self {
            Constraint::Gt(n)
            | Constraint::Ge(n)
            | Constraint::Lt(n)
            | Constraint::Le(n)
            | Constraint::MultipleOf(n) => super::text::write_number(&mut out, n),
            Constraint::MinLength(n) | Constraint::MaxLength(n) => out.push_str(&n.to_string()),
            Constraint::AllowInfNan(b) => out.push_str(if *b { "True" } else { "False" }),
        }
        out.push(')');
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_from_keys() {
        let c = Constraint::from_key("ge", &serde_json::json!(0.5)).unwrap();
        assert_eq!(c.label(), "greater than or equal to: ");
        assert_eq!(c.key(), "ge");
        assert!(Constraint::from_key("min_length", &serde_json::json!(-1)).is_err());
        assert!(Constraint::from_key("bogus", &serde_json::json!(1)).is_err());
    }

    #[test]
    fn constraints_print_as_pydantic_keeps_them() {
        let c = |k: &str, v: serde_json::Value| Constraint::from_key(k, &v).unwrap();
        assert_eq!(c("gt", serde_json::json!(0)).py_repr(), "Gt(gt=0)");
        assert_eq!(c("ge", serde_json::json!(1e-7)).py_repr(), "Ge(ge=1e-07)");
        assert_eq!(c("lt", serde_json::json!(1.0)).py_repr(), "Lt(lt=1.0)");
        assert_eq!(c("max_length", serde_json::json!(3)).py_repr(), "MaxLen(max_length=3)");
        assert_eq!(c("allow_inf_nan", serde_json::json!(false)).py_repr(), "AllowInfNan(allow_inf_nan=False)");
        assert!(
            c("gt", serde_json::json!(0)).pydantic_order() < c("multiple_of", serde_json::json!(2)).pydantic_order()
        );
    }
}
