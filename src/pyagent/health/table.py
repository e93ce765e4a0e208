"""Terminal rendering of an audit: a rich table, worst files first."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from pyagent.health.auditor import AuditReport, FileHealth, Offender

_RANK_STYLE = {"A": "green", "B": "yellow", "C": "bold red"}


def _cc_style(cc: int) -> str:
    return "green" if cc <= 10 else "yellow" if cc <= 20 else "bold red"


def _worst_function(f: FileHealth) -> str:
    if not f.functions:
        return ""
    fn = max(f.functions, key=lambda x: x.complexity)
    return f"{fn.qualname}:{fn.lineno}"


def render_table(report: AuditReport, console: Console, *, top: int | None = None) -> None:
    """Print the files worst-first (lowest MI, then highest function complexity), then problems."""
    from rich.table import Table

    ranked = [f for f in report.worst_first() if f.error is None]
    shown = ranked if not top else ranked[:top]
    title = f"Code health of {report.root}: {len(ranked)} files, worst first"
    if top and len(ranked) > top:
        title += f" (top {top}; --top 0 shows all)"
    table = Table(title=title, title_justify="left")
    # In a pipe or file nobody resizes the window: the path column is never folded, cut or dropped.
    piped = not console.is_terminal
    longest = max((len(f.path) for f in shown), default=20)
    if piped:
        table.add_column("path", no_wrap=True, overflow="ignore", min_width=max(20, longest))
    else:
        table.add_column("path", overflow="fold", min_width=20)
    table.add_column("MI", justify="right", no_wrap=True)
    table.add_column("rank", justify="center", no_wrap=True)
    table.add_column("max CC", justify="right", no_wrap=True)
    table.add_column("functions", justify="right", no_wrap=True)
    table.add_column("SLOC", justify="right", no_wrap=True)
    table.add_column("worst function", overflow="ellipsis", no_wrap=True, max_width=32)
    for f in shown:
        cc = f.max_complexity
        table.add_row(
            f.path,
            f"{f.mi:.2f}" if f.mi is not None else "-",
            f"[{_RANK_STYLE.get(f.mi_rank or '', '')}]{f.mi_rank or '-'}[/]",
            f"[{_cc_style(cc)}]{cc}[/]" if f.functions else "-",
            str(len(f.functions)),
            str(f.raw.sloc) if f.raw else "-",
            _worst_function(f),
        )
    if piped:
        console.print(table, width=max(console.width, longest + 80), crop=False)
    else:
        console.print(table)
    s = report.summary
    worst = s.get("max_complexity")
    console.print(
        f"{s['analyzed']} analysed, {s['errors']} with errors, {s['skipped']} skipped; "
        f"{s['functions']} functions; mean MI {s['mean_mi'] if s['mean_mi'] is not None else '-'}"
        + (f"; most complex: {worst['path']}::{worst['qualname']} ({worst['complexity']})" if worst else ""),
        highlight=False,
    )
    problems = [f for f in report.files if f.error is not None]
    for f in problems:
        label = "skipped" if f.skipped else "error"
        console.print(f"[yellow]{label}[/]: {f.path}: {f.error}", highlight=False)
    for entry in s.get("walk_errors", []):
        console.print(f"[yellow]unreadable[/]: {entry['path']}: {entry['error']}", highlight=False)


def render_offenders(offenders: list[Offender], console: Console) -> None:
    """The gate failures, one per line, the largest excess first."""
    console.print(f"[bold red]{len(offenders)} gate failure(s):[/]", highlight=False)
    for o in offenders:
        where = f"{o.path}:{o.line}" if o.line else o.path
        if o.what == "maintainability index":
            console.print(f"  {where}: maintainability index {o.value:.2f} < {o.limit:g}", highlight=False)
        else:
            console.print(f"  {where}: {o.what} complexity {o.value:g} > {o.limit:g}", highlight=False)
