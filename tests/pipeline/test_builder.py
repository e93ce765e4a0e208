"""One pipeline builder: a peer judges a change with the origin's test command, environment and limits."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask, ChangeSet, content_hash
from pyagent.pipeline.settings import PipelineSettings
from pyagent.pipeline.workspace import project_files
from pyagent.voyager.blobs import BlobStore, blob_hash
from pyagent.voyager.tasks import run_payload
from tests.improve_helpers import make_project

MOD = "pkg/mod.py"
# Passes only when the origin's --test-env reached the peer's test command.
ENV_PROBE = f"{sys.executable} -c \"import os, sys; sys.exit(os.environ.get('PYAGENT_PROBE') != 'origin')\""


def _payload(root: Path, blobs: Path, settings: dict[str, object]) -> dict[str, object]:
    """What SwarmExecutor sends a node for one task, with the project's blobs already on the node."""
    store = BlobStore(blobs)
    manifest = {}
    for rel in project_files(root):
        data = (root / rel).read_bytes()
        store.put(blob_hash(data), data)
        manifest[rel] = blob_hash(data)
    task = AgentTask(
        id="t-1", agent="modernize", kind="ruff-fix", target=MOD, files=(MOD,),
        priority=AgentPriority.STANDARD, context=CascadeContext.root("improve"), params={"rule": "UP006"},
    )
    source = (root / MOD).read_bytes()
    return {
        "task": task.to_wire(), "files": {MOD: source}, "base_hashes": {MOD: content_hash(source)},
        "manifest": manifest, "blob_dir": str(blobs), "pipeline": settings,
    }


def test_the_peer_runs_the_origins_test_env(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    settings = PipelineSettings(test_cmd=ENV_PROBE, test_env={"PYAGENT_PROBE": "origin"})
    change = ChangeSet.from_wire(asyncio.run(run_payload(_payload(root, tmp_path / "blobs", settings.to_wire()))))
    assert change.passed, change.reason
    assert change.verification.tests["failed"] == 0 and change.verification.tests["passed"] >= 1


def test_without_the_env_the_same_command_fails_on_the_peer(tmp_path: Path) -> None:
    """The control for the test above: the probe really depends on the variable."""
    root = make_project(tmp_path / "p")
    change = ChangeSet.from_wire(asyncio.run(run_payload(_payload(root, tmp_path / "blobs", {"test_cmd": ENV_PROBE}))))
    assert change.verification.tests["failed"] >= 1


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([], "must be a mapping"),
        ({"test_cmd": ["ls"]}, "test_cmd"),
        ({"test_timeout": 0}, "test_timeout"),
        ({"test_timeout": float("nan")}, "test_timeout"),
        ({"test_env": {"A": 1}}, "test_env"),
        ({"max_complexity": True}, "max_complexity"),
    ],
)
def test_malformed_settings_from_an_origin_are_refused(wire: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineSettings.from_wire(wire)


def test_settings_survive_the_wire() -> None:
    settings = PipelineSettings(test_cmd="make test", test_timeout=12.5, test_env={"X": "1"}, max_complexity=7)
    assert PipelineSettings.from_wire(settings.to_wire()) == settings
