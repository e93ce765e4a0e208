"""NeuralPruningEngine: synaptic decay and pruning of facts, edges and agent routes.

The clock is the *fleet execution cycle*: one task reaching a final state (done, failed, cancelled
or timed out) in ``FleetExecutionCore``; the core then calls ``KnowledgeBackend.tick()`` once,
which calls :meth:`NeuralPruningEngine.tick`, which advances the store's persistent cycle counter
by one. Wall-clock time plays no part, so a swarm that sits idle for a week forgets nothing.

Rules (all parameters in :class:`PruningParams`):

- *Idle* cycles of a row = current cycle - the cycle it was last used (put, reinforced, weakened
  or touched). Every full ``half_life`` (50) idle cycles multiply its weight by ``decay`` (0.5):
  ``weight(now) = stored_weight * decay ** ((now - last_used) // half_life)``. So 1.0 is 0.5 after
  50 idle cycles, 0.25 after 100, 0.125 after 150; a row used at cycle 49 starts counting again.
- A *use* resets idleness: the row's decayed weight becomes its stored weight at the current
  cycle. A success adds ``reinforce`` (capped at ``max_weight``); a failure multiplies by ``weaken``.
- A row whose weight falls below ``threshold`` (0.2) is pruned (deleted): at the use that
  weakened it, or at the tick when its idle time crosses a multiple of ``half_life``.
- Decay is lazy: the stored weight is only rewritten on use, and a tick examines only the rows
  whose idle time just reached a multiple of ``half_life`` (the only rows whose weight changed).

Routes (agent x task kind) are facts in the namespace ``pyagent.routes``. A route nobody knows
has the prior weight ``initial_weight``. Failures weaken a route down to ``threshold`` but not
below, so an agent that keeps failing stays known as bad; once nobody uses the route for
``half_life`` cycles it decays below the threshold, is pruned and forgotten, and goes back to the
prior: an agent that failed long ago gets another chance (exploration). The fleet picks agents by route weight (:meth:`NeuralPruningEngine.best_agent`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from pyagent.memory.store import MAX_WEIGHT, KnowledgeStore

__all__ = ["ROUTES", "NeuralPruningEngine", "PruneReport", "PruningParams", "Route"]

ROUTES = "pyagent.routes"
_SEP = "\x1f"


@dataclass(frozen=True)
class PruningParams:
    """Decay and pruning parameters; persisted in the store so every tool reading it agrees."""

    half_life: int = 50
    decay: float = 0.5
    threshold: float = 0.2
    reinforce: float = 0.1
    weaken: float = 0.5
    max_weight: float = 2.0
    initial_weight: float = 1.0
    prune_every: int = 1

    def __post_init__(self) -> None:
        if self.half_life < 1:
            raise ValueError(f"half_life must be >= 1 cycle, got {self.half_life}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if not 0.0 <= self.weaken <= 1.0:
            raise ValueError(f"weaken must be in [0, 1], got {self.weaken}")
        if self.threshold < 0.0 or self.reinforce < 0.0:
            raise ValueError("threshold and reinforce must be >= 0")
        if not 0.0 < self.max_weight <= MAX_WEIGHT:
            raise ValueError(f"max_weight must be in (0, {MAX_WEIGHT:g}], got {self.max_weight}")
        if not 0.0 <= self.initial_weight <= self.max_weight:
            raise ValueError("initial_weight must be in [0, max_weight]")
        if self.prune_every < 1:
            raise ValueError(f"prune_every must be >= 1, got {self.prune_every}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PruningParams:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Route:
    agent: str
    kind: str
    weight: float
    successes: int
    failures: int
    last_used_cycle: int


@dataclass(frozen=True)
class PruneReport:
    cycle: int
    facts: int = 0
    edges: int = 0


class NeuralPruningEngine:
    """Weights with synaptic decay over a :class:`KnowledgeStore`; see the module docstring."""

    def __init__(
        self, store: KnowledgeStore, params: PruningParams | None = None, *, persist: bool = True, **overrides: Any
    ) -> None:
        """Parameters: ``params``/``overrides`` if given (saved in the store unless ``persist=False``),
        else those saved in the store, else the defaults."""
        self.store = store
        saved = store.get_meta("pruning")
        base = params if params is not None else (PruningParams.from_json(saved) if saved else PruningParams())
        if overrides:
            base = PruningParams(**{**asdict(base), **overrides})
        self.params = base
        explicit = params is not None or bool(overrides)
        if persist and not store.readonly and (saved is None or explicit) and saved != base.to_json():
            store.set_meta("pruning", base.to_json())

    # -- the decay rule --------------------------------------------------------------------------

    def decayed(self, weight: float, idle: int) -> float:
        """Weight after ``idle`` cycles without use: halved (``decay``) per full ``half_life``."""
        if idle <= 0:
            return float(weight)
        halvings = idle // self.params.half_life
        return float(weight) * self.params.decay**halvings if halvings else float(weight)

    def weight(self, namespace: str, key: str) -> float | None:
        """The current (decayed) weight of a fact, None when absent."""
        fact = self.store.fact(namespace, key)
        if fact is None:
            return None
        return self.decayed(fact.weight, self.store.cycle - fact.last_used_cycle)

    def use(self, namespace: str, key: str, *, success: bool | None = None) -> float | None:
        """Mark a fact used now: reinforce on success, weaken on failure, prune below threshold.

        Returns the new weight, or None when the fact is absent or was pruned by this use.
        """
        p = self.params
        with self.store.batch():
            fact = self.store.fact(namespace, key)
            if fact is None:
                return None
            w = self._apply(self.decayed(fact.weight, self.store.cycle - fact.last_used_cycle), success)
            if w < p.threshold:
                self.store.delete(namespace, key)
                return None
            self.store.touch(namespace, key, w)
        return w

    def _apply(self, w: float, success: bool | None) -> float:
        if success is True:
            return min(self.params.max_weight, w + self.params.reinforce)
        if success is False:
            return w * self.params.weaken
        return w

    # -- routes ----------------------------------------------------------------------------------

    @staticmethod
    def route_key(agent: str, kind: str) -> str:
        return f"{kind}{_SEP}{agent}"

    def route(self, agent: str, kind: str) -> Route | None:
        fact = self.store.fact(ROUTES, self.route_key(agent, kind))
        if fact is None:
            return None
        return self._route(fact.value, self.decayed(fact.weight, self.store.cycle - fact.last_used_cycle),
                           fact.last_used_cycle)

    @staticmethod
    def _route(value: Any, weight: float, last_used: int) -> Route:
        return Route(str(value["agent"]), str(value["kind"]), weight, int(value["successes"]),
                     int(value["failures"]), last_used)

    def route_weight(self, agent: str, kind: str) -> float:
        """The route's current weight; the prior ``initial_weight`` for a route never seen (or pruned)."""
        route = self.route(agent, kind)
        return self.params.initial_weight if route is None else route.weight

    def record_route(self, agent: str, kind: str, *, success: bool) -> float:
        """Reinforce (success) or weaken (failure) the route agent x kind; returns its new weight."""
        key = self.route_key(agent, kind)
        with self.store.batch():
            fact = self.store.fact(ROUTES, key)
            if fact is None:
                value: dict[str, Any] = {"agent": agent, "kind": kind, "successes": 0, "failures": 0}
                w = self.params.initial_weight
            else:
                value = dict(fact.value)
                w = self.decayed(fact.weight, self.store.cycle - fact.last_used_cycle)
            value["successes" if success else "failures"] += 1
            # Failures push a route down to the threshold, not below: it stays known as bad while
            # it keeps being tried; idle decay then prunes it (forgotten: a second chance later).
            w = max(self._apply(w, success), min(w, self.params.threshold))
            self.store.put(ROUTES, key, value, weight=w, provenance=fact.provenance if fact else ())
        return w

    def routes(self, kind: str | None = None) -> list[Route]:
        now = self.store.cycle
        facts = self.store.query(ROUTES, f"{kind}{_SEP}" if kind is not None else "")
        return [self._route(f.value, self.decayed(f.weight, now - f.last_used_cycle), f.last_used_cycle)
                for f in facts]

    def best_agent(self, kind: str, candidates: Sequence[str]) -> str:
        """The candidate with the highest route weight for ``kind`` (first one on a tie)."""
        if not candidates:
            raise ValueError("no candidate agents")
        weights = {r.agent: r.weight for r in self.routes(kind)}
        return max(candidates, key=lambda a: weights.get(a, self.params.initial_weight))

    # -- the clock -------------------------------------------------------------------------------

    def tick(self, cycles: int = 1) -> PruneReport:
        """Advance the clock by ``cycles`` fleet execution cycles and prune what fell below threshold."""
        before = self.store.cycle
        now = self.store.advance(cycles)
        every = self.params.prune_every
        if cycles == 0 or now // every == before // every:
            return PruneReport(now)
        # One cycle at a time: only rows whose idle time just reached a multiple of half_life changed.
        incremental = cycles == 1 and every == 1
        return self.prune(incremental=incremental)

    def prune(self, *, incremental: bool = False, dry_run: bool = False) -> PruneReport:
        """Delete every fact and edge whose current weight is below ``threshold`` (a full pass).

        ``dry_run`` only counts them.
        """
        removed = self.store.prune_weights(
            self.decayed,
            self.params.threshold,
            changed_every=self.params.half_life if incremental else None,
            dry_run=dry_run,
        )
        return PruneReport(self.store.cycle, removed.get("facts", 0), removed.get("edges", 0))
