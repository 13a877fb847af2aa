"""TrackTimeline: exact tick -> ns mapping, wrap-around, timestamp jumps."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossmodald.clock import (
    Mapped,
    TimelineGroup,
    TrackTimeline,
    ns_to_ticks,
    ticks_to_ns,
)
from crossmodald.ingest.frames import jump_fault
from crossmodald.media import NS_PER_S

TB_90K = Fraction(1, 90000)
TB_48K = Fraction(1, 48000)
TB_MS = Fraction(1, 1000)
TB_NTSC = Fraction(1001, 30000)  # one tick per 29.97 fps frame


# -- helpers ----------------------------------------------------------------------------------


def test_ticks_to_ns_exact_values() -> None:
    assert ticks_to_ns(90000, TB_90K) == NS_PER_S
    assert ticks_to_ns(1, TB_90K) == 11111  # 11111.11 -> 11111
    assert ticks_to_ns(5, TB_90K) == 55556  # 55555.56 -> 55556
    assert ticks_to_ns(1, TB_48K) == 20833  # 20833.33
    assert ticks_to_ns(3, TB_48K) == 62500
    assert ticks_to_ns(7, TB_MS) == 7_000_000
    assert ticks_to_ns(1, TB_NTSC) == 33366667  # 33366666.67
    assert ticks_to_ns(-1, TB_90K) == -11111
    assert ticks_to_ns(0, TB_90K) == 0


def test_ticks_to_ns_rounds_half_to_even() -> None:
    half = Fraction(1, 2 * NS_PER_S)  # one tick = half a ns
    assert ticks_to_ns(1, half) == 0  # 0.5 -> 0
    assert ticks_to_ns(3, half) == 2  # 1.5 -> 2
    assert ticks_to_ns(5, half) == 2  # 2.5 -> 2
    assert ticks_to_ns(-1, half) == 0  # -0.5 -> 0
    assert ticks_to_ns(-3, half) == -2  # -1.5 -> -2


def test_ns_to_ticks_inverse_and_rounding() -> None:
    assert ns_to_ticks(NS_PER_S, TB_90K) == 90000
    assert ns_to_ticks(11111, TB_90K) == 1
    assert ns_to_ticks(5_555, TB_90K) == 0  # 0.49995 ticks
    assert ns_to_ticks(5_556, TB_90K) == 1  # 0.50004 ticks
    assert ns_to_ticks(10_416_666, TB_48K) == 500  # 499.99997
    assert ns_to_ticks(-11111, TB_90K) == -1


@given(ticks=st.integers(min_value=-(2**40), max_value=2**40))
def test_ns_to_ticks_recovers_ticks_when_ticks_exceed_a_ns(ticks: int) -> None:
    for tb in (TB_90K, TB_48K, TB_MS, TB_NTSC, Fraction(1, 44100)):
        assert ns_to_ticks(ticks_to_ns(ticks, tb), tb) == ticks


@given(ticks=st.integers(min_value=0, max_value=2**45))
def test_ticks_to_ns_matches_exact_fraction(ticks: int) -> None:
    for tb in (TB_90K, TB_48K, TB_NTSC):
        exact = ticks * tb * NS_PER_S
        assert ticks_to_ns(ticks, tb) == round(exact)  # Fraction rounds half to even too


@pytest.mark.parametrize("bad", [Fraction(0), Fraction(-1, 90000)])
def test_bad_time_base_rejected(bad: Fraction) -> None:
    with pytest.raises(ValueError, match="time base"):
        ticks_to_ns(1, bad)
    with pytest.raises(ValueError, match="time base"):
        TrackTimeline(bad)


def test_float_time_base_rejected() -> None:
    with pytest.raises(ValueError, match="time base"):
        ticks_to_ns(1, 1 / 90000)  # type: ignore[arg-type]


# -- plain mapping ----------------------------------------------------------------------------


def test_maps_absolute_ticks_with_offset() -> None:
    tl = TrackTimeline(TB_90K, offset_ns=1_000)
    assert tl.map(0) == Mapped(pts_ns=1_000)
    assert tl.map(3003).pts_ns == 33_366_667 + 1_000
    assert tl.stats.mapped == 2
    assert tl.stats.jumps == 0
    assert tl.head_ns == 33_367_667


def test_start_ns_puts_first_item_there() -> None:
    tl = TrackTimeline(TB_90K, wrap_bits=32, start_ns=5 * NS_PER_S)
    assert tl.map(123_456_789).pts_ns == 5 * NS_PER_S
    assert tl.map(123_456_789 + 90000).pts_ns == 6 * NS_PER_S


def test_hours_long_29_97_fps_timeline_has_no_drift() -> None:
    # 10 hours of 29.97 fps frames in a 1/90000 time base (3003 ticks a frame).
    # Sampled every 997 frames (33 s), so the jump limit is raised to let the strides through.
    tl = TrackTimeline(TB_90K, offset_ns=10**13, max_jump_ns=3600 * NS_PER_S)
    frames = 10 * 3600 * 30000 // 1001
    last = Mapped(0)
    for i in range(0, frames, 997):  # a sample of the frames, spread over the 10 hours
        last = tl.map(i * 3003)
        # Exact: frame i is at i * 1001/30000 s, rounded once to the ns.
        assert last.pts_ns == 10**13 + round(Fraction(i * 1001 * NS_PER_S, 30000))
    assert not last.jumped
    assert tl.stats.jumps == 0


def test_audio_48k_hours_exact() -> None:
    tl = TrackTimeline(TB_48K, max_jump_ns=10 * 3600 * NS_PER_S)
    step = 960  # 20 ms chunks
    n = 3 * 3600 * 50
    for i in (0, 1, 2, n // 2, n - 1):
        assert tl.map(i * step).pts_ns == i * 20_000_000


# -- wrap-around ------------------------------------------------------------------------------


def test_rtp_32_bit_wrap_unwrapped_and_counted() -> None:
    tl = TrackTimeline(TB_90K, wrap_bits=32)
    top = 2**32
    a = tl.map(top - 3000)
    b = tl.map(top - 1)
    c = tl.map(2999)  # wrapped: 6000 ticks after a
    assert a.pts_ns == ticks_to_ns(top - 3000, TB_90K)
    assert b.pts_ns == ticks_to_ns(top - 1, TB_90K)
    assert c.pts_ns == ticks_to_ns(top + 2999, TB_90K)
    assert c.wrapped
    assert not c.jumped
    assert not a.wrapped
    assert not b.wrapped
    assert tl.stats.wraps == 1
    assert tl.stats.jumps == 0


def test_mpegts_33_bit_wraps() -> None:
    tl = TrackTimeline(TB_90K, wrap_bits=33)
    top = 2**33
    step = 3000
    raw = top - 2 * step
    first = tl.map(raw).pts_ns
    total = 0
    # Walk through two wraps in big strides (4 s each, under the 5 s jump limit).
    stride = 360_000
    for _ in range(2 * top // stride + 2):
        raw = (raw + stride) % top
        total += stride
        m = tl.map(raw)
        assert not m.jumped
        assert m.pts_ns == ticks_to_ns(top - 2 * step + total, TB_90K)
    assert first == ticks_to_ns(top - 2 * step, TB_90K)
    # Started 6000 ticks before the first wrap, walked 2 * top + 720000 ticks: three wraps.
    assert tl.stats.wraps == 3


def test_reordered_packet_across_wrap_is_not_a_wrap() -> None:
    tl = TrackTimeline(TB_90K, wrap_bits=32)
    top = 2**32
    a = tl.map(top - 900)
    b = tl.map(100)  # wrapped forward
    c = tl.map(top - 450)  # a late packet from before the wrap: small backward step
    assert b.wrapped
    assert not c.wrapped
    assert not c.jumped
    assert a.pts_ns == ticks_to_ns(top - 900, TB_90K)
    assert b.pts_ns == ticks_to_ns(top + 100, TB_90K)
    assert c.pts_ns == ticks_to_ns(top - 450, TB_90K)
    d = tl.map(1000)  # back after the wrap: no second wrap
    assert not d.wrapped
    assert d.pts_ns == ticks_to_ns(top + 1000, TB_90K)
    assert tl.stats.wraps == 1


def test_raw_outside_counter_range_rejected() -> None:
    tl = TrackTimeline(TB_90K, wrap_bits=32)
    with pytest.raises(ValueError, match="32-bit"):
        tl.map(2**32)
    with pytest.raises(ValueError, match="32-bit"):
        tl.map(-1)


def test_bad_settings_rejected() -> None:
    with pytest.raises(ValueError, match="wrap_bits"):
        TrackTimeline(TB_90K, wrap_bits=0)
    with pytest.raises(ValueError, match="max_jump_ns"):
        TrackTimeline(TB_90K, max_jump_ns=0)
    with pytest.raises(ValueError, match="max_backstep_ns"):
        TrackTimeline(TB_90K, max_backstep_ns=-1)
    with pytest.raises(ValueError, match="expected_step_ns"):
        TrackTimeline(TB_90K, expected_step_ns=-1)


# -- jumps ------------------------------------------------------------------------------------


def test_forward_jump_rebased_and_continuity_kept() -> None:
    tl = TrackTimeline(TB_90K, expected_step_ns=40_000_000)
    tl.map(0)
    tl.map(3600)  # 40 ms
    j = tl.map(3600 + 90000 * 60)  # a minute later: a jump
    assert j.jumped
    assert j.pts_ns == 80_000_000
    assert j.jump_ns == 60 * NS_PER_S + 40_000_000 - 80_000_000
    nxt = tl.map(3600 + 90000 * 60 + 3600)  # follows on from the rebased item
    assert not nxt.jumped
    assert nxt.pts_ns == 120_000_000
    assert tl.stats.jumps == 1
    jump = tl.last_jump
    assert jump is not None
    assert (jump.previous_ns, jump.landed_ns, jump.raw_ns) == (
        40_000_000,
        80_000_000,
        60_040_000_000,
    )


def test_forward_step_at_limit_is_not_a_jump() -> None:
    tl = TrackTimeline(TB_MS, max_jump_ns=5 * NS_PER_S)
    tl.map(0)
    assert not tl.map(5000).jumped  # exactly 5 s
    assert tl.map(10001).jumped  # 5.001 s


def test_backward_jump_rebased_small_backstep_kept() -> None:
    tl = TrackTimeline(TB_MS, expected_step_ns=20_000_000)
    for t in (10_000, 10_020, 10_040):
        tl.map(t)
    small = tl.map(10_000)  # 40 ms back: reordering, returned as-is
    assert not small.jumped
    assert small.pts_ns == 10 * NS_PER_S
    at_limit = tl.map(9_540)  # exactly 0.5 s back from the head
    assert not at_limit.jumped
    back = tl.map(2_000)  # 8 s back: an encoder restart
    assert back.jumped
    assert back.pts_ns == 10_060_000_000
    assert back.jump_ns == 2 * NS_PER_S - 10_060_000_000
    assert tl.map(2_020).pts_ns == 10_080_000_000
    assert tl.stats.jumps == 1


def test_jump_step_from_duration_then_learned_then_one_tick() -> None:
    # Audio: the chunk's duration places the next chunk right after it.
    tl = TrackTimeline(TB_48K)
    tl.map(0, duration_ns=20_000_000)
    assert tl.map(48000 * 100).pts_ns == 20_000_000
    # Without durations: the last normal step.
    tl2 = TrackTimeline(TB_90K)
    tl2.map(0)
    tl2.map(3003)
    assert tl2.map(90000 * 100).pts_ns == 2 * 33_366_667
    # Nothing known: one tick.
    tl3 = TrackTimeline(TB_MS)
    tl3.map(0)
    assert tl3.map(100_000).pts_ns == NS_PER_S // 1000


def test_wrap_with_jump_both_reported() -> None:
    # A raw value that goes back by more than half the range is a wrap; if the resulting step
    # is still huge it is also a jump.
    tl = TrackTimeline(TB_90K, wrap_bits=32, expected_step_ns=33_366_667)
    tl.map(3_000_000_000)
    m = tl.map(100)  # wrap forward by ~1.3e9 ticks (about 4 hours): also a jump
    assert m.wrapped
    assert m.jumped
    assert m.pts_ns == ticks_to_ns(3_000_000_000, TB_90K) + 33_366_667
    assert tl.stats.wraps == 1
    assert tl.stats.jumps == 1


def test_jump_is_plain_data_and_the_source_builds_the_fault() -> None:
    tl = TrackTimeline(TB_MS, expected_step_ns=1_000_000)
    tl.map(0)
    assert tl.take_jump() is None
    tl.map(60_000)
    jump = tl.take_jump()
    assert jump is not None
    assert jump is tl.last_jump
    assert tl.take_jump() is None  # taken once
    assert jump.as_dict() == {
        "raw": 60_000,
        "previous_ns": 0,
        "raw_ns": 60 * NS_PER_S,
        "landed_ns": 1_000_000,
        "jump_ns": 59_999_000_000,
    }
    fault = jump_fault("cam1", "video", jump)
    assert fault.kind == "timestamp_jump"
    assert fault.pts_ns == 1_000_000
    assert "cam1: video timestamp jump of +59.999 s" in fault.message


# -- rounding, fast path, demuxer-unwrapped input, groups -----------------------------------


def test_floor_rounding_matches_integer_division() -> None:
    tb = Fraction(1, 15360)  # the MP4 muxer's clock for 30 fps: 512 ticks a frame
    tl = TrackTimeline(tb, rounding="floor")
    for i in range(0, 90):
        assert tl.map_ns(512 * i) == i * NS_PER_S // 30
    assert ticks_to_ns(2 * 512, tb, "floor") == 66_666_666
    assert ticks_to_ns(2 * 512, tb) == 66_666_667
    assert ticks_to_ns(-1024, Fraction(1, 48000), "floor") == -21_333_334  # towards -inf
    with pytest.raises(ValueError, match="rounding"):
        TrackTimeline(tb, rounding="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rounding"):
        ticks_to_ns(1, tb, "nearest")  # type: ignore[arg-type]


def test_map_ns_and_map_agree() -> None:
    a = TrackTimeline(TB_90K, wrap_bits=33, expected_step_ns=33_366_667)
    b = TrackTimeline(TB_90K, wrap_bits=33, expected_step_ns=33_366_667)
    raws = [2**33 - 6006, 2**33 - 3003, 0, 3003, 90000 * 100, 90000 * 100 + 3003, 500]
    for raw in raws:
        assert a.map_ns(raw) == b.map(raw).pts_ns
    assert a.stats == b.stats
    assert a.stats.wraps == 1
    assert a.stats.jumps == 2


def test_accept_unwrapped_keeps_the_demuxers_value_and_continues() -> None:
    top = 2**33
    # FFmpeg put a stream starting just before the wrap below zero (AV_PTS_WRAP_SUB_OFFSET).
    tl = TrackTimeline(TB_90K, wrap_bits=33, accept_unwrapped=True)
    assert tl.map_ns(-6000) == ticks_to_ns(-6000, TB_90K)
    assert tl.map_ns(-3000) == ticks_to_ns(-3000, TB_90K)
    assert tl.map_ns(0) == 0
    assert tl.stats.wraps == 1
    # Or above 2**33 (AV_PTS_WRAP_ADD_OFFSET), and a second wrap it no longer corrects.
    tl = TrackTimeline(TB_90K, wrap_bits=33, accept_unwrapped=True)
    assert tl.map_ns(top - 3000) == ticks_to_ns(top - 3000, TB_90K)
    assert tl.map_ns(top + 3000) == ticks_to_ns(top + 3000, TB_90K)
    # The demuxer's value in range again (its correction dropped): still continuous.
    assert tl.map_ns(6000) == ticks_to_ns(top + 6000, TB_90K)
    assert tl.stats.wraps == 1  # the one the demuxer already unwrapped
    tl = TrackTimeline(TB_90K, wrap_bits=33, accept_unwrapped=True, max_jump_ns=10**15)
    tl.map_ns(top + 10)
    for k in range(1, 40):  # walk to the next wrap in 4 s steps... quickly, with big strides
        tl.map_ns((top + 10 + k * (top // 40)) % top)
    assert tl.map_ns(20) == ticks_to_ns(2 * top + 20, TB_90K)
    assert tl.stats.jumps == 0
    with pytest.raises(ValueError, match="33-bit"):
        TrackTimeline(TB_90K, wrap_bits=33).map_ns(-1)


def test_group_moves_every_track_by_the_same_amount() -> None:
    group = TimelineGroup()
    video = TrackTimeline(TB_90K, expected_step_ns=40_000_000, group=group)
    audio = TrackTimeline(TB_48K, group=group)
    # Audio starts 20 ms before video in the input (100 s); then the input jumps back to 0 s.
    for i in range(5):
        video.map_ns(9_000_000 + 3600 * i)  # 100 s, 40 ms steps
        audio.map_ns(4_800_000 - 960 + 960 * i, 20_000_000)  # 99.98 s, 20 ms steps
    v = video.map(0)
    assert v.jumped
    assert v.pts_ns == 100 * NS_PER_S + 5 * 40_000_000  # one step after the video's head
    a = audio.map(0, duration_ns=20_000_000)  # the audio's own step would put it at 100.08 s
    assert a.jumped
    assert a.pts_ns == v.pts_ns
    # Same move for both: the 20 ms the audio trailed the video by is kept.
    assert v.jump_ns == a.jump_ns
    assert group.serial == 1
    # A track whose own step does not fit the group's move lands on its own.
    other = TrackTimeline(TB_MS, expected_step_ns=1_000_000, group=group)
    other.map_ns(0)
    o = other.map(1_000_000)  # 1000 s ahead
    assert o.jumped
    assert o.pts_ns == 1_000_000
    assert group.serial == 2
    # A move is taken only near where the first track landed.
    far = TimelineGroup(span_ns=NS_PER_S)
    first = TrackTimeline(TB_MS, expected_step_ns=1_000_000, group=far)
    late = TrackTimeline(TB_MS, expected_step_ns=1_000_000, max_jump_ns=10**15, group=far)
    first.map_ns(100_000)
    late.map_ns(100_000)
    assert first.map_ns(0) == 100_001_000_000  # a splice back by 100 s: moved by +100.001 s
    late.map_ns(150_000)  # the other track goes on to 150 s (a forward gap it keeps)
    # Back to 49.5 s: the group's move would put it at 149.501 s, within its step limits but
    # 49.5 s from where the splice landed: not the same discontinuity, so its own landing.
    assert late.map_ns(49_500) == 150_001_000_000
    assert far.serial == 2
    with pytest.raises(ValueError, match="span_ns"):
        TimelineGroup(span_ns=0)


@given(
    steps=st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=60),
    start=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_rtp_wrap_property_continuous(steps: list[int], start: int) -> None:
    """Any walk of small forward steps maps to exactly the cumulative ticks, across wraps."""
    tl = TrackTimeline(TB_90K, wrap_bits=32)
    base = tl.map(start).pts_ns
    raw, total = start, 0
    for s in steps:
        raw = (raw + s) % 2**32
        total += s
        m = tl.map(raw)
        assert not m.jumped
        assert m.pts_ns == ticks_to_ns(start + total, TB_90K)
    assert base == ticks_to_ns(start, TB_90K)
    assert tl.stats.wraps == (start + total) // 2**32
