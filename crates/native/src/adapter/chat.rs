//! Reading a `ChatAdapter` completion: `[[ ## field ## ]]` headers, each
//! followed by the field's text.
//!
//! DSPy splits the completion into lines (`str.splitlines`, so any of
//! Python's line breaks), starts a section at each line that begins with a
//! header, and joins and strips each section's lines. [`parse_chat_lines`]
//! does exactly that; [`parse_chat_newlines`] gets the same result faster
//! for text whose only line break is `\n` (nearly every completion) by
//! searching for headers instead of visiting every line. Tests and property
//! tests keep the two in agreement.

use dspex_core::{AdapterKind, Map, Result, Signature};

use super::outputs::{finish, parse_error, Outputs};
use super::value::{parse_text_fast, parse_value, ParseValueError};
use crate::py;
use crate::pyemu::PyObj;

/// Bytes of a header around its name: `[[ ## ` and ` ## ]]`.
const HEADER_DECORATION: usize = 12;

/// Whether the line, after Python's strip(), starts with `[[ ## name ## ]]`;
/// returns the name and the header's length in characters.
fn match_header(line: &str) -> Option<(&str, usize)> {
    let rest = line.strip_prefix("[[ ## ")?;
    let b = rest.as_bytes();
    // ASCII word bytes first; a non-ASCII byte sends the name through the Unicode check.
    let n = b.iter().position(|&c| !crate::pyemu::unicode::is_ascii_word(c)).unwrap_or(b.len());
    let (name_len, name_chars) = if b.get(n).is_some_and(|c| !c.is_ascii()) {
        rest.char_indices()
            .take_while(|(_, c)| crate::pyemu::unicode::is_word(*c))
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

pub(super) fn parse_chat(sig: &Signature, completion: &str) -> Result<Map> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_signature;

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
