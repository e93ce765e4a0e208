"""The run's report: ``report.json`` for machines, ``report.html`` for people, ``PR.md`` for the pull
request, ``events.jsonl`` beside them.

Everything passes through ``redact()`` before it is written.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pyagent.model.status import Status

if TYPE_CHECKING:
    from pyagent.agents.test_results import TestResults
    from pyagent.fleet.events import FleetEvent
    from pyagent.improve.result import RunResult

__all__ = ["render_pr", "report_dict", "write_report"]

# Report themes, in the order a reviewer reads them: agent name -> heading.
THEMES: dict[str, str] = {
    "lint": "Lint fixes (the project's own rules)",
    "modernize": "Modernisation",
    "simplify": "Simplification",
    "format": "Formatting (the project's declared formatter)",
    "deprecation": "Deprecation warnings fixed",
    "deadcode": "Dead code removed",
    "complexity": "Complexity refactors (offline)",
    "types": "Type annotations",
    "refactor": "Refactors",
    "docstring": "Docstrings",
}


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
        "sandbox": list(t.sandbox),
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
        "categories": result.categories(),
        "phase_seconds": result.phase_seconds,
        "usage": result.usage,
        "notes": result.notes,
        "gate": result.gate,
        "settings": result.settings,
        "interrupted": result.interrupted,
        "agents": result.agents,
    }


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left}.kept{color:#176f2c}.rolled_back{color:#b3261e}.failed{color:#8a5300}.skipped{color:#666}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}.add{color:#176f2c}.del{color:#b3261e}
details{margin:.4em 0}summary{cursor:pointer}.filter label{margin-right:1em}
"""

# Status filter: a checkbox per status hides or shows the changes that ended that way.
_FILTER_JS = """
document.querySelectorAll('.filter input').forEach(function(box){box.addEventListener('change',function(){
document.querySelectorAll('details[data-status="'+box.value+'"]').forEach(function(d){
d.style.display=box.checked?'':'none';});});});
"""


def _lines_changed(diff: str) -> tuple[int, int]:
    lines = diff.splitlines()
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return added, removed


def _complexity_rows(t: dict[str, Any]) -> str:
    e = html.escape
    per_file = (t.get("verification") or {}).get("metrics", {}).get(t["target"], {})
    changed = per_file.get("complexity") or {}
    if not changed:
        return ""
    rows = "".join(
        f"<tr><td><code>{e(qn)}</code></td><td>{e(str(old))}</td><td>{e(str(new))}</td></tr>"
        for qn, (old, new) in sorted(changed.items())
    )
    return f"<table><tr><th>function</th><th>complexity before</th><th>after</th></tr>{rows}</table>"


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
    cat_rows = "".join(
        f"<tr><td>{e(cat)}</td><td>{e(k)}</td><td>{e(str(v))}</td></tr>"
        for cat, values in rep["categories"].items()
        for k, v in values.items()
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
        body += _complexity_rows(t)
        if t["tokens"]:
            body += f"<p>LLM: {t['tokens']} tokens, ${t['cost']:.4f}</p>"
        if t["diff"]:
            body += _diff_html(t["diff"])
        commit = f" <code>{e(t['commit'][:10])}</code>" if t["commit"] else ""
        tasks.append(
            f'<details data-status="{e(t["status"])}"><summary><span class="{e(t["status"])}">{e(t["status"])}'
            f"</span> {e(t['id'])} {e(t['action'])} in <code>{e(t['target'])}</code>{commit}</summary>{body}</details>"
        )
    boxes = "".join(
        f'<label><input type="checkbox" value="{st}" checked> {st} ({s.get(st, 0)})</label>'
        for st in Status
    )
    gate = "".join(f"<li>{e(g)}</li>" for g in rep.get("gate", []))
    settings = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in rep.get("settings", {}).items())
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
        f"{'<h2>Project rules</h2><ul>' + settings + '</ul>' if settings else ''}"
        f"{'<h2>Gate</h2><ul>' + gate + '</ul>' if gate else ''}"
        f"<h2>Metrics</h2><table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>"
        f"<h2>By category</h2><table><tr><th>category</th><th>figure</th><th>before, after / count</th></tr>"
        f"{cat_rows}</table>"
        f"<h2>Tests</h2>{tests}"
        f"<h2>LLM usage</h2><p>{usage.get('calls', 0)} calls, {usage.get('tokens', 0)} tokens, "
        f"{usage.get('seconds', 0.0):.1f} s waiting for the model (summed over calls), "
        f"${usage.get('cost', 0.0):.4f}</p>"
        f"<h2>Changes</h2><p class='filter'>Show: {boxes}</p>{''.join(tasks) or '<p>No tasks.</p>'}"
        f"{'<h2>Skipped: known to fail (memory)</h2><ul>' + memory + '</ul>' if memory else ''}"
        f"<p>{rep['not_attempted']} more change(s) were planned but not attempted (--max-tasks).</p>"
        f"<script>{_FILTER_JS}</script></body></html>"
    )


def render_pr(rep: dict[str, Any]) -> str:
    """A pull-request description: what changed by theme, before/after metrics, tests, the gate's rules."""
    s = rep["summary"]
    out = [f"## PyAgent: {s['kept']} verified change(s)", ""]
    if rep.get("interrupted"):
        out += [f"_The run was interrupted ({rep['interrupted']}); this covers what was done._", ""]
    total_add = total_del = 0
    by_theme: dict[str, list[dict[str, Any]]] = {}
    for t in rep["tasks"]:
        by_theme.setdefault(t["agent"], []).append(t)
    out += ["| theme | kept | rolled back | failed | skipped | lines +/- |", "|---|---|---|---|---|---|"]
    for agent in sorted(by_theme, key=lambda a: list(THEMES).index(a) if a in THEMES else len(THEMES)):
        tasks = by_theme[agent]
        added = removed = 0
        for t in tasks:
            if t["status"] == Status.KEPT:
                a, r = _lines_changed(t["diff"])
                added, removed = added + a, removed + r
        total_add, total_del = total_add + added, total_del + removed
        counts = [sum(1 for t in tasks if t["status"] == st) for st in Status]
        out.append(f"| {THEMES.get(agent, agent)} | {' | '.join(map(str, counts))} | +{added}/-{removed} |")
    out += ["", f"Lines changed in kept changes: +{total_add}/-{total_del}.", ""]
    for agent in sorted(by_theme, key=lambda a: list(THEMES).index(a) if a in THEMES else len(THEMES)):
        kept = [t for t in by_theme[agent] if t["status"] == Status.KEPT]
        if kept:
            out += [f"### {THEMES.get(agent, agent)}", ""]
            out += [
                f"- `{(t['commit'] or '')[:10]}` {t['action']} in `{t['target']}`: {t['note'] or t['reason']}"
                for t in kept
            ]
            out.append("")
    out += _category_lines(rep.get("categories") or {})
    before, after = rep["metrics"]["before"], rep["metrics"]["after"]
    out += ["### Metrics", "", "| metric | before | after |", "|---|---|---|"]
    out += [f"| {k} | {before.get(k)} | {after.get(k, '-')} |" for k in before]
    tb, ta = rep["tests"]["before"], rep["tests"]["after"]
    out += ["", "### Tests", ""]
    if rep.get("settings", {}).get("tests"):
        out.append(f"Command: {rep['settings']['tests']}")
    if tb is not None:
        out.append(f"- baseline: {tb['passed']} passed, {tb['failed']} failed of {tb['total']}")
    if ta is not None:
        out.append(f"- after: {ta['passed']} passed, {ta['failed']} failed of {ta['total']}")
    out.append(f"- regressions: {', '.join(rep['tests']['regressions']) or 'none'}")
    for label, t in (("baseline", tb), ("after", ta)):
        if t is not None and t.get("sandbox"):
            out += [f"- {label} {t['sandbox'][0]}"] + [f"  - refused: {line}" for line in t["sandbox"][1:]]
    for task in rep["tasks"]:
        gate_sandbox = (task.get("verification") or {}).get("tests", {}).get("sandbox") or []
        if len(gate_sandbox) > 1:  # a gate run's refusals; what it enforced is the baseline's line above
            out += [f"- gate run for `{task['target']}` ({task['id']})"]
            out += [f"  - refused: {line}" for line in gate_sandbox[1:]]
    if rep.get("settings"):
        out += ["", "### Project rules used", ""] + [f"- {k}: {v}" for k, v in rep["settings"].items()]
    if rep.get("gate"):
        out += ["", "### How each change was checked", ""] + [f"- {g}" for g in rep["gate"]]
    out += ["", f"Run `{rep['run_id']}`; full report in `report.html`."]
    return "\n".join(out) + "\n"


def _pair(values: Any) -> tuple[str, str]:
    if isinstance(values, list | tuple) and len(values) == 2:
        before, after = values
        return ("-" if before is None else str(before)), ("-" if after is None else str(after))
    return "-", "-"


def _category_lines(cats: dict[str, Any]) -> list[str]:
    """Before/after per kind of improvement, the figures a reviewer asks for first."""
    if not cats:
        return []
    rows: list[tuple[str, str, str]] = []
    cx = cats.get("complexity") or {}
    for key, label in (
        ("functions_over_threshold", "functions over the complexity threshold"),
        ("complexity_max", "max complexity"),
        ("complexity_avg", "mean complexity"),
    ):
        if key in cx:
            rows.append((label, *_pair(cx[key])))
    dead = cats.get("dead_code") or {}
    if dead:
        rows.append(("dead lines removed", "", str(dead.get("lines_removed", 0))))
    types = cats.get("types") or {}
    if types.get("annotated_functions"):
        rows.append(("fully annotated functions", *_pair(types["annotated_functions"])))
    dep = cats.get("deprecations") or {}
    if dep:
        rows.append(("deprecation warnings in the test run", *_pair(dep.get("warnings"))))
        rows.append(("warnings fixed", "", str(dep.get("fixed", 0))))
    lint = cats.get("lint") or {}
    if lint.get("ruff_findings"):
        rows.append(("ruff findings", *_pair(lint["ruff_findings"])))
    out = ["### By category", "", "| figure | before | after |", "|---|---|---|"]
    out += [f"| {label} | {b} | {a} |" for label, b, a in rows]
    return [*out, ""]


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
    (out / "PR.md").write_text(render_pr(rep), encoding="utf-8")
    with EventLog(out / "events.jsonl") as log:
        for ev in events:
            log.write(ev)
        for label in ("before", "after"):
            t = rep["tests"][label]
            if t is not None and t.get("sandbox"):
                log.write({"kind": "sandbox", "task_id": None, "run": label, "enforced": t["sandbox"][0],
                           "refusals": t["sandbox"][1:]})
        for t in rep["tasks"]:
            gate_sandbox = (t.get("verification") or {}).get("tests", {}).get("sandbox")
            if gate_sandbox:  # every gate run that ran tests, not only the baseline and the final run
                log.write({"kind": "sandbox", "task_id": t["id"], "lineage": t["lineage"], "run": "gate",
                           "enforced": gate_sandbox[0], "refusals": gate_sandbox[1:]})
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
