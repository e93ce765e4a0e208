"""AgentTask and ChangeSet: wire round trips, digests, and refusing malformed wire data."""

from __future__ import annotations

import msgpack
import pytest

from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask, ChangeSet, WireError, content_hash
from pyagent.model.verification import Check, RemoteRun, Usage, Verdict, Verification


def _task() -> AgentTask:
    return AgentTask(
        id="t1",
        agent="lint",
        kind="ruff-fix",
        target="pkg/mod.py",
        files=("pkg/mod.py",),
        priority=AgentPriority.HIGH,
        context=CascadeContext.root("improve"),
        params={"rule": "F401", "count": 2},
    )


def _cs(**kw: object) -> ChangeSet:
    base: dict[str, object] = {
        "task_id": "t1",
        "changes": {"a.py": b"x = 1\n", "b.py": None},
        "base_hashes": {"a.py": content_hash(b"x=1\n"), "b.py": content_hash(b"")},
        "verification": Verification(
            Verdict.VERIFIED,
            "parses, tests pass",
            metrics={"a.py": {"mi": [50.0, 52.5]}},
            tests={"passed": 3, "failed": 0},
            remote=RemoteRun(42, "root-1", ("root-1", "t1")),
            node="peer-a",
        ),
        "reason": "ruff safe fix",
        "usage": Usage(tokens=120, cost=0.25, calls=2),
        "note": "fixed F401",
    }
    base.update(kw)
    return ChangeSet(**base)  # type: ignore[arg-type]


def test_task_round_trips_through_msgpack() -> None:
    task = _task()
    wire = msgpack.unpackb(msgpack.packb(task.to_wire(), use_bin_type=True), raw=False)
    back = AgentTask.from_wire(wire)
    assert back.id == task.id and back.files == task.files and back.params == task.params
    assert back.priority is AgentPriority.HIGH
    assert back.context.task_id == task.context.task_id
    assert back.context.root_task_id == task.context.root_task_id


def test_changeset_round_trips_and_keeps_digest() -> None:
    cs = _cs()
    wire = msgpack.unpackb(msgpack.packb(cs.to_wire(), use_bin_type=True), raw=False)
    back = ChangeSet.from_wire(wire)
    assert back == cs
    assert back.digest == cs.digest
    assert back.changes["b.py"] is None


def test_digest_ignores_dict_order_but_not_content() -> None:
    a = _cs(changes={"a.py": b"1", "b.py": b"2"})
    b = _cs(changes={"b.py": b"2", "a.py": b"1"})
    c = _cs(changes={"a.py": b"1", "b.py": b"3"})
    assert a.digest == b.digest
    assert a.digest != c.digest
    # the verdict is not part of the change's identity
    assert _cs(verification=Verification(Verdict.REJECTED, "no", Check.TESTS)).digest == _cs().digest


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("changes"), "missing field 'changes'"),
        (lambda d: d.__setitem__("changes", {"a.py": "text, not bytes"}), "bad change entry"),
        (lambda d: d.__setitem__("base_hashes", {"a.py": 3}), "base_hashes"),
        (lambda d: d.__setitem__("digest", "0" * 64), "digest does not match"),
        (lambda d: d.__setitem__("reason", 5), "field 'reason'"),
        (lambda d: d["verification"].__setitem__("status", "fine"), "verdict must be one of"),
        (lambda d: d["verification"].__setitem__("check", "vibes"), "check must be one of"),
        (lambda d: d["verification"]["remote"].pop("root_task_id"), "bad remote run"),
        (lambda d: d["usage"].__setitem__("tokens", "many"), "bad usage"),
        (lambda d: d["usage"].__setitem__("cost", -1.0), "cannot be negative"),
        (lambda d: d.pop("note"), "missing field 'note'"),
    ],
)
def test_bad_changeset_wire_is_refused(mutate: object, message: str) -> None:
    wire = _cs().to_wire()
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(WireError, match=message):
        ChangeSet.from_wire(wire)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("files", [1], "files"), ("priority", 9, "bad priority"), ("id", None, "field 'id'")],
)
def test_bad_task_wire_is_refused(key: str, value: object, message: str) -> None:
    wire = _task().to_wire()
    wire[key] = value
    with pytest.raises(WireError, match=message):
        AgentTask.from_wire(wire)


def test_not_a_dict_is_refused() -> None:
    with pytest.raises(WireError, match="expected a dict"):
        ChangeSet.from_wire([1, 2])  # type: ignore[arg-type]


def test_a_remote_run_keeps_when_the_worker_ran_it() -> None:
    ran = RemoteRun(7, "root-1", ("root-1", "t1"), started=1000.5, ended=1002.25)
    cs = _cs(verification=Verification(Verdict.VERIFIED, "ok", remote=ran, node="ray:abc"))
    back = ChangeSet.from_wire(msgpack.unpackb(msgpack.packb(cs.to_wire(), use_bin_type=True), raw=False))
    assert back.verification.remote == ran
    assert "started" not in RemoteRun(7, "r", ("r",)).to_wire()  # a peer that does not say stays as it was
    with pytest.raises(ValueError, match="start and end must be times"):
        RemoteRun.from_wire({"pid": 7, "root_task_id": "r", "lineage": ["r"], "started": "noon"})
