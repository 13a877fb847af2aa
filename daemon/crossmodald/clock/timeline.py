"""Mapping a track's raw timestamps (ticks in a time base) onto the source's ns media timeline.

A :class:`TrackTimeline` turns the integer timestamps a container or RTP stream carries (ticks of
a :class:`fractions.Fraction` time base such as 1/90000, 1/48000 or 1/1000) into integer
nanoseconds, exactly: every value is computed from the unwrapped tick count with integer
arithmetic and rounded once (see Rounding below), so no error accumulates over hours.

It also repairs the two things raw timestamps do in the wild:

* **wrap-around** (RTP: 32 bits, MPEG-TS: 33 bits): a value that jumps back by more than half
  the counter range is taken as a wrap and unwrapped (and counted);
* **discontinuities** (a camera or encoder restart, a spliced file, an RTP timestamp reset): a
  forward step larger than ``max_jump_ns`` or a backward step larger than ``max_backstep_ns`` is
  a timestamp jump. It is counted, reported through :attr:`TrackTimeline.last_jump` and
  :meth:`TrackTimeline.take_jump` (plain data: the source that owns the track turns it into a
  ``stream.fault``; clock/ knows no events), and the timeline is rebased so the item lands one
  expected step after the latest item so far: continuity is kept and later items follow on from
  there. Small backward steps (reordering) are returned as they are; the windower counts them as
  late or duplicate data. Tracks of one source can share a :class:`TimelineGroup`, so that a
  discontinuity of the whole source (a spliced MPEG-TS, an encoder restart) moves every track by
  the same amount and their A/V relation survives it.

Rounding: ``"half_even"`` (the default) rounds each time to the nearest ns; ``"floor"`` takes the
largest whole ns not after it, as ``ticks * num * 10**9 // den`` does (what the media source
uses for container PTS, so that a frame at exactly ``i / fps`` lands on ``i * 10**9 // fps`` like
the pattern's own timeline and every sample count in the daemon).

Example:
    >>> from fractions import Fraction
    >>> tl = TrackTimeline(Fraction(1, 90000), wrap_bits=32)
    >>> tl.map(90000).pts_ns
    1000000000
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Literal

from crossmodald.media import NS_PER_S

__all__ = [
    "Mapped",
    "Rounding",
    "TimelineGroup",
    "TimelineStats",
    "TimestampJump",
    "TrackTimeline",
    "ns_to_ticks",
    "ticks_to_ns",
]

#: How a tick count becomes whole ns: to the nearest (ties to even), or floored.
Rounding = Literal["half_even", "floor"]


def _div_round_half_even(num: int, den: int) -> int:
    """``num / den`` rounded to the nearest integer, ties to even, for ``den > 0``."""
    quotient, remainder = divmod(num, den)  # floor division: remainder is in [0, den)
    twice = 2 * remainder
    if twice > den or (twice == den and quotient % 2 == 1):
        quotient += 1
    return quotient


def _check_time_base(time_base: Fraction) -> None:
    # ``numerator``, not ``time_base <= 0``: a Fraction's comparison goes through its generic
    # operator fallbacks (~1 us), and this runs for every frame and chunk; a Fraction's
    # denominator is always positive, so the numerator's sign is its sign.
    if not isinstance(time_base, Fraction) or time_base.numerator <= 0:
        raise ValueError(f"time base must be a positive Fraction, got {time_base!r}")


def _check_rounding(rounding: str) -> None:
    if rounding not in ("half_even", "floor"):
        raise ValueError(f"rounding must be 'half_even' or 'floor', got {rounding!r}")


def ticks_to_ns(ticks: int, time_base: Fraction, rounding: Rounding = "half_even") -> int:
    """Convert ``ticks`` of ``time_base`` seconds to integer nanoseconds.

    Args:
        ticks: A tick count (may be negative).
        time_base: Seconds per tick, e.g. ``Fraction(1, 90000)``.
        rounding: ``"half_even"``: to the nearest ns, ties to even; ``"floor"``: the largest
            whole ns not after the exact time.

    Returns:
        ``ticks * time_base`` in ns, rounded as asked.

    Raises:
        ValueError: If the time base is not a positive Fraction, or the rounding is unknown.
    """
    _check_time_base(time_base)
    _check_rounding(rounding)
    num = ticks * time_base.numerator * NS_PER_S
    if rounding == "floor":
        return num // time_base.denominator
    return _div_round_half_even(num, time_base.denominator)


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


class TimelineGroup:
    """The tracks of one source, so that a discontinuity of the whole source moves them together.

    When a member track jumps and no other member has started a discontinuity it has not yet
    taken, the jump starts one: the group remembers how far the track was moved. The next member
    to jump first tries that same move: if it puts the item within its own normal step limits
    and within ``span_ns`` of where the first track landed, it takes it, so audio and video keep
    exactly the offset they had in the input; otherwise it lands on its own (one expected step
    after its head) and starts a new discontinuity.

    Args:
        span_ns: How far from the first track's landing another track's item may be placed by
            the same move (the tracks of one input are interleaved more closely than this).

    Attributes:
        serial: Discontinuities started so far.
        move_ns: How far the latest discontinuity moved its first track (landed minus raw).
        landed_ns: Where that track's item landed.

    Raises:
        ValueError: On a span that is not positive.
    """

    __slots__ = ("landed_ns", "move_ns", "serial", "span_ns")

    def __init__(self, span_ns: int = 5 * NS_PER_S) -> None:
        if span_ns <= 0:
            raise ValueError(f"timeline group span_ns must be positive, got {span_ns}")
        self.span_ns = span_ns
        self.serial = 0
        self.move_ns = 0
        self.landed_ns = 0


class TrackTimeline:
    """Maps one track's raw timestamps to integer ns on the source's media timeline.

    The mapping is ``pts_ns = ticks_to_ns(unwrapped_ticks, time_base) + shift_ns``, where
    ``shift_ns`` starts at ``offset_ns`` (or whatever puts the first item at ``start_ns``) and
    changes only on a timestamp jump. Each item is rounded on its own from the exact tick count,
    so the error stays below one ns forever.

    "The previous item" for jump detection is the latest item on the timeline so far (the
    highest ``pts_ns`` returned), so a few reordered items do not throw the detection off.

    Args:
        time_base: Seconds per tick, e.g. ``Fraction(1, 90000)``.
        wrap_bits: Width of the raw counter (32 for RTP, 33 for MPEG-TS), or None when raw
            values do not wrap. With a width, raw values must lie in ``[0, 2**wrap_bits)``
            unless ``accept_unwrapped`` is set.
        max_jump_ns: A forward step larger than this is a jump (default 5 s).
        max_backstep_ns: A backward step larger than this is a jump (default 0.5 s); smaller
            backward steps are returned as they are.
        expected_step_ns: Where a jumped item lands after the previous one. When None, the
            previous item's ``duration_ns`` (if :meth:`map` was given one) is used, else the
            last normal forward step seen, else one tick.
        offset_ns: Added to every mapped time (ignored when ``start_ns`` is given).
        start_ns: When given, the first item maps to exactly this time (useful for RTP, whose
            timestamps start at a random value).
        rounding: ``"half_even"`` or ``"floor"`` (see the module docstring).
        accept_unwrapped: With ``wrap_bits``, take raw values outside the counter range too:
            a demuxer that already unwrapped (FFmpeg corrects one MPEG-TS wrap itself, giving
            values past 2**33 or below 0). The first item keeps the value it was given; the
            rest are placed nearest the previous one modulo the counter range, so both the
            demuxer's unwrapping and any later wrap it missed come out continuous.
        group: The source's :class:`TimelineGroup`, when its tracks should move together on a
            discontinuity.

    Raises:
        ValueError: On a bad time base, width, limit or rounding.
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
        rounding: Rounding = "half_even",
        accept_unwrapped: bool = False,
        group: TimelineGroup | None = None,
    ) -> None:
        _check_time_base(time_base)
        _check_rounding(rounding)
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
        self.rounding: Rounding = rounding
        self.accept_unwrapped = accept_unwrapped
        self._floor = rounding == "floor"
        self._range = 1 << wrap_bits if wrap_bits is not None else 0
        self._num = time_base.numerator * NS_PER_S
        self._den = time_base.denominator
        self._shift_ns = offset_ns
        self._start_ns = start_ns
        self._group = group
        self._group_serial = group.serial if group is not None else 0
        self._last_ext: int | None = None  # unwrapped ticks of the previous item (arrival order)
        self._max_cycle = 0
        self._head_ns: int | None = None  # latest media time mapped so far
        self._head_duration_ns: int | None = None
        self._learned_step_ns: int | None = None
        self._prev_ns: int | None = None
        self._untaken: TimestampJump | None = None
        self.stats = TimelineStats()
        self.last_jump: TimestampJump | None = None

    @property
    def head_ns(self) -> int | None:
        """The latest media time mapped so far (None before the first item)."""
        return self._head_ns

    def _unwrap(self, raw: int) -> int:
        rng = self._range
        if not 0 <= raw < rng:
            if not self.accept_unwrapped:
                raise ValueError(
                    f"timeline: raw timestamp {raw} outside the {self.wrap_bits}-bit counter range"
                )
            if self._last_ext is None:
                # The demuxer's own unwrapping of the first item stands.
                self._max_cycle = raw // rng
                return raw
            raw %= rng
        if self._last_ext is None:
            return raw
        half = rng >> 1
        delta = raw - (self._last_ext % rng)
        # Pick the unwrapped value nearest the previous one: more than half the range back is a
        # wrap forward; more than half forward is a reordered item from before a wrap.
        if delta < -half:
            delta += rng
        elif delta > half:
            delta -= rng
        ext = self._last_ext + delta
        cycle = ext // rng
        if cycle > self._max_cycle:
            self._max_cycle = cycle
            self.stats.wraps += 1
        return ext

    def _jump_step_ns(self) -> int:
        if self.expected_step_ns is not None:
            return self.expected_step_ns
        if self._head_duration_ns is not None:
            return self._head_duration_ns
        if self._learned_step_ns is not None:
            return self._learned_step_ns
        return max(1, _div_round_half_even(self._num, self._den))

    def _land(self, pts_ns: int, head: int) -> int:
        """Where a jumped item goes: the group's move when it fits, else one step after head."""
        group = self._group
        if group is not None and group.serial != self._group_serial:
            candidate = pts_ns + group.move_ns
            step = candidate - head
            if (
                -self.max_backstep_ns <= step <= self.max_jump_ns
                and abs(candidate - group.landed_ns) <= group.span_ns
            ):
                self._group_serial = group.serial
                return candidate
        landed = head + self._jump_step_ns()
        if group is not None:
            group.serial += 1
            group.move_ns = landed - pts_ns
            group.landed_ns = landed
            self._group_serial = group.serial
        return landed

    def map_ns(self, raw: int, duration_ns: int | None = None) -> int:
        """Map one raw timestamp to its media time (the hot path: nothing allocated).

        A jump shows in :attr:`stats`, :attr:`last_jump` and :meth:`take_jump`.

        Args:
            raw: The item's timestamp in ticks of the time base.
            duration_ns: The item's duration, if known (an audio chunk's length); used to place
                the next item after a jump.

        Returns:
            The item's time on the source's media timeline, in ns.

        Raises:
            ValueError: If ``raw`` is outside the counter range of a wrapping timeline.
        """
        ext = self._unwrap(raw) if self._range else raw
        self._last_ext = ext
        if self._floor:
            raw_ns = ext * self._num // self._den
        else:
            raw_ns = _div_round_half_even(ext * self._num, self._den)
        head = self._head_ns
        if head is None:
            if self._start_ns is not None:
                self._shift_ns = self._start_ns - raw_ns
            pts_ns = raw_ns + self._shift_ns
            self._head_ns = pts_ns
            self._head_duration_ns = duration_ns
        else:
            pts_ns = raw_ns + self._shift_ns
            step = pts_ns - head
            if step > self.max_jump_ns or step < -self.max_backstep_ns:
                landed = self._land(pts_ns, head)
                jump_ns = pts_ns - landed
                self._shift_ns -= jump_ns
                self.stats.jumps += 1
                self.last_jump = self._untaken = TimestampJump(
                    raw=raw, previous_ns=head, raw_ns=pts_ns, landed_ns=landed, jump_ns=jump_ns
                )
                pts_ns = landed
            elif self._prev_ns is not None and pts_ns > self._prev_ns:
                self._learned_step_ns = pts_ns - self._prev_ns
            if pts_ns >= head:
                self._head_ns = pts_ns
                self._head_duration_ns = duration_ns
        self._prev_ns = pts_ns
        self.stats.mapped += 1
        return pts_ns

    def map(self, raw: int, *, duration_ns: int | None = None) -> Mapped:
        """Map one raw timestamp, saying what happened on the way.

        Args:
            raw: The item's timestamp in ticks of the time base.
            duration_ns: The item's duration, if known (an audio chunk's length); used to place
                the next item after a jump.

        Returns:
            The item's media time, and whether it wrapped or jumped.

        Raises:
            ValueError: If ``raw`` is outside the counter range of a wrapping timeline.
        """
        stats = self.stats
        jumps, wraps = stats.jumps, stats.wraps
        pts_ns = self.map_ns(raw, duration_ns)
        jump = self.last_jump if stats.jumps != jumps else None
        return Mapped(
            pts_ns=pts_ns,
            jumped=jump is not None,
            wrapped=stats.wraps != wraps,
            jump_ns=jump.jump_ns if jump is not None else 0,
        )

    def take_jump(self) -> TimestampJump | None:
        """The latest jump not taken yet (then forgotten), or None: for the source to report.

        Only the latest is kept; a source that checks after every item sees every jump.
        """
        jump, self._untaken = self._untaken, None
        return jump
