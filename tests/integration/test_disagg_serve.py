"""``pyagent serve --role prefill|decode|router`` as real processes, spoken to with the official openai client.

Greedy output through router + prefill + decode must be exactly what one instance says; the API key goes
through the router; a decode instance whose layout or model differs from its prefill peer is refused at
the handshake (and the prefill side names the peer); and every block comes back afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from pyagent.inference.tiny import init_tiny
from tests.integration.disagg_kit import Instance, decode, fingerprint_in, prefill, router, single

KEY = "disagg-test-key"
QUESTIONS = [
    "Tell me about the paged attention engine and its scheduler. " * 3,
    "Tell me about the paged attention engine and its block manager. " * 3,  # shares a prefix with the first
    "hi",
    "def fibonacci(n: int) -> int:\n    a, b = 0, 1\n",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("model") / "tiny", seed=0)


@pytest.fixture(scope="module")
def stack(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, Instance, Instance,
                                                                                      Instance]]:
    tmp = tmp_path_factory.mktemp("disagg")
    keys = tmp / "keys"
    keys.write_text(f"# test key\n{KEY}\n")
    home = tmp / "home"
    p = prefill(tiny, tmp, home=home, api_key_file=keys)
    p.api_key = KEY
    started: list[Instance] = []
    try:
        started.append(p.start())
        assert p.kv_port is not None
        d = decode(tiny, tmp, p.kv_port, home=home, api_key_file=keys)
        d.api_key = KEY
        started.append(d.start())
        r = router(tmp, p, d)
        started.append(r.start())
        s = single(tiny, tmp)
        started.append(s.start())
        yield p, d, r, s
    finally:
        for inst in started:
            inst.stop()


def _client(inst: Instance, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=inst.url, api_key=key, max_retries=0, timeout=120)


def _answers(client: openai.OpenAI, stream: bool) -> list[str]:
    out = []
    for q in QUESTIONS:
        msgs = [{"role": "user", "content": q}]
        if stream:
            chunks = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=24,
                                                    stream=True)  # type: ignore[call-overload]
            out.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        else:
            r = client.chat.completions.create(model="tiny", messages=msgs, temperature=0,  # type: ignore[call-overload]
                                               max_tokens=24)
            out.append(r.choices[0].message.content or "")
    return out


def test_router_prefill_decode_output_equals_one_instance(stack: tuple[Instance, ...]) -> None:
    p, d, r, s = stack
    start_p, start_d = p.free_blocks(), d.free_blocks()
    want = _answers(_client(s, "unused"), stream=False)
    assert len(set(want)) == len(want)  # the prompts really produce different answers
    assert _answers(_client(r), stream=False) == want
    assert _answers(_client(r), stream=True) == want
    assert [m.id for m in _client(r).models.list()] == ["tiny"]
    transfer = d.health()["kv_transfer"]
    assert isinstance(transfer, dict)
    assert transfer["loads"] == 2 * len(QUESTIONS) and transfer["loads_failed"] == 0
    assert transfer["blocks_reused"] > 0  # the repeated prompts' blocks came from the decode side's own cache
    deadline = time.monotonic() + 10
    while (p.free_blocks(), d.free_blocks()) != (start_p, start_d) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (p.free_blocks(), d.free_blocks()) == (start_p, start_d)


def test_the_router_passes_the_api_key_through(stack: tuple[Instance, ...]) -> None:
    _, _, r, _ = stack
    with pytest.raises(openai.AuthenticationError):
        _client(r, "wrong-key").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        _client(r, "wrong-key").models.list()


def _refused(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyagent", "serve", *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_mismatched_decode_instance_is_refused_at_the_handshake(stack: tuple[Instance, ...], tiny: Path,
                                                                  tmp_path: Path) -> None:
    p, _, _, _ = stack
    home = Path(p.args[p.args.index("--home") + 1])
    base = ["--role", "decode", "--port", "0", "--kv-peer", f"tcp://127.0.0.1:{p.kv_port}", "--home", str(home),
            "--store", ":memory:"]
    done = _refused(["--model", str(tiny), "--block-size", "32", *base])
    assert done.returncode != 0 and "block_size differs: 32 here, 16 on the peer" in done.stderr
    other = init_tiny(tmp_path / "other", seed=0)  # same weights, another model name
    done = _refused(["--model", str(other), *base])
    assert done.returncode != 0 and "model differs" in done.stderr and "'other@" in done.stderr
    done = _refused(["--model", str(tiny), "--kv-cache-dtype", "float16", *base])
    assert done.returncode != 0
    assert "KV cache dtype differs: 'float16' here, 'float32' on the peer" in done.stderr
    log = p.text()
    assert log.count("refused the handshake of peer") == 3 and fingerprint_in(log)
    assert "KV cache dtype differs: 'float32' here, 'float16' on the peer" in log
    # the prefill instance still serves
    r = _client(p).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "still there?"}],
                                           max_tokens=3)
    assert r.usage is not None and r.usage.completion_tokens >= 1


def test_without_the_nixl_extra_the_product_says_how_to_install_it(tiny: Path, tmp_path: Path) -> None:
    hide = ("import sys; sys.modules['nixl'] = None; sys.modules['nixl._api'] = None; "
            "from pyagent.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", hide, "serve", "--model", str(tiny), "--role", "prefill",
                           "--kv-backend", "nixl", "--home", str(tmp_path / "home"), "--port", "0",
                           "--store", ":memory:"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "NIXL is not installed" in done.stderr and "pip install 'pyagent[nixl]'" in done.stderr


@pytest.mark.slow
def test_nixl_stack_output_equals_one_instance(stack: tuple[Instance, ...], tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("nixl._api", reason="the nixl extra is not installed")
    *_, s = stack
    home = tmp_path / "home"
    p = prefill(tiny, tmp_path, "--kv-backend", "nixl", home=home)
    started = [p.start()]
    try:
        assert p.kv_port is not None
        started.append(d := decode(tiny, tmp_path, p.kv_port, "--kv-backend", "nixl", home=home).start())
        started.append(r := router(tmp_path, p, d).start())
        assert _answers(_client(r), stream=True) == _answers(_client(s, "unused"), stream=False)
        transfer = d.health()["kv_transfer"]
        assert isinstance(transfer, dict) and transfer["backend"] == "nixl"
        assert transfer["loads"] == len(QUESTIONS) and transfer["loads_failed"] == 0
    finally:
        for inst in started:
            inst.stop()


def test_clients_that_give_up_early_free_the_prefill_blocks_before_any_lease_expires(
        stack: tuple[Instance, ...]) -> None:
    p, d, r, _ = stack
    start_p, start_d = p.free_blocks(), d.free_blocks()
    impatient = openai.OpenAI(base_url=r.url, api_key=KEY, max_retries=0, timeout=0.05)
    for q in QUESTIONS * 2:
        with pytest.raises(openai.APITimeoutError):
            # 1,024 tokens without an early end: far longer than the client's 50 ms, even on a quiet machine.
            impatient.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q + " (gone)"}],
                                              max_tokens=1024, extra_body={"ignore_eos": True, "min_tokens": 1024})
    deadline = time.monotonic() + 15  # well inside the 30 s lease timeout
    while (p.free_blocks(), d.free_blocks()) != (start_p, start_d) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (p.free_blocks(), d.free_blocks()) == (start_p, start_d)
    transfer = p.health()["kv_transfer"]
    assert isinstance(transfer, dict) and transfer["leases_expired"] == 0 and transfer["leases"] == 0
