//! Helpers shared by the integration tests.

use std::path::PathBuf;

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Load a parity fixture file's cases.
pub fn fixture_cases(name: &str) -> Vec<Value> {
    let path = repo_root().join("tests/fixtures/parity").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    doc["cases"].as_array().cloned().unwrap_or_default()
}

/// Collects mismatches so one run reports every failing case, not just the first.
#[derive(Default)]
pub struct Mismatches(Vec<String>);

impl Mismatches {
    pub fn push(&mut self, id: &str, what: impl std::fmt::Display) {
        self.0.push(format!("[{id}] {what}"));
    }

    pub fn check<T: PartialEq + std::fmt::Debug>(&mut self, id: &str, what: &str, got: T, want: T) {
        if got != want {
            self.push(id, format!("{what}:\n   got: {got:?}\n  want: {want:?}"));
        }
    }

    pub fn assert_none(self, total: usize) {
        assert!(self.0.is_empty(), "{} of {total} cases differ from DSPy:\n{}", self.0.len(), self.0.join("\n"));
    }
}
