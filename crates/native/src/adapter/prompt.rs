//! Building the messages DSPy's adapters send: the system message (field
//! descriptions, structure, objective), demos, conversation history and the
//! user request.
//!
//! `JSONAdapter` subclasses `ChatAdapter` in DSPy and overrides only how the
//! structure, the output requirements and an assistant turn are written, so
//! one function per DSPy method serves both, branching on [`AdapterKind`]
//! where the JSON adapter differs.

use std::sync::Arc;

use dspex_core::{AdapterKind, DspyType, Error, ErrorKind, Field, FieldType, Map, Result, Signature, Value};

use super::memo_slot;
use crate::lm::Message;
use crate::{py, schema};

const CUSTOM_TYPE_MARKER: &str = "<<CUSTOM-TYPE-START-IDENTIFIER>>";
const INCOMPLETE_DEMO_PREFIX: &str =
    "This is an example of the task, though some input or output fields are not supplied.";
const MISSING_IN_INCOMPLETE_DEMO: &str = "Not supplied for this particular example. ";
const MISSING_IN_COMPLETE_DEMO: &str = "Not supplied for this conversation history message. ";

/// DSPy's `format_field_value`, appended to `out`.
pub(super) fn write_value(out: &mut String, field: &Field, value: &Value) -> Result<()> {
    match value {
        // A list given to a `str` field becomes a numbered list of «blobs».
        Value::Array(items) if *field.ty() == FieldType::Str => {
            let blob = |out: &mut String, item: &Value| -> Result<()> {
                let Value::String(s) = item else {
                    return Err(Error::unsupported(format!(
                        "field `{}` is a str but its list holds a {}; DSPy fails on this",
                        field.name(),
                        json_type(item)
                    ))
                    .with_field(field.name()));
                };
                if !s.contains(['\n', '«', '»']) {
                    out.push('«');
                    out.push_str(s);
                    out.push('»');
                } else {
                    out.push_str("«««\n    ");
                    out.push_str(&s.replace('\n', "\n    "));
                    out.push_str("\n»»»");
                }
                Ok(())
            };
            match items.len() {
                0 => out.push_str("N/A"),
                1 => blob(out, &items[0])?,
                _ => {
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push('\n');
                        }
                        out.push('[');
                        out.push_str(&(i + 1).to_string());
                        out.push_str("] ");
                        blob(out, item)?;
                    }
                }
            }
        }
        Value::Array(_) | Value::Object(_) => py::write_json_compact(out, value),
        Value::String(s) => out.push_str(s),
        other => py::write_value_repr(out, other),
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn field_descriptions(out: &mut String, fields: &[Field]) {
    // `get_field_description_string`, then Python's strip().
    let start = out.len();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&(i + 1).to_string());
        out.push_str(". `");
        out.push_str(f.name());
        out.push_str("` (");
        out.push_str(&f.ty().annotation_name());
        out.push_str("): ");
        if !f.has_default_desc() {
            out.push_str(f.desc());
        }
        if !f.constraints().is_empty() {
            out.push_str("\nConstraints: ");
            for (k, c) in f.constraints().iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                out.push_str(c.label());
                out.push_str(&py::value_str(&c.value()));
            }
        }
    }
    let stripped = py::strip(&out[start..]).to_string();
    out.truncate(start);
    out.push_str(&stripped);
}

fn header(out: &mut String, name: &str) {
    out.push_str("[[ ## ");
    out.push_str(name);
    out.push_str(" ## ]]\n");
}

/// `format_field_with_value` for the structure section (values are the placeholders).
fn structure_sections(fields: &[Field]) -> Result<String> {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        header(&mut out, f.name());
        out.push_str(&schema::field_structure(f)?);
    }
    Ok(py::strip(&out).to_string())
}

fn system_message(kind: AdapterKind, sig: &Signature) -> Result<Arc<String>> {
    if let Some(cached) =
        sig.memo(memo_slot(kind)).and_then(|m| m.get()).and_then(|m| m.clone().downcast::<String>().ok())
    {
        return Ok(cached);
    }
    let mut out = String::with_capacity(512);
    out.push_str("Your input fields are:\n");
    field_descriptions(&mut out, sig.inputs());
    out.push_str("\nYour output fields are:\n");
    field_descriptions(&mut out, sig.outputs());
    out.push('\n');
    // Field structure.
    let intro = "All interactions will be structured in the following way, with the appropriate values filled in.";
    let parts: Vec<String> = match kind {
        AdapterKind::Chat => vec![
            intro.to_string(),
            structure_sections(sig.inputs())?,
            structure_sections(sig.outputs())?,
            "[[ ## completed ## ]]\n".to_string(),
        ],
        AdapterKind::Json => {
            let mut placeholders = Map::new();
            for f in sig.outputs() {
                placeholders.insert(f.name().to_string(), Value::String(schema::field_structure(f)?));
            }
            vec![
                intro.to_string(),
                "Inputs will have the following structure:".to_string(),
                structure_sections(sig.inputs())?,
                "Outputs will be a JSON object with the following fields.".to_string(),
                py::json_dumps_indent2(&Value::Object(placeholders)),
            ]
        }
    };
    out.push_str(py::strip(&parts.join("\n\n")));
    out.push('\n');
    // Task description.
    out.push_str("In adhering to this structure, your objective is: ");
    let instructions = py::dedent(sig.instructions());
    for line in py::splitlines(&instructions) {
        out.push_str("\n        ");
        out.push_str(line);
    }
    let msg = Arc::new(out);
    if let Some(slot) = sig.memo(memo_slot(kind)) {
        let _ = slot.set(msg.clone());
    }
    Ok(msg)
}

fn output_requirements(kind: AdapterKind, sig: &Signature, out: &mut String) {
    match kind {
        AdapterKind::Chat => out.push_str("Respond with the corresponding output fields, starting with the field "),
        AdapterKind::Json => out.push_str("Respond with a JSON object in the following order of fields: "),
    }
    for (i, f) in sig.outputs().iter().enumerate() {
        if i > 0 {
            out.push_str(", then ");
        }
        match kind {
            AdapterKind::Chat => {
                out.push_str("`[[ ## ");
                out.push_str(f.name());
                out.push_str(" ## ]]`");
            }
            AdapterKind::Json => {
                out.push('`');
                out.push_str(f.name());
                out.push('`');
            }
        }
        if *f.ty() != FieldType::Str {
            out.push_str(" (must be formatted as a valid Python ");
            out.push_str(&f.ty().annotation_name());
            out.push(')');
        }
    }
    match kind {
        AdapterKind::Chat => out.push_str(", and then ending with the marker for `[[ ## completed ## ]]`."),
        AdapterKind::Json => out.push('.'),
    }
}

/// `format_user_message_content`.
fn user_content(kind: AdapterKind, sig: &Signature, values: &Map, prefix: &str, main_request: bool) -> Result<String> {
    let mut out = String::with_capacity(256);
    out.push_str(prefix);
    for f in sig.inputs() {
        if let Some(v) = values.get(f.name()) {
            out.push_str("\n\n");
            header(&mut out, f.name());
            write_value(&mut out, f, v)?;
        }
    }
    if main_request {
        out.push_str("\n\n");
        output_requirements(kind, sig, &mut out);
    }
    // The (empty) suffix is joined too.
    out.push_str("\n\n");
    let stripped = py::strip(&out);
    if stripped.len() == out.len() {
        return Ok(out);
    }
    Ok(stripped.to_string())
}

/// `format_assistant_message_content`; `missing` stands in for absent outputs.
fn assistant_content(kind: AdapterKind, sig: &Signature, values: &Map, missing: Option<&str>) -> Result<String> {
    let missing_value = match missing {
        Some(m) => Value::String(m.to_string()),
        None => Value::Null,
    };
    match kind {
        AdapterKind::Chat => {
            let mut out = String::new();
            for (i, f) in sig.outputs().iter().enumerate() {
                if i > 0 {
                    out.push_str("\n\n");
                }
                header(&mut out, f.name());
                write_value(&mut out, f, values.get(f.name()).unwrap_or(&missing_value))?;
            }
            let mut out = py::strip(&out).to_string();
            out.push_str("\n\n[[ ## completed ## ]]\n");
            Ok(out)
        }
        AdapterKind::Json => {
            let mut obj = Map::new();
            for f in sig.outputs() {
                obj.insert(
                    f.name().to_string(),
                    values.get(f.name()).cloned().unwrap_or_else(|| missing_value.clone()),
                );
            }
            Ok(py::json_dumps_indent2(&Value::Object(obj)))
        }
    }
}

fn format_demos(kind: AdapterKind, sig: &Signature, demos: &[Map], out: &mut Vec<Message>) -> Result<()> {
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for demo in demos {
        let is_complete = sig.fields().iter().all(|f| demo.get(f.name()).is_some_and(|v| !v.is_null()));
        let has_input = sig.inputs().iter().any(|f| demo.contains_key(f.name()));
        let has_output = sig.outputs().iter().any(|f| demo.contains_key(f.name()));
        if is_complete {
            complete.push(demo);
        } else if has_input && has_output {
            incomplete.push(demo);
        }
    }
    for demo in incomplete {
        out.push(Message::user(user_content(kind, sig, demo, INCOMPLETE_DEMO_PREFIX, false)?));
        out.push(Message::assistant(assistant_content(kind, sig, demo, Some(MISSING_IN_INCOMPLETE_DEMO))?));
    }
    for demo in complete {
        out.push(Message::user(user_content(kind, sig, demo, "", false)?));
        out.push(Message::assistant(assistant_content(kind, sig, demo, Some(MISSING_IN_COMPLETE_DEMO))?));
    }
    Ok(())
}

fn history_messages(kind: AdapterKind, sig: &Signature, field: &Field, value: &Value) -> Result<Vec<Message>> {
    let invalid = || {
        Error::new(
            ErrorKind::Validation,
            format!(
                "input `{}` is a dspy.History and must be an object {{\"messages\": [{{...}}, ...]}}, got {}",
                field.name(),
                py::value_repr(value)
            ),
        )
        .with_field(field.name())
    };
    let turns = value.get("messages").and_then(Value::as_array).ok_or_else(invalid)?;
    if value.as_object().is_some_and(|o| o.len() != 1) {
        return Err(invalid());
    }
    let mut out = Vec::with_capacity(turns.len() * 2);
    for turn in turns {
        let turn = turn.as_object().ok_or_else(invalid)?;
        if turn.values().any(|v| v.get("tool_calls").is_some()) {
            return Err(Error::unsupported("tool calls in conversation history are not handled natively"));
        }
        let main = sig.inputs().iter().any(|f| turn.contains_key(f.name()));
        let user = user_content(kind, sig, turn, "", main)?;
        if !user.is_empty() {
            out.push(Message::user(user));
        }
        let assistant = assistant_content(kind, sig, turn, None)?;
        if !assistant.is_empty() {
            out.push(Message::assistant(assistant));
        }
    }
    Ok(out)
}

/// DSPy's `Adapter.format`: system message, demos, history, then the request.
pub(super) fn messages(kind: AdapterKind, sig: &Signature, demos: &[Map], inputs: &Map) -> Result<Vec<Message>> {
    let history = sig.inputs().iter().find(|f| *f.ty() == FieldType::Dspy(DspyType::History));
    let mut messages = Vec::with_capacity(2 + demos.len() * 2);
    let system = system_message(kind, sig)?;
    messages.push(Message::system(system.as_str()));
    format_demos(kind, sig, demos, &mut messages)?;
    match history {
        Some(h) => {
            let without = sig.without(h.name());
            if let Some(value) = inputs.get(h.name()) {
                let turns = history_messages(kind, &without, h, value)?;
                messages.extend(turns);
            }
            let content = user_content(kind, &without, inputs, "", true)?;
            if !content.is_empty() {
                messages.push(Message::user(content));
            }
        }
        None => {
            let content = user_content(kind, sig, inputs, "", true)?;
            if !content.is_empty() {
                messages.push(Message::user(content));
            }
        }
    }
    if messages.iter().any(|m| m.role == crate::lm::Role::User && m.content.contains(CUSTOM_TYPE_MARKER)) {
        return Err(Error::unsupported("DSPy custom-type markers in user content are not handled natively"));
    }
    Ok(messages)
}
