"""Applying a reload: change only what :func:`~crossmodald.service.reload.diff_configs` found.

:meth:`crossmodald.service.daemon.Daemon.reload` validates the new config and tries everything
that can fail (plugins loaded, sources built, sink files opened); :class:`ReloadApplier` (a part
of the daemon) then swaps plugin hosts, reopens sinks and restarts streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crossmodald.bus.bus import EventBus
from crossmodald.bus.sinks import Sink
from crossmodald.ingest.base import Source
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.media import StreamInfo
from crossmodald.runtime.host import PluginHost, link_hosts
from crossmodald.service.config import DaemonConfig
from crossmodald.service.lifecycle import run_stage, run_stage_call
from crossmodald.service.reload import ConfigDiff
from crossmodald.service.streams import StreamState, _prebuilt


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


class ReloadApplier:
    """Applies a checked reload (a part of the daemon; the attributes below are the daemon's)."""

    bus: EventBus
    hosts: list[PluginHost]
    stream_states: dict[str, StreamState]
    _host_tasks: dict[str, asyncio.Task[None]]
    _sinks: dict[str, tuple[Sink, asyncio.Task[None]]]
    _stopping: asyncio.Event

    if TYPE_CHECKING:

        def _start_host(self, host: PluginHost) -> None: ...

        def _start_sink(self, sink: Sink, after_seq: int | None = None) -> None: ...

        def _attach_host(self, state: StreamState, info: StreamInfo, host: PluginHost) -> None: ...

        def _bind_factory(self, config: SourceConfigBase) -> Callable[[], Source]: ...

        async def stop_stream(self, name: str) -> None: ...

        def add_stream(
            self,
            name: str,
            kind: str,
            make_source: Callable[[], Source],
            *,
            origin: str = "api",
            config: SourceConfigBase | None = None,
        ) -> asyncio.Task[None]: ...

    async def _apply(
        self,
        diff: ConfigDiff,
        new: DaemonConfig,
        new_hosts: dict[str, PluginHost],
        new_sources: dict[str, Source],
        new_sinks: dict[str, Sink],
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
        # Consumers take products from new providers (before streams open on new consumers).
        link_hosts(self.hosts)
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
            for host in self.hosts:
                host.remove_provider(old_host)
        # Sinks: close removed and changed ones (everything they hold is written), then open
        # added and changed ones.
        closed_at: dict[str, int] = {}
        for identity in (*diff.sinks_removed, *diff.sinks_changed):
            sink, sink_task = self._sinks.pop(identity)
            # aclose() ends the subscription at once: the old sink writes everything up to
            # this seq, the reopened one everything after it (no gap, no duplicate).
            closed_at[identity] = self.bus.last_seq
            await sink.aclose()
            await run_stage(f"close sink {identity}", [sink_task], service.flush_sinks_s)
        for identity, new_sink in new_sinks.items():
            self._start_sink(new_sink, closed_at.get(identity))
        # Sources: what to start, with its config and origin; with a new [window], every
        # stream built from a config restarts (its windower is made from [window]).
        new_by_name = {s.name: s for s in new.sources}
        starts: dict[str, tuple[SourceConfigBase, str]] = {
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
