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
CPU-only steps whose trip to a thread and back would cost more than they do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()
_in_place: set = set()


def run_in_place(functions) -> None:
    """Have ``asyncio.to_thread(f, ...)`` on the worker's loop run each of
    ``functions`` right there, on the loop, instead of on a thread. Only for
    short steps that never block: the loop serves every request meanwhile."""
    _in_place.update(functions)


class LoopExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: runs the functions in ``in_place`` where
    they are submitted and everything else on threads.

    ``asyncio.to_thread(f, ...)`` submits ``partial(context.run, f, ...)``;
    running that here keeps the copied context, and the awaiting coroutine
    resumes on the loop's next turn.
    """

    def __init__(self, in_place):
        super().__init__(thread_name_prefix="dspex-loop-io")
        self.in_place = in_place

    def runs_in_place(self, fn) -> bool:
        if not isinstance(fn, functools.partial) or not fn.args:
            return False
        target = fn.args[0]
        return getattr(target, "__func__", target) in self.in_place

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
    """The worker's loop, started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(LoopExecutor(_in_place))
            threading.Thread(target=loop.run_forever, name="dspex-loop", daemon=True).start()
            _loop = loop
        return _loop


async def shielded(coroutine):
    """Await ``coroutine``; a ``SystemExit`` or ``KeyboardInterrupt`` it raises
    becomes a ``RuntimeError``: out of a task they would stop the loop, and
    every request on it."""
    try:
        return await coroutine
    except (KeyboardInterrupt, SystemExit) as exc:
        raise RuntimeError(f"the program raised {type(exc).__name__}") from exc
