//! A deterministic offline "LM" for demos and tests without network access.
//!
//! It reads the prompt DSPy's adapters build (which output fields, of which
//! types, Chat or JSON format) and answers in that format. Answers are
//! deterministic: simple arithmetic (`What is 17 + 25?`) and a few capitals
//! are answered correctly, so optimizers and metrics have something real to
//! work with; everything else gets a clearly labelled placeholder.

use dspex_core::Value;

use super::server::{Reply, Responder};

/// The offline responder. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct OfflineResponder {
    latency: std::time::Duration,
}

impl OfflineResponder {
    /// A responder that answers at once.
    pub fn new() -> OfflineResponder {
        OfflineResponder::default()
    }

    /// A responder that waits `latency` before each answer (benchmarks).
    pub fn with_latency(latency: std::time::Duration) -> OfflineResponder {
        OfflineResponder { latency }
    }
}

const CAPITALS: &[(&str, &str)] = &[
    ("france", "Paris"),
    ("germany", "Berlin"),
    ("italy", "Rome"),
    ("spain", "Madrid"),
    ("japan", "Tokyo"),
    ("canada", "Ottawa"),
    ("portugal", "Lisbon"),
    ("egypt", "Cairo"),
    ("kenya", "Nairobi"),
    ("brazil", "Brasília"),
];

/// Output fields named in a DSPy system message: (name, type).
fn output_fields(system: &str) -> Vec<(String, String)> {
    let Some(start) = system.find("Your output fields are:\n") else {
        return Vec::new();
    };
    let section = &system[start + "Your output fields are:\n".len()..];
    let end = section.find("\nAll interactions will be structured").unwrap_or(section.len());
    section[..end]
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(". `")?.1;
            let (name, rest) = rest.split_once("` (")?;
            let ty = rest.rsplit_once("):").map(|(t, _)| t).unwrap_or(rest.trim_end_matches(')'));
            Some((name.to_string(), ty.to_string()))
        })
        .collect()
}

/// The arithmetic or capital the question asks for, if it is one we know.
fn known_answer(question: &str) -> Option<(String, Option<i64>)> {
    let q = question.to_lowercase();
    for (country, capital) in CAPITALS {
        if q.contains("capital") && q.contains(country) {
            return Some((capital.to_string(), None));
        }
    }
    let nums: Vec<i64> = q.split(|c: char| !c.is_ascii_digit() && c != '-').filter_map(|t| t.parse().ok()).collect();
    if nums.len() == 2 {
        let (a, b) = (nums[0], nums[1]);
        let v = if q.contains('+') || q.contains("plus") || q.contains("sum") {
            a.checked_add(b)
        } else if q.contains('*') || q.contains('×') || q.contains("times") {
            a.checked_mul(b)
        } else if q.contains(" - ") || q.contains("minus") {
            a.checked_sub(b)
        } else {
            None
        };
        if let Some(v) = v {
            return Some((v.to_string(), Some(v)));
        }
    }
    None
}

fn last_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .unwrap_or_default()
        .to_string()
}

fn first_input_value(user: &str) -> String {
    // The text after the first `[[ ## name ## ]]` header, up to the next blank line.
    let Some(pos) = user.find(" ## ]]\n") else {
        return user.lines().next().unwrap_or_default().to_string();
    };
    let rest = &user[pos + " ## ]]\n".len()..];
    rest.split("\n\n").next().unwrap_or_default().to_string()
}

fn value_for(name: &str, ty: &str, question: &str) -> Value {
    let known = known_answer(question);
    let short: String = question.chars().take(60).collect();
    let inner = ty.strip_prefix("Union[").and_then(|t| t.strip_suffix(", NoneType]")).unwrap_or(ty);
    match inner {
        "int" => Value::from(known.and_then(|(_, n)| n).unwrap_or(42)),
        "float" => Value::from(known.and_then(|(_, n)| n).map_or(0.9, |n| n as f64)),
        "bool" => Value::Bool(true),
        t if t.starts_with("Literal[") => {
            let first = t["Literal[".len()..].split(',').next().unwrap_or("").trim().trim_end_matches(']');
            Value::String(first.trim_matches(['\'', '"']).to_string())
        }
        t if t.starts_with("list") => Value::Array(vec![Value::String(format!("offline item for: {short}"))]),
        t if t.starts_with("dict") => Value::Object(Default::default()),
        _ if name == "reasoning" || name == "rationale" => Value::String(match &known {
            Some((a, _)) => {
                format!("[offline LM] The question \"{short}\" has a known answer: {a}.")
            }
            None => format!("[offline LM] Considering \"{short}\" step by step."),
        }),
        _ => Value::String(match known {
            Some((a, _)) => a,
            None => format!("[offline LM] answer to: {short}"),
        }),
    }
}

impl Responder for OfflineResponder {
    fn respond(&self, request: &Value) -> Reply {
        let messages = request.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        let system = messages
            .iter()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("system"))
            .and_then(|m| m.get("content").and_then(Value::as_str))
            .unwrap_or_default();
        let json_mode = system.contains("Outputs will be a JSON object") || request.get("response_format").is_some();
        let question = first_input_value(&last_user_text(&messages));
        let fields = output_fields(system);
        let text = if fields.is_empty() {
            format!("[offline LM] {}", question.chars().take(80).collect::<String>())
        } else if json_mode {
            let obj: serde_json::Map<String, Value> =
                fields.iter().map(|(n, t)| (n.clone(), value_for(n, t, &question))).collect();
            Value::Object(obj).to_string()
        } else {
            let mut out = String::new();
            for (n, t) in &fields {
                let v = value_for(n, t, &question);
                let rendered = match &v {
                    Value::String(s) => s.clone(),
                    Value::Bool(true) => "True".into(),
                    Value::Bool(false) => "False".into(),
                    other => other.to_string(),
                };
                out.push_str(&format!("[[ ## {n} ## ]]\n{rendered}\n\n"));
            }
            out.push_str("[[ ## completed ## ]]");
            out
        };
        let n = request.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 16) as usize;
        Reply::choices(vec![text; n]).delayed(self.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_in_the_prompted_format() {
        let system = "Your input fields are:\n1. `question` (str): \nYour output fields are:\n1. `reasoning` (str): \n2. `answer` (int): \nAll interactions will be structured in the following way";
        let req = json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "[[ ## question ## ]]\nWhat is 17 + 25?\n\nRespond..."}]});
        let Reply::Text { choices, .. } = OfflineResponder::new().respond(&req) else { panic!() };
        assert!(choices[0].contains("[[ ## answer ## ]]\n42\n"), "{}", choices[0]);
        let req = json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "[[ ## question ## ]]\nWhat is the capital of Italy?"}], "response_format": {"type": "json_object"}});
        let Reply::Text { choices, .. } = OfflineResponder::new().respond(&req) else { panic!() };
        let v: Value = serde_json::from_str(&choices[0]).unwrap();
        assert_eq!(v["answer"], json!(42));
        assert!(v["reasoning"].as_str().unwrap().contains("Rome"));
    }
}
