//! The Python string functions DSPy applies while building a signature:
//! `infer_prefix` (regex substitutions plus `str.isupper`/`str.capitalize`,
//! with Python's Unicode rules) for default prompt prefixes, and
//! `inspect.cleandoc` / `str.expandtabs` for instructions taken from a
//! docstring; `repr(float)`, which type names with constraints print.

/// DSPy's `infer_prefix`: `camelCaseText` → `Camel Case Text`,
/// `text2number` → `Text 2 Number`, `HTMLParser` → `HTML Parser`.
pub fn infer_prefix(name: &str) -> String {
    if name.is_ascii() {
        return infer_prefix_ascii(name.as_bytes());
    }
    infer_prefix_general(name)
}

fn infer_prefix_general(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    // re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    let mut s1: Vec<char> = Vec::with_capacity(chars.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '\n' && i + 1 < chars.len() && chars[i + 1].is_ascii_uppercase() {
            let lower_run = chars[i + 2..].iter().take_while(|c| c.is_ascii_lowercase()).count();
            if lower_run > 0 {
                s1.push(c);
                s1.push('_');
                s1.extend_from_slice(&chars[i + 1..i + 2 + lower_run]);
                i += 2 + lower_run;
                continue;
            }
        }
        s1.push(c);
        i += 1;
    }
    // re.sub("([a-z0-9])([A-Z])", r"\1_\2", s1)
    let s2 = insert_between(&s1, |a| a.is_ascii_lowercase() || a.is_ascii_digit(), |b| b.is_ascii_uppercase());
    // re.sub(r"([a-zA-Z])(\d)", ...) then re.sub(r"(\d)([a-zA-Z])", ...)
    let s3 = insert_between(&s2, |a| a.is_ascii_alphabetic(), is_decimal);
    let s4 = insert_between(&s3, is_decimal, |b| b.is_ascii_alphabetic());
    let joined: String = s4.into_iter().collect();
    joined
        .split('_')
        .map(|word| if py_isupper(word) { word.to_string() } else { py_capitalize(word) })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `infer_prefix` for ASCII names, in one pass: word boundaries are found on
/// the bytes, then each word is title-cased unless it is all upper case.
fn infer_prefix_ascii(b: &[u8]) -> String {
    // Step 1: `(.)([A-Z][a-z]+)` inserts a break before an upper-case letter that
    // starts a lower-case run (not at the very start).
    let mut breaks = vec![false; b.len() + 1];
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] != b'\n' && b[i + 1].is_ascii_uppercase() && b.get(i + 2).is_some_and(u8::is_ascii_lowercase) {
            breaks[i + 1] = true;
            let mut j = i + 2;
            while j < b.len() && b[j].is_ascii_lowercase() {
                j += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    // Steps 2-4 run on the text with step 1's underscores; an inserted `_`
    // separates the pair, so a pair only counts where no break was inserted.
    let pair_pass = |breaks: &mut Vec<bool>, first: &dyn Fn(u8) -> bool, second: &dyn Fn(u8) -> bool| {
        let mut i = 0;
        while i + 1 < b.len() {
            if !breaks[i + 1] && first(b[i]) && second(b[i + 1]) {
                breaks[i + 1] = true;
                i += 2;
            } else {
                i += 1;
            }
        }
    };
    pair_pass(&mut breaks, &|a| a.is_ascii_lowercase() || a.is_ascii_digit(), &|c| c.is_ascii_uppercase());
    pair_pass(&mut breaks, &|a| a.is_ascii_alphabetic(), &|c| c.is_ascii_digit());
    pair_pass(&mut breaks, &|a| a.is_ascii_digit(), &|c| c.is_ascii_alphabetic());
    let mut out = String::with_capacity(b.len() + 8);
    let mut word_start = 0;
    let emit = |out: &mut String, word: &[u8], first: bool| {
        if !first {
            out.push(' ');
        }
        let upper = word.iter().any(u8::is_ascii_uppercase) && !word.iter().any(u8::is_ascii_lowercase);
        for (k, &c) in word.iter().enumerate() {
            let c = if upper {
                c
            } else if k == 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            out.push(c as char);
        }
    };
    let mut first = true;
    for k in 0..=b.len() {
        let split = k == b.len() || b[k] == b'_' || breaks[k];
        if split {
            emit(&mut out, &b[word_start..k], first);
            first = false;
            word_start = if k < b.len() && b[k] == b'_' { k + 1 } else { k };
        }
    }
    out
}

/// Non-overlapping left-to-right `re.sub("(A)(B)", r"\1_\2")`.
fn insert_between(chars: &[char], first: impl Fn(char) -> bool, second: impl Fn(char) -> bool) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            out.push(chars[i]);
            out.push('_');
            out.push(chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Python's `\d` in a str pattern: Unicode decimal digits (category Nd).
fn is_decimal(c: char) -> bool {
    c.is_ascii_digit() || decimal_like(c)
}

fn decimal_like(c: char) -> bool {
    // Nd digits come in contiguous runs of ten starting at a code point ending in 0 or 6;
    // `char::is_numeric` also admits No/Nl (like '²' or 'Ⅻ'), which Python's \d rejects.
    const ND_ZEROS: &[u32] = &[
        0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0, 0xF20,
        0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0,
        0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    ];
    let cp = c as u32;
    ND_ZEROS.iter().any(|&z| cp >= z && cp < z + 10)
}

/// Python's `str.isupper()`: at least one cased character and no lowercase ones.
fn py_isupper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_lowercase() {
            return false;
        }
        if c.is_uppercase() {
            cased = true;
        }
    }
    cased
}

/// Python's `str.capitalize()`: first character title-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => {
            let mut out: String = titlecase(first);
            for c in chars {
                out.extend(c.to_lowercase());
            }
            out
        }
    }
}

fn titlecase(c: char) -> String {
    // The few characters whose title case differs from their upper case.
    match c {
        'Ǆ' | 'ǅ' | 'ǆ' => "ǅ".into(),
        'Ǉ' | 'ǈ' | 'ǉ' => "ǈ".into(),
        'Ǌ' | 'ǋ' | 'ǌ' => "ǋ".into(),
        'Ǳ' | 'ǲ' | 'ǳ' => "ǲ".into(),
        _ => c.to_uppercase().collect(),
    }
}

/// Python's `inspect.cleandoc`: expand tabs, drop the common indentation of
/// all lines after the first, strip the first line's indentation, and drop
/// leading and trailing blank lines.
pub fn cleandoc(doc: &str) -> String {
    let expanded = expandtabs(doc, 8);
    let lines: Vec<&str> = expanded.split('\n').collect();
    let margin = lines
        .iter()
        .skip(1)
        .filter_map(|l| {
            let content = l.trim_start_matches(' ');
            if content.is_empty() {
                None
            } else {
                Some(l.len() - content.len())
            }
        })
        .min()
        .unwrap_or(usize::MAX);
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    out.push(lines[0].trim_start_matches(' ').to_string());
    for l in &lines[1..] {
        if margin == usize::MAX {
            out.push((*l).to_string());
        } else {
            out.push(l.get(margin.min(l.len())..).unwrap_or("").to_string());
        }
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    let first_content = out.iter().position(|l| !l.is_empty()).unwrap_or(out.len());
    out.drain(..first_content);
    out.join("\n")
}

/// Python's `str.expandtabs(tabsize)`.
pub fn expandtabs(s: &str, tabsize: usize) -> String {
    if !s.contains('\t') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut col = 0usize;
    for c in s.chars() {
        match c {
            '\t' => {
                let n = tabsize - (col % tabsize);
                out.extend(std::iter::repeat_n(' ', n));
                col += n;
            }
            '\n' | '\r' => {
                out.push(c);
                col = 0;
            }
            _ => {
                out.push(c);
                col += 1;
            }
        }
    }
    out
}

/// Python's `repr(float)` (also what `str()` and `json.dumps` print for finite floats).
pub fn float_repr(f: f64) -> String {
    let mut out = String::new();
    write_float_repr(&mut out, f);
    out
}

/// Append Python's `repr(float)` of `f`.
pub fn write_float_repr(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    // Rust's `{:e}` prints the shortest round-tripping digits, as Python's repr does.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = match sci.split_once('e') {
        Some(parts) => parts,
        None => (sci.as_str(), "0"),
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push('0');
        }
        out.push_str(&abs.to_string());
    }
}

/// Python's rendering of a JSON number: integers as digits, floats as `repr(float)`.
pub fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        write_float_repr(out, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_prefix_matches_dspy_examples() {
        assert_eq!(infer_prefix("camelCaseText"), "Camel Case Text");
        assert_eq!(infer_prefix("snake_case_text"), "Snake Case Text");
        assert_eq!(infer_prefix("text2number"), "Text 2 Number");
        assert_eq!(infer_prefix("HTMLParser"), "HTML Parser");
        assert_eq!(infer_prefix("x_1"), "X 1");
        assert_eq!(infer_prefix("y2z"), "Y 2 Z");
        assert_eq!(infer_prefix("ABC"), "ABC");
        assert_eq!(infer_prefix("getHTTPResponseCode"), "Get HTTP Response Code");
        assert_eq!(infer_prefix("a2B"), "A 2 B");
        assert_eq!(infer_prefix("é"), "É");
        assert_eq!(infer_prefix("question"), "Question");
        // Outputs of DSPy's own infer_prefix; both implementations must agree.
        let cases = [
            ("camelCaseText", "Camel Case Text"),
            ("HTMLParser", "HTML Parser"),
            ("text2number", "Text 2 Number"),
            ("x_1", "X 1"),
            ("y2z", "Y 2 Z"),
            ("ABC", "ABC"),
            ("getHTTPResponseCode", "Get HTTP Response Code"),
            ("a2B", "A 2 B"),
            ("__a__b", "  A  B"),
            ("a__b", "A  B"),
            ("_", " "),
            ("A", "A"),
            ("aB", "A B"),
            ("AbcDEF", "Abc DEF"),
            ("v2Beta3Gamma", "V 2 Beta 3 Gamma"),
            ("MAX_LEN", "MAX LEN"),
            ("snake_Case_Text", "Snake  Case  Text"),
            ("iPhone12Pro", "I Phone 12 Pro"),
            ("a1b2c3", "A 1 B 2 C 3"),
            ("ab12CD34ef", "Ab 12 CD 34 Ef"),
            ("XMLHttp2Request", "XML Http 2 Request"),
            ("a_", "A "),
            ("9lives", "9 Lives"),
            ("x9Y", "X 9 Y"),
        ];
        for (name, want) in cases {
            assert_eq!(infer_prefix(name), want, "{name}");
            assert_eq!(infer_prefix_general(name), want, "{name} (general path)");
        }
    }

    #[test]
    fn cleandoc_like_python() {
        assert_eq!(cleandoc("  First.\n      More.\n    Less.\n\n\tTab\n"), "First.\n  More.\nLess.\n\n    Tab");
        assert_eq!(cleandoc("\n\n  x\n"), "x");
        assert_eq!(cleandoc(""), "");
    }
}
