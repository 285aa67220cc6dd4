"""Tools and reward functions the DSPy command tests import by path."""


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def always_one(args, pred):
    return 1.0


def answer_is_four(example, pred, trace=None):
    return str(pred.answer).strip() == str(example.answer).strip()
