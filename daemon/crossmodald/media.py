"""The media types that cross module boundaries: timed video frames, audio chunks and windows.

One time type everywhere: integer nanoseconds. ``pts_ns`` is a capture time on the source's own
media timeline (what the source's best clock says); ``arrival_ns`` is the daemon's monotonic clock
(``time.monotonic_ns``) when the item reached the daemon, used only for latency and transport
metrics.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
#: Longest media time any setting may name, in seconds (durations, recording limits): media
#: times are int64 ns (~292 years), and this keeps them, and a duration times a sample rate,
#: far inside that.
MAX_MEDIA_S = 1e9

#: Longest side of a :attr:`VideoFrame.thumb`, in pixels.
THUMB_MAX_SIDE = 80

U8Image = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]


class ClockKind(enum.StrEnum):
    """Which clock a timestamp rests on (said in every event, "unknown" rather than a guess)."""

    PTS = "pts"  # container presentation timestamps (files, network streams)
    RTCP = "rtcp"  # RTP timestamps mapped through RTCP Sender Reports (WebRTC)
    ADC = "adc"  # the sound card's ADC clock (microphones)
    CAPTURE = "capture"  # a camera driver's capture timestamp or the grab time
    SYNTHETIC = "synthetic"  # the pattern generator's own exact timeline
    ARRIVAL = "arrival"  # time of arrival at the daemon (least exact)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One decoded picture, reduced to what analysis needs.

    Attributes:
        source_id: The stream this frame belongs to.
        pts_ns: Capture time on the source's media timeline.
        arrival_ns: Daemon monotonic time when it arrived.
        luma: The full-resolution grey picture (the Y plane), shape (H, W), uint8.
        thumb: The same picture shrunk by area averaging so its longest side is at most
            :data:`THUMB_MAX_SIDE`; cheap per-frame features (brightness, motion) use it.
        clock: The clock ``pts_ns`` rests on.
    """

    source_id: str
    pts_ns: int
    arrival_ns: int
    luma: U8Image
    thumb: U8Image
    clock: ClockKind = ClockKind.PTS

    @property
    def width(self) -> int:
        return int(self.luma.shape[1])

    @property
    def height(self) -> int:
        return int(self.luma.shape[0])


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A run of consecutive mono samples (float32 in [-1, 1]).

    Attributes:
        source_id: The stream this chunk belongs to.
        pts_ns: Capture time of the first sample on the source's media timeline.
        arrival_ns: Daemon monotonic time when it arrived.
        samples: Mono float32 samples, shape (n,).
        sample_rate: Samples per second.
        clock: The clock ``pts_ns`` rests on.
        counted_end_ns: Where a source counts samples from an anchor: the time after the last
            sample by that count. ``pts_ns`` and the length are each rounded down, so their sum
            can fall 1 ns short of it, by how the samples happened to be cut into chunks.
    """

    source_id: str
    pts_ns: int
    arrival_ns: int
    samples: F32Array
    sample_rate: int
    clock: ClockKind = ClockKind.PTS
    counted_end_ns: int | None = None

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.pts_ns

    @property
    def end_ns(self) -> int:
        """The time after the last sample."""
        if self.counted_end_ns is not None:
            return self.counted_end_ns
        return self.pts_ns + len(self.samples) * NS_PER_S // self.sample_rate


MediaItem = VideoFrame | AudioChunk


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a source knows about its stream when it opens (handed to plugin sessions)."""

    name: str
    kind: str  # the source type: "pattern", "media", "webrtc", "device", ...
    has_video: bool
    has_audio: bool
    frame_rate: float | None = None  # nominal frames per second, None if unknown/variable
    sample_rate: int | None = None
    width: int | None = None
    height: int | None = None
    clock: ClockKind = ClockKind.UNKNOWN


@dataclass(frozen=True, slots=True)
class Window:
    """An event-time window of one stream: the video frames and audio samples in [start, end).

    Audio is laid on a sample grid starting exactly at ``start_ns``: ``audio[i]`` is the sample
    at ``start_ns + i / audio_rate``. Samples nobody delivered are zero and ``audio_valid`` is
    False there (gaps are filled and flagged, never stretched).

    Attributes:
        stream: The stream name.
        index: Window number on this stream (start_ns = origin + index * hop).
        start_ns: Start of the window on the stream's media timeline.
        end_ns: End (exclusive).
        video: Frames with start_ns <= pts_ns < end_ns, in pts order.
        audio: Mono float32 samples on the window's grid (empty when the stream has no audio).
        audio_valid: Per-sample flag, False where audio was missing.
        audio_rate: Sample rate of ``audio`` (0 when the stream has no audio).
        frame_rate: Nominal frame rate of the stream, if known.
        clock: The clock the window's times rest on.
        closed_ns: Daemon monotonic time when the watermark closed the window (latency origin).
    """

    stream: str
    index: int
    start_ns: int
    end_ns: int
    video: tuple[VideoFrame, ...]
    audio: F32Array
    audio_valid: npt.NDArray[np.bool_]
    audio_rate: int
    frame_rate: float | None
    clock: ClockKind
    closed_ns: int = 0
    info: dict[str, int] = field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns
