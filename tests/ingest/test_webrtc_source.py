"""The WebRTC receive path: vanished peers end their stream, freezes and packet loss are reported.

Real aiortc publishers on 127.0.0.1 against a real daemon; faults are provoked at the publisher
(a closed PeerConnection, media that stops, RTP packets dropped before they leave).
"""

from __future__ import annotations

import struct
import time
from typing import Any

import aiohttp
import pytest
from whipkit import EncodedMedia, Publisher, encode_pattern, publish, whip_daemon

pytestmark = pytest.mark.webrtc


@pytest.fixture(scope="module")
def media() -> EncodedMedia:
    return encode_pattern(duration_s=3.0)


def drop_audio_packets(pub: Publisher, every: int) -> list[int]:
    """Drop every ``every``-th audio RTP packet before it leaves (audio is never NACKed)."""
    sender = next(t.sender for t in pub.pc.getTransceivers() if t.kind == "audio")
    transport: Any = sender.transport
    send = transport._send_rtp
    ssrc = sender._ssrc
    dropped: list[int] = []

    async def filtered(data: bytes) -> None:
        # RTCP shares the path (rtcp-mux): its packet types are 200-207 in the second byte.
        is_rtp = len(data) >= 12 and not 200 <= data[1] <= 207
        if is_rtp and struct.unpack_from("!I", data, 8)[0] == ssrc:
            seq = struct.unpack_from("!H", data, 2)[0]
            if seq % every == 0:
                dropped.append(seq)
                return
        await send(data)

    transport._send_rtp = filtered
    return dropped


async def test_closed_peer_ends_its_stream_and_frees_the_session(media: EncodedMedia) -> None:
    async with whip_daemon(plugins=[], vanish_s=2.0) as d:
        pub = await publish(d.base_url, "gone", media, loop=True)
        await d.wait_until(lambda: d.stream("gone")["video_frames"] > 10, 15)
        started = time.monotonic()
        location = pub.location
        pub.location = None  # vanish: no DELETE
        await pub.close()
        await d.wait_until(lambda: bool(d.of("gone", "stream.end")), 10)
        assert time.monotonic() - started < 5.0
        assert d.stream("gone")["state"] in ("ended", "failed")
        async with aiohttp.ClientSession() as http, http.delete(str(location)) as response:
            assert response.status == 404  # the session was freed with the stream


async def test_media_that_stops_is_a_freeze_then_a_vanished_peer(media: EncodedMedia) -> None:
    async with whip_daemon(plugins=[], freeze_s=0.5, vanish_s=1.5) as d:
        pub = await publish(d.base_url, "quiet", media, loop=False)  # 3 s of media, then none
        try:
            await d.wait_until(lambda: bool(d.of("quiet", "stream.end")), 20)
            faults = [e["data"] for e in d.of("quiet", "stream.fault")]
            kinds = [f["kind"] for f in faults]
            assert "freeze" in kinds
            assert any("peer vanished: no media for 1.5 s" in f["message"] for f in faults)
            assert d.stream("quiet")["state"] == "failed"
            assert d.stream("quiet")["video_frames"] >= 80
        finally:
            pub.location = None
            await pub.close()


async def test_packet_loss_is_reported(media: EncodedMedia) -> None:
    async with whip_daemon(plugins=[]) as d:
        pub = await publish(d.base_url, "lossy", media, loop=True)
        dropped = drop_audio_packets(pub, every=25)
        try:
            await d.wait_until(
                lambda: any(
                    e["data"]["kind"] == "packet_loss" for e in d.of("lossy", "stream.fault")
                ),
                15,
            )
            loss = next(
                e["data"]
                for e in d.of("lossy", "stream.fault")
                if e["data"]["kind"] == "packet_loss"
            )
            assert loss["message"].startswith("lossy: audio: ")
            assert "RTP packets lost" in loss["message"]
            assert dropped
            assert d.stream("lossy")["state"] == "running"  # loss does not end the stream
        finally:
            await pub.close()
