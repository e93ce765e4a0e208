"""Tokenizer wrapper over ``tokenizers`` (``tokenizer.json``), EOS discovery, chat formats, streaming decode.

Chat templates: checkpoints ship Jinja templates, and running them needs a Jinja engine (not a dependency).
Instead we recognise the two common families by their markers and write their format directly; anything
else gets a documented simple format:

- ChatML (Qwen and many others): ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per message, then
  ``<|im_start|>assistant\\n``.
- Llama 3: ``<|start_header_id|>ROLE<|end_header_id|>\\n\\nCONTENT<|eot_id|>`` per message, then the assistant
  header. The ``<|begin_of_text|>`` token is not written: ``encode`` adds it, as the tokenizer's
  post-processor says.
- Simple (no template or an unrecognised one): ``ROLE: CONTENT\\n`` per message, then ``assistant:``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from pyagent.inference.errors import ModelLoadError

_END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


class Tokenizer:
    """Text <-> token ids for one checkpoint, plus its end-of-sequence ids and chat format."""

    def __init__(self, tokenizer: HFTokenizer, *, eos_token_ids: Sequence[int] = (), chat_format: str = "simple") -> None:
        self._tok = tokenizer
        self.chat_format = chat_format
        eos = list(dict.fromkeys(eos_token_ids))
        end = _END_OF_TURN.get(chat_format)
        end_id = None if end is None else tokenizer.token_to_id(end)
        if end_id is not None and end_id not in eos:
            eos.append(end_id)
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self.eos_token_id: int | None = eos[0] if eos else None

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, config_eos: Sequence[int] = ()) -> Tokenizer:
        root = Path(model_dir)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing: the engine needs a Hugging Face tokenizer.json")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception on malformed files
            raise ModelLoadError(f"{path} is not a valid tokenizer.json: {exc}") from None
        tok_config = _read_json(root / "tokenizer_config.json")
        eos = _ids(_read_json(root / "generation_config.json").get("eos_token_id")) or list(config_eos)
        if not eos:
            token = tok_config.get("eos_token")
            if isinstance(token, dict):
                token = token.get("content")
            token_id = tok.token_to_id(token) if isinstance(token, str) else None
            if token_id is not None:
                eos = [int(token_id)]
        template = tok_config.get("chat_template")
        if isinstance(template, list):  # named templates: use the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(tok, eos_token_ids=eos, chat_format=_detect_chat_format(template, tok))

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token's text spans: ``len(text) // max_token_chars`` bounds the
        token count from below without tokenizing (the server refuses huge inputs with it)."""
        return max((len(t) for t in self._tok.get_vocab(with_added_tokens=True)), default=1) or 1

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation (see the module docstring for the formats)."""
        parts: list[str] = []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise ValueError(f"message {i} needs string 'role' and 'content' fields")
            if self.chat_format == "chatml":
                parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
            elif self.chat_format == "llama3":
                parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>")
            else:
                parts.append(f"{role}: {content}\n")
        if add_generation_prompt:
            parts.append({"chatml": "<|im_start|>assistant\n",
                          "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}.get(self.chat_format,
                                                                                            "assistant:"))
        return "".join(parts)


def _detect_chat_format(template: Any, tok: HFTokenizer) -> str:
    if not isinstance(template, str):
        return "simple"
    if "<|im_start|>" in template and tok.token_to_id("<|im_start|>") is not None:
        return "chatml"
    if "<|start_header_id|>" in template and tok.token_to_id("<|start_header_id|>") is not None:
        return "llama3"
    return "simple"


class IncrementalDetokenizer:
    """Streaming decode that is correct for multi-byte characters and leading-space tokenizers.

    Each step decodes a short window that starts at already-emitted tokens (so a tokenizer that strips
    a leading space at the start of a decode does so on old text) and holds back text ending in an
    incomplete UTF-8 character (U+FFFD) until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(prompt_ids)
        self._prefix = max(len(self._ids) - 5, 0)
        self._read = len(self._ids)
        self.text = ""

    def push(self, new_ids: Sequence[int]) -> str:
        self._ids.extend(new_ids)
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read])
        new_text = self._tok.decode(self._ids[self._prefix:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(self._ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end: emit whatever is held back, an incomplete character shown as U+FFFD."""
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read])
        new_text = self._tok.decode(self._ids[self._prefix:])
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self._prefix = self._read = len(self._ids)
        self.text += delta
        return delta
