"""Helpers for the API tests: a StreamsView fake at the seam and a handle on a running server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from crossmodald.bus import Event, EventBus
from crossmodald.service.config import ApiConfig


@dataclass
class FakeStreams:
    """Satisfies crossmodald.api.app.StreamsView."""

    items: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "testcard", "kind": "pattern", "audio_lead_ms": 40.0},
            {"name": "cam1", "kind": "media", "audio_lead_ms": None},
        ]
    )
    is_ready: bool = False

    def streams(self) -> list[dict[str, Any]]:
        return list(self.items)

    def ready(self) -> bool:
        return self.is_ready


@dataclass
class Server:
    bus: EventBus
    streams: FakeStreams
    config: ApiConfig
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


StartServer = Callable[..., Awaitable[Server]]


def ev(n: int, type_: str = "sync.offset", stream: str = "testcard", **data: Any) -> Event:
    return Event(type_, stream, n, n + 1, data or {"n": n})


@dataclass
class SseMessage:
    event: str
    data: str
    id: str | None


async def read_sse(
    resp: aiohttp.ClientResponse, count: int, timeout_s: float = 5.0
) -> list[SseMessage]:
    """Read ``count`` SSE messages (comments skipped) straight off the response, by the spec."""
    out: list[SseMessage] = []
    event, data, event_id = "", [], None
    async with asyncio.timeout(timeout_s):
        while len(out) < count:
            raw = await resp.content.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\n")
            if line == "":
                if data:
                    out.append(SseMessage(event or "message", "\n".join(data), event_id))
                event, data, event_id = "", [], None
            elif line.startswith(":") or line.startswith("retry:"):
                continue
            else:
                name, _, value = line.partition(": ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
    return out
