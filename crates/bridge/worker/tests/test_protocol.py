"""The frame loop: handshake, codecs, errors, streams, deadlines, cancel, faults."""

import json
import os
import struct
import sys
import textwrap
import time

import pytest

from conftest import JSON, MSGPACK, spawn_worker, wait_exit
from dspex_worker import columnar
from dspex_worker.gateway import lm_call_message
from dspex_worker.protocol import (
    ARROW,
    AUTO,
    CODECS,
    FrameReader,
    ProtocolError,
    choose,
    chunk_message,
    decode_payload,
    encode_frame,
    encode_payload,
    end_message,
    error_response,
    hello_message,
    ok_response,
    pong_message,
    reply_tag,
)


def test_hello_announces_the_worker(worker):
    hello = worker.hello
    assert hello["protocol"] == 1
    assert hello["pid"] == os.getpid()
    assert set(hello["codecs"]) == {"json", "msgpack", "arrow"}, "pyarrow is pinned in the project environment"
    assert {"noop", "echo", "dspy.run", "dspy.optimize", "dspy.format"} <= set(hello["commands"])
    assert hello["max_concurrency"] == 4


@pytest.mark.parametrize("tag", [JSON, MSGPACK])
def test_echo_round_trips_in_both_codecs(worker, tag):
    payload = {"text": "héllo «x»", "n": 3, "f": 1.5, "list": [1, None, True], "nested": {"a": [{}]}}
    resp, _ = worker.call("echo", payload, tag=tag)
    assert resp["ok"] == payload


def test_unknown_command_and_bad_arguments_are_classified(worker):
    resp, _ = worker.call("nope")
    assert resp["error"]["kind"] == "not_found"
    resp, _ = worker.call("sleep", {"secnds": 1})
    assert resp["error"]["kind"] == "invalid_request"
    assert "secnds" in resp["error"]["message"]
    worker.send({"type": "request", "id": 99, "op": "echo", "args": [1, 2]})
    resp = worker.recv()
    assert resp["id"] == 99 and resp["error"]["kind"] == "invalid_request"


def test_exceptions_carry_type_message_and_traceback(worker):
    resp, _ = worker.call("fail", {"message": "kaput"})
    err = resp["error"]
    assert err["type"] == "ValueError" and err["message"] == "kaput" and err["kind"] == "python"
    assert "Traceback" in err["traceback"] and not err["retryable"]
    resp, _ = worker.call("fail", {"message": "later", "kind": "unsupported"})
    assert resp["error"]["kind"] == "unsupported"


def test_printing_does_not_corrupt_frames(worker):
    resp, _ = worker.call("print", {"lines": 50, "text": "\x00\x00\x00\x05garbage"})
    assert resp["ok"] == {"printed": 50}
    resp, _ = worker.call("echo", {"still": "fine"})
    assert resp["ok"] == {"still": "fine"}


def test_stream_chunks_arrive_in_order_before_the_response(worker):
    resp, chunks = worker.call("count", {"n": 5}, stream=True)
    assert [c["data"]["i"] for c in chunks] == [1, 2, 3, 4, 5]
    assert [c["seq"] for c in chunks] == [1, 2, 3, 4, 5]
    assert resp["ok"] == {"n": 5}
    # Without `stream`, the same command sends no chunks.
    resp, chunks = worker.call("count", {"n": 3})
    assert chunks == [] and resp["ok"] == {"n": 3}


def test_deadline_is_enforced(worker):
    started = time.monotonic()
    resp, _ = worker.call("sleep", {"seconds": 5}, deadline_ms=100)
    assert resp["error"]["kind"] == "timeout" and resp["error"]["retryable"]
    assert time.monotonic() - started < 2
    resp, _ = worker.call("noop", deadline_ms=0)
    assert resp["error"]["kind"] == "timeout"


def test_cancel_stops_a_running_command(worker):
    rid = worker.request("sleep", {"seconds": 10})
    time.sleep(0.05)
    worker.send({"type": "cancel", "id": rid})
    resp = worker.recv()
    assert resp["id"] == rid and resp.get("error", {}).get("kind") == "cancelled", resp


def test_many_requests_in_flight_complete_out_of_order(worker):
    slow = worker.request("sleep", {"seconds": 0.3})
    fast = worker.request("sleep", {"seconds": 0.01})
    first, second = worker.recv(), worker.recv()
    assert (first["id"], second["id"]) == (fast, slow)


def test_ping_pong_and_shutdown(worker):
    worker.send({"type": "ping", "seq": 7})
    pong = worker.recv()
    assert pong == {"type": "pong", "seq": 7, "in_flight": 0}
    worker.send({"type": "shutdown", "grace_ms": 100})
    worker.thread.join(2)
    assert worker.result["code"] == 0


def test_codec_helpers_reject_garbage():
    with pytest.raises(ProtocolError):
        decode_payload(JSON, b"{not json")
    with pytest.raises(ProtocolError):
        decode_payload(MSGPACK, b"\xc1")
    with pytest.raises(ProtocolError):
        decode_payload(7, b"{}")
    with pytest.raises(ProtocolError):
        encode_payload(9, {})
    r, w = os.pipe()
    os.write(w, struct.pack(">IB", 10**9, 0))
    os.close(w)
    with pytest.raises(ProtocolError):
        FrameReader(r, max_frame=1024).read()
    r, w = os.pipe()
    os.write(w, encode_frame(JSON, {"a": 1})[:-2])
    os.close(w)
    with pytest.raises(ProtocolError):
        FrameReader(r).read()


def test_a_spinning_reader_polls_first_unless_told_to_block():
    r, w = os.pipe()
    reader = FrameReader(r, spin_us=50_000)
    polls = []
    real = reader._wait_briefly
    reader._wait_briefly = lambda: (polls.append(1), real())
    os.write(w, encode_frame(JSON, {"n": 1}))
    assert reader.read() == (JSON, {"n": 1})
    assert len(polls) == 1
    # Work was just handed to another thread: the next read blocks at once
    # (a poll would hold the GIL that thread needs), and only that one.
    reader.block_next()
    os.write(w, encode_frame(JSON, {"n": 2}) + encode_frame(JSON, {"n": 3}))
    assert reader.read() == (JSON, {"n": 2})
    assert reader.read() == (JSON, {"n": 3})
    assert len(polls) == 1, "neither read polled: the second frame was buffered"
    os.write(w, encode_frame(JSON, {"n": 4}))
    assert reader.read() == (JSON, {"n": 4})
    assert len(polls) == 2
    os.close(w)
    assert reader.read() is None


def _golden_frames() -> list:
    path = os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "..", "tests", "fixtures", "protocol", "golden.json"
    )
    with open(path) as fh:
        return json.load(fh)["frames"]


def test_golden_frames_decode_and_reencode():
    for case in _golden_frames():
        frame = bytes.fromhex(case["hex"])
        length, tag = struct.unpack(">IB", frame[:5])
        assert length == len(frame) - 4
        message = decode_payload(tag, frame[5:])
        assert message == case["message"], case["name"]
        assert encode_frame(tag, message) == frame, case["name"]


def _golden_arrow_frames() -> list:
    path = os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "..", "tests", "fixtures", "protocol", "golden.json"
    )
    with open(path) as fh:
        return json.load(fh)["arrow_frames"]


def test_golden_arrow_frames_decode_and_reencode():
    frames = _golden_arrow_frames()
    assert {f["made_by"] for f in frames} == {"python", "rust"}
    for case in frames:
        frame = bytes.fromhex(case["hex"])
        length, tag = struct.unpack(">IB", frame[:5])
        assert (length, tag) == (len(frame) - 4, ARROW), case["name"]
        message = decode_payload(tag, frame[5:])
        assert message == case["message"], case["name"]
        again = encode_frame(ARROW, message)
        if case["made_by"] == "python":
            assert again == frame, case["name"]
        assert decode_payload(ARROW, again[5:]) == case["message"], case["name"]


def test_columnar_shapes_are_exact_about_kinds():
    assert columnar.shape([1.5, 2.0]) == ("floats", 18)
    assert columnar.shape([1, -2])[0] == "ints"
    assert columnar.shape([1, 2.5]) is None, "an int must not become a float"
    assert columnar.shape([True, False]) is None
    assert columnar.shape([2**64]) is None
    assert columnar.shape([[1.0, 2.0], []])[0] == "float_lists"
    assert columnar.shape([[1.0, 2]]) is None
    recs = [{"q": "a", "n": 1, "v": None}, {"q": None, "n": 2, "v": [0.5]}]
    assert columnar.shape(recs)[0] == [("q", "str"), ("n", "int"), ("v", "float_list")]
    assert columnar.shape([{"a": 1}, {"b": 1}]) is None
    assert columnar.shape([{"a": 1, "b": 2}, {"b": 1, "a": 2}]) is None
    assert columnar.shape([{"a": 1}, {"a": 1.5}]) is None
    assert columnar.shape([{"a": {"x": 1}}]) is None
    assert columnar.shape([{}]) is None
    assert columnar.shape(["a"]) is None
    assert columnar.shape([]) is None
    payload = {
        "small": [1.5, 2.5],
        "a/b~c": [i + 0.5 for i in range(100)],
        "nested": {"rows": [{"id": i, "text": "some text"} for i in range(40)]},
        "list": [[1.5] * 80, "x"],
        "long": [{"x": [0.5] * 100}] + ["y"] * 64,
    }
    found = columnar.find(payload)
    assert [f[0] for f in found] == ["/a~1b~0c", "/nested/rows", "/list/0"]
    assert found[0][3] == 900
    numeric = columnar.find(payload, columnar.numeric_shape)
    assert [f[0] for f in numeric] == ["/a~1b~0c", "/list/0"], "records are left to MessagePack"


def test_auto_picks_arrow_for_large_columnar_payloads_only():
    big = {"type": "response", "id": 1, "ok": {"emb": [i / 7 for i in range(40_000)]}}
    small = {"type": "response", "id": 1, "ok": {"emb": [i / 7 for i in range(100)]}}
    irregular = {"type": "response", "id": 1, "ok": [i / 7 if i % 2 else str(i) for i in range(40_000)]}
    assert choose(big)[0] == ARROW
    assert choose(small)[0] == MSGPACK
    assert choose(irregular)[0] == MSGPACK
    assert choose({"type": "pong", "seq": 1, "in_flight": 0})[0] == MSGPACK
    assert encode_frame(AUTO, big)[4] == ARROW
    assert encode_frame(AUTO, small)[4] == MSGPACK
    assert reply_tag(MSGPACK, {"reply_codec": "auto"}) == AUTO
    assert reply_tag(ARROW, {}) == ARROW
    assert reply_tag(MSGPACK, {"reply_codec": "json"}) == JSON


def test_broken_arrow_payloads_are_protocol_errors():
    good = encode_frame(ARROW, {"type": "response", "id": 1, "ok": [0.5] * 100})[5:]
    for bad in [b"", b"\x00\x00\x00\x09", good[:-3], good + b"x", good.replace(b"values", b"valuez")]:
        with pytest.raises(ProtocolError):
            decode_payload(ARROW, bad)


@pytest.mark.parametrize("reply", [None, "auto", "msgpack"])
def test_echo_round_trips_large_columnar_payloads_in_arrow(worker, reply):
    payload = {
        "devset": [{"question": f"q{i}", "answer": str(i), "score": i / 3} for i in range(5000)],
        "vectors": [[i / 2, i / 4] for i in range(15_000)],
        "text": "not columnar",
    }
    extra = {} if reply is None else {"reply_codec": reply}
    rid = worker.request("echo", payload, tag=ARROW, **extra)
    tag, msg = worker.reader.read()
    assert msg == {"type": "response", "id": rid, "ok": payload}
    assert tag == {None: ARROW, "auto": ARROW, "msgpack": MSGPACK}[reply]


def test_a_result_that_cannot_be_encoded_is_an_error_not_a_hang():
    from dspex_worker.registry import Context
    from dspex_worker.server import Worker

    sent = []

    class Writer:
        def send(self, tag, message):
            encode_frame(tag, message)
            sent.append((tag, message))

    w = Worker.__new__(Worker)
    w.writer = Writer()
    w._succeed(AUTO, Context(5, None, None), False, {"bad": object()})
    ((tag, message),) = sent
    assert tag == MSGPACK and message["error"]["message"].startswith("the command's result cannot be sent")


def test_the_message_builders_make_the_golden_frames():
    golden = {case["name"]: case for case in _golden_frames()}
    message = {name: case["message"] for name, case in golden.items()}
    hello = {k: v for k, v in message["hello"].items() if k not in ("type", "protocol", "codecs")}
    built = {
        "hello": hello_message(**hello),
        "response-ok": ok_response(1, message["response-ok"]["ok"]),
        "response-error": error_response(2, message["response-error"]["error"]),
        "chunk": chunk_message(3, 1, message["chunk"]["data"]),
        "end": end_message(3),
        "pong": pong_message(9, 2),
        "long-string": ok_response(4, "x" * 300),
        "lm-call": lm_call_message(
            1,
            7,
            message["lm-call"]["url"],
            message["lm-call"]["headers"],
            message["lm-call"]["body"],
            30000,
            2,
            False,
        ),
    }
    for name, msg in built.items():
        assert encode_frame(CODECS[golden[name]["codec"]], msg).hex() == golden[name]["hex"], name


# ---------------------------------------------------------------- child processes


def test_child_worker_handshakes_and_exits_on_eof():
    client = spawn_worker()
    hello = client.recv()
    assert hello["type"] == "hello" and hello["pid"] == client.proc.pid
    rid = client.request("sleep", {"seconds": 30, "check": False})
    time.sleep(0.1)
    os.close(client.req_w)  # the runtime goes away
    started = time.monotonic()
    assert wait_exit(client.proc) == 0
    assert time.monotonic() - started < 2, "EOF ends the worker even during a long call"
    assert rid == 1


def test_child_worker_exits_on_garbage_and_reports_it():
    client = spawn_worker()
    client.recv()
    client.send_raw(b"\x00\x00\x00\x03\x09ab")
    assert wait_exit(client.proc) == 3
    assert b"protocol error" in client.proc.stderr.read()


def test_child_worker_loads_user_modules(tmp_path):
    mod = tmp_path / "my_commands.py"
    mod.write_text(
        textwrap.dedent(
            """
        from dspex_worker import command

        @command("shout")
        def shout(ctx, text):
            return {"text": text.upper(), "request": ctx.request_id}
        """
        )
    )
    client = spawn_worker(
        {
            "DSPEX_WORKER_MODULES": "my_commands",
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
            + os.pathsep
            + os.path.dirname(os.path.dirname(__file__)),
        }
    )
    hello = client.recv()
    assert "shout" in hello["commands"]
    resp, _ = client.call("shout", {"text": "hi"})
    assert resp["ok"] == {"text": "HI", "request": 1}
    os.close(client.req_w)
    assert wait_exit(client.proc) == 0


def test_child_worker_reports_a_broken_user_module():
    client = spawn_worker({"DSPEX_WORKER_MODULES": "definitely_not_a_module"})
    assert wait_exit(client.proc) == 4
    assert b"definitely_not_a_module" in client.proc.stderr.read()


def test_child_worker_needs_its_descriptors():
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-m", "dspex_worker"], env=env, capture_output=True, timeout=30)
    assert out.returncode == 2 and b"DSPEX_REQ_FD" in out.stderr


def test_child_worker_crash_closes_the_pipe():
    client = spawn_worker()
    client.recv()
    client.request("crash", {"code": 7})
    assert client.reader.read() is None
    assert wait_exit(client.proc) == 7


def test_info_reports_limits_and_caps(worker):
    resp, _ = worker.call("info")
    info = resp["ok"]
    assert info["pid"] == os.getpid()
    assert "OMP_NUM_THREADS" in info["env"]


def test_identify_renames_the_worker_in_its_log_lines(worker, monkeypatch):
    import logging

    monkeypatch.setenv("DSPEX_WORKER_ID", "standby:p:1")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        resp, _ = worker.call("identify", {"name": "worker:p:0"})
        assert resp["ok"] == {"name": "worker:p:0"}
        assert os.environ["DSPEX_WORKER_ID"] == "worker:p:0"
        record = logging.LogRecord("dspy", logging.WARNING, __file__, 1, "hello", None, None)
        record.request_id = "-"
        assert root.handlers[0].format(record) == "WARNING worker:p:0 req=- dspy: hello"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def _package_doc_example() -> str:
    """The example of ``on_loop`` in the package's docstring, as code."""
    import dspex_worker

    doc = dspex_worker.__doc__
    parts = doc[doc.index("ends it at once::") + len("ends it at once::") :].strip("\n").split("\n\n")
    code = []
    for part in parts:
        if not part.startswith("    "):
            break
        code.append(part)
    return textwrap.dedent("\n\n".join(code))


def test_a_command_with_a_loop_form_runs_there_and_ends_at_its_deadline_or_cancel(tmp_path):
    # The package docs' example, plus a probe of where each form runs.
    mod = tmp_path / "loop_commands.py"
    mod.write_text(
        _package_doc_example()
        + textwrap.dedent(
            """

        import logging
        import threading

        @command("where")
        def where(ctx, loop: bool):
            return {"thread": threading.current_thread().name}

        @on_loop("where", when=lambda args: args["loop"])
        async def where_on_loop(ctx, loop: bool):
            logging.getLogger("loop_commands").warning("on the loop")
            for i in range(3):
                ctx.emit({"i": i})
            return {"thread": threading.current_thread().name}
        """
        )
    )
    path = f"{tmp_path}{os.pathsep}{os.path.dirname(os.path.dirname(__file__))}"
    client = spawn_worker({"DSPEX_WORKER_MODULES": "loop_commands", "PYTHONPATH": path})
    client.recv()
    resp, chunks = client.call("where", {"loop": True}, stream=True, trace_id="trace-7")
    assert resp["ok"] == {"thread": "dspex-loop"} and [c["data"]["i"] for c in chunks] == [0, 1, 2]
    resp, _ = client.call("where", {"loop": False})
    assert resp["ok"]["thread"].startswith("dspex-req")
    # Both forms of the docs' example answer.
    for on_loop in (False, True):
        resp, _ = client.call("nap", {"seconds": 0.01, "on_loop": on_loop})
        assert resp["ok"] == {"slept": 0.01}, resp
    # A bad argument is the caller's error on the loop too.
    resp, _ = client.call("nap", {"seconds": 0, "on_loop": True, "nope": 1})
    assert resp["error"]["kind"] == "invalid_request", resp
    started = time.monotonic()
    resp, _ = client.call("nap", {"seconds": 30, "on_loop": True}, deadline_ms=200)
    assert resp["error"]["kind"] == "timeout" and time.monotonic() - started < 2, resp
    for pause in (0.1, 0.0):  # a cancel while it waits, and one before it starts
        rid = client.request("nap", {"seconds": 30, "on_loop": True})
        time.sleep(pause)
        started = time.monotonic()
        client.send({"type": "cancel", "id": rid})
        resp = client.recv()
        assert resp["id"] == rid and resp["error"]["kind"] == "cancelled" and time.monotonic() - started < 1, resp
    os.close(client.req_w)
    assert wait_exit(client.proc) == 0
    # Log lines from a task on the loop carry their request's trace id.
    assert b"req=trace-7 loop_commands: on the loop" in client.proc.stderr.read()


def test_a_loop_form_needs_an_async_function_and_a_command_off_the_reader():
    from dspex_worker.registry import command, on_loop

    @command("test.loopless", inline=True)
    def loopless(ctx):
        return {}

    with pytest.raises(ValueError, match="inline"):
        on_loop("test.loopless", when=lambda args: True)(loopless)

    @command("test.plain")
    def plain(ctx):
        return {}

    with pytest.raises(TypeError, match="async def"):
        on_loop("test.plain", when=lambda args: True)(plain)


def test_a_missing_required_argument_is_the_callers_error(worker):
    resp, _ = worker.call("dspy.run", {})
    assert resp["error"]["kind"] == "invalid_request", resp
    assert "program" in resp["error"]["message"]


def test_a_malformed_request_is_answered_and_the_worker_carries_on(worker):
    # A deadline that is not a number: the request gets an error, the loop goes on.
    worker.send({"type": "request", "id": 7, "op": "sleep", "args": {}, "deadline_ms": "soon"})
    resp = worker.recv()
    assert resp["id"] == 7 and resp["error"]["kind"] == "invalid_request"
    assert "malformed request" in resp["error"]["message"]
    resp, _ = worker.call("echo", {"still": "here"})
    assert resp["ok"] == {"still": "here"}


def test_a_result_over_the_frame_limit_is_an_error_not_a_dead_worker():
    from dspex_worker.protocol import FrameTooLarge, FrameWriter
    from dspex_worker.registry import Context
    from dspex_worker.server import Worker

    r, wfd = os.pipe()
    try:
        writer = FrameWriter(wfd, __import__("threading").Lock(), max_frame=1024)
        with pytest.raises(FrameTooLarge, match="frame limit of 1024 bytes"):
            writer.send(MSGPACK, ok_response(1, "x" * 4096))
        w = Worker.__new__(Worker)
        w.writer = writer
        w._succeed(MSGPACK, Context(3, None, None), False, "y" * 4096)
        (length, tag) = struct.unpack(">IB", os.read(r, 5))
        message = decode_payload(tag, os.read(r, length - 1))
        assert message["id"] == 3 and message["error"]["kind"] == "invalid_request"
        assert "frame limit" in message["error"]["message"]
    finally:
        os.close(r)
        os.close(wfd)


def test_payloads_python_cannot_hold_are_protocol_errors():
    # A map key that is itself a map (legal MessagePack, not a dict key).
    with pytest.raises(ProtocolError):
        decode_payload(MSGPACK, bytes([0x81, 0x81, 0x01, 0x02, 0x03]))
    with pytest.raises(ProtocolError):
        decode_payload(JSON, b"[" * 100_000)
