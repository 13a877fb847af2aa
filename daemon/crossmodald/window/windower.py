"""Event-time windows over one stream's video frames and audio samples (Beam/Flink style).

A :class:`Windower` takes the items of ONE stream in arrival order and returns the windows that
the watermark closes. Plain synchronous code: push an item, get a list of windows back.

Windows
    Sliding windows ``[origin + k*hop, origin + k*hop + length)``, ``k = 0, 1, ...``. The origin is
    fixed by the first item seen (video or audio): ``origin = floor(first_pts / hop) * hop``, so
    windows sit on multiples of ``hop`` on the media timeline and the first window is the one that
    starts at or just before the first item. Media before the origin can join no window and is
    counted late. ``Window.index`` is ``k``.

Watermark
    For each kind the stream has (video, audio) the head is the highest media time seen (video:
    a frame's pts; audio: the end of a chunk). The watermark is the lowest head minus
    ``lateness_ns``; a window is returned once the watermark reaches its end, in index order and
    once only. A kind whose head falls more than ``max_gap_ns`` behind the other (or that never
    started) is *stalled*: the watermark goes on with the other kind alone, so a dead track does
    not hold windows back forever (counted in :class:`WindowerStats`). The watermark never moves
    back. For audio a window also waits until its last grid sample has been seen, so rounding
    can never close a window one sample short.

Late, duplicate, missing
    Anything before the start of the oldest window still open (it can join no window any more)
    is late: dropped and counted, never merged. A frame with the pts of a frame held is a
    duplicate; audio samples that overlap samples held are duplicates. Audio nobody delivered is
    zero and flagged False in ``Window.audio_valid`` (filled and flagged, never stretched).
    Windows that hold no media at all (a timestamp jump, a pause in both tracks) are skipped and
    counted, without allocating anything for them.

Audio grid
    Sample ``i`` sits at ``origin + i / sample_rate``. A chunk's first sample goes to index
    ``round((pts_ns - origin) * rate / 1e9)`` (exact integers, ties to even) and the rest follow
    it. Window ``k`` holds ``round(length_ns * rate / 1e9)`` samples from index
    ``round(k * hop_ns * rate / 1e9)``: exactly at its start when ``hop_ns * rate`` is a whole
    number of seconds' samples (every usual hop and rate), otherwise within half a sample.

Memory
    The frame ring and the sample grid hold only what open windows need, with ``max_buffer_ns`` as
    a hard bound on the span each holds (and a frame-count bound): beyond it the oldest are dropped
    and counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from crossmodald.media import NS_PER_S, AudioChunk, ClockKind, VideoFrame, Window
from crossmodald.window.rings import FrameRing, SampleGrid, all_true

__all__ = ["Windower", "WindowerStats"]

# Long audio chunks are written in pieces of at most this many seconds' samples (and at most a
# quarter of the grid capacity), closing windows in between, so a chunk of any length fits.
_PIECE_S = 1
# Frame-count bound when the frame rate is unknown: this many frames per second of buffer.
_UNKNOWN_RATE_FPS = 120

_VIDEO = "video"
_AUDIO = "audio"


def _div_round(num: int, den: int) -> int:
    """``num / den`` rounded to the nearest integer, ties to even (``den > 0``)."""
    quotient, remainder = divmod(num, den)
    twice = 2 * remainder
    if twice > den or (twice == den and quotient % 2 == 1):
        quotient += 1
    return quotient


@dataclass(slots=True)
class WindowerStats:
    """Counters of one :class:`Windower` (all cumulative).

    Attributes:
        windows: Windows returned.
        windows_skipped: Windows skipped because they held no media at all.
        video_frames: Frames accepted.
        video_late: Frames dropped as late (before the oldest open window).
        video_duplicates: Frames dropped because a frame with the same pts was held.
        video_overflow: Frames dropped by the buffer bound (oldest first).
        video_gaps: Steps between consecutive frames longer than 1.5 nominal intervals.
        video_missing_frames: Frames missing in those gaps (nominal).
        audio_chunks: Audio chunks pushed.
        audio_late_chunks: Chunks dropped whole as late.
        audio_late_samples: Samples dropped as late (whole and partly late chunks).
        audio_duplicate_samples: Samples ignored because samples were held there.
        audio_overflow_samples: Samples dropped by the buffer bound.
        audio_gap_samples: Samples never delivered between the first and the newest audio.
        stalls: Times a track was left behind by more than ``max_gap_ns`` (or never started).
        stalled_windows: Windows closed while a track was stalled, on the other track alone.
    """

    windows: int = 0
    windows_skipped: int = 0
    video_frames: int = 0
    video_late: int = 0
    video_duplicates: int = 0
    video_overflow: int = 0
    video_gaps: int = 0
    video_missing_frames: int = 0
    audio_chunks: int = 0
    audio_late_chunks: int = 0
    audio_late_samples: int = 0
    audio_duplicate_samples: int = 0
    audio_overflow_samples: int = 0
    audio_gap_samples: int = 0
    stalls: int = 0
    stalled_windows: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dict."""
        return asdict(self)


class Windower:
    """Event-time windows of one stream; see the module docstring for the semantics.

    Args:
        stream: The stream name (put in every window and every error message).
        length_ns: Window length.
        hop_ns: Distance between window starts (``0 < hop_ns <= length_ns``).
        lateness_ns: How far behind the newest media a window's end must be before it closes.
        has_video: The stream has a video track.
        has_audio: The stream has an audio track.
        sample_rate: Audio samples per second (required with audio).
        frame_rate: Nominal frames per second, None if unknown (gaps are then not counted).
        clock: The clock the stream's times rest on (copied into every window).
        max_gap_ns: How far one track may fall behind the other before the watermark goes on
            without it.
        max_buffer_ns: Hard bound on the media span held per track. Default: ``length + hop +
            lateness + max_gap + 1 s``, enough for any stream within ``max_gap_ns``.
        max_buffer_frames: Hard bound on the frames held. Default: the buffer span times twice
            the frame rate (or 120 frames/s when unknown).

    Raises:
        ValueError: On inconsistent or out-of-range settings (one line, naming the stream).
    """

    def __init__(
        self,
        stream: str,
        *,
        length_ns: int,
        hop_ns: int,
        lateness_ns: int,
        has_video: bool,
        has_audio: bool,
        sample_rate: int | None,
        frame_rate: float | None,
        clock: ClockKind,
        max_gap_ns: int = 5 * NS_PER_S,
        max_buffer_ns: int | None = None,
        max_buffer_frames: int | None = None,
    ) -> None:
        def bad(reason: str) -> ValueError:
            return ValueError(f"windower for stream {stream!r}: {reason}")

        if length_ns <= 0:
            raise bad(f"length_ns must be positive, got {length_ns}")
        if not 0 < hop_ns <= length_ns:
            raise bad(f"hop_ns must be in (0, length_ns={length_ns}], got {hop_ns}")
        if lateness_ns < 0:
            raise bad(f"lateness_ns must be >= 0, got {lateness_ns}")
        if max_gap_ns <= 0:
            raise bad(f"max_gap_ns must be positive, got {max_gap_ns}")
        if not (has_video or has_audio):
            raise bad("a stream needs video or audio")
        if has_audio:
            if sample_rate is None or sample_rate <= 0:
                raise bad(f"audio needs a positive sample_rate, got {sample_rate}")
            if hop_ns * sample_rate < NS_PER_S:
                raise bad(f"hop_ns={hop_ns} is shorter than one audio sample")
        if frame_rate is not None and not (math.isfinite(frame_rate) and frame_rate > 0):
            raise bad(f"frame_rate must be positive and finite, got {frame_rate}")
        if max_buffer_ns is None:
            max_buffer_ns = length_ns + hop_ns + lateness_ns + max_gap_ns + NS_PER_S
        elif max_buffer_ns < length_ns + lateness_ns:
            raise bad(
                f"max_buffer_ns={max_buffer_ns} is below length_ns + lateness_ns "
                f"({length_ns + lateness_ns}): no window could ever be complete"
            )
        if max_buffer_frames is None:
            fps = 2 * frame_rate if frame_rate is not None else _UNKNOWN_RATE_FPS
            max_buffer_frames = math.ceil(max_buffer_ns * fps / NS_PER_S) + 2
        elif max_buffer_frames <= 0:
            raise bad(f"max_buffer_frames must be positive, got {max_buffer_frames}")

        self.stream = stream
        self.length_ns = length_ns
        self.hop_ns = hop_ns
        self.lateness_ns = lateness_ns
        self.has_video = has_video
        self.has_audio = has_audio
        self.sample_rate = sample_rate if has_audio and sample_rate else 0
        self.frame_rate = frame_rate
        self.clock = clock
        self.max_gap_ns = max_gap_ns
        self.max_buffer_ns = max_buffer_ns
        self.max_buffer_frames = max_buffer_frames
        self.stats = WindowerStats()

        rate = self.sample_rate
        self._n_audio = _div_round(length_ns * rate, NS_PER_S) if rate else 0
        capacity = math.ceil(max_buffer_ns * rate / NS_PER_S) if rate else 1
        self._piece = max(1, min(_PIECE_S * rate, capacity // 4)) if rate else 1
        self._frames = FrameRing()
        self._grid = SampleGrid(capacity)
        self._origin: int | None = None
        self._next_k = 0  # the oldest window still open
        self._open_sample = 0  # its first audio sample
        self._target = -1  # highest window index the watermark has closed so far
        self._video_head: int | None = None
        self._audio_head_ns: int | None = None
        self._audio_head: int = 0  # highest audio sample index seen + 1
        self._audio_seen = False
        self._stalled: set[str] = set()
        self._last_final_pts: int | None = None  # newest frame that left the ring (gap count)
        self._flushed = False

    # -- public API -------------------------------------------------------------------------

    @property
    def origin_ns(self) -> int | None:
        """Start of window 0 (None until the first item)."""
        return self._origin

    @property
    def next_window_start_ns(self) -> int | None:
        """Start of the oldest window still open: media before it is late."""
        return None if self._origin is None else self._start(self._next_k)

    @property
    def stalled(self) -> frozenset[str]:
        """The tracks ("video", "audio") the watermark currently goes on without."""
        return frozenset(self._stalled)

    @property
    def buffered_frames(self) -> int:
        """Frames held now."""
        return len(self._frames)

    @property
    def buffered_audio_samples(self) -> int:
        """Span of the audio grid held now, in samples."""
        return self._grid.held

    @property
    def audio_buffer_bytes(self) -> int:
        """Bytes the audio grid has allocated (none once flushed)."""
        return self._grid.nbytes

    def push(self, item: VideoFrame | AudioChunk, now_ns: int) -> list[Window]:
        """Add one frame or chunk; returns the windows it closed, in index order.

        Args:
            item: The next item of this stream, in arrival order.
            now_ns: Daemon monotonic time now (stamped into closed windows as ``closed_ns``).

        Returns:
            The windows the watermark closed (often none).

        Raises:
            ValueError: For an item the stream cannot hold (wrong kind, rate or shape).
            RuntimeError: After :meth:`flush`.
        """
        if self._flushed:
            raise RuntimeError(f"windower for stream {self.stream!r}: push after flush")
        if isinstance(item, VideoFrame):
            return self._push_frame(item, now_ns)
        if isinstance(item, AudioChunk):
            return self._push_chunk(item, now_ns)
        raise TypeError(
            f"windower for stream {self.stream!r}: expected VideoFrame or AudioChunk, "
            f"got {type(item).__name__}"
        )

    def flush(self, now_ns: int) -> list[Window]:
        """End of stream: return every remaining window that holds any media, in index order.

        Does not wait for the watermark. Afterwards the windower holds nothing and refuses
        pushes; a second flush returns nothing.

        Args:
            now_ns: Daemon monotonic time now (``closed_ns`` of the windows returned).
        """
        if self._flushed:
            return []
        self._flushed = True
        if self._origin is None:
            return []
        last = self._target
        newest_pts = self._frames.newest_pts
        if newest_pts is not None:
            last = max(last, (newest_pts - self._origin) // self.hop_ns)
        end = self._grid.end
        if end is not None and end > self._grid.floor:
            last = max(last, self._last_k_starting_by_sample(end - 1))
        out = self._close_through(last, last, now_ns)
        self._release_video(None)
        # Nothing is pushed after a flush; an ended stream's state (kept for its status) must
        # not keep the audio buffer.
        self._grid.free()
        return out

    # -- video ------------------------------------------------------------------------------

    def _push_frame(self, frame: VideoFrame, now_ns: int) -> list[Window]:
        if not self.has_video:
            raise ValueError(
                f"windower for stream {self.stream!r}: video frame on a stream without video"
            )
        pts = frame.pts_ns
        if self._origin is None:
            self._origin = (pts // self.hop_ns) * self.hop_ns
        if self._video_head is None or pts > self._video_head:
            self._video_head = pts
        # Windows the new head closes end at or before pts, so they cannot need this frame.
        out = self._advance(now_ns)
        if pts < self._start(self._next_k):
            self.stats.video_late += 1
            return out
        if not self._frames.insert(frame):
            self.stats.video_duplicates += 1
            return out
        self.stats.video_frames += 1
        newest = self._frames.newest_pts
        oldest = self._frames.oldest_pts
        assert newest is not None
        assert oldest is not None
        while len(self._frames) > self.max_buffer_frames or newest - oldest > self.max_buffer_ns:
            self._account_final(self._frames.evict_oldest())
            self.stats.video_overflow += 1
            oldest = self._frames.oldest_pts
            if oldest is None:
                break
        return out

    def _release_video(self, before_ns: int | None) -> None:
        if before_ns is None:
            newest = self._frames.newest_pts
            if newest is None:
                return
            before_ns = newest + 1
        for pts in self._frames.evict_before(before_ns):
            self._account_final(pts)

    def _account_final(self, pts: int) -> None:
        # A frame leaves the ring only once no earlier frame can still arrive, so the step to
        # the previous one that left is final: count gaps here, exactly once.
        prev = self._last_final_pts
        if prev is not None and pts <= prev:
            return  # only after an overflow drop let an older frame in
        self._last_final_pts = pts
        if prev is None or self.frame_rate is None:
            return
        step_frames = (pts - prev) * self.frame_rate / NS_PER_S
        if step_frames > 1.5:
            self.stats.video_gaps += 1
            self.stats.video_missing_frames += max(1, round(step_frames) - 1)

    # -- audio ------------------------------------------------------------------------------

    def _push_chunk(self, chunk: AudioChunk, now_ns: int) -> list[Window]:
        def bad(reason: str) -> ValueError:
            return ValueError(f"windower for stream {self.stream!r}: {reason}")

        if not self.has_audio:
            raise bad("audio chunk on a stream without audio")
        if chunk.sample_rate != self.sample_rate:
            raise bad(f"audio chunk at {chunk.sample_rate} Hz, stream is {self.sample_rate} Hz")
        samples = np.asarray(chunk.samples, dtype=np.float32)
        if samples.ndim != 1:
            raise bad(f"audio chunk must be mono (1-D), got shape {samples.shape}")
        self.stats.audio_chunks += 1
        if len(samples) == 0:
            return []
        if self._origin is None:
            self._origin = (chunk.pts_ns // self.hop_ns) * self.hop_ns
        first = _div_round((chunk.pts_ns - self._origin) * self.sample_rate, NS_PER_S)
        if not self._audio_seen:
            self._audio_seen = True
            self._audio_head = first
        out: list[Window] = []
        late = 0
        stats = self.stats
        for offset in range(0, len(samples), self._piece):
            piece = samples[offset : offset + self._piece]
            start = first + offset
            if start > self._audio_head:
                # A forward gap: close what the piece's start allows first. That frees the grid
                # (a jump of hours allocates nothing) and cannot close a window needing the piece.
                self._raise_audio_head(start)
                out += self._advance(now_ns)
            result = self._grid.write(start, piece, self._open_sample)
            if result is not None:
                stats.audio_late_samples += result.late
                stats.audio_overflow_samples += result.overflow
                stats.audio_duplicate_samples += result.duplicates
                stats.audio_gap_samples += result.gap_delta
                late += result.late
            self._raise_audio_head(start + len(piece))
            out += self._advance(now_ns)
        if late == len(samples):
            stats.audio_late_chunks += 1
        return out

    def _raise_audio_head(self, index: int) -> None:
        if index > self._audio_head:
            self._audio_head = index
        head_ns = self._sample_time(self._audio_head)
        if self._audio_head_ns is None or head_ns > self._audio_head_ns:
            self._audio_head_ns = head_ns

    # -- windows ----------------------------------------------------------------------------

    def _start(self, k: int) -> int:
        assert self._origin is not None
        return self._origin + k * self.hop_ns

    def _sample(self, k: int) -> int:
        """Grid index of window k's first sample."""
        return _div_round(k * self.hop_ns * self.sample_rate, NS_PER_S)

    def _sample_time(self, index: int) -> int:
        assert self._origin is not None
        return self._origin + index * NS_PER_S // self.sample_rate

    def _last_k_ending_by_sample(self, index: int) -> int:
        """Highest k whose audio ends at or before grid index ``index`` (exclusive end)."""
        n = self._n_audio
        k = ((index - n) * NS_PER_S) // (self.hop_ns * self.sample_rate)
        # Rounding of window starts can let one more window fit; hop >= 1 sample, so not two.
        if self._sample(k + 1) + n <= index:
            k += 1
        return k

    def _last_k_starting_by_sample(self, index: int) -> int:
        """Highest k whose first sample is at or before grid index ``index``."""
        k = (index * NS_PER_S) // (self.hop_ns * self.sample_rate)
        if self._sample(k + 1) <= index:
            k += 1
        return k

    def _closable(self) -> tuple[int, int]:
        """(highest window the watermark closes, same ignoring stalls); updates the stalls."""
        assert self._origin is not None
        # k closes on a track once head - lateness >= origin + k*hop + length.
        offset = self.lateness_ns + self._origin + self.length_ns
        hop = self.hop_ns
        video_k = audio_k = -1
        video_head = self._video_head
        audio_head = self._audio_head_ns
        if video_head is not None:
            video_k = (video_head - offset) // hop
        if audio_head is not None:
            audio_k = (audio_head - offset) // hop
            if audio_k > self._target:  # only then can the sample check matter
                audio_k = min(audio_k, self._last_k_ending_by_sample(self._audio_head))
        if not (self.has_video and self.has_audio):
            k = video_k if self.has_video else audio_k
            return k, k
        unstalled = min(video_k, audio_k)
        # A track that never started counts as being at the origin.
        video_at = video_head if video_head is not None else self._origin
        audio_at = audio_head if audio_head is not None else self._origin
        video_behind = video_at < audio_at - self.max_gap_ns
        audio_behind = audio_at < video_at - self.max_gap_ns
        self._set_stalled(_VIDEO, video_behind)
        self._set_stalled(_AUDIO, audio_behind)
        if video_behind:
            return audio_k, unstalled
        if audio_behind:
            return video_k, unstalled
        return unstalled, unstalled

    def _set_stalled(self, kind: str, behind: bool) -> None:
        if behind:
            if kind not in self._stalled:
                self._stalled.add(kind)
                self.stats.stalls += 1
        elif self._stalled:
            self._stalled.discard(kind)

    def _advance(self, now_ns: int) -> list[Window]:
        target, unstalled = self._closable()
        if target > self._target:
            self._target = target
        if self._next_k > self._target:
            return []
        return self._close_through(self._target, unstalled, now_ns)

    def _close_through(self, target: int, unstalled: int, now_ns: int) -> list[Window]:
        out: list[Window] = []
        stats = self.stats
        while self._next_k <= target:
            k = self._next_k
            window = self._build(k, now_ns)
            if window is None:
                # Skip every empty window up to the next one that holds media, in one step
                # (a timestamp jump of hours costs nothing), but never past the watermark.
                following = self._first_k_with_media(k)
                nxt = target + 1 if following is None else min(following, target + 1)
                stats.windows_skipped += nxt - k
                self._next_k = nxt
                continue
            out.append(window)
            stats.windows += 1
            if k > unstalled:
                stats.stalled_windows += 1
            self._next_k = k + 1
        self._release_video(self._start(self._next_k))
        if self.has_audio:
            self._open_sample = self._sample(self._next_k)
            self._grid.release(self._open_sample)
        return out

    def _first_k_with_media(self, k: int) -> int | None:
        """First window after the (empty) window k that holds any media held now."""
        assert self._origin is not None
        best: int | None = None
        pts = self._frames.first_at_or_after(self._start(k))
        if pts is not None:
            best = (pts - self._origin - self.length_ns) // self.hop_ns + 1
        if self.has_audio:
            index = self._grid.first_valid_at_or_after(self._sample(k))
            if index is not None:
                ka = self._last_k_ending_by_sample(index) + 1
                best = ka if best is None else min(best, ka)
        return None if best is None else max(best, k + 1)

    def _build(self, k: int, now_ns: int) -> Window | None:
        start = self._start(k)
        end = start + self.length_ns
        video = self._frames.between(start, end)
        if self.has_audio:
            audio, valid = self._grid.read(self._sample(k), self._n_audio)
            # all_true holds the GIL (see rings.copy_into); the count only where audio is missing.
            delivered = len(valid) if all_true(valid) else int(np.count_nonzero(valid))
        else:
            audio = np.zeros(0, np.float32)
            valid = np.zeros(0, np.bool_)
            delivered = 0
        if not video and not delivered:
            return None
        return Window(
            stream=self.stream,
            index=k,
            start_ns=start,
            end_ns=end,
            video=video,
            audio=audio,
            audio_valid=valid,
            audio_rate=self.sample_rate,
            frame_rate=self.frame_rate,
            clock=self.clock,
            closed_ns=now_ns,
            info={"frames": len(video), "missing_audio_samples": self._n_audio - delivered},
        )
