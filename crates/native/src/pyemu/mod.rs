//! Python, pydantic and `json_repair` behaviour, reimplemented.
//!
//! DSPy's prompts and parses are shaped by the Python underneath it: prompts
//! are built with `str()`, `repr()` and `json.dumps`; string signatures are
//! read by `ast.parse`; a typed output field's text goes through
//! `json_repair.loads`, falls back to `ast.literal_eval`, and is then
//! validated by pydantic in lax mode. Matching DSPy byte for byte means
//! matching each of those, quirks included, so this module reproduces them
//! (and nothing DSPy-specific: the adapters and the signature parser build on
//! it, never the other way round).
//!
//! - [`text`] — Python's string rules (`str.strip`, `splitlines`, `repr`,
//!   `json.dumps`, `textwrap.dedent`), public as `dspex_native::py`;
//! - [`unicode`] — the Unicode character classes Python's `str` methods and
//!   `re` use;
//! - [`syntax`] — CPython's tokenizer and parser for expressions and
//!   parameter lists, and `ast.dump`;
//! - [`object`] — the Python objects reading LM output produces;
//! - [`literal_eval`](mod@literal_eval) — `ast.literal_eval`;
//! - [`json_repair`] — `json_repair.loads`, the lenient JSON reader;
//! - [`pydantic`] — pydantic's lax validation, with pydantic's error text.
//!
//! Where a case is known not to be modelled (valid Python syntax beyond
//! expressions and parameter lists, literals this engine cannot represent),
//! it is reported as unsupported rather than guessed, and the router runs the
//! program in Python. `json_repair`'s rarer heuristics for badly broken text
//! are the exception: the parity corpus pins the behaviour DSPy's adapters
//! depend on.

pub(crate) mod json_repair;

/// Run one level of a recursive parser or evaluator with room on the stack:
/// deeply nested input (an LM's `[[[[…`, a signature's `((((…`) grows the
/// stack on the heap instead of overflowing it, which would abort the
/// process. The nesting itself is bounded where it is read.
pub(crate) fn with_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(256 * 1024, 2 * 1024 * 1024, f)
}
pub(crate) mod literal_eval;
pub(crate) mod object;
pub(crate) mod pydantic;
pub(crate) mod syntax;
pub mod text;
pub(crate) mod unicode;

pub(crate) use json_repair::loads as repair_loads;
pub(crate) use literal_eval::literal_eval;
pub(crate) use object::PyObj;
pub(crate) use pydantic::validate_python;

#[cfg(test)]
mod parity {
    use super::*;
    use dspex_core::Value;

    /// `tests/fixtures/parity/lax.json`: json_repair and literal_eval results from real Python.
    #[test]
    fn lax_reading_matches_python() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/parity/lax.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
        let cases = doc["cases"].as_array().cloned().unwrap_or_default();
        let mut bad = Vec::new();
        for case in &cases {
            let text = case["text"].as_str().unwrap_or_default();
            let got = repair_loads(text).to_json();
            if got != case["json_repair"] {
                bad.push(format!("json_repair {text:?}: got {got}, want {}", case["json_repair"]));
            }
            let want = &case["literal_eval"];
            match (literal_eval(text), want) {
                (Ok(None), Value::String(s)) if s == "fails" => {}
                (Err(_), Value::String(s)) if s == "unsupported" => {}
                (Ok(Some(v)), Value::Object(o)) if Some(&v.to_json()) == o.get("value") => {}
                (got, want) => bad.push(format!("literal_eval {text:?}: got {got:?}, want {want}")),
            }
        }
        assert!(bad.is_empty(), "{} of {} lax cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
    }
}
