"""The LMs of requests, built from their specs and shared, and the DSPy
settings a request runs under.

LMs are ``{"model", "base_url", "api_key", "temperature", "max_tokens",
"num_retries", "cache"}`` or ``{"dummy": [answers...]}`` for DSPy's DummyLM.

Every request sets its LM with ``dspy.context`` (never ``dspy.configure``,
which only the first configuring thread may call), so requests on different
threads never see each other's settings.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os

import dspy
from dspy.adapters.json_adapter import JSONAdapter
from dspy.utils.callback import BaseCallback

from . import (
    dspy_patches,  # noqa: F401 - the LMs built here call the patched DSPy
    gateway,
)
from .lru import LruCache
from .programs import adapter_for
from .registry import InvalidArguments

_lms = LruCache(64)

# The truncation warnings of the request running in this thread or task:
# DSPy logs "LM response was truncated ..." on `dspy.clients.lm` when a
# completion stops at its length limit (finish_reason "length"), and says so
# nowhere else. The filter counts each warning against the request whose
# context logged it, and lets the warning through to the worker's stderr.
_lm_report: contextvars.ContextVar[LmReport | None] = contextvars.ContextVar("dspex_lm_report", default=None)


class LmReport:
    """What DSPy's LM calls of one request said besides their answers."""

    def __init__(self):
        self.truncated = 0


class _TruncationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        report = _lm_report.get()
        if report is not None and record.getMessage().startswith("LM response was truncated"):
            report.truncated += 1
        return True


logging.getLogger("dspy.clients.lm").addFilter(_TruncationFilter())


def timeout_step(time_left: float | None) -> float | None:
    """The LM timeout for a request with ``time_left`` seconds: rounded up to
    a whole second (a tenth below one second).

    DSPy keeps one HTTP engine (and connection pool) per distinct client
    setting, the timeout included, for the life of an LM: a timeout per
    request would open a new connection for every call and keep every engine.
    Requests of one kind reach the worker with nearly the same time left, so
    they share one step. Rounding up never cuts a call short, and overshoots
    the deadline by under a second: less than the runtime's `hung_grace`
    (2 s by default), after which it would take the worker for hung.
    """
    if time_left is None:
        return None
    if time_left < 1.0:
        return max(math.ceil(time_left * 10.0), 1) / 10.0
    return float(math.ceil(time_left))


def build_lm(spec: dict | None, ctx=None):
    """The LM for a spec, shared by every request with the same spec and
    timeout step (see ``timeout_step``; the least recently used of 64 LMs go
    first); never changed once built, so concurrent requests cannot see each
    other's settings."""
    if spec is None:
        raise InvalidArguments("no LM given: pass `lm` ({model, base_url, api_key} or {dummy: [...]})")
    if "dummy" in spec:
        answers = spec["dummy"]
        adapter = JSONAdapter() if spec.get("adapter") == "json" else None
        return dspy.utils.DummyLM(answers, follow_examples=bool(spec.get("follow_examples")), adapter=adapter)
    model = spec.get("model")
    if not model:
        raise InvalidArguments("LM spec needs `model`")
    if "/" not in model:
        model = f"openai/{model}"
    # Through the gateway, retries are the gateway's (with the spec's count):
    # DSPy retrying too would multiply them.
    retries = 0 if gateway.active() else int(spec.get("num_retries", 0))
    kwargs = {"cache": bool(spec.get("cache", False)), "num_retries": retries}
    for key in ("temperature", "max_tokens"):
        if spec.get(key) is not None:
            kwargs[key] = spec[key]
    if spec.get("base_url"):
        kwargs["api_base"] = spec["base_url"]
    kwargs["api_key"] = spec.get("api_key") or os.environ.get("OPENAI_API_KEY") or "unused"
    # The request's remaining time bounds the LM call.
    timeout = timeout_step(ctx.time_left() if ctx is not None else None)
    if timeout is not None:
        kwargs["timeout"] = timeout
    key = json.dumps([model, sorted(kwargs.items())], default=str)
    return _lms.get_or_build(key, lambda: dspy.LM(model, **kwargs))


@contextlib.contextmanager
def lm_context(ctx, lm_spec, adapter: str | None = None, **extra):
    """DSPy settings for one request; yields the request's ``LmReport``.
    DSPy's call history is off: LMs and built programs are shared by every
    request of the worker, and the history DSPy appends to them (prompts and
    replies, up to 10 000 per object) would grow without use and show one
    request's data to the next. Optimizers, which may read it, turn it back
    on for their own run."""
    lm = build_lm(lm_spec, ctx)
    settings = {"lm": lm, "adapter": adapter_for(adapter), "track_usage": True, "disable_history": True, **extra}
    if gateway.active():
        # Travels with DSPy's settings into the threads it starts.
        retries = int((lm_spec or {}).get("num_retries", 0)) if isinstance(lm_spec, dict) else 0
        settings[gateway.SCOPE_KEY] = gateway.LmScope(ctx, retries)
    recorder = getattr(ctx, "spans", None)
    if recorder is not None:
        settings["callbacks"] = [*dspy.settings.get("callbacks", []), SpanCallback(recorder)]
    report = LmReport()
    token = _lm_report.set(report)
    try:
        with dspy.context(**settings):
            yield report
    finally:
        _lm_report.reset(token)


class SpanCallback(BaseCallback):
    """Records DSPy's modules, LM calls and tools of one request as spans."""

    def __init__(self, recorder):
        self.recorder = recorder

    def on_module_start(self, call_id, instance, inputs):
        self.recorder.start(call_id, f"dspy.{type(instance).__name__}", {"dspy.module": type(instance).__name__})

    def on_module_end(self, call_id, outputs, exception=None):
        self.recorder.finish(call_id, exception)

    def on_lm_start(self, call_id, instance, inputs):
        model = getattr(instance, "model", None) or type(instance).__name__
        self.recorder.start(
            call_id,
            f"lm {model}",
            {"gen_ai.operation.name": "chat", "gen_ai.request.model": model, "dspy.lm": type(instance).__name__},
        )

    def on_lm_end(self, call_id, outputs, exception=None):
        self.recorder.finish(call_id, exception)

    def on_tool_start(self, call_id, instance, inputs):
        self.recorder.start(call_id, f"tool {getattr(instance, 'name', '?')}")

    def on_tool_end(self, call_id, outputs, exception=None):
        self.recorder.finish(call_id, exception)
