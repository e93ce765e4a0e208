"""Conversations whose chat-template token ids, and prompts whose greedy tokens, are compared with
transformers' (recorded once by the scripts beside this file)."""

from __future__ import annotations

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Write a haiku about código, naïve café & 東京."},
     {"role": "assistant", "content": "Silent   spaces\n\ttabs\nand 123456 digits"},
     {"role": "user", "content": "  leading and trailing spaces  "}],
    [{"role": "user", "content": "def f(x):\n    return {'a': x}  # <|im_end|> inside text"}],
]

# one user turn each, through the model's chat template; 32 greedy tokens each
GREEDY_PROMPTS: list[str] = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain recursion in one sentence.",
    "List three prime numbers.", "def fibonacci(n):", "Translate 'good morning' to Spanish.",
    "Why is the sky blue?", "Name a famous physicist.", "What does HTTP stand for?", "Give me a synonym for happy.",
]
