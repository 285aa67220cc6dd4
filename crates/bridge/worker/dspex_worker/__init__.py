"""dspex_worker: the Python side of the dspex runtime.

A worker process reads request frames from one pipe and writes response frames
to another (their descriptors are given in ``DSPEX_REQ_FD`` / ``DSPEX_RESP_FD``),
runs commands from a registry on a thread pool, and never writes frames to
stdout or stderr, so ``print()`` in user code cannot corrupt the protocol.

User commands are plain functions registered with :func:`command`::

    from dspex_worker import command

    @command("shout")
    def shout(ctx, text: str) -> dict:
        return {"text": text.upper()}

A command may also have a coroutine form, run as a task on the worker's
event loop for the requests its predicate accepts (the others keep the
thread path); a ``cancel`` or the deadline ends it at once::

    import asyncio, time
    from dspex_worker import command, on_loop

    @command("nap")
    def nap(ctx, seconds: float, on_loop: bool = False) -> dict:
        time.sleep(seconds)  # a thread of the pool waits
        return {"slept": seconds}

    @on_loop("nap", when=lambda args: args.get("on_loop", False))
    async def nap_on_loop(ctx, seconds: float, on_loop: bool = False) -> dict:
        await asyncio.sleep(seconds)  # no thread waits
        return {"slept": seconds}

Modules listed in ``DSPEX_WORKER_MODULES`` (comma separated) are imported at
start-up, and their commands are announced in the worker's ``hello``.
"""

from .protocol import PROTOCOL_VERSION
from .registry import Context, command, on_loop, registry

__all__ = ["Context", "command", "on_loop", "registry", "PROTOCOL_VERSION"]

__version__ = "0.1.0"
