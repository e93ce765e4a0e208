"""Live progress of a run in the terminal (rich), and the final summary.

On a terminal: a progress bar, the running LLM token/cost counter and one line per finished task.
Elsewhere (pipes, CI, tests) the same lines are printed plainly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pyagent.model.status import Status

if TYPE_CHECKING:
    from pyagent.improve.result import RunResult

__all__ = ["LiveDisplay", "print_summary"]

_STYLE = {Status.KEPT: "green", Status.ROLLED_BACK: "red", Status.FAILED: "yellow", Status.SKIPPED: "dim"}


class LiveDisplay:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[llm]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self.bar: Any = None
        self.llm = ""

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        self.bar = self.progress.add_task("auditing", total=None, llm="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "phase":
            self.progress.update(self.bar, description=event["phase"])
            if not self.console.is_terminal:
                self.console.print(escape(f"[{event['phase']}] {event.get('detail', '')}"))
        elif kind == "plan":
            self.progress.update(self.bar, description="improving", total=len(event["tasks"]), completed=0)
            self.console.print(f"planned {len(event['tasks'])} task(s), {len(event['skipped'])} skipped")
            over = [s for s in event["skipped"] if s["reason"].startswith("over --max-tasks")]
            for s in event["skipped"]:
                if s not in over:
                    self.console.print(
                        escape(f"  skipped {s['action']} in {s['target']}: {s['reason']}"), style="dim"
                    )
            if over:
                self.console.print(
                    f"  {len(over)} more change(s) left for a later run (over --max-tasks)", style="dim"
                )
        elif kind == "task":
            t = event["task"]
            self.progress.advance(self.bar)
            style = _STYLE.get(t["status"], "")
            self.console.print(
                f"[{style}]{t['status']:<11}[/] {t['id']} {escape(t['action']):<22} {escape(t['target'])}  "
                f"[dim]{escape(t['reason'][:90])}[/]"
            )
        elif kind == "llm":
            tot = event["totals"]
            self.llm = f"LLM {tot['calls']} calls {tot['tokens']} tok ${tot['cost']:.4f}"
            self.progress.update(self.bar, llm=self.llm)


def print_summary(result: RunResult, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    c = result.counts()
    console.print(
        f"\n[bold]{c['kept']} kept[/], {c['rolled_back']} rolled back, {c['failed']} failed, {c['skipped']} skipped "
        f"in {result.duration:.1f}s"
    )
    table = Table("metric", "before", "after")
    for key, before in result.metrics_before.items():
        table.add_row(key, str(before), str(result.metrics_after.get(key)))
    tb, ta = result.tests_before, result.tests_after
    if tb is not None and ta is not None:
        table.add_row("tests passed", str(tb.passed), str(ta.passed))
        table.add_row("tests failed", str(tb.failed), str(ta.failed))
    console.print(table)
    cats = result.categories()
    cx, dead, dep = cats["complexity"], cats["dead_code"], cats["deprecations"]
    console.print(
        f"complexity: functions over threshold {cx['functions_over_threshold'][0]} -> "
        f"{cx['functions_over_threshold'][1]}, max {cx['complexity_max'][0]} -> {cx['complexity_max'][1]}, "
        f"mean {cx['complexity_avg'][0]} -> {cx['complexity_avg'][1]} ({cx['refactors_kept']} refactor(s) kept); "
        f"dead code: {dead['lines_removed']} line(s) removed; annotated functions: "
        f"{cats['types']['annotated_functions'][0]} -> {cats['types']['annotated_functions'][1]}; deprecation warnings: "
        f"{dep['warnings'][0]} -> {dep['warnings'][1]} ({dep['fixed']} fixed)"
    )
    for w in dep["without_a_ruff_fix"][:10]:
        console.print(f"warning without a ruff fix: {w['path']}:{w['line']}: {w['category']}: {w['message']}")
    usage = result.usage
    if usage.get("calls"):
        judged, attempted = result.llm_tasks()
        console.print(f"LLM: {usage['calls']} calls, {usage['tokens']} tokens, {usage.get('seconds', 0.0):.1f} s "
                      "waiting for the model (summed over calls), "
                      f"${usage['cost']:.4f}; {judged} of {attempted} LLM task(s) returned an edit the gate judged")
    regressions = result.regressions()
    if regressions:
        console.print(f"[red]test regressions: {escape(', '.join(regressions))}[/]")  # test ids hold [params]
    for note in result.notes:
        console.print(escape(f"note: {note}"))  # notes quote config keys like [tool.pyagent]
    if result.branch:
        console.print(
            f"changes are on branch [bold]{result.branch}[/] (your branch and working tree are unchanged)"
        )
    elif result.mode == "in-place" and c[Status.KEPT]:
        console.print(f"changes were applied in place; `pyagent undo {result.root}` reverts them")
    console.print(f"report: {result.report_dir / 'report.html' if result.report_dir else '(none)'}")
