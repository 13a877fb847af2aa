"""Run plugins over media with the daemon's own pipeline: the public test harness.

:func:`run_plugins` builds a real :class:`~crossmodald.service.daemon.Daemon` from source
configs and ``[[plugins]]`` tables, runs it until every source has ended and returns what it
published. Nothing is copied from the daemon: its sources decode, its windower cuts the windows,
its plugin hosts batch the windows of all streams into shared inference calls, its sessions turn
results into events. The daemon runs as ``crossmodald analyze`` runs it: plugin queues block
ingest instead of dropping windows (:attr:`~crossmodald.runtime.host.Overload.BLOCK`), and no
HTTP API is served. ``crossmodald analyze``, ``crossmodald eval`` and ``crossmodald calibrate``
all go through here, so what they measure is what the daemon does.

Example::

    from crossmodald.harness import run_plugins_sync

    result = run_plugins_sync(
        [{"type": "media", "name": "clip", "url": "clip.mp4", "realtime": False}],
        [{"type": "speech", "device": "cpu"}],
    )
    segments = [e for e in result.events("clip") if e.type == "speech"]
"""

from __future__ import annotations

import asyncio
import gc
import statistics
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossmodald.bus.events import Envelope, Event, Phase
from crossmodald.ingest.base import Source, SourceFault
from crossmodald.media import (
    MAX_MEDIA_S,
    NS_PER_S,
    AudioChunk,
    ClockKind,
    MediaItem,
    StreamInfo,
    VideoFrame,
)
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.config import (
    DaemonConfig,
    SourceConfig,
    WindowConfig,
    validate_config,
)

__all__ = [
    "REFERENCE_METHODS",
    "HarnessResult",
    "OffsetEstimate",
    "StreamRecord",
    "estimate_offset",
    "event_of",
    "harness_config",
    "run_daemon",
    "run_plugins",
    "run_plugins_sync",
    "spread_ms",
]


@dataclass(slots=True)
class StreamRecord:
    """What one stream's source delivered, seen on its way into the daemon.

    Attributes:
        name: The stream (source) name.
        info: What the source reported on opening (None when it failed to open).
        video_pts_ns: Pts of every video frame delivered, in delivery order.
        audio_span_ns: (first sample, end of last sample) of the audio delivered, or None.
        first_pts_ns: Pts of the first frame or chunk delivered (the windower's grid starts at
            it, rounded down to the hop), or None.
        truncated: Whether ``max_seconds`` ended the stream before its source did.
    """

    name: str
    info: StreamInfo | None = None
    first_pts_ns: int | None = None
    video_pts_ns: list[int] = field(default_factory=list)
    audio_span_ns: tuple[int, int] | None = None
    truncated: bool = False

    def media_span_ns(self) -> tuple[int, int] | None:
        """The extent of the picture (first frame to one frame after the last), else the audio.

        Windows wholly inside it are the ones a shifted audio track cannot push outside the
        media; scoring on them keeps every shift of a clip on the same window grid.
        """
        if self.video_pts_ns:
            rate = self.info.frame_rate if self.info is not None else None
            step = round(NS_PER_S / rate) if rate else 0
            return min(self.video_pts_ns), max(self.video_pts_ns) + step
        return self.audio_span_ns

    def recorded_s(self) -> float:
        """Media seconds covered by every track the stream has (0 before both started)."""
        ends: list[int] = []
        starts: list[int] = []
        if self.video_pts_ns:
            starts.append(min(self.video_pts_ns))
            ends.append(max(self.video_pts_ns))
        if self.audio_span_ns is not None:
            starts.append(self.audio_span_ns[0])
            ends.append(self.audio_span_ns[1])
        if not starts:
            return 0.0
        return max(0, min(ends) - min(starts)) / NS_PER_S


@dataclass(frozen=True, slots=True)
class HarnessResult:
    """Everything a harness run published, in publication order.

    Attributes:
        code: The daemon's exit code (0: every stream ran to its end; 1: a stream failed or a
            plugin refused a stream).
        envelopes: Every envelope the bus published (stream start/end and faults included).
        streams: What each stream's source delivered, by stream name.
        errors: Why streams failed, by stream name (the daemon's own one-line reason).
    """

    code: int
    envelopes: tuple[Envelope, ...]
    streams: Mapping[str, StreamRecord]
    errors: Mapping[str, str]

    def events(self, stream: str | None = None) -> list[Event]:
        """The published events (of one stream, or all), in order, as :class:`Event` values."""
        return [event_of(e) for e in self.envelopes if stream is None or e.stream == stream]

    def failures(self) -> list[str]:
        """One line per problem: failed streams, refused streams and failed inference calls."""
        lines = [f"{name}: {message}" for name, message in self.errors.items()]
        for envelope in self.envelopes:
            if envelope.type == "plugin.error":
                data = envelope.as_dict()["data"]
                lines.append(f"{envelope.stream}: {data.get('message', 'plugin error')}")
        return lines


def event_of(envelope: Envelope) -> Event:
    """The :class:`Event` an envelope carries (its JSON parsed back)."""
    body = envelope.as_dict()
    media = body["media"]
    phase = body.get("phase")
    return Event(
        type=body["type"],
        stream=body["stream"],
        start_ns=int(media["start_ns"]),
        end_ns=int(media["end_ns"]),
        data=dict(body.get("data") or {}),
        phase=Phase(phase) if phase else None,
        clock=ClockKind(media.get("clock", "unknown")),
        closed_ns=int(body.get("closed_mono_ns") or 0),
    )


#: avsync methods whose offsets rest on one known instant (a flash with its beep, a clap): the
#: only ones trusted to measure an offset that is then corrected or configured away. The motion
#: method's correlation on whatever else is in view is no reference.
REFERENCE_METHODS = frozenset({"flash", "clap"})


@dataclass(frozen=True, slots=True)
class OffsetEstimate:
    """One offset for a whole recording, from its confident per-window ``sync.offset`` events.

    Attributes:
        audio_lead_ms: Median of the confident windows' offsets (> 0: audio ahead of video),
            None when no window was confident.
        spread_ms: Median absolute deviation of those offsets (0 when none).
        confidence: Median confidence of those windows (0 when none).
        windows: Confident windows used.
        windows_total: ``sync.offset`` events seen.
        method: The method that measured most of the confident windows ("" when none).
        reasons: Why windows had no usable offset (the plugin's own words), sorted.
    """

    audio_lead_ms: float | None
    spread_ms: float
    confidence: float
    windows: int
    windows_total: int
    method: str
    reasons: tuple[str, ...]


def spread_ms(leads: Sequence[float]) -> float:
    """The spread of windows' offsets (ms): median absolute deviation from their median."""
    median = statistics.median(leads)
    return float(statistics.median(abs(x - median) for x in leads))


def estimate_offset(
    events: Iterable[Event],
    *,
    min_confidence: float,
    methods: frozenset[str] = REFERENCE_METHODS,
) -> OffsetEstimate:
    """The median offset of the ``sync.offset`` events at or above ``min_confidence``.

    ``crossmodald calibrate`` and ``crossmodald fix --measure`` both measure this way.

    Args:
        events: Events of one stream (others than ``sync.offset`` are ignored).
        min_confidence: Windows below this confidence are left out.
        methods: Methods trusted (default :data:`REFERENCE_METHODS`).
    """
    results = [e.data for e in events if e.type == "sync.offset"]
    confident = [
        r
        for r in results
        if r.get("audio_lead_ms") is not None
        and float(r.get("confidence", 0.0)) >= min_confidence
        and str(r.get("method", "")) in methods
    ]
    reasons = tuple(sorted({str(r.get("reason") or "") for r in results} - {""}))
    if not confident:
        return OffsetEstimate(None, 0.0, 0.0, 0, len(results), "", reasons)
    leads = [float(r["audio_lead_ms"]) for r in confident]
    median = statistics.median(leads)
    used = [str(r["method"]) for r in confident]
    return OffsetEstimate(
        audio_lead_ms=median,
        spread_ms=spread_ms(leads),
        confidence=statistics.median(float(r["confidence"]) for r in confident),
        windows=len(confident),
        windows_total=len(results),
        method=max(sorted(set(used)), key=used.count),
        reasons=reasons,
    )


def harness_config(
    sources: Sequence[SourceConfig | Mapping[str, Any]],
    plugins: Sequence[Mapping[str, Any]],
    *,
    window: WindowConfig | Mapping[str, Any] | None = None,
    base: DaemonConfig | None = None,
) -> DaemonConfig:
    """The daemon config of a harness run: these sources and plugins, no API, no sinks.

    Args:
        sources: Source configs, or ``[[sources]]`` tables to validate.
        plugins: ``[[plugins]]`` tables (validated by each plugin's own model when the daemon
            is built).
        window: The ``[window]`` settings (default: the daemon's defaults).
        base: Where logging and runtime settings come from (default: the defaults).

    Raises:
        ConfigError: A source table or the window settings are invalid (every problem named).
    """
    base = base if base is not None else DaemonConfig()
    tables = [
        dict(source) if isinstance(source, Mapping) else source.model_dump() for source in sources
    ]
    if window is None:
        window_table = base.window.model_dump()
    elif isinstance(window, WindowConfig):
        window_table = window.model_dump()
    else:
        window_table = dict(window)
    return validate_config(
        {
            "sources": tables,
            "window": window_table,
            "plugins": [dict(p) for p in plugins],
            "api": {"enabled": False},
            "logging": base.logging.model_dump(),
            "runtime": base.runtime.model_dump(),
        },
        "harness",
    )


async def run_daemon(
    config: DaemonConfig,
    *,
    on_event: Callable[[Envelope], None] | None = None,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    config_source: str = "harness",
    freeze_gc: bool = False,
    on_media: Callable[[str, int], None] | None = None,
    streams_at_once: int | None = None,
) -> HarnessResult:
    """Run the daemon on ``config`` until every source ends; return what it published.

    The daemon is the one ``crossmodald run`` builds, with plugin queues that block ingest
    (nothing is dropped) and without the HTTP API.

    Args:
        config: The daemon config (see :func:`harness_config`).
        on_event: Called synchronously with every published envelope, in order.
        registry: Where plugins are found (default: installed entry points).
        max_seconds: End each stream after this many media seconds on every track it has
            (None: run to the end of the media).
        config_source: Names the config in error messages.
        freeze_gc: Move what exists once the plugins are loaded (modules, models) out of the
            garbage collector's sight; for one-shot processes like ``crossmodald analyze``.
        on_media: Called with (stream, media ns delivered since its first item) as each
            frame or audio chunk enters the daemon (progress of a long file).
        streams_at_once: At most this many sources are open at a time (in the config's
            order); the others wait to open until one ends. What a stream holds (its input,
            decoded pictures, open windows) then stays bounded however many sources there are
            (None: all at once).

    Raises:
        ConfigError: A plugin table is invalid.
        PluginLoadError: A plugin cannot be loaded.
        ValueError: ``max_seconds`` or ``streams_at_once`` is not positive.
    """
    from crossmodald.runtime.host import Overload
    from crossmodald.service.daemon import Daemon, default_source_factory

    if max_seconds is not None and not 0 < max_seconds <= MAX_MEDIA_S:  # also refuses NaN
        raise ValueError(
            f"max_seconds must be above 0 and at most {MAX_MEDIA_S:g}, got {max_seconds:g}"
        )
    if streams_at_once is not None and streams_at_once < 1:
        raise ValueError(f"streams_at_once must be at least 1, got {streams_at_once}")
    limit_ns = round(max_seconds * NS_PER_S) if max_seconds is not None else None
    gate = asyncio.Semaphore(streams_at_once) if streams_at_once is not None else None
    records: dict[str, StreamRecord] = {}
    envelopes: list[Envelope] = []

    def listen(envelope: Envelope) -> None:
        envelopes.append(envelope)
        if on_event is not None:
            on_event(envelope)

    build = default_source_factory()  # the daemon's own way to build a source

    def make_source(source_config: SourceConfig) -> Source:
        record = StreamRecord(source_config.name)
        records[source_config.name] = record
        return _TapSource(build(source_config), record, limit_ns, on_media, gate)

    daemon = Daemon(
        config,
        registry=registry,
        source_factory=make_source,
        overload=Overload.BLOCK,
        serve_api=False,
        listeners=(listen,),
        config_source=config_source,
    )
    await daemon.load_plugins()
    if freeze_gc:
        gc.freeze()
    code = await daemon.run(asyncio.Event(), exit_when_sources_end=True)
    errors = {
        name: state.error for name, state in daemon.stream_states.items() if state.error is not None
    }
    ordered = {s.name: records.get(s.name, StreamRecord(s.name)) for s in config.sources}
    return HarnessResult(code, tuple(envelopes), ordered, errors)


async def run_plugins(
    sources: Sequence[SourceConfig | Mapping[str, Any]],
    plugins: Sequence[Mapping[str, Any]],
    *,
    window: WindowConfig | Mapping[str, Any] | None = None,
    on_event: Callable[[Envelope], None] | None = None,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    streams_at_once: int | None = None,
) -> HarnessResult:
    """Run plugins over media with the daemon's pipeline, until every source ends.

    Args:
        sources: Source configs or ``[[sources]]`` tables (a ``media`` source with
            ``realtime = false`` reads a file as fast as it decodes; its ``audio_shift_ms``
            moves the audio).
        plugins: ``[[plugins]]`` tables, e.g. ``{"type": "speech", "device": "cpu"}``.
        window: The ``[window]`` settings (default: the daemon's).
        on_event: Called with every published envelope as it is published (e.g. progress).
        registry: Where plugins are found (default: installed entry points; tests may add
            their own factories).
        max_seconds: End each stream after this many media seconds (None: the whole media).
        streams_at_once: At most this many sources open at a time (see :func:`run_daemon`).

    Returns:
        The events in publication order, what each source delivered, and the failures.

    Raises:
        ConfigError: A source, window or plugin table is invalid.
        PluginLoadError: A plugin cannot be loaded.
        ValueError: ``max_seconds`` or ``streams_at_once`` is not positive.
    """
    config = harness_config(sources, plugins, window=window)
    return await run_daemon(
        config,
        on_event=on_event,
        registry=registry,
        max_seconds=max_seconds,
        streams_at_once=streams_at_once,
    )


def run_plugins_sync(
    sources: Sequence[SourceConfig | Mapping[str, Any]],
    plugins: Sequence[Mapping[str, Any]],
    *,
    window: WindowConfig | Mapping[str, Any] | None = None,
    on_event: Callable[[Envelope], None] | None = None,
    registry: PluginRegistry | None = None,
    max_seconds: float | None = None,
    streams_at_once: int | None = None,
) -> HarnessResult:
    """:func:`run_plugins` in a new event loop, for scripts and synchronous tests.

    Must not be called from a running event loop (await :func:`run_plugins` there).
    """
    return asyncio.run(
        run_plugins(
            sources,
            plugins,
            window=window,
            on_event=on_event,
            registry=registry,
            max_seconds=max_seconds,
            streams_at_once=streams_at_once,
        )
    )


class _TapSource:
    """A source passed through unchanged, noting what it delivers and ending it on a limit.

    With a ``gate``, it holds one of the gate's places from before it opens until it is closed
    (the daemon closes every source it opened, whether it ended, failed or failed to open)."""

    def __init__(
        self,
        inner: Source,
        record: StreamRecord,
        limit_ns: int | None,
        on_media: Callable[[str, int], None] | None = None,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.name = inner.name
        self._inner = inner
        self._record = record
        self._limit_ns = limit_ns
        self._on_media = on_media
        self._gate = gate
        self._holding = False

    async def open(self) -> StreamInfo:
        if self._gate is not None and not self._holding:
            await self._gate.acquire()
            self._holding = True
        try:
            info = await self._inner.open()
        except BaseException:
            self._let_go()
            raise
        self._record.info = info
        return info

    def _let_go(self) -> None:
        if self._holding:
            self._holding = False
            assert self._gate is not None
            self._gate.release()

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        return self._items()

    async def _items(self) -> AsyncIterator[MediaItem | SourceFault]:
        record = self._record
        info = record.info
        first_ns: int | None = None
        heads = {"video": -1, "audio": -1}
        tracks = [
            kind
            for kind, present in (
                ("video", info is None or info.has_video),
                ("audio", info is None or info.has_audio),
            )
            if present
        ]
        async for item in self._inner:
            if isinstance(item, VideoFrame):
                record.video_pts_ns.append(item.pts_ns)
                end_ns, kind = item.pts_ns, "video"
            elif isinstance(item, AudioChunk):
                span = record.audio_span_ns
                record.audio_span_ns = (
                    (item.pts_ns, item.end_ns)
                    if span is None
                    else (min(span[0], item.pts_ns), max(span[1], item.end_ns))
                )
                end_ns, kind = item.end_ns, "audio"
            else:
                yield item
                continue
            if record.first_pts_ns is None:
                record.first_pts_ns = item.pts_ns
            if self._on_media is not None:
                self._on_media(self.name, end_ns - record.first_pts_ns)
            yield item
            if self._limit_ns is None:
                continue
            first_ns = item.pts_ns if first_ns is None else min(first_ns, item.pts_ns)
            heads[kind] = max(heads[kind], end_ns - first_ns)
            if min(heads[k] for k in tracks) >= self._limit_ns:
                record.truncated = True
                return

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._let_go()
