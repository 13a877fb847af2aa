"""An injectable clock for real-time pacing of sources.

Sources that pace their output (a pattern generator, a file played at real time) never call
``time`` or ``asyncio.sleep`` directly: they ask a :class:`Pacer`. The daemon gives them a
:class:`MonotonicPacer`; tests give them a :class:`VirtualPacer`, on which waiting costs nothing
and every timing is exact and repeatable.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Pacer(Protocol):
    """A monotonic clock in integer nanoseconds that can wait for a deadline."""

    def now_ns(self) -> int:
        """The current time on this clock (monotonic, integer ns)."""
        ...

    async def sleep_until(self, t_ns: int) -> None:
        """Return once :meth:`now_ns` has reached ``t_ns`` (at once if it already has)."""
        ...


class MonotonicPacer:
    """Real time: ``time.monotonic_ns`` and ``asyncio.sleep``.

    Its ``now_ns`` is the same clock as every ``arrival_ns`` in the daemon, so items paced by it
    carry arrival times comparable with those of other sources.
    """

    def now_ns(self) -> int:
        """``time.monotonic_ns()``."""
        return time.monotonic_ns()

    async def sleep_until(self, t_ns: int) -> None:
        """Sleep until ``time.monotonic_ns() >= t_ns``.

        asyncio's timer may wake a little early (its clock resolution), so sleep again for what
        is left rather than deliver an item before its time.
        """
        while True:
            delay_ns = t_ns - time.monotonic_ns()
            if delay_ns <= 0:
                return
            await asyncio.sleep(delay_ns / 1e9)


class VirtualPacer:
    """Virtual time for tests: each ``sleep_until`` moves the clock straight to its deadline.

    Time never goes back: a deadline already passed returns at once (after yielding to the event
    loop, so other tasks still run). With several concurrent sleepers the clock simply follows
    the latest deadline asked for; tests that need a shared exact timeline use one source per
    pacer.

    Args:
        start_ns: The clock's initial reading.

    Attributes:
        sleeps: How many times ``sleep_until`` had to advance the clock.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns
        self.sleeps = 0

    def now_ns(self) -> int:
        """The virtual time."""
        return self._now_ns

    def advance(self, delta_ns: int) -> None:
        """Move the clock forward by ``delta_ns`` (>= 0), as if that much time had passed."""
        if delta_ns < 0:
            raise ValueError(f"VirtualPacer.advance: delta must be >= 0, got {delta_ns}")
        self._now_ns += delta_ns

    async def sleep_until(self, t_ns: int) -> None:
        """Jump to ``t_ns`` if it lies ahead, then yield to the event loop once."""
        if t_ns > self._now_ns:
            self._now_ns = t_ns
            self.sleeps += 1
        await asyncio.sleep(0)
