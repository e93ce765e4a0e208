"""The tokenizer stored in a GGUF file's metadata, rebuilt as a ``tokenizers`` BPE tokenizer.

``tokenizer.ggml.model == "gpt2"`` files carry the byte-level BPE vocabulary and merges; the pre-tokenizer
is named by ``tokenizer.ggml.pre`` (llama.cpp's names), which we map to the split rules the original
``tokenizer.json`` used. ``"llama"`` files carry a SentencePiece vocabulary: pieces with ``▁`` for a
space, ``<0xNN>`` byte tokens for byte fallback and one score per piece but no merges; the merges are
recovered from the scores as transformers does (every split of a piece into two pieces, the
higher-scored piece merging first), and text gets the ``▁`` prefix unless ``add_space_prefix`` is false. Control and user-defined tokens (``token_type`` 3 and 4) become added tokens,
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


def _bos_processor(g: GGUFFile, tokens: list[str], *, default: bool) -> dict[str, Any] | None:
    """Prepends BOS when ``add_bos_token`` says so (llama.cpp's default: on for SentencePiece, off for BPE)."""
    bos = g.token_id("tokenizer.ggml.bos_token_id", len(tokens))
    if not g.flag("tokenizer.ggml.add_bos_token", default) or bos is None:
        return None
    bos_text = tokens[bos]
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_text: {"id": bos_text, "ids": [int(bos)], "tokens": [bos_text]}}}


def _build_bpe(g: GGUFFile) -> HFTokenizer:
    tokens = g.strings("tokenizer.ggml.tokens")
    merges = g.strings("tokenizer.ggml.merges", None)
    if merges is None:
        raise ModelLoadError(f"{g.path}: GGUF metadata lacks 'tokenizer.ggml.merges', needed by a gpt2 BPE tokenizer")
    pre_name = g.text("tokenizer.ggml.pre", "default")
    pre = _PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise ModelLoadError(f"{g.path}: pre-tokenizer {pre_name!r} (metadata key 'tokenizer.ggml.pre') is not "
                             f"supported; supported: {', '.join(sorted(_PRE_TOKENIZERS))}")
    types = _token_types(g, len(tokens))
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": kind == _USER_DEFINED, "special": kind == _CONTROL}
             for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)) if kind in (_CONTROL, _USER_DEFINED)]
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre, "post_processor": _bos_processor(g, tokens, default=False),
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


def _spm_merges(tokens: list[str], scores: list[float]) -> list[list[str]]:
    """transformers' ``generate_merges`` for a scored vocabulary: each piece's splits into two known
    pieces, ordered by the piece's score (then the parts' lengths), highest first; ties keep vocab order."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges: list[tuple[str, str, float]] = []
    for piece, score in dict(zip(tokens, scores, strict=True)).items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [[left, right] for left, right, _ in merges]


def _build_spm(g: GGUFFile) -> HFTokenizer:
    tokens = g.strings("tokenizer.ggml.tokens")
    found = g.numbers("tokenizer.ggml.scores", len(tokens), None)
    if found is None:
        raise ModelLoadError(f"{g.path}: GGUF metadata lacks 'tokenizer.ggml.scores', needed by a SentencePiece "
                             "('llama') tokenizer")
    scores = [float(v) for v in found]
    types = _token_types(g, len(tokens))
    unk = g.token_id("tokenizer.ggml.unknown_token_id", len(tokens), outside_is_none=True)
    unk_text = None if unk is None else tokens[unk]
    prefix = g.flag("tokenizer.ggml.add_space_prefix", True)
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": kind == _CONTROL}
             for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)) if kind in (_CONTROL, _USER_DEFINED)]
    decoders: list[dict[str, Any]] = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                      {"type": "ByteFallback"}, {"type": "Fuse"}]
    if prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "first" if prefix else "never", "split": False},
        "post_processor": _bos_processor(g, tokens, default=True),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk_text, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": _spm_merges(tokens, scores)},
    }
    try:
        return HFTokenizer.from_str(json.dumps(spec))
    except Exception as exc:  # the Rust side raises plain Exception
        raise ModelLoadError(f"{g.path}: the tokenizer in the GGUF metadata is invalid: {exc}") from None


def _token_types(g: GGUFFile, n_tokens: int) -> list[int]:
    found = g.numbers("tokenizer.ggml.token_type", n_tokens, None, integral=True)
    return [1] * n_tokens if found is None else [int(t) for t in found]


_BUILDERS = {"gpt2": _build_bpe, "llama": _build_spm}


def gguf_tokenizer(g: GGUFFile) -> Tokenizer:
    model = g.text("tokenizer.ggml.model")
    build = _BUILDERS.get(model)
    if build is None:
        raise ModelLoadError(f"{g.path}: tokenizer model {model!r} (metadata key 'tokenizer.ggml.model') is not "
                             f"supported; supported: {', '.join(sorted(_BUILDERS))}")
    tok = build(g)
    tokens = g.strings("tokenizer.ggml.tokens")
    special: dict[str, str] = {}
    for name in ("bos", "eos", "unknown", "padding"):
        key = f"tokenizer.ggml.{name}_token_id"
        token_id = g.token_id(key, len(tokens), outside_is_none=name in ("unknown", "padding"))
        if token_id is not None:
            special[{"unknown": "unk_token", "padding": "pad_token"}.get(name, f"{name}_token")] = tokens[token_id]
    eos = [i for i in (g.token_id(f"tokenizer.ggml.{k}", len(tokens)) for k in ("eos_token_id", "eot_token_id"))
           if i is not None]
    source = g.text("tokenizer.chat_template", None)
    template = None
    if source is not None:
        template = ChatTemplate(source, f"{g.path} (metadata key 'tokenizer.chat_template')", special)
    return Tokenizer(tok, eos_token_ids=eos, chat_template=template)
