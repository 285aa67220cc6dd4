"""Write the fuzz targets' seed inputs into fuzz/seeds/TARGET/ from the
project's own fixtures: golden protocol frames, the DSPy parity corpora,
example pipelines and configurations, console lines, HTTP bodies and cluster
messages. The fuzzers grow these into fuzz/corpus/ (see docs/fuzzing.md).

Run from the repository root: `.venv/bin/python fuzz/seeds.py`.
"""

import glob
import hashlib
import json
import pathlib

import msgpack

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "seeds"


def put(target: str, data: bytes) -> None:
    folder = OUT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def fixture(name: str) -> dict:
    return json.loads((ROOT / "tests" / "fixtures" / name).read_text())


def main() -> None:
    frames = [bytes.fromhex(frame["hex"]) for frame in fixture("protocol/golden.json")["frames"]]
    for frame in frames:
        put("frame", frame[4:])
        put("py_serve", frame)
    put("py_serve", b"".join(frames))

    for args in [
        {"question": "q", "k": 3, "history": {"messages": [{"question": "a", "answer": "b"}]}},
        {"question": "q", "history": {"messages": []}},
        {"history": {"messages": "oops"}, "k": "x"},
        {"question": ["nested", {"deep": [1, 2.5, None, True]}], "k": 2**63 - 1},
    ]:
        put("py_values", msgpack.packb(args))

    for case in fixture("parity/signatures.json")["cases"]:
        put("signature", case["signature"].encode())

    for i, case in enumerate(fixture("parity/parse.json")["cases"]):
        kind = 0 if case["adapter"] == "chat" else 1
        put("completion", bytes([(i % 5) << 1 | kind]) + case["completion"].encode())

    for i, case in enumerate(fixture("parity/lax.json")["cases"]):
        put("value", bytes([i % 13]) + case["text"].encode())

    files = glob.glob(str(ROOT / "examples" / "**" / "*.toml"), recursive=True)
    files += glob.glob(str(ROOT / "tests" / "fixtures" / "http" / "*.toml"))
    files += [str(ROOT / "examples" / "format-request.json")]
    for path in files:
        put("pipeline", pathlib.Path(path).read_bytes())
    put(
        "pipeline",
        json.dumps(
            {
                "name": "p",
                "inputs": ["q"],
                "outputs": ["a"],
                "steps": [
                    {
                        "name": "s",
                        "kind": "program",
                        "program": {"module": "predict", "signature": "q -> a"},
                        "inputs": {"q": "q"},
                    }
                ],
            }
        ).encode(),
    )

    for line in [
        {"id": 1, "cmd": "tree", "args": []},
        {"id": "x", "cmd": "session", "args": ["s1"], "token": "0123456789abcdef"},
        {"cmd": "events", "args": ["pool"]},
        {"id": None, "cmd": "kill", "args": ["general", "0"], "token": "t"},
    ]:
        put("console_line", (json.dumps(line) + "\n").encode())

    call = {
        "id": 1,
        "from": "n1",
        "pool": "general",
        "op": "dspy.run",
        "args": {"q": "hi"},
        "deadline_ms": 1000,
        "trace_id": None,
        "session": None,
        "idempotent": True,
        "stream": False,
    }
    for message in [
        call,
        {"Alive": {"node": "n2"}},
        {"Chunk": {"seq": 3, "value": [1, 2.5, "x"]}},
        {
            "Done": {
                "node": "n2",
                "value": {"a": 1},
                "worker": "w",
                "worker_index": 0,
                "pid": 7,
                "queue_us": 1,
                "elapsed_us": 2,
                "retried": False,
            }
        },
        {"from": "n1", "id": 9},
    ]:
        put("cluster_message", msgpack.packb(message))
    put(
        "cluster_message",
        json.dumps({"node": "n1", "version": "0.1.0", "pools": [], "remote_in_flight": 0, "accepting": True}).encode(),
    )

    completion = json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "[[ ## answer ## ]]\n4"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        }
    ).encode()
    event = b"data: " + completion + b"\n\n"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [event, b"data: [DONE]\n\n"]) + b"0\r\n\r\n"
    for piece, answer in [
        (
            0,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(completion), completion),
        ),
        (7, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunked),
        (
            1,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}",
        ),
        (3, b"HTTP/1.0 500 Internal Server Error\r\nconnection: close\r\n\r\nupstream failed"),
        (2, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\ntrailer: x\r\n\r\n"),
    ]:
        put("lm_answer", bytes([piece]) + answer)

    bodies = [
        (0, {"inputs": {"question": "What is 2+2?"}}),
        (0, {"inputs": {"question": "q"}, "options": {"route": "native", "cache": False}}),
        (1, {"inputs": {"question": "q", "k": 3, "tags": ["a", "b"]}}),
        (2, {"inputs": {"question": "stream me"}}),
        (3, {"inputs": {"question": "both"}}),
        (4, {"id": "s1", "ttl_ms": 60000}),
    ]
    for pick, body in bodies:
        put("http_body", bytes([pick]) + json.dumps(body).encode())


if __name__ == "__main__":
    main()
