//! Python's text rules, reproduced exactly.
//!
//! DSPy builds prompts with Python's `str()`, `repr()`, `json.dumps`,
//! `str.strip()`, `str.splitlines()` and `textwrap.dedent`. Each differs from
//! Rust's nearest equivalent in small ways (`1e+16` against `1e16`, `True`
//! against `true`, what counts as whitespace or a line break), and every such
//! difference would change a prompt byte. This module is the one place those
//! rules live.

use serde_json::Value;

/// Python's `str.isspace()` for one character.
#[inline]
pub fn is_space(c: char) -> bool {
    if c.is_ascii() {
        return is_ascii_space(c as u8);
    }
    matches!(c, '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
}

#[inline]
fn is_ascii_space(b: u8) -> bool {
    // \t \n \x0b \x0c \r, \x1c-\x1f, space
    matches!(b, 9..=13 | 28..=32)
}

/// Python's `str.strip()` with no arguments.
pub fn strip(s: &str) -> &str {
    let b = s.as_bytes();
    let mut start = 0;
    while start < b.len() && b[start] < 0x80 && is_ascii_space(b[start]) {
        start += 1;
    }
    let mut end = b.len();
    while end > start && b[end - 1] < 0x80 && is_ascii_space(b[end - 1]) {
        end -= 1;
    }
    let inner = &s[start..end];
    // Non-ASCII whitespace at either end: take the general path.
    if inner.as_bytes().first().is_some_and(|&x| x >= 0x80) || inner.as_bytes().last().is_some_and(|&x| x >= 0x80) {
        return inner.trim_matches(is_space);
    }
    inner
}

/// Python's `str.splitlines()` (without `keepends`).
pub fn splitlines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let is_break =
            matches!(c, '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}');
        if is_break {
            out.push(&s[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' && bytes.get(end) == Some(&b'\n') {
                iter.next();
                end += 1;
            }
            start = end;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Whether `s` has a line break other than `\n` (as `str.splitlines()` counts them).
pub fn has_other_breaks(s: &str) -> bool {
    let b = s.as_bytes();
    match crate::scan::ascii_break_or_non_ascii(b) {
        None => false,
        Some(i) if b[i] < 0x80 => true,
        // Past the first non-ASCII character (all before it was ASCII, so `i`
        // is a character boundary): the general checks.
        Some(i) => {
            let rest = &s[i..];
            memchr::memchr3(b'\r', 0x0b, 0x0c, rest.as_bytes()).is_some()
                || memchr::memchr3(0x1c, 0x1d, 0x1e, rest.as_bytes()).is_some()
                || rest.contains(['\u{85}', '\u{2028}', '\u{2029}'])
        }
    }
}

/// Lines as `str.splitlines()` finds them: `(start, end, next)` byte offsets,
/// where `s[end..next]` is the line break (empty for the last line).
pub fn lines_with_breaks(s: &str) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let bytes = s.as_bytes();
    let mut pos = 0usize;
    // Usually `\n` is the only break: then memchr finds every line end.
    let only_newlines = !has_other_breaks(s);
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        if only_newlines {
            return Some(match memchr::memchr(b'\n', &bytes[pos..]) {
                Some(k) => {
                    pos = start + k + 1;
                    (start, start + k, start + k + 1)
                }
                None => {
                    pos = bytes.len();
                    (start, bytes.len(), bytes.len())
                }
            });
        }
        let mut i = pos;
        while i < bytes.len() {
            let b = bytes[i];
            let len = match b {
                b'\n' | 0x0b | 0x0c | 0x1c..=0x1e => 1,
                b'\r' => {
                    if bytes.get(i + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    }
                }
                0xc2 if bytes.get(i + 1) == Some(&0x85) => 2,
                0xe2 if bytes.get(i + 1) == Some(&0x80) && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) => 3,
                _ => 0,
            };
            if len > 0 {
                pos = i + len;
                return Some((start, i, i + len));
            }
            i += 1;
        }
        pos = bytes.len();
        Some((start, bytes.len(), bytes.len()))
    })
}

/// Python's `textwrap.dedent`: remove the longest common leading run of
/// spaces and tabs; lines holding only spaces and tabs become empty.
pub fn dedent(text: &str) -> String {
    // Lines are split on '\n' only, as textwrap does.
    let lines: Vec<&str> = text.split('\n').collect();
    let mut margin: Option<&str> = None;
    for line in &lines {
        let content = line.trim_start_matches([' ', '\t']);
        if content.is_empty() {
            continue;
        }
        let indent = &line[..line.len() - content.len()];
        margin = Some(match margin {
            None => indent,
            Some(m) => {
                if indent.starts_with(m) {
                    m
                } else if m.starts_with(indent) {
                    indent
                } else {
                    let common = m.bytes().zip(indent.bytes()).take_while(|(a, b)| a == b).count();
                    &m[..common]
                }
            }
        });
    }
    let margin = margin.unwrap_or("");
    let mut out = String::with_capacity(text.len());
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.trim_start_matches([' ', '\t']).is_empty() {
            continue;
        }
        out.push_str(line.strip_prefix(margin).unwrap_or(line));
    }
    out
}

pub use dspex_core::signature::{float_repr, write_float_repr, write_number};

/// Whether Python's `str.isprintable()` holds for `c` (what `repr` leaves unescaped).
pub fn is_printable(c: char) -> bool {
    let cp = c as u32;
    if cp < 0x20 || (0x7f..0xa0).contains(&cp) {
        return false;
    }
    if c == ' ' {
        return true;
    }
    if cp < 0x7f {
        return true;
    }
    !crate::pyemu::unicode::is_other_or_separator(c)
}

/// Python's `repr(str)`.
pub fn str_repr(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str_repr(&mut out, s);
    out
}

/// Append Python's `repr(str)` of `s`.
pub fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let cp = c as u32;
                if cp <= 0xff {
                    out.push_str(&format!("\\x{cp:02x}"));
                } else if cp <= 0xffff {
                    out.push_str(&format!("\\u{cp:04x}"));
                } else {
                    out.push_str(&format!("\\U{cp:08x}"));
                }
            }
        }
    }
    out.push(quote);
}

/// Python's `repr()` of the object a JSON value stands for
/// (`{'a': [1, 2.5, None, True]}`).
pub fn value_repr(v: &Value) -> String {
    let mut out = String::new();
    write_value_repr(&mut out, v);
    out
}

/// Append Python's `repr()` of `v`.
pub fn write_value_repr(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str_repr(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str_repr(out, k);
                out.push_str(": ");
                write_value_repr(out, item);
            }
            out.push('}');
        }
    }
}

/// Python's `str()` of the object a JSON value stands for: strings as they
/// are, everything else as `repr`.
pub fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => value_repr(other),
    }
}

/// `json.dumps(v, ensure_ascii=False)`: Python's separators `", "` and `": "`.
pub fn json_dumps(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v, None, 0);
    out
}

/// `json.dumps(v, indent=2, ensure_ascii=False)`.
pub fn json_dumps_indent2(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v, Some(2), 0);
    out
}

/// Append `json.dumps(v, ensure_ascii=False)` of `v`.
pub fn write_json_compact(out: &mut String, v: &Value) {
    write_json(out, v, None, 0);
}

fn newline_indent(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(n) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

fn write_json(out: &mut String, v: &Value, indent: Option<usize>, level: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| !(n.is_i64() || n.is_u64())) {
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    write_float_repr(out, f);
                }
            } else {
                write_number(out, n);
            }
        }
        Value::String(s) => write_json_str(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                newline_indent(out, indent, level + 1);
                write_json(out, item, indent, level + 1);
            }
            newline_indent(out, indent, level);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                newline_indent(out, indent, level + 1);
                write_json_str(out, k);
                out.push_str(": ");
                write_json(out, item, indent, level + 1);
            }
            newline_indent(out, indent, level);
            out.push('}');
        }
    }
}

/// Append a JSON string literal as Python's encoder writes it with `ensure_ascii=False`.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[last..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        last = i + 1;
    }
    out.push_str(&s[last..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The word-at-a-time scan finds exactly the breaks `str.splitlines()` knows.
    #[test]
    fn other_breaks_found_anywhere() {
        let naive = |s: &str| {
            s.chars()
                .any(|c| matches!(c, '\r' | '\x0b' | '\x0c' | '\x1c'..='\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        };
        let pieces = [
            "a", "\n", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\u{85}", "\u{2028}", "\u{2029}",
            "é", "\u{2027}", "  ",
        ];
        // Every piece at every offset around an 8-byte word boundary, after plain text.
        for piece in pieces {
            for pad in 0..20 {
                for after in ["", "xyz", "0123456789abcdef"] {
                    let s = format!("{}{piece}{after}", "b".repeat(pad));
                    assert_eq!(has_other_breaks(&s), naive(&s), "{s:?}");
                }
            }
        }
        for a in pieces {
            for b in pieces {
                let s = format!("{a}0123456{b}");
                assert_eq!(has_other_breaks(&s), naive(&s), "{s:?}");
            }
        }
    }

    #[test]
    fn floats_like_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0.0"),
            (123456.789, "123456.789"),
            (1.2345e100, "1.2345e+100"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
            (2.5, "2.5"),
            (100.0, "100.0"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn reprs_like_python() {
        assert_eq!(str_repr("it's"), "\"it's\"");
        assert_eq!(str_repr("a\"b'c"), "'a\"b\\'c'");
        assert_eq!(str_repr("tab\t\u{1}é\u{200b}"), "'tab\\t\\x01é\\u200b'");
        assert_eq!(value_repr(&json!({"k": [1, 2.5, null, true, "x"]})), "{'k': [1, 2.5, None, True, 'x']}");
        assert_eq!(value_str(&json!("plain")), "plain");
    }

    #[test]
    fn json_like_python() {
        let v = json!({"a": [1, 2.0, "ü\n\u{1f}"], "b": {}, "c": []});
        assert_eq!(json_dumps(&v), "{\"a\": [1, 2.0, \"ü\\n\\u001f\"], \"b\": {}, \"c\": []}");
        assert_eq!(json_dumps_indent2(&json!({"a": [1], "b": null})), "{\n  \"a\": [\n    1\n  ],\n  \"b\": null\n}");
    }

    #[test]
    fn whitespace_and_lines_like_python() {
        assert_eq!(strip("\x1c x \u{3000}"), "x");
        assert_eq!(splitlines("a\r\nb\rc\x0bd\n"), vec!["a", "b", "c", "d"]);
        assert_eq!(splitlines(""), Vec::<&str>::new());
        assert_eq!(splitlines("\n"), vec![""]);
        for text in ["a\r\nb\rc\x0bd\n", "", "\n", "x\u{2028}y\u{85}z", "no break"] {
            let spans: Vec<&str> = lines_with_breaks(text).map(|(a, b, _)| &text[a..b]).collect();
            assert_eq!(spans, splitlines(text), "{text:?}");
        }
        assert_eq!(dedent("  a\n    b\n \n  c"), "a\n  b\n\nc");
        assert_eq!(dedent("\ta\n  b"), "\ta\n  b");
    }
}
