"""``PagedAttentionEngine``: requests in, tokens out, one scheduler step at a time.

Callers either drive ``step()`` themselves or use ``generate()``, an async iterator per request served by
one background stepping thread shared by all callers (any number of event loops). Closing the iterator
early (the client went away) aborts the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pyagent.inference.config import ACTIVATIONS, ModelConfig, check_activations
from pyagent.inference.gguf_loader import load_gguf_model
from pyagent.inference.gguf_reader import is_gguf
from pyagent.inference.gguf_tokenizer import gguf_tokenizer
from pyagent.inference.grammar import GrammarCompiler
from pyagent.inference.kv_cache import KVCacheManager, kv_bytes_per_token, kv_dtype
from pyagent.inference.kv_connector import KVConnector
from pyagent.inference.loader import ModelWeights, load_model
from pyagent.inference.model import DecoderModel, SeqChunk
from pyagent.inference.sampler import (
    SamplingParams,
    TokenLogprob,
    adjust_logits,
    apply_token_mask,
    sample,
    token_logprob,
)
from pyagent.inference.scheduler import Request, ScheduledChunk, Scheduler
from pyagent.inference.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = ["FinishReason", "PagedAttentionEngine", "RequestOutput", "RequestStream", "SamplingParams"]

FinishReason = Literal["stop", "length", "abort"]
DEFAULT_KV_CACHE_BYTES = 1 << 30


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]  # all generated so far
    new_token_ids: list[int]
    text: str
    text_delta: str
    finished: bool
    finish_reason: FinishReason | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (a multiple of the block size)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of new_token_ids, when the request asked
    kv_transfer_params: dict[str, Any] | None = None  # from the KV connector, on the final output


@dataclass(eq=False)
class _Stream:
    """Per-request text state: stop strings need held-back text so deltas never have to be retracted."""

    detok: IncrementalDetokenizer
    stop: list[str]
    emitted: int = 0
    text: str = ""


class PagedAttentionEngine:
    def __init__(self, config: ModelConfig, weights: ModelWeights, tokenizer: Tokenizer, *, model_name: str = "model",
                 block_size: int = 16, num_blocks: int | None = None, max_num_seqs: int = 32,
                 max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True,
                 partition_size: int = 512, kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
                 kv_connector: KVConnector | None = None, activations: str = ACTIVATIONS[0],
                 kv_cache_dtype: str = "float32") -> None:
        if block_size < 1 or partition_size < 1:
            raise ValueError("block_size and partition_size must be positive")
        self.config = config
        self.tokenizer = tokenizer
        self.model_name = model_name
        bytes_per_block = block_size * kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads,
                                                          config.head_dim, kv_cache_dtype)
        if num_blocks is None:
            wanted = -(-max_num_seqs * config.max_context // block_size)
            num_blocks = max(1, min(wanted, kv_cache_bytes // bytes_per_block))
        if num_blocks < 1:
            raise ValueError("num_blocks must be positive")
        # A single sequence must always fit in the cache, so that preemption can always make progress.
        self.max_model_len = min(config.max_context, num_blocks * block_size)
        self.kv_cache = KVCacheManager(num_blocks=num_blocks, block_size=block_size,
                                       num_layers=config.num_hidden_layers, num_kv_heads=config.num_key_value_heads,
                                       head_dim=config.head_dim, enable_prefix_caching=enable_prefix_caching,
                                       dtype=kv_cache_dtype)
        self.model = DecoderModel(config, weights, self.max_model_len, partition_size=partition_size,
                                  activations=activations)
        self.scheduler = Scheduler(self.kv_cache, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens, connector=kv_connector)
        self.kv_connector = kv_connector
        self._rng = np.random.default_rng()
        # Two locks so that callers never wait for a model step: `_lock` owns the scheduler, KV cache and
        # model and is held for a whole step; `_inbox` guards the small hand-over state below and is only
        # ever held for a few dictionary operations.
        self._lock = threading.RLock()
        self._inbox = threading.Condition()
        self._requests: dict[str, Request] = {}  # every live request, queued or scheduled
        self._streams: dict[str, _Stream] = {}
        self._incoming: list[Request] = []
        self._abort_ids: set[str] = set()
        self._aborted: list[RequestOutput] = []
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput | BaseException]]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._idle = False  # the last step ran nothing: wait for news instead of stepping again
        self._kv_event = False  # the connector finished a transfer or ended a lease
        if kv_connector is not None:
            kv_connector.register_kv_caches(self.kv_cache, self._wake)
        # Called with (request_id, position, logits row) for every sampled token; tests and debugging use it.
        self.logits_observer: Callable[[str, int, np.ndarray], None] | None = None
        self._grammar: GrammarCompiler | None = None

    def kv_cache_summary(self) -> str:
        """One line on the cache's size, for startup messages: blocks, tokens, dtype and memory."""
        kv = self.kv_cache
        return (f"KV cache {kv.num_total_blocks} blocks x {kv.block_size} tokens ({kv.dtype}, "
                f"{kv.bytes_per_token} bytes/token, {kv.nbytes / (1 << 20):.0f} MiB)")

    @property
    def grammar(self) -> GrammarCompiler:
        """The structured-output compiler over this model's vocabulary (built on first use)."""
        if self._grammar is None:
            self._grammar = GrammarCompiler(self.tokenizer, self.config.vocab_size)
        return self._grammar

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, block_size: int = 16, num_blocks: int | None = None,
                        max_num_seqs: int = 32, max_num_batched_tokens: int = 2048,
                        enable_prefix_caching: bool = True, partition_size: int = 512,
                        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
                        kv_connector: KVConnector | None = None,
                        quantize: str | None = None, activations: str = ACTIVATIONS[0],
                        kv_cache_dtype: str = "float32") -> PagedAttentionEngine:
        """Load a GGUF file (weights stay quantized) or a Hugging Face checkpoint folder (config.json,
        *.safetensors, tokenizer.json; ``quantize="q8_0"`` converts its matrices to Q8_0 at load).

        ``activations="float32"`` (the default) keeps every product exact up to float rounding, so greedy
        tokens equal fp32 arithmetic on the dequantized weights. ``"int8"`` makes every step round each
        quantized product's input to 8 bits per block, as llama.cpp does (decode about 1.1x faster on Q4_1,
        1.3-1.4x on K-quant files on a 2-core machine; a small model's answers get worse, as llama.cpp's do), and computes
        every position alike whatever the batch, chunking, prefix cache or instance
        (see ``pyagent.inference.model``).

        ``kv_cache_dtype="float16"`` stores K/V at half the memory (twice the blocks for ``kv_cache_bytes``),
        rounding each stored value to fp16; attention still computes in float32."""
        kv_dtype(kv_cache_dtype)  # a bad name fails before the model is read
        check_activations(activations)
        path = Path(model_dir)
        if path.suffix.lower() == ".gguf" or (path.is_file() and is_gguf(path)):
            if quantize is not None:
                raise ValueError(f"--quantize applies to safetensors folders; {path.name} is already quantized")
            gguf, config, weights = load_gguf_model(path)
            tokenizer = gguf_tokenizer(gguf)
            name = path.resolve().stem
        else:
            config, weights = load_model(path, quantize)
            tokenizer = Tokenizer.from_dir(path, config_eos=config.eos_token_ids)
            name = path.resolve().name
        return cls(config, weights, tokenizer, model_name=name, block_size=block_size,
                   num_blocks=num_blocks, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                   enable_prefix_caching=enable_prefix_caching, partition_size=partition_size,
                   kv_cache_bytes=kv_cache_bytes, kv_connector=kv_connector, activations=activations,
                   kv_cache_dtype=kv_cache_dtype)

    # -- requests
    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams,
                    kv_transfer_params: dict[str, Any] | None = None) -> None:
        params.validate()
        prompt = [int(t) for t in prompt_token_ids]
        if not prompt:
            raise ValueError("the prompt is empty: at least one token is needed")
        bad = next((t for t in prompt if not 0 <= t < self.config.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens but the context holds {self.max_model_len} "
                             f"(prompt plus at least one generated token); shorten the prompt")
        rng = np.random.default_rng(params.seed) if params.seed is not None else self._rng
        matcher = None if params.json_schema is None else self.grammar.matcher(params.json_schema)
        with self._inbox:
            if request_id in self._requests:
                raise ValueError(f"request id {request_id!r} is already in use")
            req = Request(request_id, prompt, params, rng, kv_transfer_params=kv_transfer_params, matcher=matcher)
            self._requests[request_id] = req
            self._streams[request_id] = _Stream(IncrementalDetokenizer(self.tokenizer, prompt), list(params.stop))
            self._incoming.append(req)
            self._inbox.notify_all()

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (at once when no step is running, else right after it).

        Its final output (finish reason "abort") comes with the next step. Unknown ids are ignored.
        """
        with self._inbox:
            if request_id not in self._requests:
                return
            self._abort_ids.add(request_id)
            self._inbox.notify_all()
        if self._lock.acquire(blocking=False):
            try:
                self._take_inbox()
            finally:
                self._lock.release()

    def has_unfinished(self) -> bool:
        with self._inbox:
            return bool(self._requests)

    def _take_inbox(self) -> None:
        """Move new requests into the scheduler and carry out pending aborts (caller holds ``_lock``)."""
        with self._inbox:
            incoming, self._incoming = self._incoming, []
            aborts, self._abort_ids = self._abort_ids, set()
            gone = [(self._requests.pop(rid), self._streams.pop(rid)) for rid in aborts if rid in self._requests]
        for req in incoming:
            self.scheduler.add(req)
        outputs = []
        for req, stream in gone:
            self.scheduler.finish(req, aborted=True)
            outputs.append(RequestOutput(req.request_id, req.prompt_token_ids, req.output_token_ids, [],
                                         stream.text, "", True, "abort",
                                         req.num_cached_tokens or 0))
        if outputs:
            with self._inbox:
                self._aborted.extend(outputs)

    # -- stepping
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, and report every request that progressed or finished."""
        with self._lock:
            self._take_inbox()
            with self._inbox:
                outputs, self._aborted = self._aborted, []
                self._kv_event = False
            if self.kv_connector is not None:
                for req in self.scheduler.apply(self.kv_connector.get_finished()):
                    outputs.append(self._remote_first_token(req))
            plan = self.scheduler.schedule()
            if self.kv_connector is not None:
                self.kv_connector.start_load_kv()
            self._idle = not plan.chunks and not outputs
            if plan.chunks:
                chunks = [SeqChunk(c.request.request_id, c.request.token_ids[c.start:c.start + c.num_tokens],
                                   c.start, c.completes_prompt) for c in plan.chunks]
                logits = self.model.forward(chunks, self.kv_cache)
                masks = self._grammar_masks(plan.chunks)
                row = 0
                for c in plan.chunks:
                    req = c.request
                    req.num_computed_tokens += c.num_tokens
                    self.kv_cache.cache_full_blocks(req.request_id, req.token_ids, req.num_computed_tokens)
                    if not c.completes_prompt:
                        continue
                    if self.logits_observer is not None:
                        self.logits_observer(req.request_id, len(req.token_ids) - 1, logits[row])
                    scores = logits[row]
                    if req.params.adjusts_logits:
                        scores = adjust_logits(scores, req.params, req.prompt_token_ids, req.output_token_ids,
                                               () if req.params.ignore_eos else self.tokenizer.eos_token_ids)
                    if req.matcher is not None:
                        scores = apply_token_mask(scores, masks[req.request_id])
                    token = sample(scores, req.params, req.rng)
                    if req.matcher is not None:
                        req.matcher.consume_token(token)
                    lp = None if req.params.logprobs is None else token_logprob(logits[row], token, req.params.logprobs)
                    row += 1
                    req.token_ids.append(token)
                    outputs.append(self._progress(req, token, lp))
            self._dispatch(outputs)
            return outputs

    def _grammar_masks(self, chunks: Sequence[ScheduledChunk]) -> dict[str, np.ndarray]:
        """The token masks of every constrained sequence that samples this step, computed together."""
        constrained = [c.request for c in chunks if c.completes_prompt and c.request.matcher is not None]
        if not constrained:
            return {}
        bitmask = self.grammar.masks([r.matcher for r in constrained])
        return {r.request_id: bitmask[i] for i, r in enumerate(constrained)}

    def _remote_first_token(self, req: Request) -> RequestOutput:
        """A request whose prompt KV a peer computed continues with the token that peer sampled."""
        assert req.remote_match is not None
        token = req.remote_match.first_token
        if not (req.params.temperature == 0.0 or req.params.top_k == 1):
            req.rng.random()  # the peer drew once for it: keep a seeded stream where one instance would be
        req.remote_match = req.kv_transfer_params = None  # consumed: a preemption recomputes locally
        if req.matcher is not None:
            req.matcher.consume_token(token)
        req.token_ids.append(token)
        return self._progress(req, token)

    def _wake(self) -> None:
        with self._inbox:
            self._kv_event = True
            self._inbox.notify_all()

    def _progress(self, req: Request, token: int, lp: TokenLogprob | None = None) -> RequestOutput:
        stream = self._streams[req.request_id]
        params = req.params
        stream.detok.push([token])
        full = stream.detok.text
        reason: FinishReason | None = None
        if not params.ignore_eos and token in self.tokenizer.eos_token_ids:
            reason = "stop"
        elif req.matcher is not None and (req.matcher.is_stopped() or req.matcher.is_error()):
            reason = "stop"  # the grammar is complete (or broken): nothing more may follow
        elif req.num_output_tokens >= params.max_tokens or len(req.token_ids) >= self.max_model_len:
            reason = "length"
        if reason is not None:
            stream.detok.flush()
            full = stream.detok.text
        cut = min((p for p in (full.find(s) for s in stream.stop) if p >= 0), default=-1)
        if cut >= 0:
            full, reason = full[:cut], "stop"
        if reason is None:
            hold = max((len(s) - 1 for s in stream.stop), default=0)
            safe = max(stream.emitted, len(full) - hold)
        else:
            safe = len(full)
        delta = full[stream.emitted:safe]
        stream.emitted = safe
        stream.text = full[:safe]
        if reason is not None:
            self.scheduler.finish(req)
            with self._inbox:
                del self._requests[req.request_id]
                del self._streams[req.request_id]
        return RequestOutput(req.request_id, req.prompt_token_ids, req.output_token_ids, [token], stream.text,
                             delta, reason is not None, reason, req.num_cached_tokens or 0,
                             [] if lp is None else [lp],
                             req.kv_transfer_result if reason is not None else None)

    # -- async streaming
    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            with self._inbox:
                target = self._listeners.get(out.request_id)
            if target is None:
                continue
            loop, queue = target
            try:
                loop.call_soon_threadsafe(queue.put_nowait, out)
            except RuntimeError:  # the caller's event loop is gone: nobody will read this request
                with self._inbox:
                    self._listeners.pop(out.request_id, None)
                if not out.finished:
                    self.abort(out.request_id)

    def _ensure_thread(self) -> None:
        with self._inbox:
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._run_loop, name="pyagent-engine", daemon=True)
                self._thread.start()

    def _run_loop(self) -> None:
        while True:
            with self._inbox:
                while not self._closed and not self._has_work():
                    # idle with transfers open: their end wakes us; the timeout only bounds a missed wake-up
                    if not self._inbox.wait(timeout=0.5 if self._idle and self._requests else None) and self._idle:
                        break
                if self._closed:
                    return
            try:
                self.step()
            except BaseException as exc:  # deliver the failure to every waiting caller instead of hanging them
                with self._inbox:
                    listeners, self._listeners = dict(self._listeners), {}
                for rid, (loop, queue) in listeners.items():
                    self.abort(rid)
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(queue.put_nowait, exc)
                with self._lock:
                    self._take_inbox()
                    with self._inbox:
                        self._aborted.clear()

    def _has_work(self) -> bool:
        """Something for a step to do (caller holds ``_inbox``)."""
        return bool(self._incoming or self._aborted or self._abort_ids or self._kv_event
                    or (self._requests and not self._idle))

    def close(self) -> None:
        """Stop the background thread (requests still queued stay queued)."""
        with self._inbox:
            self._closed = True
            self._inbox.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams,
                 request_id: str | None = None, kv_transfer_params: dict[str, Any] | None = None) -> RequestStream:
        """Start a request and stream its outputs (``async for``); call from a running event loop.

        The request is validated and queued at once, so a bad prompt raises ``ValueError`` here rather
        than at the first iteration. Closing the stream early (``aclose()``, or dropping it) aborts the
        request and frees its blocks.
        """
        rid = request_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        stream = RequestStream(self, rid)
        with self._inbox:
            if rid in self._listeners:
                raise ValueError(f"request id {rid!r} is already in use")
            self._listeners[rid] = (loop, stream.queue)  # before the request exists: no output can be missed
        try:
            self.add_request(rid, prompt_token_ids, params, kv_transfer_params)
        except BaseException:
            with self._inbox:
                self._listeners.pop(rid, None)
            stream.detach()
            raise
        self._ensure_thread()
        return stream

    def _release(self, request_id: str, finished: bool) -> None:
        with self._inbox:
            self._listeners.pop(request_id, None)
        if not finished:
            self.abort(request_id)
            with self._inbox:
                self._aborted = [o for o in self._aborted if o.request_id != request_id]


class RequestStream(AsyncIterator[RequestOutput]):
    """The outputs of one request, fed by the engine's stepping thread."""

    def __init__(self, engine: PagedAttentionEngine, request_id: str) -> None:
        self.request_id = request_id
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._engine: PagedAttentionEngine | None = engine

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._engine is None:
            raise StopAsyncIteration
        try:
            item = await self.queue.get()
        except BaseException:  # cancelled while waiting (client gone): abort the request
            self._close(finished=False)
            raise
        if isinstance(item, BaseException):
            self._close(finished=True)
            raise RuntimeError(f"the engine failed while running request {self.request_id}: {item}") from item
        if item.finished:
            self._close(finished=True)
        return item

    def detach(self) -> None:
        """Forget the engine without aborting (the request was never started)."""
        self._engine = None

    def _close(self, *, finished: bool) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine._release(self.request_id, finished)

    async def aclose(self) -> None:
        """Stop listening; an unfinished request is aborted and its KV blocks freed."""
        self._close(finished=False)

    def __del__(self) -> None:
        self._close(finished=False)
