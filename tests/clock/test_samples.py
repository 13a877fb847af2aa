"""SampleCounter: audio chunks laid by sample count, checked against their stamps."""

from __future__ import annotations

import pytest

from crossmodald.clock.samples import SampleCounter
from crossmodald.media import NS_PER_MS, NS_PER_S

RATE = 48_000


def test_ms_stamps_give_way_to_the_exact_count() -> None:
    counter = SampleCounter(tolerance_ns=NS_PER_MS)  # Matroska: ms stamps
    placed = []
    for i in range(10):
        exact = i * 1000 * NS_PER_S // 44100
        stamp = exact // NS_PER_MS * NS_PER_MS  # what the container kept
        placed.append(counter.place(stamp, 1000, 44100))
    assert placed == [i * 1000 * NS_PER_S // 44100 for i in range(10)]
    assert counter.end_ns == 10_000 * NS_PER_S // 44100
    assert counter.resyncs == 0


def test_a_gap_reanchors_on_the_stamp() -> None:
    counter = SampleCounter(tolerance_ns=NS_PER_S // RATE)
    assert counter.place(0, 960, RATE) == 0
    assert counter.place(20_000_000, 960, RATE) == 20_000_000
    assert counter.place(500_000_000, 960, RATE) == 500_000_000  # 460 ms lost: a gap
    assert counter.resyncs == 1
    assert counter.place(520_000_000, 960, RATE) == 520_000_000
    assert counter.end_ns == 540_000_000


def test_missing_stamps_follow_the_count_or_the_fallback() -> None:
    counter = SampleCounter()
    assert counter.place(None, 480, RATE, fallback_ns=7) == 7
    assert counter.place(None, 480, RATE) == 7 + 10_000_000
    # A new rate starts a new count on the stamp, not counted as a resync.
    assert counter.place(123, 441, 44100) == 123
    assert counter.resyncs == 0
    counter.reset()
    assert counter.end_ns is None
    assert counter.place(5, 10, RATE) == 5


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        SampleCounter(-1)
    with pytest.raises(ValueError, match="sample rate"):
        SampleCounter().place(0, 10, 0)
