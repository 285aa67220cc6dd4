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
