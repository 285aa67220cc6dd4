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
const INCOMPLETE_DEMO_PREFIX: &str =
    "This is an example of the task, though some input or output fields are not supplied.";
const MISSING_IN_INCOMPLETE_DEMO: &str = "Not supplied for this particular example. ";
const MISSING_IN_COMPLETE_DEMO: &str = "Not supplied for this conversation history message. ";

fn memo_slot(kind: AdapterKind) -> usize {
    match kind {
        AdapterKind::Chat => 0,
        AdapterKind::Json => 1,
    }
}

/// Memo slot of the output-map template (keys in signature order, null values).
const OUTPUT_TEMPLATE_SLOT: usize = 2;

fn adapter_name(kind: AdapterKind) -> &'static str {
    match kind {
        AdapterKind::Chat => "ChatAdapter",
        AdapterKind::Json => "JSONAdapter",
    }
}

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

/// The messages DSPy's adapter of `kind` sends for `sig`, `demos` and `inputs`.
pub fn format(kind: AdapterKind, sig: &Signature, demos: &[Map], inputs: &Map) -> Result<Vec<Message>> {
    require_native(sig)?;
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

/// Bytes of a header around its name: `[[ ## ` and ` ## ]]`.
const HEADER_DECORATION: usize = 12;

/// Whether the line, after Python's strip(), starts with `[[ ## name ## ]]`;
/// returns the name and the header's length in characters.
fn match_header(line: &str) -> Option<(&str, usize)> {
    let rest = line.strip_prefix("[[ ## ")?;
    let b = rest.as_bytes();
    // ASCII word bytes first; a non-ASCII byte sends the name through the Unicode check.
    let n = b.iter().position(|&c| !crate::unicode::is_ascii_word(c)).unwrap_or(b.len());
    let (name_len, name_chars) = if b.get(n).is_some_and(|c| !c.is_ascii()) {
        rest.char_indices()
            .take_while(|(_, c)| crate::unicode::is_word(*c))
            .fold((0, 0), |(bytes, chars), (_, c)| (bytes + c.len_utf8(), chars + 1))
    } else {
        (n, n)
    };
    if name_len == 0 {
        return None;
    }
    let (name, tail) = rest.split_at(name_len);
    tail.starts_with(" ## ]]").then_some((name, HEADER_DECORATION + name_chars))
}

/// A value parsed without the general lax pipeline, where the result is
/// certain to be the same: plain strings, JSON numbers and booleans.
fn parse_text_fast(text: &str, ty: &FieldType) -> Option<Value> {
    match ty {
        FieldType::Str => Some(Value::String(text.to_string())),
        FieldType::Int | FieldType::Float => {
            if let (FieldType::Float, Some(f)) = (ty, short_decimal(text)) {
                return Some(Value::from(f));
            }
            let is_int = json_number_is_int(text)?;
            match ty {
                FieldType::Int if is_int => text.parse::<i64>().ok().map(Value::from),
                FieldType::Float => {
                    let f: f64 = text.parse().ok()?;
                    // Leave huge or non-finite values to the general path.
                    (f.is_finite() && f.abs() < 9.0e15).then(|| Value::from(f))
                }
                _ => None,
            }
        }
        FieldType::Bool => match text {
            "True" | "true" => Some(Value::Bool(true)),
            "False" | "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    }
}

/// A JSON number without exponent and with at most 15 significant digits
/// (`-12.5`, `0.93`), read exactly as a float field gets it in DSPy: its
/// digits as an integer are below 2^53 and the power of ten is exact, so one
/// division rounds correctly.
fn short_decimal(text: &str) -> Option<f64> {
    const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    let b = text.as_bytes();
    let negative = b.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let mut digits: u64 = 0;
    let mut count = 0usize;
    // JSON forbids leading zeros: "0" alone or a non-zero first digit.
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while let Some(d @ b'0'..=b'9') = b.get(i) {
                digits = digits * 10 + u64::from(d - b'0');
                count += 1;
                i += 1;
                if count > 15 {
                    return None;
                }
            }
        }
        _ => return None,
    }
    let mut scale = 0usize;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while let Some(d @ b'0'..=b'9') = b.get(i) {
            digits = digits * 10 + u64::from(d - b'0');
            scale += 1;
            i += 1;
            if count + scale > 15 {
                return None;
            }
        }
        if scale == 0 {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    let value = digits as f64 / POW10[scale];
    // An integer converts as Python's int does: `-0` is the integer 0, so 0.0.
    Some(if negative && (scale > 0 || digits > 0) { -value } else { value })
}

/// Whether `text` is exactly one JSON number; `Some(true)` for integers.
fn json_number_is_int(text: &str) -> Option<bool> {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return None,
    }
    let mut int = true;
    if b.get(i) == Some(&b'.') {
        int = false;
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        int = false;
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    (i == b.len()).then_some(int)
}

/// Reads a JSON object in one pass, decoding the signature's outputs where
/// the result is certain (strings into `str`, numbers into `int`/`float`,
/// booleans into `bool`, scalars into `str` as Python prints them) and
/// skipping everything else. `fast` turns false where the general path must
/// decide.
struct FastObject<'s> {
    sig: &'s Signature,
    found: &'s mut Outputs,
    fast: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut FastObject<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut FastObject<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let outputs = self.sig.outputs();
        while let Some(key) = map.next_key_seed(OutputIndex(outputs))? {
            match key {
                // Python dicts keep the last duplicate: later members overwrite.
                Some(idx) => match map.next_value_seed(FieldValue(outputs[idx].ty()))? {
                    Some(v) => self.found.set(idx, v),
                    None => self.fast = false,
                },
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The commonest JSON reply, read with byte searches instead of a general
/// deserializer: one flat object whose members are strings without escapes,
/// numbers, booleans or nulls. Returns `None` at the first thing outside
/// that shape (or that needs more than a direct conversion to the field's
/// type); `FastObject` then reads the text and decides.
fn flat_object(sig: &Signature, text: &str) -> Option<Outputs> {
    let b = text.as_bytes();
    let outputs = sig.outputs();
    let skip_ws = |i: &mut usize| {
        while matches!(b.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            *i += 1;
        }
    };
    let mut found = Outputs::new(sig);
    let mut i = 0;
    skip_ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let key = plain_string(text, &mut i)?;
            skip_ws(&mut i);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i += 1;
            skip_ws(&mut i);
            let idx = outputs.iter().position(|f| f.name() == key);
            // Python dicts keep the last duplicate: later members overwrite.
            if let (Some(k), Some(v)) = (idx, flat_value(text, &mut i, idx.map(|k| outputs[k].ty()))?) {
                found.set(k, v);
            }
            skip_ws(&mut i);
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    skip_ws(&mut i);
                }
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    skip_ws(&mut i);
    (i == b.len()).then_some(found)
}

/// A JSON string at `*i` with no escapes and no control characters; moves past it.
fn plain_string<'t>(text: &'t str, i: &mut usize) -> Option<&'t str> {
    let b = text.as_bytes();
    if b.get(*i) != Some(&b'"') {
        return None;
    }
    let start = *i + 1;
    let end = start + crate::scan::json_string_stop(&b[start..])?;
    if b[end] != b'"' {
        return None;
    }
    *i = end + 1;
    Some(&text[start..end])
}

/// A scalar JSON value at `*i` converted for a field of type `ty` (`None`:
/// a member the signature does not ask for, only checked and skipped).
/// The outer `None` declines; the conversions are those `FieldValue` makes.
fn flat_value(text: &str, i: &mut usize, ty: Option<&FieldType>) -> Option<Option<Value>> {
    let b = text.as_bytes();
    match *b.get(*i)? {
        b'"' => {
            let s = plain_string(text, i)?;
            match ty {
                None => Some(None),
                Some(FieldType::Str) => Some(Some(Value::String(s.to_string()))),
                Some(_) => None,
            }
        }
        c @ (b't' | b'f' | b'n') => {
            let word: &[u8] = match c {
                b't' => b"true",
                b'f' => b"false",
                _ => b"null",
            };
            if !b[*i..].starts_with(word) {
                return None;
            }
            *i += word.len();
            match (ty, c) {
                (None, _) => Some(None),
                (Some(FieldType::Bool), b't' | b'f') => Some(Some(Value::Bool(c == b't'))),
                _ => None,
            }
        }
        _ => {
            let start = *i;
            while matches!(b.get(*i), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
                *i += 1;
            }
            let number = &text[start..*i];
            let is_int = json_number_is_int(number)?;
            match ty {
                None => Some(None),
                // As serde_json hands them over: integers as i64, the rest as f64.
                Some(FieldType::Int) if is_int => number.parse::<i64>().ok().map(|n| Some(Value::from(n))),
                Some(FieldType::Float) if is_int => number
                    .parse::<i64>()
                    .ok()
                    .filter(|n| n.unsigned_abs() < (1 << 53))
                    .map(|n| Some(Value::from(n as f64))),
                Some(FieldType::Float) => short_decimal(number).map(|f| Some(Value::from(f))),
                _ => None,
            }
        }
    }
}

/// A member's key as the position of the output it names, if any: read
/// without copying the key.
struct OutputIndex<'f>(&'f [Field]);

impl<'de> serde::de::DeserializeSeed<'de> for OutputIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for OutputIndex<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E>(self, key: &str) -> std::result::Result<Option<usize>, E> {
        Ok(self.0.iter().position(|f| f.name() == key))
    }
}

/// One member's value for a field type; `None` where the general path must decide.
struct FieldValue<'t>(&'t FieldType);

impl<'de> serde::de::DeserializeSeed<'de> for FieldValue<'_> {
    type Value = Option<Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldValue<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Option<Value>, E> {
        Ok(matches!(self.0, FieldType::Str).then(|| Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Option<Value>, E> {
        Ok(matches!(self.0, FieldType::Str).then_some(Value::String(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Int => Some(Value::from(v)),
            FieldType::Float if v.unsigned_abs() < (1 << 53) => Some(Value::from(v as f64)),
            FieldType::Str => Some(Value::String(v.to_string())),
            _ => None,
        })
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Int => Some(Value::from(v)),
            FieldType::Float if v < (1 << 53) => Some(Value::from(v as f64)),
            FieldType::Str => Some(Value::String(v.to_string())),
            _ => None,
        })
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Float if v.is_finite() => Some(Value::from(v)),
            // Integers past 2^64 arrive as floats here; Python would print them as integers.
            FieldType::Str if v.is_finite() && !(v.fract() == 0.0 && v.abs() >= 1.8e19) => {
                Some(Value::String(py::float_repr(v)))
            }
            _ => None,
        })
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Bool => Some(Value::Bool(v)),
            FieldType::Str => Some(Value::String(if v { "True" } else { "False" }.to_string())),
            _ => None,
        })
    }
    fn visit_unit<E>(self) -> std::result::Result<Option<Value>, E> {
        Ok(matches!(self.0, FieldType::Str).then(|| Value::String("None".to_string())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Option<Value>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<Value>, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// One section of a chat completion: a header's name and its text.
struct Section<'a> {
    name: &'a str,
    /// The text after the header on its own line (already stripped).
    first: &'a str,
    /// Whether `first` ran to the end of its line (nothing stripped off its end).
    first_to_eol: bool,
    /// Byte range of the lines after the header line.
    body: Option<(usize, usize)>,
    /// Whether every line break from the header line through the body is a
    /// plain `\n`, so the joined text is a slice of the completion.
    plain: bool,
}

impl Section<'_> {
    /// `"\n".join(lines).strip()` for the section, borrowing where the result is a slice.
    fn text<'s>(&'s self, completion: &'s str) -> std::borrow::Cow<'s, str> {
        use std::borrow::Cow;
        if self.plain {
            match (self.first.is_empty(), self.body) {
                (true, None) => return Cow::Borrowed(""),
                (true, Some((a, b))) => return Cow::Borrowed(py::strip(&completion[a..b])),
                (false, None) => return Cow::Borrowed(self.first),
                (false, Some((_, b))) if self.first_to_eol => {
                    let start = self.first.as_ptr() as usize - completion.as_ptr() as usize;
                    return Cow::Borrowed(py::strip(&completion[start..b]));
                }
                (false, Some(_)) => {}
            }
        }
        // General case: the body's lines (as splitlines finds them) joined by "\n".
        let mut parts: Vec<&str> = Vec::new();
        if !self.first.is_empty() {
            parts.push(self.first);
        }
        if let Some((a, b)) = self.body {
            parts.extend(py::splitlines(&completion[a..b]));
        }
        Cow::Owned(py::strip(&parts.join("\n")).to_string())
    }
}

fn parse_chat(sig: &Signature, completion: &str) -> Result<Map> {
    if !py::has_other_breaks(completion) {
        return parse_chat_newlines(sig, completion);
    }
    parse_chat_lines(sig, completion)
}

/// `parse_chat` line by line, for any kind of line break.
fn parse_chat_lines(sig: &Signature, completion: &str) -> Result<Map> {
    let mut found = Outputs::new(sig);
    let mut current: Option<Section<'_>> = None;
    // Whether the break ending the previous line was a plain "\n".
    let mut prev_break_plain = true;
    for (start, end, next) in py::lines_with_breaks(completion) {
        let line = &completion[start..end];
        // Only a line whose first non-blank character is `[` can be a header.
        let first = line.bytes().find(|b| !matches!(b, b' ' | b'\t'));
        let header = if first == Some(b'[') || first.is_some_and(|b| !(0x20..0x80).contains(&b)) {
            match_header(py::strip(line))
        } else {
            None
        };
        if let Some((name, header_chars)) = header {
            if let Some(done) = current.take() {
                take_section(sig, completion, &done, &mut found)?;
            }
            // DSPy slices the *unstripped* line at the stripped match's end.
            let rest = rest_after(line, header_chars);
            let first_to_eol =
                rest.is_empty() || rest.as_ptr() as usize + rest.len() == line.as_ptr() as usize + line.len();
            current = Some(Section { name, first: rest, first_to_eol, body: None, plain: true });
        } else if let Some(last) = current.as_mut() {
            // The break before this line now sits inside the section's text.
            last.plain &= prev_break_plain;
            match &mut last.body {
                Some((_, b)) => *b = end,
                None => last.body = Some((start, end)),
            }
        }
        prev_break_plain = next == end || (next == end + 1 && completion.as_bytes()[end] == b'\n');
    }
    if let Some(done) = current.take() {
        take_section(sig, completion, &done, &mut found)?;
    }
    finish(AdapterKind::Chat, sig, completion, found)
}

/// `parse_chat` for text whose only line break is `\n`: headers are found by
/// substring search instead of visiting every line; the sections' text is
/// then exactly the slice between them.
fn parse_chat_newlines(sig: &Signature, completion: &str) -> Result<Map> {
    let bytes = completion.as_bytes();
    // The body of a section runs from after its header line to the line before the next header.
    let close = |section: &mut Section<'_>, header_end: usize, next_line_start: usize| {
        if next_line_start > header_end + 1 {
            section.body = Some((header_end + 1, next_line_start - 1));
        }
    };
    let mut found = Outputs::new(sig);
    let mut current: Option<(Section<'_>, usize)> = None;
    let mut from = 0;
    // `[` is rare in prose, so finding it and then checking for "[[ ## " is
    // cheaper than a substring search set up for every header.
    while let Some(rel) = memchr::memchr(b'[', &bytes[from..]) {
        let pos = from + rel;
        from = pos + 1;
        if !bytes[pos..].starts_with(b"[[ ## ") {
            continue;
        }
        // A header starts its (stripped) line: only blanks may come before it.
        let line_start = if pos == 0 || bytes[pos - 1] == b'\n' {
            pos
        } else {
            memchr::memrchr(b'\n', &bytes[..pos]).map_or(0, |k| k + 1)
        };
        if line_start != pos && !completion[line_start..pos].chars().all(py::is_space) {
            // Nothing later on this line can be a header either: skip it, so
            // a line full of brackets is not scanned back once per bracket.
            from = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |k| pos + k);
            continue;
        }
        // The stripped line starts at `pos`, and a header never reaches past
        // its line, so matching on the rest of the text is the same.
        let Some((name, header_chars)) = match_header(&completion[pos..]) else {
            continue;
        };
        let header_bytes = pos + HEADER_DECORATION + name.len();
        let line_end = match bytes.get(header_bytes) {
            None => bytes.len(),
            Some(b'\n') => header_bytes,
            Some(_) => memchr::memchr(b'\n', &bytes[header_bytes..]).map_or(bytes.len(), |k| header_bytes + k),
        };
        if let Some((mut done, header_end)) = current.take() {
            close(&mut done, header_end, line_start);
            take_section(sig, completion, &done, &mut found)?;
        }
        let line = &completion[line_start..line_end];
        // DSPy cuts the unstripped line after the header's length in
        // characters: the same place when nothing precedes the header and its
        // name is ASCII.
        let rest = if line_start == pos && header_chars == HEADER_DECORATION + name.len() {
            py::strip(&completion[header_bytes..line_end])
        } else {
            rest_after(line, header_chars)
        };
        let first_to_eol =
            rest.is_empty() || rest.as_ptr() as usize + rest.len() == line.as_ptr() as usize + line.len();
        current = Some((Section { name, first: rest, first_to_eol, body: None, plain: true }, line_end));
        // Nothing else on the header's line can be a header.
        from = line_end;
    }
    if let Some((mut done, header_end)) = current.take() {
        // The text's last line ends at its end, or before a final "\n".
        let end = if completion.ends_with('\n') { bytes.len() } else { bytes.len() + 1 };
        close(&mut done, header_end, end);
        take_section(sig, completion, &done, &mut found)?;
    }
    finish(AdapterKind::Chat, sig, completion, found)
}

/// Parse one section's value into `found` (the first section of a name wins).
fn take_section(sig: &Signature, completion: &str, section: &Section<'_>, found: &mut Outputs) -> Result<()> {
    let outputs = sig.outputs();
    let Some(idx) = outputs.iter().position(|f| f.name() == section.name) else {
        return Ok(());
    };
    if found.has(idx) {
        return Ok(());
    }
    let field = &outputs[idx];
    let text = section.text(completion);
    if let Some(v) = parse_text_fast(&text, field.ty()) {
        found.set(idx, v);
        return Ok(());
    }
    match parse_value(PyObj::Str(text.to_string()), field.ty()) {
        Ok(v) => {
            found.set(idx, v.to_json());
            Ok(())
        }
        Err(ParseValueError::Unsupported(e)) => Err(e.with_field(section.name)),
        Err(ParseValueError::Invalid(msg)) => {
            let name = section.name;
            Err(parse_error(
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

/// The remainder of `line` after `skip` characters, stripped.
fn rest_after(line: &str, skip: usize) -> &str {
    let start = if line.is_ascii() {
        skip.min(line.len())
    } else {
        line.char_indices().nth(skip).map_or(line.len(), |(i, _)| i)
    };
    py::strip(&line[start..])
}

/// Output values being collected, already in signature order (keys are
/// inserted up front so values are written by position, without hashing).
struct Outputs {
    map: Map,
    /// Which outputs have a value: a bit per output (up to 64), then a list.
    bits: u64,
    more: Vec<bool>,
}

impl Outputs {
    fn new(sig: &Signature) -> Outputs {
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

    fn has(&self, idx: usize) -> bool {
        if idx < 64 {
            self.bits & (1 << idx) != 0
        } else {
            self.more[idx - 64]
        }
    }

    fn set(&mut self, idx: usize, v: Value) {
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
fn finish(kind: AdapterKind, sig: &Signature, completion: &str, mut found: Outputs) -> Result<Map> {
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
    // Valid JSON objects (the common case) skip the repair reader, and only
    // the members the signature asks for are decoded.
    if let Some(found) = flat_object(sig, completion) {
        return finish(AdapterKind::Json, sig, completion, found);
    }
    {
        use serde::de::DeserializeSeed;
        let mut found = Outputs::new(sig);
        let mut reader = FastObject { sig, found: &mut found, fast: true };
        let mut de = serde_json::Deserializer::from_str(completion);
        if (&mut reader).deserialize(&mut de).is_ok() && de.end().is_ok() && reader.fast {
            return finish(AdapterKind::Json, sig, completion, found);
        }
    }
    parse_json_repaired(sig, completion)
}

/// `parse_json` the way DSPy does it for any text: json_repair's reading,
/// then each value converted for its field.
fn parse_json_repaired(sig: &Signature, completion: &str) -> Result<Map> {
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
    let outputs = sig.outputs();
    let mut found = Outputs::new(sig);
    for (k, v) in kept {
        let Some(idx) = outputs.iter().position(|f| f.name() == k) else {
            continue;
        };
        match parse_value(v, outputs[idx].ty()) {
            Ok(v) => found.set(idx, v.to_json()),
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
    finish(AdapterKind::Json, sig, response, found)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_signature;

    /// Short decimals read by hand equal Rust's (correctly rounded) parser,
    /// and anything else is left to it.
    #[test]
    fn short_decimals_exact() {
        for t in ["0", "0.5", "-0.0", "0.93", "12.25", "999999999999999", "0.000000000000001", "123456.789012345"] {
            let expect: f64 = t.parse().unwrap_or(f64::NAN);
            assert_eq!(short_decimal(t).map(f64::to_bits), Some(expect.to_bits()), "{t}");
        }
        // DSPy reads `-0` as the integer 0 (then 0.0), `-0.0` as the float -0.0.
        assert_eq!(short_decimal("-0").map(f64::to_bits), Some(0.0f64.to_bits()));
        // Malformed JSON numbers, exponents and more than 15 significant digits.
        for t in [
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e5",
            "1.5e2",
            "+1",
            "1.2.3",
            " 1",
            "1 ",
            "0x1",
            "1234567890123456",
            "1.7976931348623157",
        ] {
            assert_eq!(short_decimal(t), None, "{t}");
        }
    }

    proptest::proptest! {
        #[test]
        fn short_decimals_match_std(int in 0u64..10_000_000, frac in 0u64..100_000_000, zeros in 0usize..6, neg: bool) {
            let t = format!("{}{int}.{}{frac}", if neg { "-" } else { "" }, "0".repeat(zeros));
            if let Some(f) = short_decimal(&t) {
                proptest::prop_assert_eq!(f.to_bits(), t.parse::<f64>().map(f64::to_bits).unwrap_or(0), "{}", t);
            }
        }
    }

    /// The substring-search path and the line-by-line path agree.
    #[test]
    fn chat_parse_paths_agree() {
        let sig = parse_signature("q -> reasoning, answer, n: int, items: list[str]", None).unwrap();
        let texts = [
            "[[ ## reasoning ## ]]\nr1\nr2\n\n[[ ## answer ## ]]\nA\n[[ ## n ## ]]\n3\n[[ ## items ## ]]\n[\"x\"]\n",
            "pre [[ ## answer ## ]] not a header\n  [[ ## answer ## ]]  A  \n  more  \n[[ ## reasoning ## ]]\n[[ ## n ## ]] 4\n[[ ## items ## ]]\n[]",
            "[[ ## answer ## ]]\n\n\n[[ ## answer ## ]]\nsecond\n[[ ## n ## ]]\nx\n",
            "[[ ## reasoning ## ]]",
            "\u{3000}[[ ## answer ## ]]\ttab\n[[ ## n ## ]]\n1\n[[ ## items ## ]]\n['a']\n[[ ## reasoning ## ]]\nend\n\n",
            "[[ ## answer ## ]][[ ## n ## ]]\n",
            "x [[ ## answer ## ]] [[ ## n ## ]]\n [[ ## bad! ## ]] [[ ## n ## ]]\n[[ ## answer ## ]]\nA\n",
            "",
        ];
        for t in texts {
            let a = parse_chat_newlines(&sig, t).map_err(|e| e.to_string());
            let b = parse_chat_lines(&sig, t).map_err(|e| e.to_string());
            assert_eq!(a, b, "{t:?}");
        }
    }

    /// A long line of would-be headers after other text is scanned once, not
    /// once per bracket (that took minutes for a megabyte).
    #[test]
    fn a_line_of_brackets_is_scanned_once() {
        let sig = parse_signature("q -> answer", None).unwrap();
        let text = format!("x{}\n[[ ## answer ## ]]\nA", " [[ ## answer ## ]]".repeat(100_000));
        assert_eq!(parse_chat_newlines(&sig, &text).unwrap()["answer"], "A");
    }

    proptest::proptest! {
        #[test]
        fn json_flat_reader_agrees_with_serde(parts in proptest::collection::vec(proptest::sample::select(vec![
            "{", "}", ",", ":", " ", "\n", "\"answer\"", "\"n\"", "\"f\"", "\"ok\"", "\"other\"", "\"a\\\"b\"",
            "\"x\ty\"", "\"Paris is long enough to fill a block\"", "\"é\"", "42", "-0", "-7", "0.93", "1e3", "01",
            "12345678901234567890", "3.14159265358979312", "true", "false", "null", "[1]", "{}"]), 0..24)) {
            json_readers_agree(&parts.concat())?;
        }

        #[test]
        fn json_flat_reader_agrees_on_objects(members in proptest::collection::vec((
            proptest::sample::select(vec!["\"answer\"", "\"n\"", "\"f\"", "\"ok\"", "\"other\"", "\"a\\\"b\""]),
            proptest::sample::select(vec!["\"text\"", "\"x\ty\"", "\"Paris is long enough to fill a block\"", "\"é\"",
                "42", "-0", "-7", "0.93", "-0.0", "1e3", "9007199254740993", "12345678901234567890",
                "3.14159265358979312", "true", "false", "null", "[1]", "{}", "\"a\\nb\""]),
            proptest::sample::select(vec!["", " ", "\n", "\t\r\n"])), 0..6)) {
            let body: Vec<String> = members.iter().map(|(k, v, ws)| format!("{ws}{k}{ws}:{ws}{v}{ws}")).collect();
            json_readers_agree(&format!("{{{}}}", body.join(",")))?;
        }
    }

    /// Where the flat JSON reader or serde's reader takes a text, it finds
    /// what the general path (json_repair's reading, DSPy's conversions) finds.
    fn json_readers_agree(t: &str) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
        use serde::de::DeserializeSeed;
        let sig = parse_signature("q -> answer, n: int, f: float, ok: bool", None).unwrap();
        let general =
            || parse_json_repaired(&sig, t).map(|m| serde_json::to_string(&m).unwrap()).map_err(|e| e.to_string());
        if let Some(flat) = flat_object(&sig, t) {
            let flat = finish(AdapterKind::Json, &sig, t, flat).map(|m| serde_json::to_string(&m).unwrap());
            proptest::prop_assert_eq!(flat.map_err(|e| e.to_string()), general(), "flat reader on {}", t);
            // Production never reaches serde's reader for these texts.
            return Ok(());
        }
        let mut found = Outputs::new(&sig);
        let mut reader = FastObject { sig: &sig, found: &mut found, fast: true };
        let mut de = serde_json::Deserializer::from_str(t);
        if (&mut reader).deserialize(&mut de).is_ok() && de.end().is_ok() && reader.fast {
            let serde = finish(AdapterKind::Json, &sig, t, found).map(|m| serde_json::to_string(&m).unwrap());
            proptest::prop_assert_eq!(serde.map_err(|e| e.to_string()), general(), "serde reader on {}", t);
        }
        Ok(())
    }

    proptest::proptest! {

        #[test]
        fn chat_parse_paths_agree_on_anything(parts in proptest::collection::vec(proptest::sample::select(vec![
            "[[ ## answer ## ]]", "[[ ## n ## ]]", "[[ ## reasoning ## ]]", "[[ ## items ## ]]", "\n", " ", "\t", "x",
            "42", "['a']", "[[ ## ", " ## ]]", "\u{3000}", "é", "[", "]"]), 0..30)) {
            let sig = parse_signature("q -> reasoning, answer, n: int, items: list[str]", None).unwrap();
            let t = parts.concat();
            let a = parse_chat_newlines(&sig, &t).map_err(|e| e.to_string());
            let b = parse_chat_lines(&sig, &t).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(a, b);
        }
    }
}
