"""Speech segments from per-chunk speech probabilities: hysteresis with minimum durations.

Pure and synchronous (no torch): feed probabilities in time order, get segment changes back.
The rules follow Silero's own ``get_speech_timestamps``: speech starts at a chunk at or above
``threshold``; it ends once the probability has stayed below ``neg_threshold`` for
``min_silence_ms``; segments shorter than ``min_speech_ms`` are dropped; ends are padded.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossmodald.media import NS_PER_MS


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """A stretch of speech on a stream's media timeline.

    Attributes:
        start_ns: Start (padded by ``speech_pad_ms``).
        end_ns: End (padded), exclusive.
        probability: Mean speech probability of the chunks inside it.
    """

    start_ns: int
    end_ns: int
    probability: float

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """A segment confirmed (``ended`` False: it started) or finished (``ended`` True)."""

    segment: SpeechSegment
    ended: bool


class SpeechSegmenter:
    """Turns a stream of (chunk time, probability) into speech segments.

    Args:
        threshold: Probability at which speech starts.
        neg_threshold: Probability below which silence counts (default ``threshold - 0.15``).
        min_speech_ms: Shorter segments are dropped (and only longer ones are announced).
        min_silence_ms: Silence this long ends a segment.
        speech_pad_ms: Added to both ends of each segment.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
        min_speech_ms: float = 250.0,
        min_silence_ms: float = 100.0,
        speech_pad_ms: float = 30.0,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be within (0, 1), got {threshold}")
        neg = max(threshold - 0.15, 0.01) if neg_threshold is None else neg_threshold
        if not 0.0 <= neg <= threshold:
            raise ValueError(f"neg_threshold must be within [0, threshold], got {neg}")
        if min_speech_ms < 0 or min_silence_ms < 0 or speech_pad_ms < 0:
            raise ValueError("min_speech_ms, min_silence_ms and speech_pad_ms must be >= 0")
        self.threshold = threshold
        self.neg_threshold = neg
        self._min_speech_ns = round(min_speech_ms * NS_PER_MS)
        self._min_silence_ns = round(min_silence_ms * NS_PER_MS)
        self._pad_ns = round(speech_pad_ms * NS_PER_MS)
        self._start_ns: int | None = None  # first speech chunk of the current candidate
        self._silence_ns: int | None = None  # where the current run of silence began
        self._announced = False
        self._prob_sum = 0.0
        self._prob_n = 0
        self._last_end_ns: int | None = None  # end of the last chunk pushed
        self._floor_ns: int | None = None  # end of the last segment (padding stops there)

    @property
    def active(self) -> bool:
        """True while an announced segment is open."""
        return self._announced

    @property
    def open_segment(self) -> SpeechSegment | None:
        """The announced, still open segment up to the latest chunk, or None."""
        if not self._announced or self._start_ns is None or self._last_end_ns is None:
            return None
        return SpeechSegment(self._padded_start(), self._last_end_ns, self._mean())

    @property
    def silence_start_ns(self) -> int | None:
        """Where the silence that may end the open segment began (None: none is running).

        Should the silence last ``min_silence_ms``, the segment ends there plus the padding.
        """
        return self._silence_ns if self._announced else None

    def push(self, start_ns: int, end_ns: int, probability: float) -> list[SegmentChange]:
        """Add one chunk's probability (chunks in time order; a gap before it is silence)."""
        changes: list[SegmentChange] = []
        if self._last_end_ns is not None and start_ns > self._last_end_ns:
            # Missing chunks (a dropped window) are silence from where the data stopped.
            changes += self._silence(self._last_end_ns, start_ns)
        self._last_end_ns = end_ns
        if probability >= self.threshold:
            if self._start_ns is None:
                self._start_ns = start_ns
            self._silence_ns = None
        elif probability < self.neg_threshold and self._start_ns is not None:
            changes += self._silence(start_ns, end_ns)
        if self._start_ns is not None:
            self._prob_sum += probability
            self._prob_n += 1
            speech_end = self._silence_ns if self._silence_ns is not None else end_ns
            if not self._announced and speech_end - self._start_ns >= self._min_speech_ns:
                self._announced = True
                changes.append(
                    SegmentChange(SpeechSegment(self._padded_start(), end_ns, self._mean()), False)
                )
        return changes

    def flush(self) -> list[SegmentChange]:
        """The stream ended: close the open segment (if long enough)."""
        if self._start_ns is None or self._last_end_ns is None:
            return []
        end = self._silence_ns if self._silence_ns is not None else self._last_end_ns
        return self._finish(end, pad=self._silence_ns is not None)

    def _silence(self, start_ns: int, end_ns: int) -> list[SegmentChange]:
        if self._start_ns is None:
            return []
        if self._silence_ns is None:
            self._silence_ns = start_ns
        if end_ns - self._silence_ns < self._min_silence_ns:
            return []
        return self._finish(self._silence_ns, pad=True)

    def _finish(self, speech_end_ns: int, *, pad: bool) -> list[SegmentChange]:
        assert self._start_ns is not None
        long_enough = speech_end_ns - self._start_ns >= self._min_speech_ns
        out: list[SegmentChange] = []
        if long_enough:
            end = speech_end_ns + (self._pad_ns if pad else 0)
            segment = SpeechSegment(self._padded_start(), end, self._mean())
            if not self._announced:
                out.append(SegmentChange(segment, False))
            out.append(SegmentChange(segment, True))
            self._floor_ns = end
        self._start_ns = None
        self._silence_ns = None
        self._announced = False
        self._prob_sum = 0.0
        self._prob_n = 0
        return out

    def _padded_start(self) -> int:
        assert self._start_ns is not None
        start = self._start_ns - self._pad_ns
        return max(start, self._floor_ns) if self._floor_ns is not None else start

    def _mean(self) -> float:
        return self._prob_sum / self._prob_n if self._prob_n else 0.0
