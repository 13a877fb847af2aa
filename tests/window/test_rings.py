"""The windower's buffers on their own: FrameRing and SampleGrid (against a plain model)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from windowkit import frame, tone

from crossmodald.window.rings import FrameRing, SampleGrid


def test_frame_ring_orders_dedups_and_evicts() -> None:
    ring = FrameRing()
    for p in (10, 30, 20, 40):
        assert ring.insert(frame(p))
    assert not ring.insert(frame(20))
    assert [f.pts_ns for f in ring.between(15, 40)] == [20, 30]
    assert ring.first_at_or_after(21) == 30
    assert ring.first_at_or_after(41) is None
    assert ring.evict_before(25) == [10, 20]
    assert (ring.oldest_pts, ring.newest_pts, len(ring)) == (30, 40, 2)
    assert ring.evict_oldest() == 30
    assert ring.evict_before(100) == [40]
    assert len(ring) == 0
    assert ring.oldest_pts is None
    assert ring.newest_pts is None


def test_frame_ring_compacts_and_stays_correct() -> None:
    ring = FrameRing()
    for p in range(1000):
        ring.insert(frame(p))
        if p >= 10:
            ring.evict_before(p - 10)
    assert len(ring) == 11
    assert len(ring._pts) < 100  # the evicted front was compacted away
    assert [f.pts_ns for f in ring.between(0, 10_000)] == list(range(989, 1000))


def test_sample_grid_in_order_then_read_is_one_slice() -> None:
    grid = SampleGrid(1000)
    for start in range(0, 3000, 100):
        assert grid.write(start, tone(start, 100), max(0, start - 500)) is None
    audio, valid = grid.read(2400, 600)  # the last open start was 2400
    assert np.array_equal(audio, tone(2400, 600))
    assert valid.all()
    audio, valid = grid.read(2300, 200)  # below the floor: released
    assert valid.tolist() == [False] * 100 + [True] * 100
    assert grid.held <= 1000


def test_sample_grid_late_overflow_and_duplicates() -> None:
    grid = SampleGrid(1000)
    grid.write(0, tone(0, 500), 0)
    r = grid.write(400, tone(400, 200), 0)
    assert r is not None
    assert r.duplicates == 100
    r = grid.write(100, tone(100, 100), 150)  # half before the open start
    assert r is not None
    assert r.late == 50
    assert r.duplicates == 50
    r = grid.write(1500, tone(1500, 100), 150)  # span 150 .. 1600 > 1000: oldest dropped
    assert r is not None
    assert r.overflow == 600 - 150  # held samples 150 .. 600 pushed out
    assert r.gap_delta == 900
    audio, valid = grid.read(500, 1100)
    assert not valid[:100].any()  # 500 .. 600 dropped by the bound
    assert not valid[100:1000].any()  # 600 .. 1500 never delivered
    assert np.array_equal(audio[1000:], tone(1500, 100))
    r = grid.write(550, tone(550, 100), 150)  # below the raised floor
    assert r is not None
    assert r.overflow == 50


@pytest.mark.parametrize("n", [1, 7, 999])
def test_sample_grid_reads_outside_held_range_are_missing(n: int) -> None:
    grid = SampleGrid(1000)
    audio, valid = grid.read(0, n)
    assert (audio.shape, valid.shape) == ((n,), (n,))
    assert not valid.any()
    grid.write(10_000, tone(10_000, 10), 0)
    audio, valid = grid.read(9_995, 20)
    assert valid.tolist() == [False] * 5 + [True] * 10 + [False] * 5
    assert np.array_equal(audio[5:15], tone(10_000, 10))


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 120), st.integers(1, 60), st.integers(0, 8)),
        min_size=1,
        max_size=60,
    )
)
def test_sample_grid_matches_a_plain_model(ops: list[tuple[int, int, int]]) -> None:
    """Random writes (mostly forward, some back, some overlapping) against a dict model."""
    capacity = 200
    grid = SampleGrid(capacity)
    model: dict[int, float] = {}
    head = 0
    open_start = 0
    floor = 0
    undelivered = 0
    for back, n, advance in ops:
        start = max(0, head - back)
        open_start += advance
        samples = tone(start, n)
        result = grid.write(start, samples, open_start)
        # The model: late below open_start, bound keeps [end - capacity, end).
        floor = max(floor, open_start)
        end = max(head, start + n)
        if end - floor > capacity:
            floor = end - capacity
        for i in range(start, start + n):
            if i >= floor and i not in model:
                model[i] = float(samples[i - start])
        model = {i: v for i, v in model.items() if i >= floor}
        head = end
        if result is not None:
            undelivered += result.gap_delta
        lo = max(0, head - capacity)
        audio, valid = grid.read(lo, head - lo)
        want_valid = np.array([i in model for i in range(lo, head)], np.bool_)
        want = np.array([model.get(i, 0.0) for i in range(lo, head)], np.float32)
        assert np.array_equal(valid, want_valid)
        assert np.array_equal(audio, want)
        assert grid.held <= capacity
    assert undelivered >= 0


def test_gil_holding_copies_equal_numpy_ones() -> None:
    from crossmodald.window.rings import all_true, copy_into, copy_of

    samples = np.linspace(-1, 1, 4000, dtype=np.float32)
    out = np.zeros(4000, np.float32)
    copy_into(out, samples)
    assert np.array_equal(out, samples)
    copied = copy_of(samples[100:3100])
    assert copied.dtype == np.float32
    assert np.array_equal(copied, samples[100:3100])
    copied[0] = 5.0  # a copy, not a view
    assert samples[100] != 5.0
    strided = samples[::2]  # not contiguous: numpy does it
    assert np.array_equal(copy_of(strided), strided)
    mask = np.ones(96000, np.bool_)
    assert all_true(mask)
    assert all_true(mask[:0])
    mask[95999] = False
    assert not all_true(mask)
    assert all_true(mask[::2])
    assert not all_true(mask[1::2])
    assert np.array_equal(copy_of(mask), mask)
