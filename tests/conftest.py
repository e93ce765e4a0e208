"""Shared fixtures for the whole suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pyagent_cmd() -> list[str]:
    """The CLI as a real subprocess: the installed console script's entry point."""
    return [sys.executable, "-m", "pyagent"]


@pytest.fixture
def clean_env() -> dict[str, str]:
    """An environment for CLI subprocesses with no colour codes in their output."""
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env.pop("FORCE_COLOR", None)
    return env
