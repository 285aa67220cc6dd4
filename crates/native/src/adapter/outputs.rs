//! Collecting a completion's output fields, and DSPy's failure when some are
//! missing or unreadable (`AdapterParseError`, with DSPy's text).

use std::sync::Arc;

use dspex_core::{AdapterKind, Error, ErrorKind, Field, Map, Result, Signature, Value};

use super::{adapter_name, OUTPUT_TEMPLATE_SLOT};

/// DSPy's `AdapterParseError`: an optional cause, then the response and the
/// expected (and, where known, the parsed) output fields.
pub(super) fn parse_error(
    kind: AdapterKind,
    sig: &Signature,
    lm_response: &str,
    message: Option<String>,
    parsed: Option<Vec<String>>,
) -> Error {
    let mut text = match message {
        Some(m) => format!("{m}\n\n"),
        None => String::new(),
    };
    let expected: Vec<&str> = sig.outputs().iter().map(Field::name).collect();
    text.push_str(&format!(
        "Adapter {} failed to parse the LM response. \n\nLM Response: {} \n\nExpected to find output fields in the LM response: [{}] \n\n",
        adapter_name(kind),
        lm_response,
        expected.join(", ")
    ));
    if let Some(parsed) = parsed {
        text.push_str(&format!("Actual output fields parsed from the LM response: [{}] \n\n", parsed.join(", ")));
    }
    Error::new(ErrorKind::Parse, text).with_python_type("AdapterParseError")
}

/// Output values being collected, already in signature order (keys are
/// inserted up front so values are written by position, without hashing).
pub(super) struct Outputs {
    map: Map,
    /// Which outputs have a value: a bit per output (up to 64), then a list.
    bits: u64,
    more: Vec<bool>,
}

impl Outputs {
    pub(super) fn new(sig: &Signature) -> Outputs {
        // Cloning a prepared map (borrowed: no atomic traffic per parse) copies stored hashes instead of hashing keys again.
        let template = sig.memo(OUTPUT_TEMPLATE_SLOT).map(|slot| {
            slot.get_or_init(|| {
                let mut map = Map::with_capacity(sig.outputs().len());
                for f in sig.outputs() {
                    map.insert(f.name().to_string(), Value::Null);
                }
                Arc::new(map)
            })
        });
        let map = match template.and_then(|t| t.downcast_ref::<Map>()) {
            Some(t) => t.clone(),
            None => sig.outputs().iter().map(|f| (f.name().to_string(), Value::Null)).collect(),
        };
        let n = sig.outputs().len();
        Outputs { map, bits: 0, more: if n > 64 { vec![false; n - 64] } else { Vec::new() } }
    }

    pub(super) fn has(&self, idx: usize) -> bool {
        if idx < 64 {
            self.bits & (1 << idx) != 0
        } else {
            self.more[idx - 64]
        }
    }

    pub(super) fn set(&mut self, idx: usize, v: Value) {
        if let Some((_, slot)) = self.map.iter_mut().nth(idx) {
            // A slot usually still holds the template's `Null`: nothing to drop.
            match std::mem::replace(slot, v) {
                Value::Null => {}
                old => drop(old),
            }
        }
        if idx < 64 {
            self.bits |= 1 << idx;
        } else {
            self.more[idx - 64] = true;
        }
    }
}

/// DSPy's `apply_output_field_defaults` and the final check that every output is there.
pub(super) fn finish(kind: AdapterKind, sig: &Signature, completion: &str, mut found: Outputs) -> Result<Map> {
    let mut missing = Vec::new();
    for (idx, f) in sig.outputs().iter().enumerate() {
        if found.has(idx) {
            continue;
        }
        if let Some(d) = f.default() {
            found.set(idx, d.clone());
        } else if !f.ty().allows_none() {
            missing.push(idx);
        }
    }
    if !missing.is_empty() {
        let parsed: Vec<String> = sig
            .outputs()
            .iter()
            .enumerate()
            .filter(|(i, _)| !missing.contains(i))
            .map(|(_, f)| f.name().to_string())
            .collect();
        return Err(parse_error(kind, sig, completion, None, Some(parsed)));
    }
    Ok(found.map)
}
