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
