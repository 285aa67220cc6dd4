"""DSPy programs built from their descriptions (the Rust ``ProgramSpec``)::

    {"module": "predict" | "chain_of_thought" | "react" | "react_v2" | "code_act"
               | "program_of_thought" | "multi_chain_comparison" | "best_of_n" | "refine",
     "signature": "question -> answer" | {"instructions", "inputs": [...], "outputs": [...]},
     "demos": [{...}], "adapter": "chat" | "json", "config": {...},
     "params": {...},        # module-specific (tools, max_iters, M, N, reward_fn, threshold)
     "state": {...}}         # a saved program state (what `program.save` writes)

Programs that keep no state while they run are built once per description
and shared by the requests (``shared_program``).
"""

from __future__ import annotations

import ast
import importlib
import json

import dspy
from dspy.adapters.chat_adapter import ChatAdapter
from dspy.adapters.json_adapter import JSONAdapter
from dspy.signatures.signature import _parse_type_node

from . import sandbox
from .lru import LruCache
from .registry import InvalidArguments
from .values import jsonable


def resolve_type(type_str: str | None):
    if type_str is None:
        return str
    return _parse_type_node(ast.parse(type_str, mode="eval").body)


def build_signature(spec, instructions: str | None = None):
    """A DSPy signature from a string or a class-style description."""
    if isinstance(spec, str):
        return dspy.Signature(spec, instructions)
    if not isinstance(spec, dict):
        raise InvalidArguments(f"signature must be a string or an object, got {type(spec).__name__}")
    fields = {}
    for role, maker in (("inputs", dspy.InputField), ("outputs", dspy.OutputField)):
        for field in spec.get(role, []):
            kwargs = {}
            if "desc" in field:
                kwargs["desc"] = field["desc"]
            if "prefix" in field:
                kwargs["prefix"] = field["prefix"]
            kwargs.update(field.get("constraints", {}))
            fields[field["name"]] = (resolve_type(field.get("type")), maker(**kwargs))
    return dspy.Signature(fields, spec.get("instructions") or instructions)


def module_signature(sig, module: str):
    """The signature a module of kind ``module`` gives its LM for ``sig``
    (chain of thought adds its reasoning field)."""
    if module == "chain_of_thought":
        return dspy.ChainOfThought(sig).predict.signature
    return sig


def adapter_for(name: str | None):
    return JSONAdapter() if name == "json" else ChatAdapter()


def import_object(path: str):
    """``package.module:name`` or ``package.module.name``."""
    if ":" in path:
        module, _, name = path.partition(":")
    else:
        module, _, name = path.rpartition(".")
    if not module or not name:
        raise InvalidArguments(f"{path!r} is not an import path (package.module:name)")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as exc:
        raise InvalidArguments(f"cannot import {path!r}: {exc}") from exc


def metric_reward(spec):
    """A BestOfN/Refine reward from a metric by name: the prediction's
    ``field`` scored against the input ``expected`` with DSPy's own metric
    (``exact_match``, ``f1``, ``passage_match``)."""
    from dspy.evaluate import metrics

    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) for k in ("name", "field", "expected")):
        raise InvalidArguments("`params.reward_metric` needs `name`, `field` and `expected`, each a string")
    name, field, expected = spec["name"], spec["field"], spec["expected"]

    def references(args) -> list:
        if expected not in args:
            raise InvalidArguments(f"reward metric {name}: no input `{expected}` to score `{field}` against")
        ref = args[expected]
        return [str(r) for r in ref] if isinstance(ref, (list, tuple)) else [str(ref)]

    def text(pred) -> str:
        return str(getattr(pred, field, "") or "")

    if name in ("exact_match", "answer_exact_match"):

        def reward(args, pred):
            return float(metrics.EM(text(pred), references(args)))
    elif name in ("f1", "F1"):

        def reward(args, pred):
            return float(metrics.F1(text(pred), references(args)))
    elif name in ("passage_match", "answer_passage_match"):

        def reward(args, pred):
            passages = references(args)
            return float(
                metrics.answer_passage_match(dspy.Example(answer=text(pred)), dspy.Prediction(context=passages))
            )
    else:
        raise InvalidArguments(f"unknown reward metric {name!r} (known: exact_match, f1, passage_match)")
    reward.__name__ = f"{name}({field}, {expected})"
    return reward


def predictors(module) -> list:
    return [p for _, p in module.named_predictors()]


def build_program(spec: dict):
    """A DSPy module from a program description (see the module docs)."""
    if not isinstance(spec, dict) or "signature" not in spec:
        raise InvalidArguments("program needs at least a `signature`")
    kind = spec.get("module", "predict")
    sig = build_signature(spec["signature"], spec.get("instructions"))
    config = spec.get("config") or {}
    params = spec.get("params") or {}
    if kind == "predict":
        module = dspy.Predict(sig, **config)
    elif kind == "chain_of_thought":
        module = dspy.ChainOfThought(sig, **config)
    elif kind in ("react", "react_v2", "code_act"):
        tools = [import_object(t) for t in params.get("tools", [])]
        if not tools:
            raise InvalidArguments(f"{kind} needs `params.tools`: import paths of the tool functions")
        if kind == "react":
            module = dspy.ReAct(sig, tools=tools, max_iters=int(params.get("max_iters", 5)))
        elif kind == "react_v2":
            module = dspy.ReActV2(sig, tools=tools, max_iters=int(params.get("max_iters", 20)))
        else:
            sandbox.require_deno("CodeAct")
            try:
                module = dspy.CodeAct(
                    sig, tools=tools, max_iters=int(params.get("max_iters", 5)), interpreter_factory=sandbox.interpreter
                )
            except ValueError as e:  # a tool that is not a plain function
                raise InvalidArguments(f"code_act: {e}") from e
    elif kind == "program_of_thought":
        sandbox.require_deno("ProgramOfThought")
        module = dspy.ProgramOfThought(
            sig, max_iters=int(params.get("max_iters", 3)), interpreter_factory=sandbox.interpreter
        )
    elif kind == "multi_chain_comparison":
        module = dspy.MultiChainComparison(sig, M=int(params.get("M", 3)))
    elif kind in ("best_of_n", "refine"):
        inner = build_program({**spec, "module": params.get("inner", "chain_of_thought"), "params": {}})
        if params.get("reward_fn"):
            reward = import_object(params["reward_fn"])
        elif params.get("reward_metric"):
            reward = metric_reward(params["reward_metric"])
        else:
            raise InvalidArguments(
                f"{kind} needs a reward: `params.reward_fn`, the import path of a function (args, prediction)"
                " -> float, or `params.reward_metric`, {name, field, expected}"
            )
        cls = dspy.BestOfN if kind == "best_of_n" else dspy.Refine
        module = cls(
            module=inner, N=int(params.get("N", 3)), reward_fn=reward, threshold=float(params.get("threshold", 1.0))
        )
    else:
        raise InvalidArguments(f"unknown module {kind!r}")
    demos = spec.get("demos")
    if demos:
        for predictor in predictors(module):
            predictor.demos = [dspy.Example(**d) for d in demos]
    if spec.get("state"):
        load_state(module, spec["state"])
    return module


# Built programs, by their description. Building one (a pydantic signature
# class, the module, its demos) costs about a millisecond, more than DSPy's
# own work around a fast LM call; running a module does not change it, so
# requests share one. Only kinds whose forward() keeps no state on the
# module are kept.
_programs = LruCache(256)
_CACHEABLE_KINDS = {"predict", "chain_of_thought"}


def shared_program(spec: dict):
    """A built program for read-only use (run, stream, evaluate, inspect)."""
    if not isinstance(spec, dict) or spec.get("module", "predict") not in _CACHEABLE_KINDS:
        return build_program(spec)
    try:
        key = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError):
        return build_program(spec)
    return _programs.get_or_build(key, lambda: build_program(spec))


def load_state(module, state: dict) -> None:
    """Apply a saved state (what ``program.save(path)`` writes, as a dict)."""
    if not isinstance(state, dict):
        raise InvalidArguments("state must be an object (the JSON `program.save` writes)")
    state = {k: v for k, v in state.items() if k != "metadata"}
    if isinstance(module, dspy.Predict):
        module.load_state(state)
        return
    names = [name for name, _ in module.named_predictors()]
    if "signature" in state and len(names) == 1:
        # One predictor's state, for a module with one predictor.
        state = {names[0]: state}
    module.load_state(state)


def dump_state(module) -> dict:
    return jsonable(module.dump_state())
