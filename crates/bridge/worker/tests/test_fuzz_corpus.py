"""Every committed input of the atheris targets (seeds, the corpora the
fuzzer grew, inputs that once crashed) replayed through the same harness
(fuzz/python/fuzz_worker.py), so a fixed crash stays fixed."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]
FUZZ = ROOT / "fuzz"


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_worker", FUZZ / "python" / "fuzz_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("target", ["serve", "values"])
def test_every_committed_input_replays_cleanly(target):
    harness = _harness()
    run = harness.TARGETS[target]
    files = [
        path
        for kind in ("seeds", "corpus", "regressions")
        for path in sorted((FUZZ / kind / f"py_{target}").glob("*"))
        if path.is_file()
    ]
    assert files, f"no committed inputs for py_{target}"
    for path in files:
        run(path.read_bytes())
