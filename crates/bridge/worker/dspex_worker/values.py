"""Values across the wire: DSPy's values as JSON-able data, and JSON
inputs as the values DSPy expects.

Replies are encoded as JSON or MessagePack, which know maps, lists and
scalars only: pydantic models, enums, sets and non-finite floats are turned
into those here. The other way, a ``dspy.History`` input arrives as its
``{"messages": [...]}`` object.
"""

from __future__ import annotations

import enum
import math
import time

import dspy


def jsonable(value):
    """A JSON-friendly copy of a DSPy value (models dumped, tuples and sets as lists)."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "toDict"):
        return jsonable(value.toDict())
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def prediction_fields(pred) -> dict:
    return {k: jsonable(pred[k]) for k in pred.keys()}


def _usage(pred) -> dict | None:
    """The prediction's token usage, summed over the LMs it called."""
    try:
        usage = pred.get_lm_usage()
    except AttributeError:
        return None
    if not usage:
        return None
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for per_model in usage.values():
        for k in total:
            total[k] += int(per_model.get(k) or 0)
    return total


def run_reply(pred, started: float, report=None) -> dict:
    """The reply to a run: the prediction's fields, its token usage, the
    microseconds since ``started`` (a ``perf_counter`` reading: the Python
    side of the request's timing), and whether an LM reply was cut at its
    length limit (``report``, an ``lms.LmReport``)."""
    return {
        "fields": prediction_fields(pred),
        "usage": _usage(pred),
        "elapsed_us": int((time.perf_counter() - started) * 1e6),
        "truncated": bool(report is not None and report.truncated),
    }


def history_inputs(signature, values: dict) -> dict:
    """``values`` with each ``dspy.History`` input of ``signature`` given as
    its ``{"messages": [...]}`` object made a ``dspy.History``."""
    out = dict(values)
    for key, field in signature.input_fields.items():
        if field.annotation is dspy.History and isinstance(out.get(key), dict):
            out[key] = dspy.History(**out[key])
    return out


def coerce_inputs(module, inputs: dict) -> dict:
    """Inputs as the predictors of ``module`` expect them (see ``history_inputs``)."""
    for _, predictor in module.named_predictors():
        inputs = history_inputs(predictor.signature, inputs)
    return inputs
