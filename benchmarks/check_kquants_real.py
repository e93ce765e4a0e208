"""Check our quantized kernels on real K-quant tensors: the SmolLM2 GGUF requantized by llama.cpp.

The tests check Q4_K/Q5_K/Q6_K on random blocks only; real files come from llama.cpp's quantizer, whose
scale and minimum choices random blocks do not reproduce. This script has llama.cpp (llama-cpp-python in
the cached benchmark venv that ``llamacpp_vs_pyagent.py`` builds) requantize the tests' SmolLM2 Q4_1 file
to Q4_K_M, Q5_K_M and Q6_K (``allow_requantize``) into ~/.cache/pyagent-bench/kquants, then, for every
quantized tensor of each file:

- dequantize: ours (``QuantMatrix.dequantize``, the Rust decoder) against the ``gguf`` package's numpy
  ``quants.dequantize``: max |ours - theirs| / max |theirs| (both decode the same blocks in float32, so
  only the order of a multiply-add differs: at most a few float32 ulps);
- matvec: our kernel (``QuantLinear`` on 1 and 4 rows, the decode path) against float64 ``x @ W.T`` on the
  reference-decoded weights: ||ours - ref|| / ||ref|| (float32 accumulation over ``cols`` terms: ~1e-6);
- int8: the int8-activation kernels (this CPU's fastest and the portable ones, 1 and 4 rows) against
  float64 ``xq @ W.T``, ``xq`` being ``x`` rounded to 8 bits per 32-value block as the kernels round it:
  the same relative L2 error and tolerance (the integer sums are exact; only float32 accumulation differs).

The tolerances are float32 rounding, far below each format's own quantization step (2^-5 relative for 4
bits), so a wrong scale, minimum, nibble or high bit in any sub-block fails. SmolLM2's hidden size (576) is
not a multiple of the K-quants' 256-value super-block, so llama.cpp stores the 576-column matrices in a
32-block fallback type (Q5_0, Q5_1, Q8_0) and only the 1536-column ``ffn_down`` matrices are K-quants; the
script counts tensors per type so the coverage is plain. ``--generate`` also loads each file in the
engine and prints its greedy answer to "What is the capital of France?" beside llama.cpp's on the same
prompt ids (requantizing a 4-bit file loses more than quantizing the original, so the answers say how
much the file kept, and agreeing with llama.cpp says the loss is the file's, not ours). ``--int8-decode``
loads each requantized file twice in the engine, exact (``activations="float32"``, the default) and
with int8 activations, and prints greedy decode tokens/s of both (the threads are rayon's: set
RAYON_NUM_THREADS) and how many of the first N greedy tokens the int8 run shares with the exact one on a
few chat prompts.

    python benchmarks/check_kquants_real.py [--generate] [--int8-decode] [--tokens N] [--llamacpp-python PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pyagent.inference.engine import PagedAttentionEngine

BENCH_DIR = Path("~/.cache/pyagent-bench").expanduser()
OUT_DIR = BENCH_DIR / "kquants"
FORMATS = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
           "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K"}
DEQUANT_TOL = 1e-6  # relative to the tensor's largest magnitude
MATVEC_TOL = 1e-5  # relative L2 error of the product
QUANTIZE = """
import ctypes, sys, llama_cpp
src, dst, ftype = sys.argv[1], sys.argv[2], sys.argv[3]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, ftype)
params.allow_requantize = True
params.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
sys.exit(rc)
"""


def requantize(llamacpp_python: Path, source: Path, name: str) -> Path:
    """The file in the cache, made by llama.cpp's quantizer on first use (written aside, then renamed)."""
    target = OUT_DIR / f"{source.stem.rsplit('.', 1)[0]}.{name}.gguf"
    if target.is_file():
        return target
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    done = subprocess.run([str(llamacpp_python), "-c", QUANTIZE, str(source), str(partial), FORMATS[name]],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"llama.cpp could not quantize {source} to {name} (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    partial.rename(target)
    return target


def check_file(path: Path, rng: np.random.Generator) -> bool:
    from gguf import GGMLQuantizationType, quants

    from pyagent import _rust
    from pyagent.inference.gguf_reader import GGUFFile
    from pyagent.inference.quant import QuantLinear, QuantMatrix
    from tests.inference.test_quant_kernels import q8_round_trip

    g = GGUFFile(path)
    # type -> [dequant, matvec, int8 matvec, count]
    worst: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    ok = True
    for t in g.tensors.values():
        if t.type_name in ("F32", "F16") or len(t.shape) != 2:
            continue
        rows, cols = t.shape
        m = QuantMatrix(t.data, t.type_id, rows, cols)
        ref = quants.dequantize(np.asarray(t.data), GGMLQuantizationType(t.type_id)).reshape(rows, cols)
        ours = m.dequantize()
        d_err = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
        v_err = i_err = 0.0
        for batch in (1, 4):
            x = rng.standard_normal((batch, cols)).astype(np.float32)
            want = x.astype(np.float64) @ ref.astype(np.float64).T
            got = QuantLinear((m,))(x)
            v_err = max(v_err, float(np.linalg.norm(got - want) / np.linalg.norm(want)))
            want = q8_round_trip(x).astype(np.float64) @ ref.astype(np.float64).T
            for kernel in ("auto", "portable"):
                got = np.empty((batch, rows), dtype=np.float32)
                _rust.quant_matmul(got, x, [t.data], [t.type_id], [rows], int8=kernel)
                i_err = max(i_err, float(np.linalg.norm(got - want) / np.linalg.norm(want)))
        w = worst[t.type_name]
        w[0], w[1], w[2], w[3] = max(w[0], d_err), max(w[1], v_err), max(w[2], i_err), w[3] + 1
        if d_err > DEQUANT_TOL or v_err > MATVEC_TOL or i_err > MATVEC_TOL:
            ok = False
            print(f"  FAIL {t.name} ({t.type_name} {rows}x{cols}): dequantize {d_err:.2e}, matvec {v_err:.2e}, "
                  f"int8 matvec {i_err:.2e}")
    for type_name, (d_err, v_err, i_err, count) in sorted(worst.items()):
        print(f"  {type_name:6s} {int(count):3d} tensors: max dequantize error {d_err:.1e} (tol {DEQUANT_TOL:.0e}), "
              f"max matvec error {v_err:.1e}, int8 {i_err:.1e} (tol {MATVEC_TOL:.0e})")
    return ok


PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
           "Explain in two sentences why the sky is blue.", "List three uses of a paperclip.")


def decode_pass(engine: PagedAttentionEngine, n: int) -> tuple[float, list[list[int]]]:
    """Greedy decode tokens/s over the prompts (the tokens after each prompt's first) and the tokens."""
    from pyagent.inference.sampler import SamplingParams

    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    seconds, tokens = 0.0, []
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{time.monotonic_ns()}-{i}",
                           engine.tokenizer.encode_chat([{"role": "user", "content": prompt}]), params)
        first, ids = 0.0, []
        while engine.has_unfinished():
            for out in engine.step():
                ids = out.token_ids
            first = first or time.perf_counter()
        seconds += time.perf_counter() - first
        tokens.append(list(ids))
    return len(PROMPTS) * (n - 1) / seconds, tokens


def int8_decode(path: Path, n: int, rounds: int = 3) -> None:
    """Exact and int8 engines take turns (``rounds`` passes each, the best kept: other load on the machine
    slows single passes), then the tokens are compared."""
    from pyagent.inference.engine import PagedAttentionEngine

    engines = [PagedAttentionEngine.from_pretrained(path, max_num_seqs=1, enable_prefix_caching=False,
                                                    activations=a) for a in ("float32", "int8")]
    rates, tokens = [0.0, 0.0], [[], []]
    for _ in range(rounds):
        for k, engine in enumerate(engines):
            rate, tokens[k] = decode_pass(engine, n)
            rates[k] = max(rates[k], rate)
    same = [next((i for i, (a, b) in enumerate(zip(e, q, strict=True)) if a != b), n)
            for e, q in zip(tokens[0], tokens[1], strict=True)]
    print(f"  greedy decode, best of {rounds}: exact {rates[0]:.1f} tok/s, int8 activations {rates[1]:.1f} tok/s "
          f"({rates[1] / rates[0]:.2f}x); leading tokens identical to exact, of {n} per prompt: {same}")


LLAMACPP_GREEDY = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=2, n_ctx=512, verbose=False)
llm.eval(json.loads(sys.argv[2]))
out = []
for _ in range(int(sys.argv[3])):
    token = llm.sample(temp=0.0)
    if token == llm.token_eos():
        break
    out.append(token)
    llm.eval([token])
print(json.dumps(out))
"""


def greedy_answers(path: Path, llamacpp_python: Path, n: int = 24) -> tuple[str, str, int]:
    """Our greedy answer to the capital question, llama.cpp's on the same prompt ids, and how many
    leading tokens agree (llama.cpp rounds activations to 8 bits in its dot products, so a near-tie
    can go the other way after a while)."""
    import json

    from pyagent.inference.engine import PagedAttentionEngine
    from pyagent.inference.sampler import SamplingParams

    engine = PagedAttentionEngine.from_pretrained(path, max_num_seqs=1)
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    engine.add_request("q", ids, SamplingParams(max_tokens=n, temperature=0.0))
    ours: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            ours = out.token_ids
    ours = [t for t in ours if t not in engine.tokenizer.eos_token_ids]
    done = subprocess.run([str(llamacpp_python), "-c", LLAMACPP_GREEDY, str(path), json.dumps(ids), str(n)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"llama.cpp could not run {path}:\n{done.stderr[-3000:]}")
    theirs: list[int] = json.loads(done.stdout.strip().splitlines()[-1])
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    return engine.tokenizer.decode(ours), engine.tokenizer.decode(theirs), same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamacpp-python", default=str(BENCH_DIR / "llamacpp" / "bin" / "python"))
    ap.add_argument("--generate", action="store_true", help="also load each file and print a greedy answer")
    ap.add_argument("--int8-decode", action="store_true",
                    help="also time greedy decode exact vs int8 activations and count agreeing tokens")
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt for --int8-decode")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.model_files import smollm2_gguf

    python = Path(args.llamacpp_python)
    if subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True).returncode:
        print(f"{python} cannot import llama_cpp: build the benchmark venv first with "
              "`python benchmarks/llamacpp_vs_pyagent.py --setup-only`", file=sys.stderr)
        return 2
    source = smollm2_gguf()
    rng = np.random.default_rng(0)
    print(f"{source.name} (the source file, {source.stat().st_size / 1e6:.1f} MB):")
    ok = check_file(source, rng)
    for name in FORMATS:
        start = time.perf_counter()
        path = requantize(python, source, name)
        print(f"{path.name} ({path.stat().st_size / 1e6:.1f} MB, ready in {time.perf_counter() - start:.1f} s):")
        ok &= check_file(path, rng)
        if args.generate:
            ours, theirs, same = greedy_answers(path, python)
            print(f"  greedy answer, ours:      {ours!r}\n  greedy answer, llama.cpp: {theirs!r}\n"
                  f"  first {same} tokens identical")
        if args.int8_decode:
            int8_decode(path, args.tokens)
    print("all tensors within tolerance" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
