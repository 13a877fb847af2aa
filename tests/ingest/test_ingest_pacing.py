"""The pacing clocks: real monotonic time and the virtual clock tests run on."""

from __future__ import annotations

import asyncio
import time

import pytest

from crossmodald.ingest.pacing import MonotonicPacer, Pacer, VirtualPacer


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(MonotonicPacer(), Pacer)
    assert isinstance(VirtualPacer(), Pacer)


async def test_monotonic_pacer_never_returns_before_the_deadline() -> None:
    pacer = MonotonicPacer()
    start = pacer.now_ns()
    assert abs(start - time.monotonic_ns()) < 50_000_000
    for delay_ns in (1_000_000, 7_000_000, 20_000_000):
        deadline = pacer.now_ns() + delay_ns
        await pacer.sleep_until(deadline)
        assert pacer.now_ns() >= deadline


async def test_monotonic_pacer_past_deadline_returns_at_once() -> None:
    pacer = MonotonicPacer()
    before = time.perf_counter()
    await pacer.sleep_until(pacer.now_ns() - 5_000_000_000)
    assert time.perf_counter() - before < 0.05


async def test_virtual_pacer_jumps_to_deadlines_and_never_goes_back() -> None:
    pacer = VirtualPacer(start_ns=1_000)
    assert pacer.now_ns() == 1_000
    before = time.perf_counter()
    await pacer.sleep_until(3_600 * 1_000_000_000)  # an hour, instantly
    assert time.perf_counter() - before < 0.05
    assert pacer.now_ns() == 3_600 * 1_000_000_000
    await pacer.sleep_until(5)  # already passed: time stays
    assert pacer.now_ns() == 3_600 * 1_000_000_000
    assert pacer.sleeps == 1
    pacer.advance(10)
    assert pacer.now_ns() == 3_600 * 1_000_000_000 + 10
    with pytest.raises(ValueError, match="delta must be >= 0"):
        pacer.advance(-1)


async def test_virtual_pacer_yields_to_other_tasks() -> None:
    pacer = VirtualPacer()
    ran: list[int] = []

    async def other() -> None:
        ran.append(pacer.now_ns())

    task = asyncio.create_task(other())
    await pacer.sleep_until(0)  # no time passes, but the other task gets to run
    assert ran == [0]
    await task
