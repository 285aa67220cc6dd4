"""The golden command fixtures (``tests/fixtures/commands/*.json`` at the
repository root) against the real worker.

Each fixture holds a command's ``args`` exactly as the Rust runtime sends them
(``crates/bridge/src/commands.rs``) and the shape of the worker's ``reply``
(for streams also its ``chunks``). Here every fixture's arguments go through
the real command, and the reply must have the fixture's shape; the Rust tests
check that the typed payloads encode to the same arguments and decode the same
replies. ``DSPEX_COMMAND_FIXTURES`` points the tests at another directory
(to try an edited copy).

Most fixtures' LMs are DSPy DummyLMs. A DummyLM answers in one piece, so the
stream fixture's LM is a local OpenAI-compatible server instead (the
``lm_server`` of ``test_http_lm``): the string ``"{lm_server}"`` in its
``args`` stands for the server's URL, and the server streams the fixture's
reply fields in word-sized pieces, so the chunks come from DSPy's real
streaming path (see the fixtures' README).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from test_http_lm import lm_server  # noqa: F401  (the local LM server of the stream fixture, by name)

WORKER = Path(__file__).resolve().parents[1]
REPO = WORKER.parents[2]
COMMANDS_RS = WORKER.parent / "src" / "commands.rs"
FIXTURES = Path(os.environ.get("DSPEX_COMMAND_FIXTURES") or REPO / "tests" / "fixtures" / "commands")
FILES = sorted(p.name for p in FIXTURES.glob("*.json"))

# Reply keys whose values are deterministic under the fixtures' LMs (DummyLMs,
# or the local server scripted with the fixture's reply): they must equal the
# fixture's, not only have its shape.
EXACT = {
    "dspy.run": ("fields",),
    "dspy.stream": ("fields",),
    "session.run": ("fields",),
    "dspy.evaluate": ("score",),
    "session.define": ("defined",),
    "session.drop": ("dropped",),
}


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# The placeholder for the local LM server's URL in a fixture's `args`.
LM_SERVER = "{lm_server}"


def uses_lm_server(value) -> bool:
    if isinstance(value, dict):
        return any(map(uses_lm_server, value.values()))
    if isinstance(value, list):
        return any(map(uses_lm_server, value))
    return value == LM_SERVER


def with_lm_server(value, url: str):
    """``value`` with every ``"{lm_server}"`` string replaced by ``url``."""
    if isinstance(value, dict):
        return {k: with_lm_server(v, url) for k, v in value.items()}
    if isinstance(value, list):
        return [with_lm_server(v, url) for v in value]
    return url if value == LM_SERVER else value


def chat_reply(fields: dict) -> str:
    """``fields`` as a model answers them in DSPy's chat format."""
    out = ""
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out += f"[[ ## {name} ## ]]\n{text}\n\n"
    return out + "[[ ## completed ## ]]"


def by_command() -> dict:
    return {f["command"]: f for f in map(load, FILES)}


def rust_commands() -> set:
    names = set(re.findall(r'pub const [A-Z_]+: &str = "([^"]+)";', COMMANDS_RS.read_text()))
    assert names, f"no command constants found in {COMMANDS_RS}"
    return names


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before numbers: a bool is an int in Python
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shape_mismatches(expected, actual, path: str = "reply", key: str | None = None) -> list:
    """Where ``actual`` does not have the shape of ``expected``: the same keys
    (recursively), list elements shaped like the fixture's (element by
    element when the lengths agree, else like its first),
    scalars of the same JSON type; ``usage`` may be null or an object."""
    if key == "usage" and (actual is None or isinstance(actual, dict)):
        if isinstance(expected, dict) and isinstance(actual, dict):
            return _dict_mismatches(expected, actual, path)
        return []
    if json_type(expected) != json_type(actual):
        return [f"{path}: expected {json_type(expected)} ({expected!r}), got {json_type(actual)} ({actual!r})"]
    if isinstance(expected, dict):
        return _dict_mismatches(expected, actual, path)
    if isinstance(expected, list) and expected:
        if not actual:
            return [f"{path}: expected elements shaped like {expected[0]!r}, got an empty list"]
        # A list as long as the fixture's is compared element by element
        # (items of a parallel run differ: fields or an error); any other,
        # each element against the fixture's first.
        pattern = expected if len(expected) == len(actual) else [expected[0]] * len(actual)
        out = []
        for i, (want, item) in enumerate(zip(pattern, actual, strict=True)):
            out += shape_mismatches(want, item, f"{path}[{i}]", key)
        return out
    return []


def _dict_mismatches(expected: dict, actual: dict, path: str) -> list:
    out = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing:
        out.append(f"{path}: missing keys {missing} (got {sorted(actual)})")
    if extra:
        out.append(f"{path}: unexpected keys {extra} (fixture has {sorted(expected)})")
    for k in sorted(set(expected) & set(actual)):
        out += shape_mismatches(expected[k], actual[k], f"{path}.{k}", k)
    return out


def ok(resp, what: str):
    assert "ok" in resp, f"{what} failed: {resp.get('error', {}).get('kind')}: {resp.get('error', {}).get('message')}"
    return resp["ok"]


def test_the_shape_comparison_sees_renames_types_and_lists():
    assert shape_mismatches({"a": {"b": 1}}, {"a": {"b": 2.5}}) == []
    assert shape_mismatches({"a": {"b": 1}}, {"a": {"c": 1}})
    assert shape_mismatches({"a": 1}, {"a": True}) and shape_mismatches({"a": 1}, {"a": "1"})
    assert shape_mismatches({"a": None}, {"a": None}) == [] and shape_mismatches({"a": None}, {"a": 0})
    assert shape_mismatches({"usage": None}, {"usage": {"total_tokens": 3}}) == []
    assert shape_mismatches({"usage": None}, {"usage": 3})
    assert shape_mismatches([{"x": 1}], [{"x": 1}, {"x": 2}]) == []
    assert shape_mismatches([{"x": 1}], [{"x": 1}, {"y": 2}]) and shape_mismatches([{"x": 1}], [])
    assert shape_mismatches([], [{"anything": 1}]) == []


def test_every_command_the_runtime_names_has_a_fixture():
    fixtures = by_command()
    named = rust_commands()
    assert sorted(named - set(fixtures)) == [], "commands in commands.rs without a fixture"
    assert sorted(set(fixtures) - named) == [], "fixtures for commands commands.rs does not name"
    for name in FILES:
        f = load(name)
        assert name == f"{f['command']}.json", f"{name} holds the fixture of {f['command']}"
        for before in f.get("after", []):
            assert before in fixtures, f"{name}: `after` names {before}, which has no fixture"
            assert "session" in f, f"{name}: `after` only makes sense within a session"


@pytest.mark.parametrize("name", FILES)
def test_fixture_args_fit_the_registered_command(name):
    from dspex_worker import builtins, dspy_commands, sessions  # noqa: F401  (register the commands)
    from dspex_worker.registry import Context, InvalidArguments, registry

    f = load(name)
    cmd = registry.get(f["command"])
    ctx = Context("fixture", session=f.get("session"))
    # The coroutine form, when the command has one, must take the same arguments.
    forms = [("thread", cmd.signature)] + ([("loop", cmd.coroutine_signature)] if cmd.coroutine else [])
    for form, signature in forms:
        assert signature is not None, f"{f['command']} ({form}) has no signature to check arguments against"
        swallowing = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
        assert not swallowing, f"{f['command']} ({form}) takes **{swallowing[0]}: any key would fit"
        try:
            cmd._check(signature, ctx, f["args"])
        except InvalidArguments as exc:
            pytest.fail(f"{name}: the worker's {form} form rejects the runtime's arguments: {exc}")


@pytest.mark.parametrize("name", FILES)
def test_fixture_runs_through_the_worker_and_replies_in_its_shape(request, worker, name):
    fixtures = by_command()
    f = load(name)
    command, session = f["command"], f.get("session")
    extra = {"session": session} if session is not None else {}
    stream = "chunks" in f
    args, server = f["args"], None
    if uses_lm_server(args):
        assert stream, f"{name}: only streamed commands may use {LM_SERVER} (the server scripts streamed answers)"
        server = request.getfixturevalue("lm_server")
        # The server streams the fixture's fields in word-sized pieces, as a model sends tokens.
        server.stream_replies = [chat_reply(f["reply"]["fields"])]
        args = with_lm_server(args, f"http://127.0.0.1:{server.server_port}/v1")
    if session is not None:
        # Sessions live in the worker module: start from none, as a fresh worker would.
        ok(worker.call("session.drop", {}, **extra)[0], "session.drop (clean-up before)")
    try:
        for before in f.get("after", []):
            assert before in fixtures, f"{name}: `after` names {before}, which has no fixture"
            ok(worker.call(before, fixtures[before]["args"], **extra)[0], f"{before} (run first, per `after`)")
        resp, chunks = worker.call(command, args, stream=stream, **extra)
        reply = ok(resp, command)
    finally:
        if session is not None:
            worker.call("session.drop", {}, **extra)

    problems = shape_mismatches(f["reply"], reply)
    if stream:
        if not chunks:
            problems.append("chunks: the stream sent none")
        for i, chunk in enumerate(chunks):
            problems += shape_mismatches(f["chunks"][0], chunk["data"], f"chunks[{i}]")
    assert not problems, f"{name}: the worker's reply is not in the fixture's shape:\n  " + "\n  ".join(problems)

    for key in EXACT.get(command, ()):
        assert isinstance(f["reply"], dict) and key in f["reply"], f"{name}: the fixture's reply has no {key!r}"
        assert reply[key] == f["reply"][key], f"{name}: {key} is {reply[key]!r}, the fixture says {f['reply'][key]!r}"
    if stream:
        # However the text is cut into chunks, each field's text is the fixture's
        # and the reply's.
        def texts(items):
            out = {}
            for c in items:
                out[c["field"]] = out.get(c["field"], "") + c["text"]
            return out

        assert f["chunks"] and all(c["text"] for c in f["chunks"]), f"{name}: fixture chunks need non-empty text"
        streamed = texts(c["data"] for c in chunks)
        assert streamed == texts(f["chunks"]), f"{name}: streamed text differs from the fixture's chunks"
        assert streamed == reply["fields"], (
            f"{name}: the streamed text differs from the reply's fields: {streamed!r} vs {reply['fields']!r}"
        )
        if len(f["chunks"]) > 1:
            pieces = [c["data"]["text"] for c in chunks if c["data"]["text"]]
            assert len(pieces) > 1, f"{name}: the text arrived in one piece, not streamed: {pieces!r}"
        if server is not None:
            assert server.requests and all(r.get("stream") is True for r in server.requests), (
                f"{name}: the worker did not ask the LM server for a stream"
            )
            assert not server.stream_replies, f"{name}: the LM server's scripted answer was never asked for"
