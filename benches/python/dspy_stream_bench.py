"""DSPy side of the streaming row in benches/runtime.rs: the same program
streamed in-process with ``dspy.streamify``, no dspex in between.

Arguments: the LM's base URL, the number of requests, and ``sync`` (DSPy's
default: the program runs in a thread) or ``async`` (``is_async_program``:
the program runs on the loop, as the worker runs Predict). Runs them one
after another on one long-lived event loop, ChatAdapter, cache off, and
prints one JSON line per request:
``{"start_ns", "first_ns"}`` on CLOCK_MONOTONIC, so the Rust side can place
them against the LM server's own timings.
"""

import asyncio
import json
import os
import sys
import time
import warnings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
warnings.simplefilter("ignore")

import dspy  # noqa: E402


async def main(base_url: str, n: int, is_async: bool) -> None:
    lm = dspy.LM("openai/offline", api_base=base_url, api_key="bench", cache=False, num_retries=0, temperature=0.0)
    dspy.configure(lm=lm, adapter=dspy.ChatAdapter())
    program = dspy.Predict("question -> answer")
    for i in range(n):
        listeners = [dspy.streaming.StreamListener(signature_field_name="answer", predict=program)]
        streaming = dspy.streamify(program, stream_listeners=listeners, async_streaming=True, is_async_program=is_async)
        start = time.monotonic_ns()
        first = None
        async for item in streaming(question=f"What is {i} + 2?"):
            if first is None and isinstance(item, dspy.streaming.StreamResponse) and item.chunk:
                first = time.monotonic_ns()
        print(json.dumps({"start_ns": start, "first_ns": first}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["async"]))
