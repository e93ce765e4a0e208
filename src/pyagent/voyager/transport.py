"""VoyagerTransport: authenticated request/reply between nodes over ZeroMQ (pyzmq asyncio).

Shape: each node binds one ROUTER (incoming work) and opens one DEALER per peer it sends work
to. Every frame is one msgpack :class:`~pyagent.voyager.envelope.Envelope`.

Choices, and the ZeroMQ traps they avoid:

* CurveZMQ on every socket. The ROUTER authenticates clients through a ZAP handler
  (:class:`zmq.auth.asyncio.AsyncioAuthenticator`, running in our own event loop, one per
  transport context) whose callback accepts only keys in the trusted set; unknown keys fail the
  handshake, so their frames never reach the application. Denials are counted.
* ``ROUTER_MANDATORY``: a reply to a client that has gone raises instead of vanishing; we count
  it as ``unroutable`` and keep serving.
* ``LINGER 0`` on every socket and ``destroy(linger=0)`` on the context, so closing never hangs.
* ``MAXMSGSIZE`` caps what libzmq will even buffer; frames between the envelope limit and that cap
  are dropped and counted by the application. A socket monitor counts connections that close
  before completing the CURVE handshake (random bytes on the port, unknown keys).
* Heartbeats: each link pings its peer every ``heartbeat_interval`` seconds; after
  ``heartbeat_misses`` silent intervals the peer is declared dead and its pending requests fail
  with :class:`PeerDeadError` (callers re-route the work).
* Credit-based flow control: the server grants each client ``credits`` outstanding requests
  (sent in every ``pong``); a client never has more than that in flight, and a server answers a
  client that exceeds it with a ``Busy`` error instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from pyagent.voyager.envelope import DEFAULT_MAX_BYTES, Envelope, EnvelopeError, OversizedError
from pyagent.voyager.home import KeyPair

log = logging.getLogger(__name__)

ZAP_DOMAIN = "pyagent-voyager"
PING, PONG, REPLY, ERROR = "ping", "pong", "reply", "error"
_RESERVED = {PING, PONG, REPLY, ERROR}


class TransportError(Exception):
    """Base class for request failures the caller can route around."""


class PeerDeadError(TransportError):
    """The peer stopped answering heartbeats (or was never reachable)."""


class RequestTimeout(TransportError):
    """No reply within the request's timeout."""


class RemoteError(TransportError):
    """The peer answered with an error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class BusyError(RemoteError):
    """The peer refused the request: this client had used up its credits."""


@dataclass(frozen=True)
class Request:
    """What a handler learns about an incoming request besides its payload."""

    kind: str
    client_key: str  # the client's CurveZMQ public key (Z85), as authenticated by ZAP
    msg_id: bytes


Handler = Callable[[Any, Request], Awaitable[Any] | Any]


@dataclass
class TransportStats:
    received: int = 0
    replied: int = 0
    dropped_malformed: int = 0
    dropped_oversized: int = 0
    auth_denied: int = 0
    handshake_failed: int = 0
    unroutable: int = 0
    rejected_busy: int = 0
    handler_errors: int = 0
    late_replies: int = 0
    peers_dead: int = 0
    clients_lost: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_malformed + self.dropped_oversized

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _TrustedKeys:
    """ZAP credentials provider: the live trusted key set, counting denials."""

    def __init__(self, keys: Callable[[], set[bytes]], stats: TransportStats) -> None:
        self._keys = keys
        self._stats = stats

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._keys():
            return True
        self._stats.auth_denied += 1
        return False


@dataclass
class PeerLink:
    """One DEALER connection to a peer's ROUTER."""

    peer_id: str
    endpoint: str
    server_key: bytes
    socket: zmq.asyncio.Socket
    last_seen: float
    alive: bool = True
    # True once the peer answered over this link: only the holder of ``server_key``'s secret can
    # complete the CURVE handshake, so a spoofed advertisement copying the key never gets here.
    verified: bool = False
    credits: int = 1
    inflight: int = 0
    pending: dict[bytes, asyncio.Future[Any]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    credit_freed: asyncio.Condition = field(default_factory=asyncio.Condition)
    proven: asyncio.Event = field(default_factory=asyncio.Event)


class VoyagerTransport:
    def __init__(
        self,
        keypair: KeyPair,
        *,
        trusted: Callable[[], set[bytes]] | Iterable[bytes] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_BYTES,
        credits: int = 64,
        heartbeat_interval: float = 0.5,
        heartbeat_misses: int = 6,
        on_peer_dead: Callable[[str], None] | None = None,
        client_timeout: float = 15.0,
    ) -> None:
        self.keypair = keypair
        if callable(trusted):
            self._trusted: Callable[[], set[bytes]] = trusted
        else:
            fixed = set(trusted)
            self._trusted = lambda: fixed
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.credits = credits
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_misses = heartbeat_misses
        self.on_peer_dead = on_peer_dead
        self.stats = TransportStats()
        self._handlers: dict[str, Handler] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client_inflight: dict[bytes, int] = {}
        self.client_timeout = client_timeout
        self._client_seen: dict[bytes, float] = {}
        self._client_work: dict[bytes, set[asyncio.Task[Any]]] = {}
        self._links: dict[str, PeerLink] = {}
        self._closed = False

    # -- lifecycle

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def register(self, kind: str, handler: Handler) -> None:
        """Serve requests of ``kind``; the handler's return value (msgpack-able) is the reply."""
        if kind in _RESERVED:
            raise ValueError(f"{kind!r} is a reserved envelope kind")
        self._handlers[kind] = handler

    async def start(self, *, serve: bool = True) -> int:
        """Open the context; with ``serve`` bind the ROUTER and return its port."""
        self._ctx = zmq.asyncio.Context()
        if not serve:
            return 0
        self._auth = AsyncioAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_TrustedKeys(self._trusted, self.stats))
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_bytes + 1024)
        router.setsockopt(zmq.CURVE_SERVER, 1)
        router.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)
        router.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
        router.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        self._monitor = router.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        try:
            if self.port:
                router.bind(f"tcp://{self.host}:{self.port}")
            else:
                self.port = router.bind_to_random_port(f"tcp://{self.host}")
        except zmq.ZMQError as exc:
            router.close(0)
            await self.close()
            raise TransportError(f"cannot bind tcp://{self.host}:{self.port}: {exc}") from None
        self._router = router
        self._spawn(self._serve())
        self._spawn(self._watch_monitor())
        self._spawn(self._reap_lost_clients())
        return self.port

    async def close(self) -> None:
        """Fail pending requests, stop every task, close every socket (LINGER 0); idempotent."""
        if self._closed:
            return
        self._closed = True
        for link in self._links.values():
            self._fail_link(link, PeerDeadError(f"transport closed (peer {link.peer_id})"), count=False)
            for task in link.tasks:
                task.cancel()
        tasks = [t for link in self._links.values() for t in link.tasks] + list(self._tasks)
        for task in self._tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for link in self._links.values():
            link.socket.close(0)
        self._links.clear()
        if self._router is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._router.disable_monitor()
            self._router.close(0)
        if self._monitor is not None:
            self._monitor.close(0)
        if self._auth is not None:
            self._auth.stop()
        if self._ctx is not None:
            self._ctx.destroy(linger=0)

    async def __aenter__(self) -> VoyagerTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- server side

    async def _serve(self) -> None:
        assert self._router is not None
        router = self._router
        while True:
            try:
                frames = await router.recv_multipart(copy=False)
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.warning("ROUTER receive failed: %s", exc)
                continue
            self.stats.received += 1
            if len(frames) != 2:
                self.stats.dropped_malformed += 1
                continue
            ident = frames[0].bytes
            body = frames[1]
            self._client_seen[ident] = asyncio.get_running_loop().time()
            try:
                env = Envelope.decode(body.bytes, self.max_message_bytes)
            except OversizedError:
                self.stats.dropped_oversized += 1
                continue
            except EnvelopeError:
                self.stats.dropped_malformed += 1
                continue
            if env.kind == PING:
                await self._send_reply(ident, Envelope(PONG, {"credits": self.credits}, env.msg_id))
                continue
            handler = self._handlers.get(env.kind)
            if handler is None:
                self.stats.dropped_malformed += 1
                await self._send_reply(ident, Envelope(ERROR, ["UnknownKind", env.kind], env.msg_id))
                continue
            inflight = self._client_inflight.get(ident, 0)
            if inflight >= self.credits:
                self.stats.rejected_busy += 1
                await self._send_reply(ident, Envelope(ERROR, ["Busy", "no credits left"], env.msg_id))
                continue
            user = body.get("User-Id") or ""
            request = Request(env.kind, user if isinstance(user, str) else str(user), env.msg_id)
            try:
                result = handler(env.payload, request)
            except Exception as exc:
                self.stats.handler_errors += 1
                await self._send_reply(ident, Envelope(ERROR, [type(exc).__name__, str(exc)], env.msg_id))
                continue
            if inspect.isawaitable(result):
                self._client_inflight[ident] = inflight + 1
                work = self._spawn(self._finish(ident, env.msg_id, result))
                self._client_work.setdefault(ident, set()).add(work)
                work.add_done_callback(self._client_work[ident].discard)
            else:
                await self._send_reply(ident, Envelope(REPLY, result, env.msg_id))

    async def _finish(self, ident: bytes, msg_id: bytes, pending: Awaitable[Any]) -> None:
        try:
            result = await pending
            reply = Envelope(REPLY, result, msg_id)
        except asyncio.CancelledError:
            reply = Envelope(ERROR, ["Cancelled", "node stopping"], msg_id)
            await self._send_reply(ident, reply)
            raise
        except Exception as exc:
            self.stats.handler_errors += 1
            reply = Envelope(ERROR, [type(exc).__name__, str(exc)], msg_id)
        finally:
            left = self._client_inflight.get(ident, 1) - 1
            if left > 0:
                self._client_inflight[ident] = left
            else:
                self._client_inflight.pop(ident, None)
        await self._send_reply(ident, reply)

    async def _send_reply(self, ident: bytes, env: Envelope) -> None:
        if self._router is None or self._router.closed:
            return
        try:
            data = env.encode(self.max_message_bytes)
        except OversizedError as exc:
            self.stats.handler_errors += 1
            data = Envelope(ERROR, ["Oversized", str(exc)], env.msg_id).encode(self.max_message_bytes)
        counted = env.kind != PONG
        if counted:
            self.stats.replied += 1  # before the await, so a reader who got the reply sees the count
        try:
            await self._router.send_multipart([ident, data])
        except zmq.ZMQError as exc:
            if counted:
                self.stats.replied -= 1
            if exc.errno == zmq.EHOSTUNREACH:
                self.stats.unroutable += 1
            elif exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                log.warning("ROUTER send failed: %s", exc)

    async def _reap_lost_clients(self) -> None:
        """Cancel the work of a client that went silent (its heartbeats stopped: it died).

        A killed origin would otherwise keep this node's slots busy until its tasks time out.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.client_timeout / 4))
            now = loop.time()
            for ident, seen in list(self._client_seen.items()):
                if now - seen <= self.client_timeout:
                    continue
                work = self._client_work.pop(ident, set())
                self._client_seen.pop(ident, None)
                if work:
                    self.stats.clients_lost += 1
                    for task in work:
                        task.cancel()

    async def _watch_monitor(self) -> None:
        """Count connections that close before completing a CURVE handshake (garbage, bad keys)."""
        assert self._monitor is not None
        unproven: set[int] = set()
        while True:
            try:
                msg = await self._monitor.recv_multipart()
            except zmq.ZMQError:
                return
            event = parse_monitor_message(msg)
            kind, fd = event["event"], int(event["value"])
            if kind == zmq.EVENT_MONITOR_STOPPED:
                return
            if kind == zmq.EVENT_ACCEPTED:
                unproven.add(fd)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                unproven.discard(fd)
            elif kind == zmq.EVENT_DISCONNECTED and fd in unproven:
                unproven.discard(fd)
                self.stats.handshake_failed += 1

    # -- client side

    def connect(self, peer_id: str, address: str, port: int, server_key: bytes) -> PeerLink:
        """Open (or return) the DEALER link to a peer whose public key we trust."""
        link = self._links.get(peer_id)
        endpoint = f"tcp://{address}:{port}"
        if link is not None and link.endpoint == endpoint and link.server_key == server_key:
            return link
        if link is not None:
            self.disconnect(peer_id)
        assert self._ctx is not None, "start() the transport first"
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_message_bytes + 1024)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
        sock.connect(endpoint)
        loop = asyncio.get_running_loop()
        link = PeerLink(peer_id, endpoint, server_key, sock, last_seen=loop.time())
        self._links[peer_id] = link
        link.tasks.append(loop.create_task(self._link_recv(link)))
        link.tasks.append(loop.create_task(self._link_heartbeat(link)))
        return link

    async def verify(self, peer_id: str, address: str, port: int, server_key: bytes, timeout: float) -> bool:
        """Connect with the key the peer claims and wait for its first answer (a heartbeat reply):
        True only after an authenticated CURVE handshake with exactly that key."""
        link = self.connect(peer_id, address, port, server_key)
        if link.verified:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.proven.wait(), timeout)
        return link.verified

    def disconnect(self, peer_id: str) -> None:
        link = self._links.pop(peer_id, None)
        if link is None:
            return
        self._fail_link(link, PeerDeadError(f"disconnected from {peer_id}"), count=False)
        for task in link.tasks:
            task.cancel()
        link.socket.close(0)

    def link(self, peer_id: str) -> PeerLink | None:
        return self._links.get(peer_id)

    def is_alive(self, peer_id: str) -> bool:
        link = self._links.get(peer_id)
        return link is not None and link.alive

    async def request(self, peer_id: str, kind: str, payload: Any, *, timeout: float = 30.0) -> Any:
        """Send one request and wait for its reply (raises a TransportError subclass)."""
        link = self._links.get(peer_id)
        if link is None:
            raise PeerDeadError(f"not connected to {peer_id}")
        if not link.alive:
            raise PeerDeadError(f"peer {peer_id} is not answering heartbeats")
        env = Envelope(kind, payload)
        data = env.encode(self.max_message_bytes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with link.credit_freed:
            while link.inflight >= link.credits:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RequestTimeout(f"no credit from {peer_id} within {timeout}s")
                try:
                    await asyncio.wait_for(link.credit_freed.wait(), remaining)
                except TimeoutError:
                    raise RequestTimeout(f"no credit from {peer_id} within {timeout}s") from None
                if not link.alive:
                    raise PeerDeadError(f"peer {peer_id} died while waiting for credit")
            link.inflight += 1
        fut: asyncio.Future[Any] = loop.create_future()
        link.pending[env.msg_id] = fut
        try:
            await link.socket.send(data)
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise RequestTimeout(f"{kind} to {peer_id} timed out after {timeout}s") from None
        finally:
            link.pending.pop(env.msg_id, None)
            link.inflight -= 1
            async with link.credit_freed:
                link.credit_freed.notify()

    async def _link_recv(self, link: PeerLink) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await link.socket.recv()
            except zmq.ZMQError:
                return
            try:
                env = Envelope.decode(data, self.max_message_bytes)
            except EnvelopeError:
                self.stats.dropped_malformed += 1
                continue
            link.last_seen = loop.time()
            link.alive = True
            if not link.verified:
                link.verified = True
                link.proven.set()
            if env.kind == PONG:
                credits = env.payload.get("credits") if isinstance(env.payload, dict) else None
                if isinstance(credits, int) and credits > 0 and credits != link.credits:
                    link.credits = credits
                    async with link.credit_freed:
                        link.credit_freed.notify_all()
                continue
            fut = link.pending.get(env.msg_id)
            if fut is None or fut.done():
                self.stats.late_replies += 1
                continue
            if env.kind == REPLY:
                fut.set_result(env.payload)
            elif env.kind == ERROR:
                etype, msg = _error_parts(env.payload)
                fut.set_exception((BusyError if etype == "Busy" else RemoteError)(etype, msg))
            else:
                self.stats.dropped_malformed += 1

    async def _link_heartbeat(self, link: PeerLink) -> None:
        loop = asyncio.get_running_loop()
        ping = Envelope(PING, None, b"hb")
        data = ping.encode()
        while True:
            with contextlib.suppress(zmq.ZMQError):
                await link.socket.send(data, flags=zmq.NOBLOCK)
            await asyncio.sleep(self.heartbeat_interval)
            silent = loop.time() - link.last_seen
            if link.alive and silent > self.heartbeat_interval * self.heartbeat_misses:
                link.alive = False
                self._fail_link(link, PeerDeadError(f"peer {link.peer_id} missed {self.heartbeat_misses} heartbeats"))
                async with link.credit_freed:
                    link.credit_freed.notify_all()

    def _fail_link(self, link: PeerLink, exc: Exception, *, count: bool = True) -> None:
        if count:
            self.stats.peers_dead += 1
        for fut in link.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        if count and self.on_peer_dead is not None:
            try:
                self.on_peer_dead(link.peer_id)
            except Exception:
                log.exception("on_peer_dead callback failed")


def _error_parts(payload: Any) -> tuple[str, str]:
    if isinstance(payload, list) and len(payload) == 2:
        return str(payload[0]), str(payload[1])
    return "RemoteError", repr(payload)[:200]
