"""The cost of structured output: decoding held to a JSON schema against free decoding, same model, same run.

Anchor: free greedy decoding on the same engine. Target: schema-constrained decoding keeps at least 0.8x the
anchor's tokens/s, single stream and 16 concurrent streams (llguidance computes each step's masks for the
whole batch in parallel). Also prints the mask time per token.

    python benchmarks/structured_decode.py [--model FILE.gguf] [--tokens N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyagent.inference.engine import PagedAttentionEngine, SamplingParams

SCHEMA = {"type": "object", "properties": {
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "qty": {"type": "integer"}, "note": {"type": "string"}},
        "required": ["name", "qty", "note"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False}
PROMPT = [{"role": "user", "content": "List the items of a grocery order as JSON, with a note for each."}]


def run(engine: PagedAttentionEngine, n_seqs: int, tokens: int, schema: dict[str, object] | None) -> float:
    """Decode tokens/s over ``n_seqs`` concurrent requests of exactly ``tokens`` tokens each."""
    ids = engine.tokenizer.encode_chat(PROMPT)
    for i in range(n_seqs):
        engine.add_request(f"r{i}", ids, SamplingParams(max_tokens=tokens, temperature=0.8, seed=i, ignore_eos=True,
                                                        json_schema=schema))
    produced = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        produced += sum(len(out.new_token_ids) for out in engine.step())
    return produced / (time.perf_counter() - start)


def mask_us_per_token(engine: PagedAttentionEngine, tokens: int) -> float:
    """The grammar engine's own time per token: mask for the step, then consume the sampled token."""
    compiler = engine.grammar
    matcher = compiler.matcher(SCHEMA)
    text = '{"items": [' + ", ".join(f'{{"name": "item {i}", "qty": {i}, "note": "fresh and cheap"}}'
                                     for i in range(40)) + "]}"
    ids = engine.tokenizer.encode(text, add_special_tokens=False)[:tokens]
    start = time.perf_counter()
    for token in ids:
        compiler.masks([matcher])
        matcher.consume_token(token)
    return (time.perf_counter() - start) / len(ids) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path("~/.cache/pyagent-test-models/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser()
    parser.add_argument("--model", type=Path, default=default)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    engine = PagedAttentionEngine.from_pretrained(args.model, max_num_seqs=16)
    engine.grammar.matcher(SCHEMA)  # build the vocabulary index once, outside the timings
    run(engine, 1, 8, None)  # warm up the kernels and the prefix cache
    print(f"mask + consume per token: {mask_us_per_token(engine, 200):.0f} us")
    for n in (1, 16):
        free = run(engine, n, args.tokens, None)
        held = run(engine, n, args.tokens, SCHEMA)
        ratio = held / free
        print(f"{n:2d} stream(s): free {free:7.1f} tok/s, schema {held:7.1f} tok/s, ratio {ratio:.2f} "
              f"({'meets' if ratio >= 0.8 else 'misses'} the 0.8x target)")


if __name__ == "__main__":
    main()
