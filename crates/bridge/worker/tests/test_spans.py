"""Trace context: a request with a `traceparent` returns its spans, parented in that trace."""

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))

from dspex_worker.spans import SpanRecorder, parse_traceparent  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


def test_a_traced_request_returns_its_command_module_and_lm_spans(worker):
    program = {"module": "chain_of_thought", "signature": "question -> answer"}
    lm = {"dummy": [{"reasoning": "add", "answer": "4"}]}
    resp, _ = worker.call(
        "dspy.run", {"program": program, "inputs": {"question": "2+2?"}, "lm": lm}, traceparent=TRACEPARENT
    )
    assert resp["ok"]["fields"]["answer"] == "4"
    spans = {s["name"]: s for s in resp["spans"]}
    assert {s["trace_id"] for s in resp["spans"]} == {TRACE}
    command = spans["python dspy.run"]
    assert command["parent_span_id"] == PARENT
    assert command["attributes"]["dspex.op"] == "dspy.run"
    cot = spans["dspy.ChainOfThought"]
    assert cot["parent_span_id"] == command["span_id"]
    # ChainOfThought runs a Predict, which calls the LM.
    predict = spans["dspy.Predict"]
    assert predict["parent_span_id"] == cot["span_id"]
    lm_span = next(s for s in resp["spans"] if s["name"].startswith("lm "))
    assert lm_span["parent_span_id"] == predict["span_id"]
    assert lm_span["attributes"]["gen_ai.operation.name"] == "chat"
    ids = [s["span_id"] for s in resp["spans"]]
    assert len(set(ids)) == len(ids)
    for s in resp["spans"]:
        assert command["start_unix_ns"] <= s["start_unix_ns"] <= s["end_unix_ns"] <= command["end_unix_ns"]


def test_untraced_and_badly_traced_requests_return_no_spans(worker):
    args = {
        "program": {"module": "predict", "signature": "q -> a"},
        "inputs": {"q": "x"},
        "lm": {"dummy": [{"a": "y"}]},
    }
    for extra in ({}, {"traceparent": "00-nothex-00f067aa0ba902b7-01"}):
        resp, _ = worker.call("dspy.run", args, **extra)
        assert resp["ok"]["fields"] == {"a": "y"}
        assert "spans" not in resp


def test_a_failed_traced_request_marks_its_span_and_inline_commands_are_traced(worker):
    resp, _ = worker.call("dspy.run", {"program": {"module": "nope"}}, traceparent=TRACEPARENT)
    assert "error" in resp
    (command,) = [s for s in resp["spans"] if s["name"] == "python dspy.run"]
    assert "error" in command
    resp, _ = worker.call("echo", {"x": 1}, traceparent=TRACEPARENT)
    assert resp["ok"] == {"x": 1}
    assert [s["name"] for s in resp["spans"]] == ["python echo"]


def test_traceparent_parsing_follows_the_w3c_rules():
    assert parse_traceparent(TRACEPARENT) == (TRACE, PARENT)
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-later") == (TRACE, PARENT)
    for bad in (
        None,
        7,
        "",
        f"00-{TRACE}-{PARENT}",
        f"00-{TRACE}-{PARENT}-01-x",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE.upper()}-{PARENT}-01",
    ):
        assert parse_traceparent(bad) is None, bad


def test_spans_from_threads_without_the_context_hang_off_the_root_and_open_spans_close():
    rec = SpanRecorder(TRACE, PARENT)
    rec.start("outer", "outer")
    seen = {}

    def other():
        seen["parent"] = rec.current_parent()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["parent"] == PARENT
    rec.finish("never-started")
    (outer,) = rec.take()
    assert outer["name"] == "outer" and "end_unix_ns" in outer and "attributes" not in outer
