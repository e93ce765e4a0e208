"""What a worker process does with one teleported task (placeholder until the improve pipeline lands)."""

from __future__ import annotations

from typing import Any


def run_payload(payload: dict[str, Any]) -> dict[str, Any]:
    raise NotImplementedError
