"""The composition root: builds every part from a validated config and runs it.

Data path per stream: source -> windower -> every plugin host -> sessions -> bus -> subscribers
and sinks. Everything runs under one ``asyncio.TaskGroup``; shutdown goes in stages (stop
ingest, finish open windows, drain the plugins, flush the sinks, close the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crossmodald.bus.events import Envelope, Event, Phase
from crossmodald.clock.drift import RateEstimator
from crossmodald.ingest.base import Source, SourceError, SourceFault
from crossmodald.media import NS_PER_S, AudioChunk, ClockKind, StreamInfo, VideoFrame
from crossmodald.runtime.device import resolve_device
from crossmodald.runtime.host import Overload, PluginHost
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.config import DaemonConfig, SourceConfig
from crossmodald.window import Windower

log = logging.getLogger(__name__)

Listener = Callable[[Envelope], None]
SourceFactory = Callable[[SourceConfig], Source]


@dataclass(slots=True)
class StreamState:
    """What /v1/streams shows about one stream."""

    name: str
    kind: str
    state: str = "starting"  # starting, running, ended, failed
    error: str | None = None
    info: StreamInfo | None = None
    started_at: float = field(default_factory=time.time)
    video_frames: int = 0
    audio_chunks: int = 0
    audio_samples: int = 0
    faults: int = 0
    last_media_ns: int | None = None
    plugins: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    last_offset: dict[str, Any] | None = None
    alarm: bool = False
    windower: Windower | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Per-track clock rate against the daemon's monotonic clock (live streams only).
    video_rate: RateEstimator | None = None
    audio_rate: RateEstimator | None = None

    def clock_rates(self) -> dict[str, float | None]:
        """Transport view of the clocks: each track's rate error and the A/V drift, in ppm."""
        video = self.video_rate.estimate() if self.video_rate else None
        audio = self.audio_rate.estimate() if self.audio_rate else None
        return {
            "video_ppm": round(video.ppm, 1) if video else None,
            "audio_ppm": round(audio.ppm, 1) if audio else None,
            "av_drift_ppm": round(audio.ppm - video.ppm, 1) if audio and video else None,
        }

    def snapshot(self) -> dict[str, Any]:
        info = self.info
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.kind,
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
            "media_time_s": round(self.last_media_ns / NS_PER_S, 3)
            if self.last_media_ns is not None
            else None,
            "plugins": list(self.plugins),
            "refused": dict(self.refused),
            "sync": self.last_offset,
            "clock_rates": self.clock_rates(),
            "alarm": self.alarm,
        }
        if self.windower is not None:
            out["windows"] = self.windower.stats.as_dict()
        return out


def default_source_factory(pacer: Any = None) -> SourceFactory:
    from crossmodald.ingest import create_source

    def factory(config: SourceConfig) -> Source:
        return create_source(config, clock=pacer)

    return factory


class Daemon:
    """Builds the pipeline from a config and runs it (``run`` and ``analyze`` share it).

    Args:
        config: The validated daemon config.
        registry: Where plugins are found (entry points by default).
        source_factory: Builds a Source from a source config (real sources by default).
        overload: What plugin hosts do when their queue is full: drop the oldest windows (live)
            or make ingest wait (offline analysis, where nothing may be lost).
        serve_api: Start the HTTP API (events, streams, health).
        listeners: Called synchronously with every published envelope, in order (used by
            `analyze` to print events; nothing is dropped on this path).
        clock_ns: The daemon's monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        config: DaemonConfig,
        *,
        registry: PluginRegistry | None = None,
        source_factory: SourceFactory | None = None,
        overload: Overload = Overload.DROP_OLDEST,
        serve_api: bool = True,
        listeners: tuple[Listener, ...] = (),
        clock_ns: Callable[[], int] = time.monotonic_ns,
        config_source: str = "<config>",
    ) -> None:
        from crossmodald.bus.bus import EventBus

        self.config = config
        self.registry = registry or PluginRegistry.discover()
        self._plugin_configs = self.registry.validate(config.plugins, config_source)
        self._source_factory = source_factory or default_source_factory()
        self._overload = overload
        self._serve_api = serve_api and config.api.enabled
        self._listeners = listeners
        self._clock_ns = clock_ns
        self.bus = EventBus(
            replay_size=config.api.replay_size,
            subscriber_queue=config.api.subscriber_queue,
            slow_subscriber_s=config.api.slow_subscriber_s,
        )
        self.hosts: list[PluginHost] = []
        self.stream_states: dict[str, StreamState] = {}
        self._stopping = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._ready = False
        self.api_port: int | None = None
        self.failed_streams: list[str] = []

    # -- StreamsView (for the API) -------------------------------------------------------

    def streams(self) -> list[dict[str, Any]]:
        return [state.snapshot() for state in self.stream_states.values()]

    def ready(self) -> bool:
        return self._ready and not self._stopping.is_set()

    def plugin_stats(self) -> list[dict[str, Any]]:
        return [host.snapshot() for host in self.hosts]

    # -- events --------------------------------------------------------------------------

    def publish(self, event: Event) -> Envelope:
        envelope = self.bus.publish(event)
        state = self.stream_states.get(event.stream)
        if state is not None:
            if event.type == "sync.offset":
                state.last_offset = dict(event.data)
            elif event.type == "sync.alarm":
                state.alarm = event.phase is Phase.START
            elif event.type == "stream.fault":
                state.faults += 1
        for listener in self._listeners:
            listener(envelope)
        return envelope

    # -- lifecycle -----------------------------------------------------------------------

    async def load_plugins(self) -> None:
        """Resolve devices and load every enabled plugin (models included) off the event loop."""
        for loaded in self._plugin_configs:
            device = resolve_device(loaded.config.device)
            plugin = await asyncio.to_thread(self.registry.create, loaded, device)
            log.info("plugin %s loaded on %s", loaded.config.type, device)
            self.hosts.append(
                PluginHost(plugin, loaded.config, self.publish, overload=self._overload)
            )

    async def run(self, stop: asyncio.Event, *, exit_when_sources_end: bool = False) -> int:
        """Run until ``stop`` is set (or every source ended, when asked); returns an exit code."""
        from crossmodald.api.app import bound_port, build_app, serve
        from crossmodald.bus.sinks import JsonlSink

        if not self.hosts and self._plugin_configs:
            await self.load_plugins()
        runner = None
        async with asyncio.TaskGroup() as tg:
            host_tasks = [tg.create_task(h.run(), name=f"plugin:{h.name}") for h in self.hosts]
            sinks = [JsonlSink(cfg) for cfg in self.config.sinks]
            sink_tasks = [
                tg.create_task(sink.run(self.bus), name=f"sink:{cfg.path}")
                for sink, cfg in zip(sinks, self.config.sinks, strict=True)
            ]
            if self._serve_api:
                app = build_app(self.bus, self, self.config.api)
                runner = await serve(app, self.config.api.host, self.config.api.port)
                self.api_port = bound_port(runner)
                log.info("API listening on http://%s:%s", self.config.api.host, self.api_port)
            self._tg = tg
            stream_tasks = [
                self.add_stream(cfg.name, cfg.type, self._bind_factory(cfg))
                for cfg in self.config.sources
            ]
            self._ready = True
            stop_task = tg.create_task(stop.wait(), name="daemon:stop")
            if exit_when_sources_end:
                await asyncio.wait([stop_task, *stream_tasks], return_when=asyncio.FIRST_COMPLETED)
                while not stop.is_set() and not all(t.done() for t in stream_tasks):
                    await asyncio.wait(
                        [stop_task, *(t for t in stream_tasks if not t.done())],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            else:
                await stop_task
            # Stage 1: stop ingest; each stream flushes its open windows and closes its sessions.
            self._stopping.set()
            running = [s.task for s in self.stream_states.values() if s.task and not s.task.done()]
            for state in self.stream_states.values():
                state.stop_requested.set()
            if running:
                await asyncio.wait(running)
            # Stage 2: drain the plugins.
            for host in self.hosts:
                await host.aclose()
            if host_tasks:
                await asyncio.wait(host_tasks)
            # Stage 3: flush the sinks; stage 4: close the API and its subscribers.
            await self.bus.aclose("daemon stopping")
            if sink_tasks:
                await asyncio.wait(sink_tasks)
            stop_task.cancel()
            if runner is not None:
                await runner.cleanup()
        return 1 if self.failed_streams else 0

    # -- streams -------------------------------------------------------------------------

    def _bind_factory(self, config: SourceConfig) -> Callable[[], Source]:
        return lambda: self._source_factory(config)

    def add_stream(
        self, name: str, kind: str, make_source: Callable[[], Source]
    ) -> asyncio.Task[None]:
        """Start a stream while the daemon runs (configured sources, WHIP publishers, REST).

        Raises:
            RuntimeError: The daemon is not running or is stopping.
            ValueError: A stream of that name is still running.
        """
        if self._tg is None or self._stopping.is_set():
            raise RuntimeError("the daemon is not running")
        old = self.stream_states.get(name)
        if old is not None and old.task is not None and not old.task.done():
            raise ValueError(f"stream {name!r} is already running")
        state = StreamState(name=name, kind=kind)
        self.stream_states[name] = state
        state.task = self._tg.create_task(
            self._run_stream(state, make_source), name=f"stream:{name}"
        )
        return state.task

    async def stop_stream(self, name: str) -> None:
        """Stop one stream: its open windows are finished and its sessions closed first."""
        state = self.stream_states.get(name)
        if state is None:
            raise KeyError(name)
        state.stop_requested.set()
        if state.task is not None:
            await asyncio.wait([state.task])

    async def _run_stream(self, state: StreamState, make_source: Callable[[], Source]) -> None:
        name = state.name
        try:
            source = make_source()
            info = await source.open()
        except (SourceError, OSError, ValueError) as exc:
            self._fail_stream(state, str(exc))
            return
        state.info = info
        state.state = "running"
        if self._overload is Overload.DROP_OLDEST:  # live: arrival times mean something
            state.video_rate = RateEstimator() if info.has_video else None
            state.audio_rate = RateEstimator() if info.has_audio else None
        window_cfg = self.config.window
        windower = Windower(
            name,
            length_ns=round(window_cfg.length_s * NS_PER_S),
            hop_ns=round(window_cfg.hop_s * NS_PER_S),
            lateness_ns=round(window_cfg.lateness_s * NS_PER_S),
            has_video=info.has_video,
            has_audio=info.has_audio,
            sample_rate=info.sample_rate,
            frame_rate=info.frame_rate,
            clock=info.clock,
            max_gap_ns=round(window_cfg.max_gap_s * NS_PER_S),
        )
        state.windower = windower
        hosts: list[PluginHost] = []
        for host in self.hosts:
            reason = host.open_stream(info)
            if reason is None:
                hosts.append(host)
                state.plugins.append(host.name)
            else:
                state.refused[host.name] = reason
                self.publish(_fault(info, "plugin_refused", f"{host.name}: {name} {reason}"))
                if self._overload is Overload.BLOCK:
                    self.failed_streams.append(name)
                    state.error = f"{name}: {host.name} cannot analyse it: {reason}"
        self.publish(
            Event(
                type="stream.start",
                stream=name,
                start_ns=0,
                end_ns=0,
                data={
                    "source": state.kind,
                    "has_video": info.has_video,
                    "has_audio": info.has_audio,
                    "frame_rate": info.frame_rate,
                    "sample_rate": info.sample_rate,
                    "width": info.width,
                    "height": info.height,
                    "clock": info.clock.value,
                },
                clock=info.clock,
            )
        )
        pump = asyncio.create_task(
            self._pump(source, state, windower, hosts), name=f"ingest:{name}"
        )
        stopping = asyncio.create_task(state.stop_requested.wait(), name=f"ingest:{name}:stop")
        await asyncio.wait([pump, stopping], return_when=asyncio.FIRST_COMPLETED)
        reason = "end of stream"
        if not pump.done():
            pump.cancel()
            reason = "daemon stopping"
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            failure = await _exception_of(pump)
            if failure is not None:
                reason = "error"
                self._fail_stream(
                    state, str(failure) if isinstance(failure, SourceError) else repr(failure)
                )
        # Finish open windows, let the plugins see them, then close the sessions.
        for window in windower.flush(self._clock_ns()):
            for host in hosts:
                await host.submit(window)
        for host in hosts:
            await host.close_stream(name)
        with contextlib.suppress(Exception):
            await source.aclose()
        if state.state != "failed":
            state.state = "ended"
        last = state.last_media_ns or 0
        self.publish(
            Event(
                type="stream.end",
                stream=name,
                start_ns=last,
                end_ns=last,
                data={"reason": reason},
                clock=info.clock,
            )
        )

    async def _pump(
        self, source: Source, state: StreamState, windower: Windower, hosts: list[PluginHost]
    ) -> None:
        async for item in source:
            if isinstance(item, SourceFault):
                self.publish(_fault(state.info, item.kind, item.message, item.pts_ns, state.name))
                continue
            if isinstance(item, VideoFrame):
                state.video_frames += 1
                if state.video_rate is not None:
                    state.video_rate.add(item.pts_ns, item.arrival_ns)
            elif isinstance(item, AudioChunk):
                state.audio_chunks += 1
                state.audio_samples += len(item.samples)
                if state.audio_rate is not None:
                    state.audio_rate.add(item.end_ns, item.arrival_ns)
            state.last_media_ns = item.pts_ns
            windows = windower.push(item, self._clock_ns())
            for window in windows:
                for host in hosts:
                    await host.submit(window)

    def _fail_stream(self, state: StreamState, message: str) -> None:
        log.error("stream %s failed: %s", state.name, message)
        state.state = "failed"
        state.error = message
        self.failed_streams.append(state.name)
        self.publish(_fault(state.info, "error", message, None, state.name))


def _fault(
    info: StreamInfo | None,
    kind: str,
    message: str,
    pts_ns: int | None = None,
    stream: str | None = None,
) -> Event:
    at = pts_ns or 0
    return Event(
        type="stream.fault",
        stream=stream if stream is not None else (info.name if info else ""),
        start_ns=at,
        end_ns=at,
        data={"kind": kind, "message": message},
        clock=info.clock if info else ClockKind.UNKNOWN,
    )


async def _exception_of(task: asyncio.Task[None]) -> BaseException | None:
    try:
        await task
    except asyncio.CancelledError:
        return None
    except Exception as exc:
        return exc
    return None
