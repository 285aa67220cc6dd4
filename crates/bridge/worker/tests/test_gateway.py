"""DSPy's LM calls through the runtime's gateway: the worker's side.

The test plays the runtime: it takes the LM connections the worker hands
over on its connector and answers their ``lm_call`` messages itself, as the
runtime's gateway would after calling the service.
"""

import json
import os
import socket
import threading

import pytest

from conftest import Client
from dspex_worker import gateway, lm_transport
from dspex_worker.protocol import MSGPACK, FrameReader, encode_frame
from dspex_worker.registry import classify

COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
}

LM = {"model": "openai/gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test", "temperature": 0.0}


class LmConn:
    """The runtime's end of one LM connection."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = FrameReader(sock.fileno())

    def recv(self):
        frame = self.reader.read()
        return None if frame is None else frame[1]

    def send(self, message):
        self.sock.sendall(encode_frame(MSGPACK, message))

    def close(self):
        self.sock.close()


class Runtime:
    """The runtime's end of a worker's LM connector."""

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.fd = theirs.detach()  # the worker's: closed with its connector
        self.sock.settimeout(20)

    def accept(self) -> LmConn:
        _msg, fds, _flags, _addr = socket.recv_fds(self.sock, 16, 4)
        assert len(fds) == 1, fds
        return LmConn(socket.socket(fileno=fds[0]))

    def pending(self) -> bool:
        """Whether a connection was handed over and not taken yet."""
        self.sock.setblocking(False)
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(20)


@pytest.fixture
def gw_worker():
    """A worker whose LM calls go to the runtime, served in a thread of this
    process (so coverage sees it); the test is the runtime."""
    from dspex_worker import builtins, dspy_commands, sessions  # noqa: F401
    from dspex_worker.server import Worker

    runtime = Runtime()
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    w = Worker(req_r, resp_w, concurrency=4, max_frame=1 << 20, worker_id="worker:test:gw", lm_connector=runtime.fd)
    t = threading.Thread(target=w.serve, daemon=True)
    t.start()
    client = Client(req_w, resp_r)
    assert client.recv()["type"] == "hello"
    yield client, runtime
    for fd in (req_w, resp_r):
        os.close(fd)
    t.join(timeout=5)
    gateway.uninstall()


def run_predict(client, lm=LM, stream=False):
    return client.request(
        "dspy.stream" if stream else "dspy.run",
        {
            "program": {"module": "predict", "signature": "question -> answer"},
            "inputs": {"question": "17 + 25?"},
            "lm": lm,
        },
        stream=stream,
        deadline_ms=20_000,
    )


def test_lm_calls_go_to_the_runtime_and_dspy_reads_its_answer(gw_worker):
    client, runtime = gw_worker
    rid = run_predict(client)
    conn = runtime.accept()
    call = conn.recv()
    assert call["type"] == "lm_call" and call["request"] == rid
    assert call["url"] == "http://127.0.0.1:9/v1/chat/completions"
    headers = dict(call["headers"])
    assert headers["Authorization"] == "Bearer sk-test"
    body = json.loads(call["body"])
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.0
    assert body["messages"][-1]["content"].endswith(
        "17 + 25?\n\nRespond with the corresponding output fields, starting with the field `[[ ## answer ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`."
    )
    assert call["max_retries"] == 0 and call["stream"] is False
    assert 0 < call["deadline_ms"] <= 20_000
    conn.send({"type": "lm_head", "id": call["id"], "status": 200, "headers": [["content-type", "application/json"]]})
    conn.send({"type": "lm_data", "id": call["id"], "data": json.dumps(COMPLETION)})
    conn.send({"type": "lm_end", "id": call["id"]})
    resp = client.recv()
    assert resp["id"] == rid and resp["ok"]["fields"] == {"answer": "42"}, resp
    assert resp["ok"]["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    # The connection is kept: the next call comes on it, no new one is made.
    rid = run_predict(client)
    call = conn.recv()
    assert call["type"] == "lm_call" and call["request"] == rid
    assert not runtime.pending()
    conn.send({"type": "lm_head", "id": call["id"], "status": 200, "headers": [], "body": json.dumps(COMPLETION)})
    assert client.recv()["ok"]["fields"] == {"answer": "42"}


def test_a_whole_body_comes_with_the_head(gw_worker):
    client, runtime = gw_worker
    rid = run_predict(client)
    conn = runtime.accept()
    call = conn.recv()
    head = {"type": "lm_head", "id": call["id"], "status": 200, "headers": [["content-type", "application/json"]]}
    conn.send({**head, "body": json.dumps(COMPLETION)})
    resp = client.recv()
    assert resp["id"] == rid and resp["ok"]["fields"] == {"answer": "42"}, resp


def test_a_refusal_keeps_its_kind(gw_worker):
    client, runtime = gw_worker
    rid = run_predict(client)
    conn = runtime.accept()
    call = conn.recv()
    error = {"kind": "budget_exceeded", "message": "tenant `t` reached its request budget", "retryable": False}
    conn.send({"type": "lm_error", "id": call["id"], "error": error})
    resp = client.recv()
    assert resp["id"] == rid
    assert resp["error"]["kind"] == "budget_exceeded", resp
    assert "request budget" in resp["error"]["message"]
    assert resp["error"]["retryable"] is False


def test_an_http_error_reaches_dspy_as_the_service_sent_it(gw_worker):
    client, runtime = gw_worker
    rid = run_predict(client)
    conn = runtime.accept()
    call = conn.recv()
    conn.send({"type": "lm_head", "id": call["id"], "status": 400, "headers": [["content-type", "application/json"]]})
    conn.send({"type": "lm_data", "id": call["id"], "data": json.dumps({"error": {"message": "bad model"}})})
    conn.send({"type": "lm_end", "id": call["id"]})
    resp = client.recv()
    assert resp["id"] == rid and resp["error"]["kind"] == "lm", resp
    assert "bad model" in resp["error"]["message"]


def test_streams_arrive_in_pieces(gw_worker):
    client, runtime = gw_worker
    rid = run_predict(client, stream=True)
    conn = runtime.accept()
    call = conn.recv()
    assert call["stream"] is True
    conn.send({"type": "lm_head", "id": call["id"], "status": 200, "headers": [["content-type", "text/event-stream"]]})
    pieces = ["[[ ## answer ## ]]\n4", "2\n\n[[ ## completed ## ]]"]
    for i, text in enumerate(pieces):
        event = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None if i == 0 else "stop"}],
        }
        conn.send({"type": "lm_data", "id": call["id"], "data": f"data: {json.dumps(event)}\n\n"})
    usage = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    conn.send({"type": "lm_data", "id": call["id"], "data": f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n"})
    conn.send({"type": "lm_end", "id": call["id"]})
    final, chunks = None, []
    while final is None:
        msg = client.recv()
        if msg["type"] == "response":
            final = msg
        elif msg["type"] == "chunk":
            chunks.append(msg["data"])
    assert final["id"] == rid and final["ok"]["fields"] == {"answer": "42"}, final
    assert "".join(c["text"] for c in chunks if c["field"] == "answer").strip() == "42", chunks


def test_other_apis_stay_direct():
    runtime = Runtime()
    gateway.install(runtime.fd)
    try:
        from dspy._vendor.lm15.transports import TransportRequest

        transport = lm_transport.GatewayTransport(connect_timeout=0.2)
        request = TransportRequest(method="POST", url="http://127.0.0.1:9/v1/messages", headers=[], body=b"{}")
        with pytest.raises(Exception) as raised:
            transport.stream(request)
        assert not isinstance(raised.value, lm_transport.GatewayError), "tried the service itself"
        assert not runtime.pending(), "no connection was made to the runtime"
    finally:
        gateway.uninstall()


def _chat(body=b"{}"):
    from dspy._vendor.lm15.transports import TransportRequest

    return TransportRequest(method="POST", url="http://x/v1/chat/completions", headers=[("A", "b")], body=body)


def test_connections_are_reused_and_a_call_left_unread_is_cancelled():
    runtime = Runtime()
    connector = gateway.install(runtime.fd)
    transport = lm_transport.GatewayTransport()
    try:
        served = []

        def serve():
            conn = runtime.accept()
            call = conn.recv()
            served.append(call)
            conn.send({"type": "lm_head", "id": call["id"], "status": 200, "headers": [["a", "b"]], "body": "{}"})
            call = conn.recv()  # the same connection
            served.append(call)
            conn.send({"type": "lm_head", "id": call["id"], "status": 200, "headers": []})
            conn.send({"type": "lm_data", "id": call["id"], "data": "data: 1\n\n"})
            served.append(conn.recv())  # None: the worker closed it

        t = threading.Thread(target=serve)
        t.start()
        with transport.stream(_chat()) as resp:
            assert (resp.status, resp.reason, resp.headers) == (200, "OK", [("a", "b")])
            assert b"".join(resp) == b"{}"
        assert connector.idle() == 1
        first = served[0]
        assert first["request"] is None and "deadline_ms" not in first and first["headers"] == [["A", "b"]]
        with transport.stream(_chat(b'{"stream": true}')) as resp:
            assert next(iter(resp)) == b"data: 1\n\n"
        # Left before its end: the connection is closed, the runtime sees it.
        t.join(timeout=10)
        assert served[1]["stream"] is True and served[2] is None
        assert connector.idle() == 0
    finally:
        gateway.uninstall()


def test_a_connection_that_breaks_or_stays_silent_is_a_classified_error(monkeypatch):
    runtime = Runtime()
    gateway.install(runtime.fd)
    transport = lm_transport.GatewayTransport()
    try:

        def drop():
            conn = runtime.accept()
            conn.recv()
            conn.close()

        t = threading.Thread(target=drop)
        t.start()
        with pytest.raises(lm_transport.GatewayError) as broke:
            transport.stream(_chat())
        t.join()
        assert (broke.value.dspex_kind, broke.value.dspex_retryable) == ("internal", True)
        assert "broke" in str(broke.value)

        monkeypatch.setattr(lm_transport, "_wait_time", lambda scope: 0.2)
        silent = []
        t = threading.Thread(target=lambda: silent.append(runtime.accept()))
        t.start()
        with pytest.raises(lm_transport.GatewayError) as late:
            transport.stream(_chat())
        t.join()
        assert (late.value.dspex_kind, late.value.dspex_retryable) == ("timeout", True)
        assert silent[0].recv()["type"] == "lm_call" and silent[0].recv() is None, "the silent call was dropped"

        # The runtime is gone: no connection can be made.
        runtime.sock.close()
        with pytest.raises(lm_transport.GatewayError) as gone:
            transport.stream(_chat())
        assert (gone.value.dspex_kind, gone.value.dspex_retryable) == ("internal", True)
    finally:
        gateway.uninstall()


def test_coroutines_have_connections_of_their_own():
    import asyncio

    runtime = Runtime()
    connector = gateway.install(runtime.fd)
    transport = lm_transport.GatewayAsyncTransport()

    def serve():
        conn = runtime.accept()
        for _ in range(2):
            call = conn.recv()
            conn.send({"type": "lm_head", "id": call["id"], "status": 200, "headers": []})
            conn.send({"type": "lm_data", "id": call["id"], "data": "pie"})
            conn.send({"type": "lm_data", "id": call["id"], "data": "ce"})
            conn.send({"type": "lm_end", "id": call["id"]})
        call = conn.recv()
        conn.send({"type": "lm_error", "id": call["id"], "error": {"kind": "rate_limited", "retryable": True}})
        conn.recv()  # the worker closes it at the end

    async def calls():
        bodies = []
        for _ in range(2):
            async with transport.stream(_chat()) as resp:
                bodies.append(b"".join([c async for c in resp]))
        with pytest.raises(lm_transport.GatewayError) as refused:
            await transport.stream(_chat())
        return bodies, refused.value

    t = threading.Thread(target=serve)
    t.start()
    try:
        bodies, refused = asyncio.run(calls())
    finally:
        gateway.uninstall()
    t.join(timeout=10)
    assert bodies == [b"piece", b"piece"]
    assert (refused.dspex_kind, refused.dspex_retryable) == ("rate_limited", True)
    assert connector.idle() == 0, "the loop's connections are its own"


def test_classify_finds_the_gateway_error_under_dspy_wrapping():
    try:
        try:
            raise lm_transport.GatewayError("rate_limited", "LM m is at its request-rate limit", True)
        except lm_transport.GatewayError as inner:
            raise RuntimeError("wrapped by DSPy") from inner
    except RuntimeError as outer:
        wire = classify(outer)
    assert (wire["kind"], wire["retryable"]) == ("rate_limited", True)


class _Service:
    """A local OpenAI-compatible service: one completion, or a stream of it."""

    def __init__(self):
        import http.server

        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                service.seen.append((self.path, dict(self.headers), body))
                if body.get("stream"):
                    events = [
                        {
                            "id": "c",
                            "object": "chat.completion.chunk",
                            "created": 1,
                            "model": "gpt-4o-mini",
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"content": COMPLETION["choices"][0]["message"]["content"]},
                                    "finish_reason": "stop",
                                }
                            ],
                        },
                        {
                            "id": "c",
                            "object": "chat.completion.chunk",
                            "created": 1,
                            "model": "gpt-4o-mini",
                            "choices": [],
                            "usage": COMPLETION["usage"],
                        },
                    ]
                    data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                    kind = "text/event-stream"
                else:
                    data, kind = json.dumps(COMPLETION), "application/json"
                raw = data.encode()
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.seen = []
        self.forwarded = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}/v1"

    def serve(self, runtime: Runtime):
        """What the runtime does with the worker's LM calls: send each, answer it."""
        import urllib.request

        def run():
            conn = runtime.accept()
            while (message := conn.recv()) is not None:
                self.forwarded += 1
                req = urllib.request.Request(message["url"], data=message["body"].encode(), method="POST")
                for k, v in message["headers"]:
                    req.add_header(k, v)
                with urllib.request.urlopen(req) as resp:
                    conn.send(
                        {"type": "lm_head", "id": message["id"], "status": resp.status, "headers": resp.getheaders()}
                    )
                    conn.send({"type": "lm_data", "id": message["id"], "data": resp.read().decode()})
                    conn.send({"type": "lm_end", "id": message["id"]})

        threading.Thread(target=run, daemon=True).start()


def test_dspy_history_usage_and_cost_are_the_same_through_the_gateway():
    import dspy

    from dspex_worker import dspy_patches  # noqa: F401 - the worker's DSPy set-up
    from dspex_worker.registry import Context

    service = _Service()

    def entry(lm):
        with dspy.context(lm=lm, track_usage=True, **{gateway.SCOPE_KEY: gateway.LmScope(Context(1), 0)}):
            pred = dspy.Predict("question -> answer")(question="17 + 25?")
        return pred, lm.history[-1]

    def comparable(h):
        return {k: v for k, v in h.items() if k not in ("timestamp", "uuid", "response")}

    settings = dict(api_base=service.base, api_key="sk-test", cache=False, temperature=0.0, max_tokens=64)
    direct_pred, direct = entry(dspy.LM("openai/gpt-4o-mini", **settings))
    sent_directly = service.seen.pop()
    runtime = Runtime()
    gateway.install(runtime.fd)
    service.serve(runtime)
    try:
        through_pred, through = entry(dspy.LM("openai/gpt-4o-mini", num_retries=0, **settings))
    finally:
        gateway.uninstall()
    sent_through = service.seen.pop()
    assert service.forwarded == 1, "the call went through the runtime"
    assert sent_through[0] == sent_directly[0] and sent_through[2] == sent_directly[2], "the same request"
    for h in ("Content-Type", "Authorization"):
        assert sent_through[1][h] == sent_directly[1][h]
    assert through_pred.answer == direct_pred.answer == "42"
    assert through_pred.get_lm_usage() == direct_pred.get_lm_usage()
    assert comparable(through) == comparable(direct), set(comparable(through)) ^ set(comparable(direct))
    assert through["cost"] == direct["cost"] and direct["cost"] is not None
