"""Tokenizer wrapper: EOS discovery, chat formats, streaming decode of multi-byte characters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pyagent.inference.errors import ModelLoadError
from pyagent.inference.tiny import build_tokenizer
from pyagent.inference.tokenizer import IncrementalDetokenizer, Tokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]


def test_tiny_tokenizer_round_trips_and_adds_bos(tiny_dir: Path) -> None:
    tok = Tokenizer.from_dir(tiny_dir)
    ids = tok.encode("def f(x): return 'héllo, 世界'")
    assert ids[0] == 1 and tok.eos_token_id == 2
    assert tok.decode(ids) == "def f(x): return 'héllo, 世界'"
    assert tok.encode("abc", add_special_tokens=False)[0] != 1


def test_streaming_decode_holds_back_partial_characters(tiny_dir: Path) -> None:
    tok = Tokenizer.from_dir(tiny_dir)
    text = "naïve café 日本語 🙂 done"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("prompt:"))
    deltas = [detok.push([t]) for t in ids]
    assert "".join(deltas) == text and detok.text == text
    assert all("\ufffd" not in d for d in deltas)
    assert any(d == "" for d in deltas)  # some tokens carry only part of a character


def write_template(folder: Path, template: str, extra_tokens: list[str]) -> Tokenizer:
    tok = build_tokenizer()
    tok.add_special_tokens(extra_tokens)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return Tokenizer.from_dir(folder)


def test_chat_formats(tmp_path: Path, tiny_dir: Path) -> None:
    assert Tokenizer.from_dir(tiny_dir).apply_chat_template(MESSAGES) == "system: Be brief.\nuser: Hi!\nassistant:"
    chatml = write_template(tmp_path, "{% for m in messages %}<|im_start|>{{m.role}}...{% endfor %}",
                            ["<|im_start|>", "<|im_end|>"])
    assert chatml.apply_chat_template(MESSAGES) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    assert chatml.encode("<|im_end|>", add_special_tokens=False)[0] in chatml.eos_token_ids
    llama3 = write_template(tmp_path, "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>' }}",
                            ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    assert llama3.apply_chat_template(MESSAGES[1:]) == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    with pytest.raises(ValueError, match="message 0"):
        llama3.apply_chat_template([{"role": "user"}])


def test_broken_tokenizer_file_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_dir, tmp_path / "m")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    with pytest.raises(ModelLoadError, match=r"not a valid tokenizer\.json"):
        Tokenizer.from_dir(folder)
