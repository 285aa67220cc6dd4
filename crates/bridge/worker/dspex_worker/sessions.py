"""Per-session objects: programs a session defined, kept in this worker.

The runtime's session actor owns the session's state (program specs, demos,
history) and pins the session to one worker. These commands keep built DSPy
modules warm in that worker; when the worker dies, the runtime replays its
definitions on another worker with ``session.define`` and carries on.
"""

from __future__ import annotations

import threading
import time

from .registry import InvalidArguments, NotFound, command

_lock = threading.Lock()
_sessions: dict[str, dict] = {}


def _session(ctx, create: bool = False) -> dict:
    if not ctx.session:
        raise InvalidArguments("session commands need the request's `session`")
    with _lock:
        s = _sessions.get(ctx.session)
        if s is None:
            if not create:
                raise NotFound(f"session {ctx.session!r} has no state in this worker")
            s = _sessions[ctx.session] = {"programs": {}}
        return s


@command("session.define")
def define(ctx, name: str, program: dict):
    """Build a program and keep it under `name` for this session."""
    from .programs import build_program

    module = build_program(program)
    _session(ctx, create=True)["programs"][name] = (module, program)
    return {"defined": name}


@command("session.run")
def run(ctx, name: str, inputs: dict, lm: dict | None = None):
    """Run a program this session defined."""
    from .lms import lm_context
    from .values import coerce_inputs, run_reply

    started = time.perf_counter()
    programs = _session(ctx)["programs"]
    if name not in programs:
        raise NotFound(f"session {ctx.session!r} defines no program {name!r}")
    module, spec = programs[name]
    inputs = coerce_inputs(module, inputs)
    with lm_context(ctx, lm, spec.get("adapter")) as report:
        pred = module(**inputs)
    return run_reply(pred, started, report)


@command("session.state")
def state(ctx, name: str):
    """The saved state of a program this session defined."""
    from .programs import dump_state

    programs = _session(ctx)["programs"]
    if name not in programs:
        raise NotFound(f"session {ctx.session!r} defines no program {name!r}")
    return {"state": dump_state(programs[name][0])}


@command("session.programs", inline=True)
def programs(ctx):
    """Names of the programs this session defined here."""
    try:
        return sorted(_session(ctx)["programs"])
    except NotFound:
        return []


@command("session.drop", inline=True)
def drop(ctx):
    """Forget this session's objects."""
    with _lock:
        existed = _sessions.pop(ctx.session or "", None) is not None
    return {"dropped": existed}
