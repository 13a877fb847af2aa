"""The two buffers behind the windower: a frame ring ordered by pts and an audio sample grid.

Both hold only what the windows still open need. Positions are absolute on the stream's media
timeline (video: pts in ns; audio: sample index on the window grid), so nothing is ever renumbered
and a window is one lookup (video) or one slice copy (audio).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from crossmodald.media import F32Array, VideoFrame

BoolArray = npt.NDArray[np.bool_]
_G = TypeVar("_G", bound=np.generic)

# Compact the frame lists once this many evicted entries sit at their front (amortised O(1)).
_COMPACT_AT = 64


# The windower runs on the event loop. numpy releases the GIL for copies, fills and reductions
# of more than a few hundred elements; while ingest or plugin threads run Python, taking it back
# waits for one of them to let go (up to the 5 ms switch interval): measured with one busy
# thread, a 1024-sample write took ~170 us instead of 0.4, a window's 2 s copy ~5 ms instead of
# 12 us. These helpers copy through the buffer protocol, which holds the GIL (plain memcpy).


def copy_into(dst: npt.NDArray[np.generic], src: npt.NDArray[np.generic]) -> None:
    """``dst[:] = src`` for 1-D arrays of one length, holding the GIL where it can."""
    if (
        dst.dtype == src.dtype
        and dst.ndim == src.ndim == 1
        and dst.flags.c_contiguous
        and src.flags.c_contiguous
        and dst.dtype.isnative
    ):
        dst.data.cast("B")[:] = src.data.cast("B")
    else:
        dst[:] = src


def copy_of(src: npt.NDArray[_G]) -> npt.NDArray[_G]:
    """A copy of a 1-D array, holding the GIL where it can (see :func:`copy_into`)."""
    out = np.empty(len(src), dtype=src.dtype)
    copy_into(out, src)
    return out


def all_true(mask: BoolArray) -> bool:
    """Whether every element of a 1-D bool array is True, holding the GIL where it can."""
    if mask.ndim == 1 and mask.flags.c_contiguous:
        # memchr for a zero byte (numpy bools are stored as 0 and 1).
        return bytes(mask.data.cast("B")).find(0) < 0
    return bool(mask.all())


class FrameRing:
    """Video frames ordered by pts, bounded in time span and count.

    Frames are kept in two parallel lists (pts and frame) with a moving start index, so eviction
    from the front is O(1) amortised and in-order arrival is a plain append.
    """

    def __init__(self) -> None:
        self._pts: list[int] = []
        self._frames: list[VideoFrame] = []
        self._lo = 0

    def __len__(self) -> int:
        return len(self._pts) - self._lo

    @property
    def oldest_pts(self) -> int | None:
        """Pts of the oldest frame held, None when empty."""
        return self._pts[self._lo] if self._lo < len(self._pts) else None

    @property
    def newest_pts(self) -> int | None:
        """Pts of the newest frame held, None when empty."""
        return self._pts[-1] if self._lo < len(self._pts) else None

    def insert(self, frame: VideoFrame) -> bool:
        """Insert a frame in pts order; False (and nothing held changes) for a duplicate pts."""
        pts = frame.pts_ns
        if self._lo == len(self._pts) or pts > self._pts[-1]:
            self._pts.append(pts)
            self._frames.append(frame)
            return True
        i = bisect_left(self._pts, pts, self._lo)
        if i < len(self._pts) and self._pts[i] == pts:
            return False
        insort(self._pts, pts, self._lo)
        self._frames.insert(i, frame)
        return True

    def between(self, start_ns: int, end_ns: int) -> tuple[VideoFrame, ...]:
        """The frames with ``start_ns <= pts < end_ns``, in pts order (shared, not copied)."""
        a = bisect_left(self._pts, start_ns, self._lo)
        b = bisect_left(self._pts, end_ns, a)
        return tuple(self._frames[a:b])

    def first_at_or_after(self, pts_ns: int) -> int | None:
        """Pts of the first frame held at or after ``pts_ns``, None when there is none."""
        i = bisect_left(self._pts, pts_ns, self._lo)
        return self._pts[i] if i < len(self._pts) else None

    def evict_before(self, pts_ns: int) -> list[int]:
        """Drop the frames with pts below ``pts_ns``; returns their pts in order."""
        i = bisect_left(self._pts, pts_ns, self._lo)
        return self._evict_to(i)

    def evict_oldest(self) -> int:
        """Drop the oldest frame; returns its pts. The ring must not be empty."""
        return self._evict_to(self._lo + 1)[0]

    def _evict_to(self, i: int) -> list[int]:
        gone = self._pts[self._lo : i]
        self._lo = i
        if self._lo == len(self._pts):
            self._pts.clear()
            self._frames.clear()
            self._lo = 0
        elif self._lo >= _COMPACT_AT and self._lo * 2 >= len(self._pts):
            del self._pts[: self._lo]
            del self._frames[: self._lo]
            self._lo = 0
        return gone


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened to the samples of one write into a :class:`SampleGrid`.

    Attributes:
        late: Samples before the oldest open window: dropped.
        overflow: Samples dropped by the hard bound (held ones pushed out, or new ones that fell
            below it).
        duplicates: Samples that overlapped samples already held: ignored.
        gap_delta: Change in the number of undelivered samples between the lowest and the
            highest sample written (positive when a write leaves a hole, negative when a
            late write fills one).
    """

    late: int = 0
    overflow: int = 0
    duplicates: int = 0
    gap_delta: int = 0


class SampleGrid:
    """Mono float32 samples on an integer sample grid, with a per-sample "delivered" flag.

    A linear buffer of ``2 * capacity`` samples: samples live at ``index - base``; when a write
    would run past the end, the live part (from ``floor``) is moved to the front. The live part is
    usually a small fraction of the buffer, so the moves cost O(1) amortised per sample, and any
    range is one contiguous slice (a window is one slice copy). Undelivered samples are 0 and
    flagged False.

    Args:
        capacity: Hard bound on the span held, in samples (from ``floor`` to the newest sample).
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"sample grid capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._alloc = 2 * capacity
        self._buf: F32Array | None = None  # allocated on the first write
        self._ok: BoolArray | None = None
        self._base = 0  # absolute index of _buf[0]
        self._fill = 0  # _buf[_fill:] is all zero / not delivered
        self._floor = 0  # nothing below this index is held
        self._end: int | None = None  # highest written index + 1
        self._low: int | None = None  # lowest written index

    @property
    def end(self) -> int | None:
        """One past the highest sample index written, None before the first write."""
        return self._end

    @property
    def floor(self) -> int:
        """Lowest sample index that may still be held."""
        return self._floor

    @property
    def held(self) -> int:
        """Span of the buffer in use, in samples (a memory measure)."""
        return max(0, self._fill - (self._floor - self._base))

    @property
    def nbytes(self) -> int:
        """Bytes of buffer allocated (0 before the first write and after :meth:`free`)."""
        if self._buf is None or self._ok is None:
            return 0
        return int(self._buf.nbytes + self._ok.nbytes)

    def free(self) -> None:
        """Forget everything and give the buffer back: nothing will be written again (the end
        of a stream; the buffer is ``2 * capacity`` samples, ~5 MB for 10 s at 48 kHz)."""
        if self._end is not None:
            self.release(self._end)
        self._buf = self._ok = None
        self._base, self._fill = self._floor, 0

    def release(self, before: int) -> None:
        """Forget everything below sample ``before`` (no window needs it any more)."""
        if before > self._floor:
            self._floor = before

    def write(self, start: int, samples: F32Array, open_start: int) -> WriteResult | None:
        """Write samples whose first one sits at index ``start``.

        Args:
            start: Grid index of ``samples[0]``.
            samples: Mono float32 samples.
            open_start: First sample of the oldest open window; anything before it is late.

        Returns:
            Counts of what was dropped or ignored; None when everything was written into fresh
            space right after the newest sample (the common case).
        """
        self.release(open_start)
        a = start
        b = start + len(samples)
        late = 0
        if a < open_start:
            late = min(b, open_start) - a
            samples = samples[late:]
            a += late
        overflow = 0
        if a < self._floor:  # below a floor the hard bound raised
            cut = min(b, self._floor) - a
            overflow += cut
            samples = samples[cut:]
            a += cut
        if a >= b:
            return WriteResult(late=late, overflow=overflow)
        if b - self._floor > self.capacity:
            overflow += self._drop_to(b - self.capacity)
            if a < self._floor:
                cut = self._floor - a
                overflow += cut
                samples = samples[cut:]
                a += cut
        buf, ok = self._room_for(b)
        ra, rb = a - self._base, b - self._base
        gap_delta = 0
        if self._end is None or self._low is None or a >= self._end:
            # The common case, in-order delivery: one slice copy, nothing to check.
            copy_into(buf[ra:rb], samples)
            ok.data.cast("B")[ra:rb] = b"\x01" * (rb - ra)
            if self._end is not None:
                gap_delta = a - self._end
            else:
                self._low = a
            self._fill = max(self._fill, rb)
            self._end = b
            if not (late or overflow or gap_delta):
                return None
            return WriteResult(late=late, overflow=overflow, gap_delta=gap_delta)
        # Out of order or overlapping: write only where nothing is held yet.
        fresh = ~ok[ra:rb]
        n_fresh = int(np.count_nonzero(fresh))
        duplicates = (b - a) - n_fresh
        np.copyto(buf[ra:rb], samples, where=fresh)
        ok[ra:rb] = True
        # Undelivered samples in [low, end): the span grows by what the write extends it by,
        # and loses the samples it delivered.
        low, end = min(self._low, a), max(self._end, b)
        gap_delta = (end - low) - (self._end - self._low) - n_fresh
        self._fill = max(self._fill, rb)
        self._low, self._end = low, end
        return WriteResult(late=late, overflow=overflow, duplicates=duplicates, gap_delta=gap_delta)

    def read(self, start: int, n: int) -> tuple[F32Array, BoolArray]:
        """Copy samples ``[start, start + n)`` and their delivered flags (missing: 0, False)."""
        lo = max(start, self._floor, self._base)
        hi = min(start + n, self._base + self._fill)
        if self._buf is None or self._ok is None or hi <= lo:
            return np.zeros(n, np.float32), np.zeros(n, np.bool_)
        ra, rb = lo - self._base, hi - self._base
        if lo == start and hi == start + n:
            return copy_of(self._buf[ra:rb]), copy_of(self._ok[ra:rb])
        audio = np.zeros(n, np.float32)
        valid = np.zeros(n, np.bool_)
        audio[lo - start : hi - start] = self._buf[ra:rb]
        valid[lo - start : hi - start] = self._ok[ra:rb]
        return audio, valid

    def first_valid_at_or_after(self, index: int) -> int | None:
        """Index of the first delivered sample at or after ``index``, None when there is none."""
        if self._ok is None:
            return None
        ra = max(index, self._floor) - self._base
        if ra >= self._fill:
            return None
        i = int(np.argmax(self._ok[ra : self._fill]))
        if not self._ok[ra + i]:
            return None
        return self._base + ra + i

    def _drop_to(self, new_floor: int) -> int:
        """Raise the floor to ``new_floor``, clearing held samples; returns how many were held."""
        dropped = 0
        if self._buf is not None and self._ok is not None:
            ra = max(self._floor - self._base, 0)
            rb = min(new_floor - self._base, self._fill)
            if rb > ra:
                dropped = int(np.count_nonzero(self._ok[ra:rb]))
                self._buf[ra:rb] = 0.0
                self._ok[ra:rb] = False
        self._floor = new_floor
        return dropped

    def _room_for(self, end: int) -> tuple[F32Array, BoolArray]:
        """Make sure indices up to ``end`` fit in the buffer; returns the buffers."""
        if self._buf is None or self._ok is None:
            self._buf = np.zeros(self._alloc, np.float32)
            self._ok = np.zeros(self._alloc, np.bool_)
            self._base = self._floor
            self._fill = 0
        if end - self._base > self._alloc:
            # Move the live part to the front. end - floor <= capacity < alloc, so it fits.
            shift = self._floor - self._base
            live = max(0, self._fill - shift)
            if live:
                self._buf[:live] = self._buf[shift : self._fill]
                self._ok[:live] = self._ok[shift : self._fill]
            self._buf[live : self._fill] = 0.0
            self._ok[live : self._fill] = False
            self._base = self._floor
            self._fill = live
        return self._buf, self._ok
