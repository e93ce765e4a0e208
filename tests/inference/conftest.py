"""Fixtures for the inference tests: a tiny random Llama checkpoint written by the product itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyagent.inference.tiny import init_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (downloaded once into a cache outside the repo)."""
    from tests.model_files import smollm2_gguf

    return smollm2_gguf()
