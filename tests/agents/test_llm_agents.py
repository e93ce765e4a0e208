"""The refactor and docstring agents with scripted model replies (a test double of a paid LLM API
served over real loopback HTTP): malformed edits, syntax errors, repairs, giving up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from pyagent.agents.docstrings import missing_docstrings
from pyagent.agents.edits import EditError, add_docstrings, parse_reply, replace_function
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

NEW_GRADE = """\
def grade(n):
    for limit, mark in ((90, "A"), (80, "B"), (70, "C")):
        if n > limit:
            return mark
    return "D"
"""
GOOD = json.dumps({"code": NEW_GRADE})
BROKEN_SYNTAX = json.dumps({"code": NEW_GRADE.replace("return mark", "return mark)")})
NOT_FOUND = json.dumps({"code": "def score(points):\n    return 0\n"})
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
    assert "not the JSON object" in last[-3]["content"] and "does not parse" in last[-1]["content"]
    # every request carried the edit's schema, so a schema-enforcing server answers in that shape
    formats = [r["json"]["response_format"] for r in script.requests]
    assert all(f["type"] == "json_schema" and f["json_schema"]["schema"]["required"] == ["code"] for f in formats)


def test_refactor_gives_up_after_three_repairs(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(SRC)
    script = Script([Reply(text=NOT_FOUND) for _ in range(6)])
    with scripted_server(script) as url:
        outcome = asyncio.run(
            RefactorAgent(_client(url)).run(_task("refactor", {"function": "grade"}), tmp_path)
        )
    assert outcome.error is not None and "must define the function grade" in outcome.error
    assert len(script.requests) == 4  # first try + 3 repairs
    assert (tmp_path / "m.py").read_text() == SRC


def test_refactor_must_lower_complexity(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(SRC)
    same = json.dumps({"code": SRC.replace('return "D"', 'return "E"')})
    with scripted_server(Script([Reply(text=same)] * 4)) as url:
        outcome = asyncio.run(
            RefactorAgent(_client(url)).run(_task("refactor", {"function": "grade"}), tmp_path)
        )
    assert outcome.error is not None and "must go down" in outcome.error


def test_docstring_agent_refuses_code_changes(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(SRC)
    wrong = json.dumps({"score": "Letter grade for a score."})  # a name the file does not have
    good = json.dumps({"grade": "Letter grade for a score, as report cards use."})
    script = Script([Reply(text=wrong), Reply(text=good)])
    with scripted_server(script) as url:
        outcome = asyncio.run(
            DocstringAgent(_client(url)).run(_task("docstring", {"names": ["grade"]}), tmp_path)
        )
    assert outcome.error is None, outcome.error
    new = (tmp_path / "m.py").read_text()
    assert missing_docstrings(new) == ["<module>"]
    assert new.startswith('def grade(n):\n    """Letter grade for a score, as report cards use."""\n    if n > 90:')
    assert "no function or class named score" in script.requests[1]["json"]["messages"][-1]["content"]
    schema = script.requests[0]["json"]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["grade"] and schema["additionalProperties"] is False


def test_docstring_agent_sends_noise_back_and_keeps_prose(tmp_path: Path) -> None:
    """A reply that is valid JSON but noise (what a 135M model wrote) is refused with the reason, which goes
    back to the model; a docstring about the code is applied. Both replies fail alone would mean no edit."""
    (tmp_path / "m.py").write_text(SRC)
    noise = json.dumps({"grade": "Commercial, delivered to{"})
    good = json.dumps({"grade": "Letter grade for a score, as report cards use."})
    script = Script([Reply(text=noise), Reply(text=good)])
    with scripted_server(script) as url:
        outcome = asyncio.run(
            DocstringAgent(_client(url)).run(_task("docstring", {"names": ["grade"]}), tmp_path)
        )
    assert outcome.error is None, outcome.error
    assert '"""Letter grade for a score, as report cards use."""' in (tmp_path / "m.py").read_text()
    assert "holds markup" in script.requests[1]["json"]["messages"][-1]["content"]
    with scripted_server(Script([Reply(text=noise)] * 4)) as url:
        (tmp_path / "m.py").write_text(SRC)
        outcome = asyncio.run(
            DocstringAgent(_client(url)).run(_task("docstring", {"names": ["grade"]}), tmp_path)
        )
    assert outcome.error is not None and "holds markup" in outcome.error
    assert (tmp_path / "m.py").read_text() == SRC


def test_libcst_edits_keep_comments_and_indent_to_the_node() -> None:
    src = "# header\nclass A:\n    def m(self):  # keep me\n        return 1\n\n\ndef f(x): return x\n"
    out = add_docstrings(src, {"A": "Why A exists.", "A.m": 'Two lines,\nthe second "quoted"', "f": 'ends in "q"'})
    assert out == ('# header\nclass A:\n    """Why A exists."""\n    def m(self):  # keep me\n'
                   '        """Two lines,\n        the second "quoted"\n        """\n        return 1\n\n\n'
                   'def f(x):\n    """ends in "q\\""""\n    return x\n')
    long = add_docstrings(src, {"A.m": "word " * 40})  # wrapped to PEP 8's 72 columns: no E501 from any config
    assert max(len(line) for line in long.splitlines()) <= 72 and long.count("word") == 40
    ns: dict[str, object] = {}
    exec(out, ns)
    assert ns["f"].__doc__ == 'ends in "q"'  # type: ignore[attr-defined]
    swapped = replace_function(src, "f", "def _h(x):\n    return x\n\n\ndef f(x):\n    return _h(x)\n")
    assert swapped == ("# header\nclass A:\n    def m(self):  # keep me\n        return 1\n\n\n"
                       "def _h(x):\n    return x\n\n\ndef f(x):\n    return _h(x)\n")
    with pytest.raises(EditError, match="does not parse"):
        replace_function(src, "f", "def f(x):\n    return (x\n")
    with pytest.raises(EditError, match="no function named g"):
        replace_function(src, "g", "def g(): pass")
    with pytest.raises(EditError, match="not the JSON object"):
        parse_reply("{'code': 1}")
    assert parse_reply('```json\n{"code": "x"}\n```') == {"code": "x"}


def test_helpers_of_a_method_go_where_the_method_can_call_them() -> None:
    """A plain helper of a method goes to module level above the class (a def in the class body would be
    a method without ``self``); helpers taking ``self`` or marked static stay in the class."""
    src = ('import os\n\n\n# the shapes\nclass Shape:\n    """Doc."""\n\n    def area(self, kind):\n'
           '        """Area by kind."""\n        if kind == "sq":\n            return 4\n        return 0\n\n'
           '    def name(self):\n        return "s"\n')
    code = ('LIMIT = 3\n\n\ndef _table():\n    return {"sq": 4}\n\n\n@staticmethod\ndef _zero():\n    return 0\n\n\n'
            'def _lookup(self, kind):\n    return _table().get(kind, self._zero()) + LIMIT - 3\n\n\n'
            'def area(self, kind):\n    return self._lookup(kind)\n')
    out = replace_function(src, "Shape.area", code)
    assert out == ('import os\n\n\nLIMIT = 3\n\n\ndef _table():\n    return {"sq": 4}\n\n\n# the shapes\nclass Shape:\n'
                   '    """Doc."""\n\n    @staticmethod\n    def _zero():\n        return 0\n\n'
                   '    def _lookup(self, kind):\n        return _table().get(kind, self._zero()) + LIMIT - 3\n\n'
                   '    def area(self, kind):\n        """Area by kind."""\n        return self._lookup(kind)\n\n'
                   '    def name(self):\n        return "s"\n')
    ns: dict[str, Any] = {}
    exec(out, ns)
    shape = ns["Shape"]()
    assert (shape.area("sq"), shape.area("tri"), shape.name()) == (4, 0, "s")
    # nested classes hoist to module level too, above the outermost class
    nested = "class Outer:\n    class Inner:\n        def m(self):\n            return 1\n"
    out = replace_function(nested, "Outer.Inner.m", "def _one():\n    return 1\n\ndef m(self):\n    return _one()\n")
    assert out.startswith("def _one():\n    return 1\n\n\nclass Outer:\n")
    exec(out, ns)
    assert ns["Outer"].Inner().m() == 1
    with pytest.raises(EditError, match="would replace a module-level name"):
        replace_function(src.replace("import os", "def _table():\n    return None"), "Shape.area", code)


def test_an_endpoint_without_schemas_is_asked_again_without_them(tmp_path: Path) -> None:
    """A hosted endpoint that refuses ``response_format`` (a 400 naming it) gets the same request without
    it, once for the run; the reply's JSON is then read from the free text."""
    (tmp_path / "m.py").write_text(SRC)
    refusal = json.dumps({"error": {"message": "Unrecognized request argument: response_format",
                                    "param": "response_format"}}).encode()
    fenced = "```json\n" + json.dumps({"grade": "Letter grade for a score, as report cards use."}) + "\n```"
    script = Script([Reply(status=400, raw=refusal), Reply(text=fenced)])
    client = _client("")
    with scripted_server(script) as url:
        client.base_url = url
        outcome = asyncio.run(DocstringAgent(client).run(_task("docstring", {"names": ["grade"]}), tmp_path))
    assert outcome.error is None, outcome.error
    assert "response_format" in script.requests[0]["json"] and "response_format" not in script.requests[1]["json"]
    assert client.structured is False and client.meter.totals()["calls"] == 1


def test_temperature_is_sent_only_when_the_client_sets_one(tmp_path: Path) -> None:
    """`--llm local:…` clients decode greedily (temperature 0); hosted ones leave it to the endpoint, since
    some hosted models refuse the field."""
    good = json.dumps({"grade": "Letter grade for a score, as report cards use."})
    for temperature in (None, 0.0):
        (tmp_path / "m.py").write_text(SRC)
        script = Script([Reply(text=good)])
        with scripted_server(script) as url:
            client = OpenAICompatClient("m", base_url=url, api_key="", api="chat", backoff=0.01,
                                        temperature=temperature)
            outcome = asyncio.run(DocstringAgent(client).run(_task("docstring", {"names": ["grade"]}), tmp_path))
        assert outcome.error is None, outcome.error
        body = script.requests[0]["json"]
        assert body.get("temperature") == temperature and ("temperature" in body) == (temperature is not None)
