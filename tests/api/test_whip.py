"""The WHIP endpoint over real HTTP and WebRTC on 127.0.0.1: RFC 9725 behaviour and bad input.

One daemon (no plugins: only the endpoint is under test here) with a WHIP token and a limit of
one stream. A real publisher connects first; every bad request after it must get its status and
message and leave that publisher's stream running.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))

from whipkit import (
    EncodedMedia,
    WhipDaemon,
    WhipRefused,
    encode_pattern,
    loopback_only,
    obs_style,
    publish,
    whip_daemon,
)

pytestmark = pytest.mark.webrtc

TOKEN = "whip-test-token-0123456789"


async def offer_sdp(video: int = 1, audio: int = 1) -> str:
    """A real aiortc offer with that many send-only video and audio sections."""
    loopback_only()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for _ in range(video):
        pc.addTransceiver("video", direction="sendonly")
    for _ in range(audio):
        pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


def only_codecs(sdp: str, video: str, audio: str) -> str:
    """Rename every video and audio codec of an offer (e.g. to ones nobody here decodes)."""
    out = []
    section = ""
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            section = line[2:].split()[0]
        if line.startswith("a=rtpmap:") and section in ("video", "audio"):
            pt = line[9:].split(" ", 1)[0]
            codec = video if section == "video" else audio
            line = f"a=rtpmap:{pt} {codec}"
        out.append(line)
    return "\r\n".join(out)


async def post(
    d: WhipDaemon,
    stream: str,
    body: str | bytes,
    *,
    content_type: str = "application/sdp",
    token: str | None = TOKEN,
    origin: str | None = None,
) -> tuple[int, CIMultiDict[str], str]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if origin is not None:
        headers["Origin"] = origin
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{d.base_url}/v1/whip/{stream}", data=body, headers=headers) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.text()


@pytest.fixture(scope="module")
def media() -> EncodedMedia:
    return encode_pattern(duration_s=4.0)


async def test_rfc9725_session_and_bad_input_leave_other_streams_alone(
    media: EncodedMedia,
) -> None:
    async with whip_daemon(plugins=[], token=TOKEN, max_streams=1, retry_after_s=7) as d:
        pub = await publish(d.base_url, "cam1", media, token=TOKEN, loop=True)
        # 201 with an SDP answer, a session Location and an ETag.
        assert pub.status == 201
        assert pub.location is not None
        assert "/v1/whip/session/" in pub.location
        assert pub.response_headers["ETag"].startswith('"')
        assert pub.response_headers["Content-Type"].startswith("application/sdp")
        await d.wait_until(lambda: d.stream("cam1")["video_frames"] > 10, 15)

        good = await offer_sdp()
        # Missing and wrong tokens.
        status, headers, text = await post(d, "cam2", good, token=None)
        assert status == 401
        assert "Bearer" in headers["WWW-Authenticate"]
        assert "Authorization: Bearer" in text
        status, _, text = await post(d, "cam2", good, token="not-the-token-at-all")
        assert (status, "invalid bearer token" in text) == (401, True)
        # Wrong content type; content type with parameters is fine (refused later for the limit).
        status, _, text = await post(d, "cam2", good, content_type="text/plain")
        assert status == 415
        assert "application/sdp" in text
        # Malformed SDP.
        for junk in ("hello", "v=0\r\nm=video x UDP\r\n", b"v=0\r\n\xff\xfe"):
            status, _, text = await post(d, "cam2", junk)
            assert status == 400, junk
            assert "malformed SDP" in text or "cannot use the SDP" in text
        # More than one video track; no codec in common (the message says what is supported).
        status, _, text = await post(d, "cam2", await offer_sdp(video=2))
        assert status == 422
        assert "more than one video track" in text
        status, _, text = await post(d, "cam2", only_codecs(good, "H265/90000", "AAC/48000"))
        assert status == 422
        assert "no usable video codec" in text
        assert "offered: H265" in text
        assert "supported: video: VP8, H264 (42001f, packetization-mode=1), H264 (42e01f" in text
        assert "opus" in text
        # A bad stream name; a name in use.
        status, _, text = await post(d, "bad name!", good)
        assert (status, "bad stream name" in text) == (400, True)
        status, _, text = await post(d, "cam1", good)
        assert (status, "already running" in text) == (409, True)
        # The stream limit: 503 with Retry-After.
        status, headers, text = await post(d, "cam2", good, content_type="application/sdp; x=y")
        assert status == 503
        assert headers["Retry-After"] == "7"
        assert "max_streams" in text
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            # Unknown session; PATCH (no trickle, no ICE restart).
            async with http.delete(f"{d.base_url}/v1/whip/session/nope", headers=auth) as r:
                assert r.status == 404
                assert "no such WHIP session" in (await r.json())["error"]
            async with http.patch(pub.location, headers=auth, data="a=candidate") as r:
                assert r.status == 405
                assert "DELETE" in r.headers["Allow"]
            # CORS preflight from a page on another origin, with Accept-Post.
            preflight = {
                "Origin": "http://page.example:8000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            async with http.options(f"{d.base_url}/v1/whip/cam2", headers=preflight) as r:
                assert r.status == 204
                assert r.headers["Accept-Post"] == "application/sdp"
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        # Error answers carry CORS too, so a page can read them.
        status, headers, _ = await post(d, "cam2", good, origin="http://page.example:8000")
        assert status == 503
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in headers["Access-Control-Expose-Headers"]

        # None of it touched the publisher's stream.
        before = d.stream("cam1")["video_frames"]
        await d.wait_until(lambda: d.stream("cam1")["video_frames"] > before + 10, 10)
        assert d.stream("cam1")["state"] == "running"
        assert [s["name"] for s in d.daemon.streams()] == ["cam1"]
        # DELETE ends the session (200) and the stream; the slot is free again.
        assert await pub.close() == 200
        assert d.stream("cam1")["state"] == "ended"
        again = await publish(d.base_url, "cam2", media, token=TOKEN)
        assert again.status == 201
        await again.close()


async def test_obs_style_offer_without_candidates_connects() -> None:
    media = encode_pattern(duration_s=4.0, video_codec="h264")
    async with whip_daemon(plugins=[]) as d:
        pub = await publish(d.base_url, "obs", media, offer_filter=obs_style, events_channel=False)
        try:
            assert pub.status == 201
            answer = pub.pc.remoteDescription.sdp
            assert "a=candidate:" in answer  # every daemon candidate is in the answer
            assert "H264/90000" in answer
            assert "VP8" not in answer
            assert "opus/48000" in answer
            assert "a=recvonly" in answer
            # Connected through a peer-reflexive candidate: decoded H.264 frames and Opus.
            await d.wait_until(
                lambda: (
                    d.stream("obs")["video_frames"] > 20 and d.stream("obs")["audio_chunks"] > 20
                ),
                15,
            )
            # Not known at open; /v1/streams gives the decoded picture once frames flow.
            assert (d.stream("obs")["width"], d.stream("obs")["height"]) == (320, 240)
        finally:
            assert await pub.close() == 200


async def test_origin_allow_list_refuses_other_pages(media: EncodedMedia) -> None:
    async with whip_daemon(plugins=[], allowed_origins=["http://studio.example"]) as d:
        status, _, text = await post(
            d, "cam", await offer_sdp(), token=None, origin="http://evil.example"
        )
        assert status == 403
        assert "'http://evil.example' is not allowed (webrtc.allowed_origins)" in text
        pub = await publish(d.base_url, "cam", media, origin="http://studio.example")
        try:
            assert pub.response_headers["Access-Control-Allow-Origin"] == "http://studio.example"
        finally:
            await pub.close()


async def test_publisher_refused_raises_with_status() -> None:
    # The client helper itself reports refusals (used by the benchmark to find the limit).
    async with whip_daemon(plugins=[], token=TOKEN) as d:
        with pytest.raises(WhipRefused) as refused:
            await publish(d.base_url, "x", encode_pattern(duration_s=1.0), token=None)
        assert refused.value.status == 401
        await asyncio.sleep(0)
