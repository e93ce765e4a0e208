"""``pyagent improve PATH``: audit, plan, change, verify, keep or roll back, report."""

from __future__ import annotations

import argparse
from typing import Any

from pyagent.cli import CommandError

RAY_INSTALL = "pip install 'pyagent[ray]'"  # the same text as pyagent.pipeline.ray_executor's, without importing it


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text.removeprefix("$"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _executor_spec(text: str) -> tuple[str, str | None]:
    name, _, address = text.partition(":")
    if name == "local" and not address:
        return "local", None
    if name == "ray":
        return "ray", address or None
    raise argparse.ArgumentTypeError(f"expected local, ray or ray:ADDRESS, got {text!r}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "improve",
        help="improve a Python project: every change verified by its tests, kept or rolled back",
        description=(
            "Audit PATH, plan small changes worst code first, run them on a fleet of agents in isolated "
            "copies, keep only the changes that parse, pass the project's tests and do not worsen its health. "
            "In a git repository the kept changes are commits on a new branch pyagent/<run-id>; elsewhere "
            "they are applied in place only with --in-place (`pyagent undo PATH` reverts them). It works within "
            "the project's own rules: its ruff (or flake8) configuration, its formatter or none, its declared "
            "test command. Per-project defaults go in pyproject.toml [tool.pyagent]; flags win over them."
        ),
    )
    p.add_argument("path", metavar="PATH", help="the project's root folder")
    p.add_argument("--llm", metavar="MODEL", help="use an LLM for refactoring and docstrings (or local:DIR)")
    p.add_argument(
        "--llm-base-url", metavar="URL", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL)"
    )
    p.add_argument(
        "--llm-api", choices=("auto", "responses", "chat"), default="auto", help="endpoint protocol"
    )
    p.add_argument(
        "--test-cmd",
        metavar="CMD",
        help="command that runs the project's tests (default: [tool.pyagent] test-cmd, tox.ini, noxfile.py, "
        "Makefile test target, CI workflow, then discovery)",
    )
    p.add_argument(
        "--allow-few-tests",
        action="store_true",
        default=None,
        help="gate on a test baseline of 0 or 1 test (refused otherwise)",
    )
    p.add_argument(
        "--formatter",
        choices=("auto", "ruff", "black", "none"),
        help="auto (default): only the formatter the project declares; none: never format",
    )
    p.add_argument(
        "--agents",
        metavar="A,B",
        type=lambda text: tuple(a.strip() for a in text.split(",") if a.strip()),
        help="only these agents (lint, modernize, simplify, format, deprecation, deadcode, complexity, types, "
        "refactor, docstring); naming `types` opts a project without a mypy/pyright configuration in",
    )
    p.add_argument(
        "--exclude", metavar="GLOB", action="append", default=[], help="leave matching paths alone (repeatable)"
    )
    p.add_argument("--max-tasks", type=_positive_int, metavar="N", help="at most N changes are attempted")
    p.add_argument("--budget", type=_budget, metavar="USD", help="hard stop for LLM spending, in USD")
    p.add_argument("--budget-tokens", type=_positive_int, metavar="N", help="hard stop for LLM tokens")
    p.add_argument(
        "--concurrency", type=_positive_int, default=2, metavar="N", help="agents at once (default 2)"
    )
    p.add_argument(
        "--max-complexity", type=_positive_int, metavar="N", help="refactor threshold (default 10)"
    )
    p.add_argument("--test-timeout", type=float, default=300.0, metavar="S", help="seconds per test run")
    p.add_argument(
        "--dry-run", action="store_true", help="show the diffs of verified changes, change nothing"
    )
    p.add_argument("--no-git", action="store_true", help="change files in place even in a git repository")
    p.add_argument(
        "--in-place",
        action="store_true",
        help="outside git: apply verified changes to the files (without it the run is a dry run)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue this project's newest unfinished (killed) git run"
    )
    p.add_argument(
        "--full-tests",
        action="store_true",
        help="verify every change with the whole test suite (default: only the tests that run the changed files)",
    )
    p.add_argument(
        "--swarm",
        action="store_true",
        help="spread tasks over trusted Voyager peers found by mDNS (keys: $PYAGENT_NODE_HOME or ~/.pyagent/node)",
    )
    p.add_argument(
        "--executor",
        type=_executor_spec,
        default=("local", None),
        metavar="local|ray[:ADDRESS]",
        help="where tasks run: local (default) or a Ray cluster (ADDRESS, else $RAY_ADDRESS, else one started "
        f"here by `ray start`, else a new local instance; as many tasks at once as it has free CPUs; needs {RAY_INSTALL})",
    )
    p.add_argument(
        "--no-memory",
        action="store_true",
        help="do not use or update the knowledge store PATH/.pyagent/memory.db (see `pyagent memory`)",
    )
    p.add_argument(
        "--fleet-memory",
        action="store_true",
        help="also skip changes known to fail, and weigh agents, by the memory of trusted nodes running "
        "`pyagent node --memory` (keys: $PYAGENT_NODE_HOME or ~/.pyagent/node)",
    )
    return p


def _open_memory(args: argparse.Namespace) -> Any:
    """The workspace's persistent knowledge store (None with --no-memory or when PATH is no folder)."""
    import os

    if args.no_memory or not os.path.isdir(args.path):
        return None
    from pyagent.memory.errors import StoreError
    from pyagent.memory.fleet_memory import StoreKnowledge

    try:
        local = StoreKnowledge.open(args.path)
    except StoreError as exc:
        raise CommandError(f"{exc}; run with --no-memory, or move the store away") from exc
    if not getattr(args, "fleet_memory", False):
        return local
    from pyagent.voyager.memory_client import open_fleet_knowledge

    return open_fleet_knowledge(local)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from pyagent.cli.local_llm import local_llm
    from pyagent.improve.display import LiveDisplay, print_summary
    from pyagent.improve.project_config import python_files
    from pyagent.improve.run import ImproveError, ImproveOptions, RunInterrupted, improve
    from pyagent.model.status import Status
    from pyagent.pipeline.executor import ExecutorFactory

    if os.path.isdir(args.path) and not python_files(args.path):  # before anything is written
        raise CommandError(f"no Python files under {args.path}: nothing to improve")

    factory: ExecutorFactory | None = None
    kind, address = args.executor
    if args.swarm and kind != "local":
        raise CommandError("--swarm and --executor ray are two ways to spread the work; choose one")
    if args.swarm:
        from pyagent.voyager.swarm import swarm_executor_factory

        factory = swarm_executor_factory
    elif kind == "ray":
        from pyagent.pipeline.ray_executor import RayCluster, RayUnavailableError, ray_executor_factory

        try:  # before anything is measured: a missing extra or an unreachable cluster fails at once
            cluster = RayCluster.connect(address)
        except RayUnavailableError as exc:
            raise CommandError(str(exc)) from exc
        factory = ray_executor_factory(cluster)
    display = LiveDisplay()
    knowledge = _open_memory(args)
    opts = ImproveOptions(
        path=args.path,
        llm=args.llm,
        llm_base_url=args.llm_base_url,
        llm_api=args.llm_api,
        test_cmd=args.test_cmd,
        max_tasks=args.max_tasks,
        budget_usd=args.budget,
        budget_tokens=args.budget_tokens,
        concurrency=args.concurrency,
        max_complexity=args.max_complexity,
        test_timeout=args.test_timeout,
        dry_run=args.dry_run,
        use_git=not args.no_git,
        in_place=args.in_place,
        formatter=args.formatter,
        allow_few_tests=args.allow_few_tests,
        agents=args.agents,
        exclude=tuple(args.exclude),
        resume=args.resume,
        full_tests=args.full_tests,
        executor_factory=factory,
        knowledge=knowledge,
        on_progress=display,
        local_llm=local_llm,
    )
    try:
        with display:
            if args.swarm:  # voyager hook: pyzmq needs the selector loop on Windows
                from pyagent.voyager.loop import configure_event_loop_policy

                configure_event_loop_policy()
            result = asyncio.run(improve(opts))
    except ImproveError as exc:
        raise CommandError(str(exc)) from exc
    except RunInterrupted as exc:
        where = f"; report: {exc.report_dir / 'report.html'}" if exc.report_dir else ""
        display.console.print(f"pyagent improve: {exc}{where}")
        return 128 + exc.signum
    finally:
        if knowledge is not None:
            knowledge.close()
    if result.mode == "dry-run":
        for task in result.tasks:
            if task.status is Status.KEPT and task.diff:
                display.console.print(task.diff, markup=False, highlight=False, end="")
    print_summary(result, display.console)
    return 1 if result.regressions() else 0
