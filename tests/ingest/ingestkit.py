"""Helpers for the ingest tests: read a source to the end, find flash and beep onsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from crossmodald.ingest.base import Source, SourceFault
from crossmodald.ingest.media import MediaSource
from crossmodald.ingest.pacing import Pacer, VirtualPacer
from crossmodald.media import AudioChunk, MediaItem, StreamInfo, VideoFrame
from crossmodald.service.config import MediaSourceConfig, PatternSourceConfig

NS = 1_000_000_000


@dataclass
class Collected:
    info: StreamInfo
    frames: list[VideoFrame] = field(default_factory=list)
    chunks: list[AudioChunk] = field(default_factory=list)
    faults: list[SourceFault] = field(default_factory=list)
    order: list[MediaItem] = field(default_factory=list)

    def audio(self, rate: int) -> tuple[int, np.ndarray]:
        """All audio laid on one sample grid by pts: (index of the first sample, samples)."""
        assert self.chunks
        starts = [round(c.pts_ns * rate / NS) for c in self.chunks]
        first = min(starts)
        end = max(s + len(c.samples) for s, c in zip(starts, self.chunks, strict=True))
        out = np.zeros(end - first, dtype=np.float32)
        for start, chunk in zip(starts, self.chunks, strict=True):
            out[start - first : start - first + len(chunk.samples)] = chunk.samples
        return first, out


async def collect(source: Source, limit: int | None = None) -> Collected:
    """Open a source and read it to its end (or ``limit`` items), then close it."""
    info = await source.open()
    result = Collected(info)
    try:
        async for item in source:
            if isinstance(item, SourceFault):
                result.faults.append(item)
                continue
            result.order.append(item)
            if isinstance(item, VideoFrame):
                result.frames.append(item)
            else:
                result.chunks.append(item)
            if limit is not None and len(result.order) >= limit:
                break
    finally:
        await source.aclose()
    return result


def media_config(url: str, **overrides: Any) -> MediaSourceConfig:
    data: dict[str, Any] = {"type": "media", "name": "file", "url": url, "realtime": False}
    data.update(overrides)
    return MediaSourceConfig.model_validate(data)


async def read_media(url: str, pacer: Pacer | None = None, **overrides: Any) -> Collected:
    return await collect(MediaSource(media_config(url, **overrides), pacer or VirtualPacer()))


def pattern_config(**overrides: Any) -> PatternSourceConfig:
    data: dict[str, Any] = {
        "type": "pattern",
        "name": "pat",
        "width": 160,
        "height": 120,
        "realtime": False,
    }
    data.update(overrides)
    return PatternSourceConfig.model_validate(data)


def background_level(frame: VideoFrame) -> float:
    """Luma of the background (top rows: the square runs through the middle)."""
    return float(np.median(frame.luma[: frame.height // 8]))


def flash_onsets_s(frames: list[VideoFrame], fps: float) -> list[float]:
    """Flash onsets from the integrating shutter: first lit frame i gives t_i + (1 - f_i) / fps."""
    onsets = []
    was_lit = False
    for frame in frames:
        fraction = (background_level(frame) - 16) / 219
        lit = fraction > 0.02
        if lit and not was_lit:
            onsets.append(frame.pts_ns / NS + (1 - min(fraction, 1.0)) / fps)
        was_lit = lit
    return onsets


def beep_onsets(samples: np.ndarray, threshold: float = 0.25) -> list[int]:
    """Sample indices where the signal first reaches half the beep amplitude after silence."""
    loud = np.abs(samples) >= threshold
    hits = np.nonzero(loud)[0]
    onsets: list[int] = []
    for index in hits:
        if not onsets or index - onsets[-1] > 20_000:  # beeps are >= 0.5 s apart here
            onsets.append(int(index))
    return onsets


def write_ts(
    path: Path, start_ticks: int, seconds: float, fps: int = 25, rate: int = 48000
) -> None:
    """A small MPEG-TS file (H.264 + MP2, 1/90000 time base) whose PTS start at ``start_ticks``.

    PTS past 2**33 are written modulo 2**33 by FFmpeg's muxer, so a start near 2**33 gives a
    file whose PTS wrap. Video frame ``i`` is at ``start + i * 90000 / fps`` ticks; audio comes in
    1152-sample MP2 frames from ``start`` on.
    """
    tb = Fraction(1, 90000)
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = tb
        video.codec_context.time_base = tb
        video.codec_context.options = {"preset": "ultrafast"}
        audio = out.add_stream("mp2", rate=rate)
        audio.layout = "mono"
        audio.time_base = tb
        for i in range(round(seconds * fps)):
            picture = np.full((48 * 3 // 2, 64), 16 + i % 200, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
            frame.pts, frame.time_base = start_ticks + i * 90000 // fps, tb
            for packet in video.encode(frame):
                out.mux(packet)
        for j in range(int(seconds * rate) // 1152):
            chunk = av.AudioFrame.from_ndarray(
                np.zeros((1, 1152), np.int16), format="s16", layout="mono"
            )
            chunk.sample_rate = rate
            chunk.pts, chunk.time_base = start_ticks + j * 1152 * 90000 // rate, tb
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
