"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Every step first serves the running sequences (one token each while decoding, or their next prefill
chunk), then admits waiting ones with prefill chunks while the token budget lasts. When the KV cache runs
out of blocks the most recently admitted running sequence is preempted: its blocks are freed and it goes
back to the front of the queue, to be recomputed from its tokens later (the prefix cache usually makes
that cheap).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyagent.inference.kv_cache import KVCacheManager
from pyagent.inference.sampler import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
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
    def __init__(self, kv: KVCacheManager, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, request: Request) -> None:
        """Drop a request wherever it is and free its blocks."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.FINISHED

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
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            hits = self.kv.get_computed_blocks(req.request_id, req.token_ids)
            computed = len(hits) * self.kv.block_size
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
