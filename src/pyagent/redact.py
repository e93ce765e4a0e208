"""Scrub secrets from anything headed for a log, a report or an LLM prompt.

One function, ``redact``, used everywhere text leaves the process, so a key pasted into a
task, an error message or an environment variable never ends up on disk or with a third party.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any, TypeVar

__all__ = ["MASK", "is_secret_name", "redact", "redact_text"]

MASK = "[REDACTED]"
T = TypeVar("T")

# Names whose values are secrets (matched on the snake_case form of a key or variable name).
_SECRET_WORDS = (
    r"pass|password|passwd|passphrase|pwd|secret|secrets|token|api_?key|apikey|access_?key|private_?key|auth|"
    r"authorization|credential|credentials|session_?id|session_?key|cookie|signature|client_?secret|access_?token|"
    r"refresh_?token|id_?token|auth_?token"
)
_SECRET_NAME = re.compile(rf"(?:^|_)(?:{_SECRET_WORDS})(?:$|_)")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
# Environment variable names that always hold a secret.
_SECRET_ENV = re.compile(r"(?i)(?:_API_KEY|_TOKEN|_SECRET|_PASSWORD|_PASSWD|_ACCESS_KEY|_PRIVATE_KEY|_CREDENTIALS?)$|^(?:API_KEY|TOKEN|SECRET|PASSWORD)$")
# Counts that merely mention tokens are not secrets ("tokens", "max_tokens", "token_count").
_NOT_SECRET_NAME = re.compile(
    r"(?i)^(?:(?:max|total|prompt|completion|input|output|cached|reasoning)_?tokens?(?:_\w+)?|tokens(?:_\w+)?|"
    r"\w*token_(?:count|used|usage|limit|ids?)s?)$"
)

# (cheap lower-case substrings that must be present, pattern, replacement): the substring test
# keeps the common case (ids, names, plain prose) at a few hundred nanoseconds.
_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    # PEM private key blocks (RSA, EC, OPENSSH, PGP ...), possibly truncated at the end.
    (
        ("private key",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.S,
        ),
        MASK,
    ),
    # Authorization headers and bearer tokens.
    (
        ("authorization",),
        re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:basic|bearer|token|digest)\s+)?[^\s\"',;]+"),
        rf"\1{MASK}",
    ),
    (("bearer",), re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{MASK}"),
    # URLs with credentials: scheme://user:password@host
    (("://",), re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+(@)"), rf"\1{MASK}\2"),
    # Well-known key formats.
    (("sk-",), re.compile(r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{16,}"), MASK),  # OpenAI, Anthropic, Stripe
    (("_live_", "_test_"), re.compile(r"\b(?:rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"), MASK),  # Stripe
    (("akia", "asia"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),  # AWS access key id
    (("gh",), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), MASK),  # GitHub
    (("github_pat_",), re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}"), MASK),
    (("glpat-",), re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), MASK),  # GitLab
    (("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),  # Slack
    (("aiza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), MASK),  # Google
    (("hf_",), re.compile(r"\bhf_[A-Za-z0-9]{30,}"), MASK),  # Hugging Face
    (("eyj",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),  # JWT
)

# key = value / key: value / "key": "value", where the key names a secret.
_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<key>["']?(?:[A-Za-z0-9_.-]*[_.-])?(?:pass(?:word|wd|phrase)?|pwd|secrets?|token|api[_-]?key|apikey|
        access[_-]?key|access[_-]?token|private[_-]?key|credentials?|client[_-]?secret)(?:[_.-][A-Za-z0-9_.-]*)?["']?)
    (?P<sep>\s*[:=]\s*)
    (?P<quote>["']?)
    (?P<value>[^\s"',;&}]+)
    """
)


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a mapping key or variable name denotes a secret value."""
    if _NOT_SECRET_NAME.match(name):
        return False
    snake = _CAMEL.sub(r"\1_\2", name).lower().replace("-", "_").replace(".", "_")
    return bool(_SECRET_ENV.search(name) or _SECRET_NAME.search(snake))


def _assignment(match: re.Match[str]) -> str:
    key, value = match.group("key"), match.group("value")
    if _NOT_SECRET_NAME.match(key.strip("\"'")) or value == MASK:
        return match.group(0)
    if value.isdigit() and "pass" not in key.lower() and "pwd" not in key.lower():
        return match.group(0)  # e.g. "tokens=1234": a count, not a secret
    return f"{key}{match.group('sep')}{match.group('quote')}{MASK}"


_env_cache: tuple[dict[Any, Any] | None, list[str]] = (None, [])


def _env_secrets() -> list[str]:
    """Values of secret-named environment variables, longest first (so substrings do not win).

    Cached against a C-level copy of the environment so the common case costs one dict compare.
    """
    global _env_cache
    data = getattr(os.environ, "_data", None)
    snapshot, values = _env_cache
    if data is not None and snapshot is not None and snapshot == data:
        return values
    found = {v for k, v in os.environ.items() if len(v) >= 6 and _SECRET_ENV.search(k)}
    values = sorted(found, key=len, reverse=True)
    _env_cache = (dict(data) if data is not None else None, values)
    return values


_ASSIGN_GATE = re.compile("pass|pwd|secret|token|key|credential")
_GATE = re.compile("|".join(re.escape(g) for gates, _, _ in _PATTERNS for g in gates))


def redact_text(text: str) -> str:
    """Replace every secret in ``text`` with ``[REDACTED]``."""
    for value in _env_secrets():
        if value in text:
            text = text.replace(value, MASK)
    lower = text.lower()
    if _GATE.search(lower):
        for gates, pattern, repl in _PATTERNS:
            for gate in gates:
                if gate in lower:
                    text = pattern.sub(repl, text)
                    break
    if ("=" in text or ":" in text) and _ASSIGN_GATE.search(lower):
        text = _ASSIGNMENT.sub(_assignment, text)
    return text


def redact(obj: T) -> T:
    """A copy of ``obj`` with secrets masked: strings, bytes, mappings (by key and value),
    lists/tuples/sets and dataclasses, recursively. Other objects are returned unchanged."""
    return _redact(obj, 0)  # type: ignore[no-any-return]


def _redact(obj: Any, depth: int) -> Any:
    if depth > 50:
        return obj
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, bytes | bytearray):
        text = bytes(obj).decode("utf-8", "surrogateescape")
        cleaned = redact_text(text)
        return obj if cleaned == text else cleaned.encode("utf-8", "surrogateescape")
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(key, str) and isinstance(value, str | bytes) and value and is_secret_name(key):
                out[key] = MASK
            else:
                out[key] = _redact(value, depth + 1)
        return out
    if isinstance(obj, list):
        return [_redact(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        items = [_redact(v, depth + 1) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, set | frozenset):
        return type(obj)(_redact(v, depth + 1) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in fields(obj):
            if not f.init:
                continue
            value = getattr(obj, f.name)
            if isinstance(value, str | bytes) and value and is_secret_name(f.name):
                changes[f.name] = MASK
            else:
                new = _redact(value, depth + 1)
                if new is not value and new != value:
                    changes[f.name] = new
        return replace(obj, **changes) if changes else obj
    return obj
