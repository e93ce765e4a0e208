"""Fixtures for the KV transfer tests: a tiny random Llama checkpoint written by the product itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyagent.inference.tiny import init_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)
