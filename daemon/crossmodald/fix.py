"""``crossmodald fix``: write a copy of a media file with its audio moved into sync.

The offset is given (``audio_lead_ms``, the project's one sign: > 0 when audio is ahead of video)
or measured with the same plugins as ``crossmodald analyze`` (:func:`measure_offset`, through
:func:`crossmodald.harness.run_plugins`: the avsync plugin's flash/beep and clap methods; the
motion method is no reference and is not trusted).

How the file is changed (:func:`fix_file`), never by re-encoding:

* Every packet of every stream is copied as it is (remuxed); only timestamps change.
* Audio ahead (``audio_lead_ms`` > 0): every audio stream's packet pts/dts move later by the
  offset. MP4/MOV write that as an empty edit at the head of the audio track; Matroska just
  stores the later timestamps.
* Audio behind (``audio_lead_ms`` < 0): moving the audio earlier would put its first packets
  before zero, which a file can only express by cutting them (an edit list in MP4, a trim
  elsewhere, sample-exact only by re-encoding most codecs). Instead every other stream (video,
  subtitles, data) and the chapters move *later* by the offset: the same relative correction,
  nothing cut, nothing re-encoded. The file then starts with ``-audio_lead_ms`` of audio before
  the first picture.
* Precision is the container's tick: exact to the sample in MP4 (the movie time scale is raised
  from FFmpeg's default 1 ms to the finest track time base, so edit lists do not round),
  within 0.5 ms in Matroska/WebM (1 ms timestamps).
* Known limit: in MP4, AAC's encoder priming (1024 samples, normally hidden by the edit list)
  plays as ~21 ms of near-silence just before delayed audio starts, because FFmpeg's MP4 muxer
  writes either a start delay or a priming skip for a track, not both. The audio itself is
  placed exactly.

Containers without per-packet timestamps (AVI, WAV, raw streams) cannot carry the correction
and are refused with the reason.

The equivalent tools' settings for the same correction (:class:`Correction`):

* FFmpeg: ``ffmpeg -i IN -itsoffset S -i IN -map 0 -map -0:a -map 1:a -c copy OUT`` with
  ``S = audio_lead_ms / 1000``: ``-itsoffset`` adds S seconds to the timestamps of the input it
  precedes (here the second input, whose audio is used), so a positive S delays the audio.
* OBS: the audio source's "Sync Offset" (Advanced Audio Properties) = ``audio_lead_ms``; a
  positive sync offset delays that source's audio, a negative one (down to -950 ms) plays it
  earlier.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import av.container

from crossmodald.harness import OffsetEstimate, estimate_offset, run_plugins

__all__ = [
    "Correction",
    "FixError",
    "FixReport",
    "MeasureError",
    "TerminalProgress",
    "fix_file",
    "measure_offset",
]

#: FFmpeg muxers whose packets carry their own timestamps, so a stream can start later.
SHIFTABLE_FORMATS = frozenset(
    {"mov", "mp4", "ipod", "ismv", "3gp", "matroska", "webm", "mpegts", "nut"}
)
#: Muxers of the MP4 family, whose edit lists use the movie time scale.
_MOV_FORMATS = frozenset({"mov", "mp4", "ipod", "ismv", "3gp"})
#: Stream tags a muxer writes itself (copying the input's would state the old value).
_COMPUTED_TAGS = frozenset({"duration", "encoder"})


class FixError(Exception):
    """The file cannot be fixed as asked; the message says why in one line."""


class MeasureError(FixError):
    """The offset could not be measured confidently enough to correct; the message says why."""


@dataclass(frozen=True, slots=True)
class Correction:
    """An offset to correct and the equivalent settings of other tools.

    Attributes:
        audio_lead_ms: The offset found in the input (> 0: audio ahead of video); the fix
            delays the audio by it (or, when negative, delays everything else by ``-it``).
    """

    audio_lead_ms: float

    @property
    def ffmpeg_itsoffset_s(self) -> float:
        """``-itsoffset`` for the audio input: positive delays the audio."""
        return self.audio_lead_ms / 1000.0

    @property
    def obs_sync_offset_ms(self) -> float:
        """OBS "Sync Offset" of the audio source: positive delays the audio."""
        return self.audio_lead_ms

    def ffmpeg_command(self, src: Path, dst: Path) -> str:
        """The FFmpeg command line that makes the same correction (streams copied)."""
        s = f"{self.ffmpeg_itsoffset_s:.6f}".rstrip("0").rstrip(".")
        return (
            f"ffmpeg -i {shlex.quote(str(src))} -itsoffset {s} -i {shlex.quote(str(src))} "
            f"-map 0 -map -0:a -map 1:a -c copy {shlex.quote(str(dst))}"
        )


@dataclass(frozen=True, slots=True)
class StreamAction:
    """What the fix did to one stream.

    Attributes:
        index: The stream's index in the input (and the output).
        kind: "video", "audio", "subtitle", "data" or "attachment".
        codec: The codec name.
        shift_ms: How far its timestamps moved (later), after rounding to its time base.
        packets: Packets copied.
    """

    index: int
    kind: str
    codec: str
    shift_ms: float
    packets: int


@dataclass(frozen=True, slots=True)
class FixReport:
    """What :func:`fix_file` wrote.

    Attributes:
        correction: The offset corrected.
        moved: "audio" (audio delayed), "video" (everything but audio delayed) or "none".
        applied_ms: The correction actually applied (audio shift minus video shift, in the
            container's ticks): the output's offset is the input's minus this.
        streams: One entry per stream.
        chapters: Chapters copied.
        reencoded: Streams that had to be re-encoded (none: every packet is copied).
    """

    correction: Correction
    moved: str
    applied_ms: float
    streams: tuple[StreamAction, ...]
    chapters: int
    reencoded: tuple[int, ...] = field(default=())


class TerminalProgress:
    """A one-line progress bar redrawn in place; draws nothing when ``out`` is no terminal."""

    def __init__(self, label: str, out: TextIO | None = None, width: int = 30) -> None:
        self._out = out if out is not None else sys.stderr
        self._label = label
        self._width = width
        self._shown = -1
        self.enabled = self._out.isatty()

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        percent = max(0, min(100, int(fraction * 100)))
        if percent == self._shown:
            return
        self._shown = percent
        filled = self._width * percent // 100
        bar = "#" * filled + "." * (self._width - filled)
        self._out.write(f"\r{self._label} [{bar}] {percent:3d}%")
        self._out.flush()

    def done(self) -> None:
        """End the line (only when a bar was drawn)."""
        if self.enabled and self._shown >= 0:
            self._out.write("\n")
            self._out.flush()
        self._shown = -1


async def measure_offset(
    path: Path,
    *,
    min_confidence: float = 0.5,
    min_windows: int = 3,
    max_spread_ms: float = 10.0,
    plugin: dict[str, Any] | None = None,
    progress: Callable[[float], None] | None = None,
) -> OffsetEstimate:
    """Measure a file's offset with the avsync plugin, as ``crossmodald analyze`` runs it.

    Only windows measured on a known instant (a flash with its beep, a clap:
    :data:`~crossmodald.harness.REFERENCE_METHODS`) count.

    Args:
        path: The media file.
        min_confidence: Windows below this confidence are left out.
        min_windows: Fewer confident windows than this is a refusal.
        max_spread_ms: Confident windows that disagree more than this (median absolute
            deviation) is a refusal: the file has no one offset to correct.
        plugin: The ``[[plugins]]`` table of avsync (default: its defaults).
        progress: Called with the fraction of the file analysed.

    Raises:
        MeasureError: Too few confident windows, or they disagree (the message says which).
        FixError: The file cannot be read.
    """
    duration_s = _duration_s(path)
    table = {"type": "avsync", **(plugin or {})}

    def on_event(envelope: Any) -> None:
        if progress is not None and duration_s and envelope.type == "sync.offset":
            body = envelope.as_dict()
            progress(min(1.0, int(body["media"]["end_ns"]) / 1e9 / duration_s))

    source = {"type": "media", "name": "fix", "url": str(path), "realtime": False}
    result = await run_plugins([source], [table], on_event=on_event)
    if result.code != 0:
        raise FixError(next(iter(result.failures()), f"{path}: analysis failed"))
    record = result.streams["fix"]
    if record.info is not None and not (record.info.has_audio and record.info.has_video):
        missing = "audio" if not record.info.has_audio else "video"
        raise MeasureError(f"{path}: has no {missing}; measuring an offset needs both")
    estimate = estimate_offset(result.events("fix"), min_confidence=min_confidence)
    why = f" ({'; '.join(estimate.reasons)})" if estimate.reasons else ""
    if estimate.audio_lead_ms is None:
        raise MeasureError(
            f"{path}: no flash/beep or clap measured with confidence >= {min_confidence:g} "
            f"in {estimate.windows_total} window(s){why}; give the offset with --audio-lead-ms"
        )
    if estimate.windows < min_windows:
        raise MeasureError(
            f"{path}: only {estimate.windows} of {estimate.windows_total} window(s) measured "
            f"an offset with confidence >= {min_confidence:g} (at least {min_windows} needed)"
            f"{why}; give the offset with --audio-lead-ms"
        )
    if estimate.spread_ms > max_spread_ms:
        raise MeasureError(
            f"{path}: the {estimate.windows} confident windows disagree (spread "
            f"{estimate.spread_ms:.1f} ms > {max_spread_ms:g} ms): no single offset to correct; "
            "give the offset with --audio-lead-ms"
        )
    return estimate


def _duration_s(path: Path) -> float | None:
    try:
        with av.open(str(path)) as container:
            return container.duration / 1e6 if container.duration else None
    except (OSError, av.error.FFmpegError) as exc:
        raise FixError(f"{path}: cannot open: {exc}") from None


def fix_file(
    src: Path,
    dst: Path,
    audio_lead_ms: float,
    *,
    force: bool = False,
    progress: Callable[[float], None] | None = None,
) -> FixReport:
    """Write ``dst``: ``src`` with its audio moved by ``audio_lead_ms`` into sync.

    Every packet is copied; only timestamps move (see the module docstring). The output is
    written to a temporary file beside ``dst`` and renamed into place when complete, so a
    failure leaves no partial file and an existing ``dst`` untouched.

    Args:
        src: The input file.
        dst: The output file; its extension picks the container.
        audio_lead_ms: The input's offset (> 0: audio ahead of video).
        force: Replace ``dst`` if it exists.
        progress: Called with the fraction of the input copied.

    Raises:
        FixError: ``dst`` exists (without ``force``) or is ``src``, a container cannot carry
            the correction or a stream, or the input cannot be read.
    """
    if not math.isfinite(audio_lead_ms) or abs(audio_lead_ms) > 60_000:
        raise FixError(
            f"audio_lead_ms must be a finite number of ms within ±60000, got {audio_lead_ms}"
        )
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise FixError(f"{dst}: is the input; write the corrected copy to another file")
    if dst.exists() and not force:
        raise FixError(f"{dst}: exists; pass --force to replace it")
    if not src.is_file():
        raise FixError(f"{src}: no such file")
    tmp = dst.with_name(f".{dst.stem}.fix-{os.getpid()}{dst.suffix}")
    try:
        report = _remux(src, tmp, dst, Correction(audio_lead_ms), progress)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report


def _remux(
    src: Path,
    tmp: Path,
    dst: Path,
    correction: Correction,
    progress: Callable[[float], None] | None,
) -> FixReport:
    lead_s = Fraction(correction.audio_lead_ms).limit_denominator(1_000_000) / 1000
    moved = "audio" if lead_s > 0 else "video" if lead_s < 0 else "none"
    try:
        inp = av.open(str(src))
    except (OSError, av.error.FFmpegError) as exc:
        raise FixError(f"{src}: cannot open: {exc}") from None
    with inp:
        if not inp.streams.audio:
            raise FixError(f"{src}: has no audio stream to move")
        try:
            out = av.open(str(tmp), "w")  # tmp keeps dst's extension: same muxer
        except (OSError, ValueError, av.error.FFmpegError) as exc:
            raise FixError(f"{dst}: cannot write: {exc}") from None
        with out:
            fmt = out.format.name.split(",")[0]
            if fmt not in SHIFTABLE_FORMATS:
                raise FixError(
                    f"{dst}: the {fmt!r} container has no per-packet timestamps and cannot "
                    "carry a start offset; write .mp4, .mov, .mkv, .webm or .ts"
                )
            if fmt in _MOV_FORMATS:
                # Edit lists are in the movie time scale (FFmpeg's default: 1 ms); the finest
                # track time base keeps a moved track's start exact.
                finest = max(
                    (s.time_base.denominator for s in inp.streams if s.time_base), default=1000
                )
                out.options["movie_timescale"] = str(max(1000, finest))
            out.metadata.update(_tags(inp.metadata))
            targets: dict[int, Any] = {}
            shifts: dict[int, int] = {}
            shift_s: dict[int, Fraction] = {}
            for stream in inp.streams:
                if stream.type not in ("video", "audio", "subtitle", "data", "attachment"):
                    raise FixError(
                        f"{src}: stream {stream.index} of type {stream.type!r} cannot be copied"
                    )
                try:
                    target = out.add_stream_from_template(stream)
                except (ValueError, av.error.FFmpegError) as exc:
                    raise FixError(
                        f"{dst}: cannot hold stream {stream.index} ({stream.type}, "
                        f"{stream.codec_context.name if stream.codec_context else '?'}): {exc}"
                    ) from None
                target.metadata.update(_tags(stream.metadata))
                target.disposition = stream.disposition
                targets[stream.index] = target
                delay_s = lead_s if stream.type == "audio" else -lead_s
                tb = stream.time_base or Fraction(1, 1_000_000)
                ticks = round(max(Fraction(0), delay_s) / Fraction(tb)) if delay_s > 0 else 0
                shifts[stream.index] = ticks
                shift_s[stream.index] = ticks * Fraction(tb)
            chapters = inp.chapters()
            video_shift = -lead_s if lead_s < 0 else Fraction(0)
            if chapters:
                out.set_chapters([_shifted_chapter(c, video_shift) for c in chapters])
            counts = dict.fromkeys(targets, 0)
            last_dts: dict[int, int] = {}
            duration_us = inp.duration or 0
            start_us = inp.start_time or 0
            try:
                for packet in inp.demux():
                    if packet.dts is None and packet.pts is None and packet.size == 0:
                        continue  # the demuxer's flush packet
                    index = packet.stream.index
                    ticks = shifts[index]
                    if ticks:
                        if packet.pts is not None:
                            packet.pts += ticks
                        if packet.dts is not None:
                            packet.dts += ticks
                    last = last_dts.get(index)
                    # Matroska stores no decode times and its demuxer leaves some unset;
                    # FFmpeg's muxers then guess one that can run backwards and refuse the
                    # packet. Any time after the previous one and not after the pts is a valid
                    # decode time; the pts itself is never changed.
                    if (
                        packet.dts is None
                        and packet.pts is not None
                        and last is not None
                        and last < packet.pts
                    ):
                        packet.dts = last + 1
                    if packet.dts is not None:
                        last_dts[index] = packet.dts
                    if (
                        progress is not None
                        and duration_us
                        and packet.dts is not None
                        and packet.time_base
                    ):
                        at_us = float(packet.dts * packet.time_base) * 1e6 - start_us
                        progress(max(0.0, min(1.0, at_us / duration_us)))
                    packet.stream = targets[index]
                    out.mux(packet)
                    counts[index] += 1
            except av.error.FFmpegError as exc:
                raise FixError(f"{src}: {exc}") from None
            if progress is not None:
                progress(1.0)
            kinds = {st.index: str(st.type) for st in inp.streams}
            actions = tuple(
                StreamAction(
                    index=st.index,
                    kind=kinds[st.index],
                    codec=st.codec_context.name if st.codec_context else "?",
                    shift_ms=float(shift_s[st.index]) * 1000,
                    packets=counts[st.index],
                )
                for st in inp.streams
            )
    audio_s = max((shift_s[i] for i in shift_s if kinds[i] == "audio"), default=Fraction(0))
    video_s = max((shift_s[i] for i in shift_s if kinds[i] != "audio"), default=Fraction(0))
    return FixReport(
        correction=correction,
        moved=moved,
        applied_ms=float(audio_s - video_s) * 1000,
        streams=actions,
        chapters=len(chapters),
    )


def _tags(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.lower() not in _COMPUTED_TAGS}


def _shifted_chapter(chapter: Any, shift_s: Fraction) -> Any:
    tb = chapter["time_base"] or Fraction(1, 1_000_000_000)
    ticks = round(shift_s / Fraction(tb))
    return {**chapter, "start": chapter["start"] + ticks, "end": chapter["end"] + ticks}
