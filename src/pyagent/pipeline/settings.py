"""How one run verifies changes (test command, its environment and timeout, the complexity limit).

Built once by the run, sent to every peer with each task, and turned into a pipeline by
:mod:`pyagent.pipeline.builder` on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PipelineSettings"]


@dataclass(frozen=True)
class PipelineSettings:
    """How changes are verified in one run; the same on this machine and on every peer."""

    test_cmd: str | None = None
    test_timeout: float = 300.0
    test_env: Mapping[str, str] = field(default_factory=dict)
    max_complexity: int = 10

    def to_wire(self) -> dict[str, Any]:
        return {
            "test_cmd": self.test_cmd,
            "test_timeout": self.test_timeout,
            "test_env": dict(self.test_env),
            "max_complexity": self.max_complexity,
        }

    @classmethod
    def from_wire(cls, data: object) -> PipelineSettings:
        """Settings sent by an origin; anything malformed is a ``ValueError`` naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"pipeline settings must be a mapping, got {type(data).__name__}")
        test_cmd = data.get("test_cmd")
        if test_cmd is not None and not isinstance(test_cmd, str):
            raise ValueError("pipeline settings: test_cmd must be a string or null")
        timeout = data.get("test_timeout", 300.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"pipeline settings: test_timeout must be a number > 0, got {timeout!r}")
        env = data.get("test_env", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("pipeline settings: test_env must map strings to strings")
        limit = data.get("max_complexity", 10)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"pipeline settings: max_complexity must be a whole number >= 1, got {limit!r}")
        return cls(test_cmd=test_cmd, test_timeout=float(timeout), test_env=dict(env), max_complexity=limit)
