"""The refactor and docstring agents with scripted model replies (a test double of a paid LLM API
served over real loopback HTTP): malformed edits, syntax errors, repairs, giving up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyagent.agents.docstrings import missing_docstrings
from pyagent.agents.edits import Edit, EditError, apply_edits, parse_edits
from pyagent.agents.llm.openai_compat import OpenAICompatClient
from pyagent.agents.refactor import DocstringAgent, RefactorAgent
from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask
from tests.agents.llm_server import Reply, Script, scripted_server

SRC = """\
def grade(n):
    if n > 90:
        return "A"
    else:
        if n > 80:
            return "B"
        else:
            if n > 70:
                return "C"
            else:
                return "D"
"""

GOOD = """<<<<<<< SEARCH
    if n > 90:
        return "A"
    else:
        if n > 80:
            return "B"
        else:
            if n > 70:
                return "C"
            else:
                return "D"
=======
    for limit, mark in ((90, "A"), (80, "B"), (70, "C")):
        if n > limit:
            return mark
    return "D"
>>>>>>> REPLACE"""

BROKEN_SYNTAX = GOOD.replace("return mark", "return mark)")
NOT_FOUND = "<<<<<<< SEARCH\ndef score(points):\n    while True:\n        pass\n=======\ndef score(points):\n    return 0\n>>>>>>> REPLACE"
MALFORMED = "Sure! Here is the refactor:\n```python\ndef grade(n): ...\n```"


def _task(agent: str, params: dict[str, object]) -> AgentTask:
    return AgentTask(
        "t", agent, "llm", "m.py", ("m.py",), AgentPriority.STANDARD, CascadeContext.root("x"), params
    )


def _client(url: str) -> OpenAICompatClient:
    return OpenAICompatClient("gpt-4o-mini", base_url=url, api_key="", api="chat", backoff=0.01)


def test_refactor_repairs_malformed_and_broken_edits(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(SRC)
    script = Script([Reply(text=MALFORMED), Reply(text=BROKEN_SYNTAX), Reply(text=GOOD)])
    with scripted_server(script) as url:
        outcome = asyncio.run(
            RefactorAgent(_client(url)).run(_task("refactor", {"function": "grade"}), tmp_path)
        )
    assert outcome.error is None, outcome.error
    assert "complexity 4 -> 3" in outcome.note
    assert outcome.usage.calls == 3
    ns: dict[str, object] = {}
    exec((tmp_path / "m.py").read_text(), ns)
    assert [ns["grade"](x) for x in (95, 85, 75, 5)] == ["A", "B", "C", "D"]  # type: ignore[operator]
    # each failure was fed back to the model
    last = script.requests[-1]["json"]["messages"]
    assert "no SEARCH/REPLACE block" in last[-3]["content"] and "does not parse" in last[-1]["content"]


def test_refactor_gives_up_after_three_repairs(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(SRC)
    script = Script([Reply(text=NOT_FOUND) for _ in range(6)])
    with scripted_server(script) as url:
        outcome = asyncio.run(
            RefactorAgent(_client(url)).run(_task("refactor", {"function": "grade"}), tmp_path)
        )
    assert outcome.error is not None and "not found" in outcome.error
    assert len(script.requests) == 4  # first try + 3 repairs
    assert (tmp_path / "m.py").read_text() == SRC


def test_refactor_must_lower_complexity(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(SRC)
    same = '<<<<<<< SEARCH\n                return "D"\n=======\n                return "E"\n>>>>>>> REPLACE'
    with scripted_server(Script([Reply(text=same)] * 4)) as url:
        outcome = asyncio.run(
            RefactorAgent(_client(url)).run(_task("refactor", {"function": "grade"}), tmp_path)
        )
    assert outcome.error is not None and "must go down" in outcome.error


def test_docstring_agent_refuses_code_changes(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(SRC)
    sneaky = '<<<<<<< SEARCH\ndef grade(n):\n=======\ndef grade(n):\n    """Letter grade."""\n    n = n + 1\n>>>>>>> REPLACE'
    good = '<<<<<<< SEARCH\ndef grade(n):\n=======\ndef grade(n):\n    """Letter grade for a score, as report cards use."""\n>>>>>>> REPLACE'
    script = Script([Reply(text=sneaky), Reply(text=good)])
    with scripted_server(script) as url:
        outcome = asyncio.run(
            DocstringAgent(_client(url)).run(_task("docstring", {"names": ["grade"]}), tmp_path)
        )
    assert outcome.error is None, outcome.error
    assert missing_docstrings((tmp_path / "m.py").read_text()) == ["<module>"]
    assert "only docstrings may be added" in script.requests[1]["json"]["messages"][-1]["content"]


def test_fuzzy_apply_tolerates_whitespace_and_indentation() -> None:
    src = "def f():\n    x = 1   \n    return x\n"
    assert apply_edits(src, [Edit("    x = 1\n    return x", "    return 1")]) == "def f():\n    return 1\n"
    # indentation off by four spaces: matched, and the replacement is re-indented
    assert apply_edits(src, [Edit("x = 1\nreturn x", "return 2")]) == "def f():\n    return 2\n"
    with pytest.raises(EditError, match="occurs 2 times"):
        apply_edits("a = 1\na = 1\n", [Edit("a = 1", "a = 2")])
    with pytest.raises(EditError, match="malformed"):
        parse_edits(GOOD + "\n<<<<<<< SEARCH\nx\n")
