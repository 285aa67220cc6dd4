"""The zygote as a process: ready, fork on request with the pipes attached,
exit reports, bad requests, refusal when a thread runs, exit on EOF."""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, Client

HELPERS = os.path.join(ROOT, "..", "..", "..", "tests", "python")


def _start(modules: str = "") -> tuple[subprocess.Popen, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ)
    env.update(
        {
            "DSPEX_ZYGOTE_FD": str(theirs.fileno()),
            "DSPEX_WORKER_PRELOAD_DSPY": "0",
            "DSPEX_WORKER_MODULES": modules,
            "PYTHONPATH": os.pathsep.join([ROOT, os.path.abspath(HELPERS)]),
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "dspex_worker.zygote"], env=env, pass_fds=[theirs.fileno()])
    theirs.close()
    ours.settimeout(60)
    return proc, ours


def _recv(sock: socket.socket) -> dict:
    return json.loads(sock.recv(65536))


def _fork(sock: socket.socket, name: str, fds: list[int] | None = None):
    """Ask for a worker; returns the reply and the runtime's pipe ends."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    attached = [req_r, resp_w, out_w, err_w] if fds is None else fds
    msg = {"op": "fork", "env": {"DSPEX_WORKER_ID": name}, "limits": {"nice": 1}}
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", attached))] if attached else []
    sock.sendmsg([json.dumps(msg).encode()], ancillary)
    for fd in (req_r, resp_w, out_w, err_w):
        os.close(fd)
    return _recv(sock), (req_w, resp_r, out_r, err_r)


def test_a_zygote_forks_workers_and_reports_their_exits():
    proc, sock = _start()
    try:
        ready = _recv(sock)
        assert ready["op"] == "ready" and ready["forkable"] is True, ready
        assert ready["pid"] == proc.pid
        reply, (req_w, resp_r, out_r, err_r) = _fork(sock, "worker:z:0")
        assert reply["op"] == "forked", reply
        pid = reply["pid"]
        client = Client(req_w, resp_r)
        hello = client.recv()
        assert hello["type"] == "hello" and hello["worker"] == "worker:z:0" and hello["pid"] == pid, hello
        resp, _ = client.call("sleep", {"seconds": 0})
        assert "ok" in resp, resp
        assert os.getpgid(pid) == pid, "the worker has its own process group"
        assert os.getpriority(os.PRIO_PROCESS, pid) >= 1, "the fork's limits were applied"
        os.kill(pid, signal.SIGKILL)
        exit_report = _recv(sock)
        assert exit_report == {"op": "exit", "pid": pid, "code": None, "signal": signal.SIGKILL}, exit_report
        # A graceful end: the worker leaves when its request pipe closes.
        reply, (req_w, resp_r, out_r2, err_r2) = _fork(sock, "worker:z:1")
        Client(req_w, resp_r).recv()
        os.close(req_w)
        exit_report = _recv(sock)
        assert exit_report["pid"] == reply["pid"] and exit_report["code"] == 0, exit_report
        # A request without its descriptors is refused, not forked.
        reply, _ = _fork(sock, "worker:z:bad", fds=[])
        assert reply["op"] == "error", reply
        for fd in (out_r, err_r, out_r2, err_r2):
            os.close(fd)
    finally:
        sock.close()
    # EOF on the control socket: the zygote leaves.
    assert proc.wait(timeout=10) == 0


def test_a_zygote_with_a_running_thread_refuses_to_fork():
    proc, sock = _start(modules="dspex_test_threads")
    try:
        ready = _recv(sock)
        assert ready["forkable"] is False and "started-at-import" in ready["reason"], ready
        reply, fds = _fork(sock, "worker:z:threads")
        assert reply["op"] == "refused" and "threads" in reply["reason"], reply
        for fd in fds:
            os.close(fd)
    finally:
        sock.close()
    assert proc.wait(timeout=10) == 0


def test_a_zygote_without_its_socket_says_so():
    env = {k: v for k, v in os.environ.items() if k != "DSPEX_ZYGOTE_FD"}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-m", "dspex_worker.zygote"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "DSPEX_ZYGOTE_FD" in out.stderr


@pytest.mark.parametrize("count", [3])
def test_workers_forked_in_a_row_are_distinct_processes(count):
    proc, sock = _start()
    try:
        _recv(sock)
        pids, pipes = [], []
        for i in range(count):
            reply, ends = _fork(sock, f"worker:z:{i}")
            pids.append(reply["pid"])
            pipes.append(ends)
            assert Client(ends[0], ends[1]).recv()["worker"] == f"worker:z:{i}"
        assert len(set(pids)) == count
        for req_w, _, out_r, err_r in pipes:
            os.close(req_w)
            os.close(out_r)
            os.close(err_r)
        ended = {_recv(sock)["pid"] for _ in range(count)}
        assert ended == set(pids)
    finally:
        sock.close()
    assert proc.wait(timeout=10) == 0
