"""DSPy commands, with DSPy's DummyLM (no network)."""

import functools
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

QA = {"module": "predict", "signature": "question -> answer"}


def dummy(*answers, **extra):
    return {"dummy": list(answers), **extra}


def test_predict_and_chain_of_thought(worker):
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "2+2?"}, "lm": dummy({"answer": "4"})})
    assert resp["ok"]["fields"] == {"answer": "4"}
    cot = {"module": "chain_of_thought", "signature": "question -> answer: int"}
    resp, _ = worker.call(
        "dspy.run", {"program": cot, "inputs": {"question": "2+2?"}, "lm": dummy({"reasoning": "add", "answer": "4"})}
    )
    assert resp["ok"]["fields"] == {"reasoning": "add", "answer": 4}


def test_class_style_signature_and_demos(worker):
    program = {
        "module": "predict",
        "signature": {
            "instructions": "Rate it.",
            "inputs": [{"name": "text", "desc": "what to rate"}],
            "outputs": [{"name": "score", "type": "int", "constraints": {"ge": 0, "le": 10}}],
        },
        "demos": [{"text": "great", "score": 9}],
    }
    resp, _ = worker.call("dspy.run", {"program": program, "inputs": {"text": "fine"}, "lm": dummy({"score": "6"})})
    assert resp["ok"]["fields"] == {"score": 6}
    resp, _ = worker.call("dspy.inspect", {"program": program})
    (pred,) = resp["ok"]["predictors"]
    assert pred["instructions"] == "Rate it." and pred["demos"] == 1
    assert pred["fields"][0]["desc"] == "what to rate"


def test_missing_lm_and_bad_programs_are_invalid_requests(worker):
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "x"}})
    assert resp["error"]["kind"] == "invalid_request"
    resp, _ = worker.call(
        "dspy.run", {"program": {"module": "nope", "signature": "a -> b"}, "inputs": {}, "lm": dummy()}
    )
    assert resp["error"]["kind"] == "invalid_request"
    resp, _ = worker.call("dspy.run", {"program": {"module": "predict"}, "inputs": {}, "lm": dummy()})
    assert resp["error"]["kind"] == "invalid_request"
    resp, _ = worker.call("dspy.run", {"program": QA, "inputs": {"question": "x"}, "lm": {"temperature": 0}})
    assert resp["error"]["kind"] == "invalid_request"
    resp, _ = worker.call(
        "dspy.run", {"program": {"module": "react", "signature": "q -> a"}, "inputs": {"q": "x"}, "lm": dummy()}
    )
    assert resp["error"]["kind"] == "invalid_request"
    resp, _ = worker.call(
        "dspy.run",
        {
            "program": {"module": "react", "signature": "q -> a", "params": {"tools": ["nowhere:fn"]}},
            "inputs": {"q": "x"},
            "lm": dummy(),
        },
    )
    assert resp["error"]["kind"] == "invalid_request"


def test_react_calls_a_tool(worker):
    lm = dummy(
        {"next_thought": "I should add.", "next_tool_name": "add", "next_tool_args": {"a": 2, "b": 3}},
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "2 + 3 = 5", "answer": "5"},
    )
    program = {
        "module": "react",
        "signature": "question -> answer",
        "params": {"tools": ["tools_for_tests:add"], "max_iters": 4},
    }
    resp, _ = worker.call("dspy.run", {"program": program, "inputs": {"question": "What is 2 + 3?"}, "lm": lm})
    fields = resp["ok"]["fields"]
    assert fields["answer"] == "5"
    assert "5" in str(fields["trajectory"]), fields["trajectory"]


def test_program_of_thought_runs_the_generated_code_in_the_deno_sandbox(worker):
    # DSPy's deno extra provides the binary; the sandbox needs no deno.land.
    code = "```python\nresult = 6 * 7\nprint(result)\n```"
    lm = dummy(
        {"reasoning": "multiply", "generated_code": code},
        {"reasoning": "the code printed 42", "answer": "42"},
    )
    program = {"module": "program_of_thought", "signature": "question -> answer"}
    resp, _ = worker.call("dspy.run", {"program": program, "inputs": {"question": "What is 6 times 7?"}, "lm": lm})
    assert resp["ok"]["fields"]["answer"] == "42", resp


def test_program_of_thought_without_deno_says_what_is_missing(worker, monkeypatch):
    from dspex_worker import programs, sandbox

    monkeypatch.setattr(sandbox, "deno_binary", lambda: None)
    with pytest.raises(sandbox.Unsupported, match="deno extra"):
        programs.build_program({"module": "program_of_thought", "signature": "q -> a"})
    with pytest.raises(sandbox.Unsupported, match="deno extra"):
        sandbox.interpreter()


def test_the_sandbox_import_map_stands_in_for_deno_land(tmp_path, monkeypatch):
    import json

    from dspex_worker import sandbox

    monkeypatch.setattr(sandbox, "_import_map", None)
    monkeypatch.setattr(sandbox.tempfile, "gettempdir", lambda: str(tmp_path))
    path = sandbox.import_map()
    mapping = json.load(open(path))["imports"]
    (target,) = mapping.values()
    assert list(mapping) == [sandbox._STD_IO_URL]
    assert open(target[len("file://") :]).read() == sandbox._STD_IO
    assert sandbox.import_map() == path
    interp = sandbox.interpreter()
    assert interp.deno_command[1:3] == ["run", f"--import-map={path}"]
    interp.shutdown()


def test_multi_chain_comparison_best_of_n_refine(worker):
    mcc = {"module": "multi_chain_comparison", "signature": "question -> answer", "params": {"M": 2}}
    completions = [{"reasoning": "a", "answer": "4"}, {"reasoning": "b", "answer": "4"}]
    resp, _ = worker.call(
        "dspy.run",
        {
            "program": mcc,
            "inputs": {"question": "2+2?", "completions": completions},
            "lm": dummy({"rationale": "both say 4", "answer": "4"}),
        },
    )
    assert resp["ok"]["fields"]["answer"] == "4"
    for kind in ("best_of_n", "refine"):
        program = {
            "module": kind,
            "signature": "question -> answer",
            "params": {"N": 2, "reward_fn": "tools_for_tests:always_one", "threshold": 1.0},
        }
        resp, _ = worker.call(
            "dspy.run",
            {
                "program": program,
                "inputs": {"question": "2+2?"},
                "lm": dummy({"reasoning": "r", "answer": "4"}, {"reasoning": "r", "answer": "4"}),
            },
        )
        assert resp["ok"]["fields"]["answer"] == "4", (kind, resp)


def test_best_of_n_and_refine_need_a_reward(worker):
    for kind in ("best_of_n", "refine"):
        program = {"module": kind, "signature": "question -> answer", "params": {"N": 2}}
        resp, _ = worker.call("dspy.run", {"program": program, "inputs": {"question": "2+2?"}, "lm": dummy()})
        assert resp["error"]["kind"] == "invalid_request", resp
        assert "reward_fn" in resp["error"]["message"] and "reward_metric" in resp["error"]["message"]


def test_rewards_by_metric_name_score_the_prediction_against_an_input():
    import dspy

    from dspex_worker.programs import metric_reward
    from dspex_worker.registry import InvalidArguments

    pred = dspy.Prediction(answer="The Eiffel Tower")
    em = metric_reward({"name": "exact_match", "field": "answer", "expected": "gold"})
    assert em({"gold": "eiffel tower"}, pred) == 1.0
    assert em({"gold": ["Louvre", "Eiffel Tower!"]}, pred) == 1.0
    assert em({"gold": "Louvre"}, pred) == 0.0
    f1 = metric_reward({"name": "f1", "field": "answer", "expected": "gold"})
    assert f1({"gold": "Eiffel Tower in Paris"}, pred) == pytest.approx(2 / 3)
    grounded = metric_reward({"name": "passage_match", "field": "answer", "expected": "context"})
    assert grounded({"context": ["It is the Eiffel Tower, in Paris."]}, pred) == 1.0
    assert grounded({"context": "Nothing here."}, pred) == 0.0
    with pytest.raises(InvalidArguments, match="no input `gold`"):
        em({}, pred)
    with pytest.raises(InvalidArguments, match="unknown reward metric"):
        metric_reward({"name": "bleu", "field": "answer", "expected": "gold"})
    with pytest.raises(InvalidArguments, match="needs `name`"):
        metric_reward({"name": "f1"})


def test_best_of_n_with_a_metric_reward_stops_at_the_first_match(worker):
    program = {
        "module": "best_of_n",
        "signature": "question, gold -> answer",
        "params": {"N": 3, "reward_metric": {"name": "exact_match", "field": "answer", "expected": "gold"}},
    }
    lm = dummy({"reasoning": "r", "answer": "5"}, {"reasoning": "r", "answer": "4"}, {"reasoning": "r", "answer": "9"})
    resp, _ = worker.call("dspy.run", {"program": program, "inputs": {"question": "2+2?", "gold": "4"}, "lm": lm})
    assert resp["ok"]["fields"]["answer"] == "4", resp


def test_parallel(worker):
    lm = dummy({"answer": "a"}, {"answer": "b"}, {"answer": "c"})
    resp, _ = worker.call(
        "dspy.parallel",
        {
            "program": QA,
            "inputs": [{"question": "1"}, {"question": "2"}, {"question": "3"}],
            "lm": lm,
            "num_threads": 1,
        },
    )
    assert [r["fields"]["answer"] for r in resp["ok"]["results"]] == ["a", "b", "c"], "in input order"


def test_parallel_reports_each_items_error_in_its_place(worker):
    lm = dummy({"answer": "a"}, {"answer": "c"})
    # Predict takes `config` from the call: a string there fails that item only.
    items = [{"question": "1"}, {"question": "2", "config": "not a map"}, {"question": "3"}]
    resp, _ = worker.call("dspy.parallel", {"program": QA, "inputs": items, "lm": lm, "num_threads": 1})
    first, bad, last = resp["ok"]["results"]
    assert first["fields"]["answer"] == "a" and last["fields"]["answer"] == "c"
    assert bad["error"]["kind"] == "python" and bad["error"]["type"] == "TypeError", bad
    resp, _ = worker.call("dspy.parallel", {"program": QA, "inputs": ["not a map"], "lm": lm})
    assert resp["error"]["kind"] == "invalid_request"


def test_format_and_parse_expose_dspys_adapters(worker):
    resp, _ = worker.call(
        "dspy.format",
        {
            "signature": "question, history: dspy.History -> answer",
            "adapter": "json",
            "inputs": {"question": "And Italy?", "history": {"messages": [{"question": "France?", "answer": "Paris"}]}},
        },
    )
    messages = resp["ok"]["messages"]
    assert messages[0]["role"] == "system" and len(messages) == 4
    resp, _ = worker.call(
        "dspy.parse", {"signature": "q -> n: int", "completion": "[[ ## n ## ]]\n42", "module": "chain_of_thought"}
    )
    assert resp["error"]["kind"] == "parse"
    resp, _ = worker.call("dspy.parse", {"signature": "q -> n: int", "completion": "[[ ## n ## ]]\n42"})
    assert resp["ok"]["fields"] == {"n": 42}


def test_evaluate_streams_progress(worker):
    devset = [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]
    resp, chunks = worker.call(
        "dspy.evaluate",
        {
            "program": QA,
            "devset": devset,
            "metric": "exact_match",
            "input_keys": ["question"],
            "lm": dummy({"answer": "4"}, {"answer": "5"}),
        },
        stream=True,
    )
    assert resp["ok"]["score"] == 50.0
    assert [c["data"]["done"] for c in chunks] == [1, 2]
    assert len(resp["ok"]["results"]) == 2


def test_optimizers_compile_and_state_round_trips(worker):
    trainset = [{"question": "2+2?", "answer": "4"}, {"question": "1+3?", "answer": "4"}]
    resp, _ = worker.call(
        "dspy.optimize",
        {
            "optimizer": "LabeledFewShot",
            "program": QA,
            "trainset": trainset,
            "input_keys": ["question"],
            "params": {"k": 2},
            "lm": dummy(),
        },
    )
    state = resp["ok"]["state"]
    assert resp["ok"]["demos"] == 2
    lm = dummy({"answer": "4"}, {"answer": "4"}, {"answer": "4"}, {"answer": "4"})
    resp, chunks = worker.call(
        "dspy.optimize",
        {
            "optimizer": "BootstrapFewShot",
            "program": QA,
            "trainset": trainset,
            "input_keys": ["question"],
            "metric": "tools_for_tests:answer_is_four",
            "params": {"max_bootstrapped_demos": 2, "max_labeled_demos": 0},
            "lm": lm,
        },
        stream=True,
    )
    assert resp["ok"]["demos"] >= 1, resp
    events = [c["data"]["event"] for c in chunks]
    assert events[0] == "started" and events[-1] == "finished" and "progress" in events
    # The saved state loads back into a fresh program and is used.
    saved = resp["ok"]["state"]
    resp, _ = worker.call("dspy.state", {"program": {**QA, "state": saved}})
    assert resp["ok"]["state"]["demos"] == saved["demos"]
    resp, _ = worker.call(
        "dspy.run", {"program": {**QA, "state": state}, "inputs": {"question": "5+5?"}, "lm": dummy({"answer": "10"})}
    )
    assert resp["ok"]["fields"] == {"answer": "10"}
    resp, _ = worker.call("dspy.optimize", {"optimizer": "Nope", "program": QA, "trainset": trainset, "lm": dummy()})
    assert resp["error"]["kind"] == "invalid_request"


def test_unknown_metric_path(worker):
    resp, _ = worker.call(
        "dspy.evaluate",
        {"program": QA, "devset": [{"question": "q", "answer": "a"}], "metric": "nowhere:metric", "lm": dummy()},
    )
    assert resp["error"]["kind"] == "invalid_request"


def test_jsonable_and_error_classification():
    import enum

    from dspex_worker.registry import classify
    from dspex_worker.values import jsonable

    class Color(enum.Enum):
        RED = "red"

    assert jsonable({"a": (1, 2), "b": {3, 1}, "c": Color.RED, "d": float("nan"), "e": object}) == {
        "a": [1, 2],
        "b": [1, 3],
        "c": "red",
        "d": "nan",
        "e": str(object),
    }

    class FakeTimeout(Exception):
        pass

    FakeTimeout.__name__ = "APITimeoutError"
    assert classify(FakeTimeout("slow"))["kind"] == "timeout"

    class RateLimitError(Exception):
        pass

    assert classify(RateLimitError("429"))["retryable"]

    class APIConnectionError(Exception):
        pass

    assert classify(APIConnectionError("down"))["kind"] == "transport"


def test_session_programs_keep_history_and_forget_on_drop(worker):
    chat = {"module": "predict", "signature": "history: dspy.History, question -> answer"}
    resp, _ = worker.call("session.define", {"name": "chat", "program": chat}, session="s1")
    assert resp["ok"] == {"defined": "chat"}
    # History arrives as {"messages": [...]}, as the runtime keeps it, and
    # reaches the module as a dspy.History.
    history = {"messages": [{"question": "Capital of France?", "answer": "Paris"}]}
    resp, _ = worker.call(
        "session.run",
        {"name": "chat", "inputs": {"history": history, "question": "And Japan?"}, "lm": dummy({"answer": "Tokyo"})},
        session="s1",
    )
    assert resp["ok"]["fields"] == {"answer": "Tokyo"}
    assert resp["ok"]["elapsed_us"] > 0
    resp, _ = worker.call("session.programs", {}, session="s1")
    assert resp["ok"] == ["chat"]
    resp, _ = worker.call("session.state", {"name": "chat"}, session="s1")
    assert "signature" in resp["ok"]["state"]
    resp, _ = worker.call("session.run", {"name": "nope", "inputs": {}}, session="s1")
    assert resp["error"]["kind"] == "not_found"
    resp, _ = worker.call("session.drop", {}, session="s1")
    assert resp["ok"] == {"dropped": True}
    # A dropped (or never defined here) session is "not found": the runtime
    # defines its programs again and retries.
    resp, _ = worker.call("session.run", {"name": "chat", "inputs": {"question": "?"}}, session="s1")
    assert resp["error"]["kind"] == "not_found"
    resp, _ = worker.call("session.programs", {}, session="s1")
    assert resp["ok"] == []
    resp, _ = worker.call("session.define", {"name": "chat", "program": chat})
    assert resp["error"]["kind"] == "invalid_request"


def test_format_renders_history_like_dspy(worker):
    args = {
        "signature": "history: dspy.History, question -> answer",
        "inputs": {"history": {"messages": [{"question": "2+2?", "answer": "4"}]}, "question": "3+3?"},
    }
    resp, _ = worker.call("dspy.format", args)
    messages = resp["ok"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "2+2?" in messages[1]["content"] and "4" in messages[2]["content"]


def test_bootstrap_progress_is_bounded_by_the_trainset(worker):
    trainset = [{"question": "2+2?", "answer": "4"}, {"question": "1+3?", "answer": "4"}]
    lm = dummy({"answer": "4"}, {"answer": "4"}, {"answer": "4"}, {"answer": "4"})
    resp, chunks = worker.call(
        "dspy.optimize",
        {
            "optimizer": "BootstrapFewShot",
            "program": QA,
            "trainset": trainset,
            "input_keys": ["question"],
            "metric": "exact_match",
            "params": {"max_bootstrapped_demos": 2, "max_labeled_demos": 0},
            "lm": lm,
        },
        stream=True,
    )
    assert "ok" in resp, resp
    progress = [c["data"] for c in chunks if c["data"]["event"] == "progress"]
    assert progress and all(p["total"] == 2 for p in progress)


def test_built_programs_are_shared_by_description():
    from dspex_worker import programs

    programs._programs.clear()
    a = programs.shared_program(QA)
    assert programs.shared_program({"signature": "question -> answer", "module": "predict"}) is a
    assert programs.shared_program({**QA, "demos": [{"question": "1+1?", "answer": "2"}]}) is not a
    # Kinds that may keep state between calls are built fresh every time.
    mcc = {"module": "multi_chain_comparison", "signature": "question -> answer"}
    assert programs.shared_program(mcc) is not programs.shared_program(mcc)
    # Bounded: the least recently used description goes first. `a` is the
    # oldest entry but was used again, so another one goes.
    programs._programs.clear()
    a = programs.shared_program(QA)
    first = {"signature": "question -> answer_first"}
    kept_first = programs.shared_program(first)
    for i in range(programs._programs.size - 2):
        programs.shared_program({"signature": f"question -> answer_{i}"})
    assert programs.shared_program(QA) is a
    programs.shared_program({"signature": "question -> answer_last"})
    assert len(programs._programs) == programs._programs.size
    assert programs.shared_program(QA) is a
    assert programs.shared_program(first) is not kept_first


def test_a_shared_program_serves_concurrent_requests():
    import threading

    import dspy

    from dspex_worker import programs

    module = programs.shared_program(QA)
    results = {}

    def call(i):
        with dspy.context(lm=dspy.utils.DummyLM([{"answer": f"a{i}"}]), adapter=dspy.ChatAdapter()):
            results[i] = module(question=f"{i}?").answer

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"a{i}" for i in range(8)}


def test_model_catalog_lookups_are_remembered_and_still_copied():
    import dspy.clients.capabilities as capabilities
    import dspy.clients.costs as costs
    import dspy.clients.model_metadata as metadata

    from dspex_worker import dspy_patches

    # Idempotent, and every module that looks models up uses the memo.
    assert dspy_patches._memoize_model_metadata() and dspy_patches._memoize_model_metadata()
    assert costs.model_info is capabilities.model_info is metadata.model_info
    assert costs.model_info._dspex_memo
    original = costs.model_info.__wrapped__
    assert not getattr(original, "_dspex_memo", False)
    for provider, model in [("openai", "gpt-4o-mini"), ("openai", "no-such-model"), ("vllm", "local/llama")]:
        first = costs.model_info(provider, model)
        assert first == original(provider, model)
        first["mutated"] = True
        assert "mutated" not in costs.model_info(provider, model)
    assert costs.model_info("openai", "gpt-4o-mini").get("input_cost_per_token")


def test_lm_timeouts_come_in_steps_and_lms_are_never_changed():
    from dspex_worker import lms

    class Ctx:
        def __init__(self, left):
            self.left = left

        def time_left(self):
            return self.left

    assert [lms.timeout_step(x) for x in (None, 0.0, 0.01, 0.5, 0.55, 1.0, 1.2, 29.0, 29.4, 5000.0)] == [
        None,
        0.1,
        0.1,
        0.5,
        0.6,
        1.0,
        2.0,
        29.0,
        30.0,
        5000.0,
    ]
    spec = {"model": "offline", "base_url": "http://127.0.0.1:9/v1", "api_key": "k"}
    a = lms.build_lm(spec, Ctx(11.6))
    # Another request with a little less time left: the same LM (so the same
    # HTTP engine and connections), untouched.
    assert lms.build_lm(spec, Ctx(11.2)) is a and a.kwargs["timeout"] == 12.0
    b = lms.build_lm(spec, Ctx(0.2))
    assert b is not a and b.kwargs["timeout"] == 0.2 and a.kwargs["timeout"] == 12.0
    assert "timeout" not in lms.build_lm(spec, None).kwargs


def test_shared_programs_keep_no_call_history():
    from dspex_worker import lms, programs

    module = programs.shared_program(QA)
    module.history.clear()
    with lms.lm_context(None, dummy({"answer": "4"})):
        module(question="2+2?")
    assert module.history == []
    with lms.lm_context(None, dummy({"answer": "4"}), disable_history=False):
        module(question="2+2?")
    assert len(module.history) == 1
    module.history.clear()


def test_the_loop_runs_dspy_bookkeeping_in_place_and_the_rest_on_threads():
    import asyncio
    import contextvars
    import threading

    from dspex_worker import aio, dspy_patches

    # Under the pinned DSPy every step named is found (a DSPy upgrade that
    # moves one fails here instead of silently costing thread hops), and the
    # worker's loop runs them in place.
    steps_found = dspy_patches._inline_steps()
    assert len(steps_found) == 6 and all(f in aio._in_place for f in steps_found)
    request = contextvars.ContextVar("request", default=None)

    def short(x):
        return threading.get_ident(), x * 2, request.get()

    def other(x):
        return threading.get_ident(), x * 3, request.get()

    def broken():
        raise ValueError("bad step")

    class Engine:
        def __init__(self, built):
            self.built = built

        def target(self, x):
            return threading.get_ident(), x

    def in_request(x):
        return threading.get_ident(), x

    executor = aio.LoopExecutor(
        {
            short: aio._always,
            broken: aio._always,
            Engine.target: lambda engine, x: engine.built,
            # The test runs in the call's context.
            in_request: lambda x: request.get() == "r-1",
        }
    )
    loop = asyncio.new_event_loop()
    loop.set_default_executor(executor)

    async def steps():
        request.set("r-1")
        here = threading.get_ident()
        # In place, in the caller's (copied) context, as on a thread.
        assert await asyncio.to_thread(short, 2) == (here, 4, "r-1")
        there, value, seen = await asyncio.to_thread(other, 2)
        assert there != here and (value, seen) == (6, "r-1")
        with pytest.raises(ValueError, match="bad step"):
            await asyncio.to_thread(broken)
        # A bound method, in place only when its test (given `self`) passes.
        assert await asyncio.to_thread(Engine(True).target, 1) == (here, 1)
        assert (await asyncio.to_thread(Engine(False).target, 1))[0] != here
        assert await asyncio.to_thread(in_request, 5) == (here, 5)
        # Not the shape to_thread submits: a thread, whatever it names.
        assert executor.runs_in_place(functools.partial(short, 1)) is False

    try:
        loop.run_until_complete(steps())
    finally:
        loop.close()
        executor.shutdown()


def test_waiting_on_the_loop_from_a_thread_ends_with_the_program_or_the_request():
    import asyncio
    import threading

    from dspex_worker import aio
    from dspex_worker.registry import Cancelled, Context

    # A program's own TimeoutError is its failure, not the wait's.
    async def times_out():
        raise TimeoutError("a tool timed out")

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="a tool timed out"):
        aio.await_on_loop(Context(1, deadline=time.monotonic() + 30), times_out)
    assert time.monotonic() - started < 1
    # A coroutine that cannot even be made fails the request, not hangs it.
    with pytest.raises(ZeroDivisionError):
        aio.await_on_loop(Context(2), lambda: 1 / 0)
    # The request's cancel ends the wait, and the program with it.
    ended = threading.Event()

    async def forever():
        try:
            await asyncio.sleep(60)
        finally:
            ended.set()

    ctx = Context(3)
    threading.Timer(0.1, ctx.cancel).start()
    with pytest.raises(Cancelled):
        aio.await_on_loop(ctx, forever)
    assert ended.wait(2), "the program was not cancelled"


def test_capabilities_run_in_place_only_on_the_lm15_route_of_this_call():
    import dspy
    from dspy.clients.capabilities import planning_scope

    from dspex_worker import dspy_patches

    lm = dspy.LM("openai/some-model", api_base="http://127.0.0.1:9/v1", api_key="k")
    assert dspy_patches._native_route(lm)
    # A call's own client options can send it to LiteLLM: then to a thread.
    with planning_scope(lm, {"extra_headers": {"x-test": "1"}}):
        assert not dspy_patches._native_route(lm)


def test_metric_budgets_follow_each_optimizers_loop():
    from dspex_worker.dspy_commands import metric_budget

    assert metric_budget("BootstrapFewShot", {"max_rounds": 2}, {}, 8, 1) == 16
    assert (
        metric_budget("BootstrapFewShotWithRandomSearch", {"num_candidate_programs": 2}, {"valset": [0] * 4}, 8, 1)
        == 44
    )
    assert metric_budget("COPRO", {"breadth": 2, "depth": 1}, {}, 8, 1) == 16
    assert metric_budget("SIMBA", {"bsize": 4, "num_candidates": 2, "max_steps": 2}, {}, 8, 1) == 64
    # MIPROv2 light, no minibatch under 50 validation examples: 6 demo sets
    # bootstrapped, then the default program and 10 trials on the valset.
    assert metric_budget("MIPROv2", {}, {"valset": [0] * 4}, 8, 1) == 6 * 8 + 11 * 4
    assert metric_budget("MIPROv2", {"auto": None}, {"valset": [0] * 4}, 8, 1) is None
    big = metric_budget(
        "MIPROv2", {"auto": "light"}, {"valset": [0] * 100, "max_bootstrapped_demos": 0, "max_labeled_demos": 0}, 8, 1
    )
    assert big == 9 * 35 + (9 // 5 + 2) * 100
    assert metric_budget("GEPA", {}, {}, 8, 1) is None


def test_progress_passes_a_metric_only_the_arguments_it_declares():
    from dspex_worker.dspy_commands import _positional_arity, _Progress

    class Ctx:
        events = []

        def check(self):
            pass

        def emit(self, e):
            self.events.append(e)

    def plain(example, pred, trace=None, frac=1.0):
        return frac

    def gepa(gold, pred, trace, pred_name, pred_trace):
        return pred_name

    assert _positional_arity(plain) == 3 and _positional_arity(gepa) == 5
    ctx = Ctx()
    p = _Progress(ctx, plain, lambda: 1, "optimize")
    assert p(None, None, None, "predict", []) == 1.0, "frac is not GEPA's pred_name"
    assert _Progress(ctx, gepa, None, "optimize")(None, None, None, "predict", []) == "predict"
    assert ctx.events[0]["total"] == 1 and ctx.events[1]["total"] is None
    assert p(None, None) == 1.0 and ctx.events[-1] == {"event": "progress", "phase": "optimize", "done": 2, "total": 2}
