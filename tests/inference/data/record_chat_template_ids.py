"""Records transformers' ``apply_chat_template`` token ids for the real SmolLM2 GGUF into
``smollm2_chat_template_ids.json``, and its token ids for a SentencePiece GGUF (``spm_gguf.py``) into
``spm_transformers_ids.json``, beside this script (the tests compare ours with them).

transformers is not a dependency (its GGUF reader imports torch even to read a tokenizer); run this once
by hand in a venv with ``transformers`` and ``gguf`` installed:

    python tests/inference/data/record_chat_template_ids.py

Its GGUF metadata reader is replaced by one built on the ``gguf`` package, which reads the same keys;
everything else (the vocabulary converter, the template's Jinja environment) is transformers' own.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.inference.data.chat_cases import CONVERSATIONS
from tests.inference.spm_gguf import write_spm_gguf
from tests.inference.test_gguf import SPM_TEXTS
from tests.model_files import smollm2_gguf


def read_gguf_metadata(path: str, full_keys: Any = ()) -> tuple[dict[str, Any], None]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, None


reader_module = types.ModuleType("transformers.integrations.gguf.reader")
reader_module.read_gguf_metadata = read_gguf_metadata  # type: ignore[attr-defined]
sys.modules["transformers.integrations.gguf.reader"] = reader_module

import transformers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402


def main() -> None:
    model = smollm2_gguf()
    tok = PreTrainedTokenizerFast.from_pretrained(str(model.parent), gguf_file=model.name)
    cases = [{"messages": conv, "add_generation_prompt": gen,
              "ids": tok.apply_chat_template(conv, add_generation_prompt=gen, tokenize=True, return_dict=False)}
             for conv in CONVERSATIONS for gen in (True, False)]
    out = Path(__file__).with_name("smollm2_chat_template_ids.json")
    out.write_text(json.dumps({"transformers": transformers.__version__, "model": model.name, "cases": cases},
                              indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {out}")
    with tempfile.TemporaryDirectory() as tmp:  # the SentencePiece vocabulary of tests/inference/spm_gguf.py
        write_spm_gguf(Path(tmp) / "spm.gguf")
        spm = PreTrainedTokenizerFast.from_pretrained(tmp, gguf_file="spm.gguf")
        ids = [spm(text)["input_ids"] for text in SPM_TEXTS]
    spm_out = Path(__file__).with_name("spm_transformers_ids.json")
    spm_out.write_text(json.dumps({"transformers": transformers.__version__, "texts": SPM_TEXTS, "ids": ids},
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {spm_out}")


if __name__ == "__main__":
    main()
