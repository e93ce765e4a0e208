"""The one place that chooses the asyncio event loop for Voyager.

pyzmq's asyncio sockets need ``add_reader``/``add_writer``, which the default Proactor loop on
Windows does not implement, so on Windows every Voyager entry point runs on the selector loop.
Everywhere else the default loop is already a selector loop and nothing changes. (The Windows
branch cannot be exercised on the Linux CI machines.)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def configure_event_loop_policy() -> None:
    """Select the selector event loop on Windows; a no-op elsewhere."""
    if sys.platform == "win32":  # pragma: no cover - not testable on Linux
        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())  # type: ignore[attr-defined,unused-ignore]


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop Voyager needs; use this from every CLI entry point."""
    configure_event_loop_policy()
    return asyncio.run(main)
