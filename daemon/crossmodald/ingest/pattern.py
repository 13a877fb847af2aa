"""The pattern source: white flashes and tone bursts on an exact, known timeline.

It is the ground truth of the accuracy tests (A/V offset, drift, loss, jitter), so every number
it produces follows from the definitions below, in integer or rational arithmetic.

Video (the reference clock): frame ``i`` has ``pts_ns = i * 10**9 * fps.den // fps.num`` (exact
``i / fps`` floored to whole ns), clock ``SYNTHETIC``. The picture is the Y plane (uint8): a
background at ``Y = 16`` (limited-range black) and a white (``Y = 235``) square of side
``max(2, height // 16)`` moving left and right across the middle (motion, constant area).

Flash ``k`` is ON over true time ``[T_k, T_k + flash_ms)``, ``T_k = 0.5 s + k * period_s``. The
camera integrates over the whole frame interval (360-degree shutter): frame ``i``'s flash fraction
is ``f_i = overlap([T_k, T_k + flash), [i / fps, (i + 1) / fps)) * fps`` (exact rationals), and the
background (not the square) becomes ``Y = 16 + round(f_i * 219)`` (Python's ``round``: halves to
even). The luminance of the first and last frame of a flash thus carries sub-frame timing.

Audio: mono float32 at ``sample_rate``. Beep ``k`` is ON over true time
``[B_k, B_k + beep_ms)`` with ``B_k = T_k - audio_lead_ms`` (positive lead = audio ahead); beeps
with ``B_k < 0`` are omitted. The ADC runs ``drift_ppm`` fast: sample ``n`` is stamped
``pts = n / sample_rate`` but taken at true time ``n / (sample_rate * (1 + drift_ppm * 1e-6))``.
A sample taken at true time ``tau`` inside a beep is ``0.5 * sin(2 * pi * tone_hz * (tau - B_k))``
(zero phase at the onset, so the onset is sharp); everything else is exactly 0. Hence beep ``k``
covers the samples ``ceil(B_k * rate_true) <= n < ceil((B_k + beep) * rate_true)``, and its onset's
stamped time is about ``B_k * (1 + drift_ppm * 1e-6)``. Audio leaves in packets of
``audio_packet_ms``.

All times given in seconds or milliseconds in the config are first rounded to whole ns (1.2 s is
exactly 1_200_000_000 ns); ppm values are taken as the decimal they print as.

Faults and delivery: each video frame is dropped with probability ``drop_frames``, each audio
packet lost with probability ``lose_audio`` (a gap in pts). An item is captured completely at
the end of its interval (frame ``i`` at ``(i + 1) / fps``, a packet when its last sample period
ends, on the true clock) and delivered ``U(0, jitter_ms)`` later, so with jitter items (even of
one kind) may arrive out of capture order, deliberately breaking the usual :class:`Source`
ordering to exercise the windower's lateness handling. Draws come from
``numpy.random.default_rng([seed, 0])`` (video) and ``[seed, 1]`` (audio), two per item (drop,
jitter) whatever the outcome, so a run repeats exactly and changing one fault leaves the other
draws alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal

import av
import numpy as np
from pydantic import Field, field_validator, model_validator

from crossmodald.bus.events import JsonValue
from crossmodald.clock.timeline import ticks_to_ns
from crossmodald.config_base import parse_frame_rate
from crossmodald.ingest.base import SourceFault
from crossmodald.ingest.frames import audio_chunk, make_thumb
from crossmodald.ingest.pacing import MonotonicPacer, Pacer
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.media import (
    MAX_MEDIA_S,
    NS_PER_S,
    ClockKind,
    F32Array,
    MediaItem,
    StreamInfo,
    U8Image,
    VideoFrame,
)


class PatternSourceConfig(SourceConfigBase):
    """A synthetic test source: white flashes and tone bursts, with known faults injected."""

    type: Literal["pattern"]
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: Fraction = Fraction(30)
    sample_rate: int = Field(48000, ge=8000, le=192000)
    #: Seconds between flash/beep pairs; above 2 * max lag so a pair never matches the wrong one.
    period_s: float = Field(1.2, gt=0.1, le=60)
    #: Each shorter than the period (checked below).
    flash_ms: float = Field(100.0, gt=0, le=60_000)
    beep_ms: float = Field(100.0, gt=0, le=60_000)
    tone_hz: float = Field(1000.0, gt=20, le=20000)
    #: The true A/V offset: positive = audio ahead of video (ITU-R BT.1359 sign).
    audio_lead_ms: float = Field(0.0, ge=-5000, le=5000)
    #: Audio clock error: the sound card runs this many ppm fast against the video clock.
    drift_ppm: float = Field(0.0, ge=-10000, le=10000)
    #: Delivery jitter (ms): each item is delivered up to this late, possibly out of order.
    jitter_ms: float = Field(0.0, ge=0, le=5000)
    #: Probability that a video frame is dropped.
    drop_frames: float = Field(0.0, ge=0, lt=1)
    #: Probability that an audio packet is lost.
    lose_audio: float = Field(0.0, ge=0, lt=1)
    #: At least 1 ms: shorter packets (one sample each, say) cost more than real time to make.
    audio_packet_ms: float = Field(20.0, ge=1, le=1000)
    #: Stop after this many seconds (None: run until stopped).
    duration_s: float | None = Field(None, gt=0, le=MAX_MEDIA_S)
    #: Seeds the fault draws (numpy's SeedSequence takes a non-negative integer).
    seed: int = Field(0, ge=0, le=2**63 - 1)
    #: Pace output at real time (True for `run`; `analyze` goes as fast as it can).
    realtime: bool = True

    @field_validator("fps", mode="before")
    @classmethod
    def _fps(cls, value: object) -> Fraction:
        return parse_frame_rate(value)

    @model_validator(mode="after")
    def _within_period(self) -> PatternSourceConfig:
        # Compared in whole ns, as the timeline keeps them: a flash or beep as long as the
        # period would overlap the next one.
        period_ns = _ns(self.period_s)
        for key, ms in (("flash_ms", self.flash_ms), ("beep_ms", self.beep_ms)):
            if _ns(ms / 1000) >= period_ns:
                raise ValueError(
                    f"{key} must be shorter than period_s ({self.period_s:g} s), got {ms:g} ms"
                )
        return self

    def declared_frame_rate(self) -> float:
        """The pattern's frame rate."""
        return float(self.fps)

    def declared_sample_rate(self) -> int:
        """The pattern's sample rate."""
        return self.sample_rate


#: Limited-range black and white (BT.601/709 luma).
Y_BLACK: Final = 16
Y_WHITE: Final = 235
#: True time of the first flash.
FIRST_FLASH_NS: Final = 500_000_000
#: Amplitude of the beeps.
BEEP_AMPLITUDE: Final = 0.5

# Items produced between two yields to the event loop when not pacing in real time.
_YIELD_EVERY = 32
#: Thumbnails kept per source, by (background level, square position): a frame's picture
#: depends on nothing else, and a VGA pattern cycles through ~110 positions and a few levels.
_THUMB_CACHE = 1024

_VIDEO: Final = 0
_AUDIO: Final = 1


def _ns(seconds: float) -> int:
    return round(seconds * NS_PER_S)


def _decimal(value: float) -> Fraction:
    # The decimal the config value prints as (1e-06 ppm is 1/10**6), not its binary expansion.
    return Fraction(repr(float(value)))


class PatternTimeline:
    """The pattern's exact definitions (pure, synchronous): times, flash levels, pictures, audio.

    :class:`PatternSource`, :func:`write_pattern_file` and the accuracy tests all use it, so they
    agree to the nanosecond and the sample.

    Args:
        config: The pattern's settings (validated: flashes and beeps fit in the period).
    """

    def __init__(self, config: PatternSourceConfig) -> None:
        self.config = config
        self.fps: Fraction = Fraction(config.fps)
        self.width = config.width
        self.height = config.height
        self.sample_rate = config.sample_rate
        # The synthetic clocks: a tick per frame and a tick per sample, mapped through clock/.
        self._frame_tb = 1 / self.fps
        self._sample_tb = Fraction(1, self.sample_rate)
        self.period_ns = _ns(config.period_s)
        self.flash_ns = _ns(config.flash_ms / 1000)
        self.beep_ns = _ns(config.beep_ms / 1000)
        self.lead_ns = _ns(config.audio_lead_ms / 1000)
        #: Samples per true second: the ADC runs drift_ppm fast.
        self.rate_true: Fraction = self.sample_rate * (1 + _decimal(config.drift_ppm) / 10**6)
        self._rate_true_num = self.rate_true.numerator
        self._rate_true_den = self.rate_true.denominator
        self.packet_samples = max(1, round(self.sample_rate * config.audio_packet_ms / 1000))
        self.square_side = max(2, self.height // 16)
        # Crosses the frame in about two seconds whatever the frame rate.
        self._square_speed = max(1, round(self.width / (2 * float(self.fps))))
        self._square_y = (self.height - self.square_side) // 2
        self._beep_cache: dict[int, tuple[int, int, float]] = {}

    # -- video ----------------------------------------------------------------------------

    def frame_pts_ns(self, index: int) -> int:
        """Exact ``index / fps`` floored to whole ns."""
        return ticks_to_ns(index, self._frame_tb, "floor")

    def flash_start_ns(self, k: int) -> int:
        """``T_k``: true time flash ``k`` turns on."""
        return FIRST_FLASH_NS + k * self.period_ns

    def flash_fraction(self, index: int) -> Fraction:
        """Fraction of frame ``index``'s interval during which a flash was on (exact)."""
        start_ns = self.frame_pts_ns(index)
        end_ns = self.frame_pts_ns(index + 1) + 1
        k_lo = max(0, (start_ns - FIRST_FLASH_NS - self.flash_ns) // self.period_ns)
        k_hi = (end_ns - FIRST_FLASH_NS) // self.period_ns
        total = Fraction(0)
        for k in range(k_lo, k_hi + 1):
            on_ns = self.flash_start_ns(k)
            if on_ns >= end_ns or on_ns + self.flash_ns <= start_ns:
                # No overlap (end_ns > the exact end, start_ns <= the exact start): skip the
                # rational arithmetic, ~10 us a frame on the event loop for every live stream.
                continue
            start = Fraction(index * self.fps.denominator, self.fps.numerator)
            end = Fraction((index + 1) * self.fps.denominator, self.fps.numerator)
            on = Fraction(on_ns, NS_PER_S)
            off = on + Fraction(self.flash_ns, NS_PER_S)
            overlap = min(end, off) - max(start, on)
            if overlap > 0:
                total += overlap
        return total * self.fps

    def background_level(self, index: int) -> int:
        """Background luma of frame ``index``: ``16 + round(f_i * 219)``."""
        return Y_BLACK + round(self.flash_fraction(index) * (Y_WHITE - Y_BLACK))

    def square_x(self, index: int) -> int:
        """Left edge of the moving square in frame ``index`` (bounces between the edges)."""
        span = self.width - self.square_side
        if span <= 0:
            return 0
        pos = (index * self._square_speed) % (2 * span)
        return pos if pos <= span else 2 * span - pos

    def render_luma(self, index: int) -> U8Image:
        """Frame ``index``'s picture (a new array the caller owns)."""
        return self.picture(self.background_level(index), self.square_x(index))

    def picture(self, level: int, x: int) -> U8Image:
        """The picture with background ``level`` and the square's left edge at ``x`` (new)."""
        luma = np.full((self.height, self.width), level, dtype=np.uint8)
        y, side = self._square_y, self.square_side
        luma[y : y + side, x : x + side] = Y_WHITE
        return luma

    # -- audio ----------------------------------------------------------------------------

    def sample_pts_ns(self, n: int) -> int:
        """Stamped (nominal) time of sample ``n``: ``n / sample_rate`` floored to ns."""
        return ticks_to_ns(n, self._sample_tb, "floor")

    def sample_true_ns(self, n: int) -> int:
        """True time sample ``n`` was taken, rounded up to whole ns."""
        # ceil(n * 1e9 / (p / q)) in integers: the same value as the Fraction, ~10x cheaper
        # (the schedule asks it for every audio packet, on the event loop).
        return -((-n * NS_PER_S * self._rate_true_den) // self._rate_true_num)

    def beep_start_ns(self, k: int) -> int:
        """``B_k``: true time beep ``k`` starts (negative: the beep is omitted)."""
        return self.flash_start_ns(k) - self.lead_ns

    def beep_samples(self, k: int) -> tuple[int, int]:
        """Sample range ``[first, end)`` of beep ``k`` (empty if omitted)."""
        first, end, _ = self._beep(k)
        return first, end

    def beep_onset_pts_ns(self, k: int) -> int:
        """Stamped time of beep ``k``'s first sample (its onset as a decoder sees it)."""
        return self.sample_pts_ns(self.beep_samples(k)[0])

    def _beep(self, k: int) -> tuple[int, int, float]:
        cached = self._beep_cache.get(k)
        if cached is not None:
            return cached
        start_ns = self.beep_start_ns(k)
        if start_ns < 0:
            result = (0, 0, 0.0)
        else:
            onset = Fraction(start_ns, NS_PER_S) * self.rate_true  # in (fractional) samples
            offset = onset + Fraction(self.beep_ns, NS_PER_S) * self.rate_true
            result = (math.ceil(onset), math.ceil(offset), float(onset))
        if len(self._beep_cache) > 64:
            self._beep_cache.clear()
        self._beep_cache[k] = result
        return result

    def render_audio(self, first: int, count: int) -> F32Array:
        """Samples ``[first, first + count)`` as float32."""
        out = np.zeros(count, dtype=np.float32)
        end = first + count
        # Beeps that may touch this range (one extra each side against rounding), then exact.
        t0_ns = int(Fraction(first * NS_PER_S) / self.rate_true)
        t1_ns = int(Fraction(end * NS_PER_S) / self.rate_true) + 1
        base = FIRST_FLASH_NS - self.lead_ns
        k_lo = max(0, (t0_ns - base - self.beep_ns) // self.period_ns - 1)
        k_hi = (t1_ns - base) // self.period_ns + 1
        rate_true = float(self.rate_true)
        omega = 2 * math.pi * self.config.tone_hz
        for k in range(k_lo, k_hi + 1):
            b_first, b_end, onset = self._beep(k)
            lo, hi = max(first, b_first), min(end, b_end)
            if lo >= hi:
                continue
            n = np.arange(lo, hi, dtype=np.float64)
            # (n - onset) is small and exact enough in float64; dividing last keeps precision.
            out[lo - first : hi - first] = BEEP_AMPLITUDE * np.sin(
                omega * ((n - onset) / rate_true)
            )
        return out

    # -- extents --------------------------------------------------------------------------

    def frame_count(self, duration_ns: int) -> int:
        """Number of frames with ``pts_ns < duration_ns``."""
        # pts_ns(i) < D  <=>  i * 1e9 * den < D * num  (floor of an integer ratio).
        return -((-duration_ns * self.fps.numerator) // (NS_PER_S * self.fps.denominator))

    def sample_count(self, duration_ns: int) -> int:
        """Number of samples with stamped ``pts_ns < duration_ns``."""
        return -((-duration_ns * self.sample_rate) // NS_PER_S)


@dataclass(slots=True)
class PatternStats:
    """What a :class:`PatternSource` emitted and what its faults removed."""

    frames: int = 0
    frames_dropped: int = 0
    packets: int = 0
    packets_lost: int = 0


@dataclass(order=True, frozen=True, slots=True)
class _Pending:
    deliver_ns: int
    seq: int
    kind: int
    index: int
    first_sample: int = 0
    samples: int = 0


class PatternSource:
    """A synthetic A/V source whose every flash, beep, drift, drop and delay is known exactly.

    Args:
        config: The pattern settings (see the module docstring for their exact meaning).
        pacer: The clock used for real-time delivery and ``arrival_ns``.
    """

    def __init__(self, config: PatternSourceConfig, pacer: Pacer | None = None) -> None:
        self.name = config.name
        self.config = config
        self.pacer: Pacer = pacer if pacer is not None else MonotonicPacer()
        self.timeline = PatternTimeline(config)
        self.stats = PatternStats()
        self._thumbs: dict[tuple[int, int], U8Image] = {}
        self._info: StreamInfo | None = None
        self._closed = False

    async def open(self) -> StreamInfo:
        """Describe the stream (exact frame rate, sample rate, size; clock SYNTHETIC)."""
        if self._info is None:
            self._info = StreamInfo(
                name=self.name,
                kind="pattern",
                has_video=True,
                has_audio=True,
                frame_rate=float(self.timeline.fps),
                sample_rate=self.timeline.sample_rate,
                width=self.timeline.width,
                height=self.timeline.height,
                clock=ClockKind.SYNTHETIC,
            )
        return self._info

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        return self._run()

    async def aclose(self) -> None:
        """Stop the stream (idempotent); a running iteration ends at its next item."""
        self._closed = True

    def status(self) -> dict[str, JsonValue]:
        """``source_status`` in /v1/streams: :class:`PatternStats` (what its faults removed)."""
        return dataclasses.asdict(self.stats)

    def schedule(self) -> Iterator[_Pending]:
        """Every item that will be delivered, in delivery order (faults applied, nothing rendered).

        Pending items wait in a heap until no later-captured item can be delivered before them;
        it holds about ``jitter_ms`` worth of item descriptors, never pictures.
        """
        tl, cfg = self.timeline, self.config
        duration_ns = None if cfg.duration_s is None else _ns(cfg.duration_s)
        n_frames = None if duration_ns is None else tl.frame_count(duration_ns)
        n_samples = None if duration_ns is None else tl.sample_count(duration_ns)
        jitter_ns = _ns(cfg.jitter_ms / 1000)
        video_rng = np.random.default_rng([cfg.seed, _VIDEO])
        audio_rng = np.random.default_rng([cfg.seed, _AUDIO])
        heap: list[_Pending] = []
        seq = 0
        frame = 0
        packet_first = 0
        while True:
            video_left = n_frames is None or frame < n_frames
            audio_left = n_samples is None or packet_first < n_samples
            if not video_left and not audio_left:
                break
            count = tl.packet_samples
            if n_samples is not None:
                count = min(count, n_samples - packet_first)
            video_done_ns = tl.frame_pts_ns(frame + 1) if video_left else None
            audio_done_ns = tl.sample_true_ns(packet_first + count) if audio_left else None
            take_video = audio_done_ns is None or (
                video_done_ns is not None and video_done_ns <= audio_done_ns
            )
            captured_ns: int
            if take_video:
                assert video_done_ns is not None
                captured_ns = video_done_ns
                drop, jitter = video_rng.random(2)
                if drop < cfg.drop_frames:
                    self.stats.frames_dropped += 1
                else:
                    deliver = captured_ns + round(float(jitter) * jitter_ns)
                    heapq.heappush(heap, _Pending(deliver, seq, _VIDEO, frame))
                    seq += 1
                frame += 1
            else:
                assert audio_done_ns is not None
                captured_ns = audio_done_ns
                lost, jitter = audio_rng.random(2)
                if lost < cfg.lose_audio:
                    self.stats.packets_lost += 1
                else:
                    deliver = captured_ns + round(float(jitter) * jitter_ns)
                    item = _Pending(deliver, seq, _AUDIO, 0, packet_first, count)
                    heapq.heappush(heap, item)
                    seq += 1
                packet_first += count
            # Anything captured later is delivered at or after its capture, so pending items
            # due by this capture time are final.
            while heap and heap[0].deliver_ns <= captured_ns:
                yield heapq.heappop(heap)
        while heap:
            yield heapq.heappop(heap)

    def render(self, item: _Pending, arrival_ns: int) -> MediaItem:
        """Build the frame or chunk a scheduled item stands for."""
        tl = self.timeline
        if item.kind == _VIDEO:
            level, x = tl.background_level(item.index), tl.square_x(item.index)
            luma = tl.picture(level, x)
            # The thumbnail is a function of (level, x): shrinking each frame again cost ~20 us
            # of the event loop per frame and stream. Shared thumbnails are read-only.
            thumb = self._thumbs.get((level, x))
            if thumb is None:
                if len(self._thumbs) >= _THUMB_CACHE:
                    self._thumbs.clear()
                thumb = make_thumb(luma)
                if thumb is luma:  # small pictures are their own thumbnail: not shared
                    thumb = thumb.copy()
                thumb.flags.writeable = False
                self._thumbs[(level, x)] = thumb
            return VideoFrame(
                source_id=self.name,
                pts_ns=tl.frame_pts_ns(item.index),
                arrival_ns=arrival_ns,
                luma=luma,
                thumb=thumb,
                clock=ClockKind.SYNTHETIC,
            )
        return audio_chunk(
            self.name,
            tl.sample_pts_ns(item.first_sample),
            arrival_ns,
            tl.render_audio(item.first_sample, item.samples),
            tl.sample_rate,
            ClockKind.SYNTHETIC,
        )

    async def _run(self) -> AsyncIterator[MediaItem | SourceFault]:
        if self._info is None:
            await self.open()
        realtime = self.config.realtime
        start_ns = self.pacer.now_ns()
        for produced, item in enumerate(self.schedule()):
            if self._closed:
                return
            if realtime:
                await self.pacer.sleep_until(start_ns + item.deliver_ns)
                if self._closed:
                    return
            elif produced % _YIELD_EVERY == _YIELD_EVERY - 1:
                # As fast as possible, but let other streams and the API run.
                await asyncio.sleep(0)
            media = self.render(item, self.pacer.now_ns())
            if item.kind == _VIDEO:
                self.stats.frames += 1
            else:
                self.stats.packets += 1
            yield media


# -- files ----------------------------------------------------------------------------------

#: Default (video codec, audio codec) per file extension; None = that kind is not written.
DEFAULT_CODECS: Final[dict[str, tuple[str | None, str]]] = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".m4v": ("libx264", "aac"),
    ".mkv": ("libx264", "pcm_s16le"),
    ".webm": ("libvpx-vp9", "libopus"),
    ".avi": ("mjpeg", "pcm_s16le"),
    ".wav": (None, "pcm_s16le"),
    ".flac": (None, "flac"),
    ".ogg": (None, "libopus"),
    ".opus": (None, "libopus"),
    ".mp3": (None, "libmp3lame"),
    ".m4a": (None, "aac"),
}

# Encoder settings that keep the luma close to the truth and encode fast.
_VIDEO_OPTIONS: Final[dict[str, dict[str, str]]] = {
    "libx264": {"preset": "veryfast", "crf": "12"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "4", "b": "20M"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0"},
}
_VIDEO_BIT_RATE: Final[dict[str, int]] = {"mjpeg": 40_000_000, "mpeg4": 20_000_000}


def write_pattern_file(
    config: PatternSourceConfig,
    path: Path,
    *,
    duration_s: float,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    video_options: dict[str, str] | None = None,
) -> None:
    """Encode the pattern's frames and audio into a media file with PyAV.

    The file carries the pattern's truth: video frame ``i`` at PTS ``i / fps`` and audio sample
    ``n`` at PTS ``n / sample_rate`` (drift and lead included, in the samples themselves), so a
    reader finds every flash and beep where :class:`PatternTimeline` says. Delivery faults
    (drops, lost packets, jitter) belong to live delivery and are not written. Containers that
    store times in ms (Matroska/WebM) round the video PTS to 1 ms.

    Args:
        config: The pattern settings.
        path: Output file; its extension picks the container and default codecs
            (:data:`DEFAULT_CODECS`).
        duration_s: Length of the file (video frames and samples stamped before it).
        video_codec: Override the video encoder (e.g. "libx264", "libvpx", "mjpeg").
        audio_codec: Override the audio encoder (e.g. "aac", "pcm_s16le", "flac", "libopus").
        video_options: Encoder options (replace the built-in defaults for that codec).

    Raises:
        ValueError: Unknown extension, odd picture size, or a sample rate the encoder lacks.
    """
    timeline = PatternTimeline(config)
    ext = path.suffix.lower()
    if ext not in DEFAULT_CODECS:
        known = ", ".join(sorted(DEFAULT_CODECS))
        raise ValueError(f"{path}: unknown file type {ext!r} (known: {known})")
    default_video, default_audio = DEFAULT_CODECS[ext]
    if video_codec is not None and default_video is None:
        raise ValueError(f"{path}: {ext} files hold audio only, cannot add {video_codec} video")
    vcodec = video_codec or default_video
    acodec = audio_codec or default_audio
    if not 0 < duration_s <= MAX_MEDIA_S:  # also refuses NaN
        raise ValueError(
            f"{path}: duration_s must be above 0 and at most {MAX_MEDIA_S:g}, got {duration_s:g}"
        )
    if vcodec is not None and (timeline.width % 2 or timeline.height % 2):
        raise ValueError(
            f"{path}: 4:2:0 video needs an even width and height, got "
            f"{timeline.width}x{timeline.height}"
        )
    rate = timeline.sample_rate
    audio_rates = av.Codec(acodec, "w").audio_rates
    if audio_rates and rate not in audio_rates:
        raise ValueError(
            f"{path}: {acodec} cannot encode {rate} Hz (it takes {sorted(audio_rates)})"
        )
    duration_ns = _ns(duration_s)
    n_frames = timeline.frame_count(duration_ns) if vcodec is not None else 0
    n_samples = timeline.sample_count(duration_ns)
    fps = timeline.fps
    sample_tb = Fraction(1, rate)

    with av.open(str(path), "w") as container:
        vstream: av.VideoStream | None = None
        pix_fmt = "yuv420p"
        if vcodec is not None:
            added = container.add_stream(vcodec, rate=fps)
            if not isinstance(added, av.VideoStream):
                raise ValueError(f"{path}: {vcodec} is not a video encoder")
            vstream = added
            vstream.width = timeline.width
            vstream.height = timeline.height
            pix_fmt = "yuvj420p" if vcodec == "mjpeg" else "yuv420p"
            vstream.pix_fmt = pix_fmt
            vstream.time_base = 1 / fps
            vstream.codec_context.time_base = 1 / fps
            if vcodec in _VIDEO_BIT_RATE:
                vstream.bit_rate = _VIDEO_BIT_RATE[vcodec]
            opts = video_options if video_options is not None else _VIDEO_OPTIONS.get(vcodec, {})
            vstream.codec_context.options = dict(opts)
        added_audio = container.add_stream(acodec, rate=rate)
        if not isinstance(added_audio, av.AudioStream):
            raise ValueError(f"{path}: {acodec} is not an audio encoder")
        astream = added_audio
        astream.layout = "mono"
        astream.time_base = sample_tb
        chroma = np.full(
            (timeline.height // 2, timeline.width), 128, dtype=np.uint8
        )  # U and V rows of an I420 picture: neutral grey

        def encode_frame(index: int) -> None:
            assert vstream is not None
            i420 = np.concatenate([timeline.render_luma(index), chroma])
            picture = av.VideoFrame.from_ndarray(i420, format=pix_fmt)
            picture.pts = index
            picture.time_base = 1 / fps
            for packet in vstream.encode(picture):
                container.mux(packet)

        frame = 0
        first = 0
        block = timeline.packet_samples
        while first < n_samples or frame < n_frames:
            # Feed both encoders in time order so the muxer interleaves with little buffering.
            if frame < n_frames and (
                first >= n_samples or timeline.frame_pts_ns(frame) <= timeline.sample_pts_ns(first)
            ):
                encode_frame(frame)
                frame += 1
                continue
            count = min(block, n_samples - first)
            samples = timeline.render_audio(first, count)
            chunk = av.AudioFrame.from_ndarray(samples[np.newaxis, :], format="flt", layout="mono")
            chunk.sample_rate = rate
            chunk.pts = first
            chunk.time_base = sample_tb
            for packet in astream.encode(chunk):
                container.mux(packet)
            first += count
        if vstream is not None:
            for packet in vstream.encode(None):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)


class PatternSourceFactory:
    """Source type ``pattern`` (entry point ``crossmodald.sources``)."""

    config_model = PatternSourceConfig

    @classmethod
    def create(cls, config: PatternSourceConfig, *, clock: Pacer | None = None) -> PatternSource:
        """A pattern source paced by ``clock`` (None: real time)."""
        return PatternSource(config, clock if clock is not None else MonotonicPacer())
