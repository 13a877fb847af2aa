"""The plugin contract, version 2.

A plugin is found through the entry-point group ``crossmodald.plugins``; the entry point names
a :class:`PluginFactory`. The factory brings the plugin's own config model (a pydantic model,
chosen by the ``type`` key of a ``[[plugins]]`` table), says which product it provides
(:attr:`PluginFactory.provides`), and builds one :class:`Plugin` per daemon.

Shared work is declared, not repeated:

* A *product* is a typed per-window result one plugin hands to others, named by a
  :class:`ProductKey` (e.g. ``faces.tracks``: the face tracks on a window's frames). A provider
  plugin's :meth:`Plugin.infer` result for a window *is* its product for that window.
* A config says what its plugin needs (:meth:`PluginConfig.requires`, known from the validated
  config before anything heavy loads, so it may depend on settings). The host runs providers
  first and hands their products to consumers with the same window (:attr:`BatchItem.inputs`):
  one face tracker and one VAD pass per stream and window, however many plugins use them.

The host owns per-stream state: :meth:`Plugin.new_state` makes it when a stream opens, and each
:class:`BatchItem` passed to :meth:`Plugin.infer` carries the window, that stream's state and the
inputs. The host never runs two ``infer`` calls of one plugin at once, so plugins need no locks.

A plugin that keeps work in its state across windows (a speech segment still being heard, say)
may also have ``finish(state) -> result | None``: when a stream ends, the host calls it on the
plugin's worker thread after the stream's last ``infer``, and hands a result to the session's
``update`` (with the stream's last window) before ``close``; a state holding resources that need
an explicit close (a MediaPipe graph) releases them there, since the host then drops it. It is
optional: the host looks it up, so plugins without it keep the contract.

A :class:`Session` per stream turns each window's result into events on the event loop and
reports its own status (:meth:`Session.status`, shown under ``plugin_status`` in
``/v1/streams``); the plugin declares which status keys are metrics (:attr:`Plugin.metrics`,
exported by ``/metrics``). The core knows no plugin's event types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import Field

from crossmodald.bus.events import Event, JsonValue
from crossmodald.config_base import ConfigModel
from crossmodald.media import StreamInfo, Window

# Re-exported (plugins import it from here); it lives in a neutral module sources use too.
from crossmodald.status import MetricSpec as MetricSpec

T = TypeVar("T")
ResultT = TypeVar("ResultT")
ResultT_contra = TypeVar("ResultT_contra", contravariant=True)
StateT = TypeVar("StateT")


class ProductKey(Generic[T]):
    """The typed name of a product one plugin provides to others (like aiohttp's ``AppKey``).

    Example::

        FACE_TRACKS: ProductKey[FaceTracks] = ProductKey("faces.tracks", FaceTracks)
        tracks = item.inputs[FACE_TRACKS]        # typed FaceTracks

    Two keys are the same product when their names are equal.

    Args:
        name: Dotted name, unique among installed plugins (``faces.tracks``).
        type_: The class of the product's values (the provider's per-window result).
    """

    __slots__ = ("name", "type")

    def __init__(self, name: str, type_: type[T]) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("a product key needs a non-empty name")
        self.name = name
        self.type = type_

    def __repr__(self) -> str:
        return f"ProductKey({self.name!r}, {self.type.__qualname__})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProductKey) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True, slots=True)
class Need:
    """A product a plugin consumes.

    Attributes:
        key: The product.
        optional: False: the registry adds the provider (silently, with its default config)
            when no ``[[plugins]]`` table enables it, and a window whose product is missing is
            an error for the consumer. True: used when its provider is configured anyway and
            analyses the stream (the consumer then finds it in ``inputs``), else absent.
    """

    key: ProductKey[Any]
    optional: bool = False


class InputUnavailable(LookupError):
    """A product a consumer asked for is not in this window's inputs."""


class Inputs:
    """The products handed to a consumer with one window (a typed read-only mapping)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[ProductKey[Any], object] | None = None) -> None:
        self._values: dict[ProductKey[Any], object] = dict(values or {})

    def get(self, key: ProductKey[T]) -> T | None:
        """The product for ``key``, or None when it is absent (an optional need)."""
        value = self._values.get(key)
        return value if isinstance(value, key.type) else None

    def __getitem__(self, key: ProductKey[T]) -> T:
        value = self._values.get(key)
        if not isinstance(value, key.type):
            raise InputUnavailable(f"input {key.name!r} is not available for this window")
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[ProductKey[Any]]:
        """The products present."""
        return list(self._values)


NO_INPUTS = Inputs()


@dataclass(frozen=True, slots=True)
class BatchItem(Generic[StateT]):
    """One window of a batch handed to :meth:`Plugin.infer`.

    Attributes:
        window: The closed window.
        state: The state :meth:`Plugin.new_state` made for the window's stream (owned by the
            host; ``infer`` may mutate it: no other call touches it meanwhile).
        inputs: The providers' products for this window (what the config's ``requires`` named).
    """

    window: Window
    state: StateT
    inputs: Inputs = NO_INPUTS


class PluginConfig(ConfigModel):
    """Base of every plugin's config model: unknown keys are errors, floats finite."""

    type: str
    enabled: bool = True
    #: torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: Most windows per inference call.
    max_batch: int = Field(64, ge=1, le=4096)
    #: Windows waiting for this plugin before the oldest are dropped.
    queue_size: int = Field(256, ge=1, le=1_000_000)

    def requires(self) -> tuple[Need, ...]:
        """The products this plugin needs with these settings (none by default).

        Known from the validated config before the plugin loads, so the registry can add
        missing providers and order plugins (providers first).
        """
        return ()


@runtime_checkable
class Session(Protocol[ResultT_contra]):
    """Per-stream state of a plugin on the event loop: events and status."""

    def update(self, window: Window, result: ResultT_contra) -> list[Event]:
        """Turn the plugin's result for one window into events (runs on the event loop)."""
        ...

    def close(self) -> list[Event]:
        """The stream ended: close what is open (e.g. an alarm or a speech segment)."""
        ...

    def status(self) -> Mapping[str, JsonValue]:
        """This stream's status as JSON (``/v1/streams`` ``plugin_status``; metrics read it)."""
        ...


@runtime_checkable
class Plugin(Protocol[ResultT, StateT]):
    """A loaded plugin: one per daemon.

    Attributes:
        name: The plugin's ``type``.
        provides: The product its results are (for consumers), or None.
        metrics: The per-stream metrics read from its sessions' :meth:`Session.status`.
    """

    name: str
    provides: ProductKey[Any] | None
    metrics: Sequence[MetricSpec]

    def check_stream(self, stream: StreamInfo) -> str | None:
        """Return why this plugin cannot analyse ``stream`` (e.g. "has no audio"), or None."""
        ...

    def new_state(self, stream: StreamInfo) -> StateT:
        """The per-stream state ``infer`` gets back with each of the stream's windows."""
        ...

    def open(self, stream: StreamInfo) -> Session[ResultT]:
        """Start a session for a new stream."""
        ...

    def infer(self, batch: Sequence[BatchItem[StateT]]) -> Sequence[ResultT]:
        """Analyse many windows (from many streams) in one call; one result per item.

        Runs on the plugin's worker thread; may block and use torch. Each stream's windows
        come in order; never two calls at once.
        """
        ...


class PluginFactory(Protocol):
    """What an entry point of group ``crossmodald.plugins`` names.

    Attributes:
        config_model: The ``[[plugins]]`` table's model.
        provides: The product the plugin provides (None: a pure consumer / event maker).
    """

    config_model: ClassVar[type[PluginConfig]]
    provides: ClassVar[ProductKey[Any] | None]

    @classmethod
    def create(cls, config: Any, device: str) -> Plugin[Any, Any]:
        """Load the plugin (weights and all) for a validated config on a resolved torch device."""
        ...
