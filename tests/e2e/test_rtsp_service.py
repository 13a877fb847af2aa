"""`crossmodald run` with an RTSP camera that needs a password (gst-rtsp-server on loopback).

The daemon measures the pattern's offset over RTSP, rides out a server restart (stream.fault
events), and the password of the URL is nowhere: not in events (SSE, the JSONL sink), not in
/v1/sources, /v1/streams or /metrics, not in the daemon's log.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from servicekit import SseSubscriber, start_daemon

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
from rtspkit import RtspServer, gi_python, pattern_mp4

PASSWORD = "Zq9-camera-secret"  # a test credential that must never be shown
USER = "operator"
AUDIO_LEAD_MS = 45.0


async def _wait(predicate: Any, timeout_s: float = 40) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 -- the subscriber task appends
            await asyncio.sleep(0.05)


def _faults(sub: SseSubscriber) -> list[dict[str, Any]]:
    return [e["data"] for e in sub.events if e["type"] == "stream.fault"]


async def test_rtsp_camera_with_password_through_the_daemon(tmp_path: Path) -> None:
    python = gi_python()
    media = pattern_mp4(tmp_path / "pattern.mp4", AUDIO_LEAD_MS)
    server = RtspServer(python, media, user=USER, password=PASSWORD)
    server.start()
    sink = tmp_path / "events.jsonl"
    config = tmp_path / "crossmodald.toml"
    config.write_text(
        f"""
[[sources]]
type = "rtsp"
name = "door"
url = "{server.url_with(USER, PASSWORD)}"
timeout_s = 5
reconnect_initial_s = 0.2
reconnect_max_s = 1

[window]
lateness_s = 0.3

[[plugins]]
type = "avsync"
device = "cpu"

[[sinks]]
type = "jsonl"
path = "{sink}"

[api]
port = 0

[service]
status_interval_s = 0.5
"""
    )
    daemon = await start_daemon(config, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            sub = SseSubscriber(daemon.url)
            sub.task = asyncio.create_task(sub.run(http))

            def offsets() -> list[float]:
                return [
                    e["data"]["audio_lead_ms"]
                    for e in sub.events
                    if e["type"] == "sync.offset" and e["data"]["audio_lead_ms"] is not None
                ]

            await _wait(lambda: len(offsets()) >= 3)
            server.stop()
            server.start()
            await _wait(lambda: any(f["kind"] == "stream_back" for f in _faults(sub)))
            mark = len(offsets())
            await _wait(lambda: len(offsets()) >= mark + 2)
            bodies = []
            for path in ("/v1/sources", "/v1/streams", "/metrics"):
                async with http.get(daemon.url + path) as response:
                    assert response.status == 200
                    bodies.append(await response.text())
            streams = json.loads(bodies[1])["streams"]
            door = next(s for s in streams if s["name"] == "door")
            assert door["source_status"]["losses"] == 1
            assert 'crossmodald_stream_reconnects_total{stream="door"' in bodies[2]
            assert "***@127.0.0.1" in bodies[0]
        daemon.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await daemon.proc.wait()
    finally:
        await daemon.stop()
        server.stop()

    kinds = [f["kind"] for f in _faults(sub)]
    assert "stream_lost" in kinds
    assert "stream_back" in kinds
    lost = next(f for f in _faults(sub) if f["kind"] == "stream_lost")
    assert "rtsp://***@127.0.0.1" in lost["message"]
    # The offset over RTSP, before and after the reconnect, is the injected one.
    found = offsets()
    clocks = {e["media"]["clock"] for e in sub.events if e["type"] == "sync.offset"}
    assert clocks == {"rtcp"}
    assert statistics.median(found[:mark]) == pytest.approx(AUDIO_LEAD_MS, abs=3.0)
    assert statistics.median(found[mark:]) == pytest.approx(AUDIO_LEAD_MS, abs=3.0)
    # The password is nowhere.
    texts = {
        "SSE events": json.dumps(sub.events),
        "JSONL sink": sink.read_text(),
        "daemon log": daemon.log_text(),
        **dict(zip(("/v1/sources", "/v1/streams", "/metrics"), bodies, strict=True)),
    }
    for where, text in texts.items():
        assert PASSWORD not in text, f"the password shows in the {where}"
        assert USER not in text, f"the user name shows in the {where}"
