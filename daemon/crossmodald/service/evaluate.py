"""Evaluation: run an analysis plugin over labelled media and print its accuracy.

Three tasks, each with its metric:

``speech``
    Frame-level (10 ms) precision, recall and F1 of the plugin's ``speech`` segments against
    the union of the speaker turns of an RTTM file.
``lipsync``
    For talking-head clips (taken as in sync), the audio is shifted by known amounts and the
    plugin's ``sync.offset`` events must follow: the share of estimates within one frame (40 ms
    at 25 fps) of the applied shift, per ``method`` named in the events, and the median estimate
    on the unshifted clips.
``speaker``
    Two talking heads side by side with the audio of one of them (composed with PyAV into a
    temporary file): the share of speech frames on which the plugin's open ``speaker`` span
    (``data.track_id`` and ``data.box`` = ``[x, y, w, h]``) is on the face whose audio plays,
    and on no other face.

Media goes through the daemon's own path: :class:`~crossmodald.ingest.media.MediaSource` decodes
(and, for ``lipsync``, moves the audio by its ``audio_shift_ms``) and the
:class:`~crossmodald.window.Windower` cuts the windows, so a plugin sees exactly the
:class:`~crossmodald.media.Window` values ``crossmodald analyze`` gives it; windows of all
streams of an evaluation are batched into one :meth:`Plugin.infer` call per window index, as the
runtime batches them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, TextIO

import av
import numpy as np
import numpy.typing as npt

from crossmodald.bus.events import Event, Phase
from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.frames import audio_chunk, to_mono_f32, video_frame_from_luma
from crossmodald.ingest.media import MediaSource
from crossmodald.media import (
    NS_PER_MS,
    NS_PER_S,
    AudioChunk,
    ClockKind,
    F32Array,
    StreamInfo,
    VideoFrame,
    Window,
)
from crossmodald.service.config import MediaSourceConfig
from crossmodald.window import Windower

ENTRY_POINT_GROUP = "crossmodald.plugins"

#: Frame step of the frame-level speech metric.
SPEECH_FRAME_NS = 10 * NS_PER_MS

Task = Literal["speech", "lipsync", "speaker"]


class EvalError(Exception):
    """Evaluation could not run (bad media, bad labels, unknown plugin); one line."""


# -- media --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedMedia:
    """A whole file decoded: grey frames and mono float32 audio on the file's own timeline.

    Attributes:
        path: The file.
        video: Frames in pts order (empty when the file has no video).
        audio: Mono samples (empty when the file has no audio).
        audio_rate: Sample rate (0 without audio).
        audio_start_ns: Pts of the first audio sample.
        frame_rate: Nominal frame rate, None without video.
    """

    path: Path
    video: tuple[VideoFrame, ...]
    audio: F32Array
    audio_rate: int
    audio_start_ns: int
    frame_rate: float | None

    @property
    def duration_ns(self) -> int:
        ends = [self.audio_start_ns + len(self.audio) * NS_PER_S // max(self.audio_rate, 1)]
        if self.video:
            step = round(NS_PER_S / self.frame_rate) if self.frame_rate else 0
            ends.append(self.video[-1].pts_ns + step)
        return max(ends)

    @property
    def width(self) -> int:
        return self.video[0].width if self.video else 0

    @property
    def height(self) -> int:
        return self.video[0].height if self.video else 0

    def stream_info(self, name: str) -> StreamInfo:
        return StreamInfo(
            name=name,
            kind="media",
            has_video=bool(self.video),
            has_audio=self.audio_rate > 0,
            frame_rate=self.frame_rate,
            sample_rate=self.audio_rate or None,
            width=self.width or None,
            height=self.height or None,
            clock=ClockKind.PTS,
        )


def _pts_ns(pts: int | None, time_base: Fraction | None) -> int | None:
    if pts is None or time_base is None:
        return None
    return int(pts * time_base.numerator * NS_PER_S // time_base.denominator)


def decode_media(path: Path) -> DecodedMedia:
    """Decode a file's first video and first audio stream with PyAV.

    Raises:
        EvalError: The file is missing or FFmpeg cannot read it.
    """
    if not path.is_file():
        raise EvalError(f"media {path}: no such file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise EvalError(f"media {path}: cannot open: {exc}") from exc
    frames: list[VideoFrame] = []
    pieces: list[F32Array] = []
    audio_rate = 0
    audio_start_ns: int | None = None
    frame_rate: float | None = None
    with container:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        if vstream is not None and vstream.average_rate:
            frame_rate = float(vstream.average_rate)
        wanted = [s for s in (vstream, astream) if s is not None]
        if not wanted:
            raise EvalError(f"media {path}: has neither video nor audio")
        try:
            for packet in container.demux(wanted):
                for decoded in packet.decode():
                    if isinstance(decoded, av.VideoFrame):
                        pts = _pts_ns(decoded.pts, decoded.time_base)
                        if pts is None:
                            continue
                        if decoded.format.name not in ("yuv420p", "yuvj420p", "gray", "yuv444p"):
                            decoded = decoded.reformat(format="yuv420p")
                        plane = decoded.planes[0]
                        luma = np.frombuffer(memoryview(plane), np.uint8).reshape(
                            -1, plane.line_size
                        )
                        luma = luma[: plane.height, : plane.width].copy()
                        frames.append(video_frame_from_luma(path.name, pts, 0, luma, ClockKind.PTS))
                    elif isinstance(decoded, av.AudioFrame):
                        data = decoded.to_ndarray()
                        planar = decoded.format.is_planar
                        mono = to_mono_f32(data, channels_first=planar)
                        if not planar and data.ndim == 2 and data.shape[0] == 1:
                            # Packed layouts come as (1, n * channels): de-interleave first.
                            channels = len(decoded.layout.channels)
                            mono = to_mono_f32(data.reshape(-1, channels), channels_first=False)
                        if audio_start_ns is None:
                            audio_start_ns = _pts_ns(decoded.pts, decoded.time_base) or 0
                        audio_rate = decoded.sample_rate
                        pieces.append(mono)
        except av.FFmpegError as exc:
            raise EvalError(f"media {path}: cannot decode: {exc}") from exc
    frames.sort(key=lambda f: f.pts_ns)
    audio = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    return DecodedMedia(path, tuple(frames), audio, audio_rate, audio_start_ns or 0, frame_rate)


def _windower(stream: str, info: StreamInfo, length_s: float, hop_s: float) -> Windower:
    """The daemon's windower for one evaluation stream (no lateness: nothing arrives late)."""
    if length_s <= 0 or hop_s <= 0:
        raise EvalError(f"window length and hop must be positive, got {length_s} s / {hop_s} s")
    try:
        return Windower(
            stream,
            length_ns=round(length_s * NS_PER_S),
            hop_ns=round(hop_s * NS_PER_S),
            lateness_ns=0,
            has_video=info.has_video,
            has_audio=info.has_audio,
            sample_rate=info.sample_rate,
            frame_rate=info.frame_rate,
            clock=info.clock,
        )
    except ValueError as exc:
        raise EvalError(str(exc)) from exc


def _complete(windows: Iterable[Window], first_ns: int, end_ns: int) -> list[Window]:
    """The windows that lie wholly inside the media ``[first_ns, end_ns)``.

    A shifted audio track starts the windower's grid earlier (or ends it later) than the
    picture; the partial windows at either end would score a shift against silence.
    """
    return [w for w in windows if w.start_ns >= first_ns and w.end_ns <= end_ns]


def make_windows(
    media: DecodedMedia,
    stream: str,
    *,
    length_s: float = 2.0,
    hop_s: float = 0.5,
    audio_shift_ms: float = 0.0,
) -> list[Window]:
    """Windows of already decoded media, cut by the daemon's :class:`Windower`.

    The frames and the audio (in 1024-sample chunks, moved earlier by ``audio_shift_ms``) are
    pushed in pts order, as a source delivers them; only windows wholly inside the media are
    kept (see :func:`stream_windows` for files).

    Args:
        media: The decoded file.
        stream: Stream name the windows carry.
        length_s: Window length.
        hop_s: Step between window starts.
        audio_shift_ms: Move the audio earlier by this much (positive: audio leads video, the
            ``audio_lead_ms`` sign); samples shifted in from outside the file are zero and
            flagged invalid.
    """
    info = media.stream_info(stream)
    windower = _windower(stream, info, length_s, hop_s)
    shift_ns = round(audio_shift_ms * NS_PER_MS)
    items: list[VideoFrame | AudioChunk] = list(media.video)
    rate = media.audio_rate
    for pos in range(0, len(media.audio), _CHUNK_SAMPLES):
        pts = media.audio_start_ns + pos * NS_PER_S // rate - shift_ns
        items.append(
            audio_chunk(
                stream, pts, 0, media.audio[pos : pos + _CHUNK_SAMPLES], rate, ClockKind.PTS
            )
        )
    items.sort(key=lambda item: item.pts_ns)
    windows: list[Window] = []
    for item in items:
        windows += windower.push(item, 0)
    windows += windower.flush(0)
    first = media.video[0].pts_ns if media.video else media.audio_start_ns
    return _complete(windows, first, media.duration_ns)


#: Audio chunk length when pushing decoded audio through the windower.
_CHUNK_SAMPLES = 1024


@dataclass(frozen=True, slots=True)
class StreamWindows:
    """A file run through the daemon's ingest and windowing, as ``crossmodald analyze`` would.

    Attributes:
        info: What the source reported on opening.
        windows: The windows wholly inside the media, in order.
        frames_pts_ns: Pts of every video frame the source delivered.
    """

    info: StreamInfo
    windows: list[Window]
    frames_pts_ns: list[int]


def stream_windows(
    path: Path,
    stream: str,
    *,
    length_s: float = 2.0,
    hop_s: float = 0.5,
    audio_shift_ms: float = 0.0,
) -> StreamWindows:
    """Decode ``path`` with the daemon's :class:`MediaSource` and cut it with its ``Windower``.

    ``audio_shift_ms`` is the source's own ``audio_shift_ms`` (positive: audio earlier, i.e.
    leading). Windows that reach outside the picture (or, without video, the audio) are left
    out, so every shift of a clip yields the same window grid.

    Raises:
        EvalError: The file is missing or cannot be decoded.
    """
    if not path.is_file():
        raise EvalError(f"media {path}: no such file")
    config = MediaSourceConfig(
        type="media",
        name="eval",
        url=str(path),
        realtime=False,
        audio_shift_ms=audio_shift_ms,
    )
    try:
        return asyncio.run(_stream_windows(config, stream, length_s, hop_s))
    except SourceError as exc:
        raise EvalError(f"media {path}: {exc}") from exc


async def _stream_windows(
    config: MediaSourceConfig, stream: str, length_s: float, hop_s: float
) -> StreamWindows:
    source = MediaSource(config)
    try:
        info = await source.open()
        info = dataclasses.replace(info, name=stream)
        windower = _windower(stream, info, length_s, hop_s)
        windows: list[Window] = []
        frames: list[int] = []
        audio_span: list[int] = []
        async for item in source:
            if isinstance(item, SourceFault):
                continue  # a skipped packet: the windows flag what is missing
            if isinstance(item, VideoFrame):
                frames.append(item.pts_ns)
            else:
                if not audio_span:
                    audio_span = [item.pts_ns, item.end_ns]
                audio_span[1] = max(audio_span[1], item.end_ns)
            windows += windower.push(item, 0)
        windows += windower.flush(0)
    finally:
        await source.aclose()
    if frames:
        step_ns = round(NS_PER_S / info.frame_rate) if info.frame_rate else 0
        first, end = min(frames), max(frames) + step_ns
    elif audio_span:
        first, end = audio_span[0], audio_span[1]
    else:
        first = end = 0
    return StreamWindows(info, _complete(windows, first, end), sorted(frames))


def compose_side_by_side(
    left: Path,
    right: Path,
    out: Path,
    *,
    audio_from: Literal["left", "right"],
    side_px: int = 384,
    duration_s: float | None = None,
) -> Path:
    """Write two talking heads side by side, with the audio of one, to ``out`` (H.264 + AAC).

    Each clip's picture is scaled to ``side_px`` x ``side_px``; the shorter clip sets the length.
    Only the luma is kept (the chroma planes are neutral grey), which is all analysis uses.

    Returns:
        ``out``.
    """
    a, b = decode_media(left), decode_media(right)
    if not a.video or not b.video:
        raise EvalError("compose: both clips need video")
    voice = a if audio_from == "left" else b
    if not voice.audio_rate:
        raise EvalError(f"compose: {voice.path.name} has no audio")
    fps = Fraction(a.frame_rate or 25).limit_denominator(1001)
    count = min(len(a.video), len(b.video))
    if duration_s is not None:
        count = min(count, int(duration_s * fps))
    import cv2

    with av.open(str(out), "w") as container:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 2 * side_px, side_px, "yuv420p"
        vs.options = {"crf": "18", "preset": "ultrafast"}
        aus = container.add_stream("aac", rate=voice.audio_rate, layout="mono")
        chroma = np.full((side_px // 2, 2 * side_px), 128, np.uint8)  # U then V planes
        for i in range(count):
            row = np.hstack(
                [
                    cv2.resize(src.video[i].luma, (side_px, side_px), interpolation=cv2.INTER_AREA)
                    for src in (a, b)
                ]
            )
            yuv = np.vstack([row, chroma])
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1) / fps
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        n = min(len(voice.audio), int(count / fps * voice.audio_rate))
        samples = (np.clip(voice.audio[:n], -1, 1) * 32767).astype(np.int16)
        step = 1024
        for pos in range(0, n, step):
            chunk = samples[pos : pos + step].reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            aframe.sample_rate = voice.audio_rate
            aframe.pts = pos
            aframe.time_base = Fraction(1, voice.audio_rate)
            container.mux(aus.encode(aframe))
        container.mux(aus.encode(None))
    return out


# -- running a plugin ---------------------------------------------------------------------------


def load_plugin(
    name: str | Any, overrides: Mapping[str, Any] | None = None, device: str = "cpu"
) -> Any:
    """Build plugin ``name`` from its entry point with a config of its defaults + ``overrides``.

    A plugin object already built (anything but a string) is returned as it is.

    Raises:
        EvalError: No such plugin, or its config or loading fails.
    """
    if not isinstance(name, str):
        return name
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    entry = found.get(name)
    if entry is None:
        raise EvalError(f"plugin {name!r}: not installed (installed: {', '.join(sorted(found))})")
    try:
        factory = entry.load()
        config = factory.config_model.model_validate({"type": name, **(overrides or {})})
        return factory.create(config, device)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"plugin {name!r}: cannot load: {first}") from exc


def run_plugin(
    plugin: Any,
    streams: Mapping[str, tuple[StreamInfo, Sequence[Window]]],
) -> dict[str, list[Event]]:
    """Run a loaded plugin over windows of several streams; events per stream.

    Window ``i`` of every stream goes into one ``infer`` call, as the runtime batches them.
    """
    # Plugin contract v2: run the plugin behind the providers its config requires.
    from crossmodald.runtime.compat import as_v2
    from crossmodald.runtime.harness import PluginChain, with_providers
    from crossmodald.runtime.plugin import PluginConfig

    plugin = as_v2(plugin)
    config = getattr(plugin, "config", None)
    device = str(getattr(plugin, "device", "cpu"))
    chain = PluginChain(
        with_providers(plugin, config, device)
        if isinstance(config, PluginConfig)
        else [(plugin, ())]
    )
    for info, _w in streams.values():
        chain.open(info)
    depth = max((len(w) for _i, w in streams.values()), default=0)
    for index in range(depth):
        chain.run([w[index] for _n, (_i, w) in streams.items() if index < len(w)])
    for name in streams:
        chain.close(name)
    return {name: chain.events[plugin.name].get(name, []) for name in streams}


# -- speech -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechMetrics:
    """Frame-level speech detection scores."""

    precision: float
    recall: float
    f1: float
    frames: int
    segments: list[tuple[float, float]] = field(default_factory=list)


def read_rttm(path: Path) -> list[tuple[float, float]]:
    """Speech turns (start_s, end_s) of an RTTM file (``SPEAKER`` lines).

    Raises:
        EvalError: Missing file or a malformed line (named by its number).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalError(f"labels {path}: cannot read: {exc.strerror or exc}") from exc
    turns: list[tuple[float, float]] = []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0] != "SPEAKER":
            continue
        try:
            onset, duration = float(parts[3]), float(parts[4])
        except (IndexError, ValueError):
            raise EvalError(f"labels {path}:{number}: not an RTTM SPEAKER line") from None
        if duration < 0:
            raise EvalError(f"labels {path}:{number}: negative duration {duration}")
        turns.append((onset, onset + duration))
    if not turns:
        raise EvalError(f"labels {path}: no SPEAKER lines")
    return turns


def speech_segments(events: Iterable[Event]) -> list[tuple[int, int]]:
    """(start_ns, end_ns) of each finished ``speech`` segment."""
    return [(e.start_ns, e.end_ns) for e in events if e.type == "speech" and e.phase is Phase.END]


def _mask(spans: Iterable[tuple[int, int]], frames: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros(frames, np.bool_)
    for start, end in spans:
        lo = max(0, math.floor(start / SPEECH_FRAME_NS))
        hi = min(frames, math.ceil(end / SPEECH_FRAME_NS))
        mask[lo:hi] = True
    return mask


def frame_scores(
    reference: Iterable[tuple[int, int]], hypothesis: Iterable[tuple[int, int]], total_ns: int
) -> SpeechMetrics:
    """Precision, recall and F1 of ``hypothesis`` spans against ``reference`` on 10 ms frames."""
    frames = max(1, math.ceil(total_ns / SPEECH_FRAME_NS))
    ref = _mask(reference, frames)
    hyp_spans = list(hypothesis)
    hyp = _mask(hyp_spans, frames)
    tp = int((ref & hyp).sum())
    precision = tp / int(hyp.sum()) if hyp.any() else (1.0 if not ref.any() else 0.0)
    recall = tp / int(ref.sum()) if ref.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    segs = [(s / NS_PER_S, e / NS_PER_S) for s, e in hyp_spans]
    return SpeechMetrics(precision, recall, f1, frames, segs)


def evaluate_speech(
    media: Path,
    labels: Path,
    *,
    plugin: str | Any = "speech",
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    length_s: float = 2.0,
    hop_s: float = 0.5,
) -> SpeechMetrics:
    """Run a speech plugin over ``media`` and score it against the RTTM ``labels``."""
    reference = [(round(s * NS_PER_S), round(e * NS_PER_S)) for s, e in read_rttm(labels)]
    cut = stream_windows(media, "eval", length_s=length_s, hop_s=hop_s)
    if not cut.info.has_audio:
        raise EvalError(f"media {media}: has no audio")
    loaded = load_plugin(plugin, overrides, device)
    events = run_plugin(loaded, {"eval": (cut.info, cut.windows)})["eval"]
    total_ns = max((w.end_ns for w in cut.windows), default=0)
    return frame_scores(reference, speech_segments(events), total_ns)


# -- lip sync -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffsetEstimate:
    """One ``sync.offset`` estimate against the shift that was applied."""

    clip: str
    shift_ms: float
    #: None when the window gave no estimate (it then counts as a miss).
    audio_lead_ms: float | None
    confidence: float
    method: str

    @property
    def error_ms(self) -> float:
        if self.audio_lead_ms is None:
            return math.inf
        return self.audio_lead_ms - self.shift_ms


@dataclass(frozen=True, slots=True)
class LipSyncMetrics:
    """How well offset estimates follow applied audio shifts."""

    tolerance_ms: float
    estimates: list[OffsetEstimate]

    def methods(self) -> list[str]:
        return sorted({e.method for e in self.estimates})

    def hit_rate(self, method: str | None = None) -> float:
        """Share of estimates within ``tolerance_ms`` of the applied shift."""
        chosen = [e for e in self.estimates if method is None or e.method == method]
        if not chosen:
            return 0.0
        return sum(abs(e.error_ms) <= self.tolerance_ms for e in chosen) / len(chosen)

    def median_unshifted_ms(self, method: str | None = None) -> float | None:
        zero = [
            e.audio_lead_ms
            for e in self.estimates
            if e.shift_ms == 0
            and e.audio_lead_ms is not None
            and (method is None or e.method == method)
        ]
        return statistics.median(zero) if zero else None


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


DEFAULT_SHIFTS_MS = (-400.0, -200.0, -80.0, 0.0, 120.0, 240.0, 400.0)


def evaluate_lipsync(
    clips: Sequence[Path],
    *,
    plugin: str | Any,
    shifts_ms: Sequence[float] = DEFAULT_SHIFTS_MS,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    length_s: float = 5.0,
    hop_s: float = 1.0,
    tolerance_ms: float | None = None,
) -> LipSyncMetrics:
    """Shift each clip's audio by each amount and collect the plugin's offset estimates.

    ``tolerance_ms`` defaults to one frame of the first clip (40 ms at 25 fps).
    """
    if not clips:
        raise EvalError("lipsync: no clips given")
    loaded = load_plugin(plugin, overrides, device)
    streams: dict[str, tuple[StreamInfo, Sequence[Window]]] = {}
    labels: dict[str, tuple[str, float]] = {}
    frame_ms = 40.0
    for n, clip in enumerate(clips):
        for shift in shifts_ms:
            name = f"{clip.stem}@{shift:+g}ms"
            cut = stream_windows(clip, name, length_s=length_s, hop_s=hop_s, audio_shift_ms=shift)
            if not cut.info.has_video or not cut.info.has_audio:
                raise EvalError(f"media {clip}: needs both video and audio")
            if n == 0 and cut.info.frame_rate:
                frame_ms = 1000.0 / cut.info.frame_rate
            streams[name] = (cut.info, cut.windows)
            labels[name] = (clip.name, float(shift))
    events = run_plugin(loaded, streams)
    estimates: list[OffsetEstimate] = []
    for name, evs in events.items():
        clip_name, shift = labels[name]
        for event in evs:
            if event.type != "sync.offset" or "audio_lead_ms" not in event.data:
                continue
            estimates.append(
                OffsetEstimate(
                    clip=clip_name,
                    shift_ms=shift,
                    audio_lead_ms=_float_or_none(event.data["audio_lead_ms"]),
                    confidence=float(event.data.get("confidence", 0.0)),
                    method=str(event.data.get("method", "?")),
                )
            )
    return LipSyncMetrics(tolerance_ms if tolerance_ms is not None else frame_ms, estimates)


# -- active speaker -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeakerMetrics:
    """Active-speaker frame accuracy on composed two-face clips."""

    correct: int
    speech_frames: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.speech_frames if self.speech_frames else 0.0


def speaker_spans(events: Iterable[Event]) -> list[tuple[int, int, float]]:
    """(start_ns, end_ns, box centre x) of each finished ``speaker`` span."""
    out: list[tuple[int, int, float]] = []
    for e in events:
        if e.type != "speaker" or e.phase is not Phase.END:
            continue
        box = e.data.get("box")
        if not (isinstance(box, list | tuple) and len(box) == 4):
            raise EvalError(f"speaker event without data.box [x, y, w, h]: {dict(e.data)}")
        out.append((e.start_ns, e.end_ns, float(box[0]) + float(box[2]) / 2))
    return out


def speaker_accuracy(
    frames_pts_ns: Sequence[int],
    speech: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int, float]],
    *,
    width: int,
    speaking_side: Literal["left", "right"],
) -> SpeakerMetrics:
    """Count speech frames where only the speaking side's face has an open ``speaker`` span."""
    correct = total = 0
    for pts in frames_pts_ns:
        if not any(s <= pts < e for s, e in speech):
            continue
        total += 1
        sides = {"left" if cx < width / 2 else "right" for s, e, cx in spans if s <= pts < e}
        correct += sides == {speaking_side}
    return SpeakerMetrics(correct, total)


def evaluate_speaker(
    left: Path,
    right: Path,
    *,
    plugin: str | Any,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    length_s: float = 2.0,
    hop_s: float = 0.5,
    side_px: int = 384,
    workdir: Path | None = None,
) -> SpeakerMetrics:
    """Compose both arrangements (voice of the left face, voice of the right) and score them.

    Speech presence comes from the ``speech`` plugin run on the same audio.
    """
    loaded = load_plugin(plugin, overrides, device)
    vad = load_plugin("speech", None, device)
    total = SpeakerMetrics(0, 0)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for side in ("left", "right"):
            path = compose_side_by_side(
                left, right, Path(tmp) / f"{side}.mp4", audio_from=side, side_px=side_px
            )
            cut = stream_windows(path, side, length_s=length_s, hop_s=hop_s)
            info, windows = cut.info, cut.windows
            events = run_plugin(loaded, {side: (info, windows)})[side]
            speech = speech_segments(run_plugin(vad, {side: (info, windows)})[side])
            covered_ns = windows[-1].end_ns if windows else 0
            pts = [p for p in cut.frames_pts_ns if p < covered_ns]
            m = speaker_accuracy(
                pts, speech, speaker_spans(events), width=info.width or 0, speaking_side=side
            )
            total = SpeakerMetrics(total.correct + m.correct, total.speech_frames + m.speech_frames)
    return total


# -- the command --------------------------------------------------------------------------------


def _clips(media: Path) -> list[Path]:
    if media.is_dir():
        found = sorted(media.glob("talkinghead_*.mp4"))
        if not found:
            raise EvalError(f"media {media}: no talkinghead_*.mp4 clips in this folder")
        return found
    return [media]


def eval_command(
    plugin: str | Any,
    media: Path,
    labels: Path | None = None,
    *,
    task: Task | None = None,
    shifts_ms: Sequence[float] = DEFAULT_SHIFTS_MS,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    window_s: float | None = None,
    hop_s: float | None = None,
    second: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """``crossmodald eval``: run ``plugin`` over labelled media and print its metrics.

    Args:
        plugin: Entry-point name of the plugin (``speech``, or an offset / speaker plugin).
        media: The file (or, for ``lipsync``, a folder of ``talkinghead_*.mp4`` clips).
        labels: RTTM reference for ``speech`` (the task is then inferred).
        task: ``speech``, ``lipsync`` or ``speaker``; inferred as ``speech`` from an RTTM.
        shifts_ms: Audio shifts applied for ``lipsync`` (positive: audio leads).
        overrides: Plugin config keys over its defaults (e.g. a weights path).
        device: torch device for the plugin.
        window_s: Window length (default 2 s; 5 s for ``lipsync``).
        hop_s: Window hop (default 0.5 s; 1 s for ``lipsync``).
        second: For ``speaker``: the right-hand clip (``media`` is the left one).
        out: Where to print (stdout by default).

    Returns:
        0 when the evaluation ran and printed its metrics, 2 on bad input (error printed to
        stderr as one line).
    """
    stream = out if out is not None else sys.stdout
    printer: Callable[[str], None] = lambda line: print(line, file=stream)  # noqa: E731
    if task is None:
        if labels is not None and labels.suffix.lower() == ".rttm":
            task = "speech"
        else:
            print("eval: say --task (speech, lipsync or speaker)", file=sys.stderr)
            return 2
    try:
        if task == "speech":
            if labels is None:
                raise EvalError("speech: needs an RTTM file as labels")
            sm = evaluate_speech(
                media,
                labels,
                plugin=plugin,
                overrides=overrides,
                device=device,
                length_s=window_s or 2.0,
                hop_s=hop_s or 0.5,
            )
            printer(f"speech  {media.name}  vs  {labels.name}")
            printer(f"  frames (10 ms)  {sm.frames}")
            printer(f"  segments        {len(sm.segments)}")
            printer(f"  precision       {sm.precision:.4f}")
            printer(f"  recall          {sm.recall:.4f}")
            printer(f"  F1              {sm.f1:.4f}")
        elif task == "lipsync":
            lm = evaluate_lipsync(
                _clips(media),
                plugin=plugin,
                shifts_ms=shifts_ms,
                overrides=overrides,
                device=device,
                length_s=window_s or 5.0,
                hop_s=hop_s or 1.0,
            )
            label = plugin if isinstance(plugin, str) else getattr(plugin, "name", "?")
            printer(f"lipsync  {label}  shifts {', '.join(f'{s:+g}' for s in shifts_ms)} ms")
            printer(f"  estimates       {len(lm.estimates)}")
            for method in lm.methods() or ["(none)"]:
                median = lm.median_unshifted_ms(method)
                med = "n/a" if median is None else f"{median:+.1f} ms"
                printer(
                    f"  {method:<16}within {lm.tolerance_ms:.0f} ms: {lm.hit_rate(method):.1%}"
                    f"   median at 0 shift: {med}"
                )
        else:
            if second is None:
                raise EvalError("speaker: needs a second clip for the right-hand face")
            am = evaluate_speaker(
                media,
                second,
                plugin=plugin,
                overrides=overrides,
                device=device,
                length_s=window_s or 2.0,
                hop_s=hop_s or 0.5,
            )
            printer(f"speaker  {media.name} | {second.name}")
            printer(f"  speech frames   {am.speech_frames}")
            printer(f"  accuracy        {am.accuracy:.1%}")
    except EvalError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    return 0
