"""What a node's worker process does with one teleported task.

The project arrives as a manifest of blobs the node already holds; the task's own files arrive
with it (their base hashes were checked by the node). The worker rebuilds the project in a fresh
folder and runs the improve pipeline's :func:`pyagent.pipeline.remote.execute_task_async` there, built from
the origin's pipeline settings: the same agents and verification gate as a local run, so a remote change is judged exactly like a local one.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyagent.voyager.blobs import BlobStore


async def run_payload(payload: dict[str, Any]) -> dict[str, Any]:
    from pyagent.model.task import AgentTask
    from pyagent.model.verification import RemoteRun
    from pyagent.pipeline.remote import execute_task_async
    from pyagent.pipeline.settings import PipelineSettings

    task = AgentTask.from_wire(payload["task"])
    settings = PipelineSettings.from_wire(payload.get("pipeline", {}))
    store = BlobStore(payload["blob_dir"])
    with tempfile.TemporaryDirectory(prefix="pyagent-task-") as workdir:
        await asyncio.to_thread(store.materialize, payload["manifest"], Path(workdir))
        change = await execute_task_async(task, payload["files"], workdir=workdir, settings=settings)
    # Lineage stays one across nodes: report the chain this node ran under, for the origin to check.
    ran = RemoteRun(os.getpid(), task.context.root_task_id, tuple(entry.task_id for entry in task.context.lineage))
    change = replace(change, verification=replace(change.verification, remote=ran))
    wire: dict[str, Any] = change.to_wire()
    return wire
