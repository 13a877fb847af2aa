"""Fuzzing WHIP SDP offers (the body a publisher sends): only 400/422 with one clear line."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

whip = pytest.importorskip("crossmodald.api.whip", reason="the WHIP endpoint is not built here")
config_mod = pytest.importorskip("crossmodald.service.config")

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_EXAMPLE_S = 2.0

# A browser-like offer: one audio (Opus) and one video (VP8, H264) section and a data channel.
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "a=msid-semantic: WMS stream",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=ssrc:1001 cname:pub",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:1",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=ssrc:2002 cname:pub",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:2",
        "a=sctp-port:5000",
        "",
    ]
)
LINES = OFFER.split("\r\n")


def _check(sdp: str) -> None:
    config = config_mod.WebRtcConfig()
    started = time.monotonic()
    error: Exception | None = None
    try:
        whip.check_offer(sdp, config)
    except whip.OfferError as exc:
        error = exc
    assert time.monotonic() - started < MAX_EXAMPLE_S
    if error is not None:
        assert error.status in (400, 422)
        message = error.message
        assert message.strip()
        assert "\n" not in message, repr(message)
        assert len(message) < 2000


def test_seed_offer_is_accepted() -> None:
    summary = whip.check_offer(OFFER, config_mod.WebRtcConfig())
    assert summary.kinds == ("audio", "video")
    assert summary.data_channel


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "garble", "insert", "truncate"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "garble":
            line = lines[i]
            pos = draw(st.integers(0, len(line)))
            lines[i] = line[:pos] + draw(st.text(max_size=8)) + line[pos + 1 :]
        elif op == "insert":
            prefix = draw(st.sampled_from(["m=", "a=rtpmap:", "a=fmtp:", "c=", "a=", "x="]))
            lines.insert(i, prefix + draw(st.text(max_size=30)))
        else:
            lines = lines[: i + 1]
        if not lines:
            lines = [""]
    sep = draw(st.sampled_from(["\r\n", "\n"]))
    return sep.join(lines)


@FUZZ
@given(st.one_of(mutated_offers(), st.text(max_size=400), st.just("v=0\r\n" * 2000)))
def test_fuzz_sdp_offers(sdp: str) -> None:
    _check(sdp)
