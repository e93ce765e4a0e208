"""Voyager: nodes that find each other by mDNS and teleport tasks over authenticated ZeroMQ.

Names are resolved lazily so that ``pyagent trust`` does not pay for importing zeroconf and pyzmq.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent.voyager.discovery import DiscoveryNode
    from pyagent.voyager.node import VoyagerNode
    from pyagent.voyager.transport import VoyagerTransport

_NAMES = {
    "DiscoveryNode": "pyagent.voyager.discovery",
    "VoyagerTransport": "pyagent.voyager.transport",
    "VoyagerNode": "pyagent.voyager.node",
}
__all__ = ["DiscoveryNode", "VoyagerNode", "VoyagerTransport"]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'pyagent.voyager' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
