"""lm15's HTTP transports, sending chat completions through the runtime.

See ``gateway`` for the why and the messages. The transports subclass
lm15's own, so a call that is not a chat completion, or made where no
connector to the runtime is open, goes out directly as before.
"""

from __future__ import annotations

import asyncio
import http
import logging
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
from .gateway import SCOPE_KEY, Connector, LmScope

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


def _gateway_for(request) -> Connector | None:
    """The connector to send ``request`` through, or None to call the service directly."""
    connector = gateway._connector
    if connector is None:
        return None
    path = request.url.split("?", 1)[0]
    if request.method.upper() != "POST" or not path.endswith("/chat/completions"):
        origin = path.rsplit("/", 1)[0]
        if origin not in _direct_logged:
            _direct_logged.add(origin)
            log.info("LM calls to %s go directly, not through the gateway: not an OpenAI chat-completions API", origin)
        return None
    return connector


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


def _lost(exc: BaseException, started: bool) -> GatewayError:
    """The error for a connection that failed mid-call."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        what = "stopped answering" if started else "did not answer in time"
        return GatewayError("timeout", f"the LM gateway {what}", True)
    return GatewayError("internal", f"the connection to the runtime's LM gateway broke: {exc}", True)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _is_stream(request) -> bool:
    return b'"stream": true' in request.body or b'"stream":true' in request.body


def _headers(head: dict) -> list:
    return [(k, v) for k, v in head["headers"]]


class GatewayTransport(StdlibTransport):
    """lm15's transport, sending chat completions through the runtime."""

    def stream(self, request) -> TransportResponse:
        connector = _gateway_for(request)
        if connector is None:
            return super().stream(request)
        scope = _scope()
        wait = _wait_time(scope)
        try:
            conn = connector.take()
        except OSError as exc:  # the runtime is gone
            raise _lost(exc, False) from exc
        try:
            conn.send(gateway.call_message(scope, request, _is_stream(request)))
            head = conn.recv(wait)
        except BaseException as exc:
            conn.close()  # the runtime drops the call with it
            if isinstance(exc, OSError):
                raise _lost(exc, False) from exc
            raise
        if head["type"] == "lm_error":
            connector.give(conn)
            _raise(head["error"])
        # Whether the answer was read to its end (the connection is then
        # ready for the next call; otherwise closing it cancels this one).
        done = "body" in head

        def chunks():
            nonlocal done
            if "body" in head:  # the whole body came with the head
                yield head["body"].encode()
                return
            while True:
                try:
                    msg = conn.recv(wait)
                except OSError as exc:
                    raise _lost(exc, True) from exc
                kind = msg["type"]
                if kind == "lm_data":
                    yield msg["data"].encode()
                elif kind == "lm_end":
                    done = True
                    return
                else:
                    done = True
                    _raise(msg["error"])

        def release(body_consumed: bool) -> None:
            if done:
                connector.give(conn)
            else:
                conn.close()

        return TransportResponse(
            status=head["status"],
            reason=_reason(head["status"]),
            headers=_headers(head),
            http_version="HTTP/1.1",
            chunks=chunks(),
            release=release,
        )


if sys.version_info >= (3, 11):

    async def _recv(conn: gateway.AsyncConnection, wait: float | None) -> dict:
        """The next message, within ``wait`` seconds. ``asyncio.timeout``
        bounds the wait without a task per message (``wait_for`` makes
        one), and this runs once per streamed piece."""
        async with asyncio.timeout(wait):
            return await conn.recv()

else:  # pragma: no cover - Python 3.10

    async def _recv(conn: gateway.AsyncConnection, wait: float | None) -> dict:
        return await asyncio.wait_for(conn.recv(), wait)


class _GatewayStream:
    """``async with transport.stream(request) as response`` through the runtime."""

    def __init__(self, connector: Connector, request):
        self._connector = connector
        self._request = request
        self._response = None

    def __await__(self):
        return self._open().__await__()

    async def _open(self) -> AsyncTransportResponse:
        scope = _scope()
        wait = _wait_time(scope)
        connector = self._connector
        try:
            conn = await connector.take_async()
        except OSError as exc:  # the runtime is gone
            raise _lost(exc, False) from exc
        try:
            await conn.send(gateway.call_message(scope, self._request, _is_stream(self._request)))
            head = await _recv(conn, wait)
        except BaseException as exc:
            conn.close()  # the runtime drops the call with it
            if isinstance(exc, (OSError, asyncio.TimeoutError)):
                raise _lost(exc, False) from exc
            raise
        if head["type"] == "lm_error":
            connector.give_async(conn)
            _raise(head["error"])
        done = "body" in head

        async def chunks():
            nonlocal done
            if "body" in head:  # the whole body came with the head
                yield head["body"].encode()
                return
            while True:
                try:
                    msg = await _recv(conn, wait)
                except (OSError, asyncio.TimeoutError) as exc:
                    raise _lost(exc, True) from exc
                kind = msg["type"]
                if kind == "lm_data":
                    yield msg["data"].encode()
                elif kind == "lm_end":
                    done = True
                    return
                else:
                    done = True
                    _raise(msg["error"])

        async def release(body_consumed: bool) -> None:
            if done:
                connector.give_async(conn)
            else:
                conn.close()

        return AsyncTransportResponse(
            status=head["status"],
            reason=_reason(head["status"]),
            headers=_headers(head),
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
        connector = _gateway_for(request)
        if connector is None:
            return super().stream(request)
        return _GatewayStream(connector, request)


def patch() -> None:
    lm15_transports.StdlibTransport = GatewayTransport
    lm15_transports.StdlibAsyncTransport = GatewayAsyncTransport
