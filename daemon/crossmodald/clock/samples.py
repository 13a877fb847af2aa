"""Sample clocks and device capture times (pure, synchronous: no devices, threads or asyncio).

* :class:`SampleCounter`: audio chunks of a file or stream laid on a running sample count, so
  consecutive chunks tile the timeline exactly while their container stamps agree with it
  (containers that store ms, such as Matroska, would otherwise add rounding jitter), and
  re-anchored on the stamp where they do not (a gap or a cut).
* :class:`SampleClock`: microphone blocks on a sample-count timeline anchored to their ADC times,
  re-anchored when the ADC times drift away (see its docstring).
* :class:`StreamTimeMapper`: PortAudio stream time onto the monotonic clock.
* :func:`camera_capture_ns`: a camera frame's capture time from the driver's stamp or the grab.

All times are integer ns; a sample's time is ``origin + count * 10**9 // rate`` (floored).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from crossmodald.media import NS_PER_MS, NS_PER_S, ClockKind

__all__ = [
    "SampleClock",
    "SampleCounter",
    "Stamp",
    "StreamTimeMapper",
    "camera_capture_ns",
]

T = TypeVar("T")

#: A driver timestamp further than this before the grab time is not trusted (not monotonic).
_DRIVER_TS_MAX_AGE_NS = 1 * NS_PER_S


class SampleCounter:
    """Places consecutive audio chunks by a running sample count, checked against their stamps.

    While a chunk's stamp agrees with the count to within ``tolerance_ns`` plus one sample (and
    the sample rate is unchanged), the count is used: it is exact where the stamp was rounded.
    A larger disagreement re-anchors the count on the stamp (counted in :attr:`resyncs`): the
    gap or overlap is kept as the stamps say, audio is never stretched.

    Args:
        tolerance_ns: Disagreement still taken as rounding (one tick of the container's clock).

    Attributes:
        resyncs: Times the count was re-anchored on a stamp that disagreed with it.
        end_ns: Where the last placed chunk ends (from the running count), None before any.
    """

    __slots__ = ("_anchor_ns", "_count", "_rate", "end_ns", "resyncs", "tolerance_ns")

    def __init__(self, tolerance_ns: int = 0) -> None:
        if tolerance_ns < 0:
            raise ValueError(f"SampleCounter: tolerance_ns must be >= 0, got {tolerance_ns}")
        self.tolerance_ns = tolerance_ns
        self.resyncs = 0
        self.end_ns: int | None = None
        self._anchor_ns: int | None = None
        self._count = 0
        self._rate = 0

    def place(self, stamped_ns: int | None, n_samples: int, rate: int, fallback_ns: int = 0) -> int:
        """Place one chunk; returns the time of its first sample.

        Args:
            stamped_ns: The chunk's own stamp on the media timeline, None when it has none.
            n_samples: Samples in the chunk.
            rate: Its sample rate.
            fallback_ns: Where a chunk without a stamp starts when there is no count to follow
                (the stream's start time).

        Raises:
            ValueError: On a sample rate that is not positive.
        """
        if rate <= 0:
            raise ValueError(f"SampleCounter: sample rate must be positive, got {rate}")
        anchor = self._anchor_ns
        if anchor is not None and rate == self._rate:
            expected_ns = anchor + self._count * NS_PER_S // rate
            if stamped_ns is None or abs(stamped_ns - expected_ns) <= (
                self.tolerance_ns + NS_PER_S // rate
            ):
                self._count += n_samples
                self.end_ns = anchor + self._count * NS_PER_S // rate
                return expected_ns
            self.resyncs += 1
        start_ns = fallback_ns if stamped_ns is None else stamped_ns
        self._anchor_ns = start_ns
        self._count = n_samples
        self._rate = rate
        self.end_ns = start_ns + n_samples * NS_PER_S // rate
        return start_ns

    def reset(self) -> None:
        """Forget the count: the next chunk starts at its own stamp (not counted as a resync)."""
        self._anchor_ns = None
        self._count = 0
        self.end_ns = None


def camera_capture_ns(backend: str, driver_ms: float, grab_ns: int) -> tuple[int, ClockKind]:
    """The capture time of a frame on the monotonic clock, and what it rests on.

    OpenCV's V4L2 backend reports the driver's buffer timestamp as ``CAP_PROP_POS_MSEC``; V4L2
    drivers stamp buffers on CLOCK_MONOTONIC, the same clock as ``time.monotonic_ns``. It is used
    when it is plausible (not after the grab, and less than a second before it); anything else
    (other backends report a media position there) falls back to the grab time.

    Args:
        backend: ``VideoCapture.getBackendName()``.
        driver_ms: ``CAP_PROP_POS_MSEC`` read right after the grab.
        grab_ns: ``time.monotonic_ns()`` when ``grab()`` returned.

    Returns:
        (capture time in ns, ClockKind.CAPTURE). Both choices are capture-time clocks.
    """
    if backend.upper() == "V4L2" and math.isfinite(driver_ms) and driver_ms > 0:
        driver_ns = round(driver_ms * NS_PER_MS)
        if grab_ns - _DRIVER_TS_MAX_AGE_NS <= driver_ns <= grab_ns:
            return driver_ns, ClockKind.CAPTURE
    return grab_ns, ClockKind.CAPTURE


class StreamTimeMapper:
    """Maps PortAudio stream time (float seconds, on whatever clock the host API uses; ALSA uses
    the wall clock) onto the monotonic clock.

    Each callback gives a pair (``currentTime``, monotonic now). The callback runs a little after
    ``currentTime`` was taken, so ``now - currentTime`` overestimates the clock offset by the
    scheduling delay; the minimum over recent callbacks is the best estimate (as in NTP).

    Args:
        window: Callbacks over which the minimum is taken (a bounded history, so that a slow
            drift between the two clocks is followed).
    """

    def __init__(self, window: int = 64) -> None:
        self._offsets_ns: deque[int] = deque(maxlen=window)

    def adc_ns(self, current_time_s: float, adc_time_s: float, now_ns: int) -> int | None:
        """The monotonic time of a block's first sample, or None when the host API gives no
        ADC time (zeros)."""
        if current_time_s <= 0.0 or adc_time_s <= 0.0:
            return None
        self._offsets_ns.append(now_ns - round(current_time_s * NS_PER_S))
        return round(adc_time_s * NS_PER_S) + min(self._offsets_ns)


@dataclass(frozen=True, slots=True)
class Stamp:
    """Where a block lands on the audio timeline.

    Attributes:
        pts_ns: Time of the block's first kept sample.
        trim: Samples to drop from the head of the block (the timeline stepped back and the
            block's start overlaps audio already delivered; audio is never stretched).
        jump_ns: The step applied to the timeline at this block (0 when none).
    """

    pts_ns: int
    trim: int = 0
    jump_ns: int = 0


class SampleClock(Generic[T]):
    """Stamps consecutive audio blocks on a sample-count timeline anchored to their ADC times.

    Each block's ADC time implies an origin (ADC time minus the samples before it). Blocks are
    held until the last ``warmup_blocks`` implied origins agree within ``resync_ns`` (at most
    ``max_hold_blocks``: the first callbacks of a stream often come in a burst, or with poor
    ADC times); the timeline origin is then their median.

    Afterwards the origin moves only when every implied origin of the last ``window_blocks``
    lies on the same side of it, more than ``resync_ns`` away: samples lost without an overflow
    flag, or the sound card's clock drifting from the monotonic one. Late deliveries (a busy
    machine, a sound server's backlog) make single blocks look late; they never move the
    timeline unless they last a whole window. A forward step leaves a gap, a backward step trims
    the overlapping samples, so audio is never stretched. A discontinuity (samples lost in an
    overflow) starts a new warm-up.

    Args:
        sample_rate: Samples per second.
        warmup_blocks: Blocks that must agree before the origin is fixed.
        window_blocks: Blocks that must all disagree with the timeline before it moves.
        resync_ns: How far the timeline may stray from the ADC times before it is re-anchored.
        max_hold_blocks: Most blocks held while waiting for the ADC times to settle.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        warmup_blocks: int = 13,
        window_blocks: int = 100,
        resync_ns: int = 5 * NS_PER_MS,
        max_hold_blocks: int = 75,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"SampleClock: sample rate must be positive, got {sample_rate}")
        if not 1 <= warmup_blocks <= window_blocks:
            raise ValueError("SampleClock: need 1 <= warmup_blocks <= window_blocks")
        self.sample_rate = sample_rate
        self._warmup = warmup_blocks
        self._resync_ns = resync_ns
        self._max_hold = max(warmup_blocks, max_hold_blocks)
        self._implied: deque[int] = deque(maxlen=window_blocks)
        self._origin_ns: int | None = None
        self._count = 0  # samples since the segment's origin
        self._owed = 0  # samples still to trim after a backward step
        self._held: list[tuple[T, int]] = []  # (block, samples before it) during warm-up
        #: Times the timeline was re-anchored because of drift or lost samples.
        self.resyncs = 0

    def _at(self, count: int) -> int:
        assert self._origin_ns is not None
        return self._origin_ns + count * NS_PER_S // self.sample_rate

    def _median(self, last: int) -> int:
        # The lower median: one of the observations, never a midpoint between two clusters.
        ordered = sorted(list(self._implied)[-last:])
        return ordered[(len(ordered) - 1) // 2]

    def feed(
        self, block: T, adc_ns: int, n_samples: int, *, discontinuity: bool = False
    ) -> list[tuple[T, Stamp]]:
        """Add one block; returns the blocks now stamped (none during warm-up, then the held
        ones at once).

        Args:
            block: The caller's block (returned with its stamp).
            adc_ns: Time of the block's first sample according to the device.
            n_samples: Samples in the block.
            discontinuity: Samples were lost before this block: start a new timeline.
        """
        if discontinuity:
            out = self._release_held()
            self._implied.clear()
            self._origin_ns = None
            self._count = 0
            self._owed = 0
            return out + self.feed(block, adc_ns, n_samples)
        before = self._count
        self._count += n_samples
        self._implied.append(adc_ns - before * NS_PER_S // self.sample_rate)
        if self._origin_ns is None:
            self._held.append((block, before))
            recent = list(self._implied)[-self._warmup :]
            settled = len(recent) == self._warmup and max(recent) - min(recent) <= self._resync_ns
            if not settled and len(self._held) < self._max_hold:
                return []
            self._origin_ns = self._median(self._warmup)
            self._implied.clear()
            held, self._held = self._held, []
            return [(b, Stamp(self._at(c))) for b, c in held]
        jump_ns = 0
        if len(self._implied) == self._implied.maxlen:
            early_ns = min(self._implied) - self._origin_ns
            late_ns = max(self._implied) - self._origin_ns
            if early_ns > self._resync_ns:
                jump_ns = early_ns  # all later than the timeline: the smallest step that fits
            elif late_ns < -self._resync_ns:
                jump_ns = late_ns
        if jump_ns:
            self._origin_ns += jump_ns
            self.resyncs += 1
            # Look again only once a full window of blocks on the new anchor is in.
            self._implied.clear()
            if jump_ns < 0:
                self._owed += math.ceil(-jump_ns * self.sample_rate / NS_PER_S)
        trim = min(self._owed, n_samples)
        self._owed -= trim
        return [(block, Stamp(self._at(before + trim), trim=trim, jump_ns=jump_ns))]

    def _release_held(self) -> list[tuple[T, Stamp]]:
        # A discontinuity during warm-up: stamp what was held on the best origin known so far.
        held, self._held = self._held, []
        if not held:
            return []
        origin = self._median(self._warmup)
        return [(b, Stamp(origin + c * NS_PER_S // self.sample_rate)) for b, c in held]
