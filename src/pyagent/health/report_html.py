"""A self-contained HTML audit report: one file, inline CSS and JS, no network access.

Two sortable tables (files and functions); clicking a column header sorts by it. Every value
is escaped, so hostile file or function names cannot inject markup.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyagent.health.auditor import AuditReport

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.A{color:#1a7f37}.B{color:#9a6700}.C{color:#cf222e;font-weight:bold}
.err{color:#cf222e}
"""

_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) { r = nx - ny; } else { r = x < y ? -1 : x > y ? 1 : 0; }
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _cell(value: object, *, num: bool = False, cls: str = "") -> str:
    text = "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
    sort_key = "" if value is None else str(value)
    classes = " ".join(c for c in ("num" if num else "", cls) if c)
    attr = f' class="{classes}"' if classes else ""
    return f'<td{attr} data-v="{html.escape(sort_key, quote=True)}">{html.escape(text)}</td>'


def render_html(report: AuditReport) -> str:
    """The whole report as one HTML document."""
    s = report.summary
    file_rows = []
    for f in report.worst_first():
        file_rows.append(
            "<tr>"
            + _cell(f.path)
            + _cell(f.mi, num=True)
            + _cell(f.mi_rank, cls=f.mi_rank or "")
            + _cell(f.max_complexity if f.functions else None, num=True)
            + _cell(len(f.functions), num=True)
            + _cell(f.raw.sloc if f.raw else None, num=True)
            + _cell(f.raw.lloc if f.raw else None, num=True)
            + _cell(round(f.halstead.volume, 2) if f.halstead else None, num=True)
            + _cell(f.error, cls="err" if f.error else "")
            + "</tr>"
        )
    fn_rows: list[tuple[int, str]] = []
    for f in report.files:
        for fn in f.functions:
            fn_rows.append((
                -fn.complexity,
                "<tr>"
                + _cell(fn.complexity, num=True)
                + _cell(fn.qualname)
                + _cell(f.path)
                + _cell(fn.lineno, num=True)
                + _cell(fn.endline - fn.lineno + 1, num=True)
                + "</tr>",
            ))
    mean = s.get("mean_mi")
    headline = (
        f"{s['files']} files ({s['analyzed']} analysed, {s['errors']} with errors, {s['skipped']} skipped), "
        f"{s['functions']} functions, mean MI {mean if mean is not None else '-'}"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Code health: {html.escape(report.root)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Code health of {html.escape(report.root)}</h1><p>{html.escape(headline)}</p>"
        "<p>Click a column header to sort. MI and Halstead follow radon, function complexity follows "
        "ruff's C901.</p>"
        "<h2>Files (worst first)</h2><table class=\"sortable\"><thead><tr>"
        "<th>path</th><th>MI</th><th>rank</th><th>max CC</th><th>functions</th><th>SLOC</th><th>LLOC</th>"
        "<th>Halstead volume</th><th>error</th></tr></thead><tbody>"
        + "".join(file_rows)
        + "</tbody></table><h2>Functions</h2><table class=\"sortable\"><thead><tr>"
        "<th>complexity</th><th>function</th><th>path</th><th>line</th><th>lines</th></tr></thead><tbody>"
        + "".join(row for _, row in sorted(fn_rows, key=lambda r: r[0]))
        + f"</tbody></table><script>{_SCRIPT}</script></body></html>\n"
    )
