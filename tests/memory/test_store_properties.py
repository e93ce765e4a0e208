"""Property tests: the store behaves like a dict keyed by (namespace, key), prefix queries included."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyagent.memory import KnowledgeStore

# Text that SQLite can hold (no lone surrogates), with the edge cases of prefix ranges in it.
_text = st.text(
    alphabet=st.one_of(st.sampled_from(["a", "b", "\U0010ffff", "\ud7ff", "\ue000", "é", "/"]),
                       st.characters(blacklist_categories=("Cs",))),
    min_size=1, max_size=6,
)
_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
_ops = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(["n1", "n2"]), _text, _value), max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, prefixes=st.lists(_text, min_size=1, max_size=4))
def test_store_matches_a_dict_model(ops: list[tuple[str, str, str, Any]], prefixes: list[str]) -> None:
    model: dict[tuple[str, str], Any] = {}
    with tempfile.TemporaryDirectory() as tmp, KnowledgeStore(Path(tmp) / "m.db", synchronous="normal") as store:
        for op, ns, key, value in ops:
            if op == "put":
                store.put(ns, key, value)
                model[(ns, key)] = value
            else:
                assert store.delete(ns, key) == ((ns, key) in model)
                model.pop((ns, key), None)
        for (ns, key), value in model.items():
            assert store.get(ns, key) == value
        for ns in ("n1", "n2"):
            for prefix in [*prefixes, ""]:
                expected = sorted(k for (n, k) in model if n == ns and k.startswith(prefix))
                expected.sort(key=lambda k: k.encode("utf-8"))
                assert [f.key for f in store.query(ns, prefix)] == expected
