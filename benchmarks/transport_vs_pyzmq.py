"""VoyagerTransport vs raw pyzmq DEALER/ROUTER, both with CurveZMQ, small messages, one run.

Anchor: an asyncio pyzmq ROUTER that echoes each frame back to a DEALER (CURVE on, ZAP off).
Ours: VoyagerTransport request/reply (msgpack envelope, ZAP authentication, heartbeats, credit
flow control) to a handler that returns its payload. Both run server and client in one process
and one event loop, so the ratio compares the per-message software cost.

Latency: sequential round trips (one in flight). Throughput: ``--window`` requests in flight.
Target: VoyagerTransport throughput >= 50% of raw pyzmq.

    python benchmarks/transport_vs_pyzmq.py [--messages 20000] [--window 64] [--size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio

from pyagent.voyager.home import KeyPair
from pyagent.voyager.loop import configure_event_loop_policy
from pyagent.voyager.transport import VoyagerTransport


def keypair() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


async def measure(
    one: Callable[[], Awaitable[object]], *, latency_n: int, messages: int, window: int
) -> tuple[list[float], float]:
    for _ in range(200):  # warm up: handshakes, caches
        await one()
    lat = []
    for _ in range(latency_n):
        t0 = time.perf_counter()
        await one()
        lat.append(time.perf_counter() - t0)
    per_worker = messages // window

    async def worker() -> None:
        for _ in range(per_worker):
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    elapsed = time.perf_counter() - t0
    return lat, per_worker * window / elapsed


async def raw_pyzmq(payload: bytes, latency_n: int, messages: int, window: int) -> tuple[list[float], float]:
    ctx = zmq.asyncio.Context()
    server_kp, client_kp = keypair(), keypair()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.curve_server, router.curve_secretkey, router.curve_publickey = True, server_kp.secret, server_kp.public
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.curve_serverkey = server_kp.public
    dealer.curve_publickey, dealer.curve_secretkey = client_kp.public, client_kp.secret
    dealer.connect(f"tcp://127.0.0.1:{port}")

    async def echo() -> None:
        while True:
            frames = await router.recv_multipart()
            await router.send_multipart(frames)

    # Replies are matched to waiters in order (one DEALER, FIFO), the least a client must do.
    waiters: asyncio.Queue[asyncio.Future[bytes]] = asyncio.Queue()

    async def receive() -> None:
        while True:
            data = await dealer.recv()
            waiters.get_nowait().set_result(data)

    async def one() -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiters.put_nowait(fut)
        await dealer.send(payload)
        return await fut

    tasks = [asyncio.ensure_future(echo()), asyncio.ensure_future(receive())]
    try:
        return await measure(one, latency_n=latency_n, messages=messages, window=window)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        router.close(0)
        dealer.close(0)
        ctx.destroy(0)


async def voyager(payload: bytes, latency_n: int, messages: int, window: int) -> tuple[list[float], float]:
    server_kp, client_kp = keypair(), keypair()
    server = VoyagerTransport(server_kp, trusted={client_kp.public}, credits=window)
    server.register("echo", lambda p, req: p)
    port = await server.start()
    client = VoyagerTransport(client_kp)
    await client.start(serve=False)
    client.connect("server", "127.0.0.1", port, server_kp.public)

    async def one() -> object:
        return await client.request("server", "echo", payload, timeout=30)

    try:
        return await measure(one, latency_n=latency_n, messages=messages, window=window)
    finally:
        await client.close()
        await server.close()


def summary(name: str, lat: list[float], rate: float) -> str:
    lat_us = sorted(x * 1e6 for x in lat)
    p99 = lat_us[int(len(lat_us) * 0.99) - 1]
    return (
        f"{name:18} latency p50 {statistics.median(lat_us):8.1f} us  p99 {p99:8.1f} us   "
        f"throughput {rate:10.0f} msg/s"
    )


async def main(args: argparse.Namespace) -> None:
    payload = b"x" * args.size
    raw_lat, raw_rate = await raw_pyzmq(payload, args.latency, args.messages, args.window)
    voy_lat, voy_rate = await voyager(payload, args.latency, args.messages, args.window)
    print(f"{args.size}-byte messages, {args.messages} round trips with {args.window} in flight, CURVE on both")
    print(summary("raw pyzmq", raw_lat, raw_rate))
    print(summary("VoyagerTransport", voy_lat, voy_rate))
    ratio = voy_rate / raw_rate
    lat_ratio = statistics.median(voy_lat) / statistics.median(raw_lat)
    print(f"throughput ratio (Voyager / raw): {ratio:.2f}  (target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'})")
    print(f"median latency ratio (Voyager / raw): {lat_ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--latency", type=int, default=2000, help="sequential round trips for latency")
    configure_event_loop_policy()
    asyncio.run(main(parser.parse_args()))
