"""The sandboxed Python interpreter that ProgramOfThought and CodeAct run
generated code in: DSPy's ``PythonInterpreter`` (Pyodide on Deno), started
so that it needs nothing but the Deno binary of DSPy's ``deno`` extra and
the npm registry.

DSPy's runner script imports ``readLines`` from ``https://deno.land/std``,
a host production machines (and this project's CI) often cannot reach. The
interpreters built here run Deno with an import map that points that one
URL at a local module with the same function (``_STD_IO``), written once
per worker into a private directory; everything else is DSPy's own command
line, permissions included.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from .registry import Unsupported

# The deno.land module DSPy's runner.js imports, and our stand-in for it:
# `readLines(reader)` yields the lines of a Deno reader without their
# terminator ("\n" or "\r\n"), and the last line even when it has none.
_STD_IO_URL = "https://deno.land/std@0.186.0/io/mod.ts"
_STD_IO = """\
export async function* readLines(reader) {
  const decoder = new TextDecoder();
  const buf = new Uint8Array(65536);
  let pending = "";
  for (;;) {
    const n = await reader.read(buf);
    if (n === null) break;
    pending += decoder.decode(buf.subarray(0, n), { stream: true });
    let i;
    while ((i = pending.indexOf("\\n")) >= 0) {
      const line = pending.slice(0, i);
      yield line.endsWith("\\r") ? line.slice(0, -1) : line;
      pending = pending.slice(i + 1);
    }
  }
  pending += decoder.decode();
  if (pending.length > 0) yield pending;
}
"""

_import_map: str | None = None


def deno_binary() -> str | None:
    """The Deno DSPy would run: its ``deno`` extra's binary, else ``deno`` on PATH."""
    from dspy.primitives.python_interpreter import _find_deno_executable

    path = _find_deno_executable()
    return path if os.path.isabs(path) and os.access(path, os.X_OK) else None


def require_deno(module: str) -> None:
    """Fail with ``Unsupported`` when ``module`` cannot have its sandbox here."""
    if deno_binary() is None:
        raise Unsupported(
            f"{module} runs generated code in DSPy's sandboxed interpreter, which needs Deno: "
            "install DSPy's deno extra (pip install 'dspy[deno]') in the worker's environment"
        )


def import_map() -> str:
    """The import map file (written on first use, private to this user)."""
    global _import_map
    if _import_map is None or not os.path.exists(_import_map):
        digest = hashlib.sha256(_STD_IO.encode()).hexdigest()[:12]
        directory = os.path.join(tempfile.gettempdir(), f"dspex-deno-{os.getuid()}-{digest}")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        module = os.path.join(directory, "std_io.js")
        mapping = os.path.join(directory, "import_map.json")
        _write_once(module, _STD_IO)
        _write_once(mapping, json.dumps({"imports": {_STD_IO_URL: "file://" + module}}))
        _import_map = mapping
    return _import_map


def _write_once(path: str, content: str) -> None:
    # Written next to its final name and renamed: a concurrent worker never
    # reads half a file.
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return
    fd, staging = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".staging-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    os.replace(staging, path)


def interpreter():
    """A new sandboxed interpreter (DSPy's ``interpreter_factory`` contract)."""
    from dspy.primitives.python_interpreter import PythonInterpreter

    require_deno("this module")
    interp = PythonInterpreter()
    # deno_command is [deno, "run", flags..., runner.js, ...]: the map goes with the flags.
    interp.deno_command.insert(2, f"--import-map={import_map()}")
    return interp
