"""Check that PyAgent's engine generates the same greedy tokens as Hugging Face transformers.

Not part of CI (it needs torch and transformers, which are not dependencies). For Llama (GQA, Llama-3 rope
scaling, float32, sharded safetensors, a transformers-4.x style config.json), Mistral (fp16 file) and Qwen2
(q/k/v biases, tied embeddings, bf16 file, a transformers-5 style config.json), it builds a
small random model with transformers, saves it with ``save_pretrained`` (the real Hugging Face layout),
loads the folder with ``PagedAttentionEngine.from_pretrained`` and compares greedy tokens and logits.

    python benchmarks/check_vs_transformers.py [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def build(arch: str, out: Path, vocab: int) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    common: dict[str, Any] = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        config = transformers.LlamaConfig(**common, rope_theta=50000.0, tie_word_embeddings=False,
                                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 64})
        model = transformers.LlamaForCausalLM(config)
    elif arch == "mistral":
        config = transformers.MistralConfig(**common, rope_theta=10000.0, sliding_window=None)
        model = transformers.MistralForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # larger than the default init so that attention and the MLP really matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_((1.0 if "embed" in name else 0.15) * torch.randn_like(p))
    if arch == "llama":
        model.save_pretrained(out, max_shard_size="100KB")  # sharded, with model.safetensors.index.json
        to_v4_config(out)
    elif arch == "mistral":
        model.to(torch.float16).save_pretrained(out)  # fp16 on disk
        to_v4_config(out)
    else:
        model.to(torch.bfloat16).save_pretrained(out)  # bf16 on disk: the engine widens it on load
    return type(model).from_pretrained(out, dtype=torch.float32).eval()


def to_v4_config(folder: Path) -> None:
    """Rewrite config.json the way transformers 4.x (most Hub checkpoints) writes it: rope_theta, rope_scaling."""
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    params = raw.pop("rope_parameters", None) or {}
    raw["rope_theta"] = params.pop("rope_theta", 10000.0)
    raw["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None
    path.write_text(json.dumps(raw, indent=2))


def transformers_greedy(model: Any, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    tokens = out.sequences[0, len(prompt):].tolist()
    return tokens, np.stack([step[0].float().numpy() for step in out.logits])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"check_vs_transformers: needs torch and transformers ({exc}); install them in a scratch venv:\n"
              "  python -m venv /tmp/tf && /tmp/tf/bin/pip install torch transformers && "
              "PYTHONPATH=src /tmp/tf/bin/python benchmarks/check_vs_transformers.py", file=sys.stderr)
        return 2
    from pyagent.inference.engine import PagedAttentionEngine
    from pyagent.inference.sampler import SamplingParams
    from pyagent.inference.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    rng = np.random.default_rng(0)
    prompts = [tokenizer.encode("def fibonacci(n: int) -> int:").ids,
               tokenizer.encode("The quick brown fox jumps over the lazy dog.").ids,
               [1, *rng.integers(3, vocab, size=150).tolist()]]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("llama", "mistral", "qwen2"):
            folder = Path(tmp) / arch
            ref_model = build(arch, folder, vocab)
            tokenizer.save(str(folder / "tokenizer.json"))
            engine = PagedAttentionEngine.from_pretrained(folder, max_num_batched_tokens=64)
            seen: dict[str, list[np.ndarray]] = {}
            engine.logits_observer = lambda rid, pos, row, seen=seen: seen.setdefault(rid, []).append(row.copy())
            params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
            for i, p in enumerate(prompts):
                engine.add_request(str(i), p, params)
            ours: dict[str, list[int]] = {}
            while engine.has_unfinished():
                for o in engine.step():
                    if o.finished:
                        ours[o.request_id] = o.token_ids
            for i, p in enumerate(prompts):
                theirs, their_logits = transformers_greedy(ref_model, p, args.tokens)
                same = ours[str(i)] == theirs
                diff = float(np.abs(np.stack(seen[str(i)]) - their_logits).max())
                ok &= same
                files = ", ".join(sorted(f.name for f in folder.iterdir() if f.suffix in (".json", ".safetensors")))
                print(f"{arch:6s} prompt {i} ({len(p):3d} tokens): {args.tokens} greedy tokens "
                      f"{'IDENTICAL' if same else 'DIFFER'}; max |logit diff| {diff:.2e}"
                      + (f"   [files: {files}]" if i == 0 else ""))
                if not same:
                    print(f"  ours:   {ours[str(i)]}\n  theirs: {theirs}")
            shutil.rmtree(folder)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: "
          f"{'all greedy outputs identical' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
