"""Produce the native-engine parity fixtures from real DSPy.

Every case in this file is run through DSPy itself (the pinned version, see
``python/parity/requirements.txt``) and the result is written next to the input
under ``tests/fixtures/parity/``. The Rust test suite replays the same inputs
through the native engine and asserts equality, so the two can never drift
apart silently.

Usage::

    python python/parity/generate_fixtures.py [OUT_DIR]

CI runs it into a scratch directory and diffs the result against the committed
fixtures: a DSPy upgrade that changes behaviour fails the build.
"""

from __future__ import annotations

import ast
import json
import math
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The worker's own helpers: a fixture is built from a spec as the worker builds it.
sys.path.insert(0, os.path.join(ROOT, "crates", "bridge", "worker"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPY_CACHEDIR", "/tmp/dspex-parity-cache")
warnings.simplefilter("ignore")

import dspy  # noqa: E402
from dspy.adapters.utils import get_annotation_name, translate_field_type  # noqa: E402
from dspy.evaluate import metrics  # noqa: E402

from corpus import FORMAT_CASES, LAX_CASES, METRIC_CASES, PARSE_CASES, SIGNATURE_CASES  # noqa: E402
from dspex_worker.programs import adapter_for, build_signature, module_signature  # noqa: E402
from dspex_worker.values import history_inputs, jsonable  # noqa: E402

EXPECTED_DSPY_VERSION = "3.4.1"


def error_entry(exc: BaseException) -> dict:
    return {"category": type(exc).__name__, "message": str(exc)}


def describe_signature(sig) -> dict:
    # Not the worker's `dspy.inspect` field list: that one has no types or
    # structures, and the fixtures fix this order of keys.
    fields = []
    for role, group in (("input", sig.input_fields), ("output", sig.output_fields)):
        for name, info in group.items():
            fields.append(
                {
                    "name": name,
                    "role": role,
                    "type": get_annotation_name(info.annotation),
                    "prefix": info.json_schema_extra["prefix"],
                    "desc": info.json_schema_extra["desc"],
                    "structure": translate_field_type(name, info),
                }
            )
    return {"instructions": sig.instructions, "fields": fields}


def literal_jsonable(value):
    """A value of ``ast.literal_eval`` in JSON form, as far as JSON has one.

    Not the worker's ``jsonable``: that one prints values JSON cannot hold
    (Ellipsis, complex, bytes) as strings, and ``run_lax`` must see them as
    they are to record them as unsupported.
    """
    if isinstance(value, (list, tuple)):
        return [literal_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((literal_jsonable(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): literal_jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def run_signatures():
    out = []
    for case in SIGNATURE_CASES:
        entry = dict(case)
        try:
            sig = dspy.Signature(case["signature"], case.get("instructions"))
            entry["expect"] = {"ok": describe_signature(sig)}
        except BaseException as exc:  # noqa: BLE001 - every DSPy rejection is data here
            entry["expect"] = {"error": error_entry(exc)}
        out.append(entry)
    return out


def run_format():
    out = []
    for case in FORMAT_CASES:
        for adapter_name in case.get("adapters", ["chat", "json"]):
            entry = {k: v for k, v in case.items() if k != "adapters"}
            entry["id"] = f"{case['id']}-{adapter_name}"
            entry["adapter"] = adapter_name
            sig = module_signature(build_signature(case["signature"]), case.get("module", "predict"))
            adapter = adapter_for(adapter_name)
            demos = [history_inputs(sig, d) for d in case.get("demos", [])]
            messages = adapter.format(sig, demos, history_inputs(sig, case["inputs"]))
            entry["expect"] = {"messages": messages}
            out.append(entry)
    return out


def run_parse():
    out = []
    for case in PARSE_CASES:
        for adapter_name in case.get("adapters", ["chat", "json"]):
            if adapter_name not in case.get("completions", {}):
                continue
            entry = {k: v for k, v in case.items() if k not in ("adapters", "completions")}
            entry["id"] = f"{case['id']}-{adapter_name}"
            entry["adapter"] = adapter_name
            completion = case["completions"][adapter_name]
            entry["completion"] = completion
            sig = module_signature(build_signature(case["signature"]), case.get("module", "predict"))
            try:
                fields = adapter_for(adapter_name).parse(sig, completion)
                entry["expect"] = {"fields": jsonable(fields)}
            except BaseException as exc:  # noqa: BLE001
                entry["expect"] = {"error": error_entry(exc)}
            out.append(entry)
    return out


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def run_metrics():
    out = []
    for case in METRIC_CASES:
        entry = dict(case)
        fn = case["fn"]
        if fn == "normalize_text":
            result = metrics.normalize_text(case["text"])
        elif fn == "f1_score":
            result = metrics.f1_score(case["prediction"], case["ground_truth"])
        elif fn == "hotpot_f1_score":
            result = metrics.hotpot_f1_score(case["prediction"], case["ground_truth"])
        elif fn == "answer_exact_match":
            result = metrics.answer_exact_match(
                _Obj(answer=case["answer"]), _Obj(answer=case["prediction"]), frac=case.get("frac", 1.0)
            )
        elif fn == "answer_passage_match":
            result = metrics.answer_passage_match(_Obj(answer=case["answer"]), _Obj(context=case["passages"]))
        else:
            raise SystemExit(f"unknown metric {fn}")
        if isinstance(result, bool):
            entry["expect"] = result
        elif isinstance(result, (int, float)):
            entry["expect"] = float(result)
        else:
            entry["expect"] = result
        out.append(entry)
    return out


def run_lax():
    import json_repair

    out = []
    for i, text in enumerate(LAX_CASES):
        repaired = json_repair.loads(text)
        entry = {"id": f"lax-{i:02d}", "text": text, "json_repair": jsonable(repaired)}
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            entry["literal_eval"] = "fails"
        else:
            plain = literal_jsonable(value)
            try:
                json.dumps(plain)
                entry["literal_eval"] = {"value": plain}
            except TypeError:  # Ellipsis, complex, ...: not modelled natively
                entry["literal_eval"] = "unsupported"
        out.append(entry)
    return out


def write(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.write("\n")


def main() -> int:
    if dspy.__version__ != EXPECTED_DSPY_VERSION:
        print(f"expected dspy=={EXPECTED_DSPY_VERSION}, found {dspy.__version__}", file=sys.stderr)
        return 1
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "parity")
    os.makedirs(out_dir, exist_ok=True)
    import contextlib
    import io

    # F1's edge case prints to stdout; keep the generator's own output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        results = {
            "signatures.json": run_signatures(),
            "format.json": run_format(),
            "parse.json": run_parse(),
            "metrics.json": run_metrics(),
            "lax.json": run_lax(),
        }
    for name, data in results.items():
        write(os.path.join(out_dir, name), {"dspy_version": dspy.__version__, "cases": data})
        print(f"{name}: {len(data)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
