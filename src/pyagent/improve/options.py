"""What a caller gives ``pyagent improve`` (``ImproveOptions``) and what stops a run before or during it."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient
    from pyagent.agents.llm.factory import LocalBackend
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.pipeline.executor import ExecutorFactory

__all__ = ["ImproveError", "ImproveOptions", "RunInterrupted", "new_run_id"]


class ImproveError(Exception):
    """A run that cannot start (bad path, bad options); the message says what to do."""


class RunInterrupted(Exception):
    """SIGTERM or SIGHUP ended the run after it cleaned up and wrote its report."""

    def __init__(self, signum: int, report_dir: Path | None) -> None:
        self.signum = signum
        self.report_dir = report_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@dataclass
class ImproveOptions:
    path: str | os.PathLike[str]
    llm: str | None = None
    llm_base_url: str | None = None
    llm_api: str = "auto"
    test_cmd: str | None = None
    max_tasks: int | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    concurrency: int = 2
    dry_run: bool = False
    max_complexity: int | None = None  # None: [tool.pyagent] max-complexity, else 10
    test_timeout: float = 300.0
    use_git: bool = True
    in_place: bool = False  # outside git: change files in place (else the run is a dry run)
    formatter: str | None = None  # ruff | black | none | auto; None: [tool.pyagent], else auto
    allow_few_tests: bool | None = None  # gate on a baseline of 0 or 1 test
    agents: tuple[str, ...] | None = None  # None: [tool.pyagent] agents, else all
    exclude: tuple[str, ...] = ()  # added to [tool.pyagent] exclude
    resume: bool = False  # continue the newest unfinished git run of this project
    executor_factory: ExecutorFactory | None = None
    knowledge: KnowledgeBackend | None = None
    on_progress: Callable[[dict[str, Any]], None] | None = None
    run_id: str | None = None
    llm_client: LLMClient | None = None  # a ready client (tests, embedding); wins over ``llm``
    test_env: dict[str, str] = field(default_factory=dict)  # extra variables for the test command
    full_tests: bool = False  # verify every change with the whole suite (no test-impact selection)
    local_llm: LocalBackend | None = None  # what `--llm local:DIR` runs on, passed in by the CLI


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
