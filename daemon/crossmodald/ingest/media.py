"""The media source: anything PyAV (FFmpeg) opens, files or network URLs.

Files (mp4, mkv, webm, avi, mov, wav, flac, mp3, ogg, ...) and URLs (rtsp://, http(s)://, ...)
are demuxed and decoded on a worker thread, a batch of packets per call, so the event loop never
blocks on I/O or a codec and the per-item overhead stays low. A second thread finishes each
batch (thumbnails, mono audio) while the first decodes the next; up to :data:`_AHEAD_BATCHES`
batches are decoded ahead of the consumer (bounded). Pictures up to 1080p are decoded on one
thread, or in slice threads on half the cores offline (frame threads cost more CPU than they
save when the loop and plugins want the cores).

Timestamps (clock ``PTS``): each track's container PTS goes through its own
:class:`~crossmodald.clock.TrackTimeline` (its time base, floored to whole ns as the rest of the
daemon does); the container's start time is not subtracted, so audio and video stay on the one
container timeline. The timelines of a pass share a :class:`~crossmodald.clock.TimelineGroup`:

* counters that wrap are unwrapped (33 bits for MPEG-TS/PS and HLS, 32 for RTP and FLV), also
  past FFmpeg's own correction of a single wrap;
* a backward step of more than 0.5 s is a timestamp jump, and so is a forward one of more than
  5 s in formats FFmpeg marks as having discontinuities (MPEG-TS, HLS, Ogg, ...); elsewhere a
  forward step is a gap in the media and kept. A jump is rebased (media time stays monotonic,
  every track moved by the same amount where it fits) and reported as a ``timestamp_jump`` fault.

Audio is continuous: while a chunk's mapped PTS agrees with the running sample count
(:class:`~crossmodald.clock.samples.SampleCounter`) to within one time-base tick (plus a sample),
the sample count is used, so containers that store ms (Matroska/WebM) do not add rounding jitter;
a larger jump re-anchors the count (a gap) and is counted in :attr:`MediaStats.audio_resyncs`.

Items of the two kinds are merged by pts (each kind is already in order) before delivery, with a
small bounded look-ahead, so real-time pacing follows media time however the file interleaves.
Real-time pacing maps the first item's pts to the pacer's time then; an item more than 2 s off
that schedule (a timestamp jump, a consumer that stalled) restarts the mapping at itself rather
than sleeping through the jump or bursting to catch up (counted in ``pacing_resets``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, cast

import av
import av.container
import av.error
import av.format
import av.stream
import numpy as np
from pydantic import Field

from crossmodald.bus.events import JsonValue
from crossmodald.clock.samples import SampleCounter
from crossmodald.clock.timeline import TimelineGroup, TrackTimeline, ticks_to_ns
from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.frames import (
    AudioMonoConverter,
    audio_chunk,
    jump_fault,
    luma_from_av_frame,
    make_thumb,
)
from crossmodald.ingest.pacing import MonotonicPacer, Pacer
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.media import (
    NS_PER_MS,
    NS_PER_S,
    ClockKind,
    F32Array,
    MediaItem,
    StreamInfo,
    U8Image,
    VideoFrame,
)
from crossmodald.redact import redact_text, redact_url
from crossmodald.runtime.device import half_the_cpus
from crossmodald.status import MetricSpec

log = logging.getLogger(__name__)


class MediaSourceConfig(SourceConfigBase):
    """Any file or URL that PyAV (FFmpeg) opens: mp4, mkv, webm, avi, wav, flac, RTSP, HTTP, ..."""

    type: Literal["media"]
    url: str = Field(min_length=1)
    #: Start again from the beginning at the end (files only).
    loop: bool = False
    #: Pace output at real time (True for `run`; `analyze` goes as fast as it can).
    realtime: bool = True
    #: FFmpeg options passed to the demuxer/protocol, e.g. {rtsp_transport = "tcp"}.
    options: dict[str, str] = Field(default_factory=dict)
    #: Seconds to wait for a network stream to open or deliver data.
    timeout_s: float = Field(10.0, gt=0, le=3600)
    #: Shift the audio timeline by this many ms (positive = audio earlier, i.e. audio leads).
    audio_shift_ms: float = Field(0.0, ge=-60_000, le=60_000)


_T = TypeVar("_T")
_S = TypeVar("_S", bound=av.stream.Stream)

# A decode batch ends after this many items or this much wall time (live streams: latency).
_BATCH_ITEMS: Final = 32
# Without real-time pacing (analyze) latency does not matter: larger batches mean fewer thread
# hand-offs (each executor round trip costs the event loop ~0.2 ms).
_BATCH_ITEMS_OFFLINE: Final = 128
_BATCH_WALL_S_OFFLINE: Final = 0.1
# ... and after this many pixels of pictures (64 VGA frames), so the batches decoded ahead hold
# a bounded amount of memory whatever the picture size (1080p: 10 frames a batch).
_BATCH_PIXELS_OFFLINE: Final = 64 * 640 * 480
_BATCH_WALL_S: Final = 0.02
# Offline reads join consecutive audio frames that tile exactly into one chunk of up to this
# much audio: an AAC file has ~47 frames a second, and every item costs the same Python on its
# way through the loop, the pipeline and the windower whatever its length. Real-time and live
# reads keep the decoder's frames (a longer chunk would arrive early by its own length).
_JOIN_AUDIO_NS_OFFLINE: Final = 200 * NS_PER_MS
# Batches queued on the worker ahead of the consumer (bounded: their frames are held).
_AHEAD_BATCHES: Final = 2
# Decode pictures up to this size (1080p) with slice threads only; larger ones with frame threads.
_SINGLE_THREAD_MAX_PIXELS: Final = 1920 * 1088
# At most this many slice threads (FFmpeg's own cap on automatic thread counts).
_MAX_SLICE_THREADS: Final = 16
# Look-ahead of the pts merge: past this many items of one kind waiting for the other kind,
# the oldest goes out anyway (a stream that stopped, or a file interleaved very coarsely).
_MAX_PENDING_VIDEO: Final = 32
_MAX_PENDING_AUDIO: Final = 512
# Consecutive demuxer read errors after which the input counts as unreadable.
_MAX_READ_ERRORS: Final = 16
# Real-time pacing starts again from the current item when it would be this far off.
_REBASE_NS: Final = 2 * NS_PER_S
# At most one decode-error fault per this much media time.
_FAULT_INTERVAL_NS: Final = NS_PER_S
# Width of the PTS counter of the formats whose timestamps wrap (FFmpeg's pts_wrap_bits, which
# PyAV does not expose); any other format's PTS are 64-bit.
_WRAP_BITS: Final = {
    "mpegts": 33,
    "mpegtsraw": 33,
    "mpeg": 33,
    "hls": 33,
    "rtsp": 32,
    "rtp": 32,
    "sdp": 32,
    "flv": 32,
    "live_flv": 32,
}
# A backward PTS step larger than this is a timestamp jump (in any format).
_MAX_BACKSTEP_NS: Final = NS_PER_S // 2
# A forward PTS step larger than this is a jump in formats with discontinuities; elsewhere
# (MP4, Matroska, ...) a forward step is a real gap in the media (a still picture held for
# seconds, a cut) and is kept, so the other track stays in sync with it.
_MAX_JUMP_NS: Final = 5 * NS_PER_S
_NO_FORWARD_JUMP_NS: Final = 1 << 62
# AVFMT_TS_DISCONT (PyAV types the flag as its enum, the format's flags as an int).
_TS_DISCONT: Final = cast(int, av.format.Flags.ts_discont.value)
_NETWORK_SCHEMES: Final = frozenset(
    {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "tcp", "udp", "rtp", "srt", "hls", "mms"}
)


def _slice_threads() -> int:
    """Decoder threads for the slices of an offline read's pictures: half the usable CPUs.

    A plain decode spreads the slices of a picture (encoders for low latency cut each into
    several; PyAV's libx264 cuts one per encoder thread) over every core, and an offline read
    (``analyze``) should not leave those cores idle: the other half is the loop's, the
    finishing thread's and the plugins' (torch takes half too, :func:`~crossmodald.runtime.device.configure_threads`).
    Two CPUs or three: one thread, the decode runs on the source's worker thread (measured on
    2 cores: slice threads bring ``analyze`` nothing there). Live and real-time reads keep one
    thread: their streams share the cores among themselves.
    """
    return min(_MAX_SLICE_THREADS, half_the_cpus())


def _is_network(url: str) -> bool:
    return "://" in url and url.split("://", 1)[0].lower() in _NETWORK_SCHEMES


def _reason(exc: BaseException) -> str:
    # FFmpeg and OSError texts may quote the URL they failed on: redact it like the rest.
    if isinstance(exc, av.error.FFmpegError):
        return redact_text(str(exc.strerror or exc))
    if isinstance(exc, OSError) and exc.strerror:
        return redact_text(exc.strerror)
    return redact_text(str(exc)) or type(exc).__name__


@dataclass(slots=True)
class MediaStats:
    """Counters of a :class:`MediaSource` (read from the event loop; written by its worker)."""

    packets: int = 0
    video_frames: int = 0
    audio_chunks: int = 0
    #: Packets the decoder rejected (skipped).
    decode_errors: int = 0
    #: Demuxer read errors (corrupt or unreadable input, skipped where possible).
    read_errors: int = 0
    #: Audio PTS jumps that re-anchored the running sample count (gaps, cuts).
    audio_resyncs: int = 0
    #: Video PTS steps that went backwards or skipped more than two nominal frames.
    video_jumps: int = 0
    #: Times a looping file restarted.
    loops: int = 0
    #: Times real-time pacing restarted from the current item (pts jump or stalled consumer).
    pacing_resets: int = 0
    #: Packets read while a :class:`StartGate` held the input back (decoded, then dropped).
    held_back: int = 0
    #: Reason of the most recent decode or read error.
    last_error: str = ""


class StartGate(Protocol):
    """Holds a live input's first items back until their timing is settled (the rtsp source).

    The worker thread asks it about every packet until it admits one: the items of the packets
    it holds back are decoded (the decoder needs its references) and dropped; from the packet
    it admits on, every item is delivered, on fresh track timelines.
    """

    def admit(
        self,
        packet: av.Packet[Any],
        container: av.container.InputContainer,
        tracks: frozenset[int],
    ) -> tuple[int, ClockKind] | None:
        """None to hold ``packet`` back, else (the offset in ns added to every track's mapped
        time from here on, the clock the items rest on). ``tracks``: the indices of the
        streams read (the best video and audio; others are not demuxed)."""
        ...


@dataclass(slots=True)
class _Video:
    pts_ns: int
    #: The decoded picture until the finishing thread (:func:`_finish`) has read its luma
    #: plane and made the thumbnail.
    frame: av.VideoFrame | None
    luma: U8Image | None = None
    thumb: U8Image | None = None


@dataclass(slots=True)
class _Audio:
    pts_ns: int
    #: None until the finishing thread converted ``parts`` (:func:`_finish`).
    samples: F32Array | None
    sample_rate: int
    #: Consecutive frames (or samples converted already) that tile exactly from ``pts_ns``.
    parts: list[av.AudioFrame | F32Array]
    #: Where the last part ends (ns): a frame placed exactly here joins this item.
    end_ns: int


_Decoded = _Video | _Audio
_Batch = tuple[list[_Decoded], list[SourceFault], bool]


def _finish(decoding: concurrent.futures.Future[_Batch]) -> _Batch:
    """The batch ``decoding`` gives, once decoded, with pictures and audio converted.

    Runs on the source's second (finishing) thread. The decoding thread is the one that limits
    a fast (offline) read, and every numpy or OpenCV call there lets go of the GIL and then
    waits to get it back from the loop or a plugin: the luma planes, the thumbnails (~30 us a
    VGA frame) and the mono downmix of the audio frames (several numpy calls each, then one join
    for the frames an item holds) are made here instead, while it decodes the next batch.
    Decoded frames are reference-counted, so the decoder never reuses a buffer that a frame
    waiting here still holds.
    """
    batch = decoding.result()
    for item in batch[0]:
        if isinstance(item, _Video):
            if item.frame is not None:
                item.luma = luma_from_av_frame(item.frame)
                item.frame = None
                item.thumb = make_thumb(item.luma)
        elif item.parts:
            arrays = [
                part if isinstance(part, np.ndarray) else AudioMonoConverter.convert_direct(part)
                for part in item.parts
            ]
            item.samples = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            item.parts = []
    return batch


class _Reader:
    """The PyAV side: one open container, its decoders and timestamp state. Worker thread only."""

    def __init__(self, source: MediaSource) -> None:
        self.source = source
        self.container: av.container.InputContainer | None = None
        self.video: av.VideoStream | None = None
        self.audio: av.AudioStream | None = None
        self.info: StreamInfo | None = None
        self._demux: collections.abc.Iterator[av.Packet[Any]] | None = None
        self._converter = AudioMonoConverter()
        # Timestamp mapping (clock/): one timeline per track, made anew for each pass.
        self._video_tl: TrackTimeline | None = None
        self._audio_tl: TrackTimeline | None = None
        self._samples = SampleCounter()
        self._audio_start_ns = 0
        self._video_step_ns = 0
        self._last_video_ns: int | None = None
        #: Faults found while decoding the current batch (timestamp jumps).
        self.faults: list[SourceFault] = []
        self._read_errors_in_row = 0
        #: Pass offset (ns) for looping; first and end pts of the current pass.
        self.offset_ns = 0
        self.pass_first_ns: int | None = None
        self.pass_end_ns: int | None = None
        self.decoded = 0
        small = source.config.realtime or source.live  # small batches: latency matters
        self._batch_items = _BATCH_ITEMS if small else _BATCH_ITEMS_OFFLINE
        self._batch_wall_s = _BATCH_WALL_S if small else _BATCH_WALL_S_OFFLINE
        self._batch_pixels = (1 << 62) if small else _BATCH_PIXELS_OFFLINE
        self._join_audio_ns = 0 if small else _JOIN_AUDIO_NS_OFFLINE
        self._slice_threads = 1 if small else _slice_threads()
        #: The audio item of the current batch that the next tiling frame joins.
        self._open_audio: _Audio | None = None
        #: Items decoded in the current pass (a looping input that yields none stops).
        self.pass_decoded = 0
        #: Asked about each packet until it admits one (None: every item counts).
        self.gate: StartGate | None = source.gate

    # -- opening --------------------------------------------------------------------------

    def open(self) -> StreamInfo:
        src = self.source
        cfg = src.config
        network = _is_network(cfg.url)
        started = time.monotonic()
        try:
            container = av.open(cfg.url, options=dict(cfg.options), timeout=cfg.timeout_s)
        except av.error.ExitError:
            raise SourceError(
                f"{src.display}: timed out after {cfg.timeout_s:g} s opening it"
            ) from None
        except FileNotFoundError:
            raise SourceError(f"{src.display}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{src.display}: is a directory, not a media file") from None
        except (av.error.FFmpegError, OSError) as exc:
            if network and time.monotonic() - started >= 0.9 * cfg.timeout_s:
                # Some protocols (RTSP) report a timeout as bad data.
                raise SourceError(
                    f"{src.display}: timed out after {cfg.timeout_s:g} s opening it "
                    f"({_reason(exc)})"
                ) from None
            if isinstance(exc, av.error.InvalidDataError) and not network:
                raise SourceError(f"{src.display}: not a media file ({_reason(exc)})") from None
            raise SourceError(f"{src.display}: cannot open ({_reason(exc)})") from None
        if not isinstance(container, av.container.InputContainer):
            container.close()
            raise SourceError(f"{src.display}: not an input")
        if container.format.name == "tty":
            # FFmpeg renders any .txt/.nfo/... file as ANSI-art video: not media for us.
            container.close()
            raise SourceError(
                f"{src.display}: not a media file (Invalid data found when processing input)"
            )
        self.container = container
        videos = [
            s
            for s in container.streams.video
            if not s.disposition & av.stream.Disposition.attached_pic
        ]
        audios = list(container.streams.audio)
        self.video = self._best(container, videos, "video")
        self.audio = self._best(container, audios, "audio")
        if self.video is None and self.audio is None:
            container.close()
            raise SourceError(f"{src.display}: has no audio or video stream")
        frame_rate: float | None = None
        width = height = None
        if self.video is not None:
            ctx = self.video.codec_context
            if (ctx.width or 0) * (ctx.height or 0) > _SINGLE_THREAD_MAX_PIXELS:
                # Frame threads: one core alone would not keep up with large pictures.
                ctx.thread_type = "AUTO"
            else:
                # Slice threads only: frame threads cost ~30% more CPU for the same frames
                # (5-min VGA H.264: 1.8 s vs 1.3 s) and are no faster when the other threads of
                # the process have work, as they do here. Slices cost next to nothing (2 slices:
                # 1.26 s vs 1.22 s) and go to as many threads as :func:`_slice_threads` gives.
                ctx.thread_type = "SLICE"
                ctx.thread_count = self._slice_threads
            if self.video.time_base is None:
                raise SourceError(f"{src.display}: video stream has no time base")
            rate = self.video.average_rate or self.video.guessed_rate
            if rate:
                frame_rate = float(rate)
                self._video_step_ns = round(NS_PER_S / frame_rate)
            width = self.video.codec_context.width or None
            height = self.video.codec_context.height or None
        sample_rate: int | None = None
        if self.audio is not None:
            if self.audio.time_base is None:
                raise SourceError(f"{src.display}: audio stream has no time base")
            sample_rate = self.audio.codec_context.sample_rate or None
        self._make_timelines()
        self.info = StreamInfo(
            name=src.name,
            kind="media",
            has_video=self.video is not None,
            has_audio=self.audio is not None,
            frame_rate=frame_rate,
            sample_rate=sample_rate,
            width=width,
            height=height,
            clock=ClockKind.PTS,
        )
        self._demux = iter(container.demux(*self._streams()))
        return self.info

    def _make_timelines(self) -> None:
        """Fresh timestamp mapping for each track, from :attr:`offset_ns` on (clock/)."""
        container = self.container
        assert container is not None
        names = container.format.name.split(",")
        wrap_bits = next((_WRAP_BITS[n] for n in names if n in _WRAP_BITS), None)
        discontinuous = bool(int(container.format.flags) & _TS_DISCONT)
        group = TimelineGroup()

        def timeline(time_base: Fraction, offset_ns: int) -> TrackTimeline:
            return TrackTimeline(
                time_base,
                wrap_bits=wrap_bits,
                accept_unwrapped=True,
                max_jump_ns=_MAX_JUMP_NS if discontinuous else _NO_FORWARD_JUMP_NS,
                max_backstep_ns=_MAX_BACKSTEP_NS,
                offset_ns=offset_ns,
                rounding="floor",
                group=group,
            )

        if self.video is not None and self.video.time_base is not None:
            self._video_tl = timeline(Fraction(self.video.time_base), self.offset_ns)
        if self.audio is not None and self.audio.time_base is not None:
            tb = self.audio.time_base
            audio_offset_ns = self.offset_ns - self.source.audio_shift_ns
            self._audio_tl = timeline(Fraction(tb), audio_offset_ns)
            # One tick of the container's clock: finer disagreement is rounding, not a gap.
            self._samples = SampleCounter(-(-tb.numerator * NS_PER_S // tb.denominator))
            # Where audio without any stamp starts: the stream's start time.
            start = self.audio.start_time
            self._audio_start_ns = audio_offset_ns + (
                0 if start is None else ticks_to_ns(start, Fraction(tb), "floor")
            )

    @staticmethod
    def _best(container: av.container.InputContainer, candidates: list[_S], kind: str) -> _S | None:
        if not candidates:
            return None
        try:
            best = container.streams.best(kind)  # type: ignore[arg-type]
        except (ValueError, av.error.FFmpegError):
            best = None
        for stream in candidates:
            if best is not None and stream.index == best.index:
                return stream
        return candidates[0]

    def _streams(self) -> list[av.stream.Stream]:
        return [s for s in (self.video, self.audio) if s is not None]

    def reopen(self) -> None:
        """Start the next pass of a looping input, its timeline after the previous one's end."""
        if self.pass_first_ns is not None and self.pass_end_ns is not None:
            self.offset_ns += max(1, self.pass_end_ns - self.pass_first_ns)
        self.pass_first_ns = self.pass_end_ns = None
        self.pass_decoded = 0
        self.close()
        self._last_video_ns = None
        self._converter = AudioMonoConverter()
        self.open()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
        # Let go of everything that holds the decoders (their codec contexts keep a pool of
        # decoded pictures): the reader and its source refer to each other, so what they hold
        # would otherwise wait for the cyclic garbage collector, and a process that opens stream
        # after stream grew meanwhile (74 MiB per ended VGA stream: bench_stream_memory.py).
        self.video = self.audio = None
        self._demux = None
        self._open_audio = None

    # -- decoding -------------------------------------------------------------------------

    def read_batch(self) -> tuple[list[_Decoded], list[SourceFault], bool]:
        """Decode up to one batch; returns the items, faults found, and whether the input ended."""
        items: list[_Decoded] = []
        faults = self.faults = []
        self._open_audio = None  # items never span batches
        demux = self._demux
        assert demux is not None
        assert self.container is not None
        stats = self.source.stats
        started = time.monotonic()
        limit = self._batch_items
        wall_s = self._batch_wall_s
        pixels = self._batch_pixels
        while len(items) < limit and pixels > 0 and time.monotonic() - started < wall_s:
            try:
                packet = next(demux)
            except StopIteration:
                return items, faults, True
            except av.error.ExitError:
                raise SourceError(
                    f"{self.source.display}: timed out after {self.source.config.timeout_s:g} s "
                    "waiting for data"
                ) from None
            except (av.error.FFmpegError, OSError) as exc:
                if not self._read_error(exc):
                    return items, faults, True
                # The old generator is finished; a new one reads on from the current position.
                demux = self._demux = iter(self.container.demux(*self._streams()))
                continue
            self._read_errors_in_row = 0
            stats.packets += 1
            if self.gate is not None and not self._admit(packet):
                continue
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError) as exc:
                # A corrupt packet: skip it; the decoder recovers at the next good one.
                stats.decode_errors += 1
                stats.last_error = _reason(exc)
                continue
            for frame in frames:
                item = self._convert(frame)
                if item is not None:
                    items.append(item)
                    if isinstance(frame, av.VideoFrame):
                        pixels -= frame.width * frame.height
        return items, faults, False

    def _admit(self, packet: av.Packet[Any]) -> bool:
        """Whether the gate lets ``packet`` through (it stays open from then on)."""
        assert self.gate is not None
        assert self.container is not None
        tracks = frozenset(s.index for s in self._streams())
        decision = self.gate.admit(packet, self.container, tracks)
        if decision is None:
            self.source.stats.held_back += 1
            with contextlib.suppress(av.error.FFmpegError, ValueError):
                packet.decode()
            return False
        self.offset_ns, self.source.clock = decision
        self._make_timelines()
        self._last_video_ns = None
        self.gate = None
        return True

    def _read_error(self, exc: BaseException) -> bool:
        """Count a read error; False when the input should be treated as ended."""
        stats = self.source.stats
        stats.read_errors += 1
        stats.last_error = _reason(exc)
        self._read_errors_in_row += 1
        if self._read_errors_in_row < _MAX_READ_ERRORS:
            return True
        if _is_network(self.source.config.url) or self.decoded == 0:
            raise SourceError(f"{self.source.display}: read failed ({stats.last_error})")
        return False

    def _convert(self, frame: av.VideoFrame | av.AudioFrame | object) -> _Decoded | None:
        if isinstance(frame, av.VideoFrame):
            item: _Decoded | None = self._convert_video(frame)
        elif isinstance(frame, av.AudioFrame):
            item = self._convert_audio(frame)
        else:
            return None
        if item is not None:
            self.decoded += 1
            self.pass_decoded += 1
        return item

    def _convert_video(self, frame: av.VideoFrame) -> _Video | None:
        pts = frame.pts
        if pts is None:
            pts = frame.dts
        last_ns = self._last_video_ns
        step_ns = self._video_step_ns
        jumped = False
        if pts is not None:
            timeline = self._video_tl
            assert timeline is not None
            pts_ns = timeline.map_ns(pts, step_ns or None)
            jump = timeline.take_jump()
            if jump is not None:
                jumped = True
                self.faults.append(jump_fault(self.source.display, "video", jump))
        elif last_ns is not None and step_ns:
            pts_ns = last_ns + step_ns
        else:
            pts_ns = self.offset_ns if last_ns is None else last_ns
        if jumped or (
            last_ns is not None
            and step_ns
            and (pts_ns <= last_ns or pts_ns - last_ns > 3 * step_ns)
        ):
            self.source.stats.video_jumps += 1
        self._last_video_ns = pts_ns
        self._extend_pass(pts_ns, pts_ns + step_ns)
        self.source.stats.video_frames += 1
        return _Video(pts_ns, frame)

    def _convert_audio(self, frame: av.AudioFrame) -> _Audio | None:
        if frame.samples == 0:
            return None
        samples: F32Array | None = None
        if AudioMonoConverter.reads_directly(frame):
            count = frame.samples  # converted on the finishing thread (_finish)
        else:
            samples = self._converter.convert(frame)  # stateful (a resampler): here, in order
            count = len(samples)
        rate = frame.sample_rate
        pts = frame.pts
        stamped_ns: int | None = None
        if pts is not None:
            timeline = self._audio_tl
            assert timeline is not None
            stamped_ns = timeline.map_ns(pts, count * NS_PER_S // rate)
            jump = timeline.take_jump()
            if jump is not None:
                self.faults.append(jump_fault(self.source.display, "audio", jump))
        counter = self._samples
        resyncs = counter.resyncs
        # The sample count where it agrees with the stamp, so consecutive chunks tile exactly.
        pts_ns = counter.place(stamped_ns, count, rate, self._audio_start_ns)
        stats = self.source.stats
        if counter.resyncs != resyncs:
            stats.audio_resyncs += 1
        assert counter.end_ns is not None
        self._extend_pass(pts_ns, counter.end_ns)
        stats.audio_chunks += 1
        part: av.AudioFrame | F32Array = samples if samples is not None else frame
        joined = self._open_audio
        if (
            joined is not None
            and joined.end_ns == pts_ns
            and joined.sample_rate == rate
            and counter.end_ns - joined.pts_ns <= self._join_audio_ns
        ):
            joined.parts.append(part)
            joined.end_ns = counter.end_ns
            self.decoded += 1  # a frame decoded, though no new item
            self.pass_decoded += 1
            return None
        item = _Audio(pts_ns, None, rate, [part], counter.end_ns)
        self._open_audio = item if self._join_audio_ns else None
        return item

    def _extend_pass(self, start_ns: int, end_ns: int) -> None:
        if self.pass_first_ns is None or start_ns < self.pass_first_ns:
            self.pass_first_ns = start_ns
        if self.pass_end_ns is None or end_ns > self.pass_end_ns:
            self.pass_end_ns = end_ns


class MediaSource:
    """Frames and audio from anything PyAV opens (files, RTSP, HTTP, ...).

    Args:
        config: URL or path, looping, pacing, FFmpeg options, timeout and audio shift.
        pacer: The clock for real-time pacing and ``arrival_ns``.
        gate: Holds the first items back until their timing is settled, and says where they
            land (the rtsp source: until every track has an RTCP sender report).
        live: The input comes at its own pace (a camera): items go out as they are decoded,
            in the small batches of real-time reading, without pacing (``realtime`` false).

    Attributes:
        stats: Counters (packets, frames, chunks, decode and read errors, resyncs, loops).
        display: The URL or path as errors show it (credentials removed).
    """

    def __init__(
        self,
        config: MediaSourceConfig,
        pacer: Pacer | None = None,
        *,
        gate: StartGate | None = None,
        live: bool = False,
    ) -> None:
        self.name = config.name
        self.config = config
        self.gate = gate
        self.live = live
        #: The clock the items rest on (a gate may say RTCP when it admits the first packet).
        self.clock = ClockKind.PTS
        self.pacer: Pacer = pacer if pacer is not None else MonotonicPacer()
        self.display = redact_url(config.url)
        self.audio_shift_ns = round(config.audio_shift_ms * NS_PER_MS)
        self.stats = MediaStats()
        self._reader = _Reader(self)
        # One worker thread of its own: PyAV objects stay on one thread, and the frames' buffers
        # come from one malloc arena that keeps its pages (with the shared default pool, buffers
        # allocated on whichever thread ran the batch cost ~40 page faults per VGA frame).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest:{self.name}")
        # A second thread finishes each decoded batch (thumbnails) while the first decodes on.
        self._finisher = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ingest-finish:{self.name}"
        )
        self._info: StreamInfo | None = None
        self._inflight: asyncio.Future[object] | None = None
        self._closed = False
        self._released = False

    async def open(self) -> StreamInfo:
        """Open the input and pick the best video and audio streams (raises SourceError)."""
        if self._closed:
            raise SourceError(f"{self.display}: source is closed")
        if self._info is None:
            self._info = await self._in_worker(self._reader.open)
        return self._info

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        return self._run()

    async def aclose(self) -> None:
        """Wait for any decode in progress, then close the input (idempotent)."""
        self._closed = True
        inflight = self._inflight
        if inflight is not None:
            # The worker thread must finish before the container goes away under it; its
            # outcome no longer matters (a cancellation of aclose itself still propagates).
            with contextlib.suppress(Exception):
                await asyncio.shield(inflight)
        self._inflight = None
        if self._released:
            return
        self._released = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._reader.close)
        self._executor.shutdown(wait=False)
        self._finisher.shutdown(wait=False)

    #: The status values ``/metrics`` exports (see :func:`~crossmodald.ingest.base.source_metrics`).
    metrics: Sequence[MetricSpec] = (
        MetricSpec(
            "crossmodald_stream_decode_errors_total",
            "counter",
            "Packets the decoder rejected and the source skipped.",
            "decode_errors",
        ),
        MetricSpec(
            "crossmodald_stream_timestamp_jumps_total",
            "counter",
            "Timestamp jumps in the input (video steps, audio resyncs).",
            "timestamp_jumps",
        ),
    )

    def status(self) -> dict[str, JsonValue]:
        """``source_status`` in /v1/streams: :class:`MediaStats` and the jumps in all."""
        out: dict[str, JsonValue] = dataclasses.asdict(self.stats)
        out["timestamp_jumps"] = self.stats.video_jumps + self.stats.audio_resyncs
        return out

    async def _in_worker(self, fn: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn)
        self._inflight = future  # type: ignore[assignment]
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._inflight = None

    def _start_batch(self) -> asyncio.Future[_Batch]:
        # Both executors run their jobs in order, one at a time: the finishing job of a batch
        # waits for its decode, and the batches come out in order. The last batch started is
        # the last to finish, so awaiting it (aclose) waits for every job in flight.
        decoding = self._executor.submit(self._reader.read_batch)
        future = asyncio.get_running_loop().run_in_executor(self._finisher, _finish, decoding)
        self._inflight = future  # type: ignore[assignment]
        return future

    async def _batches(self) -> AsyncIterator[tuple[list[_Decoded], list[SourceFault], bool]]:
        """Decoded batches, up to :data:`_AHEAD_BATCHES` decoded ahead; loops restart here."""
        # The worker runs the queued read_batch calls one after another, so it goes on decoding
        # while the loop (or a plugin holding the GIL) is busy instead of idling after each
        # batch; the items stay in order.
        pending: collections.deque[
            asyncio.Future[tuple[list[_Decoded], list[SourceFault], bool]]
        ] = collections.deque()

        def top_up() -> None:
            while len(pending) < _AHEAD_BATCHES:
                pending.append(self._start_batch())

        top_up()
        while True:
            items, faults, ended = await asyncio.shield(pending.popleft())
            if ended:
                # Batches queued behind the end find the input ended too (nothing in them).
                while pending:
                    await asyncio.shield(pending.popleft())
                self._inflight = None
                yield items, faults, True
                if self._closed or not self.config.loop:
                    return
                if self._reader.pass_decoded == 0:
                    return  # an empty pass would loop forever
                await self._in_worker(self._reader.reopen)
                self.stats.loops += 1
                top_up()
                continue
            if self._closed:
                return
            top_up()
            yield items, faults, False

    async def _run(self) -> AsyncIterator[MediaItem | SourceFault]:
        info = await self.open()
        kinds_active = {"video": info.has_video, "audio": info.has_audio}
        video_q: collections.deque[_Video] = collections.deque()
        audio_q: collections.deque[_Audio] = collections.deque()
        base: tuple[int, int] | None = None  # (first pts, pacer time at it)
        last_pts_ns: int | None = None
        reported_errors = 0
        last_fault_ns: int | None = None
        realtime = self.config.realtime
        pacer = self.pacer

        def pop_next(flush: bool) -> _Decoded | None:
            # Merge the two kinds by pts: wait for the other kind unless flushing or over cap.
            if video_q and audio_q:
                return (
                    video_q.popleft()
                    if video_q[0].pts_ns <= audio_q[0].pts_ns
                    else audio_q.popleft()
                )
            if video_q and (
                flush or not kinds_active["audio"] or len(video_q) > _MAX_PENDING_VIDEO
            ):
                return video_q.popleft()
            if audio_q and (
                flush or not kinds_active["video"] or len(audio_q) > _MAX_PENDING_AUDIO
            ):
                return audio_q.popleft()
            return None

        try:
            async for batch, faults, ended in self._batches():
                for decoded in batch:
                    if isinstance(decoded, _Video):
                        video_q.append(decoded)
                    else:
                        audio_q.append(decoded)
                for fault in faults:
                    yield fault
                while (item := pop_next(ended)) is not None:
                    if realtime:
                        now_ns = pacer.now_ns()
                        deadline_ns = None if base is None else base[1] + item.pts_ns - base[0]
                        if deadline_ns is None or abs(deadline_ns - now_ns) > _REBASE_NS:
                            # First item, a timestamp jump, or a consumer that stalled: pace
                            # from here on rather than sleep through the jump or burst to
                            # catch up.
                            if base is not None:
                                self.stats.pacing_resets += 1
                            base = (item.pts_ns, now_ns)
                            deadline_ns = now_ns
                        await pacer.sleep_until(deadline_ns)
                        if self._closed:
                            return
                    last_pts_ns = item.pts_ns
                    yield self._emit(item, pacer.now_ns())
                errors = self.stats.decode_errors + self.stats.read_errors
                # One fault per second of media at most, summing what was skipped since.
                due = last_fault_ns is None or (
                    last_pts_ns is not None and last_pts_ns - last_fault_ns >= _FAULT_INTERVAL_NS
                )
                if errors > reported_errors and due:
                    last_fault_ns = last_pts_ns if last_pts_ns is not None else 0
                    yield SourceFault(
                        "decode_error",
                        f"{self.display}: skipped {errors - reported_errors} bad packet(s)"
                        f" ({self.stats.last_error})",
                        last_pts_ns,
                    )
                    reported_errors = errors
                if not realtime:
                    await asyncio.sleep(0)
            if self._reader.decoded == 0:
                if self.stats.decode_errors or self.stats.read_errors:
                    raise SourceError(
                        f"{self.display}: nothing could be decoded "
                        f"({self.stats.decode_errors + self.stats.read_errors} errors, last: "
                        f"{self.stats.last_error})"
                    )
                raise SourceError(f"{self.display}: contains no decodable frames or samples")
        finally:
            video_q.clear()
            audio_q.clear()

    def _emit(self, item: _Decoded, arrival_ns: int) -> MediaItem:
        if isinstance(item, _Video):
            assert item.luma is not None
            assert item.thumb is not None
            return VideoFrame(
                source_id=self.name,
                pts_ns=item.pts_ns,
                arrival_ns=arrival_ns,
                luma=item.luma,
                thumb=item.thumb,
                clock=self.clock,
            )
        assert item.samples is not None
        return audio_chunk(
            self.name,
            item.pts_ns,
            arrival_ns,
            item.samples,
            item.sample_rate,
            self.clock,
            counted_end_ns=item.end_ns,
        )


class MediaSourceFactory:
    """Source type ``media`` (entry point ``crossmodald.sources``)."""

    config_model = MediaSourceConfig

    @classmethod
    def create(cls, config: MediaSourceConfig, *, clock: Pacer | None = None) -> MediaSource:
        """A media source paced by ``clock`` (None: real time).

        Raises:
            SourceError: ``url`` is a local path that does not exist or is a directory: a
                source that cannot exist is refused when it is built (``POST /v1/sources``
                answers 422, a reload is rejected), not reported later as a failed stream.
        """
        path = _local_path(config.url)
        if path is not None:
            display = redact_url(config.url)
            if not path.exists():
                raise SourceError(f"{display}: no such file")
            if path.is_dir():
                raise SourceError(f"{display}: is a directory, not a media file")
        return MediaSource(config, clock if clock is not None else MonotonicPacer())


#: ``scheme:`` at the start of a URL: FFmpeg reads it as a protocol (``rtsp://``, ``pipe:0``,
#: ``concat:a|b``), not as a file name.
_PROTOCOL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _local_path(url: str) -> Path | None:
    """The file ``url`` names when it is a plain path (no protocol), else None."""
    if _PROTOCOL.match(url):
        return None
    return Path(url)
