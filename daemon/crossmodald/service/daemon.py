"""The composition root: builds every part from a validated config and runs it.

Data path per stream: source -> windower -> every plugin host -> sessions -> bus -> subscribers
and sinks. Everything runs under one ``asyncio.TaskGroup``; shutdown goes in stages, each with
its time budget from ``[service]`` (stop ingest and finish open windows, drain the plugins,
flush the sinks, close the API; see :mod:`crossmodald.service.lifecycle`). While running,
:meth:`Daemon.reload` applies a new config by changing only what differs
(:mod:`crossmodald.service.reload`), and streams can be added and stopped one by one (REST
``/v1/sources``, see :mod:`crossmodald.api.sources`). systemd hears about all of it through
:class:`~crossmodald.service.notify.Notifier` (READY, RELOADING, STOPPING, STATUS, WATCHDOG).

:class:`Daemon` is composed of parts by role, each in its module: stream management and the
``/v1/sources`` control (:mod:`crossmodald.service.streams`), the per-stream pipeline
(:mod:`crossmodald.service.pipeline`) and the reload applier
(:mod:`crossmodald.service.reload_apply`). Sources and sinks are built by the factories their
``type`` names (entry-point groups ``crossmodald.sources`` and ``crossmodald.sinks``); every
sink is run, reloaded and read through :class:`~crossmodald.bus.sinks.Sink`. With ``[fleet]``
the daemon is one of several sharing a source list (:mod:`crossmodald.service.fleet`): its
:class:`~crossmodald.service.fleet.Fleet` answers ``/v1/sources`` and ``/v1/fleet`` and starts
and stops the streams it leases through the same stream management.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossmodald.bus.events import Envelope, Event
from crossmodald.bus.sinks import Sink, SinkConfigBase, SinkRegistry, run_sink
from crossmodald.entrypoints import TypeLoadError
from crossmodald.ingest.base import Source, SourceError
from crossmodald.ingest.registry import SourceRegistry
from crossmodald.redact import redact_url
from crossmodald.runtime.device import configure_threads, resolve_device
from crossmodald.runtime.host import Overload, PluginHost, link_hosts
from crossmodald.runtime.registry import LoadedConfig, PluginLoadError, PluginRegistry
from crossmodald.service.config import ConfigError, DaemonConfig
from crossmodald.service.fleet import Fleet
from crossmodald.service.lifecycle import run_stage, run_stage_call
from crossmodald.service.notify import Notifier, run_watchdog
from crossmodald.service.pipeline import StreamPipeline
from crossmodald.service.reload import diff_configs
from crossmodald.service.reload_apply import ReloadApplier, ReloadResult
from crossmodald.service.streams import (
    MAX_ENDED_STREAMS,
    ORIGINS,
    SourceBuilder,
    StreamManager,
    StreamState,
    default_source_factory,
    source_entry,
)

if TYPE_CHECKING:
    from aiohttp import web

# Re-exported: these lived here before the daemon was split by role.
__all__ = [
    "MAX_ENDED_STREAMS",
    "ORIGINS",
    "STOPPING_REASON",
    "Daemon",
    "Listener",
    "ReloadResult",
    "SourceBuilder",
    "StartupError",
    "StreamState",
    "default_source_factory",
    "redact_url",
    "source_entry",
]

log = logging.getLogger(__name__)

Listener = Callable[[Envelope], None]

#: Reason given to event subscribers when the daemon stops.
STOPPING_REASON = "daemon stopping"


class StartupError(Exception):
    """The daemon could not start serving (the message is one line naming the cause)."""


class Daemon(StreamManager, StreamPipeline, ReloadApplier):
    """Builds the pipeline from a config and runs it (``run`` and ``analyze`` share it).

    Args:
        config: The validated daemon config.
        registry: Where plugins are found (entry points by default).
        source_factory: Builds a Source from a source config (by default the factory its
            ``type`` names, from ``source_types``).
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
        source_types: The source types (default: those installed, entry-point group
            ``crossmodald.sources``).
        sink_types: The sink types (default: those installed, ``crossmodald.sinks``).

    Raises:
        ConfigError: A plugin table is invalid.
    """

    def __init__(
        self,
        config: DaemonConfig,
        *,
        registry: PluginRegistry | None = None,
        source_factory: SourceBuilder | None = None,
        overload: Overload = Overload.DROP_OLDEST,
        serve_api: bool = True,
        listeners: tuple[Listener, ...] = (),
        clock_ns: Callable[[], int] = time.monotonic_ns,
        config_source: str = "<config>",
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        source_types: SourceRegistry | None = None,
        sink_types: SinkRegistry | None = None,
    ) -> None:
        from crossmodald.bus.bus import EventBus

        self.config = config
        self.config_path = config_path
        self.registry = registry or PluginRegistry.discover()
        self._plugin_configs = self.registry.validate(config.plugins, config_source)
        #: The ``[[sources]]`` / ``[[sinks]]`` types (``POST /v1/sources`` validates with them).
        self.source_types = source_types or SourceRegistry.default()
        self.sink_types = sink_types or SinkRegistry.default()
        self._source_factory = source_factory or default_source_factory(types=self.source_types)
        self._overload = overload
        self._serve_api = serve_api and config.api.enabled
        self._listeners = listeners
        self._clock_ns = clock_ns
        self.notifier = notifier or Notifier()
        self.bus = EventBus(
            replay_size=config.api.replay_size,
            subscriber_queue=config.api.subscriber_queue,
            slow_subscriber_s=config.api.slow_subscriber_s,
            # Fleet mode: every event says which daemon produced it.
            daemon_id=config.fleet.daemon_id if config.fleet is not None else None,
        )
        #: Fleet mode: this daemon's membership (leases on the shared source list).
        self.fleet: Fleet | None = (
            Fleet(config.fleet, self, api_url=self._own_api_url)
            if config.fleet is not None
            else None
        )
        self.hosts: list[PluginHost] = []
        self._host_tasks: dict[str, asyncio.Task[None]] = {}
        #: Running ``[[sinks]]`` by identity.
        self._sinks: dict[str, tuple[Sink, asyncio.Task[None]]] = {}
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

    def _own_api_url(self) -> str | None:
        """This daemon's API address, for the fleet's heartbeat (None before it listens)."""
        assert self.config.fleet is not None
        if self.config.fleet.api_url:
            return self.config.fleet.api_url
        if self.api_port is None:
            return None
        scheme = "https" if self.config.api.tls is not None else "http"
        host = self.config.api.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.api_port}"

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
        # Plugin and source values reach /v1/streams through their own status(), not events.
        if state is not None and event.type == "stream.fault":
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
        link_hosts(self.hosts)

    async def _load_host(self, loaded: LoadedConfig) -> PluginHost:
        device = resolve_device(loaded.config.device)
        plugin = await asyncio.to_thread(self.registry.create, loaded, device)
        log.info("plugin %s loaded on %s", loaded.config.type, device)
        return PluginHost(
            plugin, loaded.config, self.publish, overload=self._overload, silent=loaded.silent
        )

    async def run(self, stop: asyncio.Event, *, exit_when_sources_end: bool = False) -> int:
        """Run until ``stop`` is set (or every source ended, when asked); returns an exit code.

        ``READY=1`` goes to systemd once the plugins are loaded, the sinks are open, the API
        listens and the configured streams are started.

        Raises:
            OSError: A sink's destination cannot be opened (the message names it); nothing
                was started then.
            ValueError: A sink cannot be built (its type cannot be loaded, a bad filter).
            StartupError: The API cannot listen or its TLS files do not load.
        """
        if not self.hosts and self._plugin_configs:
            await self.load_plugins()
        sinks = [self._make_sink(sink_config) for sink_config in self.config.sinks]
        for sink_config in self.config.sinks:
            await asyncio.to_thread(self._check_sink, sink_config)
        try:
            return await self._run(stop, sinks, exit_when_sources_end=exit_when_sources_end)
        except BaseExceptionGroup as group:
            startup = group.subgroup(StartupError)
            if startup is not None:
                raise startup.exceptions[0] from None
            raise

    async def _run(
        self, stop: asyncio.Event, sinks: list[Sink], *, exit_when_sources_end: bool
    ) -> int:
        runner = None
        service = self.config.service
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for host in self.hosts:
                self._start_host(host)
            for sink in sinks:
                self._start_sink(sink)
            if self._serve_api:
                # Imported here: aiohttp costs ~0.45 s of start-up that `analyze` never needs.
                from crossmodald.api.app import bound_port, build_app, serve
                from crossmodald.api.sources import add_source_routes

                app = build_app(self.bus, self, self.config.api)
                # Fleet mode: /v1/sources changes the shared list, /v1/fleet shows who runs it.
                add_source_routes(app, self.fleet if self.fleet is not None else self)
                if self.fleet is not None:
                    from crossmodald.api.fleet import add_fleet_routes

                    add_fleet_routes(app, self.fleet)
                if self.config.webrtc.enabled:
                    from crossmodald.api.whip import setup_whip

                    whip = setup_whip(app, self, self.config.webrtc)
                    if self.config.webrtc.whep_enabled:
                        from crossmodald.api.whep import setup_whep

                        setup_whep(app, whip)
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
            stream_tasks = [self.start_configured(cfg, "config") for cfg in self.config.sources]
            if self.fleet is not None:
                tg.create_task(self.fleet.run(), name="daemon:fleet")
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
        if self.fleet is not None:
            self.fleet.begin_close()  # take no more sources; renew the held ones meanwhile
        # Stage 1: stop ingest; each stream finishes its open windows and closes its sessions.
        for state in self.stream_states.values():
            state.stop_reason = STOPPING_REASON
            state.stop_requested.set()
        streams = [s.task for s in self.stream_states.values() if s.task is not None]
        await run_stage("stop ingest", streams, service.stop_ingest_s)
        if self.fleet is not None:
            # Only now that its streams stopped does the daemon give its leases back.
            budget = 3 * self.fleet.config.connect_timeout_s
            await run_stage_call("leave fleet", self.fleet.aclose(), budget)
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

    def _make_sink(self, config: SinkConfigBase) -> Sink:
        """Build a ``[[sinks]]`` table's sink by its type's factory.

        Raises:
            ValueError: The type cannot be loaded or the factory refuses the config.
        """
        try:
            return self.sink_types.factory(config.type).create(config)
        except TypeLoadError as exc:
            raise ValueError(str(exc)) from None

    def _check_sink(self, config: SinkConfigBase) -> None:
        """Fail early (before READY, or rejecting a reload) when a sink cannot work (blocks)."""
        try:
            factory = self.sink_types.factory(config.type)
        except TypeLoadError as exc:
            raise ValueError(str(exc)) from None
        factory.check(config)

    def _start_sink(self, sink: Sink, after_seq: int | None = None) -> None:
        assert self._tg is not None
        # Written from the bus's current seq (or ``after_seq``) on: nothing published while
        # the sink opens (a file, in a worker thread) is missed. A sink whose destination
        # fails must not take the daemon (and every stream) down with it: run_sink logs it.
        start_seq = self.bus.last_seq if after_seq is None else after_seq
        task = self._tg.create_task(
            run_sink(sink, self.bus, start_seq), name=f"sink:{sink.identity}"
        )
        self._sinks[sink.identity] = (sink, task)

    def fleet_stats(self) -> dict[str, float | int | bool] | None:
        """The fleet membership's figures for ``/metrics`` (None outside fleet mode)."""
        return self.fleet.stats() if self.fleet is not None else None

    def sink_stats(self) -> list[dict[str, Any]]:
        """Every running ``[[sinks]]`` sink's counters, with its identity (for ``/metrics``)."""
        return [
            {"sink": identity, **dataclasses.asdict(sink.stats)}
            for identity, (sink, _task) in self._sinks.items()
        ]

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
                new = await asyncio.to_thread(
                    load_config,
                    self.config_path,
                    source_types=self.source_types,
                    sink_types=self.sink_types,
                )
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
            if self.config.sources and not new.sources and "sources" not in new.model_fields_set:
                return self._rejected(source, [_no_sources(self.config)])
            diff = diff_configs(
                self.config,
                new,
                {p.config.type: p.config for p in self._plugin_configs},
                {p.config.type: p.config for p in plugin_configs},
            )
            if diff.restart_required:
                # The API's address, TLS and tokens and the fleet membership are bound at
                # start: keep the running ones.
                log.warning(
                    "reload %s: %s take effect at the next restart",
                    source,
                    ", ".join(diff.restart_required),
                )
                new = new.model_copy(update={"api": self.config.api, "fleet": self.config.fleet})
            if diff.empty:
                log.info("reload %s: no changes", source)
                self.config = new
                return ReloadResult(True, diff, (), source)
            log.info("reload %s: %s", source, diff.summary())
            # Try everything that can fail before changing anything.
            by_type = {p.config.type: p for p in plugin_configs}
            new_hosts: dict[str, PluginHost] = {}
            new_sources: dict[str, Source] = {}
            new_sinks: dict[str, Sink] = {}
            new_by_name = {s.name: s for s in new.sources}
            try:
                for name in (*diff.plugins_added, *diff.plugins_changed):
                    new_hosts[name] = await self._load_host(by_type[name])
                running = {h.name for h in self.hosts}
                for loaded in plugin_configs:  # providers the registry added for a consumer
                    name = loaded.config.type
                    if loaded.silent and name not in running and name not in new_hosts:
                        new_hosts[name] = await self._load_host(loaded)
                for name in (*diff.sources_added, *diff.sources_changed):
                    new_sources[name] = self._source_factory(new_by_name[name])
                for sink_config in new.sinks:
                    if sink_config.identity in (*diff.sinks_added, *diff.sinks_changed):
                        new_sinks[sink_config.identity] = self._make_sink(sink_config)
                        await asyncio.to_thread(self._check_sink, sink_config)
            except Exception as exc:
                # Whatever fails here, nothing has changed yet: the old config keeps running.
                expected = isinstance(exc, PluginLoadError | SourceError | OSError | ValueError)
                if not expected:  # a bug in a plugin, source or sink type
                    log.error("reload %s: unexpected error", source, exc_info=exc)
                for host in new_hosts.values():
                    await host.aclose()
                return self._rejected(source, [str(exc) if expected else repr(exc)])
            self.config = new
            self._plugin_configs = plugin_configs
            await self._apply(diff, new, new_hosts, new_sources, new_sinks)
            self.reloads += 1
            self.notifier.status(f"reloaded ({diff.summary()}); {self.status_line()}")
            return ReloadResult(True, diff, (), source)


def _no_sources(running: DaemonConfig) -> str:
    """Why a reload without ``[[sources]]`` is refused while configured streams run."""
    names = ", ".join(repr(s.name) for s in running.sources[:5])
    more = ", ..." if len(running.sources) > 5 else ""
    return (
        f"sources: the new config has no [[sources]] and would stop every configured stream "
        f"({names}{more}); to remove them all, say so: sources = []"
    )
