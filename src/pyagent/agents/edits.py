"""SEARCH/REPLACE edits from an LLM, applied with tolerance, and the repair loop around them.

Models often get whitespace or indentation slightly wrong; an exact match is tried first, then a
match ignoring trailing whitespace, then one ignoring indentation (the replacement is re-indented),
then the most similar window of lines (similarity >= 0.9). Anything else is an error the model
is told about, at most ``max_repairs`` times.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyagent.model.verification import Usage

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient, LLMReply

__all__ = ["Edit", "EditError", "apply_edits", "edit_with_repairs", "parse_edits"]

_BLOCK = re.compile(r"<{5,9} ?SEARCH[^\n]*\n(.*?)\n?={5,9}[^\n]*\n(.*?)\n?>{5,9} ?REPLACE", re.S)
FUZZY_THRESHOLD = 0.9
EDIT_FORMAT = """Answer ONLY with one or more edit blocks in exactly this form:
<<<<<<< SEARCH
lines copied exactly from the current file
=======
the lines that replace them
>>>>>>> REPLACE
Each SEARCH text must occur exactly once in the file. Keep the code's behaviour identical."""


class EditError(ValueError):
    """The reply's edits cannot be read or applied; the message is fed back to the model."""


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str


def parse_edits(text: str) -> list[Edit]:
    edits = [Edit(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]
    if not edits:
        raise EditError("no SEARCH/REPLACE block found in the reply")
    if text.count("SEARCH") != len(edits) or text.count("REPLACE") != len(edits):
        raise EditError("a SEARCH/REPLACE block is malformed (markers do not pair up)")
    for i, e in enumerate(edits, 1):
        if not e.search.strip():
            raise EditError(f"block {i} has an empty SEARCH part")
    return edits


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _reindent(lines: list[str], old: str, new: str) -> list[str]:
    out = []
    for line in lines:
        if line.startswith(old):
            out.append(new + line[len(old) :])
        else:
            out.append(new + line.lstrip() if line.strip() else line)
    return out


def _apply_one(source: str, edit: Edit, number: int) -> str:
    count = source.count(edit.search)
    if count == 1:
        return source.replace(edit.search, edit.replace, 1)
    if count > 1:
        raise EditError(f"block {number}: the SEARCH text occurs {count} times; include more lines")
    lines = source.split("\n")
    search = edit.search.split("\n")
    replace = edit.replace.split("\n")
    n = len(search)
    windows = range(len(lines) - n + 1)
    for key in (str.rstrip, str.strip):
        wanted = [key(s) for s in search]
        hits = [i for i in windows if [key(x) for x in lines[i : i + n]] == wanted]
        if len(hits) == 1:
            i = hits[0]
            first = next((x for x in lines[i : i + n] if x.strip()), "")
            sfirst = next((x for x in search if x.strip()), "")
            new = _reindent(replace, _indent(sfirst), _indent(first)) if key is str.strip else replace
            return "\n".join([*lines[:i], *new, *lines[i + n :]])
        if len(hits) > 1:
            raise EditError(f"block {number}: the SEARCH text matches {len(hits)} places; include more lines")
    best, best_i = 0.0, -1
    joined = "\n".join(search)
    for i in windows:
        ratio = difflib.SequenceMatcher(None, "\n".join(lines[i : i + n]), joined, autojunk=False).ratio()
        if ratio > best:
            best, best_i = ratio, i
    if best >= FUZZY_THRESHOLD:
        return "\n".join([*lines[:best_i], *replace, *lines[best_i + n :]])
    raise EditError(f"block {number}: the SEARCH text was not found in the file (best match {best:.0%})")


def apply_edits(source: str, edits: list[Edit]) -> str:
    for number, edit in enumerate(edits, 1):
        source = _apply_one(source, edit, number)
    return source


async def edit_with_repairs(
    llm: LLMClient,
    messages: list[dict[str, str]],
    source: str,
    validate: Callable[[str], str | None],
    *,
    max_repairs: int = 3,
    max_tokens: int = 4096,
) -> tuple[str | None, str, Usage]:
    """Ask, apply, validate; feed each failure back (at most ``max_repairs`` times).

    Returns ``(new_source or None, last error or "", usage)``. ``validate`` returns an error message
    or ``None``; syntax errors are checked before it.
    """
    import ast

    history = list(messages)
    usage = Usage()
    error = ""
    for _round in range(max_repairs + 1):
        reply: LLMReply = await llm.complete(history, max_tokens=max_tokens)
        usage += Usage(reply.tokens, reply.cost, 1)
        try:
            new = apply_edits(source, parse_edits(reply.text))
            try:
                ast.parse(new)
            except SyntaxError as exc:
                raise EditError(f"the edited file does not parse: line {exc.lineno}: {exc.msg}") from exc
            problem = validate(new)
            if problem:
                raise EditError(problem)
            return new, "", usage
        except EditError as exc:
            error = str(exc)
            history += [
                {"role": "assistant", "content": reply.text},
                {
                    "role": "user",
                    "content": f"That edit was rejected: {error}\nReply again with corrected blocks.",
                },
            ]
    return None, error, usage
