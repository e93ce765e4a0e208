"""Serving load: tokens per second and time to first token at 1, 8 and 32 concurrent streams.

``pyagent serve`` runs as a subprocess (its own interpreter, as in production) and N clients stream
``/v1/responses`` with the official ``openai`` client. The anchor is the same engine driven directly
in-process (``engine.generate``, no HTTP, no JSON, no SSE), so the ratio column is the serving
overhead. Run: ``python benchmarks/serve_load.py [--model DIR] [--tokens 64] [--concurrency 1,8,32] [--repeat 3]``
(without ``--model`` a tiny random checkpoint from ``pyagent model init-tiny`` is used).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from pyagent.inference.sampler import SamplingParams
from pyagent.server.local import load_engine


@dataclass
class Result:
    tokens: int
    seconds: float
    ttft: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft_ms(self, q: float) -> float:
        return 1000 * statistics.quantiles(self.ttft, n=100)[int(q) - 1] if len(self.ttft) > 1 else 1000 * self.ttft[0]


def _prompt(i: int) -> str:
    return f"Request {i}: write a short story about paged attention and continuous batching."


async def _server_stream(client: openai.AsyncOpenAI, model: str, i: int, tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    first = None
    out = 0
    stream = await client.responses.create(model=model, input=_prompt(i), max_output_tokens=tokens,
                                           temperature=0.8, stream=True, store=False)
    async for event in stream:
        if event.type == "response.output_text.delta" and first is None:
            first = time.perf_counter() - start
        elif event.type in ("response.completed", "response.incomplete"):
            out = event.response.usage.output_tokens if event.response.usage else 0
    return out, first if first is not None else time.perf_counter() - start


async def run_server(url: str, model: str, n: int, tokens: int) -> Result:
    async with openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600) as client:
        await _server_stream(client, model, -1, 4)  # warm-up: connection, first request
        start = time.perf_counter()
        results = await asyncio.gather(*(_server_stream(client, model, i, tokens) for i in range(n)))
        elapsed = time.perf_counter() - start
    return Result(sum(r[0] for r in results), elapsed, [r[1] for r in results])


async def _engine_stream(engine: object, i: int, tokens: int) -> tuple[int, float]:
    tok = engine.tokenizer  # type: ignore[attr-defined]
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": _prompt(i)}]))
    start = time.perf_counter()
    first = None
    out = 0
    async for o in engine.generate(ids, SamplingParams(max_tokens=tokens, temperature=0.8)):  # type: ignore[attr-defined]
        if first is None and o.token_ids:
            first = time.perf_counter() - start
        out = len(o.token_ids)
    return out, first if first is not None else time.perf_counter() - start


async def run_engine(engine: object, n: int, tokens: int) -> Result:
    await _engine_stream(engine, -1, 4)
    start = time.perf_counter()
    results = await asyncio.gather(*(_engine_stream(engine, i, tokens) for i in range(n)))
    elapsed = time.perf_counter() - start
    return Result(sum(r[0] for r in results), elapsed, [r[1] for r in results])


def start_server(model_dir: Path, tmp: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "pyagent", "serve", "--model", str(model_dir), "--port", "0",
                             "--store", str(tmp / "bench.db")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"pyagent serve did not start: {line}{proc.stdout.read()}")
    return proc, line.split(" at ", 1)[1].split(" ", 1)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: a fresh tiny one)")
    ap.add_argument("--tokens", type=int, default=64, help="output tokens per stream")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated stream counts")
    ap.add_argument("--repeat", type=int, default=3, help="runs per level; the fastest is kept (least noise)")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model_dir = args.model
        if model_dir is None:
            model_dir = tmp / "tiny"
            subprocess.run([sys.executable, "-m", "pyagent", "model", "init-tiny", str(model_dir)], check=True,
                           capture_output=True)
        engine = load_engine(model_dir)
        proc, url = start_server(model_dir, tmp)
        try:
            rows = []
            for n in levels:
                served = max((asyncio.run(run_server(url, engine.model_name, n, args.tokens))
                              for _ in range(args.repeat)), key=lambda r: r.tokens_per_s)
                direct = max((asyncio.run(run_engine(engine, n, args.tokens)) for _ in range(args.repeat)),
                             key=lambda r: r.tokens_per_s)
                rows.append((n, served, direct))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"model {engine.model_name}, {args.tokens} output tokens per stream, server = pyagent serve over HTTP/SSE, "
          "engine = PagedAttentionEngine.generate in-process (anchor)")
    print(f"{'streams':>7} | {'server tok/s':>12} | {'engine tok/s':>12} | {'ratio':>5} | "
          f"{'server TTFT p50/p90 ms':>22} | {'engine TTFT p50/p90 ms':>22}")
    print("-" * 97)
    for n, s, e in rows:
        print(f"{n:>7} | {s.tokens_per_s:>12.0f} | {e.tokens_per_s:>12.0f} | {s.tokens_per_s / e.tokens_per_s:>5.2f} | "
              f"{s.ttft_ms(50):>10.1f} / {s.ttft_ms(90):>9.1f} | {e.ttft_ms(50):>10.1f} / {e.ttft_ms(90):>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
