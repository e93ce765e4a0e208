"""Chaos through router + prefill + decode: completions, aborts before admission, disconnects mid-stream,
and both instances SIGKILLed and restarted, all at once. Afterwards every live instance's free-block count
equals its start count, every answer that completed equals one instance's greedy answer, and no request
outlives the lease timeout by more than its own compute."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from pyagent.inference.tiny import init_tiny
from tests.integration.disagg_kit import Instance, decode, prefill, router, single

pytestmark = pytest.mark.slow
NUM_REQUESTS = 200  # at least, as the issue asks (more while the kills last)
LEASE_TIMEOUT = 4.0
PROMPTS = [f"Question {i}: how does the paged attention engine schedule its blocks? " * (1 + i % 3)
           for i in range(6)]


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def test_chaos_leaks_no_block_and_hangs_no_request(tmp_path: Path) -> None:
    tiny = init_tiny(tmp_path / "tiny", seed=0)
    home = tmp_path / "home"
    p = prefill(tiny, tmp_path, "--kv-lease-timeout", str(LEASE_TIMEOUT), home=home)
    started: list[Instance] = [p.start()]
    try:
        assert p.kv_port is not None
        d = decode(tiny, tmp_path, p.kv_port, "--kv-lease-timeout", str(LEASE_TIMEOUT), home=home)
        started.append(d.start())
        r = router(tmp_path, p, d)
        started.append(r.start())
        s = single(tiny, tmp_path)
        started.append(s.start())
        start_blocks = (p.free_blocks(), d.free_blocks())
        ref = openai.OpenAI(base_url=s.url, api_key="x", max_retries=0, timeout=60)
        want = [ref.chat.completions.create(model="tiny", messages=_messages(i), temperature=0,  # type: ignore[arg-type]
                                            max_tokens=16).choices[0].message.content for i in range(len(PROMPTS))]

        outcomes: Counter[str] = Counter()
        durations: list[float] = []
        wrong: list[int] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            kind = i % 4
            began = time.monotonic()
            client = openai.OpenAI(base_url=r.url, api_key="x", max_retries=0,
                                   timeout=0.05 if kind == 2 else 60)
            try:
                if kind == 0:  # a normal completion
                    text = client.chat.completions.create(model="tiny", messages=_messages(i),  # type: ignore[arg-type]
                                                          temperature=0, max_tokens=16).choices[0].message.content
                    ok = text == want[i % len(PROMPTS)]
                    outcome = "completed" if ok else "WRONG"
                elif kind == 1:  # a normal stream
                    chunks = client.chat.completions.create(model="tiny", messages=_messages(i),  # type: ignore[call-overload]
                                                            temperature=0, max_tokens=16, stream=True)
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    outcome = "completed" if text == want[i % len(PROMPTS)] else "WRONG"
                elif kind == 2:  # the client gives up before the request is admitted anywhere
                    client.chat.completions.create(model="tiny", messages=_messages(i), max_tokens=16)  # type: ignore[arg-type]
                    outcome = "completed-anyway"
                else:  # the client disconnects mid-stream
                    stream = client.chat.completions.create(model="tiny", messages=_messages(i),  # type: ignore[call-overload]
                                                            max_tokens=200, stream=True,
                                                            extra_body={"ignore_eos": True})
                    for n, _ in enumerate(stream):
                        if n == 2:
                            break
                    stream.close()
                    outcome = "disconnected"
            except (openai.APIError, httpx.HTTPError) as exc:  # during a kill, or the deliberate timeout
                outcome = f"error:{type(exc).__name__}"
            with lock:
                outcomes[outcome] += 1
                durations.append(time.monotonic() - began)
                if outcome == "WRONG":
                    wrong.append(i)

        chaos_done = threading.Event()
        kills: list[str] = []

        def chaos() -> None:  # SIGKILL each instance while requests are in flight, then restart it
            try:
                for victim, name in ((p, "prefill"), (d, "decode")):
                    time.sleep(3.0)
                    victim.kill()
                    kills.append(name)
                    time.sleep(1.0)
                    victim.start()
                    time.sleep(2.0)
            finally:
                chaos_done.set()

        issued = iter(range(1 << 30))

        def worker() -> None:
            rng = random.Random()
            while True:
                with lock:
                    i = next(issued)
                if i >= NUM_REQUESTS and chaos_done.is_set():
                    return
                before = sum(outcomes.values())
                one(rng.randrange(1 << 16) * 4 + i % 4)
                with lock:
                    failed = sum(v for k, v in outcomes.items() if k.startswith("error:Connection") or
                                 k.startswith("error:InternalServer"))
                if failed and sum(outcomes.values()) > before and i % 4 != 2:
                    time.sleep(0.1)  # an instance is down: do not spin

        killer = threading.Thread(target=chaos)
        killer.start()
        with ThreadPoolExecutor(6) as pool:
            for fut in [pool.submit(worker) for _ in range(6)]:
                fut.result(timeout=600)
        killer.join()
        assert kills == ["prefill", "decode"]
        total = sum(outcomes.values())
        print(f"\n{total} requests: {dict(outcomes)}; slowest {max(durations):.1f} s")
        assert not wrong, f"requests {wrong} answered differently from one instance"
        assert total >= NUM_REQUESTS and outcomes["completed"] >= NUM_REQUESTS // 3
        assert outcomes["disconnected"] > 0
        # every request ended (answered, refused or cut) within the lease timeout plus its own compute
        assert max(durations) < LEASE_TIMEOUT + 60
        # after the leases had time to run out, every block is back on both (restarted) instances
        deadline = time.monotonic() + LEASE_TIMEOUT + 10
        while (p.free_blocks(), d.free_blocks()) != start_blocks and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (p.free_blocks(), d.free_blocks()) == start_blocks
        assert "kv_transfer" in p.health() and "kv_transfer" in d.health()
    finally:
        for inst in started:
            inst.stop()
