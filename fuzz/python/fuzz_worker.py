"""Coverage-guided fuzzing of the Python worker with atheris: its frame
reader and main loop, and its argument conversion (see docs/fuzzing.md).

    .venv/bin/python fuzz/python/fuzz_worker.py serve  fuzz/corpus/py_serve  -runs=1000000
    .venv/bin/python fuzz/python/fuzz_worker.py values fuzz/corpus/py_values -runs=1000000

``serve``: the input is what the runtime wrote on the request pipe. A real
``Server`` reads it to the end and must return an exit code (0 at the end
of input, 3 on a protocol error) with every request answered; it never
raises. Only the harmless built-in commands are registered.

``values``: the input is a request's arguments (MessagePack). They are
converted as ``dspy.run`` converts them (``dspy.History`` inputs included),
then sent back as a result the way the worker sends results: a result that
cannot be encoded becomes an error reply, never an exception.

Also run by ``tests/python/test_fuzz_corpus.py`` over the committed corpora.
"""

from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "crates" / "bridge" / "worker"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402  (imported before instrumentation: only the worker is instrumented)
import msgpack  # noqa: E402

try:
    import atheris
except ImportError:  # the corpus replay needs no atheris
    atheris = None


def _imports():
    from dspex_worker import builtins, protocol, server, values
    from dspex_worker.registry import classify, registry

    return builtins, protocol, (registry, classify), server, values


if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["dspex_worker"]):
        builtins, protocol, (registry, classify), server, values = _imports()
else:
    builtins, protocol, (registry, classify), server, values = _imports()

# Harmless commands only: a fuzzed request must not sleep, crash or allocate.
_KEEP = {"noop", "echo", "commands", "fail", "count"}

_SIG = dspy.Signature("history: dspy.History, question, k: int -> answer")
_DEVNULL = os.open(os.devnull, os.O_WRONLY)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("fuzz-input")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def serve(data: bytes) -> None:
    fd = _memfd(data)
    everything = registry._commands
    registry._commands = {name: cmd for name, cmd in everything.items() if name in _KEEP}
    worker = server.Worker(fd, _DEVNULL, concurrency=2, max_frame=1 << 20, worker_id="worker:fuzz:0", lm_connector=None)
    try:
        code = worker.serve()
    finally:
        worker.pool.shutdown(wait=True)
        registry._commands = everything
        os.close(fd)
    assert code in (0, 3), code
    assert not worker.in_flight, worker.in_flight


def convert(data: bytes) -> None:
    try:
        args = msgpack.unpackb(data, strict_map_key=False)
    except Exception:  # noqa: BLE001 - not MessagePack: the reader's business, not this target's
        return
    if not isinstance(args, dict):
        return
    worker = server.Worker(_DEVNULL, _DEVNULL, concurrency=1, max_frame=1 << 20, worker_id="worker:fuzz:0")
    try:
        inputs = values.history_inputs(_SIG, args)
        result = values.jsonable(inputs)
    except Exception as exc:  # noqa: BLE001 - a conversion error is an error reply
        error = classify(exc)
        assert error["kind"] and error["message"] is not None
        return
    finally:
        worker.pool.shutdown(wait=False)
    worker._send_result(protocol.MSGPACK, 1, protocol.ok_response(1, result))
    worker._send_result(protocol.JSON, 1, protocol.ok_response(1, result))


TARGETS = {"serve": serve, "values": convert}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
