"""DSPy side of benches/native_vs_dspy.rs: the same operations, in-process.

The first stdin line describes the workload ({"ops": [...]}); each later line
names one op to time ({"op": NAME, "samples": N}), and the answer is one JSON
line {"median_ns", "p99_ns"}. The Rust side alternates its own measurements
with these, so both run under the same machine conditions.
"""

import json
import os
import sys
import time
import warnings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
warnings.simplefilter("ignore")

import dspy  # noqa: E402
from dspy.adapters import ChatAdapter, JSONAdapter  # noqa: E402


def measure(fn, samples, batch):
    for _ in range(max(1, samples // 10)):
        fn()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        out.append((time.perf_counter_ns() - t0) / batch)
    out.sort()
    return {"median_ns": out[len(out) // 2], "p99_ns": out[min(len(out) - 1, int(len(out) * 0.99))]}


def build(op):
    adapters = {"chat": ChatAdapter(), "json": JSONAdapter()}
    sig = dspy.Signature(op["signature"])
    if op.get("chain_of_thought"):
        sig = dspy.ChainOfThought(sig).predict.signature
    kind = op["kind"]
    if kind == "parse_signature":
        text = op["signature"]
        return (lambda: dspy.Signature(text)), 1
    if kind == "format":
        demos = [dspy.Example(**d) for d in op["demos"]]
        adapter, inputs = adapters[op["adapter"]], op["inputs"]
        return (lambda: adapter.format(sig, demos, inputs)), 1
    adapter, completion = adapters[op["adapter"]], op["completion"]
    return (lambda: adapter.parse(sig, completion)), 5


def main():
    workload = json.loads(sys.stdin.readline())
    ops = {op["name"]: build(op) for op in workload["ops"]}
    for line in sys.stdin:
        cmd = json.loads(line)
        fn, batch = ops[cmd["op"]]
        samples = cmd["samples"] if batch > 1 or cmd["op"] != "parse_signature" else max(20, cmd["samples"] // 4)
        print(json.dumps(measure(fn, samples, batch)), flush=True)


main()
