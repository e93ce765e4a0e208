"""Agreement of ``pyagent audit`` with ruff (C901) and radon (MI, Halstead, raw) on real code.

Runs the anchors itself on a corpus (default: a copy of this interpreter's standard library
without ``test/`` and ``site-packages/``), or reads their cached JSON output with ``--ref DIR``
(``c901.json`` from ``ruff check --select C901 --output-format json``, and ``mi.json``,
``raw.json``, ``hal.json`` from ``radon mi|raw|hal -j``, all run from inside the corpus), audits
the same corpus with PyAgent and prints the agreement and every exception with its reason.

Targets: 100% of ruff's C901 functions with the same complexity, file, line and name; MI within
0.01 of radon for >= 99% of files; Halstead volume and raw metrics equal for >= 99% of files.

    python benchmarks/agreement.py [--corpus DIR] [--ref DIR] [--skip-radon-mi]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyagent.health import AuditReport, CodeHealthAuditor

MI_TOLERANCE = 0.01
RUFF_MESSAGE = re.compile(r"^`(?P<name>.+)` is too complex \((?P<complexity>\d+) > \d+\)$")


@dataclass
class Reference:
    """What the anchor tools said, keyed by POSIX path relative to the corpus."""

    c901: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # path -> (name, line, cc)
    mi: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    hal: dict[str, dict[str, Any]] = field(default_factory=dict)


def _rel(path: str, corpus: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(corpus.resolve())
        except ValueError:
            p = p.relative_to(corpus)
    return p.as_posix().removeprefix("./")


def tool(name: str) -> str:
    """The console script installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def parse_ruff(diagnostics: list[dict[str, Any]], corpus: Path) -> dict[str, list[tuple[str, int, int]]]:
    out: dict[str, list[tuple[str, int, int]]] = {}
    for d in diagnostics:
        if d.get("code") != "C901":
            continue
        m = RUFF_MESSAGE.match(d["message"])
        if m is None:
            continue
        out.setdefault(_rel(d["filename"], corpus), []).append(
            (m["name"], int(d["location"]["row"]), int(m["complexity"]))
        )
    return out


def run_ruff(corpus: Path, files: Sequence[str] | None = None) -> dict[str, list[tuple[str, int, int]]]:
    cmd = [
        tool("ruff"), "check", "--isolated", "--select", "C901",
        "--config", "lint.mccabe.max-complexity=0", "--output-format", "json", "--exit-zero",
        *(files or ["."]),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=corpus, capture_output=True, text=True, check=True)
    return parse_ruff(json.loads(out.stdout or "[]"), corpus)


def run_radon(kind: str, corpus: Path, files: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    # The console script, not `python -m radon`: with -m the corpus (cwd) would shadow the stdlib.
    cmd = [tool("radon"), kind, "-j", *(files or ["."])]
    out = subprocess.run(cmd, cwd=corpus, capture_output=True, text=True, check=True)
    data: dict[str, dict[str, Any]] = json.loads(out.stdout or "{}")
    return {_rel(k, corpus): v for k, v in data.items()}


def collect_reference(corpus: Path, files: Sequence[str] | None = None, *, skip_mi: bool = False) -> Reference:
    """Run ruff and the three radon commands concurrently (each is single-threaded)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        c901 = pool.submit(run_ruff, corpus, files)
        mi = None if skip_mi else pool.submit(run_radon, "mi", corpus, files)
        raw = pool.submit(run_radon, "raw", corpus, files)
        hal = pool.submit(run_radon, "hal", corpus, files)
        return Reference(
            c901=c901.result(), mi=mi.result() if mi else {}, raw=raw.result(), hal=hal.result()
        )


def load_reference(ref: Path, corpus: Path) -> Reference:
    def load(name: str) -> Any:
        p = ref / name
        return json.loads(p.read_text() or "{}") if p.exists() else {}

    return Reference(
        c901=parse_ruff(load("c901.json") or [], corpus),
        mi={_rel(k, corpus): v for k, v in load("mi.json").items()},
        raw={_rel(k, corpus): v for k, v in load("raw.json").items()},
        hal={_rel(k, corpus): v for k, v in load("hal.json").items()},
    )


@dataclass
class Check:
    """One metric family: how many items agreed, and the exceptions with their reasons."""

    name: str
    total: int = 0
    agreed: int = 0
    exceptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.agreed / self.total if self.total else 1.0


RAW_FIELDS = ("loc", "lloc", "sloc", "comments", "multi", "blank", "single_comments")


def _explain_missing(path: str, ours: dict[str, Any]) -> str:
    if path not in ours:
        return "file not audited (excluded by the walk: hidden or .gitignore'd)"
    f = ours[path]
    if f["error"]:
        return f"we report an error: {f['error']}"
    return "we have no value for it"


def _why_radon_failed(path: str, corpus: Path) -> str:
    head = (corpus / path).read_bytes()[:3]
    if head == b"\xef\xbb\xbf":
        return (
            ". Reason: the file starts with a UTF-8 BOM; radon opens files as 'utf-8', not 'utf-8-sig', so its "
            "tokenizer sees U+FEFF as an error token. Python ignores the BOM, and so do we."
        )
    return ""


def compare(report: AuditReport, ref: Reference) -> list[Check]:
    corpus = Path(report.root)
    ours = {f.path: f.to_dict() for f in report.files}
    checks = []

    c = Check("C901 functions (ruff)")
    for path, funcs in sorted(ref.c901.items()):
        mine = ours.get(path, {}).get("functions", [])
        for name, line, cc in funcs:
            c.total += 1
            match = [f for f in mine if f["lineno"] == line and f["name"] == name]
            if match and match[0]["complexity"] == cc:
                c.agreed += 1
            elif match:
                c.exceptions.append(f"{path}:{line} {name}: ruff {cc}, ours {match[0]['complexity']}")
            else:
                c.exceptions.append(f"{path}:{line} {name} (ruff {cc}): not found; {_explain_missing(path, ours)}")
    checks.append(c)

    def per_file(name: str, data: dict[str, dict[str, Any]], same: Any, show: Any) -> Check:
        chk = Check(name)
        for path, theirs in sorted(data.items()):
            chk.total += 1
            mine = ours.get(path)
            if "error" in theirs:
                if mine is not None and same(mine, None):
                    chk.agreed += 1
                else:
                    chk.exceptions.append(
                        f"{path}: radon failed ({theirs['error']}); ours {show(mine)}{_why_radon_failed(path, corpus)}"
                    )
                continue
            if mine is not None and same(mine, theirs):
                chk.agreed += 1
            else:
                chk.exceptions.append(f"{path}: radon {show(theirs, True)}, ours {show(mine)}")
        return chk

    def mi_same(mine: dict[str, Any], theirs: dict[str, Any] | None) -> bool:
        if theirs is None:
            return bool(mine["mi"] is None)
        return mine["mi"] is not None and abs(mine["mi"] - theirs["mi"]) <= MI_TOLERANCE

    def mi_show(d: dict[str, Any] | None, theirs: bool = False) -> str:
        if d is None:
            return "missing"
        return f"{d['mi']}" if theirs or d.get("mi") is not None else f"none ({d.get('error')})"

    checks.append(per_file("Maintainability Index (radon mi, +-0.01)", ref.mi, mi_same, mi_show))
    diffs = [
        abs(ours[p]["mi"] - t["mi"]) for p, t in ref.mi.items() if "mi" in t and p in ours and ours[p]["mi"] is not None
    ]
    if diffs:
        exact = sum(1 for d in diffs if d == 0.0)
        checks[-1].notes.append(f"bit-identical: {exact}/{len(diffs)}; largest difference: {max(diffs):.3g}")

    def raw_same(mine: dict[str, Any], theirs: dict[str, Any] | None) -> bool:
        if theirs is None:
            return mine["raw"] is None
        return mine["raw"] is not None and all(mine["raw"][k] == theirs[k] for k in RAW_FIELDS)

    def raw_show(d: dict[str, Any] | None, theirs: bool = False) -> str:
        if d is None:
            return "missing"
        r = d if theirs else d.get("raw")
        return str({k: r[k] for k in RAW_FIELDS}) if r else f"none ({d.get('error')})"

    checks.append(per_file("raw metrics (radon raw)", ref.raw, raw_same, raw_show))

    def hal_same(mine: dict[str, Any], theirs: dict[str, Any] | None) -> bool:
        if theirs is None:
            return mine["halstead"] is None
        h = mine["halstead"]
        t = theirs["total"]
        return h is not None and math.isclose(h["volume"], t["volume"], rel_tol=1e-12, abs_tol=1e-9)

    def hal_show(d: dict[str, Any] | None, theirs: bool = False) -> str:
        if d is None:
            return "missing"
        h = d["total"] if theirs else d.get("halstead")
        if not h:
            return f"none ({d.get('error')})"
        return f"volume {h['volume']} (h1 {h['h1']} h2 {h['h2']} N1 {h['N1']} N2 {h['N2']})"

    checks.append(per_file("Halstead volume (radon hal)", ref.hal, hal_same, hal_show))
    counts = [
        all(ours[p]["halstead"][k] == t["total"][k] for k in ("h1", "h2", "N1", "N2"))
        for p, t in ref.hal.items()
        if "total" in t and p in ours and ours[p]["halstead"]
    ]
    checks[-1].notes.append(f"h1, h2, N1, N2 all equal: {sum(counts)}/{len(counts)}")
    return checks


TARGETS = {
    "C901 functions (ruff)": 1.0,
    "Maintainability Index (radon mi, +-0.01)": 0.99,
    "raw metrics (radon raw)": 0.99,
    "Halstead volume (radon hal)": 0.99,
}


def print_checks(checks: list[Check], *, out: Any = sys.stdout) -> bool:
    ok = True
    for c in checks:
        target = TARGETS.get(c.name, 1.0)
        met = c.ratio >= target
        ok &= met
        print(
            f"{c.name:42} {c.agreed:6}/{c.total:<6} {100 * c.ratio:7.3f}%  target >= {100 * target:.0f}%  "
            f"{'met' if met else 'NOT MET'}",
            file=out,
        )
        for n in c.notes:
            print(f"    ({n})", file=out)
        for e in c.exceptions:
            print(f"    - {e}", file=out)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    from corpus import stdlib_copy  # script-only: the tests import this module as benchmarks.agreement

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="tree to compare on (default: a copy of the stdlib)")
    parser.add_argument("--ref", type=Path, help="directory with cached c901.json, mi.json, raw.json, hal.json")
    parser.add_argument("--skip-radon-mi", action="store_true", help="do not run radon mi (about 10 minutes)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pyagent-agreement-") as tmp:
        corpus = args.corpus or stdlib_copy(Path(tmp) / "stdlib")
        n_files = sum(1 for _ in corpus.rglob("*.py"))
        print(f"corpus: {corpus} ({n_files} .py files)")
        start = time.perf_counter()
        if args.ref:
            ref = load_reference(args.ref, corpus)
            print(f"reference: cached outputs in {args.ref}")
        else:
            ref = collect_reference(corpus, skip_mi=args.skip_radon_mi)
            print(f"reference: ruff and radon run live in {time.perf_counter() - start:.1f} s")
        report = CodeHealthAuditor().audit_path(corpus)
        print(f"pyagent audit: {len(report.files)} files in {report.summary['timing']['wall_seconds']:.2f} s\n")
        ok = print_checks(compare(report, ref))
    print("\nall targets met" if ok else "\nsome targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
