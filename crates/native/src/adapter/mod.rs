//! DSPy's `ChatAdapter` and `JSONAdapter`: prompts out, fields back.
//!
//! [`format`](fn@format) builds the chat messages DSPy sends for a signature,
//! its demos and the current inputs (conversation history included);
//! [`parse`] reads a completion back into output fields. Both are byte-for-byte DSPy 3.4.1,
//! quirks included, and both fail with `Unsupported` where DSPy would do
//! something this engine does not model (images, tools, custom types).
//!
//! ```
//! use dspex_core::AdapterKind;
//! use dspex_native::{adapter, parse_signature};
//! use serde_json::json;
//!
//! let sig = parse_signature("question -> answer: int", None).unwrap();
//! let inputs = json!({"question": "2+2?"});
//! let messages = adapter::format(AdapterKind::Chat, &sig, &[], inputs.as_object().unwrap()).unwrap();
//! assert_eq!(messages[1].content, "[[ ## question ## ]]\n2+2?\n\nRespond with the corresponding output fields, starting with the field `[[ ## answer ## ]]` (must be formatted as a valid Python int), and then ending with the marker for `[[ ## completed ## ]]`.");
//!
//! let fields = adapter::parse(AdapterKind::Chat, &sig, "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]").unwrap();
//! assert_eq!(fields["answer"], json!(4));
//! ```
//!
//! Inside, `prompt` writes the messages for both adapters (`JSONAdapter`
//! overrides only a few of `ChatAdapter`'s sections, so one code path keyed by
//! [`AdapterKind`] serves both). A completion is read by `chat`
//! (`[[ ## field ## ]]` sections) or `json` (one JSON object); both convert
//! each field with `value` (DSPy's `parse_value`) and collect the results in
//! `outputs`, which also builds DSPy's `AdapterParseError`.

mod chat;
mod json;
mod outputs;
mod prompt;
mod value;

use dspex_core::{AdapterKind, Error, Field, Map, Result, Signature, Value};

use crate::lm::Message;

// Signature memo slots this module uses (`Signature::memo`): the system
// message of each adapter, and the output-map template. Rendering them once
// per signature keeps repeated calls from rebuilding identical text.

/// Memo slot of `kind`'s system message.
fn memo_slot(kind: AdapterKind) -> usize {
    match kind {
        AdapterKind::Chat => 0,
        AdapterKind::Json => 1,
    }
}

/// Memo slot of the output-map template (keys in signature order, null values).
const OUTPUT_TEMPLATE_SLOT: usize = 2;

/// The adapter's class name, as DSPy's errors print it.
fn adapter_name(kind: AdapterKind) -> &'static str {
    match kind {
        AdapterKind::Chat => "ChatAdapter",
        AdapterKind::Json => "JSONAdapter",
    }
}

/// Fails with `Unsupported` when a field's type is outside what the native
/// adapters model, so the router runs the program in Python instead.
fn require_native(sig: &Signature) -> Result<()> {
    if sig.is_native() {
        return Ok(());
    }
    match sig.fields().iter().find(|f| !f.ty().is_native()) {
        None => Ok(()),
        Some(f) => Err(Error::unsupported(format!(
            "field `{}` has type `{}`, which the native adapters do not handle; run this program in Python",
            f.name(),
            f.ty().annotation_name()
        ))
        .with_field(f.name())),
    }
}

/// DSPy's `format_field_value`: how a value appears in a prompt.
pub fn format_value(field: &Field, value: &Value) -> Result<String> {
    let mut out = String::new();
    prompt::write_value(&mut out, field, value)?;
    Ok(out)
}

/// The messages DSPy's adapter of `kind` sends for `sig`, `demos` and `inputs`.
pub fn format(kind: AdapterKind, sig: &Signature, demos: &[Map], inputs: &Map) -> Result<Vec<Message>> {
    require_native(sig)?;
    prompt::messages(kind, sig, demos, inputs)
}

/// Parse a completion into the signature's output fields, as the adapter of
/// `kind` does. Errors are `Parse` errors carrying DSPy's `AdapterParseError` text.
pub fn parse(kind: AdapterKind, sig: &Signature, completion: &str) -> Result<Map> {
    require_native(sig)?;
    match kind {
        AdapterKind::Chat => chat::parse_chat(sig, completion),
        AdapterKind::Json => json::parse_json(sig, completion),
    }
}
