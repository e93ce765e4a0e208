"""Raw line counts agree with radon's ``analyze`` on generated Python-like text, valid or not.

radon counts lines by re-tokenizing stripped lines with CPython 3.11's ``tokenize``; our Rust
port of that process must agree on any input, including unterminated strings, stray brackets,
backslash continuations and form feeds. The expected values come from radon itself, live.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from radon.raw import analyze

from pyagent.health import CodeHealthAuditor

FRAGMENTS = [
    "x", "y1", "if", "def f()", "class C", ":", ";", "=", "==", ":=", "->", "+", "-", "*", "**", "/", "//",
    "(", ")", "[", "]", "{", "}", ",", ".", "...", "1", "0x1f", "1.5e3", "2j", "0_0", "1_",
    "'", '"', "'''", '"""', "'a'", '"b"', "r'\\d'", "b'x'", "f'{x}'", "rb'''", "u\"",
    "#", "# c", "\\", "\\n", " ", "  ", "\t", "\x0c", "lambda a: a", "$", "?", "!", "@", "é",
]  # fmt: skip

line = st.lists(st.sampled_from(FRAGMENTS), max_size=8).map(" ".join)
source = st.lists(line, max_size=12).map("\n".join) | st.lists(line, max_size=12).map(lambda ls: "\n".join(ls) + "\n")


def _radon(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(analyze(text))
    except Exception:  # radon gives up (SyntaxError from its tokenizer loop)
        return None


@settings(max_examples=400, deadline=None)
@given(source)
def test_raw_matches_radon_on_generated_text(text: str) -> None:
    fh = CodeHealthAuditor().audit_source(text)
    ours = None if fh.raw is None else (
        fh.raw.loc, fh.raw.lloc, fh.raw.sloc, fh.raw.comments, fh.raw.multi, fh.raw.blank, fh.raw.single_comments,
    )  # fmt: skip
    assert ours == _radon(text)
