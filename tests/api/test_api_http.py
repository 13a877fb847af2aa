"""Plain HTTP routes through a real server: streams, health, readiness, JSON errors, limits."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from api_support import StartServer

from crossmodald.service.config import ApiConfig


async def test_streams_list_and_one(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/streams") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert [s["name"] for s in body["streams"]] == ["testcard", "cam1"]
        async with http.get(f"{server.url}/v1/streams/testcard") as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "name": "testcard",
                "kind": "pattern",
                "audio_lead_ms": 40.0,
            }
        async with http.get(f"{server.url}/v1/streams/nope") as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": "no stream named 'nope'"}


async def test_health_and_readiness(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        async with http.get(f"{server.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "not ready"
        server.streams.is_ready = True
        async with http.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ready"}


async def test_errors_are_json(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/nothing") as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": "not found: /v1/nothing"}
        async with http.post(f"{server.url}/healthz") as resp:
            assert resp.status == 405
            assert await resp.json() == {"error": "method POST not allowed for /healthz"}
            assert "GET" in resp.headers["Allow"]
        for query, message in [
            ({"type": "sy nc"}, "type filter: 'sy nc' has characters outside [A-Za-z0-9_.*-]"),
            ({"stream": "a,,b"}, "stream filter: empty entry"),
            ({"type": "sync*"}, "only allowed at the end after '.'"),
            ({"last_event_id": "-3"}, "last_event_id must be a non-negative integer"),
        ]:
            async with http.get(f"{server.url}/v1/events", params=query) as resp:
                assert resp.status == 400, query
                assert message in (await resp.json())["error"]
        async with http.get(f"{server.url}/v1/events", headers={"Last-Event-ID": "abc"}) as resp:
            assert resp.status == 400
            assert "Last-Event-ID must be a non-negative integer" in (await resp.json())["error"]
        async with http.get(f"{server.url}/v1/events/ws", params={"type": "x y"}) as resp:
            assert resp.status == 400  # a plain GET is not an upgrade
            assert "WebSocket upgrade" in (await resp.json())["error"]


@pytest.mark.parametrize("query", ["type=x%20y", "last_seq=x", "stream=a*"])
async def test_bad_ws_query_is_400(start_server: StartServer, query: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{server.url}/v1/events/ws?{query}")
        assert info.value.status == 400


async def test_max_subscribers_then_503(start_server: StartServer) -> None:
    # A short heartbeat lets the server notice the SSE client that left.
    server = await start_server(config=ApiConfig(port=0, max_subscribers=2), heartbeat_s=0.05)
    async with aiohttp.ClientSession() as http:
        first = await http.get(f"{server.url}/v1/events")
        ws = await http.ws_connect(f"{server.url}/v1/events/ws")
        assert first.status == 200
        async with http.get(f"{server.url}/v1/events") as resp:
            assert resp.status == 503
            assert "too many event subscribers (limit 2)" in (await resp.json())["error"]
        # A freed slot can be used again.
        await ws.close()
        first.close()
        for _ in range(100):
            if server.bus.stats().subscribers == 0:
                break
            await asyncio.sleep(0.02)
        assert server.bus.stats().subscribers == 0
        async with http.get(f"{server.url}/v1/events") as resp:
            assert resp.status == 200
