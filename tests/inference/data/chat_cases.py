"""Conversations whose chat-template token ids are compared with transformers' (recorded once)."""

from __future__ import annotations

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Write a haiku about código, naïve café & 東京."},
     {"role": "assistant", "content": "Silent   spaces\n\ttabs\nand 123456 digits"},
     {"role": "user", "content": "  leading and trailing spaces  "}],
    [{"role": "user", "content": "def f(x):\n    return {'a': x}  # <|im_end|> inside text"}],
]
