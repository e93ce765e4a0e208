"""PyAgent's engine against llama.cpp on the same GGUF file, 2 threads each.

Each side runs in its own subprocess (so peak RSS is its own), loaded once; the sides then take turns,
one measurement each, and every ratio is taken within a turn (the machine's speed drifts too much for
runs minutes apart to compare): single-stream decode tokens/s (greedy, 128 tokens), prompt processing
tokens/s for a 512-token prompt, 16 concurrent requests of 64 tokens (llama-cpp-python's ``Llama``
serves one sequence at a time, so its 16 run back to back, which is what a user of it gets), and peak
RSS. Ours runs twice: with its default float32 activations (exact up to float rounding), and with
``activations="int8"`` (what llama.cpp's quantized products do too). A read probe with as many threads as the
kernels use gives the memory bandwidth; the fraction of the bound is decode tokens/s x bytes of weights
read per token / bandwidth.

llama.cpp comes from llama-cpp-python built from source in a cached venv outside the repository, with
every SIMD extension of ggml's CPU backend that this CPU reports (AVX2/FMA, AVX-VNNI, AVX-512 with VBMI,
VNNI and BF16) but not AMX: ggml's AMX kernels die of SIGSEGV at their first ``ldtilecfg`` on the
virtual machines we measure on, although the CPU flags list AMX and the kernel grants the tile state. The script builds it itself when the cache is absent
(~/.cache/pyagent-bench/llamacpp, log in ~/.cache/pyagent-bench/build.log; it takes long on 2 cores, so it
runs at low priority, one compile job at a time); ``--setup-only`` does just that step:

    python benchmarks/llamacpp_vs_pyagent.py [--model FILE.gguf] [--rounds N] [--llamacpp-python PATH] [--setup-only]

Without ``--model`` the SmolLM2-135M-Instruct Q4_1 file the tests use is taken from its cache.

``--kv-cache-dtypes`` (opt-in, no llama.cpp needed) measures instead our single-stream decode after a
1,500-token prompt with a float32 KV cache (the anchor) and a float16 one, the two workers taking turns
as above: at that context each token reads the whole cache once per layer, so halving its bytes shows in
tokens/s. It prints the cache bytes per token, the blocks the default 1 GiB budget buys, and the share
of decode steps that ran in the Rust decode stack.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import statistics
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


class OursWorker:
    """PyAgent's engine, loaded once; each method is one measurement."""

    def __init__(self, model: str, activations: str, kv_cache_dtype: str = "float32") -> None:
        from pyagent.inference.engine import PagedAttentionEngine

        self.engine = PagedAttentionEngine.from_pretrained(model, max_num_seqs=CONCURRENT,
                                                           enable_prefix_caching=False, activations=activations,
                                                           kv_cache_dtype=kv_cache_dtype)
        self.tok = self.engine.tokenizer
        self._run([self.tok.encode("Once upon a time")], 8)  # warm-up

    def _run(self, prompts: list[list[int]], n: int) -> tuple[float, float]:
        from pyagent.inference.sampler import SamplingParams

        for i, p in enumerate(prompts):
            self.engine.add_request(f"r{time.monotonic_ns()}-{i}", p,
                                    SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
        t0 = time.perf_counter()
        first = None
        while self.engine.has_unfinished():
            outs = self.engine.step()
            if first is None and outs:
                first = time.perf_counter()
        return t0, first if first is not None else t0

    def decode(self) -> float:
        _, first = self._run([self.tok.encode("Once upon a time")], DECODE_TOKENS + 1)
        return DECODE_TOKENS / (time.perf_counter() - first)

    def prompt(self) -> float:
        t0, first = self._run([self.tok.encode(TEXT * 40)[:PROMPT_TOKENS]], 1)
        return PROMPT_TOKENS / (first - t0)

    def concurrent(self) -> float:
        t0, _ = self._run([self.tok.encode(f"Story number {i}: once upon a time") for i in range(CONCURRENT)],
                          CONCURRENT_TOKENS)
        return CONCURRENT * CONCURRENT_TOKENS / (time.perf_counter() - t0)

    def long_decode(self) -> float:
        """Decode tokens/s after a LONG_PROMPT_TOKENS prompt (``--kv-cache-dtypes``)."""
        _, first = self._run([self.tok.encode(TEXT * 120)[:LONG_PROMPT_TOKENS]], DECODE_TOKENS + 1)
        return DECODE_TOKENS / (time.perf_counter() - first)

    def bytes_per_token(self) -> float:
        return float(self.engine.kv_cache.bytes_per_token)

    def blocks(self) -> float:
        return float(self.engine.kv_cache.num_total_blocks)

    def stack_steps(self) -> float:
        return float(self.engine.model.stack_steps)


class LlamaCppWorker:
    """llama.cpp through llama-cpp-python (the cached benchmark venv's interpreter runs this)."""

    def __init__(self, model: str) -> None:
        from llama_cpp import Llama  # type: ignore[import-not-found]

        self.llm = Llama(model_path=model, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=2048, n_batch=512,
                         verbose=False)
        self._greedy(self.llm.tokenize(b"Once upon a time", add_bos=False), 8)

    def _greedy(self, prompt: list[int], n: int) -> tuple[float, float, float]:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(n):
            token = self.llm.sample(temp=0.0)
            self.llm.eval([token])
        return t0, t1, time.perf_counter()

    def decode(self) -> float:
        _, t1, t2 = self._greedy(self.llm.tokenize(b"Once upon a time", add_bos=False), DECODE_TOKENS)
        return DECODE_TOKENS / (t2 - t1)

    def prompt(self) -> float:
        t0, t1, _ = self._greedy(self.llm.tokenize((TEXT * 40).encode(), add_bos=False)[:PROMPT_TOKENS], 0)
        return PROMPT_TOKENS / (t1 - t0)

    def concurrent(self) -> float:
        start = time.perf_counter()
        for i in range(CONCURRENT):
            self._greedy(self.llm.tokenize(f"Story number {i}: once upon a time".encode(), add_bos=False),
                         CONCURRENT_TOKENS)
        return CONCURRENT * CONCURRENT_TOKENS / (time.perf_counter() - start)


def serve_worker(kind: str, model: str) -> None:
    """Load the model, then answer one measurement per line of stdin ("decode", "prompt", "concurrent",
    "rss") with a JSON number on stdout, until stdin closes."""
    worker: OursWorker | LlamaCppWorker = LlamaCppWorker(model) if kind == "llamacpp" else \
        OursWorker(model, activations="int8" if kind == "ours-int8" else "float32", kv_cache_dtype=kind.removeprefix("ours-long-")
                   if kind.startswith("ours-long-") else "float32")
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        what = line.strip()
        value = _peak_rss_mb() if what == "rss" else getattr(worker, what)()
        print(json.dumps(value), flush=True)


class Resident:
    """One worker subprocess, kept loaded so that measurements of both sides can alternate."""

    def __init__(self, python: str, kind: str, model: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen([python, __file__, "--worker", kind, "--model", model], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise SystemExit(f"{self.kind} worker failed:\n{self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def ask(self, what: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bandwidth_gb_s(threads: int = THREADS, size: int = 1 << 30) -> float:
    """Read bandwidth with ``threads`` threads each reducing its share of a 1 GiB array (best of 3).

    The reduction is a max over bytes: NumPy's ``sum`` adds pairwise and is bound by its arithmetic here
    (about half the rate a max reaches), so it would understate what the memory delivers."""
    import numpy as np

    data = np.ones(size, dtype=np.uint8)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(3):
        ts = [threading.Thread(target=np.max, args=(p,)) for p in parts]
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
    stamp = python.parent.parent / "pyagent-build-flags"

    def ready() -> bool:  # a venv built with other flags (an earlier AMX build) is rebuilt
        return python.exists() and stamp.is_file() and stamp.read_text() == _cmake_args() and subprocess.run(
            [str(python), "-c", "import llama_cpp"], capture_output=True).returncode == 0

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
            stamp.write_text(_cmake_args())


# ggml's CPU options and the /proc/cpuinfo flag each one needs
_GGML_FEATURES = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c",
                  "GGML_BMI2": "bmi2", "GGML_AVX_VNNI": "avx_vnni", "GGML_AVX512": "avx512f",
                  "GGML_AVX512_VBMI": "avx512vbmi", "GGML_AVX512_VNNI": "avx512_vnni",
                  "GGML_AVX512_BF16": "avx512_bf16"}


def _cmake_args() -> str:
    """llama.cpp's build options: this CPU's SIMD extensions spelled out (not GGML_NATIVE, which would
    also compile the AMX kernels; see the module docstring)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    simd = " ".join(f"-D{opt}={'ON' if flag in flags else 'OFF'}" for opt, flag in _GGML_FEATURES.items())
    return ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF "
            "-DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
            f"-DGGML_AMX_BF16=OFF {simd}")


def _build(python: Path, venv: Path) -> None:
    log = BENCH_DIR / "build.log"
    print(f"building {LLAMA_CPP_PYTHON} from source into {venv} (log: {log}); this takes long", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run([str(python), "-m", "ensurepip", "--upgrade"], check=True, capture_output=True)
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="1", MAKEFLAGS="-j1",
               CMAKE_ARGS=_cmake_args())
    with log.open("w") as out:
        # --force-reinstall: a venv built with other flags holds the same version
        done = subprocess.run(["nice", "-n", "19", str(python), "-m", "pip", "install", "-v", "--no-cache-dir",
                               "--force-reinstall", LLAMA_CPP_PYTHON], stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise SystemExit(f"building {LLAMA_CPP_PYTHON} failed (exit {done.returncode}); see {log}")


def kv_cache_dtypes(model: str, rounds: int) -> int:
    """The ``--kv-cache-dtypes`` report: decode after a long prompt, float32 cache against float16."""
    load_before = os.getloadavg()[0]
    kinds = ["float32", "float16"]
    workers = {k: Resident(sys.executable, f"ours-long-{k}", model) for k in kinds}
    steps_before = {k: workers[k].ask("stack_steps") for k in kinds}
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        for k in kinds[r % 2:] + kinds[:r % 2]:
            rates[k].append(workers[k].ask("long_decode"))
    info = {k: {what: workers[k].ask(what) for what in ("bytes_per_token", "blocks", "stack_steps")} for k in kinds}
    for w in workers.values():
        w.close()
    print(f"model {Path(model).name}: single-stream greedy decode of {DECODE_TOKENS} tokens after a "
          f"{LONG_PROMPT_TOKENS}-token prompt, {THREADS} threads; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; medians of {rounds} turns")
    print(f"{'KV cache':<10}{'decode tok/s':>14}{'ratio':>8}{'bytes/token':>13}{'KV read/token':>15}"
          f"{'blocks in 1 GiB':>17}{'in Rust stack':>15}   ratio per turn")
    ratios = [a / b for a, b in zip(rates["float16"], rates["float32"], strict=True)]
    for k in kinds:
        read = info[k]["bytes_per_token"] * (LONG_PROMPT_TOKENS + DECODE_TOKENS / 2) / 1e6
        stack = (info[k]["stack_steps"] - steps_before[k]) / (rounds * DECODE_TOKENS)
        ratio = statistics.median(ratios) if k == "float16" else 1.0
        print(f"{k:<10}{statistics.median(rates[k]):>14.1f}{ratio:>7.2f}x{info[k]['bytes_per_token']:>13.0f}"
              f"{read:>12.1f} MB{info[k]['blocks']:>17.0f}{stack:>14.0%}   "
              + (" ".join(f"{x:.2f}" for x in ratios) if k == "float16" else ""))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: the tests' SmolLM2 Q4_1 file)")
    ap.add_argument("--llamacpp-python", default=str(BENCH_DIR / "llamacpp" / "bin" / "python"))
    ap.add_argument("--setup-only", action="store_true", help="only build the cached llama-cpp-python venv")
    ap.add_argument("--rounds", type=int, default=11,
                    help="turns of each measurement per side; ratios are taken within a turn, then the median "
                         "(default 11: on a shared machine single turns range 1.2-1.7x and a median of 7 moved "
                         "by 0.1x between runs; the 16-request measurement takes half as many)")
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
        serve_worker(args.worker, args.model)
        return 0
    if args.kv_cache_dtypes:
        return kv_cache_dtypes(args.model, args.rounds)
    ensure_llamacpp(Path(args.llamacpp_python))
    load_before = os.getloadavg()[0]
    kinds = ["ours", "llamacpp", "ours-int8"]
    workers = {k: Resident(args.llamacpp_python if k == "llamacpp" else sys.executable, k, args.model)
               for k in kinds}
    # All three stay loaded and take turns, one measurement each (in a rotating order), so that a change
    # in the machine's speed (other tenants of its memory drift it 1.5x within minutes) falls on both
    # sides; each ratio is taken within one turn, and the median over the turns is reported.
    results: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    for what, reps in (("decode", args.rounds), ("prompt", args.rounds), ("concurrent", max(1, args.rounds // 2))):
        for r in range(reps):
            for k in kinds[r % 3:] + kinds[:r % 3]:
                results[k].setdefault(what, []).append(workers[k].ask(what))
        print(f"{what}: " + "; ".join(f"{k} " + " ".join(f"{v:.1f}" for v in results[k][what]) for k in kinds),
              flush=True)
    for k in kinds:
        results[k]["rss"] = [workers[k].ask("rss")]
        workers[k].close()
    bw = bandwidth_gb_s()
    per_token = weight_bytes(args.model)
    print(f"model {Path(args.model).name}: {per_token / 1e6:.1f} MB of weights per token; read probe "
          f"{bw:.1f} GB/s with {THREADS} threads; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (on {os.cpu_count()} CPUs); medians of {args.rounds} turns")
    print(f"{'metric':<28}{'pyagent':>12}{'llama.cpp':>12}{'ratio':>10}   ratio per turn")

    def med(kind: str, key: str) -> float:
        return float(statistics.median(results[kind][key]))

    for kind, key, label, higher in (
            ("ours", "decode", "decode tok/s", True),
            ("ours-int8", "decode", "decode tok/s (int8 act.)", True),
            ("ours", "prompt", f"prompt {PROMPT_TOKENS} tok/s", True),
            ("ours", "concurrent", f"{CONCURRENT} concurrent tok/s", True),
            ("ours-int8", "prompt", f"prompt {PROMPT_TOKENS} (int8 act.)", True),
            ("ours-int8", "concurrent", f"{CONCURRENT} concurrent (int8 act.)", True),
            ("ours", "rss", "peak RSS MB", False)):
        ratios = [a / b for a, b in zip(results[kind][key], results["llamacpp"][key], strict=True)]
        print(f"{label:<28}{med(kind, key):>12.1f}{med('llamacpp', key):>12.1f}{statistics.median(ratios):>9.2f}x   "
              + " ".join(f"{x:.2f}" for x in ratios) + ("" if higher else " (lower is better)"))
    for name, kind in (("pyagent", "ours"), ("pyagent (int8 act.)", "ours-int8"), ("llama.cpp", "llamacpp")):
        print(f"{name}: decode reaches {med(kind, 'decode') * per_token / 1e9 / bw:.2f} of the bandwidth "
              f"bound ({bw * 1e9 / per_token:.0f} tok/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
