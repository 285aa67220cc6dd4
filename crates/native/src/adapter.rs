//! DSPy's `ChatAdapter` and `JSONAdapter`: prompts out, fields back.
//!
//! [`format`] builds the chat messages DSPy sends for a signature, its demos
//! and the current inputs (conversation history included); [`parse`] reads a
//! completion back into output fields. Both are byte-for-byte DSPy 3.4.1,
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

use std::sync::Arc;

use dspex_core::{AdapterKind, DspyType, Error, ErrorKind, Field, FieldType, Map, Result, Signature, Value};

use crate::lax::{literal_eval, repair_loads, validate_python, PyObj};
use crate::lm::Message;
use crate::{py, schema};

const CUSTOM_TYPE_MARKER: &str = "<<CUSTOM-TYPE-START-IDENTIFIER>>";
const INCOMPLETE_DEMO_PREFIX: &str = "This is an example of the task, though some input or output fields are not supplied.";
const MISSING_IN_INCOMPLETE_DEMO: &str = "Not supplied for this particular example. ";
const MISSING_IN_COMPLETE_DEMO: &str = "Not supplied for this conversation history message. ";

fn memo_slot(kind: AdapterKind) -> usize {
    match kind {
        AdapterKind::Chat => 0,
        AdapterKind::Json => 1,
    }
}

fn adapter_name(kind: AdapterKind) -> &'static str {
    match kind {
        AdapterKind::Chat => "ChatAdapter",
        AdapterKind::Json => "JSONAdapter",
    }
}

fn require_native(sig: &Signature) -> Result<()> {
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
    write_value(&mut out, field, value)?;
    Ok(out)
}

fn write_value(out: &mut String, field: &Field, value: &Value) -> Result<()> {
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

fn system_message(kind: AdapterKind, sig: &Signature) -> Result<Arc<str>> {
    if let Some(cached) = sig.memo(memo_slot(kind)).and_then(|m| m.get()) {
        return Ok(cached.clone());
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
    let msg: Arc<str> = out.into();
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
                obj.insert(f.name().to_string(), values.get(f.name()).cloned().unwrap_or_else(|| missing_value.clone()));
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

/// The messages DSPy's adapter of `kind` sends for `sig`, `demos` and `inputs`.
pub fn format(kind: AdapterKind, sig: &Signature, demos: &[Map], inputs: &Map) -> Result<Vec<Message>> {
    require_native(sig)?;
    let history = sig.inputs().iter().find(|f| *f.ty() == FieldType::Dspy(DspyType::History));
    let mut messages = Vec::with_capacity(2 + demos.len() * 2);
    messages.push(Message::system(system_message(kind, sig)?.to_string()));
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

fn parse_error(
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

/// DSPy's `parse_value`: a field's raw value (text, or a JSON value) into its type.
fn parse_value(value: PyObj, ty: &FieldType) -> std::result::Result<PyObj, ParseValueError> {
    if *ty == FieldType::Str {
        return Ok(PyObj::Str(value.py_str()));
    }
    let mut value = value;
    if let FieldType::Literal(allowed) = ty {
        let allowed: Vec<PyObj> = allowed.iter().map(|l| PyObj::from_json(&l.to_json())).collect();
        if let Some(found) = allowed.iter().find(|a| a.py_eq(&value)) {
            let _ = found;
            return Ok(value);
        }
        if let PyObj::Str(s) = &value {
            let mut v = py::strip(s).to_string();
            if (v.starts_with("Literal[") || v.starts_with("str[")) && v.ends_with(']') {
                let open = v.find('[').unwrap_or(0);
                v = v[open + 1..v.len() - 1].to_string();
            }
            let chars: Vec<char> = v.chars().collect();
            if chars.len() > 1 && chars[0] == chars[chars.len() - 1] && (chars[0] == '"' || chars[0] == '\'') {
                v = chars[1..chars.len() - 1].iter().collect();
            }
            let candidate = PyObj::Str(v);
            if allowed.iter().any(|a| a.py_eq(&candidate)) {
                return Ok(candidate);
            }
            value = candidate;
        }
    }
    let PyObj::Str(text) = &value else {
        return validate_python(ty, &value).map_err(|e| ParseValueError::Invalid(e.to_string()));
    };
    if let FieldType::Union(members) = ty {
        if members.contains(&FieldType::None) && members.contains(&FieldType::Str) {
            return validate_python(ty, &value).map_err(|e| ParseValueError::Invalid(e.to_string()));
        }
    }
    let mut candidate = repair_loads(text);
    if candidate == PyObj::Str(String::new()) && !text.is_empty() {
        candidate = match literal_eval(text).map_err(ParseValueError::Unsupported)? {
            Some(obj) => obj,
            None => value.clone(),
        };
    }
    validate_python(ty, &candidate).map_err(|e| ParseValueError::Invalid(e.to_string()))
}

enum ParseValueError {
    Invalid(String),
    Unsupported(Error),
}

/// DSPy's `apply_output_field_defaults`, keeping signature order.
fn complete_outputs(sig: &Signature, mut fields: Map) -> Map {
    let mut out = Map::new();
    for f in sig.outputs() {
        if let Some(v) = fields.remove(f.name()) {
            out.insert(f.name().to_string(), v);
        } else if let Some(d) = f.default() {
            out.insert(f.name().to_string(), d.clone());
        } else if f.ty().allows_none() {
            out.insert(f.name().to_string(), Value::Null);
        }
    }
    out
}

/// Whether the line, after Python's strip(), starts with `[[ ## name ## ]]`;
/// returns the name and the header's length in characters.
fn match_header(line: &str) -> Option<(&str, usize)> {
    let rest = line.strip_prefix("[[ ## ")?;
    let name_len: usize = rest.char_indices().take_while(|(_, c)| crate::unicode::is_word(*c)).map(|(_, c)| c.len_utf8()).sum();
    if name_len == 0 {
        return None;
    }
    let (name, tail) = rest.split_at(name_len);
    tail.starts_with(" ## ]]").then(|| (name, 6 + name.chars().count() + 6))
}

fn parse_chat(sig: &Signature, completion: &str) -> Result<Map> {
    // Sections: (header, lines), the first without a header.
    let mut sections: Vec<(Option<&str>, Vec<&str>)> = vec![(None, Vec::new())];
    for line in py::splitlines(completion) {
        let stripped = py::strip(line);
        if let Some((name, header_chars)) = match_header(stripped) {
            // DSPy slices the *unstripped* line at the stripped match's end.
            let rest = rest_after(line, header_chars);
            sections.push((Some(name), if rest.is_empty() { Vec::new() } else { vec![rest] }));
        } else if let Some(last) = sections.last_mut() {
            last.1.push(line);
        }
    }
    let mut fields = Map::new();
    for (name, lines) in sections {
        let Some(name) = name else { continue };
        if fields.contains_key(name) {
            continue;
        }
        let Some(field) = sig.output(name) else { continue };
        let text = py::strip(&lines.join("\n")).to_string();
        match parse_value(PyObj::Str(text.clone()), field.ty()) {
            Ok(v) => {
                fields.insert(name.to_string(), v.to_json());
            }
            Err(ParseValueError::Unsupported(e)) => return Err(e.with_field(name)),
            Err(ParseValueError::Invalid(msg)) => {
                return Err(parse_error(
                    AdapterKind::Chat,
                    sig,
                    completion,
                    Some(format!(
                        "Failed to parse field {name} with value {text} from the LM response. Error message: {msg}"
                    )),
                    None,
                )
                .with_field(name))
            }
        }
    }
    finish(AdapterKind::Chat, sig, completion, fields)
}

/// The remainder of `line` after `skip` characters, stripped.
fn rest_after(line: &str, skip: usize) -> &str {
    let start = line.char_indices().nth(skip).map_or(line.len(), |(i, _)| i);
    py::strip(&line[start..])
}

fn finish(kind: AdapterKind, sig: &Signature, completion: &str, fields: Map) -> Result<Map> {
    let fields = complete_outputs(sig, fields);
    let complete = fields.len() == sig.outputs().len() && sig.outputs().iter().all(|f| fields.contains_key(f.name()));
    if !complete {
        let parsed: Vec<String> = fields.keys().cloned().collect();
        return Err(parse_error(kind, sig, completion, None, Some(parsed)));
    }
    Ok(fields)
}

/// The first balanced `{...}` in `text` (the recursive regex DSPy uses).
fn first_balanced_object(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    for (start, _) in text.match_indices('{') {
        let mut depth = 0usize;
        for (k, &b) in bytes[start..].iter().enumerate() {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&text[start..start + k + 1]);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn parse_json(sig: &Signature, completion: &str) -> Result<Map> {
    let mut response = completion;
    let mut parsed = repair_loads(completion);
    if !matches!(parsed, PyObj::Dict(_)) {
        if let Some(m) = first_balanced_object(completion) {
            response = m;
            parsed = repair_loads(m);
        }
    }
    let PyObj::Dict(pairs) = parsed else {
        return Err(parse_error(
            AdapterKind::Json,
            sig,
            response,
            Some("LM response cannot be serialized to a JSON object.".into()),
            None,
        ));
    };
    let kept: Vec<(String, PyObj)> = pairs
        .into_iter()
        .filter_map(|(k, v)| match k {
            PyObj::Str(k) if sig.output(&k).is_some() => Some((k, v)),
            _ => None,
        })
        .fold(Vec::new(), |mut acc, (k, v)| {
            match acc.iter_mut().find(|(ek, _)| *ek == k) {
                Some(slot) => slot.1 = v,
                None => acc.push((k, v)),
            }
            acc
        });
    let keys: Vec<String> = kept.iter().map(|(k, _)| k.clone()).collect();
    let mut fields = Map::new();
    for (k, v) in kept {
        let Some(field) = sig.output(&k) else { continue };
        match parse_value(v, field.ty()) {
            Ok(v) => {
                fields.insert(k, v.to_json());
            }
            Err(ParseValueError::Unsupported(e)) => return Err(e.with_field(k)),
            Err(ParseValueError::Invalid(msg)) => {
                return Err(parse_error(
                    AdapterKind::Json,
                    sig,
                    response,
                    Some(format!("Failed to parse field {k}: {msg}")),
                    Some(keys),
                )
                .with_field(k))
            }
        }
    }
    finish(AdapterKind::Json, sig, response, fields)
}

/// Parse a completion into the signature's output fields, as the adapter of
/// `kind` does. Errors are `Parse` errors carrying DSPy's `AdapterParseError` text.
pub fn parse(kind: AdapterKind, sig: &Signature, completion: &str) -> Result<Map> {
    require_native(sig)?;
    match kind {
        AdapterKind::Chat => parse_chat(sig, completion),
        AdapterKind::Json => parse_json(sig, completion),
    }
}
