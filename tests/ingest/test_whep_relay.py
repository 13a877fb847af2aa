"""WHEP: a skewed WHIP publisher, corrected by one daemon, pulled and measured by a second one.

An aiortc publisher of pre-encoded VP8 + Opus (SRs exact to ~1 ms) sends the pattern with the
audio 80 ms ahead into daemon A. A measures it (avsync), and its WHEP output delays the audio by
the smoothed measured offset, gradually (``sync.correction`` events). Daemon B pulls that output
with a ``whep`` source and measures it: within 10 ms of zero once the correction has settled.
All traffic stays on 127.0.0.1 (ICE host candidates on loopback only, no STUN).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonschema
import pytest
from whipkit import encode_pattern, loopback_only, publish, whip_daemon

from crossmodald.bus import event_schema
from crossmodald.ingest.relay import CorrectionController, is_keyframe

pytestmark = pytest.mark.webrtc

LEAD_MS = 80.0
SLEW_MS_PER_S = 40.0


@contextlib.asynccontextmanager
async def pulling_daemon(url: str) -> AsyncIterator[Pulled]:
    """Daemon B: one ``whep`` source pulling ``url``, avsync on it, no API."""
    from crossmodald.service.config import DaemonConfig
    from crossmodald.service.daemon import Daemon

    config = DaemonConfig.model_validate(
        {
            "sources": [
                {
                    "type": "whep",
                    "name": "pulled",
                    "url": url,
                    "ice_host_addresses": ["127.0.0.1"],
                }
            ],
            "plugins": [{"type": "avsync", "method": "flash"}],
            "api": {"enabled": False},
        }
    )
    pulled = Pulled()

    def listen(envelope: Any) -> None:
        pulled.events.append(json.loads(envelope.json))
        pulled.changed.set()

    daemon = Daemon(config, listeners=(listen,), serve_api=False)
    await daemon.load_plugins()
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run(stop))
    try:
        yield pulled
    finally:
        stop.set()
        await run


@dataclass
class Pulled:
    """What daemon B published, and an event set at each publication."""

    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_corrected_output_measures_zero_in_a_second_daemon(codec: str) -> None:
    # VP8 (browsers' default) and H.264 (what OBS publishes): forwarded as they came.
    loopback_only()
    media = encode_pattern(duration_s=4.0, audio_lead_ms=LEAD_MS, video_codec=codec)
    async with whip_daemon(whep_max_slew_ms_per_s=SLEW_MS_PER_S) as a:
        pub = await publish(a.base_url, "skewed", media, loop=True, events_channel=False)
        try:
            # A measures the publisher first (the correction follows what A measures).
            await a.wait_until(lambda: len(a.of("skewed", "sync.offset")) >= 4, 30)
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            wall_before = time.monotonic()
            started = time.monotonic()
            async with pulling_daemon(f"{a.base_url}/v1/whep/skewed") as pulled:
                b = pulled.events

                def settled() -> bool:
                    return any(
                        e["data"]["state"] == "settled"
                        and abs(e["data"]["audio_lead_ms"] - LEAD_MS) < 5
                        for e in a.of("skewed", "sync.correction")
                    )

                await a.wait_until(settled, 30)
                settle_s = time.monotonic() - started
                settled_at = len(b)
                # Windows cut wholly after the correction settled: 2 s windows, then margin.
                await asyncio.sleep(3.0)
                skip = len(b)
                await pulled.wait_until(
                    lambda: (
                        len(
                            [
                                e
                                for e in b[skip:]
                                if e["type"] == "sync.offset" and e["data"]["confidence"] >= 0.5
                            ]
                        )
                        >= 6
                    ),
                    30,
                )
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.monotonic() - wall_before
        finally:
            await pub.close()
    corrections = a.of("skewed", "sync.correction")
    schema = event_schema()
    for event in corrections:
        jsonschema.validate(event, schema)
    # Gradual: between announcements the value never moves faster than the stated slew.
    values = [(e["data"]["audio_lead_ms"]) for e in corrections]
    assert max(values) <= LEAD_MS + 5
    assert all(e["data"]["max_slew_ms_per_s"] == SLEW_MS_PER_S for e in corrections)
    assert corrections[-1]["data"]["delayed"] == "audio"
    measured_a = statistics.median(
        e["data"]["audio_lead_ms"]
        for e in a.of("skewed", "sync.offset")
        if e["data"]["confidence"] >= 0.5
    )
    after = [
        e["data"]["audio_lead_ms"]
        for e in b[skip:]
        if e["type"] == "sync.offset" and e["data"]["confidence"] >= 0.5
    ]
    faults = [e["data"]["message"] for e in b if e["type"] == "stream.fault"]
    residual = statistics.median(after)
    cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    print(
        f"\nWHEP ({codec}): publisher {LEAD_MS:+.0f} ms, A measured {measured_a:+.2f} ms; B measured "
        f"{residual:+.2f} ms after settling (windows {len(after)}, spread "
        f"{max(after) - min(after):.1f} ms); settled {settle_s:.1f} s after B connected "
        f"(slew {SLEW_MS_PER_S:g} ms/s); process CPU {100 * cpu_s / wall:.0f}% of a core "
        f"with 1 viewer (publisher, A, relay and B together); B windows before settle "
        f"{settled_at}"
    )
    assert abs(residual) <= 10.0, after
    # A steady relay: B's Sender-Report mapping never had to move or restart.
    assert faults == [], faults


async def test_whep_refuses_unknown_stream_and_wrong_codec() -> None:
    loopback_only()
    from aiortc import RTCConfiguration, RTCPeerConnection

    async with whip_daemon() as a:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        await pc.close()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{a.base_url}/v1/whep/nobody",
                data=offer,
                headers={"Content-Type": "application/sdp"},
            ) as response:
                assert response.status == 404
                assert "no WHIP stream 'nobody'" in (await response.json())["error"]
            async with http.post(
                f"{a.base_url}/v1/whep/nobody", data=offer, headers={"Content-Type": "text/plain"}
            ) as response:
                assert response.status == 415
            async with http.delete(f"{a.base_url}/v1/whep/session/nope") as response:
                assert response.status == 404
            async with http.options(
                f"{a.base_url}/v1/whep/x",
                headers={
                    "Origin": "https://viewer.example",
                    "Access-Control-Request-Method": "POST",
                },
            ) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] in (
                    "*",
                    "https://viewer.example",
                )


def test_correction_slews_and_holds() -> None:
    c = CorrectionController(max_slew_ms_per_s=20.0, min_confidence=0.5)
    c.advance(0)
    assert c.holding  # nothing measured yet: stays at 0
    c.measure(80.0, 0.9)
    assert c.advance(1_000_000_000) == pytest.approx(20.0)  # at most 20 ms in 1 s
    assert c.delay_ns("audio") == 20_000_000
    assert c.delay_ns("video") == 0
    c.measure(None, 0.0)  # unsure: hold the target, keep moving toward it
    assert c.holding
    c.measure(-40.0, 0.2)  # low confidence: ignored
    assert c.advance(5_000_000_000) == pytest.approx(80.0)
    assert c.settled
    c.measure(-40.0, 0.9)
    assert c.advance(6_000_000_000) == pytest.approx(60.0)
    fixed = CorrectionController(
        max_slew_ms_per_s=20.0, min_confidence=0.5, fixed_audio_lead_ms=-30.0
    )
    fixed.measure(100.0, 1.0)
    assert fixed.advance(0) == -30.0
    assert fixed.delay_ns("video") == 30_000_000


def test_keyframes() -> None:
    assert is_keyframe("VP8", bytes([0x10, 0, 0]))
    assert not is_keyframe("VP8", bytes([0x11, 0, 0]))
    assert is_keyframe("H264", b"\x00\x00\x00\x01\x67rest\x00\x00\x01\x65")
    assert not is_keyframe("H264", b"\x00\x00\x00\x01\x41rest")


async def whep_offer() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_whep_session_lifecycle_and_the_whip_token() -> None:
    # [webrtc] token guards WHEP as it guards WHIP; DELETE ends a viewer once (then 404).
    loopback_only()
    media = encode_pattern(duration_s=2.0)
    async with whip_daemon(token="s3cret") as a:
        pub = await publish(a.base_url, "cam", media, loop=True, token="s3cret")
        try:
            offer = await whep_offer()
            url = f"{a.base_url}/v1/whep/cam"
            sdp = {"Content-Type": "application/sdp"}
            async with aiohttp.ClientSession() as http:
                async with http.post(url, data=offer, headers=sdp) as response:
                    assert response.status == 401
                async with http.post(
                    url, data=offer, headers={**sdp, "Authorization": "Bearer wrong"}
                ) as response:
                    assert response.status == 401
                auth = {"Authorization": "Bearer s3cret"}
                async with http.post(url, data=offer, headers={**sdp, **auth}) as response:
                    assert response.status == 201, await response.text()
                    assert response.content_type == "application/sdp"
                    assert "a=sendonly" in await response.text()
                    location = response.headers["Location"]
                    assert location.startswith("/v1/whep/session/")
                    assert response.headers["ETag"]
                await a.wait_until(lambda: bool(a.of("cam", "sync.correction")), 10)
                assert a.of("cam", "sync.correction")[0]["data"]["viewers"] == 1
                async with http.patch(a.base_url + location, headers=auth) as response:
                    assert response.status == 405
                async with http.delete(a.base_url + location) as response:
                    assert response.status == 401
                async with http.delete(a.base_url + location, headers=auth) as response:
                    assert response.status == 200
                async with http.delete(a.base_url + location, headers=auth) as response:
                    assert response.status == 404
        finally:
            await pub.close()


async def test_a_fixed_correction_set_through_the_api() -> None:
    loopback_only()
    media = encode_pattern(duration_s=2.0)
    async with whip_daemon() as a:
        pub = await publish(a.base_url, "cam", media, loop=True)
        try:
            async with aiohttp.ClientSession() as http:
                url = f"{a.base_url}/v1/whep/cam/correction"
                async with http.put(url, json={"audio_lead_ms": "x"}) as response:
                    assert response.status == 400
                async with http.put(url, json={"audio_lead_ms": -30}) as response:
                    assert response.status == 200
                    assert (await response.json())["source"] == "fixed"
                sdp = {"Content-Type": "application/sdp"}
                offer = await whep_offer()
                async with http.post(f"{a.base_url}/v1/whep/cam", data=offer, headers=sdp) as r:
                    assert r.status == 201
                    location = r.headers["Location"]

                def fixed_at(value: float) -> bool:
                    return any(
                        e["data"]["source"] == "fixed"
                        and e["data"]["state"] == "settled"
                        and e["data"]["audio_lead_ms"] == value
                        for e in a.of("cam", "sync.correction")
                    )

                # Set before the first viewer: its output starts there; video delayed.
                await a.wait_until(lambda: fixed_at(-30.0), 10)
                assert a.of("cam", "sync.correction")[-1]["data"]["delayed"] == "video"
                # A change while someone watches slews: -30 -> +20 ms at 20 ms/s takes 2.5 s.
                changed = time.monotonic()
                async with http.put(url, json={"audio_lead_ms": 20}) as response:
                    assert response.status == 200
                await a.wait_until(lambda: fixed_at(20.0), 10)
                assert time.monotonic() - changed >= 2.3
                moving = [
                    e["data"]["audio_lead_ms"]
                    for e in a.of("cam", "sync.correction")
                    if e["data"]["state"] == "slewing"
                ]
                assert moving
                assert all(-30.0 <= v <= 20.0 for v in moving)
                async with http.put(url, json={"audio_lead_ms": None}) as response:
                    assert (await response.json())["source"] == "measured"
                await a.wait_until(
                    lambda: a.of("cam", "sync.correction")[-1]["data"]["source"] == "measured", 5
                )
                async with http.delete(a.base_url + location) as response:
                    assert response.status == 200
        finally:
            await pub.close()
