"""Secrets never reach logs, reports or prompts: table-driven cases for redact()."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent.redact import MASK, is_secret_name, redact, redact_text

OPENAI = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\nq3yZ+abc==\n-----END RSA PRIVATE KEY-----"

CASES = [
    # (text, secret that must vanish, text that must survive)
    (f"calling with key {OPENAI} now", OPENAI, "calling with key"),
    ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz", ""),
    ("Authorization: Bearer eyJhbGciOi.abc.def123456", "eyJhbGciOi", "Authorization:"),
    ("curl -H 'Authorization: token ghp_" + "a" * 36 + "'", "ghp_", "curl -H"),
    ("bearer abcdefghijklmnop1234", "abcdefghijklmnop1234", "bearer"),
    ("password=hunter2 user=bob", "hunter2", "user=bob"),
    ('{"password": "p@ss word"}', "p@ss", '"password"'),
    ("db_passwd: s3cr3t!", "s3cr3t!", "db_passwd:"),
    ("OPENAI_API_KEY=abc123def456", "abc123def456", "OPENAI_API_KEY="),
    ("export GITHUB_TOKEN='ghx-notaformat-123'", "ghx-notaformat-123", "export GITHUB_TOKEN="),
    ("AWS_SECRET_ACCESS_KEY = wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI", "AWS_SECRET_ACCESS_KEY"),
    ("id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE", "used"),
    (f"key:\n{PEM}\nafter", "MIIEowIBAAKCAQEA7x", "after"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n(truncated)", "b3BlbnNzaC1rZXktdjEAAAAA", "key:" if False else ""),
    ("https://alice:Tr0ub4dor@example.com/repo.git", "Tr0ub4dor", "https://alice:"),
    ("slack xoxb-123456789012-abcdefghij", "xoxb-123456789012", "slack"),
    ("hf_abcdefghijklmnopqrstuvwxyz0123456789", "hf_abcdefghij", ""),
    ("AIza" + "B" * 35, "AIza", ""),
    ("client_secret=zzz-top", "zzz-top", "client_secret="),
]


@pytest.mark.parametrize(("text", "secret", "kept"), CASES)
def test_secrets_are_masked(text: str, secret: str, kept: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert MASK in out
    assert kept in out


@pytest.mark.parametrize(
    "text",
    [
        "used tokens=1234 of max_tokens=4096",
        "the tokenizer splits words",
        "basic understanding of the task",
        "tests passed: 12, failed: 0",
        "def password_strength(pw): ...",
        "ask-for-review",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_values_of_secret_env_vars_are_masked_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "q9w8e7r6t5y4")
    monkeypatch.setenv("HOME_DIRECTORY_NAME", "q1w2e3r4t5y6")  # not secret-named: left alone
    out = redact_text("error talking to host with q9w8e7r6t5y4 from q1w2e3r4t5y6")
    assert "q9w8e7r6t5y4" not in out and "q1w2e3r4t5y6" in out


@dataclass(frozen=True)
class Record:
    name: str
    api_key: str
    tokens: int
    detail: dict[str, object]


def test_structures_by_key_and_value() -> None:
    obj = {
        "headers": {"Authorization": "Basic dXNlcjpwYXNz", "Accept": "json"},
        "token": "plain-looking-value",
        "tokens": 512,
        "max_tokens": "512",
        "args": ["--key", OPENAI, ("x", f"pw via password={'abc'}")],
        "nested": Record("n", "raw-key-value", 5, {"secret": "s", "ok": "fine"}),
        b"bytes".decode(): f"Bearer {'z' * 20}".encode(),
    }
    out = redact(obj)
    assert out["headers"] == {"Authorization": MASK, "Accept": "json"}
    assert out["token"] == MASK
    assert out["tokens"] == 512 and out["max_tokens"] == "512"
    assert out["args"][1] == MASK and isinstance(out["args"][2], tuple) and "abc" not in out["args"][2][1]
    rec = out["nested"]
    assert isinstance(rec, Record) and rec.api_key == MASK and rec.tokens == 5 and rec.detail == {"secret": MASK, "ok": "fine"}
    assert out["bytes"] == f"Bearer {MASK}".encode()
    assert obj["token"] == "plain-looking-value"  # the input is not modified


@pytest.mark.parametrize(
    ("name", "secret"),
    [("OPENAI_API_KEY", True), ("password", True), ("Authorization", True), ("db_pass", True), ("tokens", False),
     ("max_tokens", False), ("prompt_tokens", False), ("token_count", False), ("token", True), ("path", False),
     ("apiKey", True), ("accessToken", True), ("client-secret", True), ("passed", False), ("bypass", False)],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_redaction_is_idempotent_and_total(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=20, max_size=60), st.text(max_size=40))
def test_any_openai_style_key_is_masked(body: str, around: str) -> None:
    key = "sk-" + body
    assert key not in redact_text(f"{around} {key} {around}")
