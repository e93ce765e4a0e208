"""KV transfer between prefill and decode instances: how fast blocks move, and what disaggregation costs.

1. Throughput: the same leased blocks read by a decode connector from a prefill connector over each
   backend (ZeroMQ side channel; NIXL when the extra is installed), against the anchor: a same-process
   copy of the same bytes (NumPy gather from one cache, scatter into another).
2. Time to first token: streamed chat completions through ``serve --role router`` + prefill + decode
   (real processes) against one ``pyagent serve`` instance, same prompts, same model.

Run: ``python benchmarks/kv_transfer.py [--model PATH] [--blocks 64] [--repeat 5] [--requests 3]``
(default model: the SmolLM2-135M Q4_1 GGUF the tests cache, else a tiny random checkpoint).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openai
import zmq

from pyagent.inference.engine import PagedAttentionEngine
from pyagent.inference.tiny import init_tiny
from pyagent.kv_transfer.connector import DisaggConnector, PeerAddress, _Load
from pyagent.kv_transfer.nixl_backend import nixl_available
from pyagent.kv_transfer.params import RemotePrefill
from pyagent.voyager.home import KeyPair

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.disagg_kit import Instance, decode, prefill, router, single


def default_model() -> Path:
    from tests.model_files import cache_dir

    gguf = cache_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf.is_file():
        return gguf
    return init_tiny(Path(tempfile.mkdtemp()) / "tiny", hidden_size=256, num_layers=8, num_kv_heads=4)


def copy_throughput(model: Path, num_blocks: int, repeat: int) -> float:
    """GB/s of the anchor: gather the blocks from one cache and scatter them into another, one process,
    measured before any backend runs (NIXL's progress thread would otherwise share the CPU with it)."""
    src = PagedAttentionEngine.from_pretrained(model, num_blocks=num_blocks * 2 + 8).kv_cache
    dst = PagedAttentionEngine.from_pretrained(model, num_blocks=num_blocks * 2 + 8).kv_cache
    rng = np.random.default_rng(0)
    src.k_cache[:] = rng.standard_normal(src.k_cache.shape, dtype=np.float32)
    src.v_cache[:] = rng.standard_normal(src.v_cache.shape, dtype=np.float32)
    remote, local = list(range(num_blocks)), list(range(num_blocks, 2 * num_blocks))
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        dst.k_cache[:, local] = src.k_cache[:, remote]
        dst.v_cache[:, local] = src.v_cache[:, remote]
        seconds.append(time.perf_counter() - began)
    return 2 * src.k_cache[:, remote].nbytes / statistics.median(seconds) / 1e9


def throughput(model: Path, backend: str, num_blocks: int, repeat: int) -> tuple[float, int]:
    """(backend GB/s, bytes per read) for reads of ``num_blocks`` leased blocks."""
    keys = KeyPair(*zmq.curve_keypair())
    p_conn = DisaggConnector("prefill", keypair=keys, trusted=set, backend=backend)  # type: ignore[arg-type]
    p = PagedAttentionEngine.from_pretrained(model, num_blocks=num_blocks * 2 + 8, kv_connector=p_conn)
    p_conn.start(p.model_name, p.config)
    d_conn = DisaggConnector("decode", keypair=keys, trusted=set, backend=backend,  # type: ignore[arg-type]
                             peer=PeerAddress.parse(p_conn.endpoint, keys.public))
    d = PagedAttentionEngine.from_pretrained(model, num_blocks=num_blocks * 2 + 8, kv_connector=d_conn)
    d_conn.start(d.model_name, d.config)
    try:
        rng = np.random.default_rng(0)
        p.kv_cache.k_cache[:] = rng.standard_normal(p.kv_cache.k_cache.shape, dtype=np.float32)
        p.kv_cache.v_cache[:] = rng.standard_normal(p.kv_cache.v_cache.shape, dtype=np.float32)
        remote = list(range(num_blocks))
        local = list(range(num_blocks, 2 * num_blocks))
        nbytes = 2 * p.kv_cache.k_cache[:, remote].nbytes
        backend_s = []
        for i in range(repeat):
            rid = f"bench-{i}"
            p_conn.leases.grant(rid, remote, "")
            load = _Load(rid, RemotePrefill(p_conn.engine_id, rid, tuple(remote), num_blocks * 16, 0, ""),
                         remote, local)
            began = time.perf_counter()
            d_conn._call(d_conn._read_blocks(load), 120)
            backend_s.append(time.perf_counter() - began)
            p_conn.leases.release(rid, "")
            assert np.array_equal(d.kv_cache.k_cache[:, local], p.kv_cache.k_cache[:, remote])
            assert np.array_equal(d.kv_cache.v_cache[:, local], p.kv_cache.v_cache[:, remote])
            d.kv_cache.k_cache[:, local] = 0
            d.kv_cache.v_cache[:, local] = 0
        return nbytes / statistics.median(backend_s) / 1e9, nbytes
    finally:
        for engine in (p, d):
            engine.close()
        d_conn.close()
        p_conn.close()


def ttft(inst: Instance, model: str, prompts: list[str]) -> list[float]:
    client = openai.OpenAI(base_url=inst.url, api_key="x", max_retries=0, timeout=600)
    out = []
    for text in prompts:
        began = time.perf_counter()
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                temperature=0, max_tokens=8, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                out.append(time.perf_counter() - began)
                break
        stream.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--blocks", type=int, default=64, help="blocks per transfer (16 tokens each)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--requests", type=int, default=3, help="streamed requests per TTFT configuration")
    args = ap.parse_args()
    model = args.model or default_model()
    print(f"model: {model}")
    backends = ["zmq", *(["nixl"] if nixl_available() else [])]
    if not nixl_available():
        print("nixl: not installed (pip install 'pyagent[nixl]'), only ZeroMQ measured")
    copy_gbps = copy_throughput(model, args.blocks, args.repeat)
    print(f"\nsame-process copy of {args.blocks} blocks (anchor): {copy_gbps:.2f} GB/s")
    print(f"{'backend':8} {'MB/read':>8} {'GB/s':>8} {'vs copy':>8}")
    for backend in backends:
        gbps, nbytes = throughput(model, backend, args.blocks, args.repeat)
        print(f"{backend:8} {nbytes / 1e6:8.1f} {gbps:8.2f} {gbps / copy_gbps:8.2f}")

    tmp = Path(tempfile.mkdtemp())
    name = model.stem if model.is_file() else model.name
    filler = "Explain, step by step and with care, how a paged KV cache shares blocks between requests. " * 6
    prompts = [f"Request {i}. {filler}" for i in range(args.requests)]  # distinct first block: no prefix hits
    print(f"\nTTFT, {args.requests} streamed requests of ~{len(filler) // 4} tokens each (median, ms)")
    s = single(model, tmp).start()
    try:
        base = statistics.median(ttft(s, name, prompts))
    finally:
        s.stop()
    print(f"  one instance          {1000 * base:8.1f}")
    for backend in backends:
        p = prefill(model, tmp, "--kv-backend", backend, home=tmp / "home")
        started = [p.start()]
        try:
            assert p.kv_port is not None
            started.append(d := decode(model, tmp, p.kv_port, "--kv-backend", backend, home=tmp / "home").start())
            started.append(r := router(tmp, p, d).start())
            ttft(r, name, [f"warm-up {backend}"])
            split = statistics.median(ttft(r, name, [f"{backend} {q}" for q in prompts]))
        finally:
            for inst in started:
                inst.stop()
        print(f"  router+P+D ({backend:4})    {1000 * split:8.1f}   ratio {split / base:5.2f}x one instance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
