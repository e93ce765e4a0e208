"""The engine's only view of KV transfer between instances: a narrow connector interface.

Shaped like vLLM V1's connector split. The scheduler side decides *what* moves (how many prompt tokens a
remote instance already computed, which local blocks receive them, whether a finished request's blocks
must outlive it while a peer reads them); the worker side moves bytes (register the cache memory once,
start the loads the scheduler asked for, report which transfers are done). The engine and scheduler call
these hooks and know nothing of sockets, peers or backends: ``pyagent.kv_transfer`` implements them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pyagent.inference.kv_cache import KVCacheManager


@dataclass(frozen=True)
class RemoteMatch:
    """What a remote instance holds for a waiting request: its first ``num_tokens`` prompt tokens' KV, and
    the token it sampled after them (so the decode side continues exactly where the prefill side stopped)."""

    num_tokens: int
    first_token: int


@dataclass(frozen=True)
class TransferUpdate:
    """Transfers that ended since the last poll, by request id."""

    sent: frozenset[str] = field(default_factory=frozenset)  # a peer finished reading (or the lease ended)
    loaded: frozenset[str] = field(default_factory=frozenset)  # every block a request waited for arrived
    failed: frozenset[str] = field(default_factory=frozenset)  # a load failed: compute the prompt here


class RequestView(Protocol):
    """What a connector may read of a scheduler request."""

    @property
    def request_id(self) -> str: ...
    @property
    def prompt_token_ids(self) -> list[int]: ...
    @property
    def token_ids(self) -> list[int]: ...
    @property
    def kv_transfer_params(self) -> dict[str, Any] | None: ...
    @property
    def remote_match(self) -> RemoteMatch | None: ...


class KVConnector(Protocol):
    # -- scheduler side
    def get_num_new_matched_tokens(self, request: RequestView, num_local_computed_tokens: int) -> RemoteMatch | None:
        """Tokens beyond the local prefix-cache hits that a peer can supply, or None to compute locally."""

    def update_state_after_alloc(self, request: RequestView, block_ids: Sequence[int], num_local_blocks: int) -> None:
        """Blocks were allocated: the first ``num_local_blocks`` are local cache hits, the rest await a load."""

    def request_finished(self, request: RequestView, block_ids: Sequence[int], *, aborted: bool
                         ) -> tuple[bool, dict[str, Any] | None]:
        """(keep the blocks until ``sent`` reports the request, parameters to hand back to the client)."""

    # -- worker side
    def register_kv_caches(self, kv_cache: KVCacheManager, wake: Callable[[], None]) -> None:
        """Called once with the cache whose memory transfers read and write; ``wake`` restarts a waiting
        engine loop when a transfer ends."""

    def start_load_kv(self) -> None:
        """Start the loads queued by ``update_state_after_alloc`` (non-blocking)."""

    def get_finished(self) -> TransferUpdate:
        """Transfers that ended since the last call (also expires leases whose peer went silent)."""
