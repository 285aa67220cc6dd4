"""Codec tag 2: a message whose large columnar values travel as Arrow IPC streams.

The shape rules mirror ``crates/bridge/src/protocol/columnar.rs`` exactly, so
both sides agree on what is columnar and how big it is; the frame layout
mirrors ``protocol/arrow.rs``::

    u32 skeleton length | skeleton: the message in MessagePack, each columnar list replaced by nil
    u32 column count
    per column: u32 path length | RFC 6901 pointer into the payload | u32 stream length | Arrow IPC stream

A list is columnar when it holds only floats (Arrow ``float64``), only
integers within 64 bits (``int64``), only lists of floats
(``list<float64>``), or only maps with the same keys in the same order whose
every key holds one kind of value (``None`` anywhere): bools, ints, floats,
strings or lists of floats. Anything else stays in MessagePack, so values
come back exactly as they went.

``pyarrow`` is imported on first use, never at start-up (it costs ~0.1 s and
a zygote must not import it before forking).
"""

from __future__ import annotations

import importlib.util
import struct
from operator import itemgetter

import msgpack

#: Lists smaller than this (estimated MessagePack bytes) stay in MessagePack.
MIN_COLUMN_BYTES = 512
#: A list that is not columnar is searched only up to this many items.
MAX_SEARCHED_ITEMS = 64
#: Below this much columnar data, ``auto`` sends MessagePack.
AUTO_ARROW_MIN_BYTES = 256 * 1024

SHAPE_KEY = b"dspex.shape"
_LEN = struct.Struct(">I")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

# Column kinds, as in the Rust side.
NULL, BOOL, INT, FLOAT, STR, FLOAT_LIST = "null", "bool", "int", "float", "str", "float_list"


def available() -> bool:
    """Whether this Python can read and write Arrow frames."""
    return importlib.util.find_spec("pyarrow") is not None


_NONE = type(None)


def _is_float_list(v) -> bool:
    return type(v) is list and set(map(type, v)) <= {float}


def _column(cells: list):
    """A records column's kind and estimated size, or None. Type checks run
    over the whole column at C speed (``set(map(type, ...))``), not per cell."""
    types = set(map(type, cells))
    nulls = 0
    if _NONE in types:
        types.discard(_NONE)
        nulls = cells.count(None)
        values = [c for c in cells if c is not None] if types else []
    else:
        values = cells
    if not types:
        return NULL, nulls
    if len(types) > 1:
        return None
    (t,) = types
    if t is bool:
        return BOOL, len(cells)
    if t is int:
        if min(values) < _I64_MIN or max(values) > _I64_MAX:
            return None
        return INT, 9 * len(values) + nulls
    if t is float:
        return FLOAT, 9 * len(values) + nulls
    if t is str:
        return STR, sum(map(len, values)) + 5 * len(values) + nulls
    if t is list:
        if not all(map(_is_float_list, values)):
            return None
        return FLOAT_LIST, sum(map(len, values)) * 9 + 5 * len(values) + nulls
    return None


def shape(items: list):
    """``(kind, size)`` for a columnar list: kind is ``"floats"``, ``"ints"``,
    ``"float_lists"`` or a list of ``(key, column kind)`` for records."""
    if not items:
        return None
    types = set(map(type, items))
    if len(types) != 1:
        return None
    (t,) = types
    if t is float:
        return "floats", len(items) * 9
    if t is int:
        if min(items) < _I64_MIN or max(items) > _I64_MAX:
            return None
        return "ints", len(items) * 9
    if t is list:
        if not all(map(_is_float_list, items)):
            return None
        return "float_lists", sum(map(len, items)) * 9 + 5 * len(items)
    if t is dict:
        keys = tuple(items[0])
        if not keys or not all(type(k) is str for k in keys):
            return None
        if not all(map(keys.__eq__, map(tuple, items))):
            return None
        size = len(items) * sum(len(k) + 1 for k in keys)
        kinds = []
        for k in keys:
            column = _column(list(map(itemgetter(k), items)))
            if column is None:
                return None
            kinds.append((k, column[0]))
            size += column[1]
        return kinds, size
    return None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def numeric_shape(items: list):
    """``shape`` for numbers and float vectors only: what ``auto`` sends as
    Arrow (``benches/codecs.rs``: records are as fast or faster in
    MessagePack), judged for records by their first item alone."""
    if items and type(items[0]) is dict:
        return None
    return shape(items)


def rough_numeric_bytes(payload) -> int:
    """An estimate of ``find(payload, numeric_shape)``'s total from each
    list's first item alone: cheap enough to skip the exact look at every
    item for payloads far too small to go as Arrow."""
    total = 0

    def walk(v):
        nonlocal total
        t = type(v)
        if t is list:
            if not v:
                return
            first = type(v[0])
            if first is float or first is int:
                total += 9 * len(v)
            elif first is list:
                total += (9 * len(v[0]) + 5) * len(v)
            elif len(v) <= MAX_SEARCHED_ITEMS and first is not dict:
                for item in v:
                    walk(item)
        elif t is dict:
            for item in v.values():
                walk(item)

    walk(payload)
    return total


def find(payload, shape_of=None) -> list:
    """Every columnar list of at least MIN_COLUMN_BYTES in ``payload``:
    ``(path, list, kind, size)``, depth first (a list found, or a list of
    more than MAX_SEARCHED_ITEMS that is not columnar, is not searched).
    ``shape_of``: ``shape`` (the default) or ``numeric_shape``."""
    out: list = []
    shape_of = shape_of or shape

    def walk(v, path):
        t = type(v)
        if t is list:
            found = shape_of(v)
            if found is not None:
                if found[1] >= MIN_COLUMN_BYTES:
                    out.append((path, v, found[0], found[1]))
                return
            if len(v) > MAX_SEARCHED_ITEMS:
                return
            for i, item in enumerate(v):
                walk(item, f"{path}/{i}")
        elif t is dict:
            for k, item in v.items():
                walk(item, f"{path}/{_escape(str(k))}")

    walk(payload, "")
    return out


def columnar_bytes(payload) -> int:
    return sum(f[3] for f in find(payload))


# -- encoding ------------------------------------------------------------------


def _payload_key(message: dict) -> str | None:
    kind = message.get("type")
    if kind == "request":
        return "args"
    if kind == "response":
        return "ok" if "ok" in message else None
    if kind == "chunk":
        return "data"
    return None


def _skeleton(v, holes: set):
    t = type(v)
    if t is list:
        if id(v) in holes:
            return None
        return [_skeleton(i, holes) for i in v]
    if t is dict:
        return {k: _skeleton(i, holes) for k, i in v.items()}
    return v


def _arrow_type(pa, kind):
    return {
        NULL: pa.null(),
        BOOL: pa.bool_(),
        INT: pa.int64(),
        FLOAT: pa.float64(),
        STR: pa.string(),
        FLOAT_LIST: pa.list_(pa.field("item", pa.float64(), nullable=False)),
    }[kind]


def _ipc_stream(items: list, kind) -> bytes:
    import pyarrow as pa
    import pyarrow.ipc

    if kind == "floats":
        arrays, names, what = [pa.array(items, type=pa.float64())], ["values"], b"values"
    elif kind == "ints":
        arrays, names, what = [pa.array(items, type=pa.int64())], ["values"], b"values"
    elif kind == "float_lists":
        arrays, names, what = [pa.array(items, type=_arrow_type(pa, FLOAT_LIST))], ["values"], b"values"
    else:
        names = [k for k, _ in kind]
        arrays = [pa.array(list(map(itemgetter(k), items)), type=_arrow_type(pa, c)) for k, c in kind]
        what = b"records"
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    batch = batch.replace_schema_metadata({SHAPE_KEY: what})
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def encode_payload(message: dict, found: list | None = None) -> bytes:
    """A tag-2 payload for ``message`` (``found``: its columnar lists, if known)."""
    key = _payload_key(message)
    if found is None:
        found = find(message[key]) if key is not None else []
    if found:
        holes = {id(f[1]) for f in found}
        message = dict(message)
        message[key] = _skeleton(message[key], holes)
    skeleton = msgpack.packb(message, use_bin_type=True)
    parts = [_LEN.pack(len(skeleton)), skeleton, _LEN.pack(len(found))]
    for path, items, kind, _ in found:
        stream = _ipc_stream(items, kind)
        encoded = path.encode()
        parts += [_LEN.pack(len(encoded)), encoded, _LEN.pack(len(stream)), stream]
    return b"".join(parts)


# -- decoding ------------------------------------------------------------------


class FrameError(ValueError):
    """A tag-2 payload that breaks the layout."""


def _take(buf, at: int, what: str):
    if at + 4 > len(buf):
        raise FrameError(f"Arrow frame cut short in its {what}")
    (n,) = _LEN.unpack_from(buf, at)
    end = at + 4 + n
    if end > len(buf):
        raise FrameError(f"Arrow frame cut short in its {what}")
    return buf[at + 4 : end], end


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _read_stream(stream) -> list:
    import pyarrow as pa
    import pyarrow.ipc

    table = pyarrow.ipc.open_stream(pa.py_buffer(stream)).read_all()
    what = (table.schema.metadata or {}).get(SHAPE_KEY)
    if what == b"records":
        return table.to_pylist()
    if what == b"values" and table.num_columns == 1:
        column = table.column(0)
        if column.null_count == 0 and (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            return column.to_numpy().tolist()
        return column.to_pylist()
    raise FrameError(f"Arrow frame: a stream of unknown shape {what!r}")


def decode_payload(payload) -> dict:
    view = memoryview(payload)
    skeleton, at = _take(view, 0, "skeleton")
    message = msgpack.unpackb(skeleton, raw=False, strict_map_key=False)
    if at + 4 > len(view):
        raise FrameError("Arrow frame cut short in its column count")
    (count,) = _LEN.unpack_from(view, at)
    at += 4
    key = _payload_key(message) if isinstance(message, dict) else None
    if count and key is None and isinstance(message, dict) and message.get("type") == "response":
        key = "ok"
    for _ in range(count):
        path, at = _take(view, at, "column path")
        stream, at = _take(view, at, "column stream")
        value = _read_stream(stream)
        if key is None:
            raise FrameError("Arrow frame: columns for a message without a payload")
        tokens = bytes(path).decode().split("/")[1:]
        if not tokens:
            message[key] = value
            continue
        parent = message[key]
        try:
            for token in tokens[:-1]:
                parent = parent[int(token)] if isinstance(parent, list) else parent[_unescape(token)]
            last = tokens[-1]
            if isinstance(parent, list):
                parent[int(last)] = value
            elif isinstance(parent, dict) and _unescape(last) in parent:
                parent[_unescape(last)] = value
            else:
                raise KeyError(last)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise FrameError(f"Arrow frame: no place {bytes(path).decode()!r} in the message for a column") from exc
    if at != len(view):
        raise FrameError("Arrow frame: bytes after its last column")
    return message
