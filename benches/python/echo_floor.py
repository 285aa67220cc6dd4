"""The floor for benches/bridge_roundtrip.rs: the least a Python process can do
to answer the dspex framing (read a frame, decode, encode a response, write).
No registry, no threads, no context: what the real worker is measured against.
"""

import json
import os
import struct

import msgpack

req = int(os.environ["DSPEX_REQ_FD"])
resp = int(os.environ["DSPEX_RESP_FD"])
header = struct.Struct(">IB")


def send(tag, msg):
    payload = msgpack.packb(msg) if tag == 1 else json.dumps(msg, separators=(",", ":")).encode()
    os.write(resp, header.pack(len(payload) + 1, tag) + payload)


send(
    0,
    {
        "type": "hello",
        "protocol": 1,
        "pid": os.getpid(),
        "python": "floor",
        "codecs": ["json", "msgpack"],
        "commands": ["noop"],
        "max_concurrency": 1,
    },
)
# Spin like the worker does, when asked to (a fair floor).
spin = int(os.environ.get("DSPEX_WORKER_SPIN_US", "0")) / 1e6
if spin:
    import select
    import time

    poller = select.poll()
    poller.register(req, select.POLLIN)

buf = bytearray()
while True:
    if spin:
        end = time.perf_counter() + spin
        while time.perf_counter() < end and not poller.poll(0):
            pass
    data = os.read(req, 262144)
    if not data:
        break
    buf += data
    while len(buf) >= 5:
        length, tag = header.unpack_from(buf)
        if len(buf) < 4 + length:
            break
        payload = bytes(buf[5 : 4 + length])
        del buf[: 4 + length]
        msg = msgpack.unpackb(payload) if tag == 1 else json.loads(payload)
        if msg.get("type") == "request":
            send(tag, {"type": "response", "id": msg["id"], "ok": None})
