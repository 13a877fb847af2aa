"""The device sources' timing parts, without devices: driver timestamps, the PortAudio clock
mapping, the ADC-anchored sample clock and the retry backoff."""

from __future__ import annotations

import itertools

import pytest

from crossmodald.clock.samples import SampleClock, StreamTimeMapper, camera_capture_ns
from crossmodald.ingest.base import Backoff
from crossmodald.media import NS_PER_MS, NS_PER_S, ClockKind

SR = 48_000
BLOCK = 960  # 20 ms
BLOCK_NS = BLOCK * NS_PER_S // SR


def test_v4l2_driver_timestamp_is_used_when_plausible() -> None:
    grab_ns = 500 * NS_PER_S
    driver_ms = (grab_ns - 12 * NS_PER_MS) / NS_PER_MS
    assert camera_capture_ns("V4L2", driver_ms, grab_ns) == (
        grab_ns - 12 * NS_PER_MS,
        ClockKind.CAPTURE,
    )


@pytest.mark.parametrize(
    ("backend", "driver_ms"),
    [
        ("FFMPEG", 499_990.0),  # a media position, not a clock reading
        ("V4L2", 0.0),  # OpenCV reports 0 before the first capture
        ("V4L2", 400_000.0),  # far older than the grab: not CLOCK_MONOTONIC
        ("V4L2", 500_001.0),  # after the grab: impossible
        ("V4L2", float("nan")),
    ],
)
def test_grab_time_is_the_fallback(backend: str, driver_ms: float) -> None:
    grab_ns = 500 * NS_PER_S
    assert camera_capture_ns(backend, driver_ms, grab_ns) == (grab_ns, ClockKind.CAPTURE)


def test_stream_time_mapper_keeps_the_smallest_offset() -> None:
    mapper = StreamTimeMapper(window=8)
    offset_ns = 3 * NS_PER_S  # monotonic = stream time + 3 s
    # Callbacks run 1..5 ms after PortAudio read its clock; the 1 ms one is the best estimate.
    delays_ms = [5, 1, 4, 3]
    got: list[int | None] = []
    for k, delay_ms in enumerate(delays_ms):
        current_s = 100.0 + k * 0.02
        now_ns = round(current_s * NS_PER_S) + offset_ns + delay_ms * NS_PER_MS
        got.append(mapper.adc_ns(current_s, current_s - 0.01, now_ns))
    expected_last = round((100.0 + 3 * 0.02 - 0.01) * NS_PER_S) + offset_ns + 1 * NS_PER_MS
    assert got[-1] == pytest.approx(expected_last, abs=1000)
    assert mapper.adc_ns(0.0, 0.0, 10) is None  # host APIs without times give zeros


def _feed_steady(
    clock: SampleClock[int], start_ns: int, blocks: int, first: int = 0, jitter_ns: int = 0
) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for k in range(first, first + blocks):
        noise = jitter_ns if k % 2 else -jitter_ns
        adc_ns = start_ns + k * BLOCK_NS + noise
        out += [(b, s.pts_ns, s.trim) for b, s in clock.feed(k, adc_ns, BLOCK)]
    return out


def test_sample_clock_holds_until_settled_then_stamps_contiguously() -> None:
    clock: SampleClock[int] = SampleClock(SR, warmup_blocks=5, window_blocks=10)
    t0 = 7 * NS_PER_S
    # The first blocks arrive in a burst with ADC times 30 ms early: they must not set the origin.
    early = [(k, clock.feed(k, t0 + k * BLOCK_NS - 30 * NS_PER_MS, BLOCK)) for k in range(3)]
    assert all(out == [] for _, out in early)
    stamped = _feed_steady(clock, t0, 20, first=3, jitter_ns=1 * NS_PER_MS)
    assert [b for b, _, _ in stamped] == list(range(23))  # held blocks come out, in order
    pts = [p for _, p, _ in stamped]
    assert abs(pts[0] - t0) <= 1 * NS_PER_MS  # the settled median, not the burst
    assert all(b - a == BLOCK_NS for a, b in itertools.pairwise(pts))
    assert clock.resyncs == 0


def test_sample_clock_resyncs_forward_when_samples_vanish() -> None:
    clock: SampleClock[int] = SampleClock(SR, warmup_blocks=5, window_blocks=10)
    t0 = NS_PER_S
    stamped = _feed_steady(clock, t0, 10)
    # 250 ms of audio lost without an overflow flag: ADC times jump ahead of the sample count.
    stamped += _feed_steady(clock, t0 + 250 * NS_PER_MS, 20, first=10)
    pts = [p for _, p, _ in stamped]
    steps = [b - a for a, b in itertools.pairwise(pts)]
    assert clock.resyncs == 1
    jumps = [s for s in steps if s != BLOCK_NS]
    assert len(jumps) == 1
    assert jumps[0] == pytest.approx(BLOCK_NS + 250 * NS_PER_MS, abs=1000)
    assert pts[-1] == t0 + 29 * BLOCK_NS + 250 * NS_PER_MS


def test_sample_clock_rides_out_late_deliveries() -> None:
    """A busy machine or a sound server's backlog delivers blocks late for a while: the
    timeline must not follow (no gap in the audio), only a step lasting a whole window moves it."""
    clock: SampleClock[int] = SampleClock(SR, warmup_blocks=5, window_blocks=10)
    t0 = NS_PER_S
    stamped = _feed_steady(clock, t0, 10)
    stamped += _feed_steady(clock, t0 + 100 * NS_PER_MS, 9, first=10)  # late, but not for long
    stamped += _feed_steady(clock, t0, 30, first=19)
    pts = [p for _, p, _ in stamped]
    assert clock.resyncs == 0
    assert pts == [t0 + k * BLOCK_NS for k in range(49)]


def test_sample_clock_steps_back_by_trimming_never_overlapping() -> None:
    clock: SampleClock[int] = SampleClock(SR, warmup_blocks=5, window_blocks=10)
    t0 = NS_PER_S
    stamped = _feed_steady(clock, t0, 10)
    stamped += _feed_steady(clock, t0 - 8 * NS_PER_MS, 20, first=10)  # the ADC clock steps back
    assert clock.resyncs == 1
    ends = []
    for _, pts, trim in stamped:
        kept = BLOCK - trim
        ends.append((pts, pts + kept * NS_PER_S // SR))
    for (_, end), (start, _) in itertools.pairwise(ends):
        assert start >= end - 1  # never overlaps what was delivered
    assert sum(trim for _, _, trim in stamped) == round(8 * NS_PER_MS * SR / NS_PER_S)


def test_sample_clock_discontinuity_starts_a_new_timeline() -> None:
    clock: SampleClock[int] = SampleClock(SR, warmup_blocks=3, window_blocks=6)
    t0 = NS_PER_S
    first = _feed_steady(clock, t0, 6)
    later_ns = t0 + 10 * NS_PER_S
    assert clock.feed(99, later_ns, BLOCK, discontinuity=True) == []
    rest = [(b, s.pts_ns) for b, s in clock.feed(100, later_ns + BLOCK_NS, BLOCK)]
    rest += [(b, s.pts_ns) for b, s in clock.feed(101, later_ns + 2 * BLOCK_NS, BLOCK)]
    assert [b for b, _, _ in first] == list(range(6))
    assert rest == [(99, later_ns), (100, later_ns + BLOCK_NS), (101, later_ns + 2 * BLOCK_NS)]


def test_backoff_doubles_to_its_cap_and_gives_up_at_its_limit() -> None:
    backoff = Backoff(0.5, 3.0, limit=5)
    assert [backoff.next_delay_s() for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]
    backoff.reset()
    assert backoff.next_delay_s() == 0.5
    forever = Backoff(1.0, 1.0)
    assert all(forever.next_delay_s() == 1.0 for _ in range(100))
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(2.0, 1.0)
