"""Snapshots: exact round trip of 100,000 facts, shard reuse, and every kind of damage refused."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from pyagent.memory import KnowledgeStore, SnapshotError, SnapshotPolicy, StoreError
from pyagent.memory.snapshot import MANIFEST, list_snapshots, read_manifest, verify_snapshot

N = 100_000


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store with 100,000 facts of mixed shapes, some edges and texts, and one snapshot of it."""
    root = tmp_path_factory.mktemp("big")
    path = root / "memory.db"
    with KnowledgeStore(path, synchronous="normal") as store:
        store.put_many("files", ((f"src/pkg/mod{i:06d}.py", {"hash": f"{i:064x}", "n": i, "ok": i % 3 == 0})
                                 for i in range(N // 2)), provenance=["root-1", "task-7"])
        store.advance(3)
        store.put_many("failures", ((f"k{i:06d}", [i, -i, 1.5 * i, None, "reason é✓", b"\x00\x01"])
                                    for i in range(N // 2)), weight=0.75)
        with store.batch():
            for i in range(500):
                store.relate(f"agent{i % 7}", "fixed", f"file{i}", weight=1.0 + i / 1000)
        store.remember_many("reasons", [(f"r{i}", f"test failed with error number {i}") for i in range(200)])
        store.snapshot(root / "snap")
    return path, root / "snap"


def test_100k_facts_survive_snapshot_and_restore_exactly(big: tuple[Path, Path], tmp_path: Path) -> None:
    path, snap = big
    manifest = read_manifest(snap)
    assert manifest["counts"] == {"facts": N, "edges": 500, "docs": 200}
    assert len(manifest["tables"]["facts"]["shards"]) > 10  # really sharded
    restored = KnowledgeStore.restore(snap, tmp_path / "restored.db")
    try:
        assert restored.counts() == {"facts": N, "edges": 500, "docs": 200}
        assert restored.cycle == 3
        assert restored.get("failures", "k012345") == [12345, -12345, 1.5 * 12345, None, "reason é✓", b"\x00\x01"]
        assert restored.search("error number 17", k=1)[0].key == "r17"
    finally:
        restored.close()
    for table in ("facts", "edges", "docs"):
        assert _rows(tmp_path / "restored.db", table) == _rows(path, table)


def test_unchanged_shards_are_reused(big: tuple[Path, Path], tmp_path: Path) -> None:
    path, snap = big
    work = tmp_path / "work.db"
    shutil.copy(path, work)
    copy = tmp_path / "snap"
    shutil.copytree(snap, copy)
    before = set(os.listdir(copy / "shards"))
    with KnowledgeStore(work) as store:
        store.put("files", "src/pkg/mod000123.py", {"changed": True})
        info = store.snapshot(copy)
    assert info.shards_written == 1 and info.shards_reused == info.shards - 1
    after = set(os.listdir(copy / "shards"))
    assert len(after - before) == 1 and len(before - after) == 1  # the replaced shard is collected
    verify_snapshot(copy)


def _damaged_copy(snap: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(snap, copy)
    return copy


def _refused(snap: Path, target: Path, names: Path) -> None:
    with pytest.raises(SnapshotError) as err:
        KnowledgeStore.restore(snap, target)
    assert str(names) in str(err.value) and err.value.path == str(names)
    assert not target.exists() and not target.parent.joinpath(target.name + "-wal").exists()


def test_flipped_byte_in_any_shard_is_refused(big: tuple[Path, Path], tmp_path: Path) -> None:
    _, snap = big
    copy = _damaged_copy(snap, tmp_path)
    shards = sorted((copy / "shards").iterdir())
    assert len(shards) > 10
    for shard in shards:
        data = bytearray(shard.read_bytes())
        original = bytes(data)
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
        _refused(copy, tmp_path / "out" / "m.db", shard)
        shard.write_bytes(original)
    KnowledgeStore.restore(copy, tmp_path / "ok.db").close()  # undamaged again: restores


def test_truncated_and_missing_shards_are_refused(big: tuple[Path, Path], tmp_path: Path) -> None:
    _, snap = big
    copy = _damaged_copy(snap, tmp_path)
    shards = sorted((copy / "shards").iterdir())
    truncated = shards[3]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    _refused(copy, tmp_path / "m.db", truncated)
    missing = shards[-1]
    shutil.copy(snap / "shards" / truncated.name, truncated)
    missing.unlink()
    _refused(copy, tmp_path / "m.db", missing)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "header", "garbage"])
def test_damaged_manifest_is_refused(big: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    _, snap = big
    copy = _damaged_copy(snap, tmp_path)
    manifest = copy / MANIFEST
    raw = bytearray(manifest.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x20
        manifest.write_bytes(bytes(raw))
    elif damage == "truncate":
        manifest.write_bytes(bytes(raw[: len(raw) // 3]))
    elif damage == "missing":
        manifest.unlink()
    elif damage == "header":
        manifest.write_bytes(bytes(raw).replace(b"blake3=", b"blake2="))
    else:
        manifest.write_bytes(b"\x00" * 64)
    _refused(copy, tmp_path / "m.db", manifest)


def test_restore_never_writes_over_an_existing_store(big: tuple[Path, Path], tmp_path: Path) -> None:
    _, snap = big
    live = tmp_path / "live.db"
    with KnowledgeStore(live) as store:
        store.put("n", "precious", 1)
    with pytest.raises(StoreError, match="refusing to restore over"):
        KnowledgeStore.restore(snap, live)
    with KnowledgeStore(live) as store:
        assert store.counts()["facts"] == 1 and store.get("n", "precious") == 1
    wal_only = tmp_path / "x.db"
    wal_only.with_name("x.db-wal").write_bytes(b"")
    with pytest.raises(StoreError, match=r"x\.db-wal"):
        KnowledgeStore.restore(snap, wal_only)


def test_snapshot_of_empty_store_restores(tmp_path: Path) -> None:
    with KnowledgeStore(tmp_path / "e.db") as store:
        info = store.snapshot(tmp_path / "snap")
    assert info.counts == {"facts": 0, "edges": 0, "docs": 0} and info.shards == 0
    with KnowledgeStore.restore(tmp_path / "snap", tmp_path / "r.db") as restored:
        assert restored.counts() == {"facts": 0, "edges": 0, "docs": 0}


def test_snapshot_policy_every_n_cycles_keeps_last_k(tmp_path: Path) -> None:
    policy = SnapshotPolicy(tmp_path / "snaps", every=3, keep=2)
    with KnowledgeStore(tmp_path / "m.db", synchronous="normal") as store:
        store.put_many("bulk", ((f"key{i:06d}", i) for i in range(20_000)))
        taken = []
        for cycle in range(1, 13):
            store.put("bulk", "key000000", -cycle)  # changes the first shard only
            store.advance()
            info = policy.on_cycle(store)
            if info is not None:
                taken.append((info.cycle, info.shards_written, info.shards_reused))
        assert [t[0] for t in taken] == [3, 6, 9, 12]
        assert all(written == 1 and reused >= 2 for _, written, reused in taken[1:])
        kept = list_snapshots(tmp_path / "snaps")
        assert [p.name for p in kept] == ["snap-000000000009", "snap-000000000012"]
        older, newer = (read_manifest(p) for p in kept)
        shared = {s["file"] for s in older["tables"]["facts"]["shards"]} & {
            s["file"] for s in newer["tables"]["facts"]["shards"]}
        assert shared and all(os.stat(kept[0] / f).st_ino == os.stat(kept[1] / f).st_ino for f in shared)
        with KnowledgeStore.restore(kept[-1], tmp_path / "r.db") as restored:
            assert restored.counts()["facts"] == 20_000 and restored.cycle == 12
            assert restored.get("bulk", "key000000") == -12
    with pytest.raises(ValueError):
        SnapshotPolicy(tmp_path, every=0)


def test_restore_removes_temporaries_of_a_killed_restore(tmp_path: Path) -> None:
    import subprocess
    import sys

    with KnowledgeStore(tmp_path / "m.db") as store:
        store.put("n", "k", 1)
        store.snapshot(tmp_path / "snap")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "out" / f".r.db.restore-{int(dead.stdout)}.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"half a database")
    with KnowledgeStore.restore(tmp_path / "snap", tmp_path / "out" / "r.db") as restored:
        assert restored.get("n", "k") == 1
    assert not stale.exists()
