"""The spans a request records, in the trace the runtime sent it.

A request with a ``traceparent`` (W3C trace context: the runtime's span for
the call) gets a ``SpanRecorder``. The worker records the command as a child
of that span, and DSPy's modules, LM calls and tools (through
``lms.SpanCallback``) as children of the command; the finished spans travel back in the
response, and the runtime exports them in the same trace as its own. Nothing
here runs for a request without a ``traceparent``.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time

# The span the code running in this thread or task is inside: (recorder, span id).
_current: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("dspex_current_span", default=None)


def parse_traceparent(header) -> tuple[str, str] | None:
    """``(trace_id, parent_span_id)`` of a W3C ``traceparent``, or None when malformed."""
    if not isinstance(header, str):
        return None
    parts = header.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    trace_id, span_id = parts[1], parts[2]
    hexdigits = set("0123456789abcdef")
    for value, size in ((trace_id, 32), (span_id, 16)):
        if len(value) != size or not set(value) <= hexdigits or set(value) == {"0"}:
            return None
    return trace_id, span_id


def _new_span_id() -> str:
    while True:
        value = os.urandom(8).hex()
        if value != "0" * 16:
            return value


def _attribute(value):
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)


class SpanRecorder:
    """The spans of one request."""

    __slots__ = ("trace_id", "parent_id", "spans", "_lock", "_open")

    def __init__(self, trace_id: str, parent_id: str):
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.spans: list[dict] = []
        self._lock = threading.Lock()
        self._open: dict = {}

    @classmethod
    def for_request(cls, traceparent) -> SpanRecorder | None:
        parsed = parse_traceparent(traceparent)
        return None if parsed is None else cls(*parsed)

    def current_parent(self) -> str:
        """The span new spans of this request are children of, here."""
        current = _current.get()
        if current is not None and current[0] is self:
            return current[1]
        # A thread DSPy started without our context: the request's root.
        return self.parent_id

    def start(self, key, name: str, attributes: dict | None = None):
        """Open span ``name`` under the current one; ``key`` names it for ``finish``."""
        span = {
            "name": name,
            "trace_id": self.trace_id,
            "span_id": _new_span_id(),
            "parent_span_id": self.current_parent(),
            "start_unix_ns": time.time_ns(),
            "attributes": {k: _attribute(v) for k, v in (attributes or {}).items()},
        }
        token = _current.set((self, span["span_id"]))
        with self._lock:
            self._open[key] = (span, token)
        return span

    def finish(self, key, error: BaseException | None = None, attributes: dict | None = None) -> None:
        with self._lock:
            entry = self._open.pop(key, None)
        if entry is None:
            return
        span, token = entry
        try:
            _current.reset(token)
        except ValueError:
            # Ended in another context than it started in (a callback pair
            # split across threads): nothing to restore here.
            pass
        span["end_unix_ns"] = time.time_ns()
        if attributes:
            span["attributes"].update({k: _attribute(v) for k, v in attributes.items()})
        if error is not None:
            span["error"] = f"{type(error).__name__}: {error}"
        if not span["attributes"]:
            del span["attributes"]
        with self._lock:
            self.spans.append(span)

    def take(self) -> list[dict]:
        """The finished spans (the open ones are closed as they are)."""
        with self._lock:
            open_keys = list(self._open)
        for key in open_keys:
            self.finish(key)
        with self._lock:
            spans, self.spans = self.spans, []
        return spans
