"""PyAgent's engine against llama.cpp on the same GGUF file, 2 threads each.

Each side runs in its own subprocess (so peak RSS is its own): single-stream decode tokens/s (greedy,
128 tokens), prompt processing tokens/s for a 512-token prompt, 16 concurrent requests of 64 tokens
(llama-cpp-python's ``Llama`` serves one sequence at a time, so its 16 run back to back, which is what a
user of it gets), and peak RSS. Ours runs twice: with its default exact kernels, and with int8 activations
(``int8_activations=True``), which is what llama.cpp's quantized products do. A read probe with as many threads as the kernels use gives the memory
bandwidth; the fraction of the bound is decode tokens/s x bytes of weights read per token / bandwidth.

llama.cpp comes from llama-cpp-python built from source (native CPU flags, so AVX2/FMA where the CPU has
them) in a cached venv outside the repository. The script builds it itself when the cache is absent
(~/.cache/pyagent-bench/llamacpp, log in ~/.cache/pyagent-bench/build.log; it takes long on 2 cores, so it
runs at low priority, one compile job at a time); ``--setup-only`` does just that step:

    python benchmarks/llamacpp_vs_pyagent.py [--model FILE.gguf] [--llamacpp-python PATH] [--setup-only]

Without ``--model`` the SmolLM2-135M-Instruct Q4_1 file the tests use is taken from its cache.

``--kv-cache-dtypes`` (opt-in, no llama.cpp needed) measures instead our single-stream decode after a
1,500-token prompt with a float32 and a float16 KV cache in one run: at that context each token reads the
whole cache once per layer, so halving its bytes shows in tokens/s. It prints the cache bytes per token,
the blocks the default 1 GiB budget buys, and how many decode steps ran in the Rust decode stack.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

THREADS = 2
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
BENCH_DIR = Path("~/.cache/pyagent-bench").expanduser()
DECODE_TOKENS = 128
PROMPT_TOKENS = 512
CONCURRENT = 16
CONCURRENT_TOKENS = 64
LONG_PROMPT_TOKENS = 1500
TEXT = ("The history of computing is a story of abstraction layered on abstraction, from relays and vacuum "
        "tubes to transistors, integrated circuits and the programs that run on them. ")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(THREADS)
    return env


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_ours(model: str, int8: bool = False) -> dict[str, Any]:
    from pyagent.inference.engine import PagedAttentionEngine
    from pyagent.inference.sampler import SamplingParams

    engine = PagedAttentionEngine.from_pretrained(model, max_num_seqs=CONCURRENT, enable_prefix_caching=False,
                                                  int8_activations=int8)
    tok = engine.tokenizer

    def run(prompts: list[list[int]], n: int) -> tuple[float, float]:
        for i, p in enumerate(prompts):
            engine.add_request(f"r{time.monotonic_ns()}-{i}", p, SamplingParams(max_tokens=n, temperature=0.0,
                                                                                ignore_eos=True))
        t0 = time.perf_counter()
        first = None
        while engine.has_unfinished():
            outs = engine.step()
            if first is None and outs:
                first = time.perf_counter()
        return t0, first if first is not None else t0

    short = tok.encode("Once upon a time")
    run([short], 8)  # warm-up
    t0, first = run([short], DECODE_TOKENS + 1)
    decode = DECODE_TOKENS / (time.perf_counter() - first)
    long = (tok.encode(TEXT * 40))[:PROMPT_TOKENS]
    t0, first = run([long], 1)
    prompt = PROMPT_TOKENS / (first - t0)
    prompts = [tok.encode(f"Story number {i}: once upon a time") for i in range(CONCURRENT)]
    t0, _ = run(prompts, CONCURRENT_TOKENS)
    concurrent = CONCURRENT * CONCURRENT_TOKENS / (time.perf_counter() - t0)
    return {"decode_tok_s": decode, "prompt_tok_s": prompt, "concurrent_tok_s": concurrent,
            "peak_rss_mb": _peak_rss_mb()}


def worker_long_context(model: str, kv_cache_dtype: str) -> dict[str, Any]:
    """Decode tokens/s after a LONG_PROMPT_TOKENS prompt, with the given KV cache dtype."""
    from pyagent.inference.engine import PagedAttentionEngine
    from pyagent.inference.sampler import SamplingParams

    engine = PagedAttentionEngine.from_pretrained(model, max_num_seqs=CONCURRENT, enable_prefix_caching=False,
                                                  kv_cache_dtype=kv_cache_dtype)
    tok = engine.tokenizer

    def decode_rate(prompt: list[int], n: int) -> float:
        engine.add_request(f"r{time.monotonic_ns()}", prompt, SamplingParams(max_tokens=n + 1, temperature=0.0,
                                                                             ignore_eos=True))
        first = None
        while engine.has_unfinished():
            if engine.step() and first is None:
                first = time.perf_counter()  # the prompt is done: decoding starts
        assert first is not None
        return n / (time.perf_counter() - first)

    decode_rate(tok.encode("Once upon a time"), 8)  # warm-up
    long = (tok.encode(TEXT * 120))[:LONG_PROMPT_TOKENS]
    steps_before = engine.model.stack_steps
    rate = decode_rate(long, DECODE_TOKENS)
    kv = engine.kv_cache
    return {"decode_tok_s": rate, "bytes_per_token": kv.bytes_per_token, "blocks": kv.num_total_blocks,
            "block_size": kv.block_size, "cache_mib": kv.nbytes / (1 << 20),
            "stack_steps": engine.model.stack_steps - steps_before, "decode_steps": DECODE_TOKENS}


def kv_cache_dtypes(model: str) -> int:
    """The ``--kv-cache-dtypes`` report: float32 (the anchor) against float16, one worker each."""
    results = {dt: run_worker(sys.executable, f"ours-long-{dt}", model) for dt in ("float32", "float16")}
    base = results["float32"]
    print(f"model {Path(model).name}: single-stream greedy decode of {DECODE_TOKENS} tokens after a "
          f"{LONG_PROMPT_TOKENS}-token prompt, {THREADS} threads; load average {os.getloadavg()[0]:.2f}")
    print(f"{'KV cache':<10}{'decode tok/s':>14}{'ratio':>8}{'bytes/token':>13}{'KV read/token':>15}"
          f"{'blocks in 1 GiB':>17}{'stack steps':>13}")
    for dt, r in results.items():
        read = r["bytes_per_token"] * (LONG_PROMPT_TOKENS + DECODE_TOKENS // 2) / 1e6
        print(f"{dt:<10}{r['decode_tok_s']:>14.1f}{r['decode_tok_s'] / base['decode_tok_s']:>7.2f}x"
              f"{r['bytes_per_token']:>13}{read:>12.1f} MB{r['blocks']:>17}{r['stack_steps']:>8}/{r['decode_steps']}")
    return 0


def worker_llamacpp(model: str) -> dict[str, Any]:
    from llama_cpp import Llama  # the cached benchmark venv's interpreter runs this

    llm = Llama(model_path=model, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=2048, n_batch=512,
                verbose=False)

    def greedy(prompt: list[int], n: int) -> tuple[float, float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(n):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        return t0, t1, time.perf_counter()

    short = llm.tokenize(b"Once upon a time", add_bos=False)
    greedy(short, 8)
    _, t1, t2 = greedy(short, DECODE_TOKENS)
    decode = DECODE_TOKENS / (t2 - t1)
    long = llm.tokenize((TEXT * 40).encode(), add_bos=False)[:PROMPT_TOKENS]
    t0, t1, _ = greedy(long, 0)
    prompt = PROMPT_TOKENS / (t1 - t0)
    start = time.perf_counter()
    for i in range(CONCURRENT):
        greedy(llm.tokenize(f"Story number {i}: once upon a time".encode(), add_bos=False), CONCURRENT_TOKENS)
    concurrent = CONCURRENT * CONCURRENT_TOKENS / (time.perf_counter() - start)
    return {"decode_tok_s": decode, "prompt_tok_s": prompt, "concurrent_tok_s": concurrent,
            "peak_rss_mb": _peak_rss_mb()}


def bandwidth_gb_s(threads: int = THREADS, size: int = 1 << 30) -> float:
    """Read bandwidth with ``threads`` threads each summing its share of a 1 GiB array (best of 3)."""
    import numpy as np

    data = np.ones(size // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(3):
        ts = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, size / (time.perf_counter() - t0) / 1e9)
    return best


def weight_bytes(model: str) -> int:
    """Bytes of weights read per decoded token: every tensor once (the tied embedding as the output layer)."""
    from pyagent.inference.gguf_reader import GGUFFile

    g = GGUFFile(model)
    return sum(t.data.nbytes for t in g.tensors.values())


def ensure_llamacpp(python: Path) -> None:
    """Build llama-cpp-python from source into the cached venv of ``python`` unless it imports already.

    The venv is created only when it is the default one, so a ``--llamacpp-python`` given by hand is never
    overwritten. The build runs with ``nice -n 19`` and one compile job so that it never starves the machine.
    """
    def ready() -> bool:
        return python.exists() and subprocess.run([str(python), "-c", "import llama_cpp"],
                                                  capture_output=True).returncode == 0

    if ready():
        return
    venv = python.parent.parent
    if venv != BENCH_DIR / "llamacpp":
        raise SystemExit(f"{python} cannot import llama_cpp: install {LLAMA_CPP_PYTHON} into it")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with (BENCH_DIR / ".build-lock").open("w") as lock:
        print("waiting for any other build of the benchmark venv to finish", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits for the first one's build instead of racing it
        if not ready():
            _build(python, venv)


def _build(python: Path, venv: Path) -> None:
    log = BENCH_DIR / "build.log"
    print(f"building {LLAMA_CPP_PYTHON} from source into {venv} (log: {log}); this takes long", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run([str(python), "-m", "ensurepip", "--upgrade"], check=True, capture_output=True)
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="1", MAKEFLAGS="-j1",
               CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                          "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=ON")
    with log.open("w") as out:
        done = subprocess.run(["nice", "-n", "19", str(python), "-m", "pip", "install", "-v", "--no-cache-dir",
                               LLAMA_CPP_PYTHON], stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise SystemExit(f"building {LLAMA_CPP_PYTHON} failed (exit {done.returncode}); see {log}")


def run_worker(python: str, kind: str, model: str) -> dict[str, Any]:
    done = subprocess.run([python, __file__, "--worker", kind, "--model", model], capture_output=True, text=True,
                          env=_env(), timeout=3600)
    if done.returncode:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: the tests' SmolLM2 Q4_1 file)")
    ap.add_argument("--llamacpp-python", default=str(BENCH_DIR / "llamacpp" / "bin" / "python"))
    ap.add_argument("--setup-only", action="store_true", help="only build the cached llama-cpp-python venv")
    ap.add_argument("--kv-cache-dtypes", action="store_true",
                    help=f"instead: our decode tok/s after a {LONG_PROMPT_TOKENS}-token prompt with a float32 and a "
                         "float16 KV cache (no llama.cpp)")
    ap.add_argument("--worker", choices=["ours", "ours-int8", "llamacpp", "ours-long-float32", "ours-long-float16"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.setup_only:
        ensure_llamacpp(Path(args.llamacpp_python))
        return 0
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.model_files import smollm2_gguf

        args.model = str(smollm2_gguf())
    if args.worker:
        if args.worker.startswith("ours-long-"):
            result = worker_long_context(args.model, args.worker.removeprefix("ours-long-"))
        elif args.worker == "llamacpp":
            result = worker_llamacpp(args.model)
        else:
            result = worker_ours(args.model, int8=args.worker == "ours-int8")
        print(json.dumps(result))
        return 0
    if args.kv_cache_dtypes:
        return kv_cache_dtypes(args.model)
    ensure_llamacpp(Path(args.llamacpp_python))
    load_before = os.getloadavg()[0]
    ours = run_worker(sys.executable, "ours", args.model)
    theirs = run_worker(args.llamacpp_python, "llamacpp", args.model)
    # llama.cpp rounds activations to 8 bits in its quantized products; ours does with int8_activations
    int8 = run_worker(sys.executable, "ours-int8", args.model)
    bw = bandwidth_gb_s()
    per_token = weight_bytes(args.model)
    print(f"model {Path(args.model).name}: {per_token / 1e6:.1f} MB of weights per token; read probe "
          f"{bw:.1f} GB/s with {THREADS} threads; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (on {os.cpu_count()} CPUs)")
    print(f"{'metric':<28}{'pyagent':>12}{'llama.cpp':>12}{'ratio':>10}")
    for mine, key, label, higher in (
            (ours, "decode_tok_s", "decode tok/s", True), (int8, "decode_tok_s", "decode tok/s (int8 act.)", True),
            (ours, "prompt_tok_s", f"prompt {PROMPT_TOKENS} tok/s", True),
            (ours, "concurrent_tok_s", f"{CONCURRENT} concurrent tok/s", True),
            (int8, "concurrent_tok_s", f"{CONCURRENT} concurrent (int8 act.)", True),
            (ours, "peak_rss_mb", "peak RSS MB", False)):
        ratio = mine[key] / theirs[key]
        print(f"{label:<28}{mine[key]:>12.1f}{theirs[key]:>12.1f}{ratio:>9.2f}x" + ("" if higher else " (lower is better)"))
    for name, r in (("pyagent", ours), ("pyagent (int8 act.)", int8), ("llama.cpp", theirs)):
        print(f"{name}: decode reaches {r['decode_tok_s'] * per_token / 1e9 / bw:.2f} of the bandwidth bound "
              f"({bw * 1e9 / per_token:.0f} tok/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
