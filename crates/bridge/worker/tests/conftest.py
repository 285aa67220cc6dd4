"""Test harness: a worker served on real pipes, in-process or as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspex_worker.protocol import JSON, MSGPACK, FrameReader, encode_frame  # noqa: E402


class Client:
    """The runtime's side of the pipes: send requests, read replies."""

    def __init__(self, req_w: int, resp_r: int):
        self.req_w = req_w
        self.reader = FrameReader(resp_r)
        self.next_id = 0

    def send(self, message, tag=MSGPACK):
        os.write(self.req_w, encode_frame(tag, message))

    def send_raw(self, data: bytes):
        os.write(self.req_w, data)

    def recv(self):
        frame = self.reader.read()
        assert frame is not None, "worker closed its response pipe"
        return frame[1]

    def request(self, op, args=None, tag=MSGPACK, **extra):
        self.next_id += 1
        rid = self.next_id
        self.send({"type": "request", "id": rid, "op": op, "args": args or {}, **extra}, tag)
        return rid

    def call(self, op, args=None, tag=MSGPACK, **extra):
        rid = self.request(op, args, tag, **extra)
        chunks = []
        while True:
            msg = self.recv()
            if msg["type"] == "chunk":
                assert msg["id"] == rid
                chunks.append(msg)
            elif msg["type"] == "end":
                assert msg["id"] == rid
            elif msg["type"] == "response":
                assert msg["id"] == rid, msg
                return msg, chunks


@pytest.fixture
def worker():
    """A Worker served in a thread of this process (so coverage sees it)."""
    from dspex_worker import builtins, dspy_commands, sessions  # noqa: F401
    from dspex_worker.server import Worker

    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    w = Worker(req_r, resp_w, concurrency=4, max_frame=1 << 20, worker_id="worker:test:0")
    result = {}

    def serve():
        result["code"] = w.serve()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = Client(req_w, resp_r)
    hello = client.recv()
    assert hello["type"] == "hello"
    client.hello = hello
    client.thread = t
    client.result = result
    yield client
    # Close only our ends: the worker sees EOF and leaves. Its own ends stay
    # open until the process exits -- closing them under its threads would
    # let a later test's pipes reuse the numbers while a leftover thread
    # still reads or writes them (it once stole a later test's `cancel`).
    for fd in (req_w, resp_r):
        try:
            os.close(fd)
        except OSError:
            pass
    t.join(timeout=5)


def spawn_worker(env_extra=None, preload_dspy=False):
    """A worker child process, as the runtime starts it."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    env = dict(os.environ)
    env.update(
        {
            "DSPEX_REQ_FD": str(req_r),
            "DSPEX_RESP_FD": str(resp_w),
            "DSPEX_WORKER_PRELOAD_DSPY": "1" if preload_dspy else "0",
            "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspex_worker"],
        pass_fds=(req_r, resp_w),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(req_r)
    os.close(resp_w)
    client = Client(req_w, resp_r)
    client.proc = proc
    return client


def wait_exit(proc, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        code = proc.poll()
        if code is not None:
            return code
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("worker did not exit")


__all__ = ["Client", "spawn_worker", "wait_exit", "JSON", "MSGPACK"]
