"""Tokenizer wrapper over ``tokenizers``: EOS discovery, the model's own chat template, streaming decode.

Chat templates are the checkpoint's Jinja template (``tokenizer_config.json``'s ``chat_template``,
``chat_template.jinja`` or ``chat_template.json`` in a folder; ``tokenizer.chat_template`` in a GGUF
file), run as transformers runs them (see ``chat_template``). A model without one gets a documented
simple format: ``ROLE: CONTENT\\n`` per message, then ``assistant:``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from pyagent.inference.chat_template import ChatTemplate
from pyagent.inference.errors import ModelLoadError

# End-of-turn markers: a template that uses one ends the assistant's turn with it, so it also ends
# generation even when the checkpoint's EOS list forgot it.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


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


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick_template(template: Any) -> str | None:
    if isinstance(template, list):  # named templates: use the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) else None


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte -> printable character table, inverted (byte-level BPE spells every byte so)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class Tokenizer:
    """Text <-> token ids for one checkpoint, plus its end-of-sequence ids and chat template."""

    def __init__(self, tokenizer: HFTokenizer, *, eos_token_ids: Sequence[int] = (),
                 chat_template: ChatTemplate | None = None) -> None:
        self._tok = tokenizer
        self.chat_template = chat_template
        eos = list(dict.fromkeys(eos_token_ids))
        if chat_template is not None:
            for marker in _END_OF_TURN:
                marker_id = tokenizer.token_to_id(marker)
                if marker in chat_template.source and marker_id is not None and marker_id not in eos:
                    eos.append(marker_id)
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
        eos_text = _token_text(tok_config.get("eos_token"))
        eos_id = None if eos_text is None else tok.token_to_id(eos_text)
        if not eos and eos_id is not None:
            eos = [int(eos_id)]
        special = {name: text for name in ("bos_token", "eos_token", "unk_token", "pad_token")
                   if (text := _token_text(tok_config.get(name))) is not None}
        template, origin = _pick_template(tok_config.get("chat_template")), root / "tokenizer_config.json"
        if template is None and (root / "chat_template.jinja").is_file():
            origin = root / "chat_template.jinja"
            template = origin.read_text(encoding="utf-8")
        if template is None:
            origin = root / "chat_template.json"
            template = _pick_template(_read_json(origin).get("chat_template"))
        compiled = None if template is None else ChatTemplate(template, str(origin), special)
        return cls(tok, eos_token_ids=eos, chat_template=compiled)

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token's text spans: ``len(text) // max_token_chars`` bounds the
        token count from below without tokenizing (the server refuses huge inputs with it)."""
        return max((len(t) for t in self._tok.get_vocab(with_added_tokens=True)), default=1) or 1

    @functools.cached_property
    def _byte_level(self) -> bool:
        """Whether vocabulary pieces spell bytes in GPT-2's printable alphabet (else SentencePiece-style)."""
        return "ByteLevel" in json.dumps(json.loads(self.to_json()).get("decoder"))

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (log-probability reports carry them: a token may hold
        only part of a UTF-8 character)."""
        piece = self._tok.id_to_token(int(token_id))
        if piece is None:
            return b""
        if self._byte_level:
            table = _unicode_to_byte()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
            return piece.encode("utf-8")
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def to_json(self) -> str:
        """The full ``tokenizers`` definition (the grammar engine reads the vocabulary from it)."""
        return str(self._tok.to_str())

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation: the model's template, or the simple format without one."""
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise ValueError(f"message {i} needs string 'role' and 'content' fields")
        if self.chat_template is not None:
            return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant:" if add_generation_prompt else "")

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation, as ``apply_chat_template(tokenize=True)`` gives them.

        A template writes its own special tokens (``bos_token``), so the text is encoded without adding
        them again; the simple format gets them from the tokenizer like any prompt.
        """
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=self.chat_template is None)


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
