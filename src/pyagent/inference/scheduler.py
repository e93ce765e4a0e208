"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Every step first serves the running sequences (one token each while decoding, or their next prefill
chunk), then admits waiting ones with prefill chunks while the token budget lasts. When the KV cache runs
out of blocks the most recently admitted running sequence is preempted: its blocks are freed and it goes
back to the front of the queue, to be recomputed from its tokens later (the prefix cache usually makes
that cheap).

With a KV connector (disaggregated prefill), a waiting request whose prompt a peer already computed gets
its blocks allocated and waits, outside the running set, until the connector has loaded them; a finished
request whose blocks a peer still reads is held (blocks not freed) until the connector releases it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyagent.inference.kv_cache import KVCacheManager
from pyagent.inference.kv_connector import KVConnector, RemoteMatch, TransferUpdate
from pyagent.inference.sampler import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    WAITING_FOR_REMOTE_KV = "waiting_for_remote_kv"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    rng: np.random.Generator
    token_ids: list[int] = field(default_factory=list)  # prompt + generated
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    # Prompt tokens the prefix cache served at the first admission (None until then); a recompute after a
    # preemption keeps this figure, since it reports what the request's prompt cost, not its retries.
    num_cached_tokens: int | None = None
    matcher: Any = None  # the grammar engine's state for a constrained request (see grammar.py)
    kv_transfer_params: dict[str, Any] | None = None  # from the client: what the connector should do
    kv_transfer_result: dict[str, Any] | None = None  # from the connector, handed back when it finishes
    remote_match: RemoteMatch | None = None  # set while its prompt's KV is being loaded from a peer

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)


@dataclass(frozen=True)
class ScheduledChunk:
    request: Request
    start: int
    num_tokens: int

    @property
    def completes_prompt(self) -> bool:
        """After this chunk every known token is computed, so a new token is sampled."""
        return self.start + self.num_tokens == len(self.request.token_ids)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk]
    preempted: list[Request]


class Scheduler:
    def __init__(self, kv: KVCacheManager, *, max_num_seqs: int, max_num_batched_tokens: int,
                 connector: KVConnector | None = None) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.connector = connector
        self.loading: dict[str, Request] = {}  # blocks allocated, KV arriving from a peer
        self.held: dict[str, Request] = {}  # finished, blocks kept while the connector still uses them

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, request: Request, *, aborted: bool = False) -> None:
        """Drop a request wherever it is and free its blocks (or hold them if the connector says so)."""
        rid = request.request_id
        if self.loading.pop(rid, None) is not None:
            pass
        elif request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED
        keep = False
        if self.connector is not None:
            keep, request.kv_transfer_result = self.connector.request_finished(
                request, self.kv.block_table(rid), aborted=aborted)
        if keep:
            self.held[rid] = request
        else:
            self.kv.free(rid)

    def apply(self, update: TransferUpdate) -> list[Request]:
        """Release held blocks, requeue failed loads (computed here instead), and return the requests whose
        KV arrived, now running with their whole prompt computed."""
        for rid in update.sent | update.loaded | update.failed:
            if self.held.pop(rid, None) is not None:
                self.kv.free(rid)
        ready = []
        for rid in update.loaded:
            req = self.loading.pop(rid, None)
            if req is None or req.remote_match is None:
                continue
            req.num_computed_tokens = req.remote_match.num_tokens
            self.kv.cache_full_blocks(rid, req.token_ids, req.num_computed_tokens)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            ready.append(req)
        for rid in update.failed:
            req = self.loading.pop(rid, None)
            if req is None:
                continue
            self.kv.free(rid)
            req.remote_match = req.kv_transfer_params = None
            req.num_computed_tokens = 0
            req.status = RequestStatus.WAITING
            self.waiting.appendleft(req)
        return ready

    def _preempt(self, victim: Request) -> None:
        self.kv.free(victim.request_id)
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.WAITING
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(len(req.token_ids) - req.num_computed_tokens, budget)
            while not self.kv.allocate(req.request_id, req.token_ids, req.num_computed_tokens, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                break
            chunks.append(ScheduledChunk(req, req.num_computed_tokens, n))
            budget -= n
            i += 1
        if preempted:
            return SchedulerOutput(chunks, preempted)
        while self.waiting and budget > 0 and len(self.running) + len(self.loading) < self.max_num_seqs:
            req = self.waiting[0]
            hits = self.kv.get_computed_blocks(req.request_id, req.token_ids)
            computed = len(hits) * self.kv.block_size
            match = None if self.connector is None else self.connector.get_num_new_matched_tokens(req, computed)
            if match is not None and self.connector is not None:
                if not self.kv.allocate(req.request_id, req.token_ids, computed, match.num_tokens - computed, hits):
                    break
                self.waiting.popleft()
                if req.num_cached_tokens is None:
                    req.num_cached_tokens = computed
                req.remote_match = match
                req.status = RequestStatus.WAITING_FOR_REMOTE_KV
                self.loading[req.request_id] = req
                self.connector.update_state_after_alloc(req, self.kv.block_table(req.request_id), len(hits))
                continue
            n = min(len(req.token_ids) - computed, budget)
            if not self.kv.allocate(req.request_id, req.token_ids, computed, n, hits):
                break
            self.waiting.popleft()
            req.num_computed_tokens = computed
            if req.num_cached_tokens is None:
                req.num_cached_tokens = computed
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            chunks.append(ScheduledChunk(req, computed, n))
            budget -= n
        return SchedulerOutput(chunks, preempted)
