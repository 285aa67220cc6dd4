"""The worker process: handshake, frame loop, dispatch, shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib
import logging
import os
import platform
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from . import aio, gateway
from .protocol import (
    ARROW,
    AUTO,
    DEFAULT_MAX_FRAME,
    JSON,
    MSGPACK,
    FrameReader,
    FrameTooLarge,
    FrameWriter,
    ProtocolError,
    chunk_message,
    end_message,
    error_response,
    hello_message,
    ok_response,
    pong_message,
    reply_tag,
)
from .registry import CommandError, Context, DeadlineExceeded, classify, registry
from .spans import SpanRecorder

log = logging.getLogger("dspex_worker")
# The request a log line belongs to: per thread, and per task on the loop.
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("dspex_request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.request_id = _request_id.get()
        return True


def _setup_logging(worker_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter(f"%(levelname)s {worker_id} req=%(request_id)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("DSPEX_WORKER_LOG_LEVEL", "INFO").upper())
    # LiteLLM and httpx are chatty at INFO.
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_identity(worker_id: str) -> None:
    """Log under `worker_id` from now on (and report it to user code)."""
    os.environ["DSPEX_WORKER_ID"] = worker_id
    _setup_logging(worker_id)


class Worker:
    def __init__(
        self,
        req_fd: int,
        resp_fd: int,
        *,
        concurrency: int,
        max_frame: int,
        worker_id: str,
        spin_us: int = 0,
        lm_connector: int | None = None,
    ):
        self.reader = FrameReader(req_fd, max_frame=max_frame, spin_us=spin_us)
        self.writer = FrameWriter(resp_fd, threading.Lock(), max_frame=max_frame)
        self.concurrency = concurrency
        self.worker_id = worker_id
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dspex-req")
        #: The LM connector's descriptor: DSPy's LM calls go to the
        #: runtime's gateway through it (the pool's choice; see ``gateway``).
        self.lm_connector = lm_connector
        self.max_frame = max_frame
        self.in_flight: dict = {}
        self.lock = threading.Lock()

    # -- requests and their replies ------------------------------------------
    def _run(self, tag, cmd, ctx: Context, args: dict, stream: bool) -> None:
        token = _request_id.set(ctx.trace_id or ctx.request_id)
        self._span_start(cmd, ctx)
        try:
            ctx.check()
            result = cmd.call(ctx, args)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            self._fail(tag, cmd, ctx, stream, exc)
        else:
            self._succeed(tag, ctx, stream, result)
        finally:
            _request_id.reset(token)
            if not cmd.inline:
                with self.lock:
                    self.in_flight.pop(ctx.request_id, None)

    async def _run_on_loop(self, tag, cmd, ctx: Context, args: dict, stream: bool) -> None:
        """A request in its coroutine form, as a task on the worker's loop:
        ended by its deadline or a cancel at once, wherever it is waiting."""
        _request_id.set(ctx.trace_id or ctx.request_id)  # this task's own context
        self._span_start(cmd, ctx)
        try:
            ctx.check()
            work = aio.guard_exits(cmd.start_coroutine(ctx, args))
            left = ctx.time_left()
            result = await (work if left is None else asyncio.wait_for(work, left))
        except (asyncio.TimeoutError, asyncio.CancelledError) as ended:
            # The request's own cancel or deadline, when that is what ended
            # it; otherwise the program's timeout, or something inside that
            # gave up.
            try:
                ctx.check()
            except CommandError as reason:
                failure = reason
            else:
                failure = ended
                if isinstance(ended, asyncio.CancelledError):
                    failure = CommandError(f"request {ctx.request_id}: its task was cancelled on the worker's loop")
            self._fail(tag, cmd, ctx, stream, failure)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            self._fail(tag, cmd, ctx, stream, exc)
        else:
            self._succeed(tag, ctx, stream, result)
        finally:
            with self.lock:
                self.in_flight.pop(ctx.request_id, None)

    def _start_on_loop(self, tag, cmd, ctx: Context, args: dict, stream: bool) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run_on_loop(tag, cmd, ctx, args, stream))
        ctx.on_cancel(lambda: loop.call_soon_threadsafe(task.cancel))

    def _span_start(self, cmd, ctx: Context) -> None:
        if ctx.spans is not None:
            ctx.spans.start(
                "command",
                f"python {cmd.name}",
                {"dspex.op": cmd.name, "dspex.worker": self.worker_id, "otel.kind": "server"},
            )

    @staticmethod
    def _spans(ctx: Context, exc: BaseException | None = None) -> list | None:
        if ctx.spans is None:
            return None
        ctx.spans.finish("command", exc)
        return ctx.spans.take()

    def _succeed(self, tag, ctx: Context, stream: bool, result) -> None:
        spans = self._spans(ctx)
        if stream:
            self.writer.send(tag, end_message(ctx.request_id))
        self._send_result(tag, ctx.request_id, ok_response(ctx.request_id, result, spans))

    def _send_result(self, tag, rid, message) -> None:
        """Send a result; one that cannot be encoded or is over the frame
        limit becomes an error reply (the caller's error, not a hang)."""
        try:
            self.writer.send(tag, message)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot send the result of request %s: %s: %s", rid, type(exc).__name__, exc)
            kind = "invalid_request" if isinstance(exc, FrameTooLarge) else None
            failure = CommandError(f"the command's result cannot be sent: {type(exc).__name__}: {exc}", kind=kind)
            self.writer.send(MSGPACK if tag in (AUTO, ARROW) else tag, error_response(rid, classify(failure)))

    def _fail(self, tag, cmd, ctx: Context, stream: bool, exc: BaseException) -> None:
        if not isinstance(exc, CommandError):
            log.warning("command %s failed: %s: %s", cmd.name, type(exc).__name__, exc)
        error = classify(exc)
        spans = self._spans(ctx, exc)
        if stream:
            self.writer.send(tag, end_message(ctx.request_id))
        self.writer.send(tag, error_response(ctx.request_id, error, spans))

    def _send_error(self, tag, rid, exc: BaseException) -> None:
        self.writer.send(tag, error_response(rid, classify(exc)))

    def _inline(self, tag: int, cmd, msg: dict) -> None:
        """The fast path for cheap commands: run on this thread, no stream, no pool."""
        tag = reply_tag(tag, msg)
        rid = msg.get("id")
        args = msg.get("args") or {}
        deadline_ms = msg.get("deadline_ms")
        if deadline_ms is not None and deadline_ms <= 0:
            self._send_error(tag, rid, DeadlineExceeded(f"request {rid} ran past its deadline"))
            return
        ctx = Context(
            rid, msg.get("session"), msg.get("trace_id"), spans=SpanRecorder.for_request(msg.get("traceparent"))
        )
        self._span_start(cmd, ctx)
        try:
            if not isinstance(args, dict):
                raise CommandError("request args must be a map", kind="invalid_request")
            result = cmd.call(ctx, args)
        except BaseException as exc:  # noqa: BLE001
            self.writer.send(tag, error_response(rid, classify(exc), self._spans(ctx, exc)))
        else:
            self._send_result(tag, rid, ok_response(rid, result, self._spans(ctx)))

    def _request(self, tag: int, msg: dict) -> None:
        tag = reply_tag(tag, msg)
        rid = msg.get("id")
        op = msg.get("op")
        args = msg.get("args") or {}
        stream = bool(msg.get("stream"))
        deadline_ms = msg.get("deadline_ms")
        deadline = time.monotonic() + deadline_ms / 1000.0 if deadline_ms is not None else None
        try:
            cmd = registry.get(op)
            if not isinstance(args, dict):
                raise CommandError("request args must be a map", kind="invalid_request")
        except CommandError as exc:
            self._send_error(tag, rid, exc)
            return

        def emit(seq, data):
            self.writer.send(tag, chunk_message(rid, seq, data))

        ctx = Context(
            rid,
            session=msg.get("session"),
            trace_id=msg.get("trace_id"),
            deadline=deadline,
            stream=stream,
            emit=emit,
            spans=SpanRecorder.for_request(msg.get("traceparent")),
        )
        if cmd.inline:
            self._run(tag, cmd, ctx, args, stream)
            return
        with self.lock:
            self.in_flight[rid] = ctx
        if cmd.runs_on_loop(args):
            aio.event_loop().call_soon_threadsafe(self._start_on_loop, tag, cmd, ctx, args, stream)
        else:
            self.pool.submit(self._run, tag, cmd, ctx, args, stream)

    # -- main loop -----------------------------------------------------------
    def hello(self) -> dict:
        dspy_version = None
        if "dspy" in sys.modules:
            dspy_version = getattr(sys.modules["dspy"], "__version__", None)
        return hello_message(
            pid=os.getpid(),
            worker=self.worker_id,
            python=platform.python_version(),
            dspy=dspy_version,
            commands=registry.names(),
            max_concurrency=self.concurrency,
        )

    def serve(self) -> int:
        self.writer.send(JSON, self.hello())
        if self.lm_connector is not None:
            gateway.install(self.lm_connector, self.max_frame)
        while True:
            try:
                frame = self.reader.read()
            except ProtocolError as exc:
                log.error("protocol error from the runtime: %s", exc)
                return 3
            if frame is None:
                # The runtime is gone (or closed our request pipe): leave now,
                # even if a long DSPy call is still running on a pool thread.
                return 0
            tag, msg = frame
            kind = msg.get("type") if isinstance(msg, dict) else None
            try:
                code = self._dispatch(tag, kind, msg)
            except Exception as exc:  # noqa: BLE001 - a malformed message must not take the worker down unanswered
                log.error("malformed %r message from the runtime: %s: %s", kind, type(exc).__name__, exc)
                rid = msg.get("id") if kind == "request" else None
                if not isinstance(rid, (int, str)):
                    return 3
                with self.lock:
                    self.in_flight.pop(rid, None)
                failure = CommandError(f"malformed request: {type(exc).__name__}: {exc}", kind="invalid_request")
                self._send_error(reply_tag(tag, {}), rid, failure)
                continue
            if code is not None:
                return code

    def _dispatch(self, tag: int, kind, msg) -> int | None:
        """Act on one message; an exit code when the worker must stop."""
        if kind == "request":
            cmd = registry.lookup(msg.get("op"))
            if cmd is not None and cmd.inline and not msg.get("stream"):
                self._inline(tag, cmd, msg)
            else:
                self._request(tag, msg)
                self.reader.block_next()
        elif kind == "ping":
            self.writer.send(tag, pong_message(msg.get("seq"), len(self.in_flight)))
        elif kind == "cancel":
            with self.lock:
                ctx = self.in_flight.get(msg.get("id"))
            if ctx is not None:
                ctx.cancel()
        elif kind == "shutdown":
            self._drain(float(msg.get("grace_ms", 5000)) / 1000.0)
            return 0
        else:
            log.error("unexpected message from the runtime: %r", kind)
            return 3
        return None

    def _drain(self, grace: float) -> None:
        end = time.monotonic() + grace
        while time.monotonic() < end:
            with self.lock:
                if not self.in_flight:
                    return
            time.sleep(0.01)
        log.warning("shutting down with %d requests still running", len(self.in_flight))


def _load_user_modules() -> None:
    names = [m.strip() for m in os.environ.get("DSPEX_WORKER_MODULES", "").split(",") if m.strip()]
    for name in names:
        importlib.import_module(name)


def _warm_up() -> None:
    """Import DSPy and exercise the signature machinery once, before `hello`."""
    from . import dspy_commands, sessions  # noqa: F401  (imports dspy, registers dspy.* and session.* commands)

    dspy_commands.warm_up()


def _serve_on_fds() -> int:
    """Serve on the protocol pipes the environment names; the exit code."""
    # A request's work spans threads (the request pool, the stream loop,
    # DSPy's own helpers, the frame writer). With CPython's default 5 ms
    # switch interval, a thread with a chunk ready can wait that long for the
    # GIL behind one that is parsing; 0.5 ms bounds that wait.
    sys.setswitchinterval(0.0005)
    worker_id = os.environ.get("DSPEX_WORKER_ID", f"worker:{os.getpid()}")
    _setup_logging(worker_id)
    try:
        req_fd = int(os.environ["DSPEX_REQ_FD"])
        resp_fd = int(os.environ["DSPEX_RESP_FD"])
    except (KeyError, ValueError):
        print("dspex_worker: DSPEX_REQ_FD and DSPEX_RESP_FD must name the protocol pipes", file=sys.stderr)
        return 2
    worker = Worker(
        req_fd,
        resp_fd,
        concurrency=int(os.environ.get("DSPEX_WORKER_CONCURRENCY", "4")),
        max_frame=int(os.environ.get("DSPEX_MAX_FRAME", str(DEFAULT_MAX_FRAME))),
        worker_id=worker_id,
        spin_us=int(os.environ.get("DSPEX_WORKER_SPIN_US", "0")),
        lm_connector=gateway.connector_fd(),
    )
    return worker.serve()


def serve_forked() -> int:
    """A worker forked from a zygote (``zygote.py``): DSPy and the user
    modules are already imported; serve on the pipes the zygote handed over."""
    return _serve_on_fds()


def prepare() -> None:
    """What a worker does before it can serve, and a zygote before it can
    fork: register the commands, import and warm up DSPy (unless
    ``DSPEX_WORKER_PRELOAD_DSPY=0``), import the user modules. A failure is
    printed and ends the process with code 4 (the runtime shows the text)."""
    # Importing DSPy allocates a few hundred thousand objects and garbage
    # cycles are rare among them: the collector's passes over a growing heap
    # cost a tenth of the import. It runs again once the imports are done
    # (a zygote keeps it off until it has frozen the heap).
    collecting = gc.isenabled()
    gc.disable()
    try:
        from . import builtins  # noqa: F401  (registers the built-in commands)

        if os.environ.get("DSPEX_WORKER_PRELOAD_DSPY", "1") != "0":
            _warm_up()
        _load_user_modules()
    except Exception:  # noqa: BLE001 - report and exit: the runtime shows this text
        traceback.print_exc()
        sys.exit(4)
    finally:
        if collecting:
            gc.enable()


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if "DSPEX_REQ_FD" not in os.environ or "DSPEX_RESP_FD" not in os.environ:
        print("dspex_worker: DSPEX_REQ_FD and DSPEX_RESP_FD must name the protocol pipes", file=sys.stderr)
        sys.exit(2)
    prepare()
    code = _serve_on_fds()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
