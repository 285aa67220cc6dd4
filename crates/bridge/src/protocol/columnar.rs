//! Which values of a message are columnar, and how big: the shape rules the
//! Arrow codec (tag 2) and the automatic codec choice share. The worker's
//! `dspex_worker/columnar.py` applies the same rules; the golden frames and
//! the `auto` cases in `tests/fixtures/protocol/golden.json` hold both to them.
//!
//! A list is *columnar* when it is one of:
//! - numbers of one kind: all floats (→ Arrow `Float64`) or all integers
//!   that fit 64 bits (→ `Int64`);
//! - float vectors: lists each of floats only (→ `List<Float64>`), as
//!   embeddings are;
//! - records: maps with the same keys in the same order, each key's values
//!   all of one kind (`null` anywhere): booleans, integers, floats, strings
//!   or float vectors (→ one Arrow column per key).
//!
//! Anything else (mixed kinds, nested maps, integers past 64 bits) stays in
//! MessagePack, so a value always comes back exactly as it went: an integer
//! never turns into a float, a missing key never into a `null`.

use dspex_core::Value;

/// A list smaller than this (estimated MessagePack bytes) stays in the
/// MessagePack part even in an Arrow frame: Arrow's per-column overhead
/// (a schema, a batch header, 8-byte padding) would outweigh it.
pub const MIN_COLUMN_BYTES: usize = 512;

/// A list that is not columnar is searched for columnar values only up to
/// this many items: a long irregular list goes as MessagePack, whose encoder
/// is faster than looking through it.
pub const MAX_SEARCHED_ITEMS: usize = 64;

/// What kind of columnar list a value is.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// All floats.
    Floats,
    /// All integers within 64 bits.
    Ints,
    /// All lists of floats.
    FloatLists,
    /// Maps with one key order; each column's kind.
    Records(Vec<(String, Column)>),
}

/// The kind of one records column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// Every value `null`.
    Null,
    /// Booleans (or `null`).
    Bool,
    /// 64-bit integers (or `null`).
    Int,
    /// Floats (or `null`).
    Float,
    /// Strings (or `null`).
    Str,
    /// Lists of floats (or `null`).
    FloatList,
}

fn is_float(v: &Value) -> bool {
    matches!(v, Value::Number(n) if n.is_f64())
}

fn is_int(v: &Value) -> bool {
    matches!(v, Value::Number(n) if n.is_i64())
}

fn float_list(v: &Value) -> Option<usize> {
    match v {
        Value::Array(items) if items.iter().all(is_float) => Some(items.len()),
        _ => None,
    }
}

/// The kind of one value in a records column, and its estimated size.
fn cell(v: &Value) -> Option<(Column, usize)> {
    Some(match v {
        Value::Null => (Column::Null, 1),
        Value::Bool(_) => (Column::Bool, 1),
        v if is_int(v) => (Column::Int, 9),
        v if is_float(v) => (Column::Float, 9),
        // Characters, as Python's `len` counts them.
        Value::String(s) => (Column::Str, s.chars().count() + 5),
        v => (Column::FloatList, float_list(v)? * 9 + 5),
    })
}

/// Two kinds of one column merged (`null` goes with anything).
fn merge(a: Column, b: Column) -> Option<Column> {
    match (a, b) {
        (Column::Null, x) | (x, Column::Null) => Some(x),
        (x, y) if x == y => Some(x),
        _ => None,
    }
}

/// The shape of `items` and its estimated MessagePack size, if columnar.
pub fn shape(items: &[Value]) -> Option<(Shape, usize)> {
    let first = items.first()?;
    match first {
        v if is_float(v) => items.iter().all(is_float).then(|| (Shape::Floats, items.len() * 9)),
        v if is_int(v) => items.iter().all(is_int).then(|| (Shape::Ints, items.len() * 9)),
        Value::Array(_) => {
            let mut size = 0;
            for item in items {
                size += float_list(item)? * 9 + 5;
            }
            Some((Shape::FloatLists, size))
        }
        Value::Object(first) if !first.is_empty() => {
            let mut columns: Vec<(String, Column)> = first.keys().map(|k| (k.clone(), Column::Null)).collect();
            let key_bytes: usize = first.keys().map(|k| k.chars().count() + 1).sum();
            let mut size = 0;
            for item in items {
                let Value::Object(map) = item else { return None };
                if map.len() != columns.len() {
                    return None;
                }
                size += key_bytes;
                for ((name, kind), (key, value)) in columns.iter_mut().zip(map) {
                    if name != key {
                        return None;
                    }
                    let (k, bytes) = cell(value)?;
                    *kind = merge(*kind, k)?;
                    size += bytes;
                }
            }
            Some((Shape::Records(columns), size))
        }
        _ => None,
    }
}

/// A columnar value found in a payload: where (a JSON pointer) and what.
#[derive(Debug)]
pub struct Found<'a> {
    /// RFC 6901 pointer from the payload's root.
    pub path: String,
    /// The list.
    pub value: &'a [Value],
    /// Its shape.
    pub shape: Shape,
    /// Its estimated MessagePack size.
    pub bytes: usize,
}

/// Every columnar list in `payload` of at least [`MIN_COLUMN_BYTES`],
/// depth first (map entries and list items in order; nothing inside a list
/// found is searched again, nor a list of more than
/// [`MAX_SEARCHED_ITEMS`] that is not columnar).
pub fn find(payload: &Value) -> Vec<Found<'_>> {
    let mut out = Vec::new();
    let mut path = String::new();
    walk(payload, &mut path, &mut out, shape);
    out
}

/// [`find`] for the automatic choice: only the lists Arrow carries faster
/// than MessagePack when both ends make objects of them, which
/// `benches/codecs.rs` measures: arrays of numbers and of float vectors.
/// Records are as fast or faster in MessagePack (Python's MessagePack
/// builds dicts at C speed; Arrow rows come out one by one), and are passed
/// over by their first item alone.
pub fn find_numeric(payload: &Value) -> Vec<Found<'_>> {
    let mut out = Vec::new();
    let mut path = String::new();
    walk(payload, &mut path, &mut out, numeric_shape);
    out
}

/// [`shape`], for numbers and float vectors only.
pub fn numeric_shape(items: &[Value]) -> Option<(Shape, usize)> {
    if let Some(Value::Object(_)) = items.first() {
        return None;
    }
    shape(items)
}

type ShapeFn = fn(&[Value]) -> Option<(Shape, usize)>;

fn walk<'a>(v: &'a Value, path: &mut String, out: &mut Vec<Found<'a>>, shape: ShapeFn) {
    match v {
        Value::Array(items) => {
            if let Some((shape, bytes)) = shape(items) {
                // Anything columnar inside is smaller than the whole.
                if bytes >= MIN_COLUMN_BYTES {
                    out.push(Found { path: path.clone(), value: items, shape, bytes });
                }
                return;
            }
            if items.len() > MAX_SEARCHED_ITEMS {
                return;
            }
            let len = path.len();
            for (i, item) in items.iter().enumerate() {
                path.push('/');
                path.push_str(&i.to_string());
                walk(item, path, out, shape);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            let len = path.len();
            for (k, item) in map {
                path.push('/');
                push_escaped(path, k);
                walk(item, path, out, shape);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// A map key as an RFC 6901 reference token (`~` → `~0`, `/` → `~1`).
fn push_escaped(path: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_are_exact_about_kinds() {
        assert_eq!(shape(&[json!(1.5), json!(2.0)]).map(|s| s.0), Some(Shape::Floats));
        assert_eq!(shape(&[json!(1), json!(-2)]).map(|s| s.0), Some(Shape::Ints));
        assert_eq!(shape(&[json!(1), json!(2.5)]), None, "an int must not become a float");
        assert_eq!(shape(&[json!(u64::MAX)]), None, "past 64-bit signed");
        assert_eq!(shape(&[json!([1.0, 2.0]), json!([])]).map(|s| s.0), Some(Shape::FloatLists));
        assert_eq!(shape(&[json!([1.0, 2])]), None);
        let recs = [json!({"q": "a", "n": 1, "v": null}), json!({"q": null, "n": 2, "v": [0.5]})];
        assert_eq!(
            shape(&recs).map(|s| s.0),
            Some(Shape::Records(vec![
                ("q".into(), Column::Str),
                ("n".into(), Column::Int),
                ("v".into(), Column::FloatList)
            ]))
        );
        assert_eq!(shape(&[json!({"a": 1}), json!({"b": 1})]), None, "one key order");
        assert_eq!(shape(&[json!({"a": 1, "b": 2}), json!({"b": 1, "a": 2})]), None);
        assert_eq!(shape(&[json!({"a": 1}), json!({"a": 1.5})]), None);
        assert_eq!(shape(&[json!({"a": {"x": 1}})]), None, "nested maps stay");
        assert_eq!(shape(&[json!({})]), None);
        assert_eq!(shape(&[json!("a")]), None);
        assert_eq!(shape(&[]), None);
    }

    #[test]
    fn large_lists_are_found_where_they_are() {
        let floats: Vec<f64> = (0..100).map(|i| i as f64 + 0.5).collect();
        let payload = json!({
            "small": [1.5, 2.5],
            "a/b~c": floats,
            "nested": {"rows": (0..40).map(|i| json!({"id": i, "text": "some text"})).collect::<Vec<_>>()},
            "list": [vec![1.5; 80], "x"],
        });
        let found = find(&payload);
        let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/a~1b~0c", "/nested/rows", "/list/0"]);
        assert_eq!(found[0].bytes, 900);
        assert!(matches!(found[1].shape, Shape::Records(_)));
        let numeric: Vec<String> = find_numeric(&payload).into_iter().map(|f| f.path).collect();
        assert_eq!(numeric, ["/a~1b~0c", "/list/0"], "records are left to MessagePack");
    }
}
