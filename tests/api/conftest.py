"""A real API server on loopback (127.0.0.1, port 0), with a real bus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from api_support import FakeStreams, Server, StartServer

from crossmodald.api import bound_port, build_app, serve
from crossmodald.bus import EventBus
from crossmodald.service.config import ApiConfig


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start an API server on 127.0.0.1 (port 0 unless given); every one is stopped at the end."""
    runners: list[web.AppRunner] = []

    async def start(
        *,
        bus: EventBus | None = None,
        config: ApiConfig | None = None,
        port: int = 0,
        heartbeat_s: float = 15.0,
        ws_heartbeat_s: float | None = 15.0,
        streams: FakeStreams | None = None,
    ) -> Server:
        cfg = config or ApiConfig(port=port)
        the_bus = bus or EventBus(cfg.replay_size, cfg.subscriber_queue, cfg.slow_subscriber_s)
        the_streams = streams or FakeStreams()
        app = build_app(
            the_bus, the_streams, cfg, heartbeat_s=heartbeat_s, ws_heartbeat_s=ws_heartbeat_s
        )
        runner = await serve(app, "127.0.0.1", port, shutdown_timeout_s=2.0)
        runners.append(runner)
        return Server(the_bus, the_streams, cfg, app, runner, bound_port(runner))

    yield start
    for runner in runners:
        if runner.server is not None:  # not stopped by the test itself
            await runner.cleanup()
