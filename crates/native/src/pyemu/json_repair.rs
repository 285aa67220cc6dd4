//! A lenient JSON reader following `json_repair.loads`' rules.
//!
//! Valid JSON is read as Python's `json.loads` reads it. Otherwise the text is
//! scanned the way `json_repair` scans it: prose before a value is skipped
//! (a bare scalar outside any container is not a value, so the result is the
//! empty string), objects and arrays tolerate missing quotes, single and
//! curly quotes, missing commas, colons and closers, trailing commas,
//! comments and ```json fences, and several top-level values become a list.
//!
//! `json_repair` has many more heuristics for badly broken text; where an
//! input relies on those, the result here may differ. The parity corpus
//! (`tests/fixtures/parity/parse.json`) pins the behaviour that matters for
//! DSPy's adapters.

use super::PyObj;

const DELIMS: [char; 4] = ['"', '\'', '“', '”'];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctx {
    Key,
    Value,
    Array,
}

struct Parser {
    s: Vec<char>,
    i: usize,
    ctx: Vec<Ctx>,
    /// Objects and arrays open around the current position.
    depth: usize,
    /// Work done so far (values, and characters read into strings, keys
    /// and re-read bodies): some repairs parse a stretch again (an object
    /// without `:` is re-read as an array), which nesting can make
    /// exponential; past [`Parser::budget`] the rest of the text is not read.
    steps: usize,
}

/// How deep objects and arrays may nest; past it the rest of the text is
/// not read (Python's json_repair stops at its recursion limit).
const MAX_NESTING: usize = 500;

/// `json_repair.loads(text)`; the empty string where nothing could be read.
pub(crate) fn loads(text: &str) -> PyObj {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return PyObj::from_json(&v);
    }
    let mut p = Parser { s: text.chars().collect(), i: 0, ctx: Vec::new(), depth: 0, steps: 0 };
    p.top_level()
}

fn is_space(c: char) -> bool {
    crate::py::is_space(c)
}

fn strictly_empty(v: &PyObj) -> bool {
    match v {
        PyObj::Str(s) => s.is_empty(),
        PyObj::List(l) => l.is_empty(),
        PyObj::Dict(d) => d.is_empty(),
        _ => false,
    }
}

fn truthy(v: &PyObj) -> bool {
    match v {
        PyObj::None => false,
        PyObj::Bool(b) => *b,
        PyObj::Int(i) => *i != 0,
        PyObj::Float(f) => *f != 0.0,
        PyObj::Str(s) => !s.is_empty(),
        PyObj::Bytes(b) => !b.is_empty(),
        PyObj::List(l) | PyObj::Tuple(l) | PyObj::Set(l) => !l.is_empty(),
        PyObj::Dict(d) => !d.is_empty(),
    }
}

fn same_shape(a: &PyObj, b: &PyObj) -> bool {
    match (a, b) {
        (PyObj::Dict(x), PyObj::Dict(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, va), (kb, vb))| ka == kb && same_shape(va, vb))
        }
        (PyObj::List(x), PyObj::List(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_shape(a, b)),
        (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

impl Parser {
    /// The text from `from` on; empty past the end (the index may run over
    /// it, as Python's slices allow).
    fn rest(&self, from: usize) -> &[char] {
        self.s.get(from..).unwrap_or_default()
    }

    fn at(&self, k: isize) -> Option<char> {
        let idx = self.i as isize + k;
        if idx < 0 {
            return None;
        }
        self.s.get(idx as usize).copied()
    }

    fn cur(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn current(&self) -> Option<Ctx> {
        self.ctx.last().copied()
    }

    fn skip_ws(&mut self) {
        while self.cur().is_some_and(is_space) {
            self.i += 1;
        }
    }

    fn skip_ws_and_comments(&mut self) {
        loop {
            self.skip_ws();
            match (self.cur(), self.at(1)) {
                (Some('#'), _) | (Some('/'), Some('/' | '*')) => self.skip_comment(),
                _ => return,
            }
        }
    }

    fn skip_comment(&mut self) {
        match (self.cur(), self.at(1)) {
            (Some('#'), _) | (Some('/'), Some('/')) => {
                let mut stops = vec!['\n', '\r'];
                if self.cur() == Some('#') {
                    if self.ctx.contains(&Ctx::Array) {
                        stops.push(']');
                    }
                    if self.ctx.contains(&Ctx::Value) {
                        stops.push('}');
                    }
                    if self.ctx.contains(&Ctx::Key) {
                        stops.push(':');
                    }
                }
                while self.cur().is_some_and(|c| !stops.contains(&c)) {
                    self.i += 1;
                }
            }
            (Some('/'), Some('*')) => {
                self.i += 2;
                while let Some(c) = self.cur() {
                    self.i += 1;
                    if c == '/' && self.at(-2) == Some('*') {
                        break;
                    }
                }
            }
            (Some('/'), _) => self.i += 1,
            _ => {}
        }
    }

    fn top_level(&mut self) -> PyObj {
        let first = self.parse_json();
        if self.i >= self.s.len() {
            return first;
        }
        let mut values = vec![first];
        while self.i < self.s.len() {
            self.ctx.clear();
            let comma_separated = self.next_is_comma_separated();
            let before = self.i;
            let v = self.parse_json();
            if truthy(&v) {
                let last = values.last();
                // A repeated object is an update (keep the newest); an empty value is dropped.
                let replaces =
                    (!comma_separated && last.is_some_and(|l| same_shape(l, &v))) || last.is_some_and(|l| !truthy(l));
                if replaces {
                    values.pop();
                }
                values.push(v);
            } else if self.i == before {
                self.i += 1;
            }
        }
        if values.len() == 1 {
            values.pop().unwrap_or(PyObj::Str(String::new()))
        } else {
            PyObj::List(values)
        }
    }

    fn next_is_comma_separated(&self) -> bool {
        let mut k = self.i;
        while self.s.get(k).is_some_and(|c| is_space(*c)) {
            k += 1;
        }
        if self.s.get(k) == Some(&',') {
            return true;
        }
        let mut k = self.i as isize - 1;
        while k >= 0 && self.s.get(k as usize).is_none_or(|c| is_space(*c)) {
            k -= 1;
        }
        k >= 0 && self.s.get(k as usize) == Some(&',')
    }

    /// How much work one text may cost: linear in its length.
    fn budget(&self) -> usize {
        64 * self.s.len() + 4096
    }

    fn parse_json(&mut self) -> PyObj {
        self.steps += 1;
        if self.depth >= MAX_NESTING || self.steps > self.budget() {
            self.i = self.s.len();
            return PyObj::Str(String::new());
        }
        self.depth += 1;
        let v = crate::pyemu::with_stack(|| self.parse_json_here());
        self.depth -= 1;
        v
    }

    fn parse_json_here(&mut self) -> PyObj {
        loop {
            let Some(c) = self.cur() else {
                return PyObj::Str(String::new());
            };
            match c {
                '{' => {
                    self.i += 1;
                    return self.parse_object();
                }
                '[' => {
                    self.i += 1;
                    return self.parse_array(']');
                }
                '(' if !self.ctx.is_empty() || self.paren_starts_top_level_value() => {
                    let explicit = self.paren_is_tuple();
                    self.i += 1;
                    let items = self.parse_array(')');
                    return match items {
                        PyObj::List(mut v) if !explicit && v.len() == 1 => v.pop().unwrap_or(PyObj::None),
                        other => other,
                    };
                }
                c if !self.ctx.is_empty() && (DELIMS.contains(&c) || crate::pyemu::unicode::is_alpha(c)) => {
                    return self.parse_string()
                }
                c if !self.ctx.is_empty() && (c.is_ascii_digit() || c == '-' || c == '.') => {
                    return self.parse_number()
                }
                '#' | '/' => {
                    self.skip_comment();
                    if !self.ctx.is_empty() {
                        return PyObj::Str(String::new());
                    }
                }
                _ => self.i += 1,
            }
        }
    }

    /// A top-level `(` starts a value only at the start of a line and when
    /// what follows looks like one (not prose such as "note (see below):").
    fn paren_starts_top_level_value(&self) -> bool {
        let mut k = self.i as isize - 1;
        while k >= 0 {
            let c = self.s.get(k as usize).copied().unwrap_or(' ');
            if c == '\n' || c == '\r' {
                break;
            }
            if !is_space(c) {
                return false;
            }
            k -= 1;
        }
        let mut j = self.i + 1;
        while self.s.get(j).is_some_and(|c| is_space(*c)) {
            j += 1;
        }
        let Some(&first) = self.s.get(j) else {
            return false;
        };
        let rest: String = self.s[j..(j + 5).min(self.s.len())].iter().collect::<String>().to_lowercase();
        matches!(first, ')' | '{' | '[' | '(' | '-' | '.')
            || DELIMS.contains(&first)
            || first.is_ascii_digit()
            || rest.starts_with("true")
            || rest.starts_with("null")
            || rest.starts_with("none")
            || rest.starts_with("false")
    }

    fn paren_is_tuple(&self) -> bool {
        let mut depth = 0i32;
        let mut saw = false;
        let mut k = self.i + 1;
        while let Some(&c) = self.s.get(k) {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' if depth == 0 => return !saw,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => return true,
                c if !is_space(c) && depth == 0 => saw = true,
                _ => {}
            }
            k += 1;
        }
        !saw
    }

    fn parse_object(&mut self) -> PyObj {
        let mut obj: Vec<(PyObj, PyObj)> = Vec::new();
        let start = self.i;
        loop {
            self.skip_ws_and_comments();
            match self.cur() {
                None | Some('}') => break,
                Some(',') => {
                    self.i += 1;
                    continue;
                }
                Some(':') => self.i += 1,
                _ => {}
            }
            self.ctx.push(Ctx::Key);
            let mut key = String::new();
            while self.cur().is_some() {
                key = match self.parse_string() {
                    PyObj::Str(s) => s,
                    other => {
                        let text = other.py_str();
                        self.steps += text.len();
                        text
                    }
                };
                if key.is_empty() {
                    self.skip_ws_and_comments();
                }
                if !key.is_empty() || matches!(self.cur(), Some(':' | '}') | None) {
                    break;
                }
            }
            self.ctx.pop();
            self.skip_ws_and_comments();
            match self.cur() {
                None | Some('}') => continue,
                _ => self.i += 1, // the ':' (or whatever stands in for it)
            }
            self.ctx.push(Ctx::Value);
            self.skip_ws_and_comments();
            let value = match self.cur() {
                Some(',') | Some('}') => PyObj::Str(String::new()),
                _ => self.parse_json(),
            };
            self.ctx.pop();
            let k = PyObj::Str(key);
            match obj.iter_mut().find(|(ok, _)| *ok == k) {
                Some(slot) => slot.1 = value,
                None => obj.push((k, value)),
            }
            if matches!(self.cur(), Some(',' | '\'' | '"')) {
                self.i += 1;
            }
            if self.cur() == Some(']') && self.ctx.contains(&Ctx::Array) {
                break;
            }
        }
        if self.cur() == Some('}') {
            self.i += 1;
        }
        // `{1, 2}`: an empty object with content but no `:` is read as an array.
        if obj.is_empty() && self.i > start + 1 {
            // Python's slice is forgiving: `i` may have run past the end.
            let end = self.i.saturating_sub(1).min(self.s.len());
            let body: String = self.s.get(start..end).unwrap_or_default().iter().collect();
            self.steps += body.len();
            if !body.trim().is_empty() && !body.contains(':') {
                self.i = start;
                self.ctx.push(Ctx::Key);
                let arr = self.parse_array('}');
                self.ctx.pop();
                return arr;
            }
        }
        if self.ctx.is_empty() {
            self.skip_ws();
            if self.cur() == Some(',') {
                self.i += 1;
                self.skip_ws();
                if self.cur().is_some_and(|c| DELIMS.contains(&c)) {
                    if let PyObj::Dict(more) = self.parse_object() {
                        for (k, v) in more {
                            match obj.iter_mut().find(|(ok, _)| *ok == k) {
                                Some(slot) => slot.1 = v,
                                None => obj.push((k, v)),
                            }
                        }
                    }
                }
            }
        }
        PyObj::Dict(obj)
    }

    fn parse_array(&mut self, close: char) -> PyObj {
        let mut arr = Vec::new();
        self.ctx.push(Ctx::Array);
        loop {
            self.skip_ws_and_comments();
            let Some(c) = self.cur() else { break };
            if c == close || c == '}' || c == ']' {
                break;
            }
            if c == ',' {
                self.i += 1;
                continue;
            }
            let value = if DELIMS.contains(&c) && self.quoted_is_key() {
                self.parse_object()
            } else if DELIMS.contains(&c) {
                self.parse_string()
            } else {
                self.parse_json()
            };
            if strictly_empty(&value) && !matches!(self.cur(), Some(x) if x == close || x == ',') {
                self.i += 1;
            } else if value == PyObj::Str("...".into()) && self.at(-1) == Some('.') {
                // a stray `...` placeholder
            } else {
                arr.push(value);
            }
        }
        self.ctx.pop();
        if self.cur() == Some(close) {
            self.i += 1;
        }
        PyObj::List(arr)
    }

    /// Inside an array, a quoted string followed by `:` starts an object missing its `{`.
    fn quoted_is_key(&self) -> bool {
        let Some(q) = self.cur() else { return false };
        let close = if q == '“' { '”' } else { q };
        let mut k = self.i + 1;
        while let Some(&c) = self.s.get(k) {
            if c == '\\' {
                k += 2;
                continue;
            }
            if c == close {
                break;
            }
            k += 1;
        }
        k += 1;
        while self.s.get(k).is_some_and(|c| is_space(*c)) {
            k += 1;
        }
        self.s.get(k) == Some(&':')
    }

    fn parse_number(&mut self) -> PyObj {
        let start = self.i;
        let mut text = String::new();
        let in_array = self.current() == Some(Ctx::Array);
        while let Some(c) = self.cur() {
            let ok = "0123456789-.eE/,_".contains(c) || (c == '+' && text.ends_with(['e', 'E']));
            if !ok || (in_array && c == ',') {
                break;
            }
            if c != '_' {
                text.push(c);
            }
            self.i += 1;
        }
        if self.cur().is_some_and(crate::pyemu::unicode::is_alpha) {
            self.i = start;
            return self.parse_string();
        }
        if text.ends_with(['+', '-', 'e', 'E', '/', ',']) {
            text.pop();
            self.i -= 1;
        }
        if text.contains(',') {
            return PyObj::Str(text);
        }
        if text.contains(['.', 'e', 'E']) {
            return match py_float(&text) {
                Some(f) => PyObj::Float(f),
                None => PyObj::Str(text),
            };
        }
        match text.parse::<i128>() {
            Ok(i) => PyObj::Int(i),
            Err(_) => PyObj::Str(text),
        }
    }

    fn literal(&mut self) -> Option<PyObj> {
        let start = self.i;
        for (word, value) in
            [("true", PyObj::Bool(true)), ("false", PyObj::Bool(false)), ("null", PyObj::None), ("none", PyObj::None)]
        {
            let n = word.chars().count();
            let matches = (0..n).all(|k| self.s.get(start + k).map(|c| c.to_ascii_lowercase()) == word.chars().nth(k));
            if matches {
                let next = self.s.get(start + n).copied();
                if next.is_none_or(|c| is_space(c) || matches!(c, ',' | ')' | ']' | '}')) {
                    self.i = start + n;
                    return Some(value);
                }
            }
        }
        None
    }

    /// A string (or literal, or unquoted text), its characters counted
    /// against the budget: repairs read stretches again.
    fn parse_string(&mut self) -> PyObj {
        let from = self.i;
        let v = self.parse_string_here();
        self.steps += self.i.saturating_sub(from);
        v
    }

    fn parse_string_here(&mut self) -> PyObj {
        if matches!(self.cur(), Some('#' | '/')) {
            self.skip_comment();
            return PyObj::Str(String::new());
        }
        while self.cur().is_some_and(|c| !DELIMS.contains(&c) && !c.is_alphanumeric()) {
            self.i += 1;
        }
        let Some(c) = self.cur() else {
            return PyObj::Str(String::new());
        };
        let ctx = self.current();
        if c.is_alphanumeric() {
            if matches!(c.to_ascii_lowercase(), 't' | 'f' | 'n') && ctx != Some(Ctx::Key) {
                if let Some(v) = self.literal() {
                    return v;
                }
            }
            return PyObj::Str(self.unquoted());
        }
        let close = if c == '“' { '”' } else { c };
        self.i += 1;
        // ```json fences inside a string position
        if self.rest(self.i).starts_with(&['`', '`', '`', 'j', 's', 'o', 'n']) {
            self.i += 7;
            return self.parse_json();
        }
        let mut out = String::new();
        // Where the next `close` is at or after the current position (None:
        // there is none): found again only once the scan has passed it, so
        // a string is read in time linear in the text, not quadratic.
        let find =
            |s: &[char], from: usize| s.get(from..).and_then(|r| r.iter().position(|&c| c == close)).map(|p| from + p);
        let mut next_close = find(&self.s, self.i);
        while let Some(ch) = self.cur() {
            if next_close.is_some_and(|p| p < self.i) {
                next_close = find(&self.s, self.i);
            }
            if ch == '\\' {
                let next = self.at(1);
                let replacement = match next {
                    Some('n') => Some('\n'),
                    Some('t') => Some('\t'),
                    Some('r') => Some('\r'),
                    Some('b') => Some('\x08'),
                    Some('f') => Some('\x0c'),
                    Some('/') => Some('/'),
                    Some('\\') => Some('\\'),
                    Some(q) if DELIMS.contains(&q) => Some(q),
                    Some('u') => {
                        let hex: String = self.s.iter().skip(self.i + 2).take(4).collect();
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(ch) if hex.len() == 4 => {
                                out.push(ch);
                                self.i += 6;
                                continue;
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match replacement {
                    Some(r) => {
                        out.push(r);
                        self.i += 2;
                    }
                    None => {
                        out.push('\\');
                        self.i += 1;
                    }
                }
                continue;
            }
            if ch == close {
                // A closing quote that does not end the value is part of the text.
                let mut k = self.i + 1;
                while self.s.get(k).is_some_and(|c| is_space(*c)) {
                    k += 1;
                }
                let next = self.s.get(k).copied();
                let ends = match ctx {
                    Some(Ctx::Key) => next.is_none() || matches!(next, Some(':' | '}' | ',')),
                    Some(Ctx::Value) => {
                        next.is_none()
                            || matches!(next, Some(',' | '}' | ']'))
                            || next.is_some_and(|c| DELIMS.contains(&c))
                    }
                    Some(Ctx::Array) => {
                        next.is_none()
                            || matches!(next, Some(',' | ']' | '}'))
                            || next.is_some_and(|c| DELIMS.contains(&c))
                    }
                    None => true,
                };
                // `close` is at `i`, so the next one after `k` (> i) is
                // found from there; it becomes the next one to pass.
                next_close = find(&self.s, k);
                if ends || next_close.is_none() {
                    self.i += 1;
                    return PyObj::Str(out);
                }
            }
            // A string missing its closing quote ends at the structure around it.
            let structural = match ctx {
                Some(Ctx::Key) => ch == ':',
                Some(Ctx::Value) => ch == '}' || ch == ',',
                Some(Ctx::Array) => ch == ']' || ch == ',',
                None => false,
            };
            if structural && next_close.is_none() {
                break;
            }
            out.push(ch);
            self.i += 1;
        }
        PyObj::Str(out.trim_end().to_string())
    }

    /// A string missing its quotes, ending where the structure around it resumes.
    fn unquoted(&mut self) -> String {
        let ctx = self.current();
        let mut out = String::new();
        if ctx == Some(Ctx::Key) {
            while let Some(c) = self.cur() {
                if c == ':' || is_space(c) {
                    break;
                }
                out.push(c);
                self.i += 1;
            }
            // A key followed by more words is not a key (an LM's comment, say).
            if self.cur().is_some_and(is_space) {
                self.skip_ws();
                if !matches!(self.cur(), Some(':' | ',')) {
                    return String::new();
                }
            }
            return out;
        }
        while let Some(c) = self.cur() {
            let stop = match ctx {
                Some(Ctx::Key) => c == ':' || is_space(c),
                Some(Ctx::Value) => c == ',' || c == '}' || c == '\n',
                Some(Ctx::Array) => c == ',' || c == ']',
                None => is_space(c),
            };
            if stop {
                break;
            }
            out.push(c);
            self.i += 1;
        }
        out.trim_end().to_string()
    }
}

/// Python's `float(text)` for the forms `json_repair` produces.
fn py_float(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.is_empty() || t.contains("__") {
        return None;
    }
    t.replace('_', "").parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reparsing_is_bounded() {
        // Nested objects without `:` are each read twice (as an object, then
        // as an array): exponential without the budget (the fuzzer's input).
        let text = format!("{}1{}", "{".repeat(40), "}".repeat(40));
        let t = std::time::Instant::now();
        let _ = loads(&text);
        let input =
            include_bytes!("../../../../fuzz/regressions/value/timeout-79d2844f4c4fd106d5d7dda5a86fdc80089b5f83");
        let _ = loads(&String::from_utf8_lossy(&input[1..]));
        assert!(t.elapsed() < std::time::Duration::from_millis(750), "took {:?}", t.elapsed());
    }

    #[test]
    fn a_string_without_its_closing_quote_is_read_in_linear_time() {
        // Each character of such a string once looked for the closing quote
        // in the whole rest of the text: quadratic, and with the repairs'
        // re-reading, over a second for 1.4 KB (the fuzzer's input).
        let input =
            include_bytes!("../../../../fuzz/regressions/value/timeout-4125f7741067986caacba6e52441589c9360c110");
        let raw = String::from_utf8_lossy(&input[1..]).into_owned();
        let t = std::time::Instant::now();
        let _ = loads(&format!("{{\"out\": {raw}}}"));
        let long = format!("[\"{}", "x ".repeat(20_000));
        let read = loads(&long);
        assert!(matches!(&read, PyObj::List(items) if items.len() == 1), "{:.80}", format!("{read:?}"));
        assert!(t.elapsed() < std::time::Duration::from_millis(750), "took {:?}", t.elapsed());
    }

    use super::*;

    fn s(v: &str) -> PyObj {
        PyObj::Str(v.into())
    }

    #[test]
    fn valid_json_first() {
        assert_eq!(loads("42"), PyObj::Int(42));
        assert_eq!(loads(" 1e3 "), PyObj::Float(1000.0));
        assert_eq!(loads("\"x\""), s("x"));
        assert_eq!(loads("null"), PyObj::None);
    }

    #[test]
    fn bare_scalars_are_not_values() {
        assert_eq!(loads("42 apples"), s(""));
        assert_eq!(loads("forty-two"), s(""));
        assert_eq!(loads("True"), s(""));
        assert_eq!(loads(""), s(""));
    }

    #[test]
    fn repairs() {
        assert_eq!(loads("['a', 'b']"), PyObj::List(vec![s("a"), s("b")]));
        assert_eq!(loads("```json\n[1, 2, 3]\n```"), PyObj::List(vec![PyObj::Int(1), PyObj::Int(2), PyObj::Int(3)]));
        assert_eq!(loads("[1, 2, 3,]"), PyObj::List(vec![PyObj::Int(1), PyObj::Int(2), PyObj::Int(3)]));
        assert_eq!(loads("[\"a\", \"b\""), PyObj::List(vec![s("a"), s("b")]));
        assert_eq!(loads("{'a': 1, 'b': 2}"), PyObj::Dict(vec![(s("a"), PyObj::Int(1)), (s("b"), PyObj::Int(2))]));
        assert_eq!(loads("{answer: \"yes\"}"), PyObj::Dict(vec![(s("answer"), s("yes"))]));
        assert_eq!(loads("{\"answer\": \"yes\" // c\n}"), PyObj::Dict(vec![(s("answer"), s("yes"))]));
        assert_eq!(
            loads("Sure: {\"a\": True, \"b\": None}"),
            PyObj::Dict(vec![(s("a"), PyObj::Bool(true)), (s("b"), PyObj::None)])
        );
        assert_eq!(loads("[1] [2]"), PyObj::List(vec![PyObj::Int(2)]));
        assert_eq!(
            loads("{\"a\": [1, 2"),
            PyObj::Dict(vec![(s("a"), PyObj::List(vec![PyObj::Int(1), PyObj::Int(2)]))])
        );
    }
}
