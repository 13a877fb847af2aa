"""A departed event subscriber is freed at once (reference counting), not left to the cyclic GC.

The soak (benchmarks/soak.py) saw the daemon's RSS creep up under churning subscribers: each
SSE/WebSocket handler's stuck-write guard formed a reference cycle (guard -> its cancelled task
-> CancelledError -> traceback -> watcher frame -> guard) that held the subscriber's request,
transport, socket and bus subscription. Such cycles outlive the young GC generations and wait
for a rare full collection. (The guard is gone since: every write to a subscriber has its own
deadline, slow_subscriber_s.) These tests run the real server with the cyclic GC switched off and
count what is left after many subscribers came and went.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from api_support import StartServer, ev

from crossmodald.api.app import API_STATE
from crossmodald.bus import EventBus, Subscription
from crossmodald.service.config import ApiConfig

#: Subscribers per test: enough that a per-subscriber leak cannot hide in noise.
CHURN = 30


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """Only reference counting frees objects inside: what survives is a cycle (or a leak)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def live(kind: type) -> int:
    """Instances of ``kind`` that exist (reachable or cyclic garbage not yet collected)."""
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


async def settle(bus: EventBus, subscribers: int) -> None:
    """Wait until the bus has ``subscribers`` subscribers, publishing now and then: an SSE
    handler notices a departed client only when it writes to it."""
    n = 0
    async with asyncio.timeout(10):
        while bus.stats().subscribers != subscribers:
            n += 1
            if n % 10 == 0:
                bus.publish(ev(n, "test.nudge"))
            await asyncio.sleep(0.002)


async def churn(url: str, bus: EventBus, *, websocket: bool) -> None:
    """CHURN clients, one after another: subscribe, read one event, leave."""
    async with aiohttp.ClientSession() as http:
        for n in range(CHURN):
            await settle(bus, 0)
            if websocket:
                async with http.ws_connect(f"{url}/v1/events/ws") as ws:
                    await settle(bus, 1)
                    bus.publish(ev(n))
                    await ws.receive_str(timeout=5)
            else:
                async with http.get(f"{url}/v1/events") as resp:
                    await settle(bus, 1)
                    bus.publish(ev(n))
                    async with asyncio.timeout(5):
                        async for line in resp.content:
                            if line.startswith(b"id: "):
                                break
        await settle(bus, 0)
    # Let the handlers' last steps run.
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


@pytest.mark.parametrize("websocket", [False, True], ids=["sse", "websocket"])
async def test_departed_subscribers_are_freed_without_the_cyclic_gc(
    start_server: StartServer, websocket: bool
) -> None:
    server = await start_server(heartbeat_s=15.0, ws_heartbeat_s=15.0)
    # Nothing per subscriber may stay behind: not the subscription, nor (SSE) its
    # request, and with it the transport and socket. Not web.Request for WebSocket: aiohttp
    # 3.14's own heartbeat callback (RequestHandler._data_received_cb -> WebSocketResponse ->
    # Request -> RequestHandler) is a cycle of aiohttp's that we do not own; our subscription
    # is not in it.
    kinds: tuple[type, ...] = (Subscription,)
    if not websocket:
        kinds += (web.Request,)
    with cyclic_gc_off():
        before = {kind: live(kind) for kind in kinds}
        await churn(server.url, server.bus, websocket=websocket)
        after = {kind: live(kind) for kind in kinds}
    assert after == before, f"left behind by {CHURN} subscribers: {after} (before: {before})"


async def test_a_handler_stuck_in_a_write_drops_a_client_that_stopped_reading(
    start_server: StartServer,
) -> None:
    """A write that waits slow_subscriber_s frees the handler (the connection is dropped)."""
    config = ApiConfig(port=0, replay_size=0, subscriber_queue=8, slow_subscriber_s=0.2)
    server = await start_server(config=config)
    state = server.app[API_STATE]
    # A client with tiny buffers that never reads: the server's writes stall.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    _reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(b"GET /v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            while not state.subscriptions:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        n = 0
        async with asyncio.timeout(20):
            while server.bus.stats().closed_slow == 0:
                n += 1
                server.bus.publish(ev(n, blob="x" * 4096))
                await asyncio.sleep(0.002)
            # Cut off while blocked in a write: the write's deadline (slow_subscriber_s) frees
            # the handler, by dropping the connection.
            while state.subscriptions:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        writer.close()
