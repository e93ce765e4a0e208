"""KnowledgeStore on real SQLite files: facts, relations, semantic search, bad input."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyagent.memory import KnowledgeStore, StoreError
from pyagent.memory.embedders import HashingEmbedder
from pyagent.memory.store import prefix_end


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KnowledgeStore]:
    s = KnowledgeStore(tmp_path / ".pyagent" / "memory.db")
    yield s
    s.close()


def test_put_get_roundtrip_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with KnowledgeStore(path) as s:
        s.put("files", "a.py", {"hash": "ab12", "lines": [1, 2, 3], "blob": b"\x00\xff"}, provenance=["root", "t1"])
        s.put("files", "b.py", 7, weight=0.75)
        assert s.get("files", "missing") is None
        assert s.get("files", "missing", default="d") == "d"
    with KnowledgeStore(path) as s:
        assert s.get("files", "a.py") == {"hash": "ab12", "lines": [1, 2, 3], "blob": b"\x00\xff"}
        fact = s.fact("files", "b.py")
        assert fact is not None and fact.value == 7 and fact.weight == 0.75
        assert s.fact("files", "a.py").provenance == ("root", "t1")  # type: ignore[union-attr]
        assert s.namespaces() == {"files": 2}


def test_put_replaces_value_and_records_cycles(store: KnowledgeStore) -> None:
    store.put("ns", "k", 1, provenance=["a"])
    store.advance(5)
    store.put("ns", "k", 2, provenance=["b"])
    fact = store.fact("ns", "k")
    assert fact is not None
    assert (fact.value, fact.created_cycle, fact.last_used_cycle, fact.provenance) == (2, 5, 5, ("b",))


def test_query_by_namespace_and_prefix(store: KnowledgeStore) -> None:
    store.put_many("a", {"x1": 1, "x2": 2, "xa": 3, "y": 4, "x\U0010ffffz": 5})
    store.put_many("b", {"x1": 10})
    assert [f.key for f in store.query("a", "x")] == ["x1", "x2", "xa", "x\U0010ffffz"]
    assert [f.key for f in store.query("a", "x", limit=2)] == ["x1", "x2"]
    assert [f.value for f in store.query("a")] == [1, 2, 3, 5, 4]
    assert [f.key for f in store.query("a", "x\U0010ffff")] == ["x\U0010ffffz"]
    assert store.query("a", "zz") == []
    assert [f.value for f in store.query("b", "x")] == [10]


def test_prefix_end_bounds() -> None:
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("\ud7ff") == "\ue000"


def test_get_many_batches(store: KnowledgeStore) -> None:
    store.put_many("n", ((f"k{i}", i) for i in range(1200)))
    got = store.get_many("n", [f"k{i}" for i in range(0, 1300, 3)])
    assert got == {f"k{i}": i for i in range(0, 1200, 3)}


def test_bad_values_are_refused_and_nothing_is_written(store: KnowledgeStore) -> None:
    store.put("n", "keep", 1)
    with pytest.raises(TypeError, match="msgpack-encodable"):
        store.put_many("n", [("a", 1), ("b", object())])
    with pytest.raises(TypeError, match="cannot be stored"):
        store.put("n", "big", 1 << 70)
    assert store.counts()["facts"] == 1
    with pytest.raises(ValueError, match="namespace"):
        store.put("", "k", 1)
    with pytest.raises(ValueError, match="key"):
        store.put("n", "", 1)
    with pytest.raises(ValueError, match="weight"):
        store.put("n", "k", 1, weight=float("nan"))
    with pytest.raises(ValueError, match="weight"):
        store.put("n", "k", 1, weight=-1)
    with pytest.raises(ValueError, match="UTF-8"):
        store.put("n", "\udc80", 1)
    assert store.get("n", "keep") == 1 and store.counts()["facts"] == 1


def test_batch_is_all_or_nothing(store: KnowledgeStore) -> None:
    with pytest.raises(RuntimeError), store.batch():
        store.put("n", "a", 1)
        store.relate("x", "y", "z")
        raise RuntimeError("boom")
    assert store.counts() == {"facts": 0, "edges": 0, "docs": 0}


def test_not_a_store_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a PyAgent knowledge store"):
        KnowledgeStore(junk)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE people(name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="people"):
        KnowledgeStore(foreign)
    with pytest.raises(StoreError, match="no knowledge store"):
        KnowledgeStore(tmp_path / "absent.db", readonly=True)


def test_readonly_store_reads_but_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with KnowledgeStore(path) as s:
        s.put("n", "k", "v")
    with KnowledgeStore(path, readonly=True) as ro:
        assert ro.get("n", "k") == "v"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.put("n", "k2", 1)


def test_two_handles_see_each_others_commits(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with KnowledgeStore(path) as a, KnowledgeStore(path) as b:
        a.put("n", "k", 1)
        assert b.get("n", "k") == 1
        b.advance(3)
        assert a.cycle == 3


def test_neighbours_and_paths(store: KnowledgeStore) -> None:
    store.relate("coder", "fixed", "a.py")
    store.relate("coder", "broke", "b.py", weight=0.5)
    store.relate("tester", "fixed", "a.py")
    store.relate("a.py", "imports", "b.py")
    store.relate("b.py", "imports", "c.py")
    out = store.neighbours("coder")
    assert sorted((e.predicate, e.object) for e in out) == [("broke", "b.py"), ("fixed", "a.py")]
    incoming = store.neighbours("a.py", direction="in")
    assert sorted(e.subject for e in incoming) == ["coder", "tester"]
    assert [e.object for e in store.neighbours("coder", predicate="fixed")] == ["a.py"]
    assert len(store.neighbours("a.py", direction="both")) == 3
    path = store.shortest_path("coder", "c.py")
    assert path is not None and len(path) == 2  # shortest: coder -broke-> b.py -imports-> c.py
    assert [(e.subject, e.object) for e in path] == [("coder", "b.py"), ("b.py", "c.py")]
    imports_only = store.shortest_path("coder", "c.py", predicate="imports")
    assert imports_only is None
    assert store.shortest_path("a.py", "c.py", predicate="imports") is not None
    assert store.shortest_path("coder", "c.py", max_depth=1) is None
    assert store.shortest_path("c.py", "coder") is None
    assert store.shortest_path("x", "x") == []
    assert store.unrelate("coder", "broke", "b.py") and not store.unrelate("coder", "broke", "b.py")
    assert [(e.subject, e.object) for e in store.shortest_path("coder", "c.py") or []] == [
        ("coder", "a.py"), ("a.py", "b.py"), ("b.py", "c.py")]


def test_path_is_bounded_on_a_long_chain(store: KnowledgeStore) -> None:
    with store.batch():
        for i in range(300):
            store.relate(f"n{i}", "next", f"n{i + 1}")
    assert store.shortest_path("n0", "n300", max_depth=299) is None
    found = store.shortest_path("n0", "n300", max_depth=300)
    assert found is not None and len(found) == 300
    assert store.shortest_path("n0", "n300", max_depth=300, max_nodes=50) is None


def test_semantic_search_ranks_lexically_similar_texts(store: KnowledgeStore) -> None:
    store.remember("errors", "1", "ImportError: No module named 'requests' in src/app/client.py")
    store.remember("errors", "2", "AssertionError: expected 3 got 4 in test_math")
    store.remember("errors", "3", "SyntaxError: invalid syntax (parser.py, line 12)")
    store.remember("notes", "4", "No module named yaml when importing config")
    hits = store.search("ModuleNotFoundError: No module named 'requests'", k=2)
    assert [h.key for h in hits] == ["1", "4"]
    assert hits[0].score > hits[1].score > 0.0
    assert [h.key for h in store.search("invalid syntax at line 7", k=1)] == ["3"]
    assert [h.key for h in store.search("no module named", k=5, namespace="notes")] == ["4"]
    store.forget("errors", "1")
    assert store.search("No module named 'requests'", k=1)[0].key == "4"


def test_store_refuses_to_mix_embedders(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with KnowledgeStore(path, embedder=HashingEmbedder(64)) as s:
        s.remember("n", "k", "hello world")
    with KnowledgeStore(path) as s:  # no embedder asked: the recorded one is used
        assert s.search("hello", k=1)[0].key == "k"
    with KnowledgeStore(path, embedder=HashingEmbedder(128)) as s, pytest.raises(StoreError, match="hashing-ngram-v1-64"):
        s.search("hello")


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    import numpy as np

    emb = HashingEmbedder(256)
    a = emb.embed(["the quick brown fox", "the quick brown fox", ""])
    assert a.shape == (3, 256) and a.dtype == np.float32
    assert np.array_equal(a[0], a[1])
    assert abs(float(np.linalg.norm(a[0])) - 1.0) < 1e-6
    assert float(np.linalg.norm(a[2])) == 0.0
