//! User-defined prompt templates (Jinja syntax, rendered by minijinja).
//!
//! A [`PromptTemplate`] replaces the adapter's formatting with your own
//! system and user messages; the completion is still parsed by the adapter.
//! Templates see:
//!
//! - `signature`: `instructions`, `inputs` and `outputs` (each field with
//!   `name`, `type`, `desc`, `prefix`);
//! - `demos`: the few-shot examples (maps of field values);
//! - `inputs`: the current input values;
//! - the filter `value`, which renders a value the way DSPy does in prompts.
//!
//! Input values are data: text such as `{{ secret }}` inside an input is
//! printed as it is, never evaluated. Compiled templates are cached.
//!
//! ```
//! use dspex_native::{parse_signature, template::PromptTemplate};
//! use serde_json::json;
//!
//! let t = PromptTemplate::new(
//!     Some("{{ signature.instructions }}"),
//!     "{% for f in signature.inputs %}{{ f.prefix }} {{ inputs[f.name] | value }}\n{% endfor %}",
//! ).unwrap();
//! let sig = parse_signature("question -> answer", Some("Answer briefly.")).unwrap();
//! let inputs = json!({"question": "What is {{ 1 + 1 }}?"});
//! let messages = t.render(&sig, &[], inputs.as_object().unwrap()).unwrap();
//! assert_eq!(messages[0].content, "Answer briefly.");
//! assert_eq!(messages[1].content, "Question: What is {{ 1 + 1 }}?\n");
//! ```

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use dspex_core::{Error, ErrorKind, Map, Result, Signature, Value};
use minijinja::{Environment, UndefinedBehavior};
use parking_lot::Mutex;

use crate::lm::Message;

/// A compiled pair of templates: an optional system message and a user message.
#[derive(Clone)]
pub struct PromptTemplate {
    env: Arc<Environment<'static>>,
    has_system: bool,
}

impl std::fmt::Debug for PromptTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTemplate").field("has_system", &self.has_system).finish()
    }
}

fn template_error(which: &str, e: minijinja::Error) -> Error {
    let mut msg = format!("{which} template: {e}");
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg.push_str(&format!(" ({detail})"));
        }
    }
    if let Some(line) = e.line() {
        msg.push_str(&format!(" at line {line}"));
    }
    Error::new(ErrorKind::InvalidRequest, msg)
}

/// The `value` filter: DSPy's rendering of a value in a prompt.
fn value_filter(v: minijinja::Value) -> std::result::Result<String, minijinja::Error> {
    let json: Value = serde_json::to_value(&v)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(match &json {
        Value::Array(_) | Value::Object(_) => crate::py::json_dumps(&json),
        other => crate::py::value_str(other),
    })
}

/// (system template, user template) → compiled pair, least recently used
/// evicted first. Each entry carries the tick of its last use; a miss on a
/// full cache drops the oldest — a scan of at most `CACHE_CAPACITY`
/// entries, small beside compiling the template that missed.
#[derive(Default)]
struct TemplateCache {
    entries: HashMap<(Option<String>, String), (PromptTemplate, u64)>,
    tick: u64,
}

impl TemplateCache {
    fn get(&mut self, key: &(Option<String>, String)) -> Option<PromptTemplate> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(t, used)| {
            *used = tick;
            t.clone()
        })
    }

    fn insert(&mut self, key: (Option<String>, String), template: PromptTemplate) {
        if self.entries.len() >= CACHE_CAPACITY && !self.entries.contains_key(&key) {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.tick += 1;
        self.entries.insert(key, (template, self.tick));
    }
}

fn cache() -> &'static Mutex<TemplateCache> {
    static CACHE: OnceLock<Mutex<TemplateCache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

const CACHE_CAPACITY: usize = 256;

impl PromptTemplate {
    /// Compile (or fetch from the cache) a template pair. Syntax errors are
    /// reported with the template and line.
    pub fn new(system: Option<&str>, user: &str) -> Result<PromptTemplate> {
        let key = (system.map(str::to_string), user.to_string());
        if let Some(t) = cache().lock().get(&key) {
            return Ok(t.clone());
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("value", value_filter);
        if let Some(s) = system {
            env.add_template_owned("system", s.to_string()).map_err(|e| template_error("system", e))?;
        }
        env.add_template_owned("user", user.to_string()).map_err(|e| template_error("user", e))?;
        let t = PromptTemplate { env: Arc::new(env), has_system: system.is_some() };
        cache().lock().insert(key, t.clone());
        Ok(t)
    }

    /// Render the messages for a call.
    pub fn render(&self, sig: &Signature, demos: &[Map], inputs: &Map) -> Result<Vec<Message>> {
        let field = |f: &dspex_core::Field| {
            serde_json::json!({
                "name": f.name(),
                "type": f.ty().annotation_name(),
                "desc": if f.has_default_desc() { "" } else { f.desc() },
                "prefix": f.prefix(),
            })
        };
        let ctx = serde_json::json!({
            "signature": {
                "instructions": sig.instructions(),
                "inputs": sig.inputs().iter().map(field).collect::<Vec<_>>(),
                "outputs": sig.outputs().iter().map(field).collect::<Vec<_>>(),
            },
            "demos": demos,
            "inputs": inputs,
        });
        let render = |name: &str| -> Result<String> {
            let t = self.env.get_template(name).map_err(|e| template_error(name, e))?;
            t.render(&ctx).map_err(|e| template_error(name, e))
        };
        let mut out = Vec::with_capacity(2);
        if self.has_system {
            out.push(Message::system(render("system")?));
        }
        out.push(Message::user(render("user")?));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_signature;
    use serde_json::json;

    #[test]
    fn inputs_are_data_never_code() {
        let t = PromptTemplate::new(None, "Q: {{ inputs.question }} / {{ inputs.question | value }}").unwrap();
        let sig = parse_signature("question -> answer", None).unwrap();
        let evil = "{{ signature.instructions }}{% for x in range(3) %}boom{% endfor %}";
        let m = t.render(&sig, &[], json!({"question": evil}).as_object().unwrap()).unwrap();
        assert_eq!(m[0].content, format!("Q: {evil} / {evil}"));
        assert!(!m[0].content.contains("boom boom"));
    }

    #[test]
    fn errors_name_the_template() {
        let err = PromptTemplate::new(Some("{% if %}"), "x").unwrap_err();
        assert!(err.message().starts_with("system template"), "{err}");
        let t = PromptTemplate::new(None, "{{ inputs.missing }}").unwrap();
        let sig = parse_signature("q -> a", None).unwrap();
        let err = t.render(&sig, &[], &Map::new()).unwrap_err();
        assert!(err.message().starts_with("user template"), "{err}");
    }

    #[test]
    fn values_render_like_dspy_and_templates_are_cached() {
        let t =
            PromptTemplate::new(None, "{{ inputs.x | value }} {{ inputs.y | value }} {{ inputs.z | value }}").unwrap();
        let sig = parse_signature("x, y, z -> a", None).unwrap();
        let m = t.render(&sig, &[], json!({"x": [1, "a"], "y": true, "z": null}).as_object().unwrap()).unwrap();
        assert_eq!(m[0].content, "[1, \"a\"] True None");
        let again =
            PromptTemplate::new(None, "{{ inputs.x | value }} {{ inputs.y | value }} {{ inputs.z | value }}").unwrap();
        assert!(Arc::ptr_eq(&t.env, &again.env));
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_template() {
        let mut c = TemplateCache::default();
        let key = |i: usize| (None, format!("t{i}"));
        let first = PromptTemplate::new(None, "first").unwrap();
        for i in 0..CACHE_CAPACITY {
            c.insert(key(i), first.clone());
        }
        // t0 is used again: t1 is now the least recently used.
        assert!(c.get(&key(0)).is_some());
        c.insert(key(CACHE_CAPACITY), first.clone());
        assert_eq!(c.entries.len(), CACHE_CAPACITY);
        assert!(c.get(&key(0)).is_some(), "a template in use stays");
        assert!(c.get(&key(1)).is_none(), "the least recently used one went");
        // Re-inserting a cached key evicts nothing.
        c.insert(key(2), first);
        assert_eq!(c.entries.len(), CACHE_CAPACITY);
        assert!(c.get(&key(3)).is_some());
    }
}
