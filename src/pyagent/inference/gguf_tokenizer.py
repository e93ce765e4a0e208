"""The tokenizer stored in a GGUF file's metadata, rebuilt as a ``tokenizers`` BPE tokenizer.

``tokenizer.ggml.model == "gpt2"`` files carry the byte-level BPE vocabulary and merges; the pre-tokenizer
is named by ``tokenizer.ggml.pre`` (llama.cpp's names), which we map to the split rules the original
``tokenizer.json`` used. Control and user-defined tokens (``token_type`` 3 and 4) become added tokens,
so they are matched whole in the text, and ``add_bos_token`` decides whether encoding prepends BOS.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from pyagent.inference.chat_template import ChatTemplate
from pyagent.inference.errors import ModelLoadError
from pyagent.inference.gguf_reader import GGUFFile
from pyagent.inference.tokenizer import Tokenizer

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _split_then_bytes(pattern: str) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {**_BYTE_LEVEL, "use_regex": False}]}


# tokenizer.ggml.pre -> the pre-tokenizer of the tokenizer.json the file was converted from
_PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "default": _BYTE_LEVEL,
    "gpt2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "starcoder": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "llama-bpe": _split_then_bytes(_LLAMA3_SPLIT),
    "llama3": _split_then_bytes(_LLAMA3_SPLIT),
    "qwen2": _split_then_bytes(_QWEN2_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4


def _build_bpe(g: GGUFFile) -> HFTokenizer:
    tokens = list(g.require("tokenizer.ggml.tokens"))
    merges = g.get("tokenizer.ggml.merges")
    if merges is None:
        raise ModelLoadError(f"{g.path}: GGUF metadata lacks 'tokenizer.ggml.merges', needed by a gpt2 BPE tokenizer")
    pre_name = str(g.get("tokenizer.ggml.pre", "default"))
    pre = _PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise ModelLoadError(f"{g.path}: pre-tokenizer {pre_name!r} (metadata key 'tokenizer.ggml.pre') is not "
                             f"supported; supported: {', '.join(sorted(_PRE_TOKENIZERS))}")
    types = g.get("tokenizer.ggml.token_type")
    types = [1] * len(tokens) if types is None else [int(t) for t in types]
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": kind == _USER_DEFINED, "special": kind == _CONTROL}
             for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)) if kind in (_CONTROL, _USER_DEFINED)]
    bos = g.get("tokenizer.ggml.bos_token_id")
    post: dict[str, Any] | None = None
    if bool(g.get("tokenizer.ggml.add_bos_token", False)) and bos is not None:
        bos_text = tokens[int(bos)]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_text: {"id": bos_text, "ids": [int(bos)], "tokens": [bos_text]}}}
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": pre_name in ("llama-bpe", "llama3"),
                  "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": list(merges)},
    }
    try:
        return HFTokenizer.from_str(json.dumps(spec))
    except Exception as exc:  # the Rust side raises plain Exception
        raise ModelLoadError(f"{g.path}: the tokenizer in the GGUF metadata is invalid: {exc}") from None


def gguf_tokenizer(g: GGUFFile) -> Tokenizer:
    model = str(g.require("tokenizer.ggml.model"))
    if model != "gpt2":
        raise ModelLoadError(f"{g.path}: tokenizer model {model!r} (metadata key 'tokenizer.ggml.model') is not "
                             "supported yet; only byte-level BPE ('gpt2') vocabularies are")
    tok = _build_bpe(g)
    tokens = g.require("tokenizer.ggml.tokens")
    special: dict[str, str] = {}
    for name in ("bos", "eos", "unknown", "padding"):
        token_id = g.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            special[{"unknown": "unk_token", "padding": "pad_token"}.get(name, f"{name}_token")] = tokens[int(token_id)]
    eos = [int(g.get(f"tokenizer.ggml.{k}")) for k in ("eos_token_id", "eot_token_id")
           if g.get(f"tokenizer.ggml.{k}") is not None]
    source = g.get("tokenizer.chat_template")
    template = None
    if isinstance(source, str):
        template = ChatTemplate(source, f"{g.path} (metadata key 'tokenizer.chat_template')", special)
    return Tokenizer(tok, eos_token_ids=eos, chat_template=template)
