"""The dspex wire protocol: its version, the worker's messages, framing and codecs.

A frame is a 4-byte big-endian length of the rest, one codec tag byte
(0 JSON, 1 MessagePack, 2 Arrow: MessagePack with large columnar values as
Arrow IPC streams, see ``columnar``) and the payload. Messages are dicts
with a ``type``.
The Rust side (``crates/bridge/src/protocol.rs``) implements the same rules;
``tests/fixtures/protocol/golden.json`` holds frames both suites decode and
re-encode.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import time

import msgpack

from . import columnar

#: The runtime refuses a worker whose ``hello`` names another version.
PROTOCOL_VERSION = 1

JSON = 0
MSGPACK = 1
ARROW = 2
#: Not a tag: pick MessagePack or Arrow per message (a request's ``reply_codec: "auto"``).
AUTO = -1
CODECS = {"json": JSON, "msgpack": MSGPACK}
if columnar.available():
    CODECS["arrow"] = ARROW
HEADER = struct.Struct(">IB")
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the framing rules."""


class FrameTooLarge(ValueError):
    """A message over the frame limit: never written (the runtime would
    drop the whole worker for it); the request gets an error instead."""


# -- the messages a worker sends ---------------------------------------------
# Keys in the order of the golden frames: MessagePack and JSON keep it, so
# the bytes on the wire stay the same.


def hello_message(
    *, pid: int, worker: str, python: str, dspy: str | None, commands: list, max_concurrency: int
) -> dict:
    """The first frame: who the worker is and what it can do."""
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "pid": pid,
        "worker": worker,
        "python": python,
        "dspy": dspy,
        "codecs": sorted(CODECS),
        "commands": commands,
        "max_concurrency": max_concurrency,
    }


def ok_response(request_id, result, spans: list | None = None) -> dict:
    """``spans``: what the request recorded when it was traced (``spans.SpanRecorder``)."""
    if spans:
        return {"type": "response", "id": request_id, "ok": result, "spans": spans}
    return {"type": "response", "id": request_id, "ok": result}


def error_response(request_id, error: dict, spans: list | None = None) -> dict:
    """``error``: type, kind, message, traceback, retryable (see ``server.classify``)."""
    if spans:
        return {"type": "response", "id": request_id, "error": error, "spans": spans}
    return {"type": "response", "id": request_id, "error": error}


def chunk_message(request_id, seq: int, data) -> dict:
    """One piece of a streamed request's output; ``seq`` counts from 1."""
    return {"type": "chunk", "id": request_id, "seq": seq, "data": data}


def end_message(request_id) -> dict:
    """A streamed request sends no more chunks (its response follows)."""
    return {"type": "end", "id": request_id}


def pong_message(seq, in_flight: int) -> dict:
    return {"type": "pong", "seq": seq, "in_flight": in_flight}


# -- codecs and framing --------------------------------------------------------


def reply_tag(tag: int, request: dict) -> int:
    """The codec of the replies to ``request`` (which came in ``tag``)."""
    wanted = request.get("reply_codec")
    if wanted == "auto":
        return AUTO if ARROW in CODECS.values() else MSGPACK
    return CODECS.get(wanted, tag) if wanted is not None else tag


def choose(message) -> tuple[int, list | None]:
    """``auto``'s pick for ``message``: MessagePack, or Arrow when its numeric
    columnar values add up to ``columnar.AUTO_ARROW_MIN_BYTES`` (and those values)."""
    if ARROW not in CODECS.values() or not isinstance(message, dict):
        return MSGPACK, None
    key = columnar._payload_key(message)
    if key is None:
        return MSGPACK, None
    if columnar.rough_numeric_bytes(message[key]) < columnar.AUTO_ARROW_MIN_BYTES // 2:
        return MSGPACK, None
    found = columnar.find(message[key], columnar.numeric_shape)
    if sum(f[3] for f in found) >= columnar.AUTO_ARROW_MIN_BYTES:
        return ARROW, found
    return MSGPACK, None


def encode_payload(tag: int, message, found: list | None = None) -> bytes:
    if tag == MSGPACK:
        return msgpack.packb(message, use_bin_type=True)
    if tag == JSON:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if tag == ARROW:
        return columnar.encode_payload(message, found)
    raise ProtocolError(f"unknown codec tag {tag}")


def decode_payload(tag: int, payload: bytes):
    try:
        if tag == MSGPACK:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if tag == JSON:
            return json.loads(payload)
    # TypeError: a map key that cannot be a dict key (a map or a list);
    # RecursionError: nesting deeper than the interpreter's stack.
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException, msgpack.ExtraData) as exc:
        raise ProtocolError(f"undecodable {('JSON', 'MessagePack')[tag]} payload: {exc}") from exc
    if tag == ARROW:
        try:
            return columnar.decode_payload(payload)
        except ImportError as exc:
            raise ProtocolError(f"an Arrow frame (codec tag 2), and this Python has no pyarrow: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; all are a broken frame here
            raise ProtocolError(f"undecodable Arrow payload: {exc}") from exc
    raise ProtocolError(f"unknown codec tag {tag}")


def encode_frame(tag: int, message) -> bytes:
    if tag == AUTO:
        tag, found = choose(message)
        if tag == ARROW:
            try:
                payload = encode_payload(ARROW, message, found)
            except Exception:  # noqa: BLE001 - auto may always fall back to MessagePack
                tag = MSGPACK
            else:
                return HEADER.pack(len(payload) + 1, tag) + payload
    payload = encode_payload(tag, message)
    return HEADER.pack(len(payload) + 1, tag) + payload


def frame_length(header, max_frame: int, pos: int = 0) -> tuple[int, int]:
    """The length field and codec tag of the frame header at ``pos``, the
    length checked against ``max_frame``."""
    length, tag = HEADER.unpack_from(header, pos)
    if length < 1 or length > max_frame:
        raise ProtocolError(f"frame of {length} bytes is outside 1..{max_frame}")
    return length, tag


class FrameReader:
    """Reads whole frames from a descriptor with blocking, buffered reads.

    Frames already in the buffer are handed out without another system call;
    consumed bytes are dropped in one go, not frame by frame. ``read``
    replaces ``os.read`` on the descriptor (a socket's ``recv``, which keeps
    the socket's timeout).
    """

    def __init__(
        self,
        fd: int,
        max_frame: int = DEFAULT_MAX_FRAME,
        chunk: int = 256 * 1024,
        spin_us: int = 0,
        read=None,
    ):
        self.fd = fd
        self.max_frame = max_frame
        self.chunk = chunk
        self._read = read if read is not None else functools.partial(os.read, fd)
        self.buf = bytearray()
        self.pos = 0
        #: Poll this long for the next request before blocking: a sleeping
        #: process costs a cross-core wake-up per request (tens of µs).
        self.spin = spin_us / 1e6
        self._calm = False
        self._poll = None
        if spin_us > 0:
            import select

            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)

    def block_next(self) -> None:
        """Block at once on the next read instead of polling first: another
        thread was just handed work, and a polling reader holds the GIL it
        needs (it would wait out the poll, or the switch interval)."""
        self._calm = True

    def _wait_briefly(self) -> None:
        end = time.perf_counter() + self.spin
        poll = self._poll.poll
        while time.perf_counter() < end:
            if poll(0):
                return

    def _fill(self, need: int) -> bool:
        while len(self.buf) - self.pos < need:
            if self.pos:
                del self.buf[: self.pos]
                self.pos = 0
            if self._poll is not None and not self._calm:
                self._wait_briefly()
            self._calm = False
            data = self._read(max(self.chunk, need - len(self.buf)))
            if not data:
                return False
            self.buf += data
        return True

    def read(self):
        """The next ``(tag, message)``, or ``None`` at end of input."""
        if not self._fill(5):
            if len(self.buf) > self.pos:
                raise ProtocolError("input ended inside a frame header")
            return None
        length, tag = frame_length(self.buf, self.max_frame, self.pos)
        if not self._fill(4 + length):
            raise ProtocolError("input ended inside a frame")
        start = self.pos + 5
        end = self.pos + 4 + length
        payload = bytes(self.buf[start:end])
        self.pos = end
        if self.pos == len(self.buf):
            self.buf.clear()
            self.pos = 0
        return tag, decode_payload(tag, payload)


class FrameWriter:
    """Writes whole frames; one frame, one ``write`` call where the pipe allows."""

    def __init__(self, fd: int, lock, max_frame: int = DEFAULT_MAX_FRAME):
        self.fd = fd
        self.lock = lock
        self.max_frame = max_frame

    def send(self, tag: int, message) -> None:
        frame = encode_frame(tag, message)
        if len(frame) - 4 > self.max_frame:
            raise FrameTooLarge(
                f"a reply of {len(frame) - 4} bytes is over the frame limit of {self.max_frame} bytes "
                "(the pool's max_frame_mb)"
            )
        with self.lock:
            n = os.write(self.fd, frame)
            if n < len(frame):
                view = memoryview(frame)[n:]
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
