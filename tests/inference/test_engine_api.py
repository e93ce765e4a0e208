"""Engine API: validation, stop conditions, streaming (sync and async), abort, running out of blocks."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pyagent.inference.engine import PagedAttentionEngine, RequestOutput
from pyagent.inference.sampler import SamplingParams


def drain(engine: PagedAttentionEngine) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(5000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    assert not engine.has_unfinished()
    return outs


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> PagedAttentionEngine:
    return PagedAttentionEngine.from_pretrained(tiny_dir)


def greedy_tokens(engine: PagedAttentionEngine, prompt: list[int], n: int) -> list[int]:
    engine.add_request("probe", prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    return drain(engine)["probe"][-1].token_ids


def test_bad_requests_are_rejected_clearly(engine: PagedAttentionEngine) -> None:
    ok = SamplingParams()
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request("a", [], ok)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request("a", [1, 10**6], ok)
    with pytest.raises(ValueError, match=f"context holds {engine.max_model_len}"):
        engine.add_request("a", [5] * engine.max_model_len, ok)
    for bad, message in ((SamplingParams(temperature=-1), "temperature"), (SamplingParams(top_p=1.5), "top_p"),
                         (SamplingParams(top_k=-2), "top_k"), (SamplingParams(max_tokens=0), "max_tokens"),
                         (SamplingParams(stop=[""]), "stop")):
        with pytest.raises(ValueError, match=message):
            engine.add_request("a", [1, 2], bad)
    engine.add_request("dup", [1, 5], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", [1, 5], ok)
    drain(engine)
    assert not engine.has_unfinished() and engine.kv_cache.num_used_blocks == 0


def test_streamed_deltas_add_up_to_the_text(engine: PagedAttentionEngine) -> None:
    prompt = engine.tokenizer.encode("def fibonacci(n")
    engine.add_request("s", prompt, SamplingParams(max_tokens=25, temperature=0.0, ignore_eos=True))
    outs = drain(engine)["s"]
    final = outs[-1]
    assert final.finished and final.finish_reason == "length" and len(final.token_ids) == 25
    assert "".join(o.text_delta for o in outs) == final.text
    assert [t for o in outs for t in o.new_token_ids] == final.token_ids
    assert final.text == engine.tokenizer.decode(final.token_ids)


def test_stop_string_cuts_the_text_and_finishes(engine: PagedAttentionEngine) -> None:
    prompt = engine.tokenizer.encode("The quick brown")
    tokens = greedy_tokens(engine, prompt, 30)
    text = engine.tokenizer.decode(tokens)
    stop = text[10:14]
    assert stop and stop not in text[:10 + len(stop) - 1]
    engine.add_request("stop", prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=[stop]))
    outs = drain(engine)["stop"]
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].text == text[:text.index(stop)]
    assert "".join(o.text_delta for o in outs) == outs[-1].text
    assert len(outs[-1].token_ids) < 30


def test_eos_stops_unless_ignored(tiny_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_dir, tmp_path / "m")
    base = PagedAttentionEngine.from_pretrained(folder)
    prompt = base.tokenizer.encode("Once upon a time")
    tokens = greedy_tokens(base, prompt, 12)
    eos = tokens[4]
    first = tokens.index(eos)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 2]}))
    engine = PagedAttentionEngine.from_pretrained(folder)
    assert engine.tokenizer.eos_token_ids == {eos, 2}
    engine.add_request("eos", prompt, SamplingParams(max_tokens=12, temperature=0.0))
    engine.add_request("ignore", prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    outs = drain(engine)
    assert outs["eos"][-1].finish_reason == "stop" and outs["eos"][-1].token_ids == tokens[:first + 1]
    assert outs["ignore"][-1].finish_reason == "length" and outs["ignore"][-1].token_ids == tokens


def test_seeded_sampling_is_reproducible_and_batch_independent(engine: PagedAttentionEngine) -> None:
    params = SamplingParams(max_tokens=15, temperature=1.0, top_p=0.9, top_k=50, seed=42)
    engine.add_request("alone", [1, 40, 41], params)
    alone = drain(engine)["alone"][-1].token_ids
    engine.add_request("other", [1, 7, 8, 9], SamplingParams(max_tokens=15, seed=7))
    engine.add_request("again", [1, 40, 41], params)
    outs = drain(engine)
    assert outs["again"][-1].token_ids == alone
    assert outs["other"][-1].token_ids != alone


def test_context_limit_finishes_with_length(tiny_dir: Path) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, num_blocks=3)  # 48-slot cache: 48-token context
    assert engine.max_model_len == 48
    engine.add_request("long", [1] + [9] * 40, SamplingParams(max_tokens=100, ignore_eos=True))
    final = drain(engine)["long"][-1]
    assert final.finish_reason == "length" and len(final.prompt_token_ids) + len(final.token_ids) == 48


def test_running_out_of_blocks_preempts_and_everyone_finishes(tiny_dir: Path) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, num_blocks=8, max_num_seqs=16)
    rng = np.random.default_rng(0)
    for i in range(12):
        engine.add_request(f"r{i}", [1, *rng.integers(3, 500, size=int(rng.integers(5, 60))).tolist()],
                           SamplingParams(max_tokens=int(rng.integers(5, 40)), ignore_eos=True, seed=i))
    outs = drain(engine)
    assert len(outs) == 12 and all(o[-1].finish_reason == "length" for o in outs.values())
    assert engine.scheduler.num_preemptions > 0
    assert engine.kv_cache.num_used_blocks == 0


def test_abort_frees_blocks_and_reports(engine: PagedAttentionEngine) -> None:
    engine.add_request("gone", [1, 2, 3, 4, 5], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.kv_cache.num_used_blocks > 0
    engine.abort("gone")
    assert engine.kv_cache.num_used_blocks == 0
    final = engine.step()
    assert [(o.request_id, o.finished, o.finish_reason) for o in final] == [("gone", True, "abort")]
    engine.abort("never-existed")  # a no-op, not an error


def test_async_generate_concurrent_streams_and_close_aborts(tiny_dir: Path) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    expected = {}
    for name, prompt in (("a", [1, 30, 31]), ("b", [1, 60, 61, 62, 63])):
        engine.add_request(name, prompt, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    for name, outs in drain(engine).items():
        expected[name] = outs[-1].token_ids

    async def collect(prompt: list[int]) -> list[int]:
        tokens: list[int] = []
        async for out in engine.generate(prompt, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)):
            tokens.extend(out.new_token_ids)
        return tokens

    async def leave_early() -> int:
        gen = engine.generate([1, 70, 71], SamplingParams(max_tokens=10_000, ignore_eos=True), request_id="early")
        async for out in gen:
            if len(out.token_ids) >= 3:
                break
        await gen.aclose()
        return len(out.token_ids)

    async def main() -> tuple[list[int], list[int], int]:
        a, b, n = await asyncio.wait_for(asyncio.gather(collect([1, 30, 31]), collect([1, 60, 61, 62, 63]),
                                                        leave_early()), timeout=60)
        return a, b, n

    try:
        a, b, n = asyncio.run(main())
        assert a == expected["a"] and b == expected["b"] and n >= 3
        for _ in range(100):  # the stepping thread finishes its current step, then sees nothing to do
            if not engine.has_unfinished():
                break
            asyncio.run(asyncio.sleep(0.01))
        assert not engine.has_unfinished()
        assert engine.kv_cache.num_used_blocks == 0
    finally:
        engine.close()


def test_generate_rejects_bad_prompts_at_once_and_cancel_or_drop_aborts(tiny_dir: Path) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    long = SamplingParams(max_tokens=100_000, ignore_eos=True)

    async def main() -> None:
        with pytest.raises(ValueError, match="prompt is empty"):
            engine.generate([], SamplingParams())
        # A consumer task cancelled while it waits for the next token (a client that went away).
        async def consume() -> None:
            async for _ in engine.generate([1, 5, 6], long, request_id="cancelled"):
                pass

        task = asyncio.create_task(consume())
        for _ in range(500):
            await asyncio.sleep(0.01)
            if engine.kv_cache.num_used_blocks:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A stream that is created and dropped without being read.
        stream = engine.generate([1, 7, 8], long, request_id="dropped")
        del stream

    try:
        asyncio.run(asyncio.wait_for(main(), timeout=60))
        for _ in range(200):
            if not engine.has_unfinished():
                break
            asyncio.run(asyncio.sleep(0.01))
        assert not engine.has_unfinished()
        assert engine.kv_cache.num_used_blocks == 0
    finally:
        engine.close()


def test_callers_never_wait_for_a_running_step(tiny_dir: Path) -> None:
    import threading

    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    in_step, release = threading.Event(), threading.Event()

    def slow_observer(rid: str, pos: int, row: np.ndarray) -> None:
        in_step.set()
        release.wait(30)

    engine.logits_observer = slow_observer
    engine.add_request("busy", [1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True))
    stepper = threading.Thread(target=engine.step)
    stepper.start()
    assert in_step.wait(30)
    done = threading.Event()

    def caller() -> None:  # runs while the step is stuck inside the model
        engine.add_request("new", [1, 4], SamplingParams(max_tokens=2))
        engine.abort("busy")
        assert engine.has_unfinished()
        done.set()

    t = threading.Thread(target=caller)
    t.start()
    finished_while_stepping = done.wait(10)
    release.set()
    stepper.join(30)
    t.join(30)
    engine.logits_observer = None
    assert finished_while_stepping
    outs = drain(engine)
    assert outs["busy"][-1].finish_reason == "abort"
    assert outs["new"][-1].finish_reason == "length"
    assert engine.kv_cache.num_used_blocks == 0
