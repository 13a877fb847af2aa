"""The plugin contract.

A plugin is found through the entry-point group ``crossmodald.plugins``; the entry point names
a :class:`PluginFactory`. The factory brings the plugin's own config model (a pydantic model,
chosen by the ``type`` key of a ``[[plugins]]`` table) and builds one :class:`Plugin` per daemon.

The :class:`Plugin` holds the heavy state (weights, its torch device) and runs one
:meth:`Plugin.infer` call per batch of windows from many streams, on a worker thread. A
:class:`Session` per stream holds temporal state (smoothing, tracks) and turns each window's
result into events on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from crossmodald.bus.events import Event
from crossmodald.media import StreamInfo, Window


class PluginConfig(BaseModel):
    """Base of every plugin's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    enabled: bool = True
    #: torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: Most windows per inference call.
    max_batch: int = Field(64, ge=1, le=4096)
    #: Windows waiting for this plugin before the oldest are dropped.
    queue_size: int = Field(256, ge=1, le=1_000_000)


@runtime_checkable
class Session(Protocol):
    """Per-stream state of a plugin."""

    def update(self, window: Window, result: Any) -> list[Event]:
        """Turn the plugin's result for one window into events (runs on the event loop)."""
        ...

    def close(self) -> list[Event]:
        """The stream ended: close what is open (e.g. an alarm or a speech segment)."""
        ...


@runtime_checkable
class Plugin(Protocol):
    """A loaded plugin: one per daemon."""

    name: str

    def check_stream(self, stream: StreamInfo) -> str | None:
        """Return why this plugin cannot analyse ``stream`` (e.g. "has no audio"), or None."""
        ...

    def open(self, stream: StreamInfo) -> Session:
        """Start a session for a new stream."""
        ...

    def infer(self, batch: Sequence[Window]) -> Sequence[Any]:
        """Analyse many windows (from many streams) in one call; one result per window.

        Runs on a worker thread; may block and use torch.
        """
        ...


class PluginFactory(Protocol):
    """What an entry point of group ``crossmodald.plugins`` names."""

    config_model: ClassVar[type[PluginConfig]]

    @classmethod
    def create(cls, config: Any, device: str) -> Plugin:
        """Load the plugin (weights and all) for a validated config on a resolved torch device."""
        ...
