"""DSPy commands: run modules, evaluate, optimize, save/load, stream, format/parse.

Programs arrive as descriptions (see ``programs``), LMs as specs (see
``lms``); each command runs under its own request's DSPy settings
(``lms.lm_context``). Importing this module imports DSPy and sets it up
(``dspy_patches``).
"""

from __future__ import annotations

import inspect
import math
import threading
import time

import dspy
from dspy.adapters.chat_adapter import ChatAdapter
from dspy.utils.saving import get_dependency_versions

from . import aio
from .lms import build_lm, lm_context
from .programs import (
    adapter_for,
    build_program,
    build_signature,
    dump_state,
    import_object,
    module_signature,
    predictors,
    shared_program,
)
from .registry import Cancelled, CommandError, DeadlineExceeded, InvalidArguments, classify, command, on_loop
from .values import coerce_inputs, history_inputs, jsonable, prediction_fields, run_reply

# Module kinds whose DSPy class has a native ``aforward``: their streams are
# tasks on the worker's loop (see ``aio``), and each token goes from the
# HTTP stream to the listener without leaving it; a synchronous program
# sends every token from its thread to the loop and waits: two thread
# switches per token, ~0.25 ms each here, and DSPy's listener needs about
# four tokens before its first chunk. Plain runs stay on threads: measured
# through the worker, DSPy's async path costs ~0.3 ms more per call against
# a fast local LM and the same CPU per call against a 100 ms one.
_ASYNC_KINDS = {"predict", "chain_of_thought"}


def _async_kind(args: dict) -> bool:
    program = args.get("program")
    return isinstance(program, dict) and program.get("module", "predict") in _ASYNC_KINDS


@command("dspy.run")
def run(ctx, program: dict, inputs: dict, lm: dict | None = None):
    """Run a program on one input; returns its fields (and token usage)."""
    started = time.perf_counter()
    module = shared_program(program)
    inputs = coerce_inputs(module, inputs)
    with lm_context(ctx, lm, program.get("adapter")) as report:
        pred = module(**inputs)
    ctx.check()
    return run_reply(pred, started, report)


class _Failed:
    """An item of a parallel run that raised: its wire error."""

    def __init__(self, exc: BaseException):
        self.error = classify(exc)
        # The traceback stays in the worker's log: per-item errors are read
        # by callers, who need the kind and the message.
        self.error["traceback"] = None


@command("dspy.parallel")
def parallel(ctx, program: dict, inputs: list, lm: dict | None = None, num_threads: int = 4):
    """Run a program over many inputs with dspy.Parallel; results in input
    order, each its fields or its own classified error (one failing input
    does not fail the others)."""
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise InvalidArguments("inputs must be a list of maps (one per item)")
    module = shared_program(program)

    def one(**item):
        ctx.check()
        try:
            return module(**coerce_inputs(module, item))
        except (Cancelled, DeadlineExceeded):
            raise
        except Exception as e:  # noqa: BLE001 - every item's failure is reported as its result
            return _Failed(e)

    with lm_context(ctx, lm, program.get("adapter")):
        runner = dspy.Parallel(
            num_threads=max(int(num_threads), 1), disable_progress_bar=True, max_errors=len(inputs) + 1
        )
        results = runner([(one, dspy.Example(**i).with_inputs(*i.keys())) for i in inputs])
    ctx.check()
    out = []
    for r in results:
        if isinstance(r, _Failed):
            out.append({"error": r.error})
        elif r is None:
            out.append(
                {"error": {"type": "RuntimeError", "kind": "python", "message": "no result", "retryable": False}}
            )
        else:
            out.append({"fields": prediction_fields(r)})
    return {"results": out}


def _streaming(module, is_async: bool):
    """``dspy.streamify`` over every output field of every predictor; the
    program runs on the loop (``is_async``) or on a thread of DSPy's."""
    listeners = []
    for predictor in predictors(module):
        for name in predictor.signature.output_fields:
            listeners.append(dspy.streaming.StreamListener(signature_field_name=name, predict=predictor))
    return dspy.streamify(module, stream_listeners=listeners, async_streaming=True, is_async_program=is_async)


async def _stream(ctx, program: dict, inputs: dict, lm, is_async: bool, send_chunk):
    """Stream ``program`` on ``inputs``: each chunk to ``send_chunk``, then
    the fields. The program runs on the loop (``is_async``) or on a thread of
    DSPy's; the listener always runs on the loop."""
    started = time.perf_counter()
    module = shared_program(program)
    streaming = _streaming(module, is_async)
    inputs = coerce_inputs(module, inputs)
    final = None
    with lm_context(ctx, lm, program.get("adapter")) as report:
        async for item in streaming(**inputs):
            if isinstance(item, dspy.streaming.StreamResponse):
                send_chunk({"field": item.signature_field_name, "text": item.chunk})
            elif isinstance(item, dspy.Prediction):
                final = item
    if final is None:
        raise CommandError("the stream ended without a prediction", kind="lm")
    return run_reply(final, started, report)


@command("dspy.stream")
def stream(ctx, program: dict, inputs: dict, lm: dict | None = None):
    """Run a program with dspy.streamify: chunks per output field, then the fields."""
    # This thread waits while the stream runs on the loop; chunks go out
    # from the loop as the listener yields them (handing them to this thread
    # first would cost a thread switch each), but never after the request
    # ended: a chunk behind the response would be a protocol violation and
    # cost the worker.
    open_for_chunks = [True]
    emit_lock = threading.Lock()

    def send_chunk(chunk):
        with emit_lock:
            if open_for_chunks[0]:
                ctx.emit(chunk)

    try:
        out = aio.await_on_loop(ctx, lambda: _stream(ctx, program, inputs, lm, False, send_chunk))
        ctx.check()
    finally:
        with emit_lock:
            open_for_chunks[0] = False
    return out


@on_loop("dspy.stream", when=_async_kind)
async def stream_on_loop(ctx, program: dict, inputs: dict, lm: dict | None = None):
    # All on the loop: the response follows the last chunk on this thread.
    return await _stream(ctx, program, inputs, lm, True, ctx.emit)


@command("dspy.format")
def format_messages(
    ctx,
    signature,
    inputs: dict | None = None,
    demos: list | None = None,
    adapter: str = "chat",
    module: str = "predict",
):
    """The messages DSPy's adapter builds (parity and shadow checks)."""
    sig = module_signature(build_signature(signature), module)
    inputs = history_inputs(sig, inputs or {})
    return {"messages": adapter_for(adapter).format(sig, [dict(d) for d in (demos or [])], inputs)}


@command("dspy.parse")
def parse_completion(ctx, signature, completion: str, adapter: str = "chat", module: str = "predict"):
    """Parse a completion with DSPy's adapter."""
    sig = module_signature(build_signature(signature), module)
    return {"fields": jsonable(adapter_for(adapter).parse(sig, completion))}


def _examples(rows: list, input_keys: list | None):
    out = []
    for row in rows:
        ex = dspy.Example(**row)
        keys = input_keys or [k for k in row if k not in ("answer",)]
        out.append(ex.with_inputs(*keys))
    return out


def resolve_metric(name: str):
    from dspy.evaluate import metrics

    if name in ("exact_match", "answer_exact_match"):
        return metrics.answer_exact_match
    if name in ("passage_match", "answer_passage_match"):
        return metrics.answer_passage_match
    return import_object(name)


def _positional_arity(fn) -> int:
    """How many positional arguments `fn` takes (a large number for *args)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 3
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 1 << 16
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # answer_exact_match(example, pred, trace=None, frac=1.0): `frac` is
    # not a GEPA argument; only parameters named as GEPA names them count
    # past the third.
    gepa = ("example", "pred", "trace", "pred_name", "pred_trace")
    count = 0
    for i, p in enumerate(positional):
        if i >= 3 and (i >= len(gepa) or p.name != gepa[i]):
            break
        count += 1
    return count


class _Progress:
    """Wraps a metric so every evaluation is reported as a progress event.

    ``total`` is the number of metric calls expected, or a callable that
    says so once the optimizer has worked it out (GEPA's budget). It is an
    upper bound where one is known; when a run goes past it (GEPA finishes
    the iteration that crosses its budget), the reported total grows with
    ``done``, so a bar never runs past its end.
    """

    def __init__(self, ctx, metric, total, phase: str):
        self.ctx, self.metric, self.phase = ctx, metric, phase
        self.total = total
        self.done = 0
        self.lock = threading.Lock()
        self.positional = _positional_arity(metric)

    def total_now(self, done: int) -> int | None:
        """The total to report after `done` metric calls."""
        total = self.total() if callable(self.total) else self.total
        return None if total is None else max(int(total), done)

    def __call__(self, example, pred, trace=None, *args, **kwargs):
        self.ctx.check()
        # GEPA calls metric(gold, pred, trace, pred_name, pred_trace); a
        # plain DSPy metric takes fewer (answer_exact_match's third
        # parameter after trace is `frac`): pass what the metric declares.
        extra = (trace, *args)[: max(self.positional - 2, 0)]
        score = self.metric(example, pred, *extra, **kwargs)
        with self.lock:
            self.done += 1
            done = self.done
        self.ctx.emit({"event": "progress", "phase": self.phase, "done": done, "total": self.total_now(done)})
        return score


@command("dspy.evaluate")
def evaluate(
    ctx,
    program: dict,
    devset: list,
    metric: str = "exact_match",
    lm: dict | None = None,
    input_keys: list | None = None,
    num_threads: int = 1,
):
    """Score a program on a dev set with dspy.Evaluate."""
    module = shared_program(program)
    examples = _examples(devset, input_keys)
    scorer = _Progress(ctx, resolve_metric(metric), len(examples), "evaluate")
    with lm_context(ctx, lm, program.get("adapter")):
        evaluator = dspy.Evaluate(devset=examples, metric=scorer, num_threads=int(num_threads), display_progress=False)
        result = evaluator(module)
    rows = []
    for example, pred, score in getattr(result, "results", []) or []:
        rows.append(
            {
                "example": jsonable(example.toDict()),
                "prediction": prediction_fields(pred) if pred else None,
                "score": jsonable(score),
            }
        )
    return {"score": float(getattr(result, "score", result)), "results": rows}


OPTIMIZERS = {
    "LabeledFewShot": "dspy.teleprompt:LabeledFewShot",
    "BootstrapFewShot": "dspy.teleprompt:BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch": "dspy.teleprompt:BootstrapFewShotWithRandomSearch",
    "MIPROv2": "dspy.teleprompt:MIPROv2",
    "COPRO": "dspy.teleprompt:COPRO",
    "SIMBA": "dspy.teleprompt:SIMBA",
    "GEPA": "dspy.teleprompt:GEPA",
}


def metric_budget(optimizer: str, init: dict, compile_kwargs: dict, n_train: int, n_predictors: int):
    """The most metric calls a run of `optimizer` makes (None when unknown).

    Worked out from each optimizer's loop in DSPy 3.4.1 and its defaults;
    progress events report it as their total (see ``_Progress``).
    """
    n_val = len(compile_kwargs["valset"]) if "valset" in compile_kwargs else None
    rounds = int(init.get("max_rounds", 1))
    if optimizer == "BootstrapFewShot":
        # Each training example is scored at most once per round (it
        # stops early once it has its demos).
        return n_train * rounds
    if optimizer == "BootstrapFewShotWithRandomSearch":
        # Seeds -3..n-1: each is evaluated on the valset, and all but the
        # zero-shot and labelled-only seeds bootstrap on the trainset first.
        n = int(init.get("num_candidate_programs", 16))
        return (n + 3) * (n_val or n_train) + (n + 1) * n_train * rounds
    if optimizer == "COPRO":
        # Each depth scores `breadth` instructions per predictor on the trainset.
        return int(init.get("breadth", 10)) * int(init.get("depth", 3)) * n_train * n_predictors
    if optimizer == "SIMBA":
        # Per step: bsize × num_candidates sampled trajectories, then up to
        # num_candidates + 1 programs on the batch; at the end up to
        # num_candidates + 1 programs on the whole trainset.
        bsize, cands = int(init.get("bsize", 32)), int(init.get("num_candidates", 6))
        return int(init.get("max_steps", 8)) * bsize * (2 * cands + 1) + (cands + 1) * n_train
    if optimizer == "MIPROv2":
        return _mipro_budget(init, compile_kwargs, n_train, n_val, n_predictors)
    return None


def _mipro_budget(init: dict, kw: dict, n_train: int, n_val: int | None, n_predictors: int) -> int | None:
    from dspy.teleprompt.mipro_optimizer_v2 import AUTO_RUN_SETTINGS, MIN_MINIBATCH_SIZE

    if n_val is None:  # MIPROv2 splits the trainset 20/80 itself
        n_val = min(1000, max(1, int(n_train * 0.8)))
        n_train -= n_val
    auto = init.get("auto", "light")
    demos = kw.get("max_bootstrapped_demos", init.get("max_bootstrapped_demos", 4))
    labeled = kw.get("max_labeled_demos", init.get("max_labeled_demos", 4))
    zeroshot = demos == 0 and labeled == 0
    if auto is not None:
        settings = AUTO_RUN_SETTINGS.get(auto)
        if settings is None:
            return None
        n_val = min(n_val, settings["val_size"])
        num_vars = n_predictors * (1 if zeroshot else 2)
        trials = int(max(2 * num_vars * math.log2(settings["n"]), 1.5 * settings["n"]))
        fewshot_sets = settings["n"]
        minibatch = n_val > MIN_MINIBATCH_SIZE
    else:
        trials = kw.get("num_trials")
        fewshot_sets = init.get("num_candidates")
        if trials is None or fewshot_sets is None:
            return None
        minibatch = kw.get("minibatch", True)
    bootstrap = 0 if zeroshot else int(fewshot_sets) * n_train
    if minibatch:
        size = min(int(kw.get("minibatch_size", 35)), n_val)
        full = int(trials) // int(kw.get("minibatch_full_eval_steps", 5)) + 2
        return bootstrap + int(trials) * size + full * n_val
    return bootstrap + (int(trials) + 1) * n_val


@command("dspy.optimize")
def optimize(
    ctx,
    optimizer: str,
    program: dict,
    trainset: list,
    metric: str = "exact_match",
    lm: dict | None = None,
    valset: list | None = None,
    input_keys: list | None = None,
    params: dict | None = None,
    compile_params: dict | None = None,
):
    """Compile a program with a DSPy optimizer; progress is streamed; returns the saved state."""
    if optimizer not in OPTIMIZERS:
        raise InvalidArguments(f"unknown optimizer {optimizer!r} (known: {', '.join(OPTIMIZERS)})")
    cls = import_object(OPTIMIZERS[optimizer])
    module = build_program(program)
    train = _examples(trainset, input_keys)
    init = dict(params or {})
    compile_kwargs = dict(compile_params or {})
    if valset is not None and optimizer in ("BootstrapFewShotWithRandomSearch", "MIPROv2", "GEPA"):
        compile_kwargs["valset"] = _examples(valset, input_keys)
    if optimizer == "GEPA" and "reflection_lm" not in init:
        init["reflection_lm"] = build_lm(lm, ctx)
    budget = metric_budget(optimizer, init, compile_kwargs, len(train), len(predictors(module)))
    scorer = _Progress(ctx, resolve_metric(metric), budget, "optimize")
    if optimizer != "LabeledFewShot":
        init.setdefault("metric", scorer)
    with lm_context(ctx, lm, program.get("adapter"), disable_history=False):
        # Inside the request's LM context: MIPROv2 reads the LM when built.
        try:
            teleprompter = cls(**init)
        except (TypeError, ValueError, AssertionError) as e:
            raise InvalidArguments(f"{optimizer}: {e}") from e
        if optimizer == "GEPA":
            # GEPA works out its budget (from `auto` or `max_full_evals`)
            # in compile; read it when the first metric call is reported.
            scorer.total = lambda: getattr(teleprompter, "max_metric_calls", None)
        ctx.emit({"event": "started", "optimizer": optimizer, "trainset": len(train), "total": scorer.total_now(0)})
        compiled = teleprompter.compile(module, trainset=train, **compile_kwargs)
    if optimizer == "LabeledFewShot":
        # No metric calls: one step, choosing the demos.
        ctx.emit({"event": "progress", "phase": "optimize", "done": 1, "total": 1})
    ctx.emit({"event": "finished", "optimizer": optimizer, "evaluations": scorer.done})
    return {
        "state": dump_state(compiled),
        "demos": sum(len(p.demos) for p in predictors(compiled)),
        # What `program.save(path)` adds: `program.load` checks it.
        "metadata": {"dependency_versions": get_dependency_versions()},
    }


@command("dspy.state")
def state(ctx, program: dict):
    """Build a program (with its demos and optional saved state) and return its state."""
    return {"state": dump_state(build_program(program))}


@command("dspy.inspect")
def inspect_program(ctx, program: dict):
    """Predictors of a program: names, signatures, demos."""
    module = shared_program(program)
    out = []
    for name, predictor in module.named_predictors():
        sig = predictor.signature
        out.append(
            {
                "name": name,
                "signature": sig.signature,
                "instructions": sig.instructions,
                "fields": [
                    {
                        "name": k,
                        "role": v.json_schema_extra["__dspy_field_type"],
                        "prefix": v.json_schema_extra["prefix"],
                        "desc": v.json_schema_extra["desc"],
                    }
                    for k, v in sig.fields.items()
                ],
                "demos": len(predictor.demos),
            }
        )
    return {"predictors": out}


def warm_up() -> None:
    """Exercise signature parsing and formatting once, so the first request is not slow."""
    sig = dspy.Signature("question -> answer")
    ChatAdapter().format(sig, [], {"question": "warm-up"})
