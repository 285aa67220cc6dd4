"""Built-in commands every worker has: health, introspection and test helpers."""

from __future__ import annotations

import os
import sys
import time

from .registry import command, registry


@command("noop", inline=True)
def noop(ctx):
    """Do nothing (round-trip measurements)."""
    return None


@command("echo", inline=True)
def echo(ctx, **payload):
    """Return the arguments unchanged."""
    return payload


@command("commands", inline=True)
def commands(ctx):
    """The names of the registered commands."""
    return registry.names()


@command("identify", inline=True)
def identify(ctx, name: str):
    """Take a new worker name (a standby worker adopted by a pool slot)."""
    from .server import set_identity

    set_identity(str(name))
    return {"name": name}


@command("info")
def info(ctx):
    """Process facts: pid, process group, limits, thread caps, selected environment."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    keys = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "DSPEX_WORKER_ID"]
    return {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "ppid": os.getppid(),
        "address_space_limit": None if soft == resource.RLIM_INFINITY else soft,
        "nice": os.nice(0),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "env": {k: os.environ.get(k) for k in keys},
        "python": sys.version.split()[0],
    }


@command("sleep")
def sleep(ctx, seconds: float = 0.0, check: bool = True):
    """Sleep (in small steps that notice cancellation and the deadline, if `check`)."""
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        if check:
            ctx.check()
        time.sleep(min(0.01, max(0.0, end - time.monotonic())))
    return {"slept": seconds}


@command("print")
def print_lines(ctx, lines: int = 1, text: str = "noise", stream: str = "stdout"):
    """Write text to stdout or stderr (the protocol must not notice)."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    for i in range(int(lines)):
        print(f"{text} {i}", file=out, flush=True)
    # A partial line without a newline, too.
    out.write(text)
    out.flush()
    return {"printed": lines}


@command("fail")
def fail(ctx, message: str = "boom", kind: str | None = None):
    """Raise an exception (error classification tests)."""
    if kind:
        from .registry import CommandError

        raise CommandError(message, kind=kind)
    raise ValueError(message)


@command("crash")
def crash(ctx, code: int = 1, after: float = 0.0):
    """Exit the process abruptly (fault tests)."""
    time.sleep(float(after))
    os._exit(int(code))


@command("count")
def count(ctx, n: int = 3, delay: float = 0.0):
    """Stream the numbers 1..n as chunks, then return n."""
    for i in range(1, int(n) + 1):
        ctx.check()
        ctx.emit({"i": i})
        if delay:
            time.sleep(float(delay))
    return {"n": n}


@command("alloc")
def alloc(ctx, megabytes: int = 1):
    """Allocate memory (address-space limit tests)."""
    block = bytearray(int(megabytes) * 1024 * 1024)
    return {"allocated": len(block)}
