"""Running the whole daemon in-process for end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from crossmodald.bus.events import Envelope
from crossmodald.runtime.host import Overload
from crossmodald.service.config import DaemonConfig
from crossmodald.service.daemon import Daemon


async def run_offline(
    sources: Sequence[dict[str, Any]],
    *,
    plugins: Sequence[dict[str, Any]] = ({"type": "avsync"},),
    window: dict[str, Any] | None = None,
) -> tuple[Daemon, list[dict[str, Any]]]:
    """Run sources through the full pipeline as fast as possible; every event, in order."""
    config = DaemonConfig.model_validate(
        {
            "sources": list(sources),
            "plugins": list(plugins),
            "window": window or {},
            "api": {"enabled": False},
        }
    )
    events: list[dict[str, Any]] = []

    def collect(envelope: Envelope) -> None:
        events.append(envelope.as_dict())

    daemon = Daemon(config, overload=Overload.BLOCK, serve_api=False, listeners=(collect,))
    await daemon.load_plugins()
    await asyncio.wait_for(daemon.run(asyncio.Event(), exit_when_sources_end=True), 600)
    return daemon, events


def offsets(events: list[dict[str, Any]], stream: str) -> list[float]:
    """The per-window audio_lead_ms values a stream got (windows with an estimate only)."""
    return [
        float(e["data"]["audio_lead_ms"])
        for e in events
        if e["type"] == "sync.offset"
        and e["stream"] == stream
        and e["data"]["audio_lead_ms"] is not None
    ]
