"""The composition root: builds every part from a validated config and runs it.

Data path per stream: source -> windower -> every plugin host -> sessions -> bus -> subscribers
and sinks. Everything runs under one ``asyncio.TaskGroup``; shutdown goes in stages, each with
its time budget from ``[service]`` (stop ingest and finish open windows, drain the plugins,
flush the sinks, close the API; see :mod:`crossmodald.service.lifecycle`). While running,
:meth:`Daemon.reload` applies a new config by changing only what differs
(:mod:`crossmodald.service.reload`), and streams can be added and stopped one by one (REST
``/v1/sources``, see :mod:`crossmodald.api.sources`). systemd hears about all of it through
:class:`~crossmodald.service.notify.Notifier` (READY, RELOADING, STOPPING, STATUS, WATCHDOG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossmodald.bus.events import Envelope, Event, Phase
from crossmodald.clock.drift import RateEstimator
from crossmodald.ingest.base import Source, SourceError, SourceFault
from crossmodald.media import NS_PER_S, AudioChunk, ClockKind, StreamInfo, VideoFrame
from crossmodald.runtime.device import configure_threads, resolve_device
from crossmodald.runtime.host import Overload, PluginHost
from crossmodald.runtime.registry import LoadedConfig, PluginLoadError, PluginRegistry
from crossmodald.service.config import ConfigError, DaemonConfig, JsonlSinkConfig, SourceConfig
from crossmodald.service.lifecycle import run_stage, run_stage_call
from crossmodald.service.notify import Notifier, run_watchdog
from crossmodald.service.reload import ConfigDiff, diff_configs
from crossmodald.window import Windower

if TYPE_CHECKING:
    from aiohttp import web

    from crossmodald.bus.sinks import JsonlSink

log = logging.getLogger(__name__)

Listener = Callable[[Envelope], None]
SourceFactory = Callable[[SourceConfig], Source]

#: Reason given to event subscribers when the daemon stops.
STOPPING_REASON = "daemon stopping"
#: Ended streams kept for /v1/streams beyond the running ones (oldest forgotten first).
MAX_ENDED_STREAMS = 64
#: Where a stream came from: the config file, the REST API, or a publisher (WHIP).
ORIGINS = ("config", "api", "publisher")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did.

    Attributes:
        ok: Whether the new config was applied (False: rejected, the old one still runs).
        diff: What differed (None when rejected before comparing).
        errors: Why it was rejected, one line each with its key path.
        source: Where the config came from (a path, or the embedded default).
    """

    ok: bool
    diff: ConfigDiff | None
    errors: tuple[str, ...] = ()
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API."""
        return {
            "ok": self.ok,
            "source": self.source,
            "changes": self.diff.summary() if self.diff is not None else None,
            "errors": list(self.errors),
        }


@dataclass(slots=True)
class StreamState:
    """What /v1/streams shows about one stream."""

    name: str
    kind: str
    origin: str = "config"  # config, api, publisher (see ORIGINS)
    #: The validated source config, when the stream was built from one (restartable).
    source_config: SourceConfig | None = None
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
    #: The latest ``sync.transport`` data (WebRTC: the A/V offset the network adds).
    transport: dict[str, Any] | None = None
    alarm: bool = False
    windower: Windower | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: The plugin hosts this stream's windows go to (swapped in place by a reload).
    hosts: list[PluginHost] = field(default_factory=list)
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
            "media_time_s": round(self.last_media_ns / NS_PER_S, 3)
            if self.last_media_ns is not None
            else None,
            "plugins": list(self.plugins),
            "refused": dict(self.refused),
            "sync": self.last_offset,
            "transport": self.transport,
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


class StartupError(Exception):
    """The daemon could not start serving (the message is one line naming the cause)."""


class Daemon:
    """Builds the pipeline from a config and runs it (``run`` and ``analyze`` share it).

    Args:
        config: The validated daemon config.
        registry: Where plugins are found (entry points by default).
        source_factory: Builds a Source from a source config (real sources by default).
        overload: What plugin hosts do when their queue is full: drop the oldest windows (live)
            or make ingest wait (offline analysis, where nothing may be lost).
        serve_api: Start the HTTP API (events, streams, sources, health).
        listeners: Called synchronously with every published envelope, in order (used by
            `analyze` to print events; nothing is dropped on this path).
        clock_ns: The daemon's monotonic clock (injectable for tests).
        config_source: Where the config came from, for error messages.
        config_path: The config file that :meth:`reload_from_file` reads again (None: the
            embedded default).
        notifier: systemd notifications (default: none).

    Raises:
        ConfigError: A plugin table is invalid.
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
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        from crossmodald.bus.bus import EventBus

        self.config = config
        self.config_path = config_path
        self.registry = registry or PluginRegistry.discover()
        self._plugin_configs = self.registry.validate(config.plugins, config_source)
        self._source_factory = source_factory or default_source_factory()
        self._overload = overload
        self._serve_api = serve_api and config.api.enabled
        self._listeners = listeners
        self._clock_ns = clock_ns
        self.notifier = notifier or Notifier()
        self.bus = EventBus(
            replay_size=config.api.replay_size,
            subscriber_queue=config.api.subscriber_queue,
            slow_subscriber_s=config.api.slow_subscriber_s,
        )
        self.hosts: list[PluginHost] = []
        self._host_tasks: dict[str, asyncio.Task[None]] = {}
        self._sinks: dict[str, tuple[JsonlSink, asyncio.Task[None]]] = {}
        self.stream_states: dict[str, StreamState] = {}
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self._ready = False
        self._app: web.Application | None = None
        self.api_port: int | None = None
        self.failed_streams: list[str] = []
        self.reloads = 0

    # -- StreamsView (for the API) -------------------------------------------------------

    def streams(self) -> list[dict[str, Any]]:
        return [state.snapshot() for state in self.stream_states.values()]

    def ready(self) -> bool:
        return self._ready and not self._stopping.is_set()

    def plugin_stats(self) -> list[dict[str, Any]]:
        return [host.snapshot() for host in self.hosts]

    @property
    def stopping(self) -> bool:
        """Whether shutdown has begun."""
        return self._stopping.is_set()

    def status_line(self) -> str:
        """The systemd ``STATUS=`` line: stream and subscriber counts."""
        states = [s.state for s in self.stream_states.values()]
        running = states.count("running") + states.count("starting")
        failed = states.count("failed")
        line = f"{running} stream{'s' if running != 1 else ''} running"
        if failed:
            line += f", {failed} failed"
        return f"{line}; {self.subscriber_count()} event subscribers; {len(self.hosts)} plugins"

    def subscriber_count(self) -> int:
        """Open SSE/WebSocket event subscribers (sinks not counted)."""
        if self._app is None:
            return 0
        from crossmodald.api.app import API_STATE

        return len(self._app[API_STATE].subscriptions)

    # -- events --------------------------------------------------------------------------

    def publish(self, event: Event) -> Envelope:
        envelope = self.bus.publish(event)
        state = self.stream_states.get(event.stream)
        if state is not None:
            if event.type == "sync.offset":
                state.last_offset = dict(event.data)
            elif event.type == "sync.transport":
                state.transport = dict(event.data)
            elif event.type == "sync.alarm":
                state.alarm = event.phase is Phase.START
            elif event.type == "stream.fault":
                state.faults += 1
        for listener in self._listeners:
            listener(envelope)
        return envelope

    # -- lifecycle -----------------------------------------------------------------------

    async def load_plugins(self) -> None:
        """Resolve devices and load every enabled plugin (models included) off the event loop.

        Raises:
            PluginLoadError: A plugin cannot be loaded.
        """
        if self._plugin_configs:
            threads = configure_threads(self.config.runtime.torch_threads)
            log.info("torch uses %d thread(s) per inference call", threads)
        for loaded in self._plugin_configs:
            self.hosts.append(await self._load_host(loaded))

    async def _load_host(self, loaded: LoadedConfig) -> PluginHost:
        device = resolve_device(loaded.config.device)
        plugin = await asyncio.to_thread(self.registry.create, loaded, device)
        log.info("plugin %s loaded on %s", loaded.config.type, device)
        return PluginHost(plugin, loaded.config, self.publish, overload=self._overload)

    async def run(self, stop: asyncio.Event, *, exit_when_sources_end: bool = False) -> int:
        """Run until ``stop`` is set (or every source ended, when asked); returns an exit code.

        ``READY=1`` goes to systemd once the plugins are loaded, the sinks are open, the API
        listens and the configured streams are started.

        Raises:
            OSError: A sink's file cannot be opened (the message names it); nothing was
                started then.
            StartupError: The API cannot listen or its TLS files do not load.
        """
        if not self.hosts and self._plugin_configs:
            await self.load_plugins()
        for sink_config in self.config.sinks:
            await asyncio.to_thread(_check_sink_path, sink_config)
        try:
            return await self._run(stop, exit_when_sources_end=exit_when_sources_end)
        except BaseExceptionGroup as group:
            startup = group.subgroup(StartupError)
            if startup is not None:
                raise startup.exceptions[0] from None
            raise

    async def _run(self, stop: asyncio.Event, *, exit_when_sources_end: bool) -> int:
        runner = None
        service = self.config.service
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for host in self.hosts:
                self._start_host(host)
            for sink_config in self.config.sinks:
                self._start_sink(sink_config)
            if self._serve_api:
                # Imported here: aiohttp costs ~0.45 s of start-up that `analyze` never needs.
                from crossmodald.api.app import bound_port, build_app, serve
                from crossmodald.api.sources import add_source_routes

                app = build_app(self.bus, self, self.config.api)
                add_source_routes(app, self)
                if self.config.webrtc.enabled:
                    from crossmodald.api.whip import setup_whip

                    setup_whip(app, self, self.config.webrtc)
                try:
                    runner = await serve(
                        app,
                        self.config.api.host,
                        self.config.api.port,
                        shutdown_timeout_s=service.close_api_s,
                    )
                except (OSError, ValueError) as exc:
                    # One clear line for the CLI, not an exception group from the TaskGroup.
                    raise StartupError(str(exc)) from exc
                self._app = app
                self.api_port = bound_port(runner)
                log.info("API listening on http://%s:%s", self.config.api.host, self.api_port)
            stream_tasks = [
                self.add_stream(
                    cfg.name, cfg.type, self._bind_factory(cfg), origin="config", config=cfg
                )
                for cfg in self.config.sources
            ]
            self._ready = True
            self.notifier.ready(self.status_line())
            watchdog = tg.create_task(
                run_watchdog(
                    self.notifier, self.status_line, status_interval_s=service.status_interval_s
                ),
                name="daemon:watchdog",
            )
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
            await self._shutdown(runner)
            stop_task.cancel()
            watchdog.cancel()
        return 1 if self.failed_streams else 0

    async def _shutdown(self, runner: web.AppRunner | None) -> None:
        """The staged stop; each stage gets its budget from ``[service]``."""
        service = self.config.service
        self._stopping.set()
        self.notifier.stopping(f"stopping: {self.status_line()}")
        started = time.monotonic()
        # Stage 1: stop ingest; each stream finishes its open windows and closes its sessions.
        for state in self.stream_states.values():
            state.stop_requested.set()
        streams = [s.task for s in self.stream_states.values() if s.task is not None]
        await run_stage("stop ingest", streams, service.stop_ingest_s)
        # Stage 2: the plugins finish what is queued.
        for host in self.hosts:
            await host.aclose()
        await run_stage("drain plugins", list(self._host_tasks.values()), service.drain_plugins_s)
        # Stage 3: no more events; the sinks write and flush everything they hold, and every
        # subscriber is told why it ends after the events already queued for it.
        await self.bus.aclose(STOPPING_REASON)
        await run_stage(
            "flush sinks", [task for _sink, task in self._sinks.values()], service.flush_sinks_s
        )
        # Stage 4: close the API (subscribers get their close notice within the budget).
        if runner is not None:
            await run_stage_call("close api", runner.cleanup(), service.close_api_s)
        log.info("stopped in %.2f s", time.monotonic() - started)

    def _start_host(self, host: PluginHost) -> None:
        assert self._tg is not None
        self._host_tasks[host.name] = self._tg.create_task(host.run(), name=f"plugin:{host.name}")

    def _start_sink(self, config: JsonlSinkConfig, after_seq: int | None = None) -> None:
        from crossmodald.bus.sinks import JsonlSink

        assert self._tg is not None
        sink = JsonlSink(config)
        # Written from the bus's current seq (or ``after_seq``) on: nothing published while
        # the file opens in a worker thread is missed.
        start_seq = self.bus.last_seq if after_seq is None else after_seq
        task = self._tg.create_task(self._run_sink(sink, start_seq), name=f"sink:{config.path}")
        self._sinks[str(config.path)] = (sink, task)

    async def _run_sink(self, sink: JsonlSink, after_seq: int) -> None:
        # A sink whose disk fails must not take the daemon (and every stream) down with it.
        try:
            await sink.run(self.bus, after_seq=after_seq)
        except OSError as exc:
            log.error("sink %s failed: %s", sink.config.path, exc)

    # -- reload --------------------------------------------------------------------------

    async def reload_from_file(self) -> ReloadResult:
        """Read the config file again (``config_path``, or the embedded default) and apply it.

        systemd hears ``RELOADING=1`` first and ``READY=1`` after, whether the new config was
        applied or rejected (then the old one keeps running and STATUS says why).
        """
        from crossmodald.service.config import load_config

        source = str(self.config_path) if self.config_path else "configs/default.toml"
        self.notifier.reloading()
        try:
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                return self._rejected(source, exc.errors)
            return await self.reload(new, source)
        finally:
            if not self._stopping.is_set():
                self.notifier.ready(self.status_line())

    def _rejected(self, source: str, errors: list[str] | tuple[str, ...]) -> ReloadResult:
        for line in errors:
            log.error("reload rejected: %s: %s", source, line)
        first = errors[0] if errors else "invalid config"
        self.notifier.status(f"reload rejected ({source}: {first}); still running the old config")
        return ReloadResult(False, None, tuple(errors), source)

    async def reload(self, new: DaemonConfig, source: str = "<config>") -> ReloadResult:
        """Apply ``new``, starting, stopping or restarting only what differs from the running
        config (see :mod:`crossmodald.service.reload`).

        Everything that can fail is tried before anything changes: the new plugin tables are
        validated, changed plugins loaded and new sources built and new sinks opened. If any
        of it fails the reload is rejected and the running config stays as it was.

        Args:
            new: The validated new config.
            source: Where it came from (for messages).

        Returns:
            What was done, or why it was rejected.
        """
        async with self._reload_lock:
            if self._tg is None or self._stopping.is_set():
                return ReloadResult(False, None, ("the daemon is not running",), source)
            try:
                plugin_configs = self.registry.validate(new.plugins, source)
            except ConfigError as exc:
                return self._rejected(source, exc.errors)
            diff = diff_configs(
                self.config,
                new,
                {p.config.type: p.config for p in self._plugin_configs},
                {p.config.type: p.config for p in plugin_configs},
            )
            if diff.restart_required:
                # The API's address, TLS and tokens are bound at start: keep the running ones.
                log.warning(
                    "reload %s: %s take effect at the next restart",
                    source,
                    ", ".join(diff.restart_required),
                )
                new = new.model_copy(update={"api": self.config.api})
            if diff.empty:
                log.info("reload %s: no changes", source)
                self.config = new
                return ReloadResult(True, diff, (), source)
            log.info("reload %s: %s", source, diff.summary())
            # Try everything that can fail before changing anything.
            by_type = {p.config.type: p for p in plugin_configs}
            new_hosts: dict[str, PluginHost] = {}
            new_sources: dict[str, Source] = {}
            new_by_name = {s.name: s for s in new.sources}
            try:
                for name in (*diff.plugins_added, *diff.plugins_changed):
                    new_hosts[name] = await self._load_host(by_type[name])
                for name in (*diff.sources_added, *diff.sources_changed):
                    new_sources[name] = self._source_factory(new_by_name[name])
                for sink_config in new.sinks:
                    if str(sink_config.path) in (*diff.sinks_added, *diff.sinks_changed):
                        await asyncio.to_thread(_check_sink_path, sink_config)
            except (PluginLoadError, SourceError, OSError, ValueError) as exc:
                for host in new_hosts.values():
                    await host.aclose()
                return self._rejected(source, [str(exc)])
            self.config = new
            self._plugin_configs = plugin_configs
            await self._apply(diff, new, new_hosts, new_sources)
            self.reloads += 1
            self.notifier.status(f"reloaded ({diff.summary()}); {self.status_line()}")
            return ReloadResult(True, diff, (), source)

    async def _apply(
        self,
        diff: ConfigDiff,
        new: DaemonConfig,
        new_hosts: dict[str, PluginHost],
        new_sources: dict[str, Source],
    ) -> None:
        service = new.service
        if diff.logging_changed:
            from crossmodald.service.logs import setup_logging

            setup_logging(new.logging.level, new.logging.format)
        # Plugins: swap each changed host for its new one in every stream at one instant (no
        # window goes to neither, none to both), then let the old host finish and stop.
        retired: list[tuple[PluginHost, asyncio.Task[None] | None]] = []
        for name in (*diff.plugins_removed, *diff.plugins_changed):
            old_host = next(h for h in self.hosts if h.name == name)
            self.hosts.remove(old_host)
            retired.append((old_host, self._host_tasks.pop(name, None)))
        for host in new_hosts.values():
            self.hosts.append(host)
            self._start_host(host)
        for state in self.stream_states.values():
            for old_host, _task in retired:
                if old_host in state.hosts:
                    state.hosts.remove(old_host)
                    state.plugins.remove(old_host.name)
            if state.info is not None and state.state == "running":
                for host in new_hosts.values():
                    self._attach_host(state, state.info, host)
        for old_host, task in retired:
            await run_stage_call(
                f"retire plugin {old_host.name}",
                _retire(old_host, task, list(self.stream_states)),
                service.drain_plugins_s,
            )
        # Sinks: close removed and changed ones (everything they hold is written), then open
        # added and changed ones.
        closed_at: dict[str, int] = {}
        for path in (*diff.sinks_removed, *diff.sinks_changed):
            sink, sink_task = self._sinks.pop(path)
            # aclose() ends the subscription at once: the old sink writes everything up to
            # this seq, the reopened one everything after it (no gap, no duplicate).
            closed_at[path] = self.bus.last_seq
            await sink.aclose()
            await run_stage(f"close sink {path}", [sink_task], service.flush_sinks_s)
        reopen = {*diff.sinks_added, *diff.sinks_changed}
        for sink_config in new.sinks:
            path = str(sink_config.path)
            if path in reopen:
                self._start_sink(sink_config, closed_at.get(path))
        # Sources: what to start, with its config and origin; with a new [window], every
        # stream built from a config restarts (its windower is made from [window]).
        new_by_name = {s.name: s for s in new.sources}
        starts: dict[str, tuple[SourceConfig, str]] = {
            name: (new_by_name[name], "config") for name in new_sources
        }
        if diff.window_changed:
            for state in self.stream_states.values():
                if (
                    state.source_config is not None
                    and state.name not in starts
                    and state.name not in diff.sources_removed
                    and state.task is not None
                    and not state.task.done()
                ):
                    starts[state.name] = (state.source_config, state.origin)
        stops = [
            name
            for name in (*diff.sources_removed, *sorted(starts))
            if name in self.stream_states
            # A stream started through the API is not the config's to remove.
            and not (name in diff.sources_removed and self.stream_states[name].origin != "config")
        ]
        for name in stops:
            if self._stopping.is_set():
                return
            await self.stop_stream(name)
            self.stream_states.pop(name, None)
        for name, (cfg, origin) in sorted(starts.items()):
            if self._stopping.is_set():
                return
            built = new_sources.get(name)
            make = _prebuilt(built) if built is not None else self._bind_factory(cfg)
            self.add_stream(name, cfg.type, make, origin=origin, config=cfg)

    # -- streams -------------------------------------------------------------------------

    def _bind_factory(self, config: SourceConfig) -> Callable[[], Source]:
        return lambda: self._source_factory(config)

    def add_stream(
        self,
        name: str,
        kind: str,
        make_source: Callable[[], Source],
        *,
        origin: str = "api",
        config: SourceConfig | None = None,
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
        state.task = self._tg.create_task(
            self._run_stream(state, make_source), name=f"stream:{name}"
        )
        return state.task

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

    # -- SourcesControl (for /v1/sources) ------------------------------------------------

    def sources(self) -> list[dict[str, Any]]:
        """Every stream with where it came from and its (redacted) source config."""
        return [source_entry(state) for state in self.stream_states.values()]

    def start_source(self, config: SourceConfig) -> asyncio.Task[None]:
        """Start a stream from a source config given through the API.

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

    def _attach_host(self, state: StreamState, info: StreamInfo, host: PluginHost) -> None:
        if host in state.hosts:
            return
        reason = host.open_stream(info)
        if reason is None:
            state.hosts.append(host)
            state.plugins.append(host.name)
            state.refused.pop(host.name, None)
            return
        state.refused[host.name] = reason
        self.publish(_fault(info, "plugin_refused", f"{host.name}: {state.name} {reason}"))
        if self._overload is Overload.BLOCK:
            self.failed_streams.append(state.name)
            state.error = f"{state.name}: {host.name} cannot analyse it: {reason}"

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
        for host in list(self.hosts):
            self._attach_host(state, info, host)
        self.publish(
            Event(
                type="stream.start",
                stream=name,
                start_ns=0,
                end_ns=0,
                data={
                    "source": state.kind,
                    # The key event.schema.json and docs/events.md name (was missing).
                    "kind": state.kind,
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
        pump = asyncio.create_task(self._pump(source, state, windower), name=f"ingest:{name}")
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
            for host in tuple(state.hosts):
                await host.submit(window)
        for host in tuple(state.hosts):
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

    async def _pump(self, source: Source, state: StreamState, windower: Windower) -> None:
        # A source may move to a better clock while running (WebRTC: arrival until RTCP sender
        # reports come); once the latest item of every track says the same clock, the windows
        # closed from then on say it too.
        clocks: dict[type, ClockKind] = {}
        tracks = int(windower.has_video) + int(windower.has_audio)
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
            clocks[type(item)] = item.clock
            if len(clocks) == tracks and len(set(clocks.values())) == 1:
                windower.clock = item.clock
            windows = windower.push(item, self._clock_ns())
            for window in windows:
                # A snapshot: a reload may swap hosts while a submit waits.
                for host in tuple(state.hosts):
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


async def _retire(host: PluginHost, task: asyncio.Task[None] | None, streams: list[str]) -> None:
    """Close a plugin host that a reload replaced: its sessions, then its worker."""
    if task is not None and not task.done():
        # close_stream waits on the worker: only while it still runs.
        for stream in streams:
            if host.has_stream(stream):
                await host.close_stream(stream)
    await host.aclose()
    if task is not None:
        await asyncio.wait([task])


def source_entry(state: StreamState) -> dict[str, Any]:
    """One stream as ``/v1/sources`` shows it: origin, state and its config, secrets hidden."""
    config = state.source_config.model_dump(mode="json") if state.source_config else None
    if config is not None and isinstance(config.get("url"), str):
        config["url"] = redact_url(config["url"])
    return {
        "name": state.name,
        "type": state.kind,
        "origin": state.origin,
        "state": state.state,
        "error": state.error,
        "config": config,
    }


def redact_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host/...`` (RTSP cameras carry them)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}" if ":" in userinfo else url


def _prebuilt(source: Source) -> Callable[[], Source]:
    return lambda: source


def _check_sink_path(config: JsonlSinkConfig) -> None:
    """Fail early (before READY, or rejecting a reload) when a sink's file cannot be opened."""
    path = config.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"jsonl sink: cannot open {path}: {exc.strerror}") from None
