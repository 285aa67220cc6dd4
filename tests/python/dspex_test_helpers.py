"""Python helpers the Rust integration tests load into workers.

Registered as a user module (DSPEX_WORKER_MODULES=dspex_test_helpers): it adds
a user command, a ReAct tool and a metric.
"""

import os

from dspex_worker import command


@command("test.shout")
def shout(ctx, text: str):
    """A user-registered command."""
    return {"text": text.upper(), "session": ctx.session, "trace": ctx.trace_id}


@command("test.env")
def env(ctx, names: list):
    """Selected environment variables, as the worker sees them."""
    return {n: os.environ.get(n) for n in names}


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def exact_answer(example, pred, trace=None):
    return str(example.answer).strip() == str(pred.answer).strip()


def short_answer(args, pred) -> float:
    """A BestOfN/Refine reward: 1.0 for an answer of at most three words."""
    return 1.0 if len(str(pred.answer).split()) <= 3 else 0.0


@command("test.floats")
def floats(ctx, n: int):
    """A reply of `n` floats (i / 2): large and columnar."""
    return [i / 2 for i in range(n)]


# Hostile commands for the resource-exhaustion tests (tests/integration/exhaustion.rs).


@command("test.regex_spin")
def regex_spin(ctx, n: int = 40):
    """Spin in C with the GIL held (catastrophic backtracking): ignores
    cancel, deadlines and heartbeats until the runtime kills the process."""
    import re

    return {"matched": re.match(r"(a+)+$", "a" * n + "b") is not None}


@command("test.flood")
def flood(ctx, megabytes: int = 64, newlines: bool = False):
    """Write garbage to stdout and stderr as fast as the pipes take it."""
    chunk = os.urandom(64 * 1024)
    if not newlines:
        chunk = chunk.replace(b"\n", b"x")
    written = 0
    while written < megabytes * 1024 * 1024:
        os.write(1, chunk)
        os.write(2, chunk)
        written += len(chunk)
    return {"written": written}


@command("test.garbage_frames")
def garbage_frames(ctx, megabytes: int = 4):
    """Write garbage on the response pipe, where only frames belong."""
    fd = int(os.environ["DSPEX_RESP_FD"])
    junk = os.urandom(1024 * 1024)
    for _ in range(megabytes):
        os.write(fd, junk)
    return {"unreachable": True}


@command("test.big")
def big(ctx, megabytes: int = 1):
    """A result of `megabytes` MiB (frame-limit tests)."""
    return {"text": "z" * (megabytes * 1024 * 1024)}


@command("test.lm_connections")
def lm_connections(ctx, n: int):
    """Open ``n`` LM connections to the runtime and keep them; how many the
    runtime refused (closed at once)."""
    import select
    import time

    from dspex_worker import gateway

    held = [gateway._connector._pair() for _ in range(n)]
    # A refused connection reads end of input; a served one has nothing to
    # read. The runtime takes them in order: wait until the count settles.
    refused, deadline = 0, time.monotonic() + 10
    while time.monotonic() < deadline:
        ready, _, _ = select.select(held, [], [], 0.5)
        if not ready:
            break
        for s in ready:
            held.remove(s)
            refused += s.recv(1) == b""
            s.close()
    for s in held:
        s.close()
    return {"refused": refused}
