"""The event log: one orjson line per event, parseable, lineage ids present, no secrets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from pyagent.fleet.core import FleetManager, TaskControl
from pyagent.fleet.events import EventLog, EventLogError, FleetEvent, read_events
from pyagent.model.context import CascadeContext

SECRET = "sk-" + "Zq8" * 10


def test_fleet_run_writes_parseable_redacted_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_API_KEY", "acme-very-secret-1")
    path = tmp_path / "logs" / "events.jsonl"

    async def main() -> None:
        async def child(c: TaskControl) -> None:
            c.emit("llm.call", outcome="ok", tokens=321, detail={"prompt": f"use {SECRET}", "api_key": "acme-very-secret-1"})

        async def parent(c: TaskControl) -> None:
            await c.wait(c.spawn("coder", "fix a.py", child))
            raise RuntimeError(f"upstream said: invalid key acme-very-secret-1 ({SECRET})")

        with EventLog(path) as log:
            async with FleetManager(2, on_event=log) as fleet:
                h = fleet.submit("planner", parent, context=CascadeContext.root("planner"))
                with pytest.raises(RuntimeError):
                    await h.result()

    asyncio.run(main())
    raw = path.read_bytes()
    assert SECRET.encode() not in raw and b"acme-very-secret-1" not in raw
    lines = raw.splitlines()
    records = [orjson.loads(line) for line in lines]
    assert records == list(read_events(path))
    kinds = [(r["kind"], r["agent"]) for r in records]
    assert ("agent", "coder") in kinds and ("finished", "planner") in kinds
    llm = next(r for r in records if r["kind"] == "agent")
    assert llm["tokens"] == 321 and llm["action"] == "llm.call" and llm["outcome"] == "ok"
    assert len(llm["lineage"]) == 2 and llm["lineage"][0] == llm["root_task_id"]
    assert llm["detail"]["api_key"] == "[REDACTED]" and "[REDACTED]" in llm["detail"]["prompt"]
    failed = next(r for r in records if r["kind"] == "finished" and r["agent"] == "planner")
    assert failed["outcome"] == "failed" and "RuntimeError" in failed["detail"] and failed["duration"] >= 0
    for r in records:
        assert {"time", "kind", "task_id", "root_task_id", "lineage", "agent", "action", "outcome", "tokens", "duration"} <= set(r)


def test_torn_last_line_is_skipped_but_corruption_inside_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with EventLog(path) as log:
        log(FleetEvent(time=1.0, kind="queued", task_id="t", root_task_id="t", agent="a", action="x"))
        log({"kind": "custom", "n": 1})
    with open(path, "ab") as fh:
        fh.write(b'{"kind": "torn')
    assert [r["kind"] for r in read_events(path)] == ["queued", "custom"]
    path.write_bytes(b'{"kind": "ok"}\nnot json\n{"kind": "ok"}\n')
    with pytest.raises(EventLogError, match=r"e.jsonl:2: not a JSON line"):
        list(read_events(path))
    path.write_bytes(b'[1, 2]\n{"kind": "ok"}\n')
    with pytest.raises(EventLogError, match="expected a JSON object"):
        list(read_events(path))


def test_closed_log_refuses_writes(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl")
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log({"kind": "late"})


def test_async_event_stream_ends_at_shutdown() -> None:
    async def main() -> list[tuple[str, str | None]]:
        seen: list[tuple[str, str | None]] = []
        fleet = FleetManager(1)

        async def consume() -> None:
            async for e in fleet.events():
                seen.append((e.kind, e.outcome))

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0)

        async def ok(c: TaskControl) -> int:
            return 1

        assert await fleet.run("x", ok) == 1
        await fleet.shutdown()
        await asyncio.wait_for(consumer, 5)
        return seen

    assert asyncio.run(main()) == [("queued", None), ("started", None), ("finished", "done")]


def test_callbacks_already_receive_redacted_details() -> None:
    seen: list[FleetEvent] = []

    async def main() -> None:
        async def leaky(c: TaskControl) -> None:
            c.emit("llm.call", detail={"prompt": f"key {SECRET}", "password": "hunter22"})
            raise ValueError(f"bad key {SECRET}")

        async with FleetManager(1, on_event=seen.append) as fleet:
            with pytest.raises(ValueError):
                await fleet.submit("x", leaky).result()

    asyncio.run(main())
    text = repr([e.to_dict() for e in seen])
    assert SECRET not in text and "hunter22" not in text
    assert any(e.kind == "finished" and "ValueError: bad key [REDACTED]" in str(e.detail) for e in seen)


def test_event_log_is_thread_safe(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "e.jsonl"
    with EventLog(path) as log:

        def writer(n: int) -> None:
            for i in range(200):
                log({"kind": "t", "writer": n, "i": i, "pad": "x" * 500})

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = list(read_events(path))
    assert len(records) == 800
    assert sorted((r["writer"], r["i"]) for r in records) == [(n, i) for n in range(4) for i in range(200)]
