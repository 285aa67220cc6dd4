//! pydantic field constraints (`ge`, `max_length`, ...), as a signature
//! declares them and as DSPy describes them to the LM.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

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
}
