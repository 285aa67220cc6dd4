"""DSPy commands: run modules, evaluate, optimize, save/load, stream, format/parse.

Every command configures the LM for its own request with ``dspy.context`` (never
``dspy.configure``, which only the first configuring thread may call), so
requests on different threads never see each other's settings.

Programs are described as in the Rust ``ProgramSpec``::

    {"module": "predict" | "chain_of_thought" | "react" | "program_of_thought"
               | "multi_chain_comparison" | "best_of_n" | "refine",
     "signature": "question -> answer" | {"instructions", "inputs": [...], "outputs": [...]},
     "demos": [{...}], "adapter": "chat" | "json", "config": {...},
     "params": {...},        # module-specific (tools, max_iters, M, N, reward_fn, threshold)
     "state": {...}}         # a saved program state (what `program.save` writes)

LMs are ``{"model", "base_url", "api_key", "temperature", "max_tokens",
"num_retries", "cache"}`` or ``{"dummy": [answers...]}`` for DSPy's DummyLM.
"""

from __future__ import annotations

import ast
import collections
import concurrent.futures
import contextvars
import copy
import enum
import functools
import importlib
import json
import logging
import math
import os
import shutil
import threading
import time
import warnings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import dspy  # noqa: E402
from dspy.adapters.chat_adapter import ChatAdapter  # noqa: E402
from dspy.adapters.json_adapter import JSONAdapter  # noqa: E402
from dspy.signatures.signature import _parse_type_node  # noqa: E402

from . import aio  # noqa: E402
from .registry import CommandError, InvalidArguments, Unsupported, command, on_loop  # noqa: E402

if os.environ.get("DSPEX_DSPY_DISK_CACHE", "0") != "1":
    # DSPy's disk cache stays off unless the pool asks for it.
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=os.environ.get("DSPEX_DSPY_MEMORY_CACHE", "1") == "1")


class LruCache:
    """A small thread-safe least-recently-used map of things costly to build.

    ``get_or_build`` builds outside the lock, so a slow build never blocks
    readers of other keys (two threads may build the same key once each;
    the first stored wins).
    """

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key, build):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()
        with self._lock:
            value = self._items.setdefault(key, value)
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# Where DSPy 3.4.1 looks model metadata up: the catalog module itself and the
# two modules that bound its function at import (pricing and capabilities).
_MODEL_INFO_USERS = ("dspy.clients.model_metadata", "dspy.clients.costs", "dspy.clients.capabilities")


def _memoize_model_metadata() -> bool:
    """Remember DSPy's model-catalog lookups for the life of the worker.

    DSPy 3.4.1 reads the catalog to price every LM call and, on the async
    path, for the model's capabilities before every call. For a model the
    bundled catalog does not name (a local or self-hosted model, an offline
    LM), each lookup scans the whole catalog: about 0.8 ms of CPU, half of a
    DSPy ``Predict`` over a fast local LM. The catalog does not change within
    a process, so the answer for a (provider, model, namespaces) is kept;
    callers still get their own copy, as before. Returns whether every
    module that looks models up was found and wrapped.
    """
    try:
        modules = [importlib.import_module(name) for name in _MODEL_INFO_USERS]
    except ImportError:  # another DSPy layout: nothing to do
        return False
    lookup = getattr(modules[0], "model_info", None)
    if lookup is None:
        return False
    lookup = getattr(lookup, "__wrapped__", lookup)
    memo = LruCache(1024)

    @functools.wraps(lookup)
    def model_info(provider, model, *, namespaces=None):
        key = (provider, model, None if namespaces is None else tuple(namespaces))
        return copy.deepcopy(memo.get_or_build(key, lambda: lookup(provider, model, namespaces=namespaces)))

    model_info._dspex_memo = True
    wrapped = 0
    for module in modules:
        current = getattr(module, "model_info", None)
        if getattr(current, "__wrapped__", current) is lookup:
            module.model_info = model_info
            wrapped += 1
    return wrapped == len(modules)


_memoize_model_metadata()
try:
    # Load the model catalog now (~25 ms from DSPy's bundled copy; a fetch
    # of up to 5 s when LITELLM_LOCAL_MODEL_COST_MAP is not "true"), not on
    # the first call that prices a reply: on the worker's loop that would
    # stall every stream.
    importlib.import_module("dspy.clients.model_metadata")._load()
except Exception as exc:  # noqa: BLE001 - DSPy loads it on first use instead
    logging.getLogger("dspex_worker").warning("model catalog not preloaded: %s: %s", type(exc).__name__, exc)


# ---------------------------------------------------------------- values


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


# ---------------------------------------------------------------- signatures and programs


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


def _predictors(module):
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
    elif kind == "react":
        tools = [import_object(t) for t in params.get("tools", [])]
        if not tools:
            raise InvalidArguments("react needs `params.tools`: import paths of the tool functions")
        module = dspy.ReAct(sig, tools=tools, max_iters=int(params.get("max_iters", 5)))
    elif kind == "program_of_thought":
        if shutil.which("deno") is None:
            raise Unsupported(
                "ProgramOfThought runs generated code in DSPy's sandboxed interpreter, which needs Deno "
                "(https://deno.land) on the worker's PATH; it is not installed here"
            )
        module = dspy.ProgramOfThought(sig, max_iters=int(params.get("max_iters", 3)))
    elif kind == "multi_chain_comparison":
        module = dspy.MultiChainComparison(sig, M=int(params.get("M", 3)))
    elif kind in ("best_of_n", "refine"):
        inner = build_program({**spec, "module": params.get("inner", "chain_of_thought"), "params": {}})
        reward = import_object(params["reward_fn"]) if "reward_fn" in params else (lambda args, pred: 1.0)
        cls = dspy.BestOfN if kind == "best_of_n" else dspy.Refine
        module = cls(module=inner, N=int(params.get("N", 3)), reward_fn=reward, threshold=float(params.get("threshold", 1.0)))
    else:
        raise InvalidArguments(f"unknown module {kind!r}")
    demos = spec.get("demos")
    if demos:
        for predictor in _predictors(module):
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
    state = module.dump_state()
    return jsonable(state)


# ---------------------------------------------------------------- LMs

_lms = LruCache(64)

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
    kwargs = {"cache": bool(spec.get("cache", False)), "num_retries": int(spec.get("num_retries", 0))}
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


def adapter_for(name: str | None):
    return JSONAdapter() if name == "json" else ChatAdapter()


def lm_context(ctx, lm_spec, adapter: str | None = None, **extra):
    """DSPy settings for one request. DSPy's call history is off: LMs and
    built programs are shared by every request of the worker, and the history
    DSPy appends to them (prompts and replies, up to 10 000 per object) would
    grow without use and show one request's data to the next. Optimizers,
    which may read it, turn it back on for their own run."""
    lm = build_lm(lm_spec, ctx)
    settings = {"lm": lm, "adapter": adapter_for(adapter), "track_usage": True, "disable_history": True, **extra}
    return dspy.context(**settings)


def coerce_inputs(module, inputs: dict) -> dict:
    """Inputs as DSPy expects them: `dspy.History` fields arrive as
    ``{"messages": [...]}`` objects and become ``dspy.History`` values."""
    out = dict(inputs)
    for predictor in _predictors(module):
        for key, field in predictor.signature.input_fields.items():
            if field.annotation is dspy.History and isinstance(out.get(key), dict):
                out[key] = dspy.History(**out[key])
    return out


def _since(started: float) -> int:
    """Microseconds since `started` (a perf_counter reading): the Python side of a request's timing."""
    return int((time.perf_counter() - started) * 1e6)


def _usage(pred) -> dict | None:
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


# ---------------------------------------------------------------- commands


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
    with lm_context(ctx, lm, program.get("adapter")):
        pred = module(**inputs)
    ctx.check()
    return {"fields": prediction_fields(pred), "usage": _usage(pred), "elapsed_us": _since(started)}


@command("dspy.parallel")
def parallel(ctx, program: dict, inputs: list, lm: dict | None = None, num_threads: int = 4):
    """Run a program over many inputs with dspy.Parallel."""
    module = shared_program(program)
    with lm_context(ctx, lm, program.get("adapter")):
        runner = dspy.Parallel(num_threads=int(num_threads), disable_progress_bar=True)
        results = runner([(module, dspy.Example(**i).with_inputs(*i.keys())) for i in inputs])
    return {"results": [prediction_fields(r) if r is not None else None for r in results]}


def _native_route(lm, *args, **kwargs) -> bool:
    """Whether DSPy sends this call of ``lm`` through lm15 (no LiteLLM
    lookups). Run in the call's context, where DSPy's planning scope holds
    the call's own client options (which may pick LiteLLM)."""
    if not isinstance(getattr(lm, "_engine_spec", None), str):
        return True  # a custom engine: its capabilities are its own attributes
    from dspy.clients import capabilities
    from dspy.clients.backend_selection import select_backend

    scope = capabilities._planning.get()
    options = scope.options if scope is not None and scope.lm is lm else None
    return select_backend(lm, options).native


def _provider_built(engine, *args, **kwargs) -> bool:
    """Whether an lm15 engine already built its provider: the first build
    reads credentials (stored logins under a file lock, cloud chains)."""
    return bool(getattr(engine, "_providers", None))


def _inline_steps() -> dict:
    """DSPy 3.4.1's short bookkeeping steps that its async LM path sends to a
    thread with ``asyncio.to_thread``, each with the test under which it is
    short: preparing the call, the model's capabilities (on the lm15 route;
    LiteLLM's lookups stay on threads), picking the lm15 provider (once it is
    built), pricing the reply, and the in-memory response cache (only while
    the disk cache is off). Each is CPU work of tens of microseconds; the hop
    to a thread and back costs more than that on a busy machine, three to
    five times per call. Names DSPy no longer has are skipped (those steps
    then go to threads)."""
    steps = [
        ("dspy.clients.execution", "prepare", None),
        ("dspy.clients.execution", "_price_result", None),
        ("dspy.clients.capabilities", "capabilities", _native_route),
        ("dspy.clients.engines.lm15_engine", "_Routing._target", _provider_built),
    ]
    if os.environ.get("DSPEX_DSPY_DISK_CACHE", "0") != "1":
        steps += [("dspy.clients.execution", "_cached", None), ("dspy.clients.execution", "_store", None)]
    found = {}
    for module, name, test in steps:
        try:
            obj = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            continue
        found[obj] = test
    return found


aio.run_in_place(_inline_steps())


def await_on_loop(ctx, make_coroutine):
    """From a request's thread: run ``make_coroutine()`` on the worker's loop,
    in this thread's context (the request's DSPy settings and id), and wait
    for its result here. The request's cancel and deadline are checked every
    50 ms; when the request ends first, the coroutine is cancelled."""
    loop = aio.event_loop()
    context = contextvars.copy_context()
    done: concurrent.futures.Future = concurrent.futures.Future()
    tasks: list = []

    def settle(task):
        if task.cancelled():
            # Not by this request (its cancel ends the wait below first).
            done.set_exception(CommandError("the program's task was cancelled on the worker's loop"))
        elif task.exception() is not None:
            done.set_exception(task.exception())
        else:
            done.set_result(task.result())

    def start():
        try:
            task = loop.create_task(aio.guard_exits(make_coroutine()), context=context)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            done.set_exception(exc)
            return
        task.add_done_callback(settle)
        tasks.append(task)

    loop.call_soon_threadsafe(start)
    try:
        # Waited on, not `done.result(timeout=…)`: that raises TimeoutError
        # for a wait that ran out and for a program that raised one alike.
        while not concurrent.futures.wait([done], timeout=0.05).done:
            ctx.check()
        return done.result()
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks if not t.done()])


def _streaming(module, is_async: bool):
    """``dspy.streamify`` over every output field of every predictor; the
    program runs on the loop (``is_async``) or on a thread of DSPy's."""
    listeners = []
    for predictor in _predictors(module):
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
    with lm_context(ctx, lm, program.get("adapter")):
        async for item in streaming(**inputs):
            if isinstance(item, dspy.streaming.StreamResponse):
                send_chunk({"field": item.signature_field_name, "text": item.chunk})
            elif isinstance(item, dspy.Prediction):
                final = item
    if final is None:
        raise CommandError("the stream ended without a prediction", kind="lm")
    return {"fields": prediction_fields(final), "usage": _usage(final), "elapsed_us": _since(started)}


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
        out = await_on_loop(ctx, lambda: _stream(ctx, program, inputs, lm, False, send_chunk))
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
def format_messages(ctx, signature, inputs: dict | None = None, demos: list | None = None, adapter: str = "chat", module: str = "predict"):
    """The messages DSPy's adapter builds (parity and shadow checks)."""
    sig = build_signature(signature)
    if module == "chain_of_thought":
        sig = dspy.ChainOfThought(sig).predict.signature
    inputs = dict(inputs or {})
    for key, value in list(inputs.items()):
        field = sig.input_fields.get(key)
        if field is not None and field.annotation is dspy.History and isinstance(value, dict):
            inputs[key] = dspy.History(**value)
    return {"messages": adapter_for(adapter).format(sig, [dict(d) for d in (demos or [])], inputs)}


@command("dspy.parse")
def parse_completion(ctx, signature, completion: str, adapter: str = "chat", module: str = "predict"):
    """Parse a completion with DSPy's adapter."""
    sig = build_signature(signature)
    if module == "chain_of_thought":
        sig = dspy.ChainOfThought(sig).predict.signature
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


class _Progress:
    """Wraps a metric so every evaluation is reported as a progress event."""

    def __init__(self, ctx, metric, total: int | None, phase: str):
        self.ctx, self.metric, self.total, self.phase = ctx, metric, total, phase
        self.done = 0
        self.lock = threading.Lock()

    def __call__(self, example, pred, trace=None, *args, **kwargs):
        self.ctx.check()
        score = self.metric(example, pred, trace, *args, **kwargs) if trace is not None else self.metric(example, pred, *args, **kwargs)
        with self.lock:
            self.done += 1
            done = self.done
        self.ctx.emit({"event": "progress", "phase": self.phase, "done": done, "total": self.total})
        return score


@command("dspy.evaluate")
def evaluate(ctx, program: dict, devset: list, metric: str = "exact_match", lm: dict | None = None, input_keys: list | None = None, num_threads: int = 1):
    """Score a program on a dev set with dspy.Evaluate."""
    module = shared_program(program)
    examples = _examples(devset, input_keys)
    scorer = _Progress(ctx, resolve_metric(metric), len(examples), "evaluate")
    with lm_context(ctx, lm, program.get("adapter")):
        evaluator = dspy.Evaluate(devset=examples, metric=scorer, num_threads=int(num_threads), display_progress=False)
        result = evaluator(module)
    rows = []
    for example, pred, score in getattr(result, "results", []) or []:
        rows.append({"example": jsonable(example.toDict()), "prediction": prediction_fields(pred) if pred else None, "score": jsonable(score)})
    return {"score": float(getattr(result, "score", result)), "results": rows}


OPTIMIZERS = {
    "LabeledFewShot": "dspy.teleprompt:LabeledFewShot",
    "BootstrapFewShot": "dspy.teleprompt:BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch": "dspy.teleprompt:BootstrapFewShotWithRandomSearch",
    "MIPROv2": "dspy.teleprompt:MIPROv2",
    "COPRO": "dspy.teleprompt:COPRO",
    "GEPA": "dspy.teleprompt:GEPA",
}


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
    # BootstrapFewShot scores each training example at most once (it stops
    # early once it has its demos): the trainset bounds its evaluations.
    bound = len(train) if optimizer == "BootstrapFewShot" else None
    scorer = _Progress(ctx, resolve_metric(metric), bound, "optimize")
    init = dict(params or {})
    if optimizer != "LabeledFewShot":
        init.setdefault("metric", scorer)
    if optimizer == "GEPA" and "reflection_lm" not in init:
        init["reflection_lm"] = build_lm(lm, ctx)
    compile_kwargs = dict(compile_params or {})
    if valset is not None and optimizer in ("BootstrapFewShotWithRandomSearch", "MIPROv2", "GEPA"):
        compile_kwargs["valset"] = _examples(valset, input_keys)
    ctx.emit({"event": "started", "optimizer": optimizer, "trainset": len(train)})
    with lm_context(ctx, lm, program.get("adapter"), disable_history=False):
        compiled = cls(**init).compile(module, trainset=train, **compile_kwargs)
    ctx.emit({"event": "finished", "optimizer": optimizer, "evaluations": scorer.done})
    return {"state": dump_state(compiled), "demos": sum(len(p.demos) for p in _predictors(compiled))}


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
                "fields": [{"name": k, "role": v.json_schema_extra["__dspy_field_type"], "prefix": v.json_schema_extra["prefix"], "desc": v.json_schema_extra["desc"]} for k, v in sig.fields.items()],
                "demos": len(predictor.demos),
            }
        )
    return {"predictors": out}


def warm_up() -> None:
    """Exercise signature parsing and formatting once, so the first request is not slow."""
    sig = dspy.Signature("question -> answer")
    ChatAdapter().format(sig, [], {"question": "warm-up"})
