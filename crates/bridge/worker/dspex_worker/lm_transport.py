"""lm15's HTTP transports, sending chat completions through the runtime.

See ``gateway`` for the why and the messages. The transports subclass
lm15's own, so a call that is not a chat completion, or made where no
channel to the runtime is open, goes out directly as before.
"""

from __future__ import annotations

import asyncio
import http
import logging
import queue
import sys

import dspy
from dspy._vendor.lm15 import transports as lm15_transports
from dspy._vendor.lm15.transports import (
    AsyncTransportResponse,
    StdlibAsyncTransport,
    StdlibTransport,
    TransportError,
    TransportResponse,
)

from . import gateway
from .gateway import SCOPE_KEY, Channel, LmScope

log = logging.getLogger("dspex_worker.gateway")

_direct_logged: set = set()


class GatewayError(TransportError):
    """The gateway refused or failed a call: its kind (``rate_limited``,
    ``budget_exceeded``, ...) survives DSPy's wrapping of transport errors
    (``registry.classify`` looks for it along the exception's causes)."""

    def __init__(self, kind: str, message: str, retryable: bool = False):
        super().__init__(message)
        self.dspex_kind = kind
        self.dspex_retryable = retryable


def _gateway_for(request) -> Channel | None:
    """The channel to send ``request`` on, or None to call the service directly."""
    ch = gateway._channel
    if ch is None:
        return None
    path = request.url.split("?", 1)[0]
    if request.method.upper() != "POST" or not path.endswith("/chat/completions"):
        origin = path.rsplit("/", 1)[0]
        if origin not in _direct_logged:
            _direct_logged.add(origin)
            log.info("LM calls to %s go directly, not through the gateway: not an OpenAI chat-completions API", origin)
        return None
    return ch


def _scope() -> LmScope | None:
    return dspy.settings.get(SCOPE_KEY)


def _wait_time(scope: LmScope | None) -> float | None:
    left = scope.ctx.time_left() if scope is not None and scope.ctx is not None else None
    # The runtime answers by the deadline (with an error when it must): a
    # little more than the time left is only ever waited when it is gone.
    return None if left is None else max(left, 0.0) + 5.0


def _raise(error: dict):
    raise GatewayError(
        error.get("kind") or "lm", error.get("message") or "LM call failed", bool(error.get("retryable"))
    )


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _is_stream(request) -> bool:
    return b'"stream": true' in request.body or b'"stream":true' in request.body


class GatewayTransport(StdlibTransport):
    """lm15's transport, sending chat completions through the runtime."""

    def stream(self, request) -> TransportResponse:
        ch = _gateway_for(request)
        if ch is None:
            return super().stream(request)
        scope = _scope()
        call_id, replies = ch.open(scope, request, _is_stream(request))
        wait = _wait_time(scope)
        try:
            head = replies.get(timeout=wait)
        except queue.Empty:
            ch.close(call_id, cancel=True)
            raise GatewayError("timeout", "the LM gateway did not answer in time", True) from None
        if head["type"] == "lm_error":
            ch.close(call_id, cancel=False)
            _raise(head["error"])

        def chunks():
            if "body" in head:  # the whole body came with the head
                yield head["body"].encode()
                return
            while True:
                try:
                    msg = replies.get(timeout=wait)
                except queue.Empty:
                    raise GatewayError("timeout", "the LM gateway stopped answering", True) from None
                kind = msg["type"]
                if kind == "lm_data":
                    yield msg["data"].encode()
                elif kind == "lm_end":
                    return
                else:
                    _raise(msg["error"])

        def release(body_consumed: bool) -> None:
            ch.close(call_id, cancel=not body_consumed)

        return TransportResponse(
            status=head["status"],
            reason=_reason(head["status"]),
            headers=[(k, v) for k, v in head["headers"]],
            http_version="HTTP/1.1",
            chunks=chunks(),
            release=release,
        )


if sys.version_info >= (3, 11):

    async def _next(replies: asyncio.Queue, wait: float | None):
        """The next reply, within ``wait`` seconds. ``asyncio.timeout`` bounds
        the wait without a task per message (``wait_for`` makes one), and this
        runs once per streamed piece."""
        async with asyncio.timeout(wait):
            return await replies.get()

else:  # pragma: no cover - Python 3.10

    async def _next(replies: asyncio.Queue, wait: float | None):
        return await asyncio.wait_for(replies.get(), wait)


class _GatewayStream:
    """``async with transport.stream(request) as response`` through the runtime."""

    def __init__(self, ch: Channel, request):
        self._ch = ch
        self._request = request
        self._response = None

    def __await__(self):
        return self._open().__await__()

    async def _open(self) -> AsyncTransportResponse:
        scope = _scope()
        loop = asyncio.get_running_loop()
        call_id, replies = self._ch.open(scope, self._request, _is_stream(self._request), loop=loop)
        wait = _wait_time(scope)
        try:
            head = await _next(replies, wait)
        except asyncio.TimeoutError:
            self._ch.close(call_id, cancel=True)
            raise GatewayError("timeout", "the LM gateway did not answer in time", True) from None
        except BaseException:
            self._ch.close(call_id, cancel=True)
            raise
        if head["type"] == "lm_error":
            self._ch.close(call_id, cancel=False)
            _raise(head["error"])
        ch = self._ch

        async def chunks():
            if "body" in head:  # the whole body came with the head
                yield head["body"].encode()
                return
            while True:
                try:
                    msg = await _next(replies, wait)
                except asyncio.TimeoutError:
                    raise GatewayError("timeout", "the LM gateway stopped answering", True) from None
                kind = msg["type"]
                if kind == "lm_data":
                    yield msg["data"].encode()
                elif kind == "lm_end":
                    return
                else:
                    _raise(msg["error"])

        async def release(body_consumed: bool) -> None:
            ch.close(call_id, cancel=not body_consumed)

        return AsyncTransportResponse(
            status=head["status"],
            reason=_reason(head["status"]),
            headers=[(k, v) for k, v in head["headers"]],
            http_version="HTTP/1.1",
            chunks=chunks(),
            release=release,
        )

    async def __aenter__(self) -> AsyncTransportResponse:
        self._response = await self._open()
        return self._response

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._response is not None:
            await self._response.aclose()


class GatewayAsyncTransport(StdlibAsyncTransport):
    """lm15's async transport, sending chat completions through the runtime."""

    def stream(self, request):
        ch = _gateway_for(request)
        if ch is None:
            return super().stream(request)
        return _GatewayStream(ch, request)


def patch() -> None:
    lm15_transports.StdlibTransport = GatewayTransport
    lm15_transports.StdlibAsyncTransport = GatewayAsyncTransport
