"""The ``speech`` plugin: Silero VAD over each window, ``speech`` start/update/end events.

It provides :data:`~crossmodald_plugins.products.SPEECH`: its result for a window (VAD
probabilities per 32 ms chunk) goes to every consumer, so a stream has one VAD pass however many
plugins use speech.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, model_validator

from crossmodald.bus.events import Event, JsonValue, Phase
from crossmodald.media import NS_PER_MS, NS_PER_S, StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, PluginConfig, ProductKey
from crossmodald_plugins.products import SPEECH, SPEECH_CHUNK_NS, SpeechProbs
from crossmodald_plugins.vad.model import CHUNK, CHUNK_NS, VAD_RATE, SileroVad, resample
from crossmodald_plugins.vad.segments import SegmentChange, SpeechSegmenter

assert SPEECH_CHUNK_NS == CHUNK_NS, "the speech product's grid is Silero's chunk"

EVENT_TYPE = "speech"


class SpeechConfig(PluginConfig):
    """``[[plugins]]`` table of the ``speech`` plugin."""

    type: str = "speech"
    #: Speech probability at which a segment starts.
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    #: Probability below which silence counts; default threshold - 0.15.
    neg_threshold: float | None = Field(None, ge=0.0, lt=1.0)
    min_speech_ms: float = Field(250.0, ge=0.0, le=10_000.0)
    min_silence_ms: float = Field(100.0, ge=0.0, le=10_000.0)
    speech_pad_ms: float = Field(30.0, ge=0.0, le=1_000.0)
    #: A chunk with less than this fraction of delivered audio counts as silence.
    min_valid: float = Field(0.5, ge=0.0, le=1.0)
    #: Emit an ``update`` per window while speech lasts (with that window's mean probability).
    updates: bool = True

    @model_validator(mode="after")
    def _neg(self) -> SpeechConfig:
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise ValueError("neg_threshold must not exceed threshold")
        return self

    def segmenter(self) -> SpeechSegmenter:
        return SpeechSegmenter(
            threshold=self.threshold,
            neg_threshold=self.neg_threshold,
            min_speech_ms=self.min_speech_ms,
            min_silence_ms=self.min_silence_ms,
            speech_pad_ms=self.speech_pad_ms,
        )


#: Speech probabilities of one window (the shared product's type; see :class:`SpeechProbs`).
SpeechResult = SpeechProbs


EMPTY_RESULT = SpeechResult(0, np.zeros(0, np.float32), np.zeros(0, np.bool_))


class SpeechSession:
    """Per-stream speech segments from the chunk probabilities of successive windows."""

    def __init__(self, config: SpeechConfig, stream: StreamInfo) -> None:
        self._config = config
        self._stream = stream
        self._segmenter = config.segmenter()
        self._next_chunk: int | None = None
        self._clock = stream.clock
        self._closed_ns = 0
        self._probability: float | None = None

    def update(self, window: Window, result: SpeechResult) -> list[Event]:
        """Feed the chunks this window adds (overlap with earlier windows is skipped)."""
        self._clock = window.clock
        self._closed_ns = window.closed_ns
        events: list[Event] = []
        new_probs: list[float] = []
        for i in range(len(result.probs)):
            k = result.first_chunk + i
            if self._next_chunk is not None and k < self._next_chunk:
                continue
            prob = float(result.probs[i]) if result.valid[i] else 0.0
            start_ns, end_ns = result.chunk_span_ns(i)
            events += self._events(self._segmenter.push(start_ns, end_ns, prob), window)
            new_probs.append(prob)
            self._next_chunk = k + 1
        if new_probs:
            self._probability = float(np.mean(new_probs))
        open_segment = self._segmenter.open_segment
        if (
            self._config.updates
            and open_segment is not None
            and new_probs
            and not any(e.phase is Phase.START for e in events)
        ):
            events.append(
                Event(
                    type=EVENT_TYPE,
                    stream=self._stream.name,
                    start_ns=open_segment.start_ns,
                    end_ns=open_segment.end_ns,
                    data={"probability": round(float(np.mean(new_probs)), 4)},
                    phase=Phase.UPDATE,
                    clock=window.clock,
                    closed_ns=window.closed_ns,
                )
            )
        return events

    def status(self) -> Mapping[str, JsonValue]:
        """Whether speech is on and the latest window's mean probability."""
        return {
            "speaking": self._segmenter.open_segment is not None,
            "probability": round(self._probability, 4) if self._probability is not None else None,
        }

    def close(self) -> list[Event]:
        """Close an open segment."""
        return self._events(self._segmenter.flush(), None)

    def _events(self, changes: list[SegmentChange], window: Window | None) -> list[Event]:
        out: list[Event] = []
        for change in changes:
            seg = change.segment
            data: dict[str, Any] = {"probability": round(seg.probability, 4)}
            if change.ended:
                data["duration_ms"] = round((seg.end_ns - seg.start_ns) / NS_PER_MS, 1)
            out.append(
                Event(
                    type=EVENT_TYPE,
                    stream=self._stream.name,
                    start_ns=seg.start_ns,
                    end_ns=seg.end_ns,
                    data=data,
                    phase=Phase.END if change.ended else Phase.START,
                    clock=window.clock if window is not None else self._clock,
                    closed_ns=window.closed_ns if window is not None else self._closed_ns,
                )
            )
        return out


def _chunk_grid(window: Window) -> tuple[int, int, int]:
    """(first chunk index, its offset in 16 kHz samples, chunk count) of a window."""
    first = -(-window.start_ns // CHUNK_NS)  # ceil: the first chunk wholly inside the window
    offset = round((first * CHUNK_NS - window.start_ns) * VAD_RATE / NS_PER_S)
    n16 = (len(window.audio) * VAD_RATE + window.audio_rate - 1) // window.audio_rate
    count = max(0, (n16 - offset) // CHUNK)
    return first, offset, count


def _chunk_validity(
    window: Window, first: int, count: int, min_valid: float
) -> npt.NDArray[np.bool_]:
    valid = window.audio_valid
    if count == 0:
        return np.zeros(0, np.bool_)
    if bool(valid.all()):
        return np.ones(count, np.bool_)
    # Fraction of delivered samples per chunk, on the window's own sample grid.
    starts_ns = np.arange(first, first + count, dtype=np.int64) * CHUNK_NS - window.start_ns
    bounds = np.append(starts_ns, starts_ns[-1] + CHUNK_NS) * window.audio_rate // NS_PER_S
    bounds = np.clip(bounds, 0, len(valid))
    cum = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
    delivered = cum[bounds[1:]] - cum[bounds[:-1]]
    span = np.maximum(bounds[1:] - bounds[:-1], 1)
    fraction: npt.NDArray[np.float64] = delivered / span
    return np.asarray(fraction >= min_valid, dtype=np.bool_)


class SpeechPlugin:
    """Silero VAD on every window of a batch, in one model call."""

    name = "speech"
    provides: ClassVar[ProductKey[Any]] = SPEECH
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("crossmodald_stream_speaking", "gauge", "1 while speech is on.", "speaking"),
    )

    def __init__(self, config: SpeechConfig, vad: SileroVad) -> None:
        self.config = config
        self.vad = vad

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_audio else "has no audio"

    def new_state(self, stream: StreamInfo) -> None:
        """No per-stream inference state: each window is analysed from a fresh VAD state."""
        return None

    def open(self, stream: StreamInfo) -> SpeechSession:
        return SpeechSession(self.config, stream)

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[SpeechResult]:
        """Chunk probabilities for every item's window (see :meth:`probabilities`)."""
        return self.probabilities([item.window for item in batch])

    def probabilities(self, batch: Sequence[Window]) -> list[SpeechResult]:
        """Chunk probabilities for every window: resampled to 16 kHz (grouped by rate), then
        one batched VAD call over all windows of the batch, each from a fresh state (the part
        of a window that overlaps the previous one warms the LSTM up)."""
        device = self.vad.device
        grids = [_chunk_grid(w) if w.audio_rate > 0 and len(w.audio) else (0, 0, 0) for w in batch]
        signals: list[torch.Tensor | None] = [None] * len(batch)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, window in enumerate(batch):
            if grids[i][2] > 0:
                by_shape.setdefault((window.audio_rate, len(window.audio)), []).append(i)
        for (rate, _length), indices in by_shape.items():
            stacked = torch.from_numpy(np.stack([batch[i].audio for i in indices])).to(device)
            resampled = resample(stacked.float(), rate, VAD_RATE)
            for row, i in enumerate(indices):
                _first, offset, count = grids[i]
                signals[i] = resampled[row, offset : offset + count * CHUNK]
        steps = max((g[2] for g in grids), default=0)
        results: list[SpeechResult] = [EMPTY_RESULT] * len(batch)
        live = [i for i, s in enumerate(signals) if s is not None]
        if not live or steps == 0:
            return results
        audio = torch.zeros((len(live), steps * CHUNK), device=device)
        for row, i in enumerate(live):
            signal = signals[i]
            assert signal is not None
            audio[row, : signal.shape[0]] = signal
        probs = self.vad.chunk_probs(audio).float().cpu().numpy()
        for row, i in enumerate(live):
            first, _offset, count = grids[i]
            valid = _chunk_validity(batch[i], first, count, self.config.min_valid)
            p = np.where(valid, probs[row, :count], 0.0).astype(np.float32)
            results[i] = SpeechResult(first, p, valid)
        return results


class SpeechFactory:
    """Entry point ``speech`` of group ``crossmodald.plugins``."""

    config_model: ClassVar[type[PluginConfig]] = SpeechConfig
    provides: ClassVar[ProductKey[Any] | None] = SPEECH

    @classmethod
    def create(cls, config: Any, device: str) -> SpeechPlugin:
        """Load Silero VAD from the installed package onto ``device``."""
        if not isinstance(config, SpeechConfig):
            raise TypeError(f"speech: expected SpeechConfig, got {type(config).__name__}")
        return SpeechPlugin(config, SileroVad(device))
