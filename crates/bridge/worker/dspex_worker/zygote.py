"""``python -m dspex_worker.zygote``: import DSPy once, then fork ready workers.

The runtime starts one zygote per pool with the pool's interpreter,
environment and modules, and a unix datagram socket (``DSPEX_ZYGOTE_FD``,
``SOCK_SEQPACKET``) as its control channel. The zygote imports DSPy and the
pool's modules, warms what is safe to warm, freezes the heap (``gc.freeze``)
and says ``ready``. Then, for each ``fork`` request — JSON, with four
descriptors attached (``SCM_RIGHTS``): the worker's request pipe (read end),
response pipe (write end), stdout and stderr, and its LM connector when its
LM calls go through the runtime (``gateway``) — it forks a child that becomes
an ordinary worker on those descriptors, and answers with the child's pid.
The zygote reaps its children and reports each exit (``exit``: pid, code,
signal), so no zombie is left and the pool learns how its worker ended.

A fork is only safe from a single-threaded process with no event loop: a
thread running at fork time (started by DSPy, LiteLLM or a user module at
import) leaves locks held forever in the child. The zygote checks before
saying ``ready`` (Python threads and the kernel's task list both), and if
the check fails it says ``ready`` with ``forkable: false`` and the reason,
and the pool starts its workers cold.

It dies with the runtime: its parent-death signal is tied to the runtime's
spawner thread, and it leaves when the control socket closes. Its workers'
parent-death signal is tied to the zygote.
"""

from __future__ import annotations

import array
import ctypes
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import traceback

_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 64 * 1024


def _fork_blockers() -> str | None:
    """Why forking now would be unsafe, or None."""
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"Python threads are running: {', '.join(sorted(others))}"
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        tasks = [str(os.getpid())]
    if len(tasks) > 1:
        return f"{len(tasks)} OS threads are running (started by a C extension at import)"
    import asyncio

    if asyncio._get_running_loop() is not None:  # noqa: SLF001 - the only way to ask without creating one
        return "an asyncio event loop is running"
    return None


def _send(sock: socket.socket, msg: dict) -> None:
    sock.send(json.dumps(msg).encode())


def _receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One control message and the descriptors attached to it; (None, [])
    when the runtime closed the socket."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def _apply_limits(limits: dict) -> None:
    if limits.get("address_space"):
        n = int(limits["address_space"])
        resource.setrlimit(resource.RLIMIT_AS, (n, n))
    if limits.get("nice") is not None:
        os.setpriority(os.PRIO_PROCESS, 0, int(limits["nice"]))
    if limits.get("cpu_affinity"):
        os.sched_setaffinity(0, [int(c) for c in limits["cpu_affinity"]])


def _become_worker(msg: dict, fds: list[int], zygote_pid: int, control: socket.socket, wake: tuple) -> None:
    """In the child: take the descriptors, the limits and the worker's
    identity, then serve. Never returns."""
    code = 70
    try:
        os.setpgid(0, 0)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != zygote_pid:  # the zygote died between fork and prctl
            os._exit(1)
        control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in wake:
            os.close(fd)
        req_fd, resp_fd, out_fd, err_fd = fds[:4]
        lm_fd = fds[4] if len(fds) > 4 else None
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        for fd in (req_fd, resp_fd, lm_fd):
            if fd is not None:
                os.set_inheritable(fd, False)
        _apply_limits(msg.get("limits") or {})
        os.environ.update({str(k): str(v) for k, v in (msg.get("env") or {}).items()})
        os.environ["DSPEX_REQ_FD"] = str(req_fd)
        os.environ["DSPEX_RESP_FD"] = str(resp_fd)
        if lm_fd is not None:
            os.environ["DSPEX_LM_FD"] = str(lm_fd)
        # The frozen objects stay frozen: the collector never walks them, so
        # their pages stay shared with the zygote.
        from .server import serve_forked

        code = serve_forked()
    except BaseException:  # noqa: BLE001 - the child must never return into the zygote's loop
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(control: socket.socket) -> None:
    """Report every child that ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        report = {"op": "exit", "pid": pid, "code": code if code >= 0 else None, "signal": -code if code < 0 else None}
        try:
            _send(control, report)
        except OSError:
            return


def serve(control: socket.socket) -> int:
    """Answer fork requests until the runtime closes the control socket."""
    zygote_pid = os.getpid()
    # SIGCHLD wakes the loop through a pipe, so exits are reported at once.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        ready, _, _ = select.select([control, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(control)
        if control not in ready:
            continue
        msg, fds = _receive(control)
        if msg is None:
            return 0
        if msg.get("op") != "fork" or len(fds) not in (4, 5):
            for fd in fds:
                os.close(fd)
            _send(control, {"op": "error", "message": f"bad control message {msg.get('op')!r} with {len(fds)} fds"})
            continue
        blocker = _fork_blockers()
        if blocker is not None:
            for fd in fds:
                os.close(fd)
            _send(control, {"op": "refused", "reason": blocker})
            continue
        pid = os.fork()
        if pid == 0:
            _become_worker(msg, fds, zygote_pid, control, (wake_r, wake_w))
        for fd in fds:
            os.close(fd)
        _send(control, {"op": "forked", "pid": pid})


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        control = socket.socket(fileno=int(os.environ["DSPEX_ZYGOTE_FD"]))
    except (KeyError, ValueError, OSError) as exc:
        print(f"dspex_worker.zygote: DSPEX_ZYGOTE_FD must name the control socket ({exc})", file=sys.stderr)
        sys.exit(2)
    # The collector stays off from the imports to the freeze: its passes
    # would cost a tenth of the import, and a full collection before the
    # freeze another 50 ms, to free a little garbage that, frozen, costs
    # only shared pages.
    gc.disable()
    from .server import prepare

    prepare()
    blocker = _fork_blockers()
    # What every worker would otherwise copy and then touch: the imported
    # modules' objects move to a permanent generation the collector skips,
    # so their pages stay shared. Workers inherit the collector on.
    gc.freeze()
    gc.enable()
    _send(control, {"op": "ready", "pid": os.getpid(), "forkable": blocker is None, "reason": blocker})
    sys.exit(serve(control))


if __name__ == "__main__":
    main()
