"""VoyagerTransport over real CurveZMQ sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from pyagent.voyager.envelope import Envelope, OversizedError
from pyagent.voyager.home import KeyPair
from pyagent.voyager.transport import (
    PeerDeadError,
    RemoteError,
    Request,
    RequestTimeout,
    TransportError,
    VoyagerTransport,
)
from tests.voyager.conftest import keypair, run


async def pair(
    server_kp: KeyPair, client_kp: KeyPair, **server_kw: Any
) -> tuple[VoyagerTransport, VoyagerTransport]:
    server = VoyagerTransport(server_kp, trusted={client_kp.public}, **server_kw)
    server.register("echo", lambda payload, req: payload)
    await server.start()
    client = VoyagerTransport(client_kp, heartbeat_interval=0.2, heartbeat_misses=15)
    await client.start(serve=False)
    client.connect("server", "127.0.0.1", server.port, server_kp.public)
    return server, client


def test_request_reply_and_client_identity() -> None:
    async def scenario() -> None:
        s_kp, c_kp = keypair(), keypair()
        server, client = await pair(s_kp, c_kp)

        async def who(payload: Any, req: Request) -> list[Any]:
            await asyncio.sleep(0.01)
            return [payload, req.client_key, req.kind]

        server.register("who", who)
        try:
            assert await client.request("server", "echo", {"a": [1, b"b"]}, timeout=5) == {"a": [1, b"b"]}
            assert await client.request("server", "who", 7, timeout=5) == [7, c_kp.public.decode(), "who"]
            results = await asyncio.gather(*(client.request("server", "echo", i, timeout=10) for i in range(300)))
            assert results == list(range(300))
            assert server.stats.replied == 302
            assert server.stats.dropped == 0
        finally:
            await client.close()
            await server.close()

    run(scenario())


def test_handler_errors_and_unknown_kinds_come_back_as_remote_errors() -> None:
    async def scenario() -> None:
        server, client = await pair(keypair(), keypair())

        def boom(payload: Any, req: Request) -> None:
            raise ValueError("bad input here")

        async def aboom(payload: Any, req: Request) -> None:
            raise KeyError("missing")

        server.register("boom", boom)
        server.register("aboom", aboom)
        try:
            with pytest.raises(RemoteError, match="ValueError: bad input here") as err:
                await client.request("server", "boom", None, timeout=5)
            assert err.value.kind == "ValueError"
            with pytest.raises(RemoteError, match="KeyError"):
                await client.request("server", "aboom", None, timeout=5)
            with pytest.raises(RemoteError, match="UnknownKind"):
                await client.request("server", "nope", None, timeout=5)
            assert await client.request("server", "echo", "still fine", timeout=5) == "still fine"
            assert server.stats.handler_errors == 2
        finally:
            await client.close()
            await server.close()

    run(scenario())


def test_reserved_kinds_cannot_be_registered() -> None:
    t = VoyagerTransport(keypair())
    for kind in ("ping", "pong", "reply", "error"):
        with pytest.raises(ValueError, match="reserved"):
            t.register(kind, lambda p, r: None)


def test_untrusted_client_cannot_submit_work() -> None:
    async def scenario() -> None:
        s_kp, trusted_kp, stranger_kp = keypair(), keypair(), keypair()
        calls: list[Any] = []
        server = VoyagerTransport(s_kp, trusted={trusted_kp.public})
        server.register("work", lambda p, r: calls.append(p) or "done")
        await server.start()
        stranger = VoyagerTransport(stranger_kp, heartbeat_interval=0.2, heartbeat_misses=3)
        await stranger.start(serve=False)
        stranger.connect("server", "127.0.0.1", server.port, s_kp.public)
        friend = VoyagerTransport(trusted_kp)
        await friend.start(serve=False)
        friend.connect("server", "127.0.0.1", server.port, s_kp.public)
        try:
            with pytest.raises((PeerDeadError, RequestTimeout)):
                await stranger.request("server", "work", "evil", timeout=2)
            for _ in range(100):
                if server.stats.auth_denied:
                    break
                await asyncio.sleep(0.05)
            assert calls == []
            assert server.stats.auth_denied >= 1
            assert await friend.request("server", "work", "good", timeout=5) == "done"
            assert calls == ["good"]
        finally:
            await stranger.close()
            await friend.close()
            await server.close()

    run(scenario())


def test_client_with_wrong_server_key_gets_nothing() -> None:
    async def scenario() -> None:
        s_kp, c_kp, impostor = keypair(), keypair(), keypair()
        server, client = await pair(s_kp, c_kp)
        client.connect("server", "127.0.0.1", server.port, impostor.public)  # expects another server key
        try:
            with pytest.raises((PeerDeadError, RequestTimeout)):
                await client.request("server", "echo", 1, timeout=2)
            assert server.stats.replied == 0
        finally:
            await client.close()
            await server.close()

    run(scenario())


def test_garbage_frames_are_dropped_and_counted_and_the_node_keeps_serving() -> None:
    """Thousands of random, truncated and oversized frames; then a real request still works."""

    async def scenario() -> None:
        s_kp, c_kp = keypair(), keypair()
        limit = 64 * 1024
        server, client = await pair(s_kp, c_kp, max_message_bytes=limit)
        rng = random.Random(6)
        # 1) raw TCP garbage that is not even ZMTP: the handshake fails, libzmq drops the connection
        for _ in range(60):
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
                s.sendall(rng.randbytes(rng.randint(1, 600)))
        # 2) an authenticated DEALER sending frames the application must reject
        ctx = zmq.asyncio.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.curve_serverkey, raw.curve_publickey, raw.curve_secretkey = s_kp.public, c_kp.public, c_kp.secret
        raw.connect(f"tcp://127.0.0.1:{server.port}")
        valid = Envelope("echo", {"x": b"y" * 50}).encode()
        sent_malformed = sent_oversized = 0
        for i in range(3000):
            choice = i % 5
            if choice == 0:
                await raw.send(rng.randbytes(rng.randint(0, 300)))
                sent_malformed += 1
            elif choice == 1:
                await raw.send(valid[: rng.randint(0, len(valid) - 1)])
                sent_malformed += 1
            elif choice == 2:
                await raw.send_multipart([valid, b"extra frame"])
                sent_malformed += 1
            elif choice == 3:
                await raw.send(msgpack.packb([1, "echo", b"id", None, "fifth"]))
                sent_malformed += 1
            elif i % 50 == 4:
                await raw.send(b"\x00" * (limit + 1 + rng.randint(0, limit // 2)))
                sent_oversized += 1
            else:
                await raw.send(msgpack.packb([99, "echo", b"id", None]))  # unknown protocol version
                sent_malformed += 1
        for _ in range(300):  # bounded wait for the node to work through its queue and monitor events
            if server.stats.dropped >= sent_malformed + sent_oversized and server.stats.handshake_failed >= 50:
                break
            await asyncio.sleep(0.05)
        try:
            assert server.stats.dropped_malformed == sent_malformed
            assert server.stats.dropped_oversized == sent_oversized
            assert server.stats.handshake_failed >= 50  # the 60 garbage connections (monitor events may lag)
            assert server.stats.replied == 0
            assert await client.request("server", "echo", "real work", timeout=5) == "real work"
            assert server.stats.replied == 1
        finally:
            raw.close(0)
            ctx.destroy(0)
            await client.close()
            await server.close()

    run(scenario(), timeout=60)


def test_oversized_request_is_refused_before_sending() -> None:
    async def scenario() -> None:
        server, client = await pair(keypair(), keypair())
        client.max_message_bytes = 1000
        try:
            with pytest.raises(OversizedError):
                await client.request("server", "echo", b"x" * 5000, timeout=5)
        finally:
            await client.close()
            await server.close()

    run(scenario())


def test_silent_peer_is_declared_dead_and_its_pending_requests_fail() -> None:
    async def scenario() -> None:
        dead: list[str] = []
        s_kp, c_kp = keypair(), keypair()
        ctx = zmq.asyncio.Context()
        frozen = ctx.socket(zmq.ROUTER)  # completes the CURVE handshake, then never answers
        frozen.setsockopt(zmq.LINGER, 0)
        frozen.curve_server, frozen.curve_secretkey, frozen.curve_publickey = True, s_kp.secret, s_kp.public
        port = frozen.bind_to_random_port("tcp://127.0.0.1")
        client = VoyagerTransport(c_kp, heartbeat_interval=0.1, heartbeat_misses=3, on_peer_dead=dead.append)
        await client.start(serve=False)
        client.connect("server", "127.0.0.1", port, s_kp.public)
        try:
            pending = asyncio.ensure_future(client.request("server", "hang", None, timeout=20))
            frames = await asyncio.wait_for(frozen.recv_multipart(), 5)  # it did arrive
            assert len(frames) == 2
            with pytest.raises(PeerDeadError, match="missed 3 heartbeats"):
                await pending
            assert dead == ["server"]
            assert not client.is_alive("server")
            assert client.stats.peers_dead == 1
            with pytest.raises(PeerDeadError):
                await client.request("server", "hang", None, timeout=1)
        finally:
            await client.close()
            frozen.close(0)
            ctx.destroy(0)

    run(scenario())


def test_closing_server_hands_back_work_in_flight() -> None:
    async def scenario() -> None:
        server, client = await pair(keypair(), keypair())
        started = asyncio.Event()

        async def hang(payload: Any, req: Request) -> None:
            started.set()
            await asyncio.Event().wait()

        server.register("hang", hang)
        try:
            pending = asyncio.ensure_future(client.request("server", "hang", None, timeout=20))
            await asyncio.wait_for(started.wait(), 5)
            await server.close()
            with pytest.raises(RemoteError, match="Cancelled") as err:
                await pending
            assert err.value.kind == "Cancelled"
        finally:
            await client.close()

    run(scenario())


def test_request_timeout() -> None:
    async def scenario() -> None:
        server, client = await pair(keypair(), keypair())

        async def slow(payload: Any, req: Request) -> str:
            await asyncio.sleep(1.0)
            return "late"

        server.register("slow", slow)
        try:
            with pytest.raises(RequestTimeout):
                await client.request("server", "slow", None, timeout=0.2)
            for _ in range(100):
                if client.stats.late_replies:
                    break
                await asyncio.sleep(0.05)
            assert client.stats.late_replies == 1  # the late reply is dropped, not delivered twice
        finally:
            await client.close()
            await server.close()

    run(scenario())


def test_credits_bound_requests_in_flight() -> None:
    async def scenario() -> None:
        server, client = await pair(keypair(), keypair(), credits=3)
        active = 0
        peak = 0

        async def work(payload: Any, req: Request) -> Any:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1
            return payload

        server.register("work", work)
        try:
            out = await asyncio.gather(*(client.request("server", "work", i, timeout=20) for i in range(30)))
            assert out == list(range(30))
            assert peak == 3
            assert client.link("server") is not None
            assert client.link("server").credits == 3  # type: ignore[union-attr]
            assert server.stats.rejected_busy == 0
        finally:
            await client.close()
            await server.close()

    run(scenario())


def test_client_over_its_credits_is_refused_not_queued() -> None:
    async def scenario() -> None:
        s_kp, c_kp = keypair(), keypair()
        server = VoyagerTransport(s_kp, trusted={c_kp.public}, credits=1)
        release = asyncio.Event()

        async def hold(payload: Any, req: Request) -> str:
            await release.wait()
            return "ok"

        server.register("hold", hold)
        await server.start()
        ctx = zmq.asyncio.Context()
        raw = ctx.socket(zmq.DEALER)  # ignores credits on purpose
        raw.setsockopt(zmq.LINGER, 0)
        raw.curve_serverkey, raw.curve_publickey, raw.curve_secretkey = s_kp.public, c_kp.public, c_kp.secret
        raw.connect(f"tcp://127.0.0.1:{server.port}")
        try:
            first, second = Envelope("hold"), Envelope("hold")
            await raw.send(first.encode())
            await raw.send(second.encode())
            reply = Envelope.decode(await asyncio.wait_for(raw.recv(), 5))
            assert (reply.kind, reply.msg_id, reply.payload[0]) == ("error", second.msg_id, "Busy")
            release.set()
            reply = Envelope.decode(await asyncio.wait_for(raw.recv(), 5))
            assert (reply.kind, reply.msg_id, reply.payload) == ("reply", first.msg_id, "ok")
            assert server.stats.rejected_busy == 1
        finally:
            raw.close(0)
            ctx.destroy(0)
            await server.close()

    run(scenario())


def test_reply_to_a_vanished_client_is_counted_unroutable() -> None:
    async def scenario() -> None:
        s_kp, c_kp = keypair(), keypair()
        server, client = await pair(s_kp, c_kp)

        async def slow(payload: Any, req: Request) -> str:
            await asyncio.sleep(0.5)
            return "nobody listens"

        server.register("slow", slow)
        try:
            pending = asyncio.ensure_future(client.request("server", "slow", None, timeout=5))
            await asyncio.sleep(0.2)
            client.disconnect("server")
            with pytest.raises(PeerDeadError):
                await pending
            for _ in range(40):
                if server.stats.unroutable:
                    break
                await asyncio.sleep(0.05)
            assert server.stats.unroutable == 1
            assert server.stats.replied == 0
        finally:
            await client.close()
            await server.close()

    run(scenario())


def test_bind_conflict_is_a_transport_error() -> None:
    async def scenario() -> None:
        first = VoyagerTransport(keypair())
        port = await first.start()
        second = VoyagerTransport(keypair(), port=port)
        try:
            with pytest.raises(TransportError, match="cannot bind"):
                await second.start()
        finally:
            await first.close()

    run(scenario())


def test_close_releases_sockets_and_threads() -> None:
    import threading

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def scenario() -> None:
        server, client = await pair(keypair(), keypair())
        assert await client.request("server", "echo", 1, timeout=5) == 1
        await client.close()
        await server.close()
        await client.close()  # idempotent

    threads_before = set(threading.enumerate())
    fds_before = fds()
    run(scenario())
    assert set(threading.enumerate()) == threads_before
    assert fds() <= fds_before


def test_work_of_a_client_that_went_silent_is_cancelled() -> None:
    """A killed origin must not keep this node busy: its heartbeats stop, its work is cancelled."""

    async def scenario() -> None:
        s_kp, alive_kp, gone_kp = keypair(), keypair(), keypair()
        server = VoyagerTransport(s_kp, trusted={alive_kp.public, gone_kp.public}, client_timeout=0.8)
        cancelled: list[str] = []
        release = asyncio.Event()

        async def hold(payload: Any, req: Request) -> str:
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled.append(payload)
                raise
            return payload

        server.register("hold", hold)
        await server.start()
        clients = {}
        for name, kp in (("alive", alive_kp), ("gone", gone_kp)):
            clients[name] = VoyagerTransport(kp, heartbeat_interval=0.1, heartbeat_misses=50)
            await clients[name].start(serve=False)
            clients[name].connect("server", "127.0.0.1", server.port, s_kp.public)
        try:
            alive = asyncio.ensure_future(clients["alive"].request("server", "hold", "alive", timeout=20))
            gone = asyncio.ensure_future(clients["gone"].request("server", "hold", "gone", timeout=20))
            await asyncio.sleep(0.3)
            await clients["gone"].close()  # no more heartbeats from this one
            with pytest.raises(PeerDeadError):
                await gone
            for _ in range(60):
                if cancelled:
                    break
                await asyncio.sleep(0.05)
            assert cancelled == ["gone"]
            assert server.stats.clients_lost == 1
            await asyncio.sleep(1.0)  # well past client_timeout: the live client's work is untouched
            assert cancelled == ["gone"] and not alive.done()
            release.set()
            assert await alive == "alive"
        finally:
            for c in clients.values():
                await c.close()
            await server.close()

    run(scenario())
