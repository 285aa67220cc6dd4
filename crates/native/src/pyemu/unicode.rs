//! Unicode character classes Python's string methods and regexes use.

use std::sync::OnceLock;

use regex::Regex;

fn other_or_separator() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[\p{C}\p{Z}]$").unwrap_or_else(|_| unreachable_regex()))
}

fn letter_or_number() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[\p{L}\p{N}]$").unwrap_or_else(|_| unreachable_regex()))
}

#[cold]
fn unreachable_regex() -> Regex {
    // The patterns above are constants that compile; this keeps the code panic-free.
    Regex::new("$^").unwrap_or_else(|_| std::process::abort())
}

fn matches(re: &Regex, c: char) -> bool {
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// General category C* (control, format, unassigned, ...) or Z* (separators).
pub(crate) fn is_other_or_separator(c: char) -> bool {
    matches(other_or_separator(), c)
}

/// `\w` for one ASCII byte (letters, digits, `_`), by table: the parsers
/// scan field names with it. False for every byte from 0x80 up.
pub(crate) fn is_ascii_word(c: u8) -> bool {
    static WORD: [bool; 256] = {
        let mut table = [false; 256];
        let mut c = 0;
        while c < 128 {
            table[c] = (c as u8).is_ascii_alphanumeric() || c as u8 == b'_';
            c += 1;
        }
        table
    };
    WORD[usize::from(c)]
}

/// Python's `\w` in a `str` pattern: letters, numbers and underscore.
pub(crate) fn is_word(c: char) -> bool {
    if c.is_ascii() {
        return is_ascii_word(c as u8);
    }
    matches(letter_or_number(), c)
}

/// Python's `str.isalpha()` for one character (categories L*).
pub(crate) fn is_alpha(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    c.is_alphabetic() && matches(letter_or_number(), c) && !c.is_numeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(is_other_or_separator('\u{200b}'));
        assert!(is_other_or_separator('\u{a0}'));
        assert!(!is_other_or_separator('é'));
        assert!(is_word('é') && is_word('_') && is_word('٣') && !is_word('-'));
        assert!(is_alpha('é') && !is_alpha('3') && !is_alpha('٣'));
    }
}
