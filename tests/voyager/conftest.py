"""Helpers for the Voyager tests: key pairs, homes and a bounded asyncio runner."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from pyagent.voyager.home import KeyPair, NodeHome

T = TypeVar("T")


def keypair() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a coroutine with a hard upper bound so a bug cannot hang the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def homes(tmp_path: Path) -> dict[str, NodeHome]:
    return {name: NodeHome(tmp_path / name) for name in ("a", "b", "c", "stranger")}
