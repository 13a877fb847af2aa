"""The rtsp source against a real RTSP server on loopback (gst-rtsp-server, see rtspkit).

The server plays a pattern file with a known A/V offset; the source must deliver it on the
sender's RTCP clock with that offset, reconnect when the server restarts, and never show the
credentials of its URL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ingestkit import Collected, beep_onsets, flash_onsets_s
from pydantic import ValidationError
from rtspkit import RtspServer, gi_python, pattern_mp4

from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.registry import create_source
from crossmodald.ingest.rtsp import RtspSource, RtspSourceConfig
from crossmodald.media import ClockKind, VideoFrame

FPS = 30.0
RATE = 48000
PASSWORD = "s3cr3t-Pa55"  # a test credential that must never be shown
USER = "viewer"


def rtsp_config(url: str, **overrides: Any) -> RtspSourceConfig:
    data: dict[str, Any] = {
        "type": "rtsp",
        "name": "cam",
        "url": url,
        "timeout_s": 5.0,
        "rtcp_wait_s": 8.0,
        "reconnect_initial_s": 0.2,
        "reconnect_max_s": 1.0,
    }
    data.update(overrides)
    return RtspSourceConfig.model_validate(data)


async def read_for(
    source: RtspSource, seconds: float, until: Any = None
) -> tuple[Collected, list[tuple[float, SourceFault]]]:
    """Items for ``seconds`` after the first one (or until ``until(got)``); faults with times."""
    info = await source.open()
    got = Collected(info)
    faults: list[tuple[float, SourceFault]] = []
    first: float | None = None
    try:
        async with asyncio.timeout(seconds + 30):
            async for item in source:
                now = time.monotonic()
                if isinstance(item, SourceFault):
                    faults.append((now, item))
                    continue
                first = first if first is not None else now
                got.order.append(item)
                (got.frames if isinstance(item, VideoFrame) else got.chunks).append(item)
                if until is not None and until(got, faults):
                    break
                if until is None and now - first >= seconds:
                    break
    finally:
        await source.aclose()
    return got, faults


def measured_leads_ms(got: Collected) -> list[float]:
    """Audio lead (ms, + = audio first) of each flash against its nearest beep, for the flashes
    with audio received at least half a period (0.6 s) either side."""
    flashes = flash_onsets_s(got.frames, FPS)
    first, samples = got.audio(RATE)
    start_s, end_s = first / RATE, (first + len(samples)) / RATE
    beeps = [(first + i) / RATE for i in beep_onsets(samples)]
    assert beeps
    covered = [f for f in flashes if start_s + 0.6 <= f <= end_s - 0.6]
    assert covered
    return [1000 * (f - min(beeps, key=lambda b, f=f: abs(b - f))) for f in covered]


@pytest.fixture(scope="module")
def gi() -> str:
    return gi_python()


@pytest.fixture
def server_factory(gi: str, tmp_path: Path) -> Iterator[Any]:
    servers: list[RtspServer] = []

    def make(audio_lead_ms: float, video_delay_s: float = 0.0, **kwargs: Any) -> RtspServer:
        path = tmp_path / f"pattern{audio_lead_ms:+g}-{video_delay_s:g}.mp4"
        media = pattern_mp4(path, audio_lead_ms, video_delay_s=video_delay_s)
        server = RtspServer(gi, media, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def assert_monotonic(got: Collected) -> None:
    for kind in (got.frames, got.chunks):
        for a, b in itertools.pairwise(kind):
            assert b.pts_ns > a.pts_ns


def test_config_needs_an_rtsp_url_and_hides_its_password() -> None:
    with pytest.raises(ValidationError) as error:
        rtsp_config(f"http://{USER}:{PASSWORD}@127.0.0.1/cam")
    text = str(error.value)
    assert "rtsp:// or rtsps://" in text
    assert 'type = "media"' in text
    assert PASSWORD not in text.split("input_value")[0]
    with pytest.raises(ValidationError, match="come from transport and timeout_s"):
        rtsp_config("rtsp://127.0.0.1/cam", options={"rtsp_transport": "udp"})
    with pytest.raises(ValidationError, match="reconnect_max_s"):
        rtsp_config("rtsp://127.0.0.1/cam", reconnect_initial_s=5, reconnect_max_s=1)


@pytest.mark.parametrize(
    ("audio_lead_ms", "transport"), [(45.0, "tcp"), (-80.0, "udp")], ids=["lead45-tcp", "lag80-udp"]
)
async def test_offset_on_the_rtcp_clock_matches_the_injected_one(
    server_factory: Any, audio_lead_ms: float, transport: str
) -> None:
    server = server_factory(audio_lead_ms)
    source = create_source(rtsp_config(server.url, transport=transport))
    assert isinstance(source, RtspSource)
    got, faults = await read_for(source, 5.5)
    assert not faults, faults
    assert got.info.kind == "rtsp"
    assert got.info.has_video
    assert got.info.has_audio
    # Everything delivered rests on the sender's clock (RTCP sender reports on both tracks).
    assert {item.clock for item in got.order} == {ClockKind.RTCP}
    assert source.stats.timing == "rtcp"
    assert source.status()["timing"] == "rtcp"
    assert_monotonic(got)
    leads = measured_leads_ms(got)
    assert len(leads) >= 3
    for lead in leads:
        assert lead == pytest.approx(audio_lead_ms, abs=3.0)


def video_steps_s(got: Collected) -> list[float]:
    return [(b.pts_ns - a.pts_ns) / 1e9 for a, b in itertools.pairwise(got.frames)]


async def test_rtcp_aligns_tracks_whose_rtp_timestamps_disagree(server_factory: Any) -> None:
    """No RTP-Info and a video track that starts 0.5 s after the audio: before the sender
    reports, each track's timestamps start at its first packet, 0.5 s off the truth. The
    source delivers only what the reports place: the injected offset throughout."""
    audio_lead_ms = 45.0
    server = server_factory(audio_lead_ms, video_delay_s=0.5, no_rtp_info=True)
    source = RtspSource(rtsp_config(server.url))
    got, faults = await read_for(source, 5.5)
    assert not faults
    assert {item.clock for item in got.order} == {ClockKind.RTCP}
    assert max(video_steps_s(got)) < 0.05
    leads = measured_leads_ms(got)
    assert len(leads) >= 3
    for lead in leads:
        assert lead == pytest.approx(audio_lead_ms, abs=3.0)


async def test_a_track_it_does_not_read_does_not_hold_it_back(server_factory: Any) -> None:
    """A second audio track (cameras add one, or a metadata track): only the tracks the source
    reads need sender reports."""
    server = server_factory(45.0, extra_audio=True)
    source = RtspSource(rtsp_config(server.url, rtcp_wait_s=20))
    started = time.monotonic()
    got, faults = await read_for(source, 0.5)
    assert not faults
    assert {item.clock for item in got.order} == {ClockKind.RTCP}
    assert time.monotonic() - started < 15


async def test_a_camera_without_audio(server_factory: Any) -> None:
    server = server_factory(0.0, video_only=True)
    source = RtspSource(rtsp_config(server.url))
    got, faults = await read_for(source, 1.0)
    assert not faults
    assert got.info.has_video
    assert not got.info.has_audio
    assert not got.chunks
    assert {item.clock for item in got.order} == {ClockKind.RTCP}
    assert_monotonic(got)


async def test_without_sender_reports_it_falls_back_to_rtp_timestamps(
    server_factory: Any,
) -> None:
    """The same stream from a server that sends no RTCP: after rtcp_wait_s the source says so
    (a ``timing`` fault) and delivers on clock pts, where the tracks are 0.5 s off, which is
    what the sender reports correct above."""
    audio_lead_ms = 45.0
    server = server_factory(audio_lead_ms, video_delay_s=0.5, no_rtp_info=True, no_rtcp=True)
    source = RtspSource(rtsp_config(server.url, rtcp_wait_s=1.0))
    got, faults = await read_for(source, 5.5)
    assert [f.kind for _, f in faults] == ["timing"]
    assert "no RTCP sender report" in faults[0][1].message
    assert {item.clock for item in got.order} == {ClockKind.PTS}
    assert source.status()["timing"] == "pts"
    for lead in measured_leads_ms(got):
        assert lead == pytest.approx(audio_lead_ms - 500.0, abs=5.0)


async def test_reconnects_after_the_server_restarts(server_factory: Any) -> None:
    audio_lead_ms = 45.0
    server = server_factory(audio_lead_ms)
    source = RtspSource(rtsp_config(server.url))
    restarted: list[float] = []

    def restart_then_stop(got: Collected, faults: list[tuple[float, SourceFault]]) -> bool:
        if not restarted and len(got.frames) >= 3 * FPS:
            server.stop()
            restarted.append(time.monotonic())
            server.start()
        kinds = [f.kind for _, f in faults]
        back = kinds.count("stream_back")
        return back >= 1 and got.frames[-1].pts_ns - got.frames[0].pts_ns > 12e9

    got, faults = await read_for(source, 60.0, until=restart_then_stop)
    kinds = [f.kind for _, f in faults]
    assert "stream_lost" in kinds
    assert kinds[-1] == "stream_back"
    assert source.stats.losses == 1
    assert source.stats.connects >= 2
    outage = source.stats.last_outage_s
    assert outage is not None
    assert outage < 10
    # One timeline over both connections, on the sender's clock, with the offset kept.
    assert_monotonic(got)
    assert {item.clock for item in got.order} == {ClockKind.RTCP}
    back_at, back = next((t, f) for t, f in faults if f.kind == "stream_back")
    back_pts = back.pts_ns  # the first item of the new connection
    assert back_pts is not None
    after = Collected(got.info)
    after.frames = [f for f in got.frames if f.pts_ns >= back_pts]
    after.chunks = [c for c in got.chunks if c.pts_ns >= back_pts]
    assert back_at > restarted[0]
    leads = measured_leads_ms(after)
    assert leads
    for lead in leads:
        assert lead == pytest.approx(audio_lead_ms, abs=3.0)
    # The gap on the timeline is about as long as the server was away (sender's clock).
    before_end = max(f.pts_ns for f in got.frames if f.pts_ns < back_pts)
    gap_s = (min(f.pts_ns for f in after.frames) - before_end) / 1e9
    assert 0 < gap_s < outage + 1.0


async def test_credentials_never_leave_the_source(
    server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = server_factory(0.0, user=USER, password=PASSWORD)
    # Wrong password: refused, retried, then the error; none of it shows the password.
    wrong = RtspSource(rtsp_config(server.url_with(USER, "wrong-" + PASSWORD), reconnect_limit=1))
    with pytest.raises(SourceError) as error:
        await wrong.open()
    assert PASSWORD not in str(error.value)
    assert "***@127.0.0.1" in str(error.value)
    await wrong.aclose()
    # No credentials: refused too.
    with pytest.raises(SourceError):
        await RtspSource(rtsp_config(server.url, reconnect_limit=1)).open()
    # The right ones: media, and a reconnect after a restart, all without the password shown.
    source = RtspSource(rtsp_config(server.url_with(USER, PASSWORD)))
    statuses: list[str] = []

    def restart_once(got: Collected, faults: list[tuple[float, SourceFault]]) -> bool:
        statuses.append(repr(source.status()))
        if len(got.frames) == 30:
            server.stop()
            server.start()
        return any(f.kind == "stream_back" for _, f in faults) and len(got.frames) > 60

    got, faults = await read_for(source, 40.0, until=restart_once)
    assert got.frames
    assert [f.kind for _, f in faults].count("stream_lost") == 1
    shown = [f.message for _, f in faults] + statuses + [source.display, caplog.text]
    shown.append(repr(source.stats))
    for text in shown:
        assert PASSWORD not in text
    assert any("***@127.0.0.1" in f.message for _, f in faults)


async def test_retries_while_the_server_is_away_and_gives_up_at_the_limit(
    server_factory: Any,
) -> None:
    server = server_factory(0.0)
    source = RtspSource(rtsp_config(server.url, reconnect_limit=3))
    info = await source.open()
    assert info.has_video
    kinds: list[str] = []
    later: list[asyncio.TimerHandle] = []

    async def run() -> None:
        async with asyncio.timeout(60):
            async for item in source:
                if not isinstance(item, SourceFault):
                    if not kinds and not later:
                        server.stop()  # away for longer than the first tries wait
                        later.append(asyncio.get_running_loop().call_later(1.0, server.start))
                    continue
                kinds.append(item.kind)
                if item.kind == "stream_back":
                    server.stop()  # for good: a try at once, 3 retries (0.2, 0.4, 0.8 s), the end

    with pytest.raises(SourceError) as error:
        await run()
    assert later
    assert kinds[0] == "stream_lost"
    assert "stream_retry" in kinds
    first_back = kinds.index("stream_back")
    assert kinds[first_back + 1] == "stream_lost"
    assert kinds[first_back + 2 :] == ["stream_retry"] * 3
    assert "gave up after 3 failed retries" in str(error.value)
    assert source.stats.losses == 2
    await source.aclose()


async def test_password_from_a_secret_reference_with_special_characters(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "p@ss:w/rd%20?#" + PASSWORD
    monkeypatch.setenv("CAM_PASSWORD", password)
    server = server_factory(0.0, user="cam user", password=password)
    config = rtsp_config(server.url, username="cam user", password={"env": "CAM_PASSWORD"})
    assert password not in repr(config)
    assert password not in config.model_dump_json()
    source = RtspSource(config)
    got, faults = await read_for(source, 1.0)
    assert got.frames
    assert not faults
    for text in (caplog.text, repr(source.status()), source.display):
        assert PASSWORD not in text
    with pytest.raises(ValidationError, match="either in the url or in username/password"):
        rtsp_config(server.url_with("a", "b"), username="cam user")
    with pytest.raises(ValidationError, match="password needs a username"):
        rtsp_config(server.url, password="x")
