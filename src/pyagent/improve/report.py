"""The run's report: ``report.json`` for machines, ``report.html`` for people, ``events.jsonl`` beside them.

Everything passes through ``redact()`` before it is written.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pyagent.agents.testing import TestResults
    from pyagent.fleet.events import FleetEvent
    from pyagent.improve.result import RunResult

__all__ = ["report_dict", "write_report"]


def _tests(t: TestResults | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "passed": t.passed,
        "failed": t.failed,
        "total": len(t.outcomes),
        "command": list(t.command),
        "duration": round(t.duration, 3),
        "outcomes": dict(sorted(t.outcomes.items())),
    }


def report_dict(result: RunResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "root": str(result.root),
        "mode": result.mode,
        "branch": result.branch,
        "base_commit": result.base_commit,
        "duration": round(result.duration, 3),
        "summary": result.counts(),
        "tasks": [t.to_dict() for t in result.tasks],
        "skipped_by_memory": result.skipped_by_memory,
        "not_attempted": result.not_attempted,
        "tests": {
            "before": _tests(result.tests_before),
            "after": _tests(result.tests_after),
            "regressions": result.regressions(),
        },
        "metrics": {"before": result.metrics_before, "after": result.metrics_after},
        "usage": result.usage,
        "notes": result.notes,
        "agents": result.agents,
    }


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left}.kept{color:#176f2c}.rolled_back{color:#b3261e}.failed{color:#8a5300}.skipped{color:#666}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}.add{color:#176f2c}.del{color:#b3261e}
details{margin:.4em 0}summary{cursor:pointer}
"""


def _diff_html(diff: str) -> str:
    out = []
    for line in diff.splitlines():
        cls = (
            "add"
            if line.startswith("+") and not line.startswith("+++")
            else ("del" if line.startswith("-") and not line.startswith("---") else "")
        )
        out.append(f'<span class="{cls}">{html.escape(line)}</span>' if cls else html.escape(line))
    return "<pre>" + "\n".join(out) + "</pre>"


def render_html(rep: dict[str, Any]) -> str:
    e = html.escape
    s = rep["summary"]
    before, after = rep["metrics"]["before"], rep["metrics"]["after"]
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(str(before.get(k)))}</td><td>{e(str(after.get(k)))}</td></tr>"
        for k in before
    )
    tb, ta = rep["tests"]["before"], rep["tests"]["after"]
    tests = "<p>No tests were found; changes were verified by parsing, lint and metrics.</p>"
    if tb is not None and ta is not None:
        tests = (
            f"<table><tr><th></th><th>passed</th><th>failed</th></tr>"
            f"<tr><td>before</td><td>{tb['passed']}</td><td>{tb['failed']}</td></tr>"
            f"<tr><td>after</td><td>{ta['passed']}</td><td>{ta['failed']}</td></tr></table>"
            f"<p>Regressions: {e(', '.join(rep['tests']['regressions']) or 'none')}</p>"
        )
    tasks = []
    for t in rep["tasks"]:
        body = f"<p><b>Why / result:</b> {e(t['reason'])}</p>"
        if t["note"]:
            body += f"<p><b>What:</b> {e(t['note'])}</p>"
        if t["commit"]:
            body += f"<p>Commit <code>{e(t['commit'][:12])}</code></p>"
        if t["tokens"]:
            body += f"<p>LLM: {t['tokens']} tokens, ${t['cost']:.4f}</p>"
        if t["diff"]:
            body += _diff_html(t["diff"])
        tasks.append(
            f'<details><summary><span class="{e(t["status"])}">{e(t["status"])}</span> '
            f"{e(t['id'])} {e(t['action'])} in <code>{e(t['target'])}</code></summary>{body}</details>"
        )
    memory = "".join(
        f"<li>{e(m['action'])} in <code>{e(m['target'])}</code>: {e(m['reason'])}</li>"
        for m in rep["skipped_by_memory"]
    )
    usage = rep["usage"]
    notes = "".join(f"<li>{e(n)}</li>" for n in rep["notes"])
    where = f"branch <code>{e(rep['branch'])}</code>" if rep["branch"] else e(rep["mode"])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>PyAgent run {e(rep['run_id'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>PyAgent improve: {e(rep['root'])}</h1>"
        f"<p>Run <code>{e(rep['run_id'])}</code> ({where}), {rep['duration']:.1f}s. "
        f"<span class='kept'>{s['kept']} kept</span>, <span class='rolled_back'>{s['rolled_back']} rolled back</span>, "
        f"<span class='failed'>{s['failed']} failed</span>, <span class='skipped'>{s['skipped']} skipped</span>.</p>"
        f"{'<ul>' + notes + '</ul>' if notes else ''}"
        f"<h2>Metrics</h2><table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>"
        f"<h2>Tests</h2>{tests}"
        f"<h2>LLM usage</h2><p>{usage.get('calls', 0)} calls, {usage.get('tokens', 0)} tokens, "
        f"${usage.get('cost', 0.0):.4f}</p>"
        f"<h2>Changes</h2>{''.join(tasks) or '<p>No tasks.</p>'}"
        f"{'<h2>Skipped: known to fail (memory)</h2><ul>' + memory + '</ul>' if memory else ''}"
        f"<p>{rep['not_attempted']} more change(s) were planned but not attempted (--max-tasks).</p>"
        "</body></html>"
    )


def write_report(result: RunResult, events: list[FleetEvent]) -> Path:
    from pyagent.fleet.events import EventLog
    from pyagent.redact import redact

    out = result.root / ".pyagent" / "reports" / result.run_id
    out.mkdir(parents=True, exist_ok=True)
    gitignore = result.root / ".pyagent" / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n")  # keeps the user's `git status` clean
    rep = redact(report_dict(result))
    (out / "report.json").write_bytes(orjson.dumps(rep, option=orjson.OPT_INDENT_2))
    (out / "report.html").write_text(render_html(rep), encoding="utf-8")
    with EventLog(out / "events.jsonl") as log:
        for ev in events:
            log.write(ev)
        for t in rep["tasks"]:
            log.write(
                {
                    "kind": "change",
                    "task_id": t["id"],
                    "agent": t["agent"],
                    "action": t["action"],
                    "target": t["target"],
                    "outcome": t["status"],
                    "reason": t["reason"],
                    "tokens": t["tokens"],
                    "duration": t["duration"],
                    "lineage": t["lineage"],
                }
            )
    return out
