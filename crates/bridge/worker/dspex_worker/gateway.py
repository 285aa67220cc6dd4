"""DSPy's LM calls through the runtime's LM gateway.

DSPy 3.4.1 calls OpenAI-compatible services through its native (lm15) engine,
which builds each HTTP request and reads each answer itself, and hands the
bytes to an HTTP transport. In a pool whose workers use the gateway
(``DSPEX_LM_GATEWAY=1``), that transport is replaced by one that sends every
chat-completions request to the runtime and reads the runtime's answer
(``lm_transport``); the runtime's gateway applies rate
limits, budgets, its shared response cache, retries and fallbacks, and
accounts tokens and cost, for native and Python calls alike.

Only the transport changes: DSPy still chooses its engine, builds the
request (so the service sees exactly what DSPy's own engine sends), parses
the answer, records usage, cost and history, and raises its own errors.

Each call travels on a connection of its own to the runtime: a unix socket
pair the worker makes, handing one end to the runtime over its *LM
connector* (a unix socket the runtime gave it at start, ``DSPEX_LM_FD``;
the end travels as ``SCM_RIGHTS``). Connections are kept and reused, one
call at a time each, so the thread (or coroutine) that makes a call writes
it and reads the answer itself — no other thread wakes up for it, as with
an HTTP connection of DSPy's own. Closing a connection cancels its call.

The messages, frames of the wire protocol in MessagePack (worker → runtime,
then runtime → worker)::

    lm_call   {id, request, url, headers, body, deadline_ms?, max_retries, stream}
    lm_head   {id, status, headers, body?}   (body: the whole answer, when it came whole)
    lm_data   {id, data}           (a piece of a streamed body)
    lm_end    {id}
    lm_error  {id, error}          (instead of an answer: the gateway refused or failed)

This module holds the worker's side of the messages and imports nothing of
DSPy (the frame loop uses it in every worker); ``lm_transport`` holds the
transports, imported when DSPy is.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
import threading
import weakref

from .protocol import DEFAULT_MAX_FRAME, MSGPACK, FrameReader, decode_payload, encode_frame, frame_length

#: The ``dspy.context`` key a request's LM scope travels under: DSPy copies
#: its settings into the threads of Evaluate, Parallel, BestOfN, ...
SCOPE_KEY = "dspex_lm_scope"

#: The pool sends its workers' LM calls through the runtime (its zygote
#: patches DSPy's transports at import).
ENABLED = os.environ.get("DSPEX_LM_GATEWAY", "0") == "1"

#: Idle connections kept for reuse; one returned beyond that is closed.
KEEP_IDLE = 64

_ids = itertools.count(1)


def connector_fd() -> int | None:
    """The LM connector's descriptor the runtime gave this worker, if any."""
    try:
        return int(os.environ["DSPEX_LM_FD"])
    except (KeyError, ValueError):
        return None


def lm_call_message(call_id, request_id, url, headers, body, deadline_ms, max_retries, stream) -> dict:
    """An ``lm_call``, keys in the wire order of the golden frames."""
    message = {"type": "lm_call", "id": call_id, "request": request_id, "url": url, "headers": headers, "body": body}
    if deadline_ms is not None:
        message["deadline_ms"] = deadline_ms
    message["max_retries"] = max_retries
    message["stream"] = stream
    return message


def call_message(scope: LmScope | None, request, stream: bool) -> dict:
    """The ``lm_call`` for one of lm15's transport requests."""
    return lm_call_message(
        next(_ids),
        scope.request_id if scope is not None else None,
        request.url,
        [[k, v] for k, v in request.headers],
        bytes(request.body).decode("utf-8", errors="replace"),
        scope.deadline_ms() if scope is not None else None,
        scope.max_retries if scope is not None else 0,
        stream,
    )


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


class Connection:
    """One LM connection, for threads: a call's messages out, its answer in."""

    __slots__ = ("sock", "reader")

    def __init__(self, sock: socket.socket, max_frame: int):
        self.sock = sock
        self.reader = FrameReader(sock.fileno(), max_frame, chunk=64 * 1024, read=sock.recv)

    def send(self, message: dict) -> None:
        self.sock.sendall(encode_frame(MSGPACK, message))

    def recv(self, timeout: float | None) -> dict:
        """The next message; ``TimeoutError`` after ``timeout`` seconds,
        ``ConnectionError`` if the runtime closed the connection."""
        self.sock.settimeout(timeout)
        frame = self.reader.read()
        if frame is None:
            raise ConnectionError("the runtime closed the LM connection")
        return frame[1]

    def close(self) -> None:
        self.sock.close()


class AsyncConnection:
    """One LM connection, for coroutines on one event loop."""

    __slots__ = ("reader", "writer", "max_frame", "sock")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int, sock):
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        self.sock = sock

    async def send(self, message: dict) -> None:
        self.writer.write(encode_frame(MSGPACK, message))
        await self.writer.drain()

    async def recv(self) -> dict:
        """The next message (the caller bounds the wait)."""
        try:
            header = await self.reader.readexactly(5)
            length, tag = frame_length(header, self.max_frame)
            payload = await self.reader.readexactly(length - 1)
        except asyncio.IncompleteReadError:
            raise ConnectionError("the runtime closed the LM connection") from None
        return decode_payload(tag, payload)

    def close(self) -> None:
        self.writer.close()


class Connector:
    """The worker's side of the LM connector: makes connections, keeps idle ones."""

    def __init__(self, fd: int, max_frame: int = DEFAULT_MAX_FRAME):
        self._sock = socket.socket(fileno=fd)
        self._max_frame = max_frame
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._idle_async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _pair(self) -> socket.socket:
        """A new connection: our end; the other is now the runtime's."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._sock, [b"c"], [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def take(self) -> Connection:
        """An idle connection, or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Connection(self._pair(), self._max_frame)

    def give(self, conn: Connection) -> None:
        """Return a connection whose call is over, for the next call."""
        with self._lock:
            if len(self._idle) < KEEP_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    async def take_async(self) -> AsyncConnection:
        """An idle connection of the running loop, or a new one."""
        loop = asyncio.get_running_loop()
        idle = self._idle_async.get(loop)
        if idle:
            return idle.pop()
        sock = self._pair()
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return AsyncConnection(reader, writer, self._max_frame, sock)

    def give_async(self, conn: AsyncConnection) -> None:
        """Return a coroutine's connection whose call is over (on its loop)."""
        idle = self._idle_async.setdefault(asyncio.get_running_loop(), [])
        if len(idle) < KEEP_IDLE:
            idle.append(conn)
        else:
            conn.close()

    def idle(self) -> int:
        """Idle connections kept for threads."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Close the connector and the idle connections (those of loops that
        still run are closed on their loop)."""
        with self._lock:
            idle, self._idle = self._idle, []
            loops, self._idle_async = list(self._idle_async.items()), weakref.WeakKeyDictionary()
        for conn in idle:
            conn.close()
        for loop, conns in loops:
            for conn in conns:
                if loop.is_closed():
                    conn.sock.close()
                else:
                    loop.call_soon_threadsafe(conn.close)
        self._sock.close()


_connector: Connector | None = None


def install(fd: int, max_frame: int = DEFAULT_MAX_FRAME) -> Connector:
    """Route LM calls through the runtime from now on, over the LM connector
    ``fd`` (the frame loop calls this when the runtime gave it one). DSPy's
    transports are patched now if DSPy is loaded, else when it is
    (``dspy_patches``)."""
    global _connector
    _connector = Connector(fd, max_frame)
    if "dspex_worker.dspy_patches" in sys.modules:
        patch_transports()
    return _connector


def uninstall() -> None:
    """Call LM services directly again."""
    global _connector
    if _connector is not None:
        _connector.close()
    _connector = None


def active() -> bool:
    """Whether LM calls go through the runtime."""
    return _connector is not None


def patch_transports() -> None:
    """Have lm15 build gateway-aware transports (it looks the class up when
    a router first builds its shared transport)."""
    from . import lm_transport

    lm_transport.patch()
