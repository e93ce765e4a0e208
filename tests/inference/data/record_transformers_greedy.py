"""Records transformers' greedy tokens for the real SmolLM2 GGUF into ``smollm2_transformers_greedy.json``
beside this script; ``tests/inference/test_gguf.py`` compares the engine's greedy tokens and logits with them.

transformers loads the GGUF itself (``from_pretrained(dir, gguf_file=...)`` dequantizes every tensor to
float32 with the ``gguf`` package and undoes llama.cpp's Q/K row permutation), so the reference is
transformers' own Llama forward pass on the dequantized weights. For each of the test's 10 chat prompts it
keeps the prompt ids (its ``apply_chat_template``), 32 greedy tokens (``min_new_tokens`` so none stops
early) and, per step, the 8 highest logits with their token ids (the whole rows would be 60 MB).

torch and transformers are not dependencies of PyAgent; run this once by hand in a scratch venv:

    uv venv ~/.cache/pyagent-bench/hf-venv && VIRTUAL_ENV=~/.cache/pyagent-bench/hf-venv \\
        uv pip install torch transformers accelerate gguf numpy pytest
    ~/.cache/pyagent-bench/hf-venv/bin/python tests/inference/data/record_transformers_greedy.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.inference.data.chat_cases import GREEDY_PROMPTS
from tests.model_files import smollm2_gguf

N_TOKENS = 32
TOP = 8


def main() -> None:
    torch.set_num_threads(2)
    model_file = smollm2_gguf()
    folder, name = str(model_file.parent), model_file.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    print(f"{model.device}, {torch.get_num_threads()} threads", flush=True)
    cases = []
    start = time.perf_counter()
    for prompt in GREEDY_PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id or 0)
        steps = []
        for row in out.logits:
            values, indices = torch.topk(row[0].float(), TOP)
            steps.append({"ids": indices.tolist(), "logits": [round(v, 6) for v in values.tolist()]})
        tokens = out.sequences[0, len(ids):].tolist()
        cases.append({"prompt": prompt, "prompt_ids": ids, "tokens": tokens, "top": steps})
        print(f"{time.perf_counter() - start:6.1f} s {prompt!r}: {tok.decode(tokens)!r}", flush=True)
    target = Path(__file__).with_name("smollm2_transformers_greedy.json")
    target.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                                  "model": name, "dtype": "float32", "cases": cases}) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {target}")


if __name__ == "__main__":
    main()
