"""Mapping a track's raw timestamps (ticks in a time base) onto the source's ns media timeline.

A :class:`TrackTimeline` turns the integer timestamps a container or RTP stream carries (ticks of
a :class:`fractions.Fraction` time base such as 1/90000, 1/48000 or 1/1000) into integer
nanoseconds, exactly: every value is computed from the unwrapped tick count with integer
arithmetic and round-half-even, so no error accumulates over hours.

It also repairs the two things raw timestamps do in the wild:

* **wrap-around** (RTP: 32 bits, MPEG-TS: 33 bits): a value that jumps back by more than half
  the counter range is taken as a wrap and unwrapped (and counted);
* **discontinuities** (a camera or encoder restart, a spliced file, an RTP timestamp reset): a
  forward step larger than ``max_jump_ns`` or a backward step larger than ``max_backstep_ns`` is
  a timestamp jump. It is counted, reported through :attr:`TrackTimeline.last_jump` (see
  :func:`jump_event` for the ``stream.fault`` event), and the timeline is rebased so the item
  lands one expected step after the latest item so far: continuity is kept and later items follow
  on from there. Small backward steps (reordering) are returned as they are; the windower counts
  them as late or duplicate data.

Example:
    >>> from fractions import Fraction
    >>> tl = TrackTimeline(Fraction(1, 90000), wrap_bits=32)
    >>> tl.map(90000).pts_ns
    1000000000
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

from crossmodald.bus.events import Event
from crossmodald.media import NS_PER_S, ClockKind

__all__ = [
    "Mapped",
    "TimelineStats",
    "TimestampJump",
    "TrackTimeline",
    "jump_event",
    "ns_to_ticks",
    "ticks_to_ns",
]


def _div_round_half_even(num: int, den: int) -> int:
    """``num / den`` rounded to the nearest integer, ties to even, for ``den > 0``."""
    quotient, remainder = divmod(num, den)  # floor division: remainder is in [0, den)
    twice = 2 * remainder
    if twice > den or (twice == den and quotient % 2 == 1):
        quotient += 1
    return quotient


def _check_time_base(time_base: Fraction) -> None:
    if not isinstance(time_base, Fraction) or time_base <= 0:
        raise ValueError(f"time base must be a positive Fraction, got {time_base!r}")


def ticks_to_ns(ticks: int, time_base: Fraction) -> int:
    """Convert ``ticks`` of ``time_base`` seconds to integer nanoseconds (round half to even).

    Args:
        ticks: A tick count (may be negative).
        time_base: Seconds per tick, e.g. ``Fraction(1, 90000)``.

    Returns:
        ``ticks * time_base`` in ns, rounded to the nearest ns, ties to even.

    Raises:
        ValueError: If the time base is not a positive Fraction.
    """
    _check_time_base(time_base)
    return _div_round_half_even(ticks * time_base.numerator * NS_PER_S, time_base.denominator)


def ns_to_ticks(ns: int, time_base: Fraction) -> int:
    """Convert integer nanoseconds to ticks of ``time_base`` (round half to even).

    Args:
        ns: A time in nanoseconds (may be negative).
        time_base: Seconds per tick.

    Returns:
        The nearest tick count, ties to even.

    Raises:
        ValueError: If the time base is not a positive Fraction.
    """
    _check_time_base(time_base)
    return _div_round_half_even(ns * time_base.denominator, time_base.numerator * NS_PER_S)


@dataclass(frozen=True, slots=True)
class Mapped:
    """One mapped timestamp.

    Attributes:
        pts_ns: The item's time on the source's media timeline.
        jumped: True when this item was a timestamp jump and the timeline was rebased on it.
        wrapped: True when this item's raw value wrapped the counter (a new wrap was counted).
        jump_ns: For a jump, the discontinuity removed (the raw time minus where the item
            landed); 0 otherwise.
    """

    pts_ns: int
    jumped: bool = False
    wrapped: bool = False
    jump_ns: int = 0


@dataclass(frozen=True, slots=True)
class TimestampJump:
    """What a caller needs to report a ``stream.fault`` of kind ``timestamp_jump``.

    Attributes:
        raw: The raw timestamp (ticks, as received) that jumped.
        previous_ns: The latest media time before the jump.
        raw_ns: Where the raw timestamp would have put the item.
        landed_ns: Where the item was placed (``previous_ns`` plus one expected step).
        jump_ns: ``raw_ns - landed_ns``: the discontinuity removed (negative for a backward jump).
    """

    raw: int
    previous_ns: int
    raw_ns: int
    landed_ns: int
    jump_ns: int

    def as_dict(self) -> dict[str, int]:
        """The jump as a JSON-ready dict."""
        return asdict(self)


@dataclass(slots=True)
class TimelineStats:
    """Counters of a :class:`TrackTimeline`.

    Attributes:
        mapped: Timestamps mapped.
        wraps: Counter wrap-arounds unwrapped.
        jumps: Timestamp jumps (discontinuities) rebased.
    """

    mapped: int = 0
    wraps: int = 0
    jumps: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dict."""
        return asdict(self)


class TrackTimeline:
    """Maps one track's raw timestamps to integer ns on the source's media timeline.

    The mapping is ``pts_ns = ticks_to_ns(unwrapped_ticks, time_base) + shift_ns``, where
    ``shift_ns`` starts at ``offset_ns`` (or whatever puts the first item at ``start_ns``) and
    changes only on a timestamp jump. Each item is rounded on its own from the exact tick count,
    so the error stays below half a ns forever.

    "The previous item" for jump detection is the latest item on the timeline so far (the
    highest ``pts_ns`` returned), so a few reordered items do not throw the detection off.

    Args:
        time_base: Seconds per tick, e.g. ``Fraction(1, 90000)``.
        wrap_bits: Width of the raw counter (32 for RTP, 33 for MPEG-TS), or None when raw
            values do not wrap. With a width, raw values must lie in ``[0, 2**wrap_bits)``.
        max_jump_ns: A forward step larger than this is a jump (default 5 s).
        max_backstep_ns: A backward step larger than this is a jump (default 0.5 s); smaller
            backward steps are returned as they are.
        expected_step_ns: Where a jumped item lands after the previous one. When None, the
            previous item's ``duration_ns`` (if :meth:`map` was given one) is used, else the
            last normal forward step seen, else one tick.
        offset_ns: Added to every mapped time (ignored when ``start_ns`` is given).
        start_ns: When given, the first item maps to exactly this time (useful for RTP, whose
            timestamps start at a random value).

    Raises:
        ValueError: On a bad time base, width or limit.
    """

    def __init__(
        self,
        time_base: Fraction,
        *,
        wrap_bits: int | None = None,
        max_jump_ns: int = 5 * NS_PER_S,
        max_backstep_ns: int = NS_PER_S // 2,
        expected_step_ns: int | None = None,
        offset_ns: int = 0,
        start_ns: int | None = None,
    ) -> None:
        _check_time_base(time_base)
        if wrap_bits is not None and not 1 <= wrap_bits <= 64:
            raise ValueError(f"timeline wrap_bits must be in 1..64 or None, got {wrap_bits}")
        if max_jump_ns <= 0:
            raise ValueError(f"timeline max_jump_ns must be positive, got {max_jump_ns}")
        if max_backstep_ns < 0:
            raise ValueError(f"timeline max_backstep_ns must be >= 0, got {max_backstep_ns}")
        if expected_step_ns is not None and expected_step_ns < 0:
            raise ValueError(f"timeline expected_step_ns must be >= 0, got {expected_step_ns}")
        self.time_base = time_base
        self.wrap_bits = wrap_bits
        self.max_jump_ns = max_jump_ns
        self.max_backstep_ns = max_backstep_ns
        self.expected_step_ns = expected_step_ns
        self._range = 1 << wrap_bits if wrap_bits is not None else 0
        self._num = time_base.numerator * NS_PER_S
        self._den = time_base.denominator
        self._shift_ns = offset_ns
        self._start_ns = start_ns
        self._last_ext: int | None = None  # unwrapped ticks of the previous item (arrival order)
        self._max_cycle = 0
        self._head_ns: int | None = None  # latest media time mapped so far
        self._head_duration_ns: int | None = None
        self._learned_step_ns: int | None = None
        self._prev_ns: int | None = None
        self.stats = TimelineStats()
        self.last_jump: TimestampJump | None = None

    @property
    def head_ns(self) -> int | None:
        """The latest media time mapped so far (None before the first item)."""
        return self._head_ns

    def _unwrap(self, raw: int) -> tuple[int, bool]:
        if not self._range:
            return raw, False
        if not 0 <= raw < self._range:
            raise ValueError(
                f"timeline: raw timestamp {raw} outside the {self.wrap_bits}-bit counter range"
            )
        if self._last_ext is None:
            return raw, False
        half = self._range >> 1
        delta = raw - (self._last_ext % self._range)
        # Pick the unwrapped value nearest the previous one: more than half the range back is a
        # wrap forward; more than half forward is a reordered item from before a wrap.
        if delta < -half:
            delta += self._range
        elif delta > half:
            delta -= self._range
        ext = self._last_ext + delta
        cycle = ext // self._range
        if cycle > self._max_cycle:
            self._max_cycle = cycle
            return ext, True
        return ext, False

    def _jump_step_ns(self) -> int:
        if self.expected_step_ns is not None:
            return self.expected_step_ns
        if self._head_duration_ns is not None:
            return self._head_duration_ns
        if self._learned_step_ns is not None:
            return self._learned_step_ns
        return max(1, _div_round_half_even(self._num, self._den))

    def map(self, raw: int, *, duration_ns: int | None = None) -> Mapped:
        """Map one raw timestamp.

        Args:
            raw: The item's timestamp in ticks of the time base.
            duration_ns: The item's duration, if known (an audio chunk's length); used to place
                the next item after a jump.

        Returns:
            The item's media time and what happened on the way.

        Raises:
            ValueError: If ``raw`` is outside the counter range of a wrapping timeline.
        """
        ext, wrapped = self._unwrap(raw)
        self._last_ext = ext
        if wrapped:
            self.stats.wraps += 1
        raw_ns = _div_round_half_even(ext * self._num, self._den)
        if self._head_ns is None and self._start_ns is not None:
            self._shift_ns = self._start_ns - raw_ns
        pts_ns = raw_ns + self._shift_ns
        jumped = False
        jump_ns = 0
        head = self._head_ns
        if head is not None:
            step = pts_ns - head
            if step > self.max_jump_ns or step < -self.max_backstep_ns:
                landed = head + self._jump_step_ns()
                jump_ns = pts_ns - landed
                self._shift_ns -= jump_ns
                self.stats.jumps += 1
                self.last_jump = TimestampJump(
                    raw=raw, previous_ns=head, raw_ns=pts_ns, landed_ns=landed, jump_ns=jump_ns
                )
                pts_ns = landed
                jumped = True
            elif self._prev_ns is not None and pts_ns - self._prev_ns > 0:
                self._learned_step_ns = pts_ns - self._prev_ns
        if head is None or pts_ns >= head:
            self._head_ns = pts_ns
            self._head_duration_ns = duration_ns
        self._prev_ns = pts_ns
        self.stats.mapped += 1
        return Mapped(pts_ns=pts_ns, jumped=jumped, wrapped=wrapped, jump_ns=jump_ns)


def jump_event(stream: str, jump: TimestampJump, clock: ClockKind, *, track: str = "") -> Event:
    """The ``stream.fault`` event (kind ``timestamp_jump``) that reports a jump.

    Args:
        stream: The stream name.
        jump: The jump, from :attr:`TrackTimeline.last_jump`.
        clock: The clock the timestamps rest on.
        track: Which track jumped ("video", "audio"), "" when not said.

    Returns:
        An instantaneous event at the media time where the item landed.
    """
    seconds = jump.jump_ns / NS_PER_S
    message = f"{stream}: {track + ' ' if track else ''}timestamp jump of {seconds:+.3f} s rebased"
    data: dict[str, int | str] = {"kind": "timestamp_jump", "message": message, "track": track}
    data.update(jump.as_dict())
    return Event(
        type="stream.fault",
        stream=stream,
        start_ns=jump.landed_ns,
        end_ns=jump.landed_ns,
        data=data,
        clock=clock,
    )
