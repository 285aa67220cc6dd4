//! Codec tag 2: a message whose large columnar values travel as Arrow IPC
//! streams, the rest as MessagePack (feature `arrow`).
//!
//! ```text
//! u32 skeleton length | skeleton: the message in MessagePack, each columnar value replaced by nil
//! u32 column count
//! per column: u32 path length | path: RFC 6901 pointer into the payload (a request's `args`,
//!             a response's `ok`, a chunk's `data`) | u32 stream length | Arrow IPC stream
//! ```
//!
//! All lengths are big-endian. Each stream's schema says what the list was:
//! metadata `dspex.shape` = `values` (one column, `values`, whose rows are
//! the list's items) or `records` (one column per key, in key order).
//! Arrow IPC bytes are not canonical across implementations (alignment,
//! flatbuffer layout), so golden tag-2 frames are compared by what they
//! decode to, and each side must read what the other writes.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, NullArray, RecordBatch, StringArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Schema};
use dspex_core::{Map, Result, Value};

use super::columnar::{self, Column, Found, Shape};
use super::{payload, payload_mut, protocol_error, Codec, Message};

const SHAPE_KEY: &str = "dspex.shape";

fn arrow_error(e: impl std::fmt::Display) -> dspex_core::Error {
    protocol_error(format!("Arrow codec: {e}"))
}

/// A whole tag-2 frame (length, tag, payload) for `msg`.
pub(super) fn encode(msg: &Message) -> Result<Vec<u8>> {
    encode_found(msg, payload(msg).map(columnar::find).unwrap_or_default())
}

/// [`encode`], with the payload's columnar values already found.
pub(super) fn encode_found(msg: &Message, found: Vec<Found<'_>>) -> Result<Vec<u8>> {
    let holes: HashSet<usize> = found.iter().map(|f| f.value.as_ptr() as usize).collect();
    let skeleton = match payload(msg) {
        Some(p) if !holes.is_empty() => {
            let mut m = msg.clone_without_payload();
            if let Some(slot) = payload_mut(&mut m) {
                *slot = skeleton(p, &holes);
            }
            super::encode_payload(Codec::MsgPack, &m)?
        }
        _ => super::encode_payload(Codec::MsgPack, msg)?,
    };
    let mut out = Vec::with_capacity(skeleton.len() + found.iter().map(|f| f.bytes).sum::<usize>() + 64);
    out.extend_from_slice(&[0, 0, 0, 0, Codec::Arrow.tag()]);
    put_len(&mut out, skeleton.len())?;
    out.extend_from_slice(&skeleton);
    put_len(&mut out, found.len())?;
    for f in &found {
        put_len(&mut out, f.path.len())?;
        out.extend_from_slice(f.path.as_bytes());
        let stream = ipc_stream(f)?;
        put_len(&mut out, stream.len())?;
        out.extend_from_slice(&stream);
    }
    let len = u32::try_from(out.len() - 4).map_err(|_| protocol_error("frame larger than 4 GiB"))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, n: usize) -> Result<()> {
    let n = u32::try_from(n).map_err(|_| protocol_error("an Arrow frame part larger than 4 GiB"))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// `v` with every list in `holes` (by address) replaced by `null`.
fn skeleton(v: &Value, holes: &HashSet<usize>) -> Value {
    match v {
        Value::Array(items) if holes.contains(&(items.as_ptr() as usize)) && !items.is_empty() => Value::Null,
        Value::Array(items) => Value::Array(items.iter().map(|i| skeleton(i, holes)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, i)| (k.clone(), skeleton(i, holes))).collect()),
        other => other.clone(),
    }
}

fn floats(items: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(items))
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// `List<Float64>` of the given lists (`None`: a null row).
fn float_lists<'a>(rows: impl Iterator<Item = Option<&'a Vec<Value>>> + Clone) -> Result<ArrayRef> {
    let lengths = rows.clone().map(|r| r.map_or(0, Vec::len));
    let offsets = OffsetBuffer::<i32>::from_lengths(lengths);
    let nulls: Vec<bool> = rows.clone().map(|r| r.is_some()).collect();
    let nulls = nulls.iter().any(|ok| !ok).then(|| NullBuffer::from(nulls));
    let values = Float64Array::from_iter_values(rows.flatten().flatten().map(|v| v.as_f64().unwrap_or(f64::NAN)));
    let item = Arc::new(Field::new("item", DataType::Float64, false));
    ListArray::try_new(item, offsets, Arc::new(values), nulls).map(|a| Arc::new(a) as ArrayRef).map_err(arrow_error)
}

fn column(kind: Column, cells: &[&Value]) -> Result<(DataType, ArrayRef)> {
    Ok(match kind {
        Column::Null => (DataType::Null, Arc::new(NullArray::new(cells.len()))),
        Column::Bool => (DataType::Boolean, Arc::new(cells.iter().map(|v| v.as_bool()).collect::<BooleanArray>())),
        Column::Int => (DataType::Int64, Arc::new(cells.iter().map(|v| v.as_i64()).collect::<Int64Array>())),
        Column::Float => (DataType::Float64, floats(cells.iter().map(|v| as_f64(v)))),
        Column::Str => (DataType::Utf8, Arc::new(cells.iter().map(|v| v.as_str()).collect::<StringArray>())),
        Column::FloatList => {
            let array = float_lists(cells.iter().map(|v| v.as_array()))?;
            (array.data_type().clone(), array)
        }
    })
}

/// One columnar list as an Arrow IPC stream (schema, one batch, end).
fn ipc_stream(found: &Found<'_>) -> Result<Vec<u8>> {
    let items = found.value;
    let (fields, arrays, shape): (Vec<Field>, Vec<ArrayRef>, &str) = match &found.shape {
        Shape::Floats => {
            (vec![Field::new("values", DataType::Float64, false)], vec![floats(items.iter().map(as_f64))], "values")
        }
        Shape::Ints => (
            vec![Field::new("values", DataType::Int64, false)],
            vec![Arc::new(items.iter().map(Value::as_i64).collect::<Int64Array>()) as ArrayRef],
            "values",
        ),
        Shape::FloatLists => {
            let array = float_lists(items.iter().map(Value::as_array))?;
            (vec![Field::new("values", array.data_type().clone(), false)], vec![array], "values")
        }
        Shape::Records(columns) => {
            let mut fields = Vec::with_capacity(columns.len());
            let mut arrays = Vec::with_capacity(columns.len());
            for (i, (name, kind)) in columns.iter().enumerate() {
                let cells: Vec<&Value> = items
                    .iter()
                    .map(|row| row.as_object().and_then(|m| m.values().nth(i)).unwrap_or(&Value::Null))
                    .collect();
                let (ty, array) = column(*kind, &cells)?;
                fields.push(Field::new(name, ty, true));
                arrays.push(array);
            }
            (fields, arrays, "records")
        }
    };
    let schema =
        Arc::new(Schema::new_with_metadata(fields, HashMap::from([(SHAPE_KEY.to_string(), shape.to_string())])));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(arrow_error)?;
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema).map_err(arrow_error)?;
    writer.write(&batch).map_err(arrow_error)?;
    writer.finish().map_err(arrow_error)?;
    writer.into_inner().map_err(arrow_error)
}

/// Read a big-endian `u32` length and that many bytes from `buf` at `*at`.
fn take<'a>(buf: &'a [u8], at: &mut usize, what: &str) -> Result<&'a [u8]> {
    let short = || protocol_error(format!("Arrow frame cut short in its {what}"));
    let len_bytes: [u8; 4] = buf.get(*at..*at + 4).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let start = *at + 4;
    let part = buf.get(start..start.checked_add(len).ok_or_else(short)?).ok_or_else(short)?;
    *at = start + len;
    Ok(part)
}

/// The message in a tag-2 payload (after the tag byte); `fast`: read the
/// skeleton with the reply fast path.
pub(super) fn decode(payload: &[u8], fast: bool) -> Result<Message> {
    let mut at = 0;
    let skeleton = take(payload, &mut at, "skeleton")?;
    let mut msg = super::decode_message(Codec::MsgPack, skeleton, fast)?;
    let count = take_count(payload, &mut at)?;
    for _ in 0..count {
        let path = std::str::from_utf8(take(payload, &mut at, "column path")?)
            .map_err(|_| protocol_error("Arrow frame: a column path is not UTF-8"))?;
        let stream = take(payload, &mut at, "column stream")?;
        let value = read_stream(stream)?;
        let slot = payload_mut(&mut msg)
            .and_then(|p| if path.is_empty() { Some(p) } else { p.pointer_mut(path) })
            .ok_or_else(|| protocol_error(format!("Arrow frame: no place `{path}` in the message for a column")))?;
        *slot = value;
    }
    if at != payload.len() {
        return Err(protocol_error("Arrow frame: bytes after its last column"));
    }
    Ok(msg)
}

fn take_count(buf: &[u8], at: &mut usize) -> Result<usize> {
    let bytes: [u8; 4] = buf
        .get(*at..*at + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| protocol_error("Arrow frame cut short in its column count"))?;
    *at += 4;
    Ok(u32::from_be_bytes(bytes) as usize)
}

/// An Arrow IPC stream back into the list it was made from.
fn read_stream(stream: &[u8]) -> Result<Value> {
    let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(stream), None).map_err(arrow_error)?;
    let schema = reader.schema();
    let records = match schema.metadata().get(SHAPE_KEY).map(String::as_str) {
        Some("records") => true,
        Some("values") if schema.fields().len() == 1 => false,
        other => return Err(arrow_error(format!("a stream of unknown shape {other:?}"))),
    };
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow_error)?;
        if records {
            let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
            let columns: Vec<Vec<Value>> = batch.columns().iter().map(|c| cells(c.as_ref())).collect::<Result<_>>()?;
            let mut iters: Vec<_> = columns.into_iter().map(Vec::into_iter).collect();
            for _ in 0..batch.num_rows() {
                let mut row = Map::with_capacity(names.len());
                for (name, cells) in names.iter().zip(iters.iter_mut()) {
                    row.insert((*name).clone(), cells.next().unwrap_or(Value::Null));
                }
                out.push(Value::Object(row));
            }
        } else {
            out.extend(cells(batch.column(0).as_ref())?);
        }
    }
    Ok(Value::Array(out))
}

fn float_value(f: f64) -> Value {
    // As serde reads a non-finite float from MessagePack.
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// One Arrow column as values (`null` where the column has one).
fn cells(array: &dyn Array) -> Result<Vec<Value>> {
    let n = array.len();
    let valid = |i: usize| array.is_valid(i);
    Ok(match array.data_type() {
        DataType::Null => vec![Value::Null; n],
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..n).map(|i| if valid(i) { Value::Bool(a.value(i)) } else { Value::Null }).collect()
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            (0..n).map(|i| if valid(i) { Value::from(a.value(i)) } else { Value::Null }).collect()
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            if a.null_count() == 0 {
                a.values().iter().map(|f| float_value(*f)).collect()
            } else {
                (0..n).map(|i| if valid(i) { float_value(a.value(i)) } else { Value::Null }).collect()
            }
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..n).map(|i| if valid(i) { Value::String(a.value(i).to_string()) } else { Value::Null }).collect()
        }
        DataType::List(item) if item.data_type() == &DataType::Float64 => {
            let a = array.as_list::<i32>();
            let values = a.values().as_primitive::<Float64Type>();
            let offsets = a.value_offsets();
            (0..n)
                .map(|i| {
                    if !valid(i) {
                        return Value::Null;
                    }
                    let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                    Value::Array((start..end).map(|j| float_value(values.value(j))).collect())
                })
                .collect()
        }
        other => return Err(arrow_error(format!("a column of type {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(args: Value) -> Message {
        let msg = Message::Request {
            id: 1,
            op: "echo".into(),
            session: None,
            args,
            deadline_ms: None,
            trace_id: None,
            traceparent: None,
            stream: false,
            reply_codec: None,
        };
        let frame = encode(&msg).unwrap();
        assert_eq!(frame[4], 2);
        let back = decode(&frame[5..], false).unwrap();
        assert_eq!(back, msg);
        assert_eq!(decode(&frame[5..], true).unwrap(), msg);
        back
    }

    #[test]
    fn columnar_values_come_back_exactly() {
        let recs: Vec<Value> = (0..50)
            .map(|i| {
                json!({"q": format!("question {i}"), "n": i, "score": i as f64 / 3.0, "ok": i % 2 == 0,
                       "emb": if i % 7 == 0 { Value::Null } else { json!([0.5, i as f64]) }, "none": null})
            })
            .collect();
        round_trip(json!({
            "devset": recs,
            "floats": (0..100).map(|i| i as f64 * 0.25).collect::<Vec<_>>(),
            "ints": (0..100).collect::<Vec<i64>>(),
            "vectors": (0..30).map(|i| vec![i as f64; 4]).collect::<Vec<_>>(),
            "small": [1.5, 2.5],
            "mixed": [1, 2.5, "x"],
            "nested": {"deeper": [{"a": 1}, (0..80).map(|i| i as f64 + 0.5).collect::<Vec<_>>()]},
        }));
    }

    #[test]
    fn broken_frames_are_protocol_errors() {
        for bad in [&b""[..], &[0, 0, 0, 9][..], &[0, 0, 0, 1, 0x90][..]] {
            assert_eq!(decode(bad, false).unwrap_err().kind(), dspex_core::ErrorKind::Protocol);
        }
        // A valid skeleton, then a column pointing nowhere.
        let mut body = Vec::new();
        let skeleton = super::super::encode_payload(Codec::MsgPack, &Message::End { id: 3 }).unwrap();
        body.extend_from_slice(&(skeleton.len() as u32).to_be_bytes());
        body.extend_from_slice(&skeleton);
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(&2u32.to_be_bytes());
        body.extend_from_slice(b"/x");
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(b"abc");
        let err = decode(&body, false).unwrap_err();
        assert!(err.message().contains("Arrow"), "{err}");
    }
}
