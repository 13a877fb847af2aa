"""Stream management: what runs, where it came from, and the ``/v1/sources`` control.

:class:`StreamState` is what ``/v1/streams`` shows about one stream; :class:`StreamManager`
(a part of :class:`~crossmodald.service.daemon.Daemon`) adds, stops and forgets streams, and
answers ``/v1/sources`` (see :mod:`crossmodald.api.sources`). The stream's own task (source ->
windower -> plugin hosts) is in :mod:`crossmodald.service.pipeline`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crossmodald.bus.events import JsonValue
from crossmodald.clock.drift import RateEstimator
from crossmodald.ingest.base import Source, source_info, source_metrics, source_status
from crossmodald.ingest.registry import SourceConfigBase, SourceRegistry
from crossmodald.media import NS_PER_S, ClockKind, StreamInfo
from crossmodald.redact import redact_text
from crossmodald.runtime.host import PluginHost
from crossmodald.status import MetricSpec
from crossmodald.window import Windower

#: Builds the Source of a validated ``[[sources]]`` table (the daemon's seam for tests).
SourceBuilder = Callable[[SourceConfigBase], Source]

#: Ended streams kept for /v1/streams beyond the running ones (oldest forgotten first).
MAX_ENDED_STREAMS = 64
#: Where a stream came from: the config file, the REST API, a publisher (WHIP), or the fleet's
#: shared source list (a lease this daemon holds, see :mod:`crossmodald.service.fleet`).
ORIGINS = ("config", "api", "publisher", "fleet")


@dataclass(slots=True)
class StreamState:
    """What /v1/streams shows about one stream."""

    name: str
    kind: str
    origin: str = "config"  # config, api, publisher (see ORIGINS)
    #: The validated source config, when the stream was built from one (restartable).
    source_config: SourceConfigBase | None = None
    state: str = "starting"  # starting, running, ended, failed
    error: str | None = None
    info: StreamInfo | None = None
    started_at: float = field(default_factory=time.time)
    video_frames: int = 0
    audio_chunks: int = 0
    audio_samples: int = 0
    faults: int = 0
    #: The stream's media span so far: the earliest item's time and the latest end (an audio
    #: chunk's last sample, a picture's time plus one frame). Extremes, not the last item's
    #: time, so they do not depend on how the source interleaved or cut its items.
    media_start_ns: int | None = None
    media_end_ns: int | None = None
    plugins: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    #: The running source (None before it is built and once the stream ended).
    source: Source | None = None
    #: The metrics the source declares (kept after it ended, with its last status).
    source_metrics: tuple[MetricSpec, ...] = ()
    #: The source's status when it was released (an ended stream shows its last one).
    last_source_status: dict[str, JsonValue] | None = None
    windower: Windower | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    #: The ``stream.end`` reason when ``stop_requested`` ends it: ``stopped`` (one stream
    #: stopped or removed) or ``daemon stopping``; consumers (the MQTT sink's Home Assistant
    #: view) keep a stream's entities only when the daemon stops.
    stop_reason: str = "stopped"
    task: asyncio.Task[None] | None = None
    #: The plugin hosts this stream's windows go to (swapped in place by a reload).
    hosts: list[PluginHost] = field(default_factory=list)
    #: Per-track clock rate against the daemon's monotonic clock (live streams only).
    video_rate: RateEstimator | None = None
    audio_rate: RateEstimator | None = None

    def attach_source(self, source: Source) -> None:
        """Remember the stream's source, for its status and declared metrics.

        Raises:
            SourceError: The source declares metrics that are not MetricSpec values.
        """
        self.source_metrics = source_metrics(source)
        self.source = source

    def release_source(self) -> None:
        """Keep the source's last status and let the source go (the stream ended)."""
        if self.source is not None:
            self.last_source_status = source_status(self.source)
            self.info = source_info(self.source) or self.info
            self.source = None

    def source_status(self) -> dict[str, JsonValue] | None:
        """What the source reports about itself (None: it has no status, or none yet)."""
        return source_status(self.source) if self.source is not None else self.last_source_status

    def clock_rates(self) -> dict[str, float | None]:
        """Each track's clock rate against the daemon's, ppm, with one standard error.

        From arrival times, so network and scheduling jitter widen the uncertainty. The A/V
        drift is the sync plugin's ``drift_ppm`` (``drift_uncertainty_ppm``), measured on the
        media itself; it is not repeated here.
        """
        out: dict[str, float | None] = {}
        for track, meter in (("video", self.video_rate), ("audio", self.audio_rate)):
            rate = meter.estimate() if meter else None
            out[f"{track}_ppm"] = round(rate.ppm, 1) if rate else None
            out[f"{track}_uncertainty_ppm"] = round(rate.uncertainty_ppm, 1) if rate else None
        return out

    def snapshot(self) -> dict[str, Any]:
        # What the source knows now (a WebRTC stream learns its size, rate and timing after
        # it opens), else what it said when it opened.
        info = (source_info(self.source) if self.source is not None else None) or self.info
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.kind,
            "origin": self.origin,
            "state": self.state,
            "error": self.error,
            "started_at": self.started_at,
            "has_video": info.has_video if info else None,
            "has_audio": info.has_audio if info else None,
            "frame_rate": info.frame_rate if info else None,
            "sample_rate": info.sample_rate if info else None,
            "width": info.width if info else None,
            "height": info.height if info else None,
            "clock": (info.clock if info else ClockKind.UNKNOWN).value,
            "video_frames": self.video_frames,
            "audio_chunks": self.audio_chunks,
            "audio_seconds": round(self.audio_samples / info.sample_rate, 3)
            if info and info.sample_rate
            else 0.0,
            "faults": self.faults,
            "media_time_s": round(self.media_end_ns / NS_PER_S, 3)
            if self.media_end_ns is not None
            else None,
            "plugins": list(self.plugins),
            "refused": dict(self.refused),
            # The source's own status (WebRTC: its transport estimate), as plugins report theirs.
            "source_status": self.source_status(),
            # Every plugin's own per-stream status, the same way for built-in and third-party.
            "plugin_status": {
                h.name: h.stream_status(self.name) for h in self.hosts if not h.silent
            },
            "clock_rates": self.clock_rates(),
        }
        if self.windower is not None:
            out["windows"] = self.windower.stats.as_dict()
        return out


def default_source_factory(pacer: Any = None, types: SourceRegistry | None = None) -> SourceBuilder:
    """Build sources by their type's factory (entry points; ``types`` instead when given)."""
    from crossmodald.ingest import create_source

    def factory(config: SourceConfigBase) -> Source:
        return create_source(config, clock=pacer, registry=types)

    return factory


class StreamManager:
    """Adds, stops and forgets streams; the ``/v1/sources`` control (a part of the daemon).

    The attributes below are the daemon's (set in its constructor); the stream's task itself is
    :meth:`crossmodald.service.pipeline.StreamPipeline._run_stream`.
    """

    stream_states: dict[str, StreamState]
    _source_factory: SourceBuilder
    _stopping: asyncio.Event
    _tg: asyncio.TaskGroup | None

    if TYPE_CHECKING:

        async def _run_stream(
            self, state: StreamState, make_source: Callable[[], Source]
        ) -> None: ...

    # -- streams -------------------------------------------------------------------------

    def _bind_factory(self, config: SourceConfigBase) -> Callable[[], Source]:
        return lambda: self._source_factory(config)

    def add_stream(
        self,
        name: str,
        kind: str,
        make_source: Callable[[], Source],
        *,
        origin: str = "api",
        config: SourceConfigBase | None = None,
    ) -> asyncio.Task[None]:
        """Start a stream while the daemon runs (configured sources, WHIP publishers, REST).

        Args:
            name: The stream's name (unique among running streams).
            kind: The source type, for /v1/streams.
            make_source: Builds the source (called in the stream's task).
            origin: ``config``, ``api`` or ``publisher``.
            config: The source config it was built from, if any (a reload with a new
                ``[window]`` can then restart it).

        Raises:
            RuntimeError: The daemon is not running or is stopping.
            ValueError: A stream of that name is still running, or ``origin`` is unknown.
        """
        if self._tg is None or self._stopping.is_set():
            raise RuntimeError("the daemon is not running")
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, got {origin!r}")
        old = self.stream_states.get(name)
        if old is not None and old.task is not None and not old.task.done():
            raise ValueError(f"stream {name!r} is already running")
        self._forget_ended()
        state = StreamState(name=name, kind=kind, origin=origin, source_config=config)
        self.stream_states.pop(name, None)  # re-inserted last: /v1/streams lists newest last
        self.stream_states[name] = state

        def make_attached() -> Source:
            source = make_source()
            state.attach_source(source)
            return source

        state.task = self._tg.create_task(
            self._run_stream(state, make_attached), name=f"stream:{name}"
        )
        # An ended stream keeps its source's last status, not the source itself.
        state.task.add_done_callback(lambda _: state.release_source())
        return state.task

    def start_configured(self, config: SourceConfigBase, origin: str) -> asyncio.Task[None]:
        """Start a stream from a validated source config; the source is built in its task.

        Raises:
            RuntimeError: The daemon is not running or is stopping.
            ValueError: A stream of that name is still running.
        """
        return self.add_stream(
            config.name, config.type, self._bind_factory(config), origin=origin, config=config
        )

    def _forget_ended(self) -> None:
        ended = [
            name
            for name, state in self.stream_states.items()
            if state.task is not None and state.task.done()
        ]
        for name in ended[: max(0, len(ended) - MAX_ENDED_STREAMS + 1)]:
            del self.stream_states[name]

    async def stop_stream(self, name: str) -> None:
        """Stop one stream: its open windows are finished and its sessions closed first.

        Raises:
            KeyError: No stream has that name.
        """
        state = self.stream_states.get(name)
        if state is None:
            raise KeyError(name)
        state.stop_requested.set()
        if state.task is not None:
            await asyncio.wait([state.task])

    async def remove_stream(self, name: str) -> StreamState:
        """Stop one stream and forget it (it leaves /v1/streams); returns its last state.

        Raises:
            KeyError: No stream has that name.
        """
        await self.stop_stream(name)
        return self.stream_states.pop(name)

    def source_metric_specs(self) -> dict[str, list[dict[str, object]]]:
        """Per stream, the metrics its source declares (read by ``/metrics``)."""
        return {
            name: [spec.as_dict() for spec in state.source_metrics]
            for name, state in self.stream_states.items()
            if state.source_metrics
        }

    # -- SourcesControl (for /v1/sources) ------------------------------------------------

    def sources(self) -> list[dict[str, Any]]:
        """Every stream with where it came from and its (redacted) source config."""
        return [source_entry(state) for state in self.stream_states.values()]

    async def start_source(self, config: SourceConfigBase) -> asyncio.Task[None] | None:
        """Start a stream from a source config given through the API (returns its task).

        The source is built before anything starts, so a source that cannot exist is refused.

        Raises:
            RuntimeError: The daemon is not running or is stopping.
            ValueError: A stream of that name is running.
            SourceError: The config describes a source that cannot exist.
        """
        if self._tg is None or self._stopping.is_set():
            raise RuntimeError("the daemon is not running")
        existing = self.stream_states.get(config.name)
        if existing is not None and existing.task is not None and not existing.task.done():
            raise ValueError(f"stream {config.name!r} is already running")
        source = self._source_factory(config)
        return self.add_stream(
            config.name, config.type, _prebuilt(source), origin="api", config=config
        )

    async def remove_source(self, name: str) -> dict[str, Any]:
        """Stop a stream (any origin) and forget it; returns its last entry.

        Raises:
            KeyError: No stream has that name.
        """
        return source_entry(await self.remove_stream(name))


def source_entry(state: StreamState) -> dict[str, Any]:
    """One stream as ``/v1/sources`` shows it: origin, state and its config, secrets hidden."""
    config = state.source_config.model_dump(mode="json") if state.source_config else None
    if config is not None:
        config = redact_config(config)
    return {
        "name": state.name,
        "type": state.kind,
        "origin": state.origin,
        "state": state.state,
        "error": state.error,
        "config": config,
    }


def _prebuilt(source: Source) -> Callable[[], Source]:
    return lambda: source


def redact_config(value: Any) -> Any:
    """A source config's JSON with the credentials in every URL-like string hidden."""
    # Every string that holds a URL (``url``, FFmpeg ``options``, a third party's keys).
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_config(item) for item in value]
    return value
