"""Test helper: run plugins over windows without an event loop, providers first, as the host does.

For tests, evaluation and calibration: the same contract as :class:`~crossmodald.runtime.host.
PluginHost` (per-stream state from ``new_state``, one ``infer`` per plugin per batch, products
handed to consumers with the same window), run synchronously in the caller's thread::

    chain = PluginChain([(faces, faces_config), (speaker, speaker_config)])
    chain.open(info)
    for window in windows:
        results = chain.run([window])          # {"faces": [FaceTracks], "speaker": [...]}
    chain.close(info.name)
    chain.events["speaker"][info.name]         # every event the speaker session made

:func:`with_providers` completes a list of plugins with the providers their configs require
(loaded with default configs, as the registry does for the daemon).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossmodald.bus.events import Event
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import (
    BatchItem,
    Inputs,
    Need,
    Plugin,
    PluginConfig,
    ProductKey,
    Session,
)


class HarnessError(RuntimeError):
    """The plugins cannot run together (a required product nobody provides, bad results)."""


@dataclass(slots=True)
class _Stage:
    plugin: Plugin[Any, Any]
    needs: tuple[Need, ...]
    states: dict[str, Any] = field(default_factory=dict)
    sessions: dict[str, Session[Any]] = field(default_factory=dict)
    last_window: dict[str, Window] = field(default_factory=dict)


class PluginChain:
    """Plugins run in the given order (providers before their consumers) over windows.

    Args:
        plugins: ``(plugin, config)`` pairs, providers first; ``config.requires()`` says what
            each one consumes (a bare sequence of :class:`Need` works too).

    Raises:
        HarnessError: A required product is not provided by an earlier plugin.
    """

    def __init__(
        self, plugins: Sequence[tuple[Plugin[Any, Any], PluginConfig | Sequence[Need]]]
    ) -> None:
        self._stages: list[_Stage] = []
        provided: set[ProductKey[Any]] = set()
        for plugin, config in plugins:
            needs = tuple(config.requires() if isinstance(config, PluginConfig) else config)
            for need in needs:
                if not need.optional and need.key not in provided:
                    raise HarnessError(
                        f"plugin {plugin.name!r} needs {need.key.name}: "
                        "no earlier plugin provides it"
                    )
            self._stages.append(_Stage(plugin, needs))
            if plugin.provides is not None:
                provided.add(plugin.provides)
        #: Events per plugin name, per stream.
        self.events: dict[str, dict[str, list[Event]]] = {s.plugin.name: {} for s in self._stages}

    def open(self, info: StreamInfo) -> dict[str, str]:
        """Open ``info`` on every plugin that accepts it; returns the refusals by plugin."""
        refused: dict[str, str] = {}
        for stage in self._stages:
            reason = stage.plugin.check_stream(info)
            if reason is None:
                for need in stage.needs:
                    if not need.optional and not self._serves(need.key, info.name):
                        reason = f"needs {need.key.name}, which no plugin provides for it"
            if reason is not None:
                refused[stage.plugin.name] = reason
                continue
            stage.states[info.name] = stage.plugin.new_state(info)
            stage.sessions[info.name] = stage.plugin.open(info)
            self.events[stage.plugin.name].setdefault(info.name, [])
        return refused

    def _serves(self, key: ProductKey[Any], stream: str) -> bool:
        return any(s.plugin.provides == key and stream in s.sessions for s in self._stages)

    def run(self, batch: Sequence[Window]) -> dict[str, list[Any]]:
        """One ``infer`` per plugin over ``batch`` (windows of open streams, each stream's in
        order); session events go to :attr:`events`. Returns each plugin's results, in the
        order of the windows it analysed (those of streams it accepted)."""
        products: list[dict[ProductKey[Any], object]] = [{} for _ in batch]
        out: dict[str, list[Any]] = {}
        for stage in self._stages:
            rows = [i for i, w in enumerate(batch) if w.stream in stage.sessions]
            items = [
                BatchItem(
                    batch[i],
                    stage.states[batch[i].stream],
                    Inputs(
                        {n.key: products[i][n.key] for n in stage.needs if n.key in products[i]}
                    ),
                )
                for i in rows
            ]
            results = list(stage.plugin.infer(items)) if items else []
            if len(results) != len(items):
                raise HarnessError(
                    f"plugin {stage.plugin.name!r}: {len(results)} results for {len(items)} windows"
                )
            out[stage.plugin.name] = results
            key = stage.plugin.provides
            for i, result in zip(rows, results, strict=True):
                if key is not None:
                    products[i][key] = result
                window = batch[i]
                stage.last_window[window.stream] = window
                self.events[stage.plugin.name][window.stream] += stage.sessions[
                    window.stream
                ].update(window, result)
        return out

    def close(self, stream: str) -> None:
        """Close the stream's sessions (their last events go to :attr:`events`); a plugin's
        optional ``finish(state)`` result goes to its session first, as the host does."""
        for stage in self._stages:
            session = stage.sessions.pop(stream, None)
            state = stage.states.pop(stream, None)
            window = stage.last_window.pop(stream, None)
            finish = getattr(stage.plugin, "finish", None)
            if session is not None and window is not None and callable(finish):
                result = finish(state)
                if result is not None:
                    self.events[stage.plugin.name][stream] += session.update(window, result)
            if session is not None:
                self.events[stage.plugin.name][stream] += session.close()

    def status(self, stream: str) -> dict[str, Mapping[str, Any]]:
        """Each plugin's session status for ``stream``."""
        return {
            s.plugin.name: dict(s.sessions[stream].status())
            for s in self._stages
            if stream in s.sessions
        }


def with_providers(
    plugin: Plugin[Any, Any], config: PluginConfig, device: str
) -> list[tuple[Plugin[Any, Any], PluginConfig]]:
    """``plugin`` preceded by the providers its config requires (default configs, loaded
    through the entry points), in dependency order: what :class:`PluginChain` takes."""
    from crossmodald.runtime.registry import PluginRegistry  # registry imports service config

    registry = PluginRegistry.discover()
    loaded = registry.validate([config.model_dump(mode="json", exclude_none=True)], "harness")
    chain: list[tuple[Plugin[Any, Any], PluginConfig]] = []
    for entry in loaded:
        if entry.config.type == plugin.name:
            chain.append((plugin, config))
        else:
            chain.append((registry.create(entry, device), entry.config))
    return chain
