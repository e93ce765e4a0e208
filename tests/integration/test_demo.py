"""`pyagent demo` and `pyagent improve`/`undo` as a user runs them: the real CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.improve_helpers import make_project


def test_demo_keeps_changes_rolls_back_the_trap_and_writes_the_report(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    dest = tmp_path / "demo"
    env = {k: v for k, v in clean_env.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    out = subprocess.run(
        [*pyagent_cmd, "demo", "--keep", str(dest)], capture_output=True, text=True, env=env, timeout=240
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    reports = list((dest / ".pyagent" / "reports").glob("*/report.json"))
    assert len(reports) == 1
    assert f"report: {reports[0].parent / 'report.html'}" in out.stdout
    rep = json.loads(reports[0].read_text())
    statuses = [t["status"] for t in rep["tasks"]]
    assert statuses.count("kept") >= 3
    trap = [
        t for t in rep["tasks"] if t["status"] == "rolled_back" and t["reason"].startswith("test failure")
    ]
    assert [(t["action"], t["target"]) for t in trap] == [("lint:F401", "inventory/core.py")]
    assert rep["tests"]["regressions"] == []
    assert rep["tests"]["after"]["failed"] == 0
    assert rep["tests"]["after"]["passed"] == rep["tests"]["before"]["passed"] > 0
    assert rep["metrics"]["after"]["ruff_findings"] < rep["metrics"]["before"]["ruff_findings"]
    assert (reports[0].parent / "report.html").stat().st_size > 1000
    assert (reports[0].parent / "events.jsonl").stat().st_size > 0
    # notes are printed as written: rich would take "[tool.pyagent]" for a style and drop it
    assert '"types" in [tool.pyagent] agents' in out.stdout
    # the trap's import survived, and the demo's own tests still pass in the kept result
    assert "import inventory.formats" in (dest / "inventory" / "core.py").read_text()
    # the bundled sample itself was not touched
    assert (
        "import os, sys"
        in (Path(__file__).parents[2] / "src/pyagent/samples/messy_project/inventory/core.py").read_text()
    )


def test_demo_refuses_a_non_empty_keep_dir(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    out = subprocess.run(
        [*pyagent_cmd, "demo", "--keep", str(tmp_path)], capture_output=True, text=True, env=clean_env
    )
    assert out.returncode == 2
    assert "not empty" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "precious.txt").read_text() == "mine"


def test_improve_and_undo_cli(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    root = make_project(tmp_path / "p")
    original = (root / "pkg" / "mod.py").read_text()
    env = {**clean_env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run(
        [*pyagent_cmd, "improve", str(root), "--max-tasks", "2", "--concurrency", "1", "--in-place"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "kept" in out.stdout and "pyagent undo" in out.stdout
    assert (root / "pkg" / "mod.py").read_text() != original
    undo = subprocess.run([*pyagent_cmd, "undo", str(root)], capture_output=True, text=True, env=env)
    assert undo.returncode == 0, undo.stderr
    assert (root / "pkg" / "mod.py").read_text() == original


def test_cli_bad_input_is_a_clear_error(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")  # a Python project, so the options are what is wrong
    cases = [
        (["improve", str(tmp_path / "missing")], "is not a directory"),
        (["improve", str(tmp_path), "--concurrency", "0"], "must be at least 1"),
        (["improve", str(tmp_path), "--budget", "lots"], "not an amount in USD"),
        (["improve", str(tmp_path), "--llm", "local:"], "model directory"),
        (["undo", str(tmp_path)], "no run to undo"),
    ]
    for args, message in cases:
        out = subprocess.run(
            [*pyagent_cmd, *args], capture_output=True, text=True, env=clean_env, timeout=120
        )
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_demo_sample_needs_no_pytest(tmp_path: Path) -> None:
    """`pip install . && pyagent demo` has no pytest: the sample declares a unittest command, trap included."""
    import asyncio

    from pyagent.improve.demo import prepare_demo
    from pyagent.improve.run import ImproveOptions, improve

    project = prepare_demo(tmp_path / "demo")
    result = asyncio.run(improve(ImproveOptions(path=project, use_git=False, concurrency=2)))
    assert result.tests_before is not None and result.tests_before.command[2] == "unittest"
    assert "[tool.pyagent] test-cmd" in result.settings["tests"]
    assert result.tests_before.passed == 6
    trap = [t for t in result.tasks if t.action == "lint:F401" and t.target == "inventory/core.py"]
    assert trap[0].status == "rolled_back" and "test_export_formats_are_registered" in trap[0].reason
    assert sum(t.status == "kept" for t in result.tasks) >= 3
    assert result.regressions() == []
