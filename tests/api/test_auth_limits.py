"""Request size limits and per-client limits (requests, subscribers, streams), on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from api_support import FakeStreams

from crossmodald.api import bound_port, build_app, serve
from crossmodald.api.limits import (
    LIMITS,
    ClientLimits,
    LimitExceeded,
    acquire_stream_slot,
)
from crossmodald.bus import EventBus
from crossmodald.service.config import ApiConfig, ApiLimitsConfig


def _config(**limits: int) -> ApiConfig:
    return ApiConfig(port=0, limits=ApiLimitsConfig(**limits))


HOLD = web.AppKey("hold", asyncio.Event)


@pytest.fixture
async def limited() -> AsyncIterator[tuple[str, web.Application]]:
    """A server with small limits and two extra routes: one reads its body, one starts a stream."""
    config = _config(
        max_body_bytes=4096,
        max_field_bytes=1024,
        max_line_bytes=1024,
        max_connections_per_client=3,
        max_subscribers_per_client=2,
        max_streams=3,
        max_streams_per_client=2,
    )
    bus = EventBus(config.replay_size, config.subscriber_queue, config.slow_subscriber_s)
    # Short heartbeat: a closed SSE client is noticed at the next write (then its slots go).
    app = build_app(bus, FakeStreams(), config, heartbeat_s=0.2, ws_heartbeat_s=None)
    slots: dict[str, object] = {}

    async def echo(request: web.Request) -> web.Response:
        data = await request.read()  # aiohttp's client_max_size applies here
        return web.json_response({"bytes": len(data)})

    async def start(request: web.Request) -> web.Response:
        slot = acquire_stream_slot(request)
        slots[request.match_info["name"]] = slot
        return web.json_response({"started": request.match_info["name"]}, status=201)

    async def stop(request: web.Request) -> web.Response:
        slot = slots.pop(request.match_info["name"])
        slot.release()  # type: ignore[attr-defined]
        return web.json_response({}, status=200)

    async def hold(request: web.Request) -> web.Response:
        await app[HOLD].wait()  # a handler that takes its time (holds its slot meanwhile)
        return web.json_response({})

    app[HOLD] = asyncio.Event()
    app.router.add_post("/v1/sources/echo", echo)
    app.router.add_post("/v1/sources/hold", hold)
    app.router.add_post("/v1/sources/{name}/start", start)
    app.router.add_delete("/v1/sources/{name}", stop)
    runner = await serve(app, "127.0.0.1", 0, shutdown_timeout_s=1.0)
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}", app
    finally:
        await runner.cleanup()


async def test_oversized_body_by_content_length_is_refused_before_reading(
    limited: tuple[str, web.Application],
) -> None:
    url, _ = limited
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/sources/echo", data=b"x" * 4000) as resp:
            assert resp.status == 200
            assert await resp.json() == {"bytes": 4000}
        async with session.post(url + "/v1/sources/echo", data=b"x" * 5000) as resp:
            assert resp.status == 413
            assert (await resp.json()) == {
                "error": "request body too large: 5000 bytes (limit 4096)"
            }
        # Unmatched routes are refused the same way (nothing reads the body at all).
        async with session.post(url + "/nowhere", data=b"x" * 5000) as resp:
            assert resp.status == 413


async def test_oversized_chunked_body_is_cut_off(limited: tuple[str, web.Application]) -> None:
    url, _ = limited

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/sources/echo", data=chunks()) as resp,
    ):
        assert resp.status == 413
        assert "error" in await resp.json()


async def test_oversized_headers_and_request_line(limited: tuple[str, web.Application]) -> None:
    url, _ = limited
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/healthz", headers={"X-Big": "h" * 900}) as resp:
            assert resp.status == 200
        async with session.get(url + "/healthz", headers={"X-Big": "h" * 2000}) as resp:
            assert resp.status in (400, 431)
        async with session.get(url + "/healthz?" + "q" * 2000) as resp:
            assert resp.status in (400, 414)
        # The server is still fine afterwards.
        async with session.get(url + "/healthz") as resp:
            assert resp.status == 200


async def test_too_many_subscribers_per_client(limited: tuple[str, web.Application]) -> None:
    url, app = limited
    async with aiohttp.ClientSession() as session:
        first = await session.get(url + "/v1/events")
        second = await session.ws_connect(url + "/v1/events/ws")
        assert first.status == 200
        async with session.get(url + "/v1/events") as third:
            assert third.status == 429
            assert third.headers["Retry-After"] == "1"
            assert (await third.json())["error"] == (
                "too many event subscribers from 127.0.0.1 (limit 2 per client)"
            )
        # Other requests still pass (2 held of 3 per client).
        async with session.get(url + "/v1/streams") as resp:
            assert resp.status == 200
        first.close()
        await second.close()
        limits = app[LIMITS]
        async with asyncio.timeout(5):
            while limits.held("subscribers") or limits.held("connections"):  # noqa: ASYNC110 - counters, nothing to await
                await asyncio.sleep(0.02)
        async with session.get(url + "/v1/events") as again:
            assert again.status == 200
        assert limits.refused["subscribers"] == 1


async def test_too_many_requests_in_progress_per_client(
    limited: tuple[str, web.Application],
) -> None:
    url, app = limited
    limits = app[LIMITS]
    # Three long-lived requests: two event streams plus one slow handler.
    async with aiohttp.ClientSession() as session:
        a = await session.get(url + "/v1/events")
        b = await session.get(url + "/v1/events")
        gate = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield b"z"
            await gate.wait()

        # A body still arriving holds no slot (it is read before the request takes one).
        upload = asyncio.create_task(session.post(url + "/v1/sources/echo", data=slow_body()))
        held = asyncio.create_task(session.post(url + "/v1/sources/hold"))
        async with asyncio.timeout(5):
            while limits.held("connections", "127.0.0.1") < 3:  # noqa: ASYNC110 - counters
                await asyncio.sleep(0.02)
        async with session.get(url + "/v1/streams") as resp:
            assert resp.status == 429
            assert "requests in progress" in (await resp.json())["error"]
        gate.set()
        app[HOLD].set()
        async with await upload as done:
            assert done.status == 200
        async with await held as done:
            assert done.status == 200
        async with session.get(url + "/v1/streams") as resp:
            assert resp.status == 200
        a.close()
        b.close()


async def test_stream_slots_per_client_and_in_all(limited: tuple[str, web.Application]) -> None:
    url, app = limited
    async with aiohttp.ClientSession() as session:
        for name in ("s1", "s2"):
            async with session.post(url + f"/v1/sources/{name}/start") as resp:
                assert resp.status == 201
        async with session.post(url + "/v1/sources/s3/start") as resp:
            assert resp.status == 429
            assert (
                "too many streams from 127.0.0.1 (limit 2 per client)"
                in (await resp.json())["error"]
            )
        async with session.delete(url + "/v1/sources/s1") as resp:
            assert resp.status == 200
        async with session.post(url + "/v1/sources/s3/start") as resp:
            assert resp.status == 201
    assert app[LIMITS].held("streams") == 2


def test_client_limits_unit() -> None:
    limits = ClientLimits(
        ApiLimitsConfig(max_streams=3, max_streams_per_client=2, max_subscribers_per_client=1)
    )
    a1 = limits.acquire("streams", "10.0.0.1")
    limits.acquire("streams", "10.0.0.1")
    with pytest.raises(LimitExceeded) as info:
        limits.acquire("streams", "10.0.0.1")
    assert info.value.status == 429
    limits.acquire("streams", "10.0.0.2")
    with pytest.raises(LimitExceeded, match=r"too many streams \(limit 3\)") as info:
        limits.acquire("streams", "10.0.0.3")
    assert info.value.status == 503
    a1.release()
    a1.release()  # idempotent
    assert limits.held("streams") == 2
    with limits.acquire("subscribers", "10.0.0.9") as slot:
        assert slot.held
        with pytest.raises(LimitExceeded):
            limits.acquire("subscribers", "10.0.0.9")
    assert not slot.held
    assert limits.held("subscribers") == 0
    # Clients that hold nothing are forgotten: the table is bounded by what is held.
    assert limits.clients() == 2
    assert limits.snapshot()["refused"] == {"streams": 2, "subscribers": 1}
