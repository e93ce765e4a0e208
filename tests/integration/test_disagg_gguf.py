"""The real SmolLM2-135M Q4_1 GGUF through router + prefill + decode: greedy answers identical to one
instance, streamed and not, over ZeroMQ and (where the extra is installed) NIXL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.disagg_kit import Instance, decode, prefill, router, single
from tests.model_files import smollm2_gguf

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "Write a Python function that reverses a string.",
             "What is the capital of Italy?"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    s = single(smollm2_gguf(), tmp_path_factory.mktemp("single"))
    s.start()
    yield s
    s.stop()


def _answers(inst: Instance, model: str, stream: bool) -> list[str]:
    client = openai.OpenAI(base_url=inst.url, api_key="x", max_retries=0, timeout=300)
    out = []
    for q in QUESTIONS:
        msgs = [{"role": "user", "content": q}]
        if stream:
            chunks = client.chat.completions.create(model=model, messages=msgs, temperature=0,  # type: ignore[call-overload]
                                                    max_tokens=32, stream=True)
            out.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        else:
            r = client.chat.completions.create(model=model, messages=msgs, temperature=0,  # type: ignore[call-overload]
                                               max_tokens=32)
            out.append(r.choices[0].message.content or "")
    return out


@pytest.mark.parametrize("backend", ["zmq", "nixl"])
def test_real_model_through_prefill_and_decode_equals_one_instance(backend: str, reference: Instance,
                                                                   tmp_path: Path) -> None:
    if backend == "nixl":
        pytest.importorskip("nixl._api", reason="the nixl extra is not installed")
    model = smollm2_gguf()
    home = tmp_path / "home"
    p = prefill(model, tmp_path, "--kv-backend", backend, home=home)
    started = [p.start()]
    try:
        assert p.kv_port is not None
        started.append(d := decode(model, tmp_path, p.kv_port, "--kv-backend", backend, home=home).start())
        started.append(r := router(tmp_path, p, d).start())
        want = _answers(reference, model.stem, stream=False)
        assert "Paris" in want[0]  # the real model, really answering
        assert _answers(r, model.stem, stream=False) == want
        assert _answers(r, model.stem, stream=True) == want
        transfer = d.health()["kv_transfer"]
        assert isinstance(transfer, dict) and transfer["loads"] == 2 * len(QUESTIONS)
        assert transfer["loads_failed"] == 0 and transfer["blocks_reused"] > 0
    finally:
        for inst in started:
            inst.stop()


def test_float16_caches_through_prefill_and_decode_equal_one_float16_instance(tmp_path: Path) -> None:
    """``--kv-cache-dtype float16`` on every instance: fp16 blocks move as they are, the answers equal one
    fp16 instance's, and each instance reports its cache (startup line and /health) as float16."""
    model = smollm2_gguf()
    fp16 = ("--kv-cache-dtype", "float16")
    home = tmp_path / "home"
    started: list[Instance] = []
    try:
        started.append(s := single(model, tmp_path, *fp16).start())
        started.append(p := prefill(model, tmp_path, *fp16, home=home).start())
        assert p.kv_port is not None
        started.append(d := decode(model, tmp_path, p.kv_port, *fp16, home=home).start())
        started.append(r := router(tmp_path, p, d).start())
        want = _answers(s, model.stem, stream=False)
        assert "Paris" in want[0]
        assert _answers(r, model.stem, stream=False) == want
        transfer = d.health()["kv_transfer"]
        assert isinstance(transfer, dict) and transfer["loads"] == len(QUESTIONS) and transfer["loads_failed"] == 0
        for inst in (s, p, d):
            kv = inst.health()["kv_cache"]
            assert isinstance(kv, dict) and kv["dtype"] == "float16" and kv["bytes_per_token"] == 23040
            assert f"KV cache {kv['total_blocks']} blocks x 16 tokens (float16, 23040 bytes/token" in inst.text()
    finally:
        for inst in started:
            inst.stop()
