"""DSPy's real LM client (LiteLLM) against a local OpenAI-compatible server:
plain calls and streaming through dspy.streamify."""

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REPLY = "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"


class _Handler(BaseHTTPRequestHandler):
    def setup(self):
        super().setup()
        # Without TCP_NODELAY every reply waits ~40 ms for Nagle.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append(body)
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            replies = getattr(self.server, "stream_replies", None)
            if getattr(self.server, "echo", False):  # the answer is the question, slowly
                question = body["messages"][-1]["content"].split("[[ ## question ## ]]\n", 1)[1].split("\n", 1)[0]
                pieces = ["[[ ## answer ## ]]\n", *re.findall(r"\S+\s*", question), "\n\n[[ ## completed ## ]]"]
                time.sleep(0.05)
            elif getattr(self.server, "slow", False):  # one piece, then a long pause
                pieces = ["[[ ## answer ## ]]\n", "first ", "words ", "of ", "a ", "slow ", "reply"]
            elif replies:  # scripted replies, sent in word-sized pieces like a model's tokens
                pieces = re.findall(r"\S+\s*", replies.pop(0))
            else:
                pieces = ["[[ ## answer ## ]]\n", "4", "\n\n[[ ## completed ## ]]"]
            for piece in pieces:
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if getattr(self.server, "slow", False) and piece == "reply":
                    time.sleep(3)
            end = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": self.server.finish_reason}],
            }
            self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            return
        out = json.dumps(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": REPLY},
                        "finish_reason": self.server.finish_reason,
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def lm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    server.finish_reason = "stop"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()


def lm_spec(server, **extra):
    return {
        "model": "test-model",
        "base_url": f"http://127.0.0.1:{server.server_port}/v1",
        "api_key": "k",
        "temperature": 0.0,
        "max_tokens": 50,
        **extra,
    }


QA = {"module": "predict", "signature": "question -> answer"}


def test_run_through_a_real_http_lm(lm_server, worker):
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)})
    assert resp["ok"]["fields"] == {"answer": "4"}, resp
    assert resp["ok"]["usage"]
    sent = lm_server.requests[0]
    assert sent["model"] == "test-model" and sent["temperature"] == 0.0
    assert sent["messages"][-1]["content"].startswith("[[ ## question ## ]]\n2+2?")
    # The same settings reuse the same dspy.LM.
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)})
    assert resp["ok"]["fields"] == {"answer": "4"}
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "?"}, "lm": {"base_url": "http://x"}})
    assert resp["error"]["kind"] == "invalid_request"


def test_a_reply_cut_at_the_length_limit_is_reported(lm_server, worker):
    """DSPy logs "LM response was truncated" when a completion ends by
    length; the reply says so, for runs and for streams on the loop and on a
    thread, and only for the request that was cut."""
    lm_server.finish_reason = "length"
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)})
    assert resp["ok"]["truncated"] is True, resp
    assert resp["ok"]["fields"] == {"answer": "4"}
    react = {"module": "react", "signature": "question -> answer", "params": {"tools": ["tools_for_tests:add"]}}
    for program in (QA, react):  # on the loop, and on a thread of DSPy's
        lm_server.stream_replies = [
            "[[ ## next_thought ## ]]\nI know it\n\n[[ ## next_tool_name ## ]]\nfinish\n\n"
            "[[ ## next_tool_args ## ]]\n{}\n\n[[ ## completed ## ]]",
            "[[ ## reasoning ## ]]\nadd them\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]",
        ]
        if program is QA:
            lm_server.stream_replies = []
        resp, _ = worker.call(
            "dspy.stream", {"program": program, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)}, stream=True
        )
        assert resp.get("ok", {}).get("truncated") is True, (program, resp)
    lm_server.finish_reason = "stop"
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)})
    assert resp["ok"]["truncated"] is False, resp


def test_stream_yields_chunks_then_the_prediction(lm_server, worker):
    resp, chunks = worker.call(
        "dspy.stream", {"program": QA, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)}, stream=True
    )
    assert resp["ok"]["fields"] == {"answer": "4"}, resp
    text = "".join(c["data"]["text"] for c in chunks)
    assert "4" in text
    assert all(c["data"]["field"] == "answer" for c in chunks)
    assert lm_server.requests[-1].get("stream") is True


def test_stream_of_a_chain_of_thought_and_of_a_synchronous_module(lm_server, worker):
    """Predict and ChainOfThought stream on the worker's loop (async DSPy);
    other modules stream from a thread (sync DSPy): both yield each field's
    chunks, then the prediction."""
    cot_reply = "[[ ## reasoning ## ]]\nadd them\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
    lm_server.stream_replies = [cot_reply]
    cot = {"module": "chain_of_thought", "signature": "question -> answer"}
    resp, chunks = worker.call(
        "dspy.stream", {"program": cot, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)}, stream=True
    )
    assert resp["ok"]["fields"] == {"reasoning": "add them", "answer": "4"}, resp
    assert {c["data"]["field"] for c in chunks} == {"reasoning", "answer"}

    lm_server.stream_replies = [
        "[[ ## next_thought ## ]]\nI know it\n\n[[ ## next_tool_name ## ]]\nfinish\n\n"
        "[[ ## next_tool_args ## ]]\n{}\n\n[[ ## completed ## ]]",
        cot_reply,
    ]
    react = {"module": "react", "signature": "question -> answer", "params": {"tools": ["tools_for_tests:add"]}}
    resp, chunks = worker.call(
        "dspy.stream", {"program": react, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)}, stream=True
    )
    assert resp["ok"]["fields"]["answer"] == "4", resp
    fields = [c["data"]["field"] for c in chunks]
    assert "next_thought" in fields and fields[-1] == "answer", fields


def test_an_unreachable_lm_fails_a_stream_as_it_fails_a_run(worker):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    lm = {"model": "m", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "k"}
    run, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "?"}, "lm": lm})
    streamed, chunks = worker.call("dspy.stream", {"program": QA, "inputs": {"question": "?"}, "lm": lm}, stream=True)
    assert chunks == []
    assert run["error"]["kind"] == streamed["error"]["kind"], (run, streamed)
    assert run["error"]["kind"] != "internal", run


def test_concurrent_streams_share_the_loop_without_mixing(lm_server, worker):
    lm_server.echo = True
    questions = {}
    for i in range(6):
        q = f"question number {i} of six"
        rid = worker.request(
            "dspy.stream", {"program": QA, "inputs": {"question": q}, "lm": lm_spec(lm_server)}, stream=True
        )
        questions[rid] = q
    texts = {rid: "" for rid in questions}
    answers = {}
    while len(answers) < len(questions):
        msg = worker.recv()
        if msg["type"] == "chunk":
            assert msg["id"] not in answers, "a chunk after its response"
            texts[msg["id"]] += msg["data"]["text"]
        elif msg["type"] == "response":
            answers[msg["id"]] = msg["ok"]["fields"]["answer"]
    assert answers == questions
    assert all(texts[rid].strip() == q for rid, q in questions.items()), texts


def test_cancel_ends_a_stream_midway(lm_server, worker):
    lm_server.slow = True
    rid = worker.request(
        "dspy.stream", {"program": QA, "inputs": {"question": "?"}, "lm": lm_spec(lm_server)}, stream=True
    )
    msg = worker.recv()
    assert msg["type"] == "chunk" and msg["id"] == rid, msg
    started = time.monotonic()
    worker.send({"type": "cancel", "id": rid})
    while msg["type"] != "response":
        msg = worker.recv()
    assert msg["id"] == rid and msg["error"]["kind"] == "cancelled", msg
    assert time.monotonic() - started < 1.0
    # The worker goes on serving.
    lm_server.slow = False
    resp, _ = worker.call(
        "dspy.stream", {"program": QA, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)}, stream=True
    )
    assert resp["ok"]["fields"] == {"answer": "4"}
