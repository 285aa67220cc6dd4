"""DSPy set up for a worker, once, on import: settings and small patches.

- The model catalog comes from DSPy's bundled copy (``LITELLM_LOCAL_MODEL_COST_MAP``)
  and is loaded now, not by the first call that prices a reply.
- DSPy's disk cache stays off unless the pool asks for it
  (``DSPEX_DSPY_DISK_CACHE=1``; ``DSPEX_DSPY_MEMORY_CACHE=0`` turns the
  in-memory one off too).
- Model-catalog lookups are remembered (see ``_memoize_model_metadata``).
- DSPy's short bookkeeping steps run in place on the worker's loop instead
  of on threads (see ``_inline_steps``).
- In a pool that uses the runtime's LM gateway (``DSPEX_LM_GATEWAY=1``),
  DSPy's HTTP transport sends chat completions to the runtime (``gateway``).

Every module that calls DSPy's LMs imports this one first.
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import os
import warnings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import dspy  # noqa: E402

from . import aio  # noqa: E402
from .lru import LruCache  # noqa: E402

DISK_CACHE = os.environ.get("DSPEX_DSPY_DISK_CACHE", "0") == "1"

if not DISK_CACHE:
    dspy.configure_cache(
        enable_disk_cache=False, enable_memory_cache=os.environ.get("DSPEX_DSPY_MEMORY_CACHE", "1") == "1"
    )


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
    if not DISK_CACHE:
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


from . import gateway  # noqa: E402

if gateway.ENABLED or gateway.active():
    # Before any LM is built: lm15 picks its transport class when a router
    # first needs one (see ``gateway``).
    gateway.patch_transports()

_memoize_model_metadata()
try:
    # Load the model catalog now (~25 ms from DSPy's bundled copy; a fetch
    # of up to 5 s when LITELLM_LOCAL_MODEL_COST_MAP is not "true"), not on
    # the first call that prices a reply: on the worker's loop that would
    # stall every stream.
    importlib.import_module("dspy.clients.model_metadata")._load()
except Exception as exc:  # noqa: BLE001 - DSPy loads it on first use instead
    logging.getLogger("dspex_worker").warning("model catalog not preloaded: %s: %s", type(exc).__name__, exc)
aio.run_in_place(_inline_steps())
