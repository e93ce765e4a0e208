"""Two real engines in one process, joined by the real side channel (CurveZMQ on loopback).

A prefill engine computes prompts and leases their blocks; a decode engine loads only what its own prefix
cache lacks and continues. Output must be token-for-token what one engine produces alone, and every block
must come back to the free list on completion, abort, refusal and lease expiry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import zmq

from pyagent.inference.engine import PagedAttentionEngine
from pyagent.inference.sampler import SamplingParams
from pyagent.kv_transfer.connector import DisaggConnector, HandshakeRefused, PeerAddress
from pyagent.kv_transfer.layout import HANDSHAKE_VERSION
from pyagent.kv_transfer.nixl_backend import nixl_available
from pyagent.voyager.home import KeyPair
from pyagent.voyager.transport import RemoteError, VoyagerTransport

NUM_BLOCKS = 96
Backend = Literal["zmq", "nixl"]
needs_nixl = pytest.mark.skipif(not nixl_available(), reason="the nixl extra is not installed")


def _keys() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


KEYS = _keys()
ROGUE = _keys()  # a peer the prefill side trusts that sends garbage


def _engine(tiny_dir: Path, connector: DisaggConnector | None = None, block_size: int = 16,
            **options: Any) -> PagedAttentionEngine:
    return PagedAttentionEngine.from_pretrained(tiny_dir, num_blocks=NUM_BLOCKS, block_size=block_size,
                                                kv_connector=connector, **options)


def _prefill(tiny_dir: Path, lease_timeout: float = 20.0, backend: Backend = "zmq", **options: Any
             ) -> tuple[PagedAttentionEngine, DisaggConnector]:
    conn = DisaggConnector("prefill", keypair=KEYS, trusted=lambda: {ROGUE.public}, lease_timeout=lease_timeout,
                           backend=backend)
    engine = _engine(tiny_dir, conn, **options)
    conn.start(engine.model_name, engine.config)
    return engine, conn


def _decode(tiny_dir: Path, p_conn: DisaggConnector, block_size: int = 16, lease_timeout: float = 20.0,
            backend: Backend = "zmq", **options: Any) -> tuple[PagedAttentionEngine, DisaggConnector]:
    peer = PeerAddress.parse(p_conn.endpoint, KEYS.public)
    conn = DisaggConnector("decode", keypair=KEYS, trusted=set, peer=peer, lease_timeout=lease_timeout,
                           backend=backend)
    engine = _engine(tiny_dir, conn, block_size, **options)
    try:
        conn.start(engine.model_name, engine.config)
    except BaseException:
        conn.close()
        raise
    return engine, conn


@pytest.fixture(scope="module", params=["zmq", pytest.param("nixl", marks=needs_nixl)])
def pair(request: pytest.FixtureRequest, tiny_dir: Path
         ) -> Iterator[tuple[PagedAttentionEngine, PagedAttentionEngine, PagedAttentionEngine]]:
    p, p_conn = _prefill(tiny_dir, backend=request.param)
    d, d_conn = _decode(tiny_dir, p_conn, backend=request.param)
    single = _engine(tiny_dir)
    yield p, d, single
    for e in (p, d, single):
        e.close()
    d_conn.close()
    p_conn.close()


async def _run(engine: PagedAttentionEngine, prompt: list[int], params: SamplingParams,
               kv: dict[str, Any] | None = None) -> tuple[list[int], dict[str, Any] | None]:
    outs = [out async for out in engine.generate(prompt, params, kv_transfer_params=kv)]
    out = outs[-1]
    assert out.finished
    return out.token_ids, out.kv_transfer_params


async def _disagg(p: PagedAttentionEngine, d: PagedAttentionEngine, prompt: list[int], params: SamplingParams
                  ) -> list[int]:
    first = SamplingParams(max_tokens=1, temperature=params.temperature, seed=params.seed, ignore_eos=True)
    _, kv = await _run(p, prompt, first, {"do_remote_decode": True})
    assert kv is not None and kv["do_remote_prefill"] is True
    tokens, _ = await _run(d, prompt, params, kv)
    return tokens


def _settle(*engines: PagedAttentionEngine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(e.kv_cache.num_free_blocks != NUM_BLOCKS for e in engines) and time.monotonic() < deadline:
        time.sleep(0.05)


def _assert_disagg_equals_single(p: PagedAttentionEngine, d: PagedAttentionEngine, single: PagedAttentionEngine,
                                 prompts: list[list[int]], *params: SamplingParams) -> None:
    """Every prompt under every sampling setting: prefill on ``p`` + decode on ``d`` gives ``single``'s tokens."""
    async def main() -> None:
        for prompt in prompts:
            for sp in params:
                want, _ = await _run(single, prompt, sp)
                assert await _disagg(p, d, prompt, sp) == want

    asyncio.run(main())


def test_greedy_output_through_prefill_and_decode_equals_one_engine(pair: Any) -> None:
    p, d, single = pair
    tok = single.tokenizer
    shared = tok.encode("The scheduler batches running decodes with new prefill chunks under a token budget. " * 3)
    prompts = [shared + tok.encode(" First question?"), shared + tok.encode(" A second, different one."),
               tok.encode("short"), tok.encode("def fibonacci(n: int) -> int:" * 4)]
    _assert_disagg_equals_single(p, d, single, prompts, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
                                 SamplingParams(max_tokens=12, temperature=0.9, seed=11, ignore_eos=True))
    _settle(p, d)
    assert p.kv_cache.num_free_blocks == NUM_BLOCKS and d.kv_cache.num_free_blocks == NUM_BLOCKS
    stats = d.kv_connector.health()  # type: ignore[union-attr]
    # the second prompt's shared prefix came from the decode side's own prefix cache, not over the wire
    assert stats["blocks_reused"] >= len(shared) // 16 and stats["loads_failed"] == 0
    assert p.kv_connector.health()["leases"] == 0  # type: ignore[union-attr]


def test_float16_caches_through_prefill_and_decode_equal_one_float16_engine(tiny_dir: Path) -> None:
    """fp16 on both sides: the blocks move as fp16 bytes and the decode side continues exactly as one fp16
    engine would. Weights converted to Q8_0, so decode steps run in the Rust stack over the loaded blocks."""
    fp16 = {"kv_cache_dtype": "float16", "quantize": "q8_0"}
    p, p_conn = _prefill(tiny_dir, **fp16)
    d, d_conn = _decode(tiny_dir, p_conn, **fp16)
    single = _engine(tiny_dir, **fp16)
    try:
        assert {e.kv_cache.k_cache.dtype for e in (p, d, single)} == {np.dtype(np.float16)}
        tok = single.tokenizer
        prompts = [tok.encode("Half precision blocks cross the side channel unchanged. " * 3), tok.encode("short")]
        _assert_disagg_equals_single(p, d, single, prompts,
                                     SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True),
                                     SamplingParams(max_tokens=10, temperature=0.9, seed=5, ignore_eos=True))
        stats = d_conn.health()
        assert stats["blocks_loaded"] >= 3 and stats["loads_failed"] == 0
        assert d.model.stack_steps > 0 and single.model.stack_steps > 0
        _settle(p, d)
        assert p.kv_cache.num_free_blocks == NUM_BLOCKS and d.kv_cache.num_free_blocks == NUM_BLOCKS
    finally:
        for e in (p, d, single):
            e.close()
        d_conn.close()
        p_conn.close()


def test_abort_before_admission_releases_the_prefill_lease(pair: Any) -> None:
    p, d, _ = pair
    prompt = p.tokenizer.encode("abort me before I am admitted, please " * 2)

    async def main() -> None:
        _, kv = await _run(p, prompt, SamplingParams(max_tokens=1, temperature=0.0), {"do_remote_decode": True})
        assert p.kv_cache.num_free_blocks < NUM_BLOCKS  # leased while the decode side has not read it
        stream = d.generate(prompt, SamplingParams(max_tokens=50, temperature=0.0), kv_transfer_params=kv)
        await stream.aclose()  # the client went away at once

    asyncio.run(main())
    _settle(p, d)
    assert p.kv_cache.num_free_blocks == NUM_BLOCKS and d.kv_cache.num_free_blocks == NUM_BLOCKS


def test_tampered_params_fall_back_to_local_compute(pair: Any) -> None:
    p, d, single = pair
    prompt = p.tokenizer.encode("tampered parameters are computed locally")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        _, kv = await _run(p, prompt, SamplingParams(max_tokens=1, temperature=0.0), {"do_remote_decode": True})
        assert kv is not None
        want, _ = await _run(single, prompt, params)
        bad = {**kv, "prompt_digest": "0" * 32}  # claims another prompt: must not be trusted
        assert (await _run(d, prompt, params, bad))[0] == want
        garbage = {"do_remote_prefill": True, "block_ids": "all of them"}
        assert (await _run(d, prompt, params, garbage))[0] == want
        # a forged digest cannot end the lease either; the genuine parameters still can
        assert p.kv_connector.health()["leases"] == 1  # type: ignore[union-attr]
        assert (await _run(d, prompt, params, kv))[0] == want

    asyncio.run(main())
    _settle(p, d)
    assert p.kv_cache.num_free_blocks == NUM_BLOCKS and d.kv_cache.num_free_blocks == NUM_BLOCKS


def test_lease_expires_when_the_decode_peer_never_comes(tiny_dir: Path) -> None:
    p, conn = _prefill(tiny_dir, lease_timeout=0.6)
    try:
        prompt = p.tokenizer.encode("nobody will read these blocks " * 3)
        asyncio.run(_run(p, prompt, SamplingParams(max_tokens=1, temperature=0.0), {"do_remote_decode": True}))
        assert p.kv_cache.num_free_blocks < NUM_BLOCKS
        _settle(p, timeout=5.0)
        assert p.kv_cache.num_free_blocks == NUM_BLOCKS
        assert conn.health()["leases_expired"] == 1
    finally:
        p.close()
        conn.close()


def test_handshake_refuses_a_different_block_size_and_dtype(tiny_dir: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    p, p_conn = _prefill(tiny_dir)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(HandshakeRefused, match="block_size differs"):
            _decode(tiny_dir, p_conn, block_size=8)
        assert any("refused the handshake of peer" in r.getMessage() and KEYS.fingerprint in r.getMessage()
                   for r in caplog.records)
        # A cache of another dtype is refused too, naming both: no fp16 block is read as fp32 or back.
        peer = PeerAddress.parse(p_conn.endpoint, KEYS.public)
        conn = DisaggConnector("decode", keypair=KEYS, trusted=set, peer=peer)
        d = _engine(tiny_dir, conn, kv_cache_dtype="float16")
        try:
            with caplog.at_level(logging.WARNING), pytest.raises(
                    HandshakeRefused, match="KV cache dtype differs: 'float16' here, 'float32' on the peer"):
                conn.start(d.model_name, d.config)
        finally:
            conn.close()
            d.close()
        assert any("KV cache dtype differs: 'float32' here, 'float16' on the peer" in r.getMessage()
                   for r in caplog.records)
        assert p_conn.health()["refused"] == 2
    finally:
        p.close()
        p_conn.close()


def test_malformed_side_channel_messages_are_dropped_naming_the_peer(pair: Any, caplog: pytest.LogCaptureFixture) -> None:
    p, d, single = pair
    p_conn = p.kv_connector
    rogue_keys = ROGUE

    async def main() -> list[str]:
        errors = []
        async with VoyagerTransport(rogue_keys) as t:
            t.connect("p", "127.0.0.1", p_conn.transport.port, KEYS.public)
            for kind, payload in [("kv.read", {"request_id": "x", "blocks": [0]}),  # before any handshake
                                  ("kv.handshake", "hello"), ("kv.handshake", {"version": HANDSHAKE_VERSION}),
                                  ("kv.handshake", {"version": HANDSHAKE_VERSION, "layout": {"block_size": "16"}}),
                                  ("kv.done", [1, 2, 3])]:
                with pytest.raises(RemoteError) as info:
                    await t.request("p", kind, payload, timeout=5.0)
                errors.append(info.value.kind)
            # a well-formed handshake still works, and then reads out of range are refused by name
            layout = p_conn.layout.to_wire()
            ok = await t.request("p", "kv.handshake", {"version": HANDSHAKE_VERSION, "layout": layout}, timeout=5.0)
            assert ok["ok"] is True
            for bad in ({"request_id": "x", "blocks": [NUM_BLOCKS + 5]}, {"request_id": "x", "blocks": [True]},
                        {"request_id": "x", "blocks": [0]}):  # last: in range, but no such lease
                with pytest.raises(RemoteError):
                    await t.request("p", "kv.read", bad, timeout=5.0)
        return errors

    with caplog.at_level(logging.WARNING):
        kinds = asyncio.run(main())
    assert set(kinds) == {"KVProtocolError"}
    named = [r.getMessage() for r in caplog.records if "dropped a malformed" in r.getMessage()]
    assert len(named) >= 6 and all(rogue_keys.fingerprint in m for m in named)
    # the prefill instance still serves
    prompt = p.tokenizer.encode("still serving after garbage")
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)

    async def again() -> None:
        want, _ = await _run(single, prompt, params)
        assert await _disagg(p, d, prompt, params) == want

    asyncio.run(again())


@needs_nixl
def test_a_nixl_decode_instance_refuses_a_prefill_peer_without_nixl(tiny_dir: Path) -> None:
    p, p_conn = _prefill(tiny_dir, backend="zmq")
    try:
        with pytest.raises(HandshakeRefused, match="offers none"):
            _decode(tiny_dir, p_conn, backend="nixl")
    finally:
        p.close()
        p_conn.close()


def test_a_client_cannot_borrow_another_prompts_blocks(pair: Any) -> None:
    p, d, single = pair
    victim = p.tokenizer.encode("the victim's private prompt, which nobody else may condition on " * 2)
    attacker = p.tokenizer.encode("an attacker's prompt of another text entirely, equally long.... " * 2)
    attacker = (attacker + attacker)[:len(victim)]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        _, kv = await _run(p, victim, SamplingParams(max_tokens=1, temperature=0.0), {"do_remote_decode": True})
        assert kv is not None
        from pyagent.kv_transfer.params import prompt_digest

        # the victim's lease, claimed for the attacker's own prompt (its digest matches what the decode side sees)
        forged = {**kv, "prompt_digest": prompt_digest(attacker)}
        want, _ = await _run(single, attacker, params)
        assert (await _run(d, attacker, params, forged))[0] == want  # computed locally, not from the victim's KV
        assert p.kv_connector.health()["leases"] == 1  # type: ignore[union-attr]  # the victim's lease survives
        assert (await _run(d, victim, params, kv))[0] == (await _run(single, victim, params))[0]

    asyncio.run(main())
    _settle(p, d)
    assert p.kv_cache.num_free_blocks == NUM_BLOCKS and d.kv_cache.num_free_blocks == NUM_BLOCKS
