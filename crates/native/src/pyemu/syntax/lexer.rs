//! CPython's tokenizer, for the part of Python that signature strings and
//! `ast.literal_eval` inputs use.
//!
//! DSPy parses `"a: int, b -> c"` by handing `def f(a: int, b): pass` to
//! Python's `ast.parse`, so the accepted syntax and the error messages are
//! Python 3.11's. This tokenizer follows CPython's for names, numbers, strings,
//! operators, comments and bracket matching, and reports CPython's tokenizer
//! errors as an `Error` token at the place CPython would, so the parser meets
//! them in the same order CPython's parser does.

use unicode_normalization::UnicodeNormalization;

/// A numeric literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Number {
    Int(i128),
    /// An integer too large for `i128`, kept as decimal digits.
    BigInt(String),
    Float(f64),
    Imaginary(f64),
}

/// A string or bytes literal, escapes already decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StrLit {
    Str {
        value: String,
        u_prefix: bool,
    },
    Bytes(Vec<u8>),
    /// An f-string; kept as its raw text, it is never a valid annotation.
    FStr,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Name(String),
    Number(Number),
    Str(StrLit),
    Op(&'static str),
    /// A tokenizer error CPython reports when the parser reaches this point.
    Error(String),
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: u32,
}

const OPS: &[&str] = &[
    "**=", "//=", ">>=", "<<=", "...", "->", ":=", "**", "//", "<<", ">>", "<=", ">=", "==", "!=", "+=", "-=", "*=",
    "/=", "%=", "&=", "|=", "^=", "@=", "(", ")", "[", "]", "{", "}", ",", ":", ";", ".", "+", "-", "*", "/", "%", "@",
    "|", "&", "^", "~", "<", ">", "=",
];

fn is_id_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic() || (!c.is_ascii() && unicode_ident::is_xid_start(c))
}

fn is_id_continue(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric() || (!c.is_ascii() && unicode_ident::is_xid_continue(c))
}

/// Tokenize `src`. The result always ends with `End` or an `Error`.
pub(crate) fn tokenize(src: &str) -> Vec<Token> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0usize;
    let mut line = 1u32;
    // Open brackets: (char, line).
    let mut brackets: Vec<(char, u32)> = Vec::new();
    let push = |toks: &mut Vec<Token>, tok: Tok, line: u32| toks.push(Token { tok, line });
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\x0c' | '\r' => {
                i += 1;
            }
            '\n' => {
                line += 1;
                i += 1;
                if brackets.is_empty() {
                    // Statements never span lines here; a newline outside brackets ends the
                    // `def` line, which only happens after `pass`.
                    push(&mut toks, Tok::Op(";"), line - 1);
                }
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\\' => {
                if chars.get(i + 1) == Some(&'\n') {
                    i += 2;
                    line += 1;
                } else {
                    push(&mut toks, Tok::Error("unexpected character after line continuation character".into()), line);
                    return toks;
                }
            }
            c if is_id_start(c) || (!c.is_ascii() && !c.is_whitespace()) => {
                // Python reads a run of identifier-ish characters, then checks it.
                let start = i;
                while i < chars.len()
                    && (is_id_continue(chars[i]) || (!chars[i].is_ascii() && !chars[i].is_whitespace()))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // String prefixes: r, u, b, f and their combinations.
                if i < chars.len() && (chars[i] == '\'' || chars[i] == '"') && is_string_prefix(&word) {
                    match lex_string(&chars, &mut i, &mut line, &word) {
                        Ok(s) => push(&mut toks, Tok::Str(s), line),
                        Err(e) => {
                            push(&mut toks, Tok::Error(e), line);
                            return toks;
                        }
                    }
                    continue;
                }
                if let Some(bad) = word
                    .chars()
                    .enumerate()
                    .find(|(k, ch)| if *k == 0 { !is_id_start(*ch) } else { !is_id_continue(*ch) })
                    .map(|(_, ch)| ch)
                {
                    push(&mut toks, Tok::Error(format!("invalid character '{bad}' (U+{:04X})", bad as u32)), line);
                    return toks;
                }
                let name: String = if word.is_ascii() { word } else { word.nfkc().collect() };
                push(&mut toks, Tok::Name(name), line);
            }
            '0'..='9' => match lex_number(&chars, &mut i) {
                Ok(n) => push(&mut toks, Tok::Number(n), line),
                Err(e) => {
                    push(&mut toks, Tok::Error(e), line);
                    return toks;
                }
            },
            '.' if chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => match lex_number(&chars, &mut i) {
                Ok(n) => push(&mut toks, Tok::Number(n), line),
                Err(e) => {
                    push(&mut toks, Tok::Error(e), line);
                    return toks;
                }
            },
            '\'' | '"' => match lex_string(&chars, &mut i, &mut line, "") {
                Ok(s) => push(&mut toks, Tok::Str(s), line),
                Err(e) => {
                    push(&mut toks, Tok::Error(e), line);
                    return toks;
                }
            },
            _ => {
                let next = |k: usize| chars.get(i + k).copied();
                let Some(op) = (if c.is_ascii()
                    && matches!(c, '(' | ')' | '[' | ']' | '{' | '}' | ',' | ':' | ';')
                    && !(c == ':' && next(1) == Some('='))
                {
                    // Single-character punctuation: the common case, decided at once.
                    OPS.iter().find(|op| op.len() == 1 && op.starts_with(c))
                } else {
                    OPS.iter().find(|op| op.chars().enumerate().all(|(k, oc)| next(k) == Some(oc)))
                }) else {
                    // `$`, `?`, `!`, backtick: CPython's parser answers "invalid syntax".
                    push(&mut toks, Tok::Error("invalid syntax".into()), line);
                    return toks;
                };
                match *op {
                    // CPython's tokenizer allows 200 open brackets (MAXLEVEL).
                    "(" | "[" | "{" if brackets.len() >= 200 => {
                        push(&mut toks, Tok::Error("too many nested parentheses".into()), line);
                        return toks;
                    }
                    "(" | "[" | "{" => brackets.push((c, line)),
                    ")" | "]" | "}" => {
                        let Some((open, open_line)) = brackets.pop() else {
                            push(&mut toks, Tok::Error(format!("unmatched '{c}'")), line);
                            return toks;
                        };
                        let expected = match open {
                            '(' => ')',
                            '[' => ']',
                            _ => '}',
                        };
                        if expected != c {
                            let msg = if open_line != line {
                                format!(
                                    "closing parenthesis '{c}' does not match opening parenthesis '{open}' on line {open_line}"
                                )
                            } else {
                                format!("closing parenthesis '{c}' does not match opening parenthesis '{open}'")
                            };
                            push(&mut toks, Tok::Error(msg), line);
                            return toks;
                        }
                    }
                    _ => {}
                }
                i += op.chars().count();
                push(&mut toks, Tok::Op(op), line);
            }
        }
    }
    if let Some((open, open_line)) = brackets.first() {
        push(&mut toks, Tok::Error(format!("'{open}' was never closed")), *open_line);
    } else {
        push(&mut toks, Tok::End, line);
    }
    toks
}

fn is_string_prefix(word: &str) -> bool {
    let w = word.to_ascii_lowercase();
    matches!(w.as_str(), "r" | "u" | "b" | "f" | "br" | "rb" | "fr" | "rf")
}

fn lex_number(chars: &[char], i: &mut usize) -> Result<Number, String> {
    let start = *i;
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    let digits_run = |i: &mut usize, ok: &dyn Fn(char) -> bool| -> Result<String, ()> {
        // digits with single underscores between them
        let mut s = String::new();
        let mut last_underscore = true;
        while *i < chars.len() && (ok(chars[*i]) || chars[*i] == '_') {
            if chars[*i] == '_' {
                if last_underscore {
                    return Err(());
                }
                last_underscore = true;
            } else {
                s.push(chars[*i]);
                last_underscore = false;
            }
            *i += 1;
        }
        if last_underscore && !s.is_empty() {
            return Err(());
        }
        Ok(s)
    };
    // Prefixed integers.
    if at(*i) == '0' && matches!(at(*i + 1), 'x' | 'X' | 'o' | 'O' | 'b' | 'B') {
        let (radix, name) = match at(*i + 1) {
            'x' | 'X' => (16, "hexadecimal"),
            'o' | 'O' => (8, "octal"),
            _ => (2, "binary"),
        };
        *i += 2;
        if at(*i) == '_' {
            *i += 1;
        }
        let digits = digits_run(i, &|c: char| c.is_digit(radix)).map_err(|_| format!("invalid {name} literal"))?;
        if digits.is_empty() || is_id_continue(at(*i)) {
            return Err(format!("invalid {name} literal"));
        }
        return i128::from_str_radix(&digits, radix).map(Number::Int).map_err(|_| format!("invalid {name} literal"));
    }
    let int_part = digits_run(i, &|c: char| c.is_ascii_digit()).map_err(|_| "invalid decimal literal".to_string())?;
    let mut is_float = false;
    let mut text = int_part.clone();
    if at(*i) == '.' {
        is_float = true;
        *i += 1;
        text.push('.');
        let frac = digits_run(i, &|c: char| c.is_ascii_digit()).map_err(|_| "invalid decimal literal".to_string())?;
        text.push_str(&frac);
    }
    if matches!(at(*i), 'e' | 'E') {
        let save = *i;
        *i += 1;
        let mut exp = String::from("e");
        if matches!(at(*i), '+' | '-') {
            exp.push(at(*i));
            *i += 1;
        }
        let digits = digits_run(i, &|c: char| c.is_ascii_digit()).map_err(|_| "invalid decimal literal".to_string())?;
        if digits.is_empty() {
            *i = save;
            return Err("invalid decimal literal".into());
        }
        exp.push_str(&digits);
        text.push_str(&exp);
        is_float = true;
    }
    if matches!(at(*i), 'j' | 'J') {
        *i += 1;
        if is_id_continue(at(*i)) {
            return Err("invalid imaginary literal".into());
        }
        return Ok(Number::Imaginary(text.parse().unwrap_or(0.0)));
    }
    if is_id_continue(at(*i)) {
        return Err("invalid decimal literal".into());
    }
    if is_float {
        return Ok(Number::Float(text.parse().unwrap_or(f64::INFINITY)));
    }
    let _ = start;
    if int_part.len() > 1 && int_part.starts_with('0') && int_part.chars().any(|c| c != '0') {
        return Err(
            "leading zeros in decimal integer literals are not permitted; use an 0o prefix for octal integers".into()
        );
    }
    Ok(match int_part.parse::<i128>() {
        Ok(v) => Number::Int(v),
        Err(_) => Number::BigInt(int_part),
    })
}

fn lex_string(chars: &[char], i: &mut usize, line: &mut u32, prefix: &str) -> Result<StrLit, String> {
    let p = prefix.to_ascii_lowercase();
    let raw = p.contains('r');
    let bytes = p.contains('b');
    let fstr = p.contains('f');
    let quote = chars[*i];
    let triple = chars.get(*i + 1) == Some(&quote) && chars.get(*i + 2) == Some(&quote);
    let start_line = *line;
    *i += if triple { 3 } else { 1 };
    let mut body = String::new();
    loop {
        let Some(&c) = chars.get(*i) else {
            return Err(if triple {
                format!("unterminated triple-quoted string literal (detected at line {})", *line)
            } else {
                format!("unterminated string literal (detected at line {start_line})")
            });
        };
        if c == quote {
            if !triple {
                *i += 1;
                break;
            }
            if chars.get(*i + 1) == Some(&quote) && chars.get(*i + 2) == Some(&quote) {
                *i += 3;
                break;
            }
        }
        if c == '\n' {
            if !triple {
                return Err(format!("unterminated string literal (detected at line {start_line})"));
            }
            *line += 1;
        }
        if c == '\\' {
            if let Some(&next) = chars.get(*i + 1) {
                body.push(c);
                body.push(next);
                if next == '\n' {
                    *line += 1;
                }
                *i += 2;
                continue;
            }
        }
        body.push(c);
        *i += 1;
    }
    if fstr {
        return Ok(StrLit::FStr);
    }
    let value = if raw { body } else { unescape(&body)? };
    if bytes {
        if !value.is_ascii() && !raw {
            return Err("bytes can only contain ASCII literal characters".into());
        }
        return Ok(StrLit::Bytes(value.chars().map(|c| c as u32 as u8).collect()));
    }
    Ok(StrLit::Str { value, u_prefix: p == "u" })
}

fn unescape(body: &str) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut it = body.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(n) = it.next() else {
            out.push('\\');
            break;
        };
        match n {
            '\n' => {}
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            '"' => out.push('"'),
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\x0b'),
            '0'..='7' => {
                let mut v = n.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match it.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            it.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
            }
            'x' | 'u' | 'U' => {
                let len = match n {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = (0..len).filter_map(|_| it.next()).collect();
                let v = if hex.len() == len { u32::from_str_radix(&hex, 16).ok() } else { None };
                match v.and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => {
                        return Err(format!(
                            "(unicode error) 'unicodeescape' codec can't decode bytes: truncated \\{n}XXXX escape"
                        ))
                    }
                }
            }
            'N' => return Err("(unicode error) named unicode escapes are not supported here".into()),
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        tokenize(src).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn names_numbers_strings() {
        assert_eq!(
            kinds("ｆｏｏ 0x1F 1_000 1.5e3 2j 'a\\n' b'x' u'y'"),
            vec![
                Tok::Name("foo".into()),
                Tok::Number(Number::Int(31)),
                Tok::Number(Number::Int(1000)),
                Tok::Number(Number::Float(1500.0)),
                Tok::Number(Number::Imaginary(2.0)),
                Tok::Str(StrLit::Str { value: "a\n".into(), u_prefix: false }),
                Tok::Str(StrLit::Bytes(b"x".to_vec())),
                Tok::Str(StrLit::Str { value: "y".into(), u_prefix: true }),
                Tok::End
            ]
        );
    }

    #[test]
    fn cpython_tokenizer_errors() {
        let err = |s: &str| match tokenize(s).pop().map(|t| t.tok) {
            Some(Tok::Error(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(err("1abc"), "invalid decimal literal");
        assert_eq!(
            err("01"),
            "leading zeros in decimal integer literals are not permitted; use an 0o prefix for octal integers"
        );
        assert_eq!(err("a→b"), "invalid character '→' (U+2192)");
        assert_eq!(err("'abc"), "unterminated string literal (detected at line 1)");
        assert_eq!(err("(]"), "closing parenthesis ']' does not match opening parenthesis '('");
        // CPython's MAXLEVEL: 200 open brackets are fine, 201 are not.
        assert!(!tokenize(&format!("{}1{}", "(".repeat(200), ")".repeat(200)))
            .iter()
            .any(|t| matches!(t.tok, Tok::Error(_))));
        assert_eq!(err(&format!("{}1", "[".repeat(201))), "too many nested parentheses");
        assert_eq!(err(")"), "unmatched ')'");
        assert_eq!(err("(a"), "'(' was never closed");
        assert_eq!(err("a $"), "invalid syntax");
    }
}
