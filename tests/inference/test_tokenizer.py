"""Tokenizer wrapper: EOS discovery, the model's chat template, streaming decode of multi-byte characters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pyagent.inference.chat_template import ChatTemplateError
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


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_template(folder: Path, template: str, extra_tokens: list[str], *, jinja_file: bool = False,
                   bos: str | None = None) -> Tokenizer:
    tok = build_tokenizer()
    tok.add_special_tokens(extra_tokens)
    tok.save(str(folder / "tokenizer.json"))
    config: dict[str, object] = {} if bos is None else {"bos_token": {"content": bos}}
    if jinja_file:  # transformers >= 5 keeps the template beside the config
        (folder / "chat_template.jinja").write_text(template)
    else:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_dir(folder)


def test_without_a_template_the_simple_format_is_used(tiny_dir: Path) -> None:
    tok = Tokenizer.from_dir(tiny_dir)
    assert tok.apply_chat_template(MESSAGES) == "system: Be brief.\nuser: Hi!\nassistant:"
    assert tok.encode_chat(MESSAGES) == tok.encode("system: Be brief.\nuser: Hi!\nassistant:")


@pytest.mark.parametrize("jinja_file", [False, True])
def test_the_models_template_is_executed(tmp_path: Path, jinja_file: bool) -> None:
    chatml = write_template(tmp_path, CHATML, ["<|im_start|>", "<|im_end|>"], jinja_file=jinja_file)
    text = chatml.apply_chat_template(MESSAGES)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert chatml.apply_chat_template(MESSAGES, add_generation_prompt=False).endswith("Hi!<|im_end|>\n")
    # the template writes its own special tokens: encoding adds none (as apply_chat_template(tokenize=True))
    assert chatml.encode_chat(MESSAGES) == chatml.encode(text, add_special_tokens=False)
    assert chatml.encode("<|im_end|>", add_special_tokens=False)[0] in chatml.eos_token_ids
    with pytest.raises(ValueError, match="message 0"):
        chatml.apply_chat_template([{"role": "user"}])


def test_template_sees_bos_token_and_may_raise(tmp_path: Path) -> None:
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('System role not supported') }}{% endif %}[{{ m['role'] }}] {{ m['content'] }}"
                "{% endfor %}")
    tok = write_template(tmp_path, template, [], bos="<s>")
    assert tok.apply_chat_template(MESSAGES[1:]) == "<s>[user] Hi!"
    with pytest.raises(ChatTemplateError, match=r"tokenizer_config\.json raised: System role not supported"):
        tok.apply_chat_template(MESSAGES)


def test_templates_run_sandboxed(tmp_path: Path) -> None:
    tok = write_template(tmp_path, "{{ messages.append({'role': 'x'}) }}", [])
    with pytest.raises(ChatTemplateError, match="raised"):
        tok.apply_chat_template(MESSAGES)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        write_template(tmp_path, "{% for m in messages %}", [])


def test_broken_tokenizer_file_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_dir, tmp_path / "m")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    with pytest.raises(ModelLoadError, match=r"not a valid tokenizer\.json"):
        Tokenizer.from_dir(folder)
