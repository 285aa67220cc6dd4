"""DSPy's real LM client (LiteLLM) against a local OpenAI-compatible server:
plain calls and streaming through dspy.streamify."""

import json
import socket
import threading
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
            for piece in ["[[ ## answer ## ]]\n", "4", "\n\n[[ ## completed ## ]]"]:
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            end = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            return
        out = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def lm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()


def lm_spec(server, **extra):
    return {"model": "test-model", "base_url": f"http://127.0.0.1:{server.server_port}/v1", "api_key": "k",
            "temperature": 0.0, "max_tokens": 50, **extra}


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


def test_stream_yields_chunks_then_the_prediction(lm_server, worker):
    resp, chunks = worker.call("dspy.stream", {"program": QA, "inputs": {"question": "2+2?"}, "lm": lm_spec(lm_server)}, stream=True)
    assert resp["ok"]["fields"] == {"answer": "4"}, resp
    text = "".join(c["data"]["text"] for c in chunks)
    assert "4" in text
    assert all(c["data"]["field"] == "answer" for c in chunks)
    assert lm_server.requests[-1].get("stream") is True
