"""`improve` with an LLM: the endpoint is a real loopback HTTP server with SCRIPTED replies (a test
double of a paid LLM API); the agents, gate, tests, transactions and report are all real."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from pyagent.agents.llm.openai_compat import OpenAICompatClient
from pyagent.improve.run import ImproveOptions, RunResult, improve
from tests.agents.llm_server import Reply, Script, scripted_server
from tests.agents.test_llm_agents import MALFORMED

SRC = """\
def grade(n):
    if n > 90:
        return "A"
    if n > 80:
        return "B"
    if n > 70:
        return "C"
    return "D"
"""
GOOD_CODE = """\
def grade(n):
    for limit, mark in ((90, "A"), (80, "B"), (70, "C")):
        if n > limit:
            return mark
    return "D"
"""
GOOD = json.dumps({"code": GOOD_CODE})

DOC = json.dumps({"grade": "Letter grade for a score, as the report cards use."})
TEST = (
    "import unittest\n\nfrom m import grade\n\n\nclass T(unittest.TestCase):\n    def test_grade(self):\n"
    "        self.assertEqual([grade(x) for x in (95, 85, 75, 5)], ['A', 'B', 'C', 'D'])\n"
)


def _project(root: Path) -> Path:
    (root / "tests").mkdir(parents=True)
    (root / "m.py").write_text('"""Grades."""\n\n\n' + SRC)
    (root / "tests" / "test_m.py").write_text(TEST)
    return root


def _run(root: Path, url: str, **kw: object) -> RunResult:
    client = OpenAICompatClient(
        "gpt-4o-mini", base_url=url, api_key="sk-test-0123456789abcdefghij", backoff=0.01
    )
    opts = ImproveOptions(
        path=root,
        use_git=False,
        concurrency=1,
        max_complexity=3,
        test_cmd=f"{sys.executable} -m unittest discover -s tests",
        llm_client=client,
        allow_few_tests=True,  # these projects hold one test on purpose: the LLM agents are under test
        **kw,  # type: ignore[arg-type]
    )
    if opts.budget_tokens is not None:
        from pyagent.model.budget import Budget

        client.budget = Budget(tokens=opts.budget_tokens)
    return asyncio.run(improve(opts))


def test_llm_docstring_and_refactor_are_verified_and_costed(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    script = Script([Reply(text=DOC), Reply(text=MALFORMED), Reply(text=GOOD)])
    with scripted_server(script) as url:
        result = _run(root, url)
    status = {t.agent: (t.status, t.reason) for t in result.tasks}
    assert status["docstring"][0] == "kept", status
    assert status["refactor"][0] == "kept", status
    assert len(script.requests) == 3
    text = (root / "m.py").read_text()
    assert "Letter grade" in text and "for limit, mark in" in text
    assert result.metrics_after["complexity_max"] < result.metrics_before["complexity_max"]
    rep = json.loads((result.report_dir / "report.json").read_text())  # type: ignore[operator]
    assert rep["usage"]["calls"] == 3 and rep["usage"]["tokens"] == 450
    assert rep["usage"]["seconds"] > 0  # the time spent waiting for the model is reported beside the tokens
    assert result.llm_tasks() == (2, 2)  # both LLM tasks' edits reached the gate (and were kept)
    refactor = next(t for t in rep["tasks"] if t["agent"] == "refactor")
    assert refactor["tokens"] == 300 and refactor["cost"] > 0
    assert "sk-test-0123456789abcdefghij" not in json.dumps(script.requests[0]["json"])


def test_budget_is_a_hard_stop_for_the_run(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    script = Script([Reply(text=DOC), Reply(text=GOOD), Reply(text=GOOD)])
    with scripted_server(script) as url:
        result = _run(root, url, budget_tokens=100)
    assert len(script.requests) == 1  # the first reply spent the budget; nothing else was asked
    for t in result.tasks:
        assert t.status in ("failed", "skipped") and "budget" in t.reason, (t.status, t.reason)
    assert (root / "m.py").read_text() == '"""Grades."""\n\n\n' + SRC


# Lowers the complexity (the agent's own check passes) but drops the "C" grade: the project's test fails.
BROKEN = json.dumps({"code": GOOD_CODE.replace('((90, "A"), (80, "B"), (70, "C"))', '((90, "A"), (80, "B"))')})


def test_a_rejected_change_is_retried_as_a_child_task_in_the_same_chain(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    script = Script([Reply(text=DOC), Reply(text=BROKEN), Reply(text=GOOD)])
    with scripted_server(script) as url:
        result = _run(root, url, budget_tokens=10_000)
    refactors = [t for t in result.tasks if t.agent == "refactor"]
    assert [t.status for t in refactors] == ["rolled_back", "kept"], [(t.status, t.reason) for t in refactors]
    parent, child = refactors
    assert "test_grade" in parent.reason
    assert child.lineage == (*parent.lineage, child.id) and len(child.lineage) == 3
    retry_prompt = script.requests[2]["json"]["input"][-1]["content"]
    assert "rejected by the project's checks" in retry_prompt and "test_grade" in retry_prompt
    assert "for limit, mark in" in (root / "m.py").read_text() and '"C"' in (root / "m.py").read_text()

    rep = json.loads((result.report_dir / "report.json").read_text())  # type: ignore[operator]
    by_id = {t["id"]: t for t in rep["tasks"]}
    assert by_id[child.id]["lineage"] == [*parent.lineage, child.id]
    events = [json.loads(line) for line in (result.report_dir / "events.jsonl").read_text().splitlines()]  # type: ignore[operator]
    child_events = [e for e in events if e["task_id"] == child.id]
    assert child_events and all(e["lineage"] == [*parent.lineage, child.id] for e in child_events)
    assert any(e["action"].startswith("retry 1: ") for e in child_events)
    # One budget across the chain: every call of parent and child was charged to the run's budget.
    assert rep["usage"]["budget"]["used"]["tokens"] == sum(t["tokens"] for t in rep["tasks"]) == 450
