"""A small SentencePiece-style vocabulary written into a GGUF file the way llama.cpp stores one
(``tokenizer.ggml.model = "llama"``: pieces, scores, token types, ``<0xNN>`` byte tokens, no merges).

The vocabulary is trained with ``tokenizers`` (BPE over ``▁``-prefixed words with byte fallback) on the
tiny model's corpus; each piece's score is minus the rank of the merge that made it, which is what a
SentencePiece BPE model's scores mean. The trained tokenizer is kept as the reference encoder.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFWriter
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pyagent.inference.tiny import _CORPUS

SPECIALS = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"


def trained_spm() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=[*SPECIALS, *BYTES], show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok


def write_spm_gguf(path: Path, *, template: str = TEMPLATE, add_space_prefix: bool = True) -> Tokenizer:
    """Write the tokenizer-only GGUF; returns the trained reference tokenizer."""
    tok = trained_spm()
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    merged_rank = {left + right: rank for rank, (left, right) in
                   enumerate(tuple(m.split(" ", 1)) if isinstance(m, str) else m
                             for m in __import__("json").loads(tok.to_str())["model"]["merges"])}
    scores, types = [], []
    for i, piece in enumerate(tokens):
        if piece in SPECIALS:
            scores.append(0.0)
            types.append(2 if piece == "<unk>" else 3)
        elif piece in BYTES:
            scores.append(0.0)
            types.append(6)
        else:
            scores.append(-float(merged_rank.get(piece, len(merged_rank) + i)))
            types.append(1)
    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(add_space_prefix)
    w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tok
