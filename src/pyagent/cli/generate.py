"""``pyagent generate``: run a local Llama-family checkpoint on the paged-attention engine."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pyagent.cli.completions import add_choice_args, choice_params, run_choices, write_choice


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "generate", help="generate text with a local model (a GGUF file or a Hugging Face folder)",
        description="Generate a completion of PROMPT with a local Llama/Mistral/Qwen2 checkpoint, streaming the "
                    "text as it is produced.")
    p.add_argument("prompt", metavar="PROMPT", help="the text to complete")
    p.add_argument("--model", required=True, metavar="PATH", help="a GGUF file, or a checkpoint folder (config.json, "
                                                                   "*.safetensors, tokenizer.json)")
    add_quantize_arg(p)
    add_engine_args(p)
    add_sampling_args(p)
    add_choice_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per completion (a line each): index, "
                                                       "text, token_ids, prompt_token_ids, finish_reason, and "
                                                       "logprobs when asked for")
    return p


def add_quantize_arg(p: argparse.ArgumentParser) -> None:
    """``--quantize``: convert a safetensors checkpoint's matrices at load (GGUF files are quantized already)."""
    p.add_argument("--quantize", choices=["q8_0"], default=None,
                   help="convert a safetensors checkpoint's matrices to Q8_0 at load (a quarter of float32's "
                        "memory; fp16/bf16 weights otherwise stay 16-bit)")


KV_DTYPE_HELP = ("element type of the KV cache: float32 (default) or float16. float16 takes half the cache "
                 "memory per token, so twice the tokens fit in the same --kv-cache-bytes budget, at the cost of "
                 "fp16 rounding of every stored K and V value (greedy output may then differ where two tokens "
                 "nearly tie)")


def _byte_size(text: str) -> int:
    """``1073741824``, ``512M``, ``2G`` (binary units: K, M, G) as a positive number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or a number with K, M or G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the KV cache needs a positive size")
    return value


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """``--activations`` (the decode step's arithmetic), ``--kv-cache-dtype`` and ``--kv-cache-bytes`` (the
    KV cache's element type and memory budget)."""
    from pyagent.inference.config import ACTIVATIONS, KV_CACHE_DTYPES

    p.add_argument("--activations", choices=ACTIVATIONS, default=ACTIVATIONS[0], help=ACTIVATIONS_HELP)
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="float32", help=KV_DTYPE_HELP)
    p.add_argument("--kv-cache-bytes", type=_byte_size, default=None, metavar="SIZE",
                   help="memory for the KV cache, e.g. 512M or 2G (default 1G; fewer blocks are allocated when "
                        "the model's context for every sequence needs less)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options ``add_engine_args`` parsed."""
    options: dict[str, Any] = {"activations": args.activations, "kv_cache_dtype": args.kv_cache_dtype}
    if args.kv_cache_bytes is not None:
        options["kv_cache_bytes"] = args.kv_cache_bytes
    return options


ACTIVATIONS_HELP = ("what the products with quantized weights compute with. float32 (default): exact up to "
                    "float rounding, so greedy tokens equal fp32 arithmetic on the dequantized weights. int8: "
                    "each product's input is rounded to 8 bits per block of 32, as llama.cpp does, prompts "
                    "included; the integer dot products decode about 1.1x (Q4_1) to 1.3-1.4x (Q4_K_M, Q5_K_M, Q6_K) faster "
                    "per token on a 2-core machine, "
                    "and like llama.cpp a small model's answers get worse (SmolLM2-135M then answers 'What is "
                    "the capital of France?' as llama.cpp does, without Paris)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling options ``generate`` and ``chat`` share."""
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="tokens to generate at most (256)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-sequence token")
    p.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="drop tokens less than P times as likely as the best (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalise tokens already in the prompt or output (1.0 = off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, metavar="F",
                   help="subtract F per earlier occurrence in the output (-2..2)")
    p.add_argument("--presence-penalty", type=float, default=0.0, metavar="F",
                   help="subtract F from tokens already in the output (-2..2)")
    p.add_argument("--min-tokens", type=int, default=0, metavar="N", help="generate at least N tokens")


def sampling_params(args: argparse.Namespace) -> Any:
    from pyagent.inference.sampler import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, stop=list(args.stop), ignore_eos=args.ignore_eos,
                          min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
                          min_tokens=args.min_tokens)


def run(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.inference.engine import PagedAttentionEngine
    from pyagent.inference.errors import ModelLoadError

    try:
        params = choice_params(args, sampling_params(args))
        params.validate()
        loading = time.perf_counter()
        engine = PagedAttentionEngine.from_pretrained(args.model, max_num_seqs=args.n, quantize=args.quantize,
                                                      **engine_options(args))
        loaded = time.perf_counter() - loading
        prompt_ids = engine.tokenizer.encode(args.prompt)
        streamed = not args.json and args.n == 1
        done = run_choices(engine, prompt_ids, params, args.n, tag="cli", stream=streamed)
    except (ModelLoadError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    for c in done.choices:
        if args.json:
            import orjson

            body: dict[str, Any] = {"index": c.index, "text": c.text, "token_ids": c.token_ids,
                                    "prompt_token_ids": prompt_ids, "finish_reason": c.finish_reason}
            if params.logprobs is not None:
                body["logprobs"] = c.logprobs
            sys.stdout.write(orjson.dumps(body).decode() + "\n")
        else:
            write_choice(c, args.n, streamed=streamed)
    if args.stats:
        print(f"pyagent generate: {done.timing.report(loaded)}", file=sys.stderr)
    return 0
