"""The ``tone`` source: a steady sine and a moving white bar, on its own synthetic clock.

Video frame ``i`` is stamped ``i / fps`` and audio sample ``n`` is stamped ``n / sample_rate``,
both through :func:`crossmodald.clock.timeline.ticks_to_ns` (the daemon's one way from ticks to
nanoseconds). An item is delivered when it is complete (frame ``i`` at ``(i + 1) / fps``), in
that order, paced by the clock the daemon hands the factory (real time in ``crossmodald run``)
or as fast as the daemon takes it with ``realtime = false``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from fractions import Fraction
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from crossmodald.bus.events import JsonValue
from crossmodald.clock.timeline import ticks_to_ns
from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.frames import audio_chunk, video_frame_from_luma
from crossmodald.ingest.pacing import MonotonicPacer, Pacer
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.media import ClockKind, MediaItem, StreamInfo
from crossmodald.status import MetricSpec

#: Items produced between two yields to the event loop when not pacing in real time.
_YIELD_EVERY = 16


class ToneSourceConfig(SourceConfigBase):
    """A ``[[sources]]`` table of type ``tone``."""

    type: Literal["tone"]
    frequency_hz: float = Field(440.0, gt=0)
    #: Peak amplitude of the sine (full scale: 1).
    amplitude: float = Field(0.5, gt=0, le=1)
    sample_rate: int = Field(16000, ge=8000, le=192000)
    #: Samples per audio chunk, in milliseconds.
    chunk_ms: int = Field(20, ge=1, le=1000)
    fps: int = Field(10, ge=1, le=120)
    width: int = Field(64, ge=16, le=3840)
    height: int = Field(48, ge=16, le=2160)
    #: Stop after this many seconds (None: run until stopped).
    duration_s: float | None = Field(None, gt=0)
    #: Pace output at real time; False: as fast as the daemon takes it.
    realtime: bool = True

    @model_validator(mode="after")
    def _below_nyquist(self) -> Self:
        if self.frequency_hz >= self.sample_rate / 2:
            raise ValueError(
                f"frequency_hz ({self.frequency_hz:g}) must be below half the sample rate "
                f"({self.sample_rate / 2:g})"
            )
        return self


class ToneSource:
    """A :class:`~crossmodald.ingest.base.Source` of a sine and a moving bar.

    It also reports its own status and declares a metric of it (the optional
    :class:`~crossmodald.ingest.base.ReportsStatus` part of a source).

    Args:
        config: The validated table.
        pacer: The clock that paces delivery and stamps ``arrival_ns``.
    """

    metrics = (
        MetricSpec(
            "crossmodald_stream_example_tone_frames_total",
            "counter",
            "Frames the tone source delivered.",
            "frames",
        ),
    )

    def __init__(self, config: ToneSourceConfig, pacer: Pacer) -> None:
        self.name = config.name
        self.config = config
        self._pacer = pacer
        self._frame_tb = Fraction(1, config.fps)
        self._sample_tb = Fraction(1, config.sample_rate)
        self._chunk = max(1, config.sample_rate * config.chunk_ms // 1000)
        self._closed = False
        self._frames = 0
        self._samples_out = 0

    async def open(self) -> StreamInfo:
        """Describe the stream (nothing to open: the generator cannot fail)."""
        cfg = self.config
        return StreamInfo(
            name=self.name,
            kind="tone",
            has_video=True,
            has_audio=True,
            frame_rate=float(cfg.fps),
            sample_rate=cfg.sample_rate,
            width=cfg.width,
            height=cfg.height,
            clock=ClockKind.SYNTHETIC,
        )

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        return self._run()

    async def aclose(self) -> None:
        """Stop (idempotent): a running iteration ends before its next item."""
        self._closed = True

    def status(self) -> Mapping[str, JsonValue]:
        """``source_status`` in ``/v1/streams``: what it delivered (cheap; also after aclose)."""
        return {"frames": self._frames, "samples": self._samples_out}

    async def _run(self) -> AsyncIterator[MediaItem | SourceFault]:
        cfg = self.config
        end_ns = None if cfg.duration_s is None else round(cfg.duration_s * 1e9)
        start_ns = self._pacer.now_ns()
        frame, sample, produced = 0, 0, 0
        while not self._closed:
            frame_pts = ticks_to_ns(frame, self._frame_tb, "floor")
            sample_pts = ticks_to_ns(sample, self._sample_tb, "floor")
            frame_done = ticks_to_ns(frame + 1, self._frame_tb, "floor")
            chunk_done = ticks_to_ns(sample + self._chunk, self._sample_tb, "floor")
            video_left = end_ns is None or frame_pts < end_ns
            audio_left = end_ns is None or sample_pts < end_ns
            if not (video_left or audio_left):
                return
            take_video = video_left and (not audio_left or frame_done <= chunk_done)
            due_ns = frame_done if take_video else chunk_done
            if cfg.realtime:
                await self._pacer.sleep_until(start_ns + due_ns)
                if self._closed:
                    return
            elif produced % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let the other streams and the API run
            produced += 1
            arrival = self._pacer.now_ns()
            if take_video:
                yield video_frame_from_luma(
                    self.name, frame_pts, arrival, self._picture(frame), ClockKind.SYNTHETIC
                )
                frame += 1
                self._frames += 1
            else:
                yield audio_chunk(
                    self.name,
                    sample_pts,
                    arrival,
                    self._samples(sample, self._chunk),
                    cfg.sample_rate,
                    ClockKind.SYNTHETIC,
                )
                sample += self._chunk
                self._samples_out += self._chunk

    def _picture(self, index: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        # Limited-range black with a white bar that crosses the picture in about two seconds.
        cfg = self.config
        luma = np.full((cfg.height, cfg.width), 16, dtype=np.uint8)
        bar = max(2, cfg.width // 16)
        step = max(1, cfg.width // (2 * cfg.fps))
        x = (index * step) % (cfg.width - bar)
        luma[:, x : x + bar] = 235
        return luma

    def _samples(self, first: int, count: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        # From the absolute sample index, so the phase runs on exactly across chunks.
        cfg = self.config
        n = np.arange(first, first + count, dtype=np.float64)
        wave = cfg.amplitude * np.sin(2 * math.pi * cfg.frequency_hz * n / cfg.sample_rate)
        return wave.astype(np.float32)


class ToneSourceFactory:
    """Source type ``tone`` (entry point ``crossmodald.sources``)."""

    config_model = ToneSourceConfig

    @classmethod
    def create(cls, config: ToneSourceConfig, *, clock: Pacer | None = None) -> ToneSource:
        """A tone source paced by ``clock`` (None: real time)."""
        if not isinstance(config, ToneSourceConfig):
            raise SourceError(f"tone: expected ToneSourceConfig, got {type(config).__name__}")
        return ToneSource(config, clock if clock is not None else MonotonicPacer())
