"""The command registry, the per-request context, and classified errors."""

from __future__ import annotations

import functools
import inspect
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class CommandError(Exception):
    """An error with a kind from the runtime's taxonomy and retry advice."""

    kind = "python"
    retryable = False

    def __init__(self, message: str, *, kind: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if retryable is not None:
            self.retryable = retryable


class InvalidArguments(CommandError):
    kind = "invalid_request"


class NotFound(CommandError):
    kind = "not_found"


class Unsupported(CommandError):
    kind = "unsupported"


class Cancelled(CommandError):
    kind = "cancelled"


class DeadlineExceeded(CommandError):
    kind = "timeout"
    retryable = True


class Context:
    """What a command knows about the request it serves."""

    __slots__ = (
        "request_id",
        "session",
        "trace_id",
        "spans",
        "deadline",
        "stream",
        "_cancelled",
        "_emit",
        "_seq",
        "_on_cancel",
    )

    def __init__(self, request_id, session=None, trace_id=None, deadline=None, stream=False, emit=None, spans=None):
        self.request_id = request_id
        self.session = session
        self.trace_id = trace_id
        #: The request's ``spans.SpanRecorder`` when the runtime traces it, else None.
        self.spans = spans
        #: ``time.monotonic()`` value after which the caller has given up, or None.
        self.deadline = deadline
        self.stream = stream
        self._cancelled = None
        self._emit = emit
        self._seq = 0
        self._on_cancel = None

    @property
    def cancelled(self) -> threading.Event:
        """Set when the runtime cancels the request (created on first use: most requests never need it)."""
        if self._cancelled is None:
            self._cancelled = threading.Event()
        return self._cancelled

    def cancel(self) -> None:
        """The runtime cancelled the request: set ``cancelled`` and call the
        hook ``on_cancel`` set (a task on the loop is cancelled at once)."""
        self.cancelled.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the request is cancelled (now, if it already was)."""
        self._on_cancel = hook
        if self._cancelled is not None and self._cancelled.is_set():
            hook()

    def time_left(self) -> float | None:
        """Seconds until the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise if the request was cancelled or its deadline passed."""
        if self._cancelled is not None and self._cancelled.is_set():
            raise Cancelled(f"request {self.request_id} was cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(f"request {self.request_id} ran past its deadline")

    def emit(self, data: Any) -> None:
        """Send a stream chunk (ignored when the caller did not ask for a stream)."""
        if self.stream and self._emit is not None:
            self._seq += 1
            self._emit(self._seq, data)


def _gateway_cause(exc: BaseException):
    """The LM gateway's error among ``exc``'s causes, if any."""
    seen = 0
    while exc is not None and seen < 16:
        if hasattr(exc, "dspex_kind"):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def classify(exc: BaseException) -> dict:
    """The wire form of an exception: type, kind, message, traceback, retryable."""
    kind, retryable = "python", False
    refused = _gateway_cause(exc)
    if isinstance(exc, CommandError):
        kind, retryable = exc.kind, exc.retryable
    elif refused is not None:
        # The runtime's LM gateway refused or failed the call (a rate limit,
        # a budget, ...): its kind, through DSPy's wrapping of transport errors.
        kind, retryable = refused.dspex_kind, refused.dspex_retryable
    else:
        name = type(exc).__name__
        mro = {c.__name__ for c in type(exc).__mro__}
        if "AdapterParseError" in mro:
            kind = "parse"
        elif "ContextWindowExceededError" in mro:
            kind = "lm"
        elif "Timeout" in name or "TimeoutError" in mro:
            kind, retryable = "timeout", True
        elif "RateLimit" in name or "LMRateLimitError" in mro or "LMServerError" in mro:
            kind, retryable = "lm", True
        elif "Connection" in name or "LMTransportError" in mro:
            kind, retryable = "transport", True
        elif "LMError" in mro or "APIError" in mro:
            kind = "lm"
    return {
        "type": type(exc).__name__,
        "kind": kind,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "retryable": retryable,
    }


@dataclass
class Command:
    name: str
    func: Callable[..., Any]
    #: Run on the reader thread (cheap commands only): no thread hand-off.
    inline: bool = False
    doc: str = ""
    signature: inspect.Signature | None = field(default=None, repr=False)
    #: The command's coroutine form (``on_loop``), its signature, and which
    #: requests take it.
    coroutine: Callable[..., Any] | None = field(default=None, repr=False)
    coroutine_signature: inspect.Signature | None = field(default=None, repr=False)
    takes_loop: Callable[[dict], bool] | None = field(default=None, repr=False)

    def runs_on_loop(self, args: dict) -> bool:
        """Whether this request runs as a task on the worker's loop."""
        if self.coroutine is None or self.takes_loop is None:
            return False
        try:
            return bool(self.takes_loop(args))
        except Exception:  # noqa: BLE001 - a malformed request: the thread path reports it
            return False

    def start_coroutine(self, ctx: Context, args: dict):
        """The coroutine for this request (arguments checked as for ``call``)."""
        self._check(self.coroutine_signature, ctx, args)
        return self.coroutine(ctx, **args)

    def call(self, ctx: Context, args: dict) -> Any:
        self._check(self.signature, ctx, args)
        return self.func(ctx, **args)

    def _check(self, signature: inspect.Signature | None, ctx: Context, args: dict) -> None:
        """Arguments that do not fit the command are the caller's error, not a crash.
        (No arguments for a command that needs none is the common, cheap case.)"""
        if signature is not None and (args or _requires_arguments(signature)):
            try:
                signature.bind(ctx, **args)
            except TypeError as exc:
                raise InvalidArguments(f"{self.name}: {exc}") from exc


def _signature(func) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


@functools.cache
def _requires_arguments(signature: inspect.Signature) -> bool:
    """Whether a command (``f(ctx, ...)``) has a parameter without a default."""
    params = list(signature.parameters.values())[1:]
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)


class Registry:
    def __init__(self):
        self._commands: dict[str, Command] = {}

    def register(self, name: str, func: Callable[..., Any], *, inline: bool = False) -> Command:
        doc = (inspect.getdoc(func) or "").split("\n", 1)[0]
        cmd = Command(name, func, inline=inline, doc=doc, signature=_signature(func))
        self._commands[name] = cmd
        return cmd

    def get(self, name: str) -> Command:
        try:
            return self._commands[name]
        except KeyError:
            raise NotFound(f"no command {name!r} in this worker") from None

    def lookup(self, name):
        """The command, or None."""
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)


registry = Registry()


def on_loop(name: str, when: Callable[[dict], bool]):
    """Give the registered command ``name`` a coroutine form ``async f(ctx,
    **args)`` (same arguments), run as a task on the worker's event loop for
    the requests ``when(args)`` accepts; the others keep the thread path."""

    def wrap(func):
        cmd = registry.get(name)
        if cmd.inline:
            raise ValueError(f"{name} runs on the frame reader (inline): it cannot have a loop form")
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"the loop form of {name} must be an `async def` function")
        cmd.coroutine, cmd.coroutine_signature, cmd.takes_loop = func, _signature(func), when
        return func

    return wrap


def command(name: str | None = None, *, inline: bool = False):
    """Register a function ``f(ctx, **args)`` as a worker command."""

    def wrap(func):
        registry.register(name or func.__name__, func, inline=inline)
        return func

    return wrap
