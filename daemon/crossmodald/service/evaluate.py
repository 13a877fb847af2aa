"""Evaluation: run an analysis plugin over labelled media and print its accuracy.

Four tasks, each with its metric:

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

``transcript``
    Word error rate of the plugin's final ``transcript`` events (joined in time order) against
    a reference text, both normalised (:mod:`crossmodald.service.wer`: case, punctuation,
    numbers as words), and the real-time factor: wall time from the stream's start to its end
    over the media's length (model loading left out).

Nothing here decodes, windows or runs plugins itself: every task goes through
:func:`crossmodald.harness.run_plugins`, i.e. the daemon's own pipeline as ``crossmodald
analyze`` runs it (the media source decodes and, for ``lipsync``, moves the audio by its
``audio_shift_ms``; the windower cuts the windows; the plugin host batches the windows of all
streams of an evaluation into shared inference calls). Only events of windows wholly inside the
media count: a shifted audio track starts the window grid earlier (or ends it later) than the
picture, and a window partly outside would score a shift against silence.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import av
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from crossmodald.bus.events import Envelope, Event, Phase
from crossmodald.harness import HarnessResult, StreamRecord, run_plugins
from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.media import MediaSource
from crossmodald.media import (
    NS_PER_MS,
    NS_PER_S,
    AudioChunk,
    ClockKind,
    F32Array,
    StreamInfo,
    VideoFrame,
)
from crossmodald.progress import ProgressBar, media_duration_s
from crossmodald.runtime.registry import PluginLoadError, PluginRegistry
from crossmodald.service.config import (
    ConfigError,
    MediaSourceConfig,
    WindowConfig,
    format_validation_error,
)
from crossmodald.service.wer import WordErrors, wer

#: Frame step of the frame-level speech metric.
SPEECH_FRAME_NS = 10 * NS_PER_MS

Task = Literal["speech", "lipsync", "speaker", "transcript"]

_T = TypeVar("_T")


class EvalError(Exception):
    """Evaluation could not run (bad media, bad labels, unknown plugin); one line."""


# -- media --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedMedia:
    """A whole file as the daemon's media source delivers it (for composing test media).

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
        """End of the media: the later of the audio's end and one frame after the last frame."""
        ends = [self.audio_start_ns + len(self.audio) * NS_PER_S // max(self.audio_rate, 1)]
        if self.video:
            step = round(NS_PER_S / self.frame_rate) if self.frame_rate else 0
            ends.append(self.video[-1].pts_ns + step)
        return max(ends)

    @property
    def width(self) -> int:
        """Picture width in pixels (0 without video)."""
        return self.video[0].width if self.video else 0

    @property
    def height(self) -> int:
        """Picture height in pixels (0 without video)."""
        return self.video[0].height if self.video else 0

    def stream_info(self, name: str) -> StreamInfo:
        """What a source of this media would report, named ``name``."""
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


def decode_media(path: Path) -> DecodedMedia:
    """Read a whole file through the daemon's :class:`MediaSource` (no second decoder).

    Raises:
        EvalError: The file is missing or cannot be decoded (one line naming it).
    """
    if not path.is_file():
        raise EvalError(f"media {path}: no such file")
    config = MediaSourceConfig(type="media", name="eval", url=str(path), realtime=False)

    try:
        return _run_sync(lambda: _read_all(path, MediaSource(config)))
    except SourceError as exc:
        raise EvalError(f"media {path}: {exc}") from exc


def _run_sync(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to its end from synchronous code, even one a running loop called.

    Inside a running event loop (an async test, a notebook) it runs on a thread with a loop of
    its own, as ``asyncio.run`` cannot nest.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1, thread_name_prefix="eval") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _read_all(path: Path, source: MediaSource) -> DecodedMedia:
    try:
        info = await source.open()
        frames: list[VideoFrame] = []
        pieces: list[F32Array] = []
        audio_start_ns: int | None = None
        async for item in source:
            if isinstance(item, SourceFault):
                continue
            if isinstance(item, VideoFrame):
                frames.append(item)
            elif isinstance(item, AudioChunk):
                if audio_start_ns is None:
                    audio_start_ns = item.pts_ns
                pieces.append(item.samples)
    finally:
        await source.aclose()
    frames.sort(key=lambda f: f.pts_ns)
    audio = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    return DecodedMedia(
        path,
        tuple(frames),
        audio,
        info.sample_rate or 0 if pieces else 0,
        audio_start_ns or 0,
        info.frame_rate if frames else None,
    )


def compose_side_by_side(
    left: Path,
    right: Path,
    out: Path,
    *,
    audio_from: Literal["left", "right"] | Path,
    side_px: int = 384,
    duration_s: float | None = None,
) -> Path:
    """Write two talking heads side by side, with the audio of one, to ``out`` (H.264 + AAC);
    ``audio_from`` a path: that third clip's audio (a voice from off screen).

    Each clip's picture is scaled to ``side_px`` x ``side_px``; the shorter clip sets the length.
    Only the luma is kept (the chroma planes are neutral grey), which is all analysis uses.

    Returns:
        ``out``.
    """
    a, b = decode_media(left), decode_media(right)
    if not a.video or not b.video:
        raise EvalError("compose: both clips need video")
    if isinstance(audio_from, Path):
        voice = decode_media(audio_from)
    else:
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


# -- running plugins through the daemon ---------------------------------------------------------


def plugin_table(
    name: str, overrides: Mapping[str, Any] | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """The ``[[plugins]]`` table of plugin ``name`` on ``device`` with config ``overrides``."""
    return {"type": name, "device": device, **(overrides or {})}


def media_source(path: Path, name: str, audio_shift_ms: float = 0.0) -> MediaSourceConfig:
    """A file read as fast as it decodes, as ``crossmodald analyze`` reads it.

    Raises:
        EvalError: The file does not exist, or the shift is out of range.
    """
    if not path.is_file():
        raise EvalError(f"media {path}: no such file")
    try:
        return MediaSourceConfig(
            type="media", name=name, url=str(path), realtime=False, audio_shift_ms=audio_shift_ms
        )
    except ValidationError as exc:
        raise EvalError("; ".join(format_validation_error(exc))) from None


class Progress:
    """One line on ``out`` as each stream of an evaluation ends (``None``: quiet), and a
    progress bar of the media analysed while ``out`` is a terminal (:mod:`crossmodald.progress`).
    """

    def __init__(self, out: TextIO | None, labels: Mapping[str, str]) -> None:
        self.out = out
        self.labels = dict(labels)
        self.done = 0
        self.started = time.monotonic()
        self.bar = ProgressBar(None, {}, "eval")

    def expect(self, sources: Sequence[MediaSourceConfig], max_seconds: float | None) -> None:
        """The streams about to run: their durations (capped at ``max_seconds``) for the bar."""
        durations: dict[str, float | None] = {}
        for source in sources:
            duration = media_duration_s(source.url)
            if duration is not None and max_seconds is not None:
                duration = min(duration, max_seconds)
            durations[source.name] = duration
        self.bar = ProgressBar(self.out, durations, "eval")

    def __call__(self, envelope: Envelope) -> None:
        if self.out is None:
            return
        ended = envelope.type == "stream.end"
        if self.bar.enabled:
            end_ns = envelope.as_dict()["media"]["end_ns"]
            self.bar.advance(envelope.stream, int(end_ns) / NS_PER_S, ended=ended)
        if not ended:
            return
        self.done += 1
        label = self.labels.get(envelope.stream, envelope.stream)
        elapsed = time.monotonic() - self.started
        self.bar.close()
        print(
            f"eval: {label} done ({self.done}/{len(self.labels)}, {elapsed:.0f} s)",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        """Clear the bar."""
        self.bar.close()


def run_streams(
    sources: Sequence[MediaSourceConfig],
    tables: Sequence[Mapping[str, Any]],
    *,
    length_s: float,
    hop_s: float,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    progress: Progress | None = None,
    streams_at_once: int | None = None,
) -> HarnessResult:
    """Run plugin ``tables`` over ``sources`` in one daemon (see :mod:`crossmodald.harness`);
    at most ``streams_at_once`` of them open at a time (None: all).

    Raises:
        EvalError: Bad window settings, a plugin that cannot be set up, or a stream that failed.
    """
    if length_s <= 0 or hop_s <= 0:
        raise EvalError(f"window length and hop must be positive, got {length_s} s / {hop_s} s")
    try:
        # Windows close as soon as the media is past them: nothing arrives late from a file.
        window = WindowConfig.model_validate(
            {"length_s": length_s, "hop_s": hop_s, "lateness_s": 0.0}
        )
    except ValidationError as exc:
        raise EvalError("; ".join(format_validation_error(exc, ("window",)))) from None
    if progress is not None:
        progress.expect(sources, max_seconds)
    try:
        result = _run_sync(
            lambda: run_plugins(
                sources,
                tables,
                window=window,
                registry=registry,
                max_seconds=max_seconds,
                on_event=progress,
                streams_at_once=streams_at_once,
            )
        )
    except ConfigError as exc:
        raise EvalError(exc.errors[0] if exc.errors else str(exc)) from None
    except PluginLoadError as exc:
        raise EvalError(str(exc)) from None
    finally:
        if progress is not None:
            progress.close()
    return result


def check_result(result: HarnessResult) -> None:
    """Raise the first failure of a harness run (a stream that failed, refused or errored).

    Raises:
        EvalError: Something failed.
    """
    failures = result.failures()
    if failures:
        raise EvalError(failures[0])


def complete_end_ns(record: StreamRecord, length_s: float, hop_s: float) -> int:
    """End of the last window of the daemon's grid that lies wholly inside the stream's media.

    The windower's grid starts at the first delivered pts rounded down to the hop.
    """
    span = record.media_span_ns()
    first = record.first_pts_ns
    if span is None or first is None:
        return 0
    length_ns, hop_ns = round(length_s * NS_PER_S), round(hop_s * NS_PER_S)
    origin = (first // hop_ns) * hop_ns
    last_k = (span[1] - length_ns - origin) // hop_ns
    # The first window wholly inside starts at or after the media's start.
    if origin + last_k * hop_ns < span[0]:
        return 0
    return origin + last_k * hop_ns + length_ns


def inside(event: Event, span: tuple[int, int] | None) -> bool:
    """Whether an event's media span lies wholly inside ``span``."""
    return span is not None and event.start_ns >= span[0] and event.end_ns <= span[1]


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
    plugin: str = "speech",
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    length_s: float = 2.0,
    hop_s: float = 0.5,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    progress: TextIO | None = None,
) -> SpeechMetrics:
    """Run a speech plugin over ``media`` and score it against the RTTM ``labels``.

    The score covers the windows wholly inside the media (or its first ``max_seconds``).
    """
    reference = [(round(s * NS_PER_S), round(e * NS_PER_S)) for s, e in read_rttm(labels)]
    source = media_source(media, "eval")
    result = run_streams(
        [source],
        [plugin_table(plugin, overrides, device)],
        length_s=length_s,
        hop_s=hop_s,
        registry=registry,
        max_seconds=max_seconds,
        progress=Progress(progress, {"eval": media.name}),
    )
    record = result.streams["eval"]
    if record.info is not None and not record.info.has_audio:
        raise EvalError(f"media {media}: has no audio")
    check_result(result)
    total_ns = complete_end_ns(record, length_s, hop_s)
    segments = [s for s in speech_segments(result.events("eval")) if s[0] < total_ns]
    return frame_scores(reference, segments, total_ns)


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
class ClipOffsets:
    """One clip's estimates in a lip-sync evaluation.

    A small ``spread_ms`` beside a large ``median_error_ms`` is a stable bias: the estimates
    follow every applied shift, from a zero that is off for this clip (the speaker's own
    lip-to-sound timing, or an offset in the clip itself); a large spread is scatter.
    """

    clip: str
    windows: int
    #: Share of the windows within the tolerance of the applied shift.
    hit_rate: float
    #: Median error (estimate minus applied shift) over the windows with an estimate.
    median_error_ms: float | None
    #: Median estimate with no shift applied.
    median_unshifted_ms: float | None
    #: Median absolute deviation of the errors around their median.
    spread_ms: float | None


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

    def per_clip(self, method: str | None = None) -> list[ClipOffsets]:
        """One summary per clip, in the order the clips first appear."""
        by_clip: dict[str, list[OffsetEstimate]] = {}
        for e in self.estimates:
            if method is None or e.method == method:
                by_clip.setdefault(e.clip, []).append(e)
        out = []
        for clip, chosen in by_clip.items():
            # The clip's own metrics: the same share and median-at-0 rules as the whole set's.
            own = LipSyncMetrics(self.tolerance_ms, chosen)
            finite = [e.error_ms for e in chosen if e.audio_lead_ms is not None]
            median = statistics.median(finite) if finite else None
            out.append(
                ClipOffsets(
                    clip=clip,
                    windows=len(chosen),
                    hit_rate=own.hit_rate(),
                    median_error_ms=median,
                    median_unshifted_ms=own.median_unshifted_ms(),
                    spread_ms=(
                        None
                        if median is None
                        else statistics.median(abs(x - median) for x in finite)
                    ),
                )
            )
        return out

    def relative_hit_rate(self, method: str | None = None) -> float | None:
        """Share of the shifted windows (shift not 0) whose estimate, minus its clip's own
        median reading at 0 shift, is within ``tolerance_ms`` of the shift: whether the
        estimates follow a change of the offset, whatever each clip reads when unshifted (the
        issue's figure is the absolute one, :meth:`hit_rate`). Windows without an estimate, and
        those of a clip with no reading at 0 shift, count as misses; None with no shifted window.
        """
        chosen = [e for e in self.estimates if method is None or e.method == method]
        shifted = [e for e in chosen if e.shift_ms != 0]
        if not shifted:
            return None
        base = {
            c.clip: c.median_unshifted_ms
            for c in LipSyncMetrics(self.tolerance_ms, chosen).per_clip()
        }
        hits = 0
        for e in shifted:
            zero = base.get(e.clip)
            if e.audio_lead_ms is not None and zero is not None:
                hits += abs(e.audio_lead_ms - zero - e.shift_ms) <= self.tolerance_ms
        return hits / len(shifted)

    def median_unshifted_ms(self, method: str | None = None) -> float | None:
        """The median reading of the unshifted windows (None without one)."""
        zero = self._unshifted(method)
        return statistics.median(zero) if zero else None

    def median_abs_unshifted_ms(self, method: str | None = None) -> float | None:
        """The median |reading| of the unshifted windows: how far in-sync media reads from 0,
        whichever side (the issue's "median |offset|"; None without one)."""
        zero = self._unshifted(method)
        return statistics.median(abs(x) for x in zero) if zero else None

    def _unshifted(self, method: str | None) -> list[float]:
        return [
            e.audio_lead_ms
            for e in self.estimates
            if e.shift_ms == 0
            and e.audio_lead_ms is not None
            and (method is None or e.method == method)
        ]


def _ms(value: float | None, *, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


DEFAULT_SHIFTS_MS = (-400.0, -200.0, -80.0, 0.0, 120.0, 240.0, 400.0)
#: The lipsync task opens at most this many of its (clip, shift) streams at a time: each holds
#: its input, decoded pictures and open windows (about 0.1 GB for a 512x512 clip with 5 s
#: windows), so a folder of many clips would otherwise need memory in proportion to its size.
STREAMS_AT_ONCE = 8


def evaluate_lipsync(
    clips: Sequence[Path],
    *,
    plugin: str,
    shifts_ms: Sequence[float] = DEFAULT_SHIFTS_MS,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    length_s: float = 5.0,
    hop_s: float = 1.0,
    tolerance_ms: float | None = None,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    progress: TextIO | None = None,
    also: Sequence[Mapping[str, Any]] = (),
) -> LipSyncMetrics:
    """Shift each clip's audio by each amount and collect the plugin's offset estimates.

    Every (clip, shift) pair is one stream of one daemon run, so the plugin host batches
    their windows together; :data:`STREAMS_AT_ONCE` of them run at a time, in order.
    ``tolerance_ms`` defaults to one frame of the first clip (40 ms at 25 fps). ``also``: more
    ``[[plugins]]`` tables run in the same daemon, over the same streams and windows; their
    estimates come in too, told apart by their ``method``.
    """
    if not clips:
        raise EvalError("lipsync: no clips given")
    sources: list[MediaSourceConfig] = []
    labels: dict[str, tuple[str, float]] = {}
    for n, clip in enumerate(clips):
        for k, shift in enumerate(shifts_ms):
            # Stream names are short and plain (config names allow no '@' or '+').
            name = f"clip{n}.shift{k}"
            sources.append(media_source(clip, name, audio_shift_ms=shift))
            labels[name] = (clip.name, float(shift))
    result = run_streams(
        sources,
        [plugin_table(plugin, overrides, device), *also],
        length_s=length_s,
        hop_s=hop_s,
        registry=registry,
        max_seconds=max_seconds,
        progress=Progress(
            progress,
            {name: f"{clip} shift {shift:+g} ms" for name, (clip, shift) in labels.items()},
        ),
        streams_at_once=STREAMS_AT_ONCE,
    )
    for name, record in result.streams.items():
        info = record.info
        if info is not None and not (info.has_video and info.has_audio):
            raise EvalError(f"media {labels[name][0]}: needs both video and audio")
    check_result(result)
    first = result.streams[sources[0].name].info
    frame_ms = 1000.0 / first.frame_rate if first is not None and first.frame_rate else 40.0
    estimates: list[OffsetEstimate] = []
    for name, record in result.streams.items():
        clip_name, shift = labels[name]
        span = record.media_span_ns()
        for event in result.events(name):
            if event.type != "sync.offset" or "audio_lead_ms" not in event.data:
                continue
            if not inside(event, span):
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
    """Active-speaker frame accuracy on composed two-face clips.

    Every speech frame is either ``correct`` (the voiced face alone speaks) or a miss of one
    kind: ``no_face`` (no face speaks: the decision let go), ``other_face`` (only the face
    that is not the voice speaks: a wrong pick) or ``both_faces``. ``by_voice``: the same per
    arrangement ("left" and "right" voiced), when these are the sum of both. With a voice from
    off screen (one arrangement, "off-screen") ``correct`` is no face speaking, ``other_face``
    one face speaking and ``no_face`` 0.
    """

    correct: int
    speech_frames: int
    no_face: int = 0
    other_face: int = 0
    both_faces: int = 0
    by_voice: tuple[tuple[str, SpeakerMetrics], ...] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.speech_frames if self.speech_frames else 0.0

    def __add__(self, other: SpeakerMetrics) -> SpeakerMetrics:
        return SpeakerMetrics(
            self.correct + other.correct,
            self.speech_frames + other.speech_frames,
            self.no_face + other.no_face,
            self.other_face + other.other_face,
            self.both_faces + other.both_faces,
        )

    def share(self, frames: int) -> str:
        """``frames`` as a percentage of the speech frames."""
        return f"{frames / self.speech_frames:.1%}" if self.speech_frames else "-"


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
    speaking_side: Literal["left", "right"] | None,
) -> SpeakerMetrics:
    """Count speech frames where only the speaking side's face has an open ``speaker`` span,
    and the misses by kind (see :class:`SpeakerMetrics`). ``speaking_side`` None: the voice
    is from off screen, and a frame is correct when no face speaks (one face speaking counts
    as ``other_face``)."""
    counts = {"correct": 0, "none": 0, "other": 0, "both": 0}
    total = 0
    for pts in frames_pts_ns:
        if not any(s <= pts < e for s, e in speech):
            continue
        total += 1
        sides = {"left" if cx < width / 2 else "right" for s, e, cx in spans if s <= pts < e}
        if not sides:
            counts["none" if speaking_side is not None else "correct"] += 1
        elif len(sides) == 2:
            counts["both"] += 1
        else:
            counts["correct" if sides == {speaking_side} else "other"] += 1
    return SpeakerMetrics(counts["correct"], total, counts["none"], counts["other"], counts["both"])


def evaluate_speaker(
    left: Path,
    right: Path,
    *,
    plugin: str,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    length_s: float = 2.0,
    hop_s: float = 0.5,
    side_px: int = 384,
    workdir: Path | None = None,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    progress: TextIO | None = None,
    audio_shift_ms: float = 0.0,
    off_screen: Path | None = None,
) -> SpeakerMetrics:
    """Compose both arrangements (voice of the left face, voice of the right) and score them.

    Speech presence comes from the ``speech`` plugin, run in the same daemon on the same
    windows as the speaker plugin. ``audio_shift_ms``: the composed streams' audio played this
    much earlier (an out-of-sync stream); speech frames are counted on the shifted audio.
    ``off_screen``: one arrangement instead, the two faces with this third clip's voice (a
    voice from off screen), where a speech frame is correct when no face speaks.
    """
    tables = [plugin_table(plugin, overrides, device)]
    if plugin != "speech":
        tables.append(plugin_table("speech", None, device))
    total = SpeakerMetrics(0, 0)
    by_voice: list[tuple[str, SpeakerMetrics]] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        # (stream name, whose audio plays, the face that should speak)
        arrangements: list[
            tuple[str, Literal["left", "right"] | Path, Literal["left", "right"] | None]
        ]
        if off_screen is None:
            arrangements = [("left", "left", "left"), ("right", "right", "right")]
        else:
            arrangements = [("off-screen", off_screen, None)]
        for name, audio_from, side in arrangements:
            label = f"{side}-hand voice" if side is not None else "voice from off screen"
            if progress is not None:
                print(f"eval: composing {label}", file=progress, flush=True)
            path = compose_side_by_side(
                left,
                right,
                Path(tmp) / f"{name}.mp4",
                audio_from=audio_from,
                side_px=side_px,
                duration_s=max_seconds,
            )
            result = run_streams(
                [media_source(path, name, audio_shift_ms)],
                tables,
                length_s=length_s,
                hop_s=hop_s,
                registry=registry,
                max_seconds=max_seconds,
                progress=Progress(progress, {name: label}),
            )
            check_result(result)
            record = result.streams[name]
            events = result.events(name)
            covered_ns = complete_end_ns(record, length_s, hop_s)
            speech = [s for s in speech_segments(events) if s[0] < covered_ns]
            pts = sorted(p for p in record.video_pts_ns if p < covered_ns)
            width = record.info.width if record.info is not None else None
            m = speaker_accuracy(
                pts, speech, speaker_spans(events), width=width or 0, speaking_side=side
            )
            total += m
            by_voice.append((name, m))
    return replace(total, by_voice=tuple(by_voice))


# -- transcript ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptMetrics:
    """Word errors and speed of a transcript plugin on one file."""

    errors: WordErrors
    hypothesis: str
    media_s: float
    wall_s: float
    finals: int

    @property
    def rtf(self) -> float:
        """Real-time factor: wall seconds per media second (below 1: faster than real time)."""
        return self.wall_s / self.media_s if self.media_s > 0 else math.inf


def read_reference(path: Path) -> str:
    """The reference text of a transcript evaluation (UTF-8; '#' lines are comments).

    Raises:
        EvalError: Missing, unreadable or empty file.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"reference {path}: cannot read: {exc}") from exc
    text = " ".join(line for line in lines if not line.lstrip().startswith("#")).strip()
    if not text:
        raise EvalError(f"reference {path}: no text")
    return text


class _Clock(Progress):
    """Progress that also notes when the streams start and end (monotonic)."""

    def __init__(self, out: TextIO | None, labels: Mapping[str, str]) -> None:
        super().__init__(out, labels)
        self.first_start: float | None = None
        self.last_end: float | None = None

    def __call__(self, envelope: Envelope) -> None:
        if envelope.type == "stream.start" and self.first_start is None:
            self.first_start = time.monotonic()
        elif envelope.type == "stream.end":
            self.last_end = time.monotonic()
        super().__call__(envelope)


def evaluate_transcript(
    media: Path,
    reference: Path,
    *,
    plugin: str = "transcript",
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    length_s: float = 2.0,
    hop_s: float = 0.5,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    progress: TextIO | None = None,
) -> TranscriptMetrics:
    """Run a transcript plugin over ``media`` and score its finals against ``reference``."""
    text = read_reference(reference)
    clock = _Clock(progress, {"eval": media.name})
    result = run_streams(
        [media_source(media, "eval")],
        [plugin_table(plugin, {"partials": False, **(overrides or {})}, device)],
        length_s=length_s,
        hop_s=hop_s,
        registry=registry,
        max_seconds=max_seconds,
        progress=clock,
    )
    record = result.streams["eval"]
    if record.info is not None and not record.info.has_audio:
        raise EvalError(f"media {media}: has no audio")
    check_result(result)
    finals = sorted(
        (e for e in result.events("eval") if e.type == "transcript" and e.phase is Phase.END),
        key=lambda e: e.start_ns,
    )
    hypothesis = " ".join(str(e.data.get("text", "")).strip() for e in finals).strip()
    span = record.audio_span_ns
    media_s = (span[1] - span[0]) / NS_PER_S if span is not None else 0.0
    started, ended = clock.first_start, clock.last_end
    wall_s = ended - started if started is not None and ended is not None else 0.0
    return TranscriptMetrics(wer(text, hypothesis), hypothesis, media_s, wall_s, len(finals))


# -- the command --------------------------------------------------------------------------------


def _clips(media: Path) -> list[Path]:
    if media.is_dir():
        found = sorted(media.glob("talkinghead_*.mp4"))
        if not found:
            raise EvalError(f"media {media}: no talkinghead_*.mp4 clips in this folder")
        return found
    return [media]


def eval_command(
    plugin: str,
    media: Path,
    labels: Path | None = None,
    *,
    task: Task | None = None,
    shifts_ms: Sequence[float] | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    window_s: float | None = None,
    hop_s: float | None = None,
    second: Path | None = None,
    max_seconds: float | None = None,
    registry: PluginRegistry | None = None,
    out: TextIO | None = None,
    progress: TextIO | None = None,
    also: Sequence[tuple[str, Mapping[str, Any]]] = (),
    off_screen: Path | None = None,
) -> int:
    """``crossmodald eval``: run ``plugin`` over labelled media and print its metrics.

    Args:
        plugin: Entry-point name of the plugin (``speech``, or an offset / speaker plugin).
        media: The file (or, for ``lipsync``, a folder of ``talkinghead_*.mp4`` clips).
        labels: RTTM reference for ``speech``, a text for ``transcript`` (the task is then
            inferred).
        task: ``speech``, ``lipsync``, ``speaker`` or ``transcript``; inferred as ``speech``
            from an RTTM and as ``transcript`` from a ``.txt`` or the ``transcript`` plugin.
        shifts_ms: Audio shifts (positive: audio leads): for ``lipsync`` each one in turn
            (None: :data:`DEFAULT_SHIFTS_MS`); for ``speaker`` one, both voices played that
            much out of sync (None: in sync); no other task takes any.
        overrides: Plugin config keys over its defaults (e.g. a weights path).
        device: torch device for the plugin.
        window_s: Window length (default 2 s; 5 s for ``lipsync``).
        hop_s: Window hop (default 0.5 s; 1 s for ``lipsync``).
        second: For ``speaker``: the right-hand clip (``media`` is the left one).
        max_seconds: Analyse only the first this many seconds of each clip.
        registry: Where plugins are found (default: installed entry points).
        out: Where to print (stdout by default).
        progress: Where a line goes as each clip (each shift, for ``lipsync``) is done
            (None: nowhere).
        also: For ``lipsync``: more plugins (name, config overrides) run in the same daemon
            over the same windows, their figures printed beside ``plugin``'s (e.g. the
            Light-ASD scan and the weight-free method beside a lip-sync model).
        off_screen: For ``speaker``: instead of either face's voice, this third clip's (a
            voice from off screen); a speech frame is correct when no face speaks.

    Returns:
        0 when the evaluation ran and printed its metrics, 2 on bad input (error printed to
        stderr as one line).
    """
    if max_seconds is not None and not max_seconds > 0:
        print(f"eval: --max-seconds must be positive, got {max_seconds:g}", file=sys.stderr)
        return 2
    common: dict[str, Any] = {
        "overrides": overrides,
        "device": device,
        "registry": registry,
        "max_seconds": max_seconds,
        "progress": progress,
    }
    stream = out if out is not None else sys.stdout
    printer: Callable[[str], None] = lambda line: print(line, file=stream)  # noqa: E731
    if task is None:
        if labels is not None and labels.suffix.lower() == ".rttm":
            task = "speech"
        elif plugin == "transcript" or (labels is not None and labels.suffix.lower() == ".txt"):
            task = "transcript"
        else:
            print("eval: say --task (speech, lipsync, speaker or transcript)", file=sys.stderr)
            return 2
    names = [plugin, *(name for name, _ in also)]
    if also and task != "lipsync":
        print(f"eval: --also is for --task lipsync, not {task}", file=sys.stderr)
        return 2
    if off_screen is not None and task != "speaker":
        print(f"eval: --off-screen is for --task speaker, not {task}", file=sys.stderr)
        return 2
    if len(set(names)) != len(names):
        print(f"eval: each plugin once: {', '.join(names)}", file=sys.stderr)
        return 2
    if shifts_ms is not None and (
        task not in ("lipsync", "speaker")
        or not shifts_ms
        or (task == "speaker" and len(shifts_ms) != 1)
    ):
        print(
            "eval: --shifts is for --task lipsync (any number) and speaker (one), "
            f"got {len(shifts_ms)} for {task}",
            file=sys.stderr,
        )
        return 2
    try:
        if task == "speech":
            if labels is None:
                raise EvalError("speech: needs an RTTM file as labels")
            sm = evaluate_speech(
                media,
                labels,
                plugin=plugin,
                length_s=window_s or 2.0,
                hop_s=hop_s or 0.5,
                **common,
            )
            printer(f"speech  {media.name}  vs  {labels.name}")
            printer(f"  frames (10 ms)  {sm.frames}")
            printer(f"  segments        {len(sm.segments)}")
            printer(f"  precision       {sm.precision:.4f}")
            printer(f"  recall          {sm.recall:.4f}")
            printer(f"  F1              {sm.f1:.4f}")
        elif task == "transcript":
            if labels is None:
                raise EvalError("transcript: needs a reference text file")
            tm = evaluate_transcript(
                media,
                labels,
                plugin=plugin,
                length_s=window_s or 2.0,
                hop_s=hop_s or 0.5,
                **common,
            )
            e = tm.errors
            printer(f"transcript  {media.name}  vs  {labels.name}")
            printer(f"  hypothesis      {tm.hypothesis}")
            printer(f"  finals          {tm.finals}")
            printer(f"  reference words {e.reference_words}")
            printer(
                f"  errors          {e.errors} (substitutions {e.substitutions}, "
                f"deletions {e.deletions}, insertions {e.insertions})"
            )
            printer(f"  WER             {e.wer:.2%}")
            printer(f"  media           {tm.media_s:.2f} s")
            printer(f"  wall            {tm.wall_s:.2f} s (model load not counted)")
            printer(f"  RTF             {tm.rtf:.3f}")
        elif task == "lipsync":
            shifts_ms = DEFAULT_SHIFTS_MS if shifts_ms is None else shifts_ms
            lm = evaluate_lipsync(
                _clips(media),
                plugin=plugin,
                shifts_ms=shifts_ms,
                length_s=window_s or 5.0,
                hop_s=hop_s or 1.0,
                also=[plugin_table(name, extra, device) for name, extra in also],
                **common,
            )
            shown = plugin + "".join(f" + {name}" for name, _ in also)
            printer(f"lipsync  {shown}  shifts {', '.join(f'{s:+g}' for s in shifts_ms)} ms")
            printer(f"  estimates       {len(lm.estimates)}")
            for method in lm.methods() or ["(none)"]:
                median = lm.median_unshifted_ms(method)
                magnitude = lm.median_abs_unshifted_ms(method)
                med = (
                    "n/a"
                    if median is None or magnitude is None
                    else f"{median:+.1f} ms (|offset| {magnitude:.1f} ms)"
                )
                printer(
                    f"  {method:<16}within {lm.tolerance_ms:.0f} ms: {lm.hit_rate(method):.1%}"
                    f"   median at 0 shift: {med}"
                )
                relative = lm.relative_hit_rate(method)
                if relative is not None:
                    printer(
                        f"  {'':<16}relative to each clip's own reading at 0 shift, shifted "
                        f"windows: {relative:.1%} within {lm.tolerance_ms:.0f} ms"
                    )
            for method in lm.methods():
                rows = lm.per_clip(method)
                label = f"  per clip, {method} (ms)"
                width = max(len(label) - 4, *(len(c.clip) for c in rows))
                printer(
                    label.ljust(width + 4)
                    + f" {'windows':>7} {'within':>7} {'error':>8} {'at 0':>8} {'spread':>7}"
                )
                for c in rows:
                    printer(
                        f"    {c.clip:<{width}} {c.windows:>7} {c.hit_rate:>7.1%} "
                        f"{_ms(c.median_error_ms):>8} {_ms(c.median_unshifted_ms):>8} "
                        f"{_ms(c.spread_ms, signed=False):>7}"
                    )
            if lm.methods():
                printer("  spread: the errors' median distance from their median")
                printer("  (a large error with a small spread: a stable bias of that clip)")
        else:
            if second is None:
                raise EvalError("speaker: needs a second clip for the right-hand face")
            shift = shifts_ms[0] if shifts_ms else 0.0
            am = evaluate_speaker(
                media,
                second,
                plugin=plugin,
                length_s=window_s or 2.0,
                hop_s=hop_s or 0.5,
                audio_shift_ms=shift,
                off_screen=off_screen,
                **common,
            )
            out_of_sync = f"  audio {shift:+g} ms" if shift else ""
            voice = f"  voice of {off_screen.name}" if off_screen is not None else ""
            printer(f"speaker  {media.name} | {second.name}{voice}{out_of_sync}")
            printer(f"  speech frames   {am.speech_frames}")
            printer(f"  accuracy        {am.accuracy:.1%}")
            if off_screen is None:
                printer(
                    f"  {'voice':<8} {'frames':>7} {'correct':>8} {'no face':>8} {'other':>8} "
                    f"{'both':>8}"
                )
                for side, m in (*am.by_voice, ("all", am)):
                    printer(
                        f"  {side:<8} {m.speech_frames:>7} {m.share(m.correct):>8} "
                        f"{m.share(m.no_face):>8} {m.share(m.other_face):>8} "
                        f"{m.share(m.both_faces):>8}"
                    )
                printer("  voice: the side whose audio plays; correct: that face alone speaks;")
                printer("  no face: none does; other: only the face that is not the voice; both:")
                printer("  both faces at once")
            else:
                printer(f"  {'no face':>8} {'one face':>9} {'both':>8}")
                printer(
                    f"  {am.share(am.correct):>8} {am.share(am.other_face):>9} "
                    f"{am.share(am.both_faces):>8}"
                )
                printer("  the voice is neither face's (from off screen): correct is no face")
                printer("  speaking; one face: a face speaks for it; both: both faces at once")
    except EvalError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    return 0
