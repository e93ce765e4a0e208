"""Two builds of the Rust extension against each other, in one process, on the same GGUF decode.

On a shared machine the speed drifts by a third within minutes, so two builds timed in separate runs
cannot resolve a change of a few percent. Here both builds of ``pyagent._rust`` are loaded into one
process (each from its own file), each drives its own engine on the same model, and the two take
alternating turns of one greedy decode each (the order flips every turn); the ratio is taken within
each turn. Build the two variants with ``maturin build --release`` (or copy ``_rust.abi3.so`` out of a
``maturin develop`` tree) and pass the files:

    python benchmarks/decode_builds_ab.py A.so B.so [--turns 16] [--tokens 128] [--model FILE.gguf]

It prints each side's median tokens/s, the median and mean of the per-turn ratios B/A, and in how many
turns B was faster. Only the Rust extension differs between the sides; the Python package is the one
installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pyagent
import pyagent.inference.attention
import pyagent.inference.loader
import pyagent.inference.model
import pyagent.inference.quant

_USERS = (pyagent.inference.attention, pyagent.inference.loader, pyagent.inference.model, pyagent.inference.quant)


def load_build(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_rust", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use(module: ModuleType) -> None:
    """Make `module` the `pyagent._rust` that the inference code calls."""
    sys.modules["pyagent._rust"] = module
    pyagent._rust = module
    for user in _USERS:
        user._rust = module  # type: ignore[attr-defined]


def decode_tok_s(engine: Any, prompt: list[int], tokens: int) -> float:
    from pyagent.inference.sampler import SamplingParams

    engine.add_request(f"ab-{time.monotonic_ns()}", prompt,
                       SamplingParams(max_tokens=tokens + 1, temperature=0.0, ignore_eos=True))
    engine.step()  # the prompt
    start, steps = time.perf_counter(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return steps / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="the baseline build (_rust.abi3.so)")
    ap.add_argument("b", type=Path, help="the build under test")
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens per decode")
    ap.add_argument("--model", default=None, help="GGUF file (default: the tests' SmolLM2 Q4_1 file)")
    ap.add_argument("--activations", default="float32", choices=["float32", "int8"])
    args = ap.parse_args()
    for p in (args.a, args.b):
        if not p.is_file():
            raise SystemExit(f"no such build: {p}")
    if args.a.resolve() == args.b.resolve():
        raise SystemExit("A and B are the same file: copy one build to a second path to compare it with itself")
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.model_files import smollm2_gguf

        args.model = str(smollm2_gguf())
    from pyagent.inference.engine import PagedAttentionEngine

    builds = [load_build(args.a), load_build(args.b)]
    engines = []
    for build in builds:
        use(build)
        engines.append(PagedAttentionEngine.from_pretrained(args.model, max_num_seqs=16, enable_prefix_caching=False,
                                                            activations=args.activations))
    prompt = engines[0].tokenizer.encode("Once upon a time")

    def turn(side: int, tokens: int) -> float:
        use(builds[side])
        return decode_tok_s(engines[side], prompt, tokens)

    turn(0, 8)
    turn(1, 8)
    rates: list[list[float]] = [[], []]
    for t in range(args.turns):
        for side in ((0, 1) if t % 2 == 0 else (1, 0)):
            rates[side].append(turn(side, args.tokens))
        print(f"turn {t + 1}: A {rates[0][-1]:.1f}  B {rates[1][-1]:.1f} tok/s", flush=True)
    ratios = [b / a for a, b in zip(rates[0], rates[1], strict=True)]
    print(f"A {statistics.median(rates[0]):.1f} tok/s, B {statistics.median(rates[1]):.1f} tok/s (medians); "
          f"B/A median {statistics.median(ratios):.3f}, mean {statistics.mean(ratios):.3f}; "
          f"B faster in {sum(r > 1 for r in ratios)} of {len(ratios)} turns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
