"""/v1/events (SSE) and /v1/events/ws end to end: a real server on loopback, aiohttp clients."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest
from aiohttp import WSMsgType
from api_support import StartServer, ev, read_sse

from crossmodald.bus import EventBus
from crossmodald.service.config import ApiConfig


async def wait_subscribers(bus: EventBus, count: int) -> None:
    """Wait until the server has subscribed ``count`` clients (they connect asynchronously)."""
    async with asyncio.timeout(5):
        # Polling: the subscription is made inside the server's handler; nothing to await.
        while bus.stats().subscribers != count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_sse_delivers_every_event_in_order_with_filters(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        everything = await http.get(f"{server.url}/v1/events")
        sync_only = await http.get(f"{server.url}/v1/events?type=sync.*")
        cam1 = await http.get(f"{server.url}/v1/events", params={"stream": "cam1,cam9"})
        assert everything.headers["Content-Type"].startswith("text/event-stream")
        await wait_subscribers(server.bus, 3)
        for n in range(1, 7):
            server.bus.publish(
                ev(n, "sync.offset" if n % 2 else "stream.fault", "cam1" if n > 3 else "testcard")
            )
        messages = await read_sse(everything, 6)
        assert [(m.id, m.event) for m in messages] == [
            (str(n), "sync.offset" if n % 2 else "stream.fault") for n in range(1, 7)
        ]
        assert [json.loads(m.data)["seq"] for m in messages] == list(range(1, 7))
        assert [m.id for m in await read_sse(sync_only, 3)] == ["1", "3", "5"]
        assert [m.id for m in await read_sse(cam1, 3)] == ["4", "5", "6"]
        for resp in (everything, sync_only, cam1):
            resp.close()


@pytest.mark.parametrize("how", ["header", "query"])
async def test_sse_resume_without_gap(start_server: StartServer, how: str) -> None:
    server = await start_server()
    for n in range(1, 6):
        server.bus.publish(ev(n))
    async with aiohttp.ClientSession() as http:
        if how == "header":
            resp = await http.get(f"{server.url}/v1/events", headers={"Last-Event-ID": "2"})
        else:
            resp = await http.get(f"{server.url}/v1/events?last_event_id=2")
        await wait_subscribers(server.bus, 1)
        server.bus.publish(ev(6))
        messages = await read_sse(resp, 4)
        assert [m.id for m in messages] == ["3", "4", "5", "6"]  # replay, then live, no seam
        resp.close()


async def test_sse_resume_with_gap_says_so_first(start_server: StartServer) -> None:
    config = ApiConfig(port=0, replay_size=3)
    server = await start_server(config=config)
    for n in range(1, 11):
        server.bus.publish(ev(n))  # the buffer keeps 8..10
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{server.url}/v1/events", headers={"Last-Event-ID": "2"})
        gap, *events = await read_sse(resp, 4)
        assert gap.event == "gap"
        assert gap.id is None
        notice = json.loads(gap.data)
        assert notice["last_seq"] == 2
        assert notice["first_seq"] == 8
        assert [m.id for m in events] == ["8", "9", "10"]
        resp.close()


async def test_sse_heartbeat_comment(start_server: StartServer) -> None:
    server = await start_server(heartbeat_s=0.05)
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{server.url}/v1/events")
        lines = []
        async with asyncio.timeout(3):
            while b": keep-alive\n" not in lines:
                lines.append(await resp.content.readline())
        assert lines[0] == b"retry: 2000\n"
        resp.close()


async def test_sse_graceful_shutdown_says_why(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{server.url}/v1/events")
        await wait_subscribers(server.bus, 1)
        server.bus.publish(ev(1))
        stopping = asyncio.create_task(server.stop())
        first, close = await read_sse(resp, 2)
        assert first.id == "1"
        assert close.event == "close"
        assert json.loads(close.data) == {"reason": "server shutting down"}
        assert await resp.content.read() == b""  # and the stream ends
        await asyncio.wait_for(stopping, 5)


async def _raw_sse_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An SSE client with tiny socket and stream buffers, so that not reading stalls the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    # HTTP/1.0: the body comes unchunked, so the test can search it as it is.
    writer.write(b"GET /v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    return reader, writer


async def _publish_until_cut_off(bus: EventBus, payload: str, max_events: int = 20_000) -> int:
    """Publish 4 KB events at a steady pace until the bus cuts a subscriber off."""
    count = 0
    async with asyncio.timeout(20):
        while bus.stats().closed_slow == 0 and count < max_events:
            for _ in range(20):
                count += 1
                bus.publish(ev(count, blob=payload))
            await asyncio.sleep(0.002)
    assert bus.stats().closed_slow == 1, f"nobody was cut off after {count} events"
    return count


async def test_sse_slow_client_closed_with_reason_fast_client_gets_everything(
    start_server: StartServer,
) -> None:
    config = ApiConfig(port=0, replay_size=0, subscriber_queue=8, slow_subscriber_s=0.2)
    server = await start_server(config=config)
    slow_reader, slow_writer = await _raw_sse_client(server.port)
    async with aiohttp.ClientSession(read_bufsize=1 << 20) as http:
        fast = await http.get(f"{server.url}/v1/events")
        await wait_subscribers(server.bus, 2)
        received: list[int] = []
        caught_up = asyncio.Event()
        published = -1

        async def read_fast() -> None:
            async for line in fast.content:
                if line.startswith(b"id: "):
                    received.append(int(line[4:]))
                    if received[-1] == published:
                        caught_up.set()

        fast_task = asyncio.create_task(read_fast())
        published = await _publish_until_cut_off(server.bus, "x" * 4096)
        # The slow client now reads what reached it: its stream ends with the reason.
        async with asyncio.timeout(10):
            body = await slow_reader.read()
        assert b'event: close\ndata: {"reason": "too slow: ' in body
        assert body.endswith(b'events behind"}\n\n')
        slow_writer.close()
        # The fast client kept up with every event.
        if received and received[-1] == published:
            caught_up.set()
        await asyncio.wait_for(caught_up.wait(), 10)
        assert received == list(range(1, published + 1))
        fast_task.cancel()
        fast.close()


async def test_ws_events_filters_and_resume(start_server: StartServer) -> None:
    server = await start_server()
    for n in range(1, 4):
        server.bus.publish(ev(n, stream="cam1"))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/v1/events/ws?stream=cam1&last_seq=1")
        await wait_subscribers(server.bus, 1)
        server.bus.publish(ev(4, stream="other"))
        server.bus.publish(ev(5, "sync.alarm", stream="cam1"))
        seqs = []
        for _ in range(3):
            message = await ws.receive(timeout=5)
            assert message.type is WSMsgType.TEXT
            body = json.loads(message.data)
            assert body["stream"] == "cam1"
            seqs.append(body["seq"])
        assert seqs == [2, 3, 5]
        await ws.close()


async def test_ws_resume_with_gap(start_server: StartServer) -> None:
    server = await start_server(config=ApiConfig(port=0, replay_size=2))
    for n in range(1, 6):
        server.bus.publish(ev(n))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/v1/events/ws?last_seq=1")
        gap = json.loads((await ws.receive(timeout=5)).data)
        assert gap["control"] == "gap"
        assert (gap["last_seq"], gap["first_seq"]) == (1, 4)
        assert [json.loads((await ws.receive(timeout=5)).data)["seq"] for _ in range(2)] == [4, 5]
        await ws.close()


async def test_ws_slow_client_closed_with_1013_and_reason(start_server: StartServer) -> None:
    config = ApiConfig(port=0, replay_size=0, subscriber_queue=8, slow_subscriber_s=0.2)
    server = await start_server(config=config)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/v1/events/ws", max_msg_size=1 << 20)
        await wait_subscribers(server.bus, 1)
        published = await _publish_until_cut_off(server.bus, "y" * 4096)
        seqs = []
        async with asyncio.timeout(10):
            while True:
                message = await ws.receive()
                if message.type is not WSMsgType.TEXT:
                    break
                seqs.append(json.loads(message.data)["seq"])
        assert message.type is WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER  # 1013
        assert message.extra.startswith("too slow: ")
        assert seqs == list(range(1, len(seqs) + 1))  # what it got had no hole
        assert len(seqs) < published


async def test_ws_graceful_shutdown_going_away(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/v1/events/ws")
        await wait_subscribers(server.bus, 1)
        stopping = asyncio.create_task(server.stop())
        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.GOING_AWAY
        assert message.extra == "server shutting down"
        await asyncio.wait_for(stopping, 5)


async def test_ws_client_leaving_frees_its_subscription(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/v1/events/ws")
        await wait_subscribers(server.bus, 1)
        await ws.close()
        await wait_subscribers(server.bus, 0)
