"""NeuralPruningEngine: synaptic decay with exact numbers, reinforcement, pruning, routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pyagent.memory import KnowledgeStore, NeuralPruningEngine, PruningParams


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KnowledgeStore]:
    s = KnowledgeStore(tmp_path / "m.db", synchronous="normal")
    yield s
    s.close()


def _tick_to(engine: NeuralPruningEngine, cycle: int) -> None:
    while engine.store.cycle < cycle:
        engine.tick()


def test_idle_decay_exact_numbers_and_pruning(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store)  # defaults: half_life 50, decay 0.5, threshold 0.2
    store.put("facts", "idle", "v", weight=1.0)
    _tick_to(engine, 49)
    assert engine.weight("facts", "idle") == 1.0
    _tick_to(engine, 50)
    assert engine.weight("facts", "idle") == 0.5
    _tick_to(engine, 99)
    assert engine.weight("facts", "idle") == 0.5
    _tick_to(engine, 100)
    assert engine.weight("facts", "idle") == 0.25
    assert store.get("facts", "idle") == "v"  # 0.25 >= 0.2: kept
    _tick_to(engine, 149)
    assert store.get("facts", "idle") == "v"
    assert engine.decayed(1.0, 150) == 0.125
    engine.tick()  # cycle 150: 0.125 < 0.2, pruned by this tick
    assert store.cycle == 150
    assert store.fact("facts", "idle") is None


def test_use_at_cycle_49_resets_idleness(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store)
    store.put("facts", "used", "v", weight=1.0)
    _tick_to(engine, 49)
    assert engine.use("facts", "used") == 1.0
    _tick_to(engine, 50)
    assert engine.weight("facts", "used") == 1.0  # not halved: idle for 1 cycle only
    _tick_to(engine, 98)
    assert engine.weight("facts", "used") == 1.0
    _tick_to(engine, 99)
    assert engine.weight("facts", "used") == 0.5  # 50 idle cycles since the use at 49


def test_reinforce_weaken_and_prune_on_failure(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store, reinforce=0.25, weaken=0.5, max_weight=1.5)
    store.put("n", "k", 1)
    assert engine.use("n", "k", success=True) == 1.25
    assert engine.use("n", "k", success=True) == 1.5
    assert engine.use("n", "k", success=True) == 1.5  # capped at max_weight
    assert engine.use("n", "k", success=False) == 0.75
    assert engine.use("n", "k", success=False) == 0.375
    assert engine.use("n", "k", success=False) is None  # 0.1875 < 0.2: pruned now
    assert store.fact("n", "k") is None
    assert engine.use("n", "absent") is None


def test_use_materialises_decay_before_reinforcing(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store, reinforce=0.1)
    store.put("n", "k", 1)
    engine.tick(100)  # idle 100 -> 0.25
    assert engine.use("n", "k", success=True) == pytest.approx(0.35)
    fact = store.fact("n", "k")
    assert fact is not None and fact.last_used_cycle == 100 and fact.weight == pytest.approx(0.35)


def test_tick_prunes_edges_too(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store)
    store.relate("a", "b", "c")
    store.advance(140)
    store.relate("a", "b", "d")  # used at 140
    for _ in range(10):
        engine.tick()
    assert store.edge("a", "b", "c") is None
    assert store.edge("a", "b", "d") is not None


def test_configurable_parameters_and_full_prune(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store, half_life=10, decay=0.9, threshold=0.5, prune_every=5)
    store.put("n", "a", 1, weight=1.0)
    store.put("n", "b", 1, weight=0.6)
    engine.tick(10)
    assert engine.weight("n", "a") == pytest.approx(0.9)
    assert engine.weight("n", "b") == pytest.approx(0.54)
    engine.tick(10)  # b: 0.6 * 0.81 = 0.486 < 0.5
    assert store.fact("n", "b") is None and store.fact("n", "a") is not None
    store.put("n", "low", 1, weight=0.1)  # below threshold from the start: the next full pass removes it
    report = engine.prune()
    assert (report.facts, store.fact("n", "low")) == (1, None)


def test_prune_every_skips_passes(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store, prune_every=100)
    store.put("n", "k", 1)
    for _ in range(150):
        engine.tick()
    assert store.fact("n", "k") is not None  # 0.125 but no pass since cycle 100
    for _ in range(50):
        engine.tick()
    assert store.fact("n", "k") is None  # pruned by the pass at cycle 200


def test_params_are_persisted_in_the_store(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with KnowledgeStore(path) as s:
        NeuralPruningEngine(s, threshold=0.3, half_life=7)
    with KnowledgeStore(path) as s:
        engine = NeuralPruningEngine(s)
        assert (engine.params.threshold, engine.params.half_life) == (0.3, 7)


@pytest.mark.parametrize(
    "bad",
    [{"half_life": 0}, {"decay": 0.0}, {"decay": 1.5}, {"threshold": -1.0}, {"weaken": 2.0},
     {"max_weight": 0.0}, {"prune_every": 0}, {"initial_weight": 5.0}, {"reinforce": float("inf")}],
)
def test_invalid_parameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PruningParams(**bad)  # type: ignore[arg-type]


def test_routes_learn_and_pick_agents(store: KnowledgeStore) -> None:
    engine = NeuralPruningEngine(store)
    assert engine.route_weight("coder", "refactor") == 1.0  # the prior
    assert engine.record_route("coder", "refactor", success=True) == pytest.approx(1.1)
    assert engine.record_route("linter", "refactor", success=False) == 0.5
    assert engine.best_agent("refactor", ["linter", "coder", "fresh"]) == "coder"
    assert engine.best_agent("refactor", ["linter", "fresh"]) == "fresh"
    route = engine.route("linter", "refactor")
    assert route is not None and (route.successes, route.failures) == (0, 1)
    assert engine.record_route("linter", "refactor", success=False) == 0.25
    # more failures: floored at the threshold (still known as bad), not pruned and forgotten
    assert engine.record_route("linter", "refactor", success=False) == 0.2
    assert engine.record_route("linter", "refactor", success=False) == 0.2
    assert engine.route("linter", "refactor").failures == 4  # type: ignore[union-attr]
    assert engine.best_agent("refactor", ["linter", "fresh"]) == "fresh"
    for _ in range(49):
        engine.tick()
    assert engine.route_weight("linter", "refactor") == 0.2
    engine.tick()  # 50 idle cycles: 0.1 < 0.2, pruned: forgotten, back to the prior
    assert engine.route("linter", "refactor") is None
    assert engine.route_weight("linter", "refactor") == 1.0
    assert [r.agent for r in engine.routes("refactor")] == ["coder"]
    engine.tick(50)
    assert engine.route_weight("coder", "refactor") == pytest.approx(1.1 * 0.25)
