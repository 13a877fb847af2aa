"""RTCP Sender Report timing: NTP/RTP mapping, wrap, restarts, timeline switch, transport offset."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossmodald.clock.rtcp import (
    NTP_UNIX_OFFSET_S,
    OPUS_DECODER_DELAY_NS,
    RtpUnwrapper,
    SrMapper,
    StreamTimeline,
    TrackSpec,
    frame_rtp,
    ntp_to_ns,
    unix_ns_to_ntp,
)
from crossmodald.media import NS_PER_MS, NS_PER_S, ClockKind

WALL0_NS = 1_700_000_000 * NS_PER_S  # a Unix time for the sender's clock
US = 1000
NTP0_NS = WALL0_NS + NTP_UNIX_OFFSET_S * NS_PER_S


def ntp_at(offset_ns: int) -> int:
    """The NTP timestamp of WALL0 + offset."""
    return unix_ns_to_ntp(WALL0_NS + offset_ns)


@given(st.integers(min_value=0, max_value=(1 << 62)))
def test_ntp_round_trip_within_a_nanosecond(unix_ns: int) -> None:
    ntp = unix_ns_to_ntp(unix_ns)
    assert abs(ntp_to_ns(ntp) - (unix_ns + NTP_UNIX_OFFSET_S * NS_PER_S)) <= 1


def test_unwrapper_crosses_the_32_bit_wrap_both_ways() -> None:
    unwrap = RtpUnwrapper()
    assert unwrap.unwrap(0xFFFF_FF00) == 0xFFFF_FF00
    assert unwrap.unwrap(0x0000_0100) == 0x1_0000_0100  # forward over the wrap
    assert unwrap.unwrap(0xFFFF_FFF0) == 0xFFFF_FFF0  # reordered packet back over it
    with pytest.raises(ValueError, match="32-bit"):
        unwrap.unwrap(1 << 32)


def test_mapper_with_one_report_uses_the_nominal_rate() -> None:
    mapper = SrMapper(90000)
    assert mapper.to_ntp_ns(1234) is None
    assert not mapper.add(0, 1000)  # aiortc sends NTP 0 before media: ignored
    assert mapper.add(ntp_at(0), 1000)
    mapped = mapper.to_ntp_ns(1000 + 90000 * 3)
    assert mapped is not None
    assert abs(mapped - (NTP0_NS + 3 * NS_PER_S)) <= 1


def test_mapper_fits_a_fast_sender_clock_and_maps_across_the_wrap() -> None:
    rate, ppm = 48000, 200.0  # the sender's audio clock runs 200 ppm fast
    origin = (1 << 32) - 48000 * 10  # wraps 10 s in
    mapper = SrMapper(rate)
    for k in range(16):
        t_ns = k * NS_PER_S
        rtp = (origin + round(t_ns / NS_PER_S * rate * (1 + ppm * 1e-6))) & 0xFFFFFFFF
        mapper.add(ntp_at(t_ns), rtp)
    assert mapper.rate_error_ppm == pytest.approx(ppm, abs=2)
    rtp_20s = (origin + round(20 * rate * (1 + ppm * 1e-6))) & 0xFFFFFFFF
    mapped = mapper.to_ntp_ns(rtp_20s)
    assert mapped is not None
    assert abs(mapped - (NTP0_NS + 20 * NS_PER_S)) < 50_000  # 50 us
    assert mapper.restarts == 0


def test_mapper_short_span_averages_send_jitter() -> None:
    mapper = SrMapper(90000)
    jitter_ms = [0, 3, -2, 1]
    for k, j in enumerate(jitter_ms):
        mapper.add(ntp_at(k * NS_PER_S + j * NS_PER_MS), 5000 + k * 90000)
    mapped = mapper.to_ntp_ns(5000)
    assert mapped is not None
    assert abs(mapped - (NTP0_NS + NS_PER_MS * sum(jitter_ms) // len(jitter_ms))) < 10_000


def test_mapper_detects_a_sender_restart_and_starts_again() -> None:
    mapper = SrMapper(90000)
    for k in range(3):
        mapper.add(ntp_at(k * NS_PER_S), 1000 + k * 90000)
    # Restart: new random RTP origin at the same wall clock.
    mapper.add(ntp_at(3 * NS_PER_S), 777_000_000)
    assert mapper.restarts == 1
    mapped = mapper.to_ntp_ns(777_000_000 + 90000)
    assert mapped is not None
    assert abs(mapped - (NTP0_NS + 4 * NS_PER_S)) <= 1
    # NTP going back is a restart too.
    mapper.add(ntp_at(1 * NS_PER_S), 777_000_000 + 90000)
    assert mapper.restarts == 2


def two_tracks(**kwargs: int) -> StreamTimeline:
    return StreamTimeline(
        [TrackSpec("video", 90000), TrackSpec("audio", 48000, OPUS_DECODER_DELAY_NS)], **kwargs
    )


def test_timeline_is_arrival_timed_until_reports_then_switches_once() -> None:
    timeline = two_tracks()
    v0, a0 = 3_000_000, 4_000_000_000  # random RTP origins
    arrive0 = 50 * NS_PER_S  # daemon monotonic time of the first arrival
    # Video arrives 40 ms after capture, audio 85 ms (jitter buffers).
    first_v = timeline.map_frame("video", v0, arrive0)
    assert first_v.pts_ns == 0
    assert first_v.clock is ClockKind.ARRIVAL
    a = timeline.map_frame("audio", a0, arrive0 + 45 * NS_PER_MS)
    assert a.pts_ns == 45 * NS_PER_MS - OPUS_DECODER_DELAY_NS  # arrival: off by 45 ms
    # Reports: both tracks captured at WALL0 for RTP v0 / a0.
    timeline.add_sender_report("video", ntp_at(0), v0)
    v = timeline.map_frame("video", v0 + 3000, arrive0 + 33 * NS_PER_MS)
    assert v.pts_ns == 33_333_333  # the first SR track keeps its place
    assert v.change == "clock_switch"
    assert v.clock is ClockKind.ARRIVAL  # audio is still arrival-timed
    timeline.add_sender_report("audio", ntp_at(0), a0)
    a = timeline.map_frame("audio", a0 + 960, arrive0 + 65 * NS_PER_MS)
    assert a.clock is ClockKind.RTCP
    assert a.change == "clock_switch"
    # Now on the capture clock (to within the NTP fixed point's rounding).
    assert a.pts_ns == pytest.approx(20 * NS_PER_MS - OPUS_DECODER_DELAY_NS, abs=US)
    assert a.jump_ns == pytest.approx(-45 * NS_PER_MS, abs=US)  # the arrival-timing error
    # Steady state: no more notes.
    later = timeline.map_frame("audio", a0 + 1920, arrive0 + 85 * NS_PER_MS)
    assert later.change == ""
    assert abs(later.jump_ns) < US


def test_timeline_reports_an_rtp_jump_and_continues_by_arrival() -> None:
    timeline = two_tracks()
    timeline.add_sender_report("video", ntp_at(0), 0)
    timeline.map_frame("video", 0, 0)
    timeline.map_frame("video", 3000, 33 * NS_PER_MS)
    jumped = timeline.map_frame("video", 3000 + 90000 * 3600, 66 * NS_PER_MS)
    assert jumped.change == "timestamp_jump"
    assert "jumped by +3600" in jumped.note
    assert jumped.pts_ns == pytest.approx(33_333_333 + 33 * NS_PER_MS, abs=US)  # by arrival
    assert jumped.clock is ClockKind.ARRIVAL  # the old SR line was dropped
    # The next SR of the new origin brings the track back to RTCP.
    timeline.add_sender_report("video", ntp_at(NS_PER_S), 3000 + 90000 * 3600 + 90000)
    back = timeline.map_frame("video", 3000 + 90000 * 3600 + 3000, 99 * NS_PER_MS)
    assert back.clock is ClockKind.RTCP


def test_transport_offset_is_the_latency_difference() -> None:
    timeline = two_tracks()
    assert timeline.transport().audio_lead_ms is None
    assert timeline.transport().transport_offset_ms is None
    timeline.add_sender_report("video", ntp_at(0), 1000)
    timeline.add_sender_report("audio", ntp_at(0), 2000)
    # Receiver wall clock 250 ms ahead of the sender's; video 10 ms on the way, audio 130 ms.
    skew = 250 * NS_PER_MS
    for k in range(50):
        t = k * 20 * NS_PER_MS
        timeline.add_packet_arrival("audio", 2000 + k * 960, WALL0_NS + t + skew + 130 * NS_PER_MS)
        timeline.add_packet_arrival("video", 1000 + k * 1800, WALL0_NS + t + skew + 10 * NS_PER_MS)
    estimate = timeline.transport()
    assert estimate.audio_lead_ms == pytest.approx(-120.0, abs=0.01)
    # The same from the timestamps' side: they put the audio 120 ms ahead of its arrival.
    assert estimate.transport_offset_ms == pytest.approx(120.0, abs=0.01)
    assert estimate.as_dict()["transport_offset_ms"] == estimate.transport_offset_ms
    assert estimate.audio_latency_ms == pytest.approx(380.0, abs=0.01)
    assert estimate.audio_reports == estimate.video_reports == 1
    assert estimate.as_dict()["timing"] == "arrival"  # no frame mapped yet


def test_transport_offset_compares_the_tracks_over_the_same_span() -> None:
    # Audio 50 packets/s and video 30 frames/s, both 40 ms on the way for 6 s, then both
    # 140 ms (the path got slower for both): no offset at any time. Medians over a count of
    # arrivals would cover 5 s of audio but 8.5 s of video and read +100 ms for seconds.
    timeline = two_tracks()
    timeline.add_sender_report("video", ntp_at(0), 0)
    timeline.add_sender_report("audio", ntp_at(0), 0)
    arrivals = [(k * 20 * NS_PER_MS, "audio", k * 960) for k in range(500)]
    arrivals += [(k * NS_PER_S // 30, "video", k * 3000) for k in range(300)]
    for t, kind, rtp in sorted(arrivals):
        delay = (40 if t < 6 * NS_PER_S else 140) * NS_PER_MS
        timeline.add_packet_arrival(kind, rtp, WALL0_NS + t + delay)
    estimate = timeline.transport()
    assert estimate.transport_offset_ms == pytest.approx(0.0, abs=0.01)
    assert estimate.audio_latency_ms == estimate.video_latency_ms == pytest.approx(140.0)
    # The arrivals of the last 5 s before the latest (10.12 s): 246 audio, 147 video.
    assert estimate.samples == 246 + 147


def test_timeline_rejects_bad_tracks() -> None:
    with pytest.raises(ValueError, match="distinct kinds"):
        StreamTimeline([TrackSpec("video", 90000), TrackSpec("video", 90000)])
    timeline = StreamTimeline([TrackSpec("video", 90000)])
    with pytest.raises(ValueError, match="no 'audio' track"):
        timeline.map_frame("audio", 0, 0)
    with pytest.raises(ValueError, match="clock_rate"):
        SrMapper(0)


def test_frame_rtp_undoes_aiortcs_origin_and_time_base() -> None:
    # aiortc's own decoders: pts in 1/clock_rate ticks, counted from the first RTP timestamp.
    assert frame_rtp(3000, Fraction(1, 90000), 90000, 1_000) == 4_000
    # Wraps at 32 bits.
    assert frame_rtp(960, Fraction(1, 48000), 48000, 2**32 - 480) == 480
    # Another time base is rescaled (floored) to RTP ticks.
    assert frame_rtp(1, Fraction(1, 1000), 90000, 0) == 90
