"""The worker's event loop: one long-lived asyncio loop on its own thread.

Commands with a coroutine form (``registry.on_loop``: streams of async DSPy
programs) run here as tasks, and the streams of synchronous programs pump
their chunks here. A task is started straight from the frame reader, sends
its chunks and its response from here (no thread in between), and is
cancelled at once by a ``cancel`` or its deadline, wherever it waits. HTTP
clients keep their connections across requests (an async client is tied to
the loop that made it).

Blocking work must not run on the loop: ``asyncio.to_thread`` sends it to
threads as usual, except the functions named with ``run_in_place`` — short
CPU-only steps whose trip to a thread and back would cost more than they do
(each may come with a test of its arguments: in place only when it passes).
A request's thread waits for a coroutine on the loop with ``await_on_loop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading

from .registry import CommandError

_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()
# Function -> test of its call's arguments (None: always in place).
_in_place: dict = {}


def _always(*args, **kwargs) -> bool:
    return True


def run_in_place(functions: dict) -> None:
    """Have ``asyncio.to_thread(f, *args, **kwargs)`` on the worker's loop run
    ``f`` right there, on the loop, instead of on a thread, when
    ``functions[f](*args, **kwargs)`` is true (or always, for None). Only for
    short steps that never block: the loop serves every request meanwhile.
    A bound method is named by its function (``Class.method``)."""
    _in_place.update({f: test or _always for f, test in functions.items()})


class LoopExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: runs the calls ``in_place`` accepts where
    they are submitted and everything else on threads.

    ``asyncio.to_thread(f, ...)`` submits ``partial(context.run, f, ...)``;
    running that here keeps the copied context, and the awaiting coroutine
    resumes on the loop's next turn.
    """

    def __init__(self, in_place: dict):
        super().__init__(thread_name_prefix="dspex-loop-io")
        self.in_place = in_place

    def runs_in_place(self, fn) -> bool:
        # Only the shape `asyncio.to_thread` submits: partial(context.run, f, ...).
        if not isinstance(fn, functools.partial) or not fn.args:
            return False
        if not isinstance(getattr(fn.func, "__self__", None), contextvars.Context):
            return False
        target, *args = fn.args
        test = self.in_place.get(getattr(target, "__func__", target))
        if test is None:
            return False
        self_arg = getattr(target, "__self__", None)
        args = [self_arg, *args] if self_arg is not None else args
        try:
            # `fn.func` is the call's `context.run`: the test sees the
            # context the step would run in (DSPy keeps call options there).
            return bool(fn.func(test, *args, **fn.keywords))
        except Exception:  # noqa: BLE001 - a test that cannot tell: the thread is always safe
            return False

    def submit(self, fn, /, *args, **kwargs):
        if not self.runs_in_place(fn):
            return super().submit(fn, *args, **kwargs)
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
            future.set_exception(exc)
        return future


def event_loop() -> asyncio.AbstractEventLoop:
    """The worker's loop, started on first use (and again if its thread died)."""
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop.is_closed() or _loop_thread is None or not _loop_thread.is_alive():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(LoopExecutor(_in_place))
            thread = threading.Thread(target=loop.run_forever, name="dspex-loop", daemon=True)
            thread.start()
            _loop, _loop_thread = loop, thread
        return _loop


async def guard_exits(coroutine):
    """Await ``coroutine``; a ``SystemExit`` or ``KeyboardInterrupt`` it raises
    becomes a ``RuntimeError``: out of a task they would stop the loop, and
    every request on it."""
    try:
        return await coroutine
    except (KeyboardInterrupt, SystemExit) as exc:
        raise RuntimeError(f"the program raised {type(exc).__name__}") from exc


def await_on_loop(ctx, make_coroutine):
    """From a request's thread: run ``make_coroutine()`` on the worker's loop,
    in this thread's context (the request's DSPy settings and id), and wait
    for its result here. The request's cancel and deadline are checked every
    50 ms; when the request ends first, the coroutine is cancelled."""
    loop = event_loop()
    context = contextvars.copy_context()
    done: concurrent.futures.Future = concurrent.futures.Future()
    tasks: list = []

    def settle(task):
        if task.cancelled():
            # Not by this request (its cancel ends the wait below first).
            done.set_exception(CommandError("the program's task was cancelled on the worker's loop"))
        elif task.exception() is not None:
            done.set_exception(task.exception())
        else:
            done.set_result(task.result())

    def start():
        try:
            task = loop.create_task(guard_exits(make_coroutine()), context=context)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            done.set_exception(exc)
            return
        task.add_done_callback(settle)
        tasks.append(task)

    loop.call_soon_threadsafe(start)
    try:
        # Waited on, not `done.result(timeout=…)`: that raises TimeoutError
        # for a wait that ran out and for a program that raised one alike.
        while not concurrent.futures.wait([done], timeout=0.05).done:
            ctx.check()
        return done.result()
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks if not t.done()])
