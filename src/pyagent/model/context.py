"""The cascade context: who asked for a task, how deep the chain is, and what it may still spend.

A ``CascadeContext`` is immutable; ``next_level()`` derives a child's context and is where every
chain limit is enforced, so a runaway delegation stops with a reason instead of burning budget.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pyagent.model.budget import Budget
from pyagent.model.errors import (
    BudgetExceeded,
    CascadeLimitError,
    CircuitOpen,
    ContextWireError,
    DepthLimitExceeded,
    LoopDetected,
)

__all__ = [
    "BudgetExceeded",
    "CascadeContext",
    "CascadeLimitError",
    "CircuitOpen",
    "ContextWireError",
    "DepthLimitExceeded",
    "Failure",
    "LineageEntry",
    "LoopDetected",
    "SecurityScope",
    "new_task_id",
]

_WS = re.compile(r"\s+")
_ADDR = re.compile(r"0x[0-9a-fA-F]+")


def new_task_id() -> str:
    """A random id that stays unique across nodes."""
    return uuid.uuid4().hex[:16]


def _normalise_error(error: str | BaseException) -> str:
    """One line, without object addresses, so "the same error" compares equal across retries."""
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    else:
        text = str(error)
    text = _ADDR.sub("0x?", _WS.sub(" ", text).strip())
    return text[:300]


@dataclass(frozen=True, slots=True)
class LineageEntry:
    """One ancestor in a chain: which agent ran which task."""

    agent: str
    task_id: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt recorded in the chain's history (feeds the circuit breaker)."""

    stage: str
    error: str
    task_id: str


def _check_prefix(p: str) -> str:
    if not isinstance(p, str) or not p.strip():
        raise ValueError(f"scope path must be a non-empty string, got {p!r}")
    p = p.replace("\\", "/").strip()
    if p.startswith("/") or any(part == ".." for part in p.split("/")):
        raise ValueError(f"scope path must be relative to the workspace and not use '..': {p!r}")
    parts = [x for x in p.split("/") if x not in ("", ".")]
    return "/".join(parts) if parts else "."


@dataclass(frozen=True, slots=True)
class SecurityScope:
    """What a chain may touch: path prefixes relative to the workspace and command names.

    ``None`` means unrestricted; ``"."`` as a path means the whole workspace. A child's scope
    can only narrow its parent's (see ``narrow``).
    """

    paths: tuple[str, ...] | None = (".",)
    commands: tuple[str, ...] | None = None
    write: bool = True
    network: bool = False

    def __post_init__(self) -> None:
        if self.paths is not None:
            object.__setattr__(self, "paths", tuple(_check_prefix(p) for p in self.paths))
        if self.commands is not None:
            for c in self.commands:
                if not isinstance(c, str) or not c or "/" in c:
                    raise ValueError(f"scope command must be a bare program name, got {c!r}")
            object.__setattr__(self, "commands", tuple(self.commands))

    def allows_path(self, rel_posix: str) -> bool:
        """Whether a normalised relative POSIX path lies under one of the allowed prefixes."""
        if self.paths is None:
            return True
        for prefix in self.paths:
            if prefix == "." or rel_posix == prefix or rel_posix.startswith(prefix + "/"):
                return True
        return False

    def allows_command(self, program: str) -> bool:
        if self.commands is None:
            return True
        name = program.replace("\\", "/").rsplit("/", 1)[-1]
        return name in self.commands

    def narrow(self, other: SecurityScope) -> SecurityScope:
        """The intersection of two scopes: a child never gains rights its parent lacks."""
        if self.paths is None:
            paths = other.paths
        elif other.paths is None:
            paths = self.paths
        else:
            inner = [p for p in other.paths if self.allows_path(p)] + [q for q in self.paths if other.allows_path(q)]
            paths = tuple(dict.fromkeys(inner))
        if self.commands is None:
            commands = other.commands
        elif other.commands is None:
            commands = self.commands
        else:
            commands = tuple(c for c in other.commands if c in self.commands)
        return SecurityScope(
            paths=paths, commands=commands, write=self.write and other.write, network=self.network and other.network
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "paths": None if self.paths is None else list(self.paths),
            "commands": None if self.commands is None else list(self.commands),
            "write": self.write,
            "network": self.network,
        }

    @classmethod
    def from_wire(cls, data: Any) -> SecurityScope:
        if not isinstance(data, dict):
            raise ContextWireError("scope must be a mapping")
        paths, commands = data.get("paths"), data.get("commands")
        write, network = data.get("write", True), data.get("network", False)
        if paths is not None and not isinstance(paths, list | tuple):
            raise ContextWireError("scope.paths must be a list or null")
        if commands is not None and not isinstance(commands, list | tuple):
            raise ContextWireError("scope.commands must be a list or null")
        if not isinstance(write, bool) or not isinstance(network, bool):
            raise ContextWireError("scope.write and scope.network must be booleans")
        try:
            return cls(
                paths=None if paths is None else tuple(paths),
                commands=None if commands is None else tuple(commands),
                write=write,
                network=network,
            )
        except ValueError as exc:
            raise ContextWireError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class CascadeContext:
    """Immutable description of one task's place in its chain; derive children with ``next_level``."""

    task_id: str
    root_task_id: str
    lineage: tuple[LineageEntry, ...]
    budget: Budget
    depth: int = 0
    max_depth: int = 10
    tenant: str = "local"
    scope: SecurityScope = field(default_factory=SecurityScope)
    failures: tuple[Failure, ...] = ()
    actions: tuple[str, ...] = ()
    circuit_threshold: int = 3

    @classmethod
    def root(
        cls,
        agent: str,
        *,
        action: str = "",
        budget: Budget | None = None,
        tenant: str = "local",
        scope: SecurityScope | None = None,
        max_depth: int = 10,
        task_id: str | None = None,
        circuit_threshold: int = 3,
    ) -> CascadeContext:
        """The context of a chain's first task."""
        if not isinstance(agent, str) or not agent:
            raise ValueError("agent name must be a non-empty string")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
            raise ValueError(f"max_depth must be a whole number >= 0, got {max_depth!r}")
        if isinstance(circuit_threshold, bool) or not isinstance(circuit_threshold, int) or circuit_threshold < 1:
            raise ValueError(f"circuit_threshold must be a whole number >= 1, got {circuit_threshold!r}")
        if not isinstance(tenant, str) or not tenant:
            raise ValueError("tenant must be a non-empty string")
        tid = task_id or new_task_id()
        return cls(
            task_id=tid,
            root_task_id=tid,
            lineage=(LineageEntry(agent, tid),),
            budget=budget if budget is not None else Budget(),
            max_depth=max_depth,
            tenant=tenant,
            scope=scope if scope is not None else SecurityScope(),
            actions=(f"{agent}:{action}",) if action else (),
            circuit_threshold=circuit_threshold,
        )

    @property
    def agent(self) -> str:
        """The agent this context belongs to (the last lineage entry)."""
        return self.lineage[-1].agent

    @property
    def parent_task_id(self) -> str | None:
        return self.lineage[-2].task_id if len(self.lineage) > 1 else None

    def open_circuit(self) -> str | None:
        """Why the circuit breaker is open, or ``None`` while it is closed."""
        if not self.failures:
            return None
        counts = Counter((f.stage, f.error) for f in self.failures)
        (stage, error), n = counts.most_common(1)[0]
        if n >= self.circuit_threshold:
            return f"circuit open: stage {stage!r} failed {n} times with the same error: {error}"
        return None

    def check(self) -> None:
        """Raise the matching ``CascadeLimitError`` if this chain must stop now."""
        reason = self.open_circuit()
        if reason is not None:
            raise CircuitOpen(reason)
        self.budget.check()

    def next_level(
        self, agent: str, action: str, *, task_id: str | None = None, scope: SecurityScope | None = None
    ) -> CascadeContext:
        """The context for a task this one delegates to ``agent`` to do ``action``.

        Raises ``DepthLimitExceeded``, ``CircuitOpen``, ``LoopDetected`` or ``BudgetExceeded``
        (all ``CascadeLimitError``) with a reason naming the chain and the limit.
        """
        if not isinstance(agent, str) or not agent:
            raise ValueError("agent name must be a non-empty string")
        if not isinstance(action, str):
            raise ValueError("action must be a string")
        chain = " -> ".join(e.agent for e in self.lineage)
        if self.depth + 1 > self.max_depth:
            raise DepthLimitExceeded(
                f"depth limit {self.max_depth} reached: {chain} cannot delegate {action!r} to {agent!r}"
            )
        self.check()
        signature = f"{agent}:{action}"
        if signature in self.actions:
            raise LoopDetected(
                f"loop detected: {agent!r} was already asked to {action!r} in this chain ({chain})"
            )
        tid = task_id or new_task_id()
        return replace(
            self,
            task_id=tid,
            lineage=(*self.lineage, LineageEntry(agent, tid)),
            depth=self.depth + 1,
            scope=self.scope if scope is None else self.scope.narrow(scope),
            actions=(*self.actions, signature),
        )

    def record_failure(self, stage: str, error: str | BaseException) -> CascadeContext:
        """A context that remembers one more failure; ``check``/``next_level`` trip the breaker."""
        if not isinstance(stage, str) or not stage:
            raise ValueError("stage must be a non-empty string")
        return replace(self, failures=(*self.failures, Failure(stage, _normalise_error(error), self.task_id)))

    def lineage_ids(self) -> tuple[str, ...]:
        return tuple(e.task_id for e in self.lineage)

    def to_wire(self) -> dict[str, Any]:
        """Plain dict of str/int/float/bool/list/None: safe for msgpack and JSON."""
        return {
            "v": 1,
            "task_id": self.task_id,
            "root_task_id": self.root_task_id,
            "lineage": [[e.agent, e.task_id] for e in self.lineage],
            "depth": self.depth,
            "max_depth": self.max_depth,
            "tenant": self.tenant,
            "scope": self.scope.to_wire(),
            "budget": self.budget.to_wire(),
            "failures": [[f.stage, f.error, f.task_id] for f in self.failures],
            "actions": list(self.actions),
            "circuit_threshold": self.circuit_threshold,
        }

    @classmethod
    def from_wire(cls, data: Any, *, budget: Budget | None = None) -> CascadeContext:
        """Rebuild a context sent from another node. Pass ``budget`` to share a local ledger instead."""
        if not isinstance(data, dict):
            raise ContextWireError(f"context must be a mapping, got {type(data).__name__}")
        if data.get("v") != 1:
            raise ContextWireError(f"unsupported context version {data.get('v')!r} (expected 1)")
        try:
            lineage = tuple(LineageEntry(_str(a, "lineage agent"), _str(t, "lineage task id")) for a, t in data["lineage"])
            failures = tuple(
                Failure(_str(s, "failure stage"), _str(e, "failure error"), _str(t, "failure task id"))
                for s, e, t in data.get("failures", [])
            )
            actions = tuple(_str(a, "action") for a in data.get("actions", []))
            ctx = cls(
                task_id=_str(data["task_id"], "task_id"),
                root_task_id=_str(data["root_task_id"], "root_task_id"),
                lineage=lineage,
                budget=budget if budget is not None else Budget.from_wire(data["budget"]),
                depth=_int(data["depth"], "depth"),
                max_depth=_int(data["max_depth"], "max_depth"),
                tenant=_str(data["tenant"], "tenant"),
                scope=SecurityScope.from_wire(data["scope"]),
                failures=failures,
                actions=actions,
                circuit_threshold=_int(data.get("circuit_threshold", 3), "circuit_threshold"),
            )
        except KeyError as exc:
            raise ContextWireError(f"context is missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ContextWireError):
                raise
            raise ContextWireError(f"malformed context: {exc}") from None
        if not lineage or lineage[-1].task_id != ctx.task_id or lineage[0].task_id != ctx.root_task_id:
            raise ContextWireError("context lineage does not match its task_id/root_task_id")
        if ctx.depth != len(lineage) - 1:
            raise ContextWireError(f"context depth {ctx.depth} does not match lineage length {len(lineage)}")
        return ctx


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ContextWireError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ContextWireError(f"{what} must be a whole number >= 0, got {value!r}")
    return value
