"""The SQLite response store: persistence across reopen, retention, chains, pagination, cascade delete."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pyagent.server.store import ResponseStore


def _resp(rid: str, prev: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {"id": rid, "status": status, "previous_response_id": prev, "output": []}


def _items(rid: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{rid}-item{i}", "type": "message", "role": "user", "content": []} for i in range(n)]


def test_survives_reopen_and_stores_events(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "responses.db"
    store = ResponseStore(db)
    store.insert(_resp("r1", status="in_progress"), _items("r1", 2))
    final = _resp("r1")
    events = [{"type": "response.created", "sequence_number": i} for i in range(3)]
    assert store.update(final, events)
    store.close()
    again = ResponseStore(db)
    got = again.get("r1")
    assert got is not None and got.status == "completed" and got.body == final
    assert [e["sequence_number"] for e in again.events("r1", starting_after=0)] == [1, 2]
    assert [it["id"] for it in again.input_items("r1")] == ["r1-item0", "r1-item1"]


def test_update_of_a_deleted_response_reports_it(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "s.db")
    store.insert(_resp("r1"), [])
    assert store.delete("r1")
    assert not store.delete("r1")
    assert not store.update(_resp("r1"), [])


def test_delete_cascades_to_items_and_events(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "s.db")
    store.insert(_resp("r1"), _items("r1", 3))
    store.update(_resp("r1"), [{"type": "x", "sequence_number": 0}])
    store.delete("r1")
    assert store.input_items("r1") == [] and store.events("r1") == []


def test_retention_by_count_prunes_oldest_on_write(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "s.db", max_responses=3)
    for i in range(5):
        store.insert(_resp(f"r{i}"), _items(f"r{i}", 1))
    assert store.count() == 3
    assert store.get("r0") is None and store.get("r1") is None and store.get("r4") is not None
    assert store.input_items("r0") == []


def test_retention_by_age(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "s.db", max_age_seconds=0.05)
    store.insert(_resp("old"), [])
    time.sleep(0.1)
    store.insert(_resp("new"), [])
    assert store.get("old") is None and store.get("new") is not None


def test_chain_is_oldest_first_and_names_missing_links(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "s.db")
    store.insert(_resp("a"), [])
    store.insert(_resp("b", "a"), [])
    store.insert(_resp("c", "b"), [])
    assert [r.id for r in store.chain("c")] == ["a", "b", "c"]
    store.delete("a")
    with pytest.raises(KeyError):
        store.chain("c")


def test_input_item_pagination(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "s.db")
    store.insert(_resp("r"), _items("r", 5))
    page, more = store.list_input_items("r", after=None, limit=2, order="asc")
    assert [p["id"] for p in page] == ["r-item0", "r-item1"] and more
    page, more = store.list_input_items("r", after="r-item1", limit=10, order="asc")
    assert [p["id"] for p in page] == ["r-item2", "r-item3", "r-item4"] and not more
    page, more = store.list_input_items("r", after=None, limit=2, order="desc")
    assert [p["id"] for p in page] == ["r-item4", "r-item3"] and more
    with pytest.raises(KeyError):
        store.list_input_items("r", after="nope", limit=2, order="asc")


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_responses"):
        ResponseStore(tmp_path / "s.db", max_responses=0)
    with pytest.raises(ValueError, match="max_age_seconds"):
        ResponseStore(tmp_path / "s.db", max_age_seconds=0)
