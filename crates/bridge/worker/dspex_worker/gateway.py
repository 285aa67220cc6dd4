"""DSPy's LM calls through the runtime's LM gateway.

DSPy 3.4.1 calls OpenAI-compatible services through its native (lm15) engine,
which builds each HTTP request and reads each answer itself, and hands the
bytes to an HTTP transport. In a pool whose workers use the gateway
(``DSPEX_LM_GATEWAY=1``), that transport is replaced by one that sends every
chat-completions request to the runtime over the worker's pipes and reads
the runtime's answer (``lm_transport``); the runtime's gateway applies rate
limits, budgets, its shared response cache, retries and fallbacks, and
accounts tokens and cost, for native and Python calls alike.

Only the transport changes: DSPy still chooses its engine, builds the
request (so the service sees exactly what DSPy's own engine sends), parses
the answer, records usage, cost and history, and raises its own errors.

The messages (worker → runtime, then runtime → worker)::

    lm_call   {id, request, url, headers, body, deadline_ms?, max_retries, stream}
    lm_head   {id, status, headers}
    lm_data   {id, data}           (the body, whole or a piece of a stream)
    lm_end    {id}
    lm_error  {id, error}          (instead of an answer: the gateway refused or failed)
    lm_cancel {id}                 (the worker stopped reading)

This module holds the worker's side of the messages and imports nothing of
DSPy (the frame loop uses it in every worker); ``lm_transport`` holds the
transports, imported when DSPy is.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import sys
import threading

#: The ``dspy.context`` key a request's LM scope travels under: DSPy copies
#: its settings into the threads of Evaluate, Parallel, BestOfN, ...
SCOPE_KEY = "dspex_lm_scope"

ENABLED = os.environ.get("DSPEX_LM_GATEWAY", "0") == "1"


def lm_call_message(call_id, request_id, url, headers, body, deadline_ms, max_retries, stream) -> dict:
    """An ``lm_call``, keys in the wire order of the golden frames."""
    message = {"type": "lm_call", "id": call_id, "request": request_id, "url": url, "headers": headers, "body": body}
    if deadline_ms is not None:
        message["deadline_ms"] = deadline_ms
    message["max_retries"] = max_retries
    message["stream"] = stream
    return message


class LmScope:
    """What the runtime needs to know about a request's LM calls."""

    __slots__ = ("request_id", "ctx", "max_retries")

    def __init__(self, ctx, max_retries: int = 0):
        self.ctx = ctx
        self.request_id = getattr(ctx, "request_id", None)
        self.max_retries = max_retries

    def deadline_ms(self) -> int | None:
        left = self.ctx.time_left() if self.ctx is not None else None
        return None if left is None else max(int(left * 1000), 1)


class Channel:
    """The worker's side of the LM messages: sends calls, routes replies."""

    def __init__(self, send):
        self._send = send
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._open: dict = {}

    def open(self, scope: LmScope | None, request, stream: bool, loop=None):
        """Send an ``lm_call``; returns its id and the queue its replies arrive on
        (an ``asyncio.Queue`` of ``loop`` for async callers)."""
        call_id = next(self._ids)
        replies = asyncio.Queue() if loop is not None else queue.SimpleQueue()
        with self._lock:
            self._open[call_id] = (replies, loop)
        message = lm_call_message(
            call_id,
            scope.request_id if scope is not None else None,
            request.url,
            [[k, v] for k, v in request.headers],
            bytes(request.body).decode("utf-8", errors="replace"),
            scope.deadline_ms() if scope is not None else None,
            scope.max_retries if scope is not None else 0,
            stream,
        )
        try:
            self._send(message)
        except Exception:
            self.close(call_id, cancel=False)
            raise
        return call_id, replies

    def deliver(self, message: dict) -> None:
        """A reply from the runtime (called by the frame loop)."""
        with self._lock:
            entry = self._open.get(message.get("id"))
        if entry is None:
            return  # a call this worker stopped reading
        replies, loop = entry
        if loop is None:
            replies.put(message)
        else:
            loop.call_soon_threadsafe(replies.put_nowait, message)

    def close(self, call_id: int, cancel: bool) -> None:
        with self._lock:
            found = self._open.pop(call_id, None)
        if found is not None and cancel:
            try:
                self._send({"type": "lm_cancel", "id": call_id})
            except Exception:  # noqa: BLE001 - the runtime is gone; nothing to cancel
                pass

    def pending(self) -> int:
        with self._lock:
            return len(self._open)


_channel: Channel | None = None


def install(send) -> Channel:
    """Route LM calls through the runtime from now on (the frame loop calls
    this when the pool uses the gateway). DSPy's transports are patched now
    if DSPy is loaded, else when it is (``dspy_patches``)."""
    global _channel
    _channel = Channel(send)
    if "dspex_worker.dspy_patches" in sys.modules:
        patch_transports()
    return _channel


def uninstall() -> None:
    """Call LM services directly again."""
    global _channel
    _channel = None


def active() -> bool:
    """Whether LM calls go through the runtime."""
    return _channel is not None


def patch_transports() -> None:
    """Have lm15 build gateway-aware transports (it looks the class up when
    a router first builds its shared transport)."""
    from . import lm_transport

    lm_transport.patch()
