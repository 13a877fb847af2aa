"""Source types: each ``[[sources]]`` table's ``type`` names a factory found by entry point.

A source type is a factory class named by an entry point of group ``crossmodald.sources``
(the entry point's name is the ``type``), the built-in ones included (see ``pyproject.toml``)::

    [project.entry-points."crossmodald.sources"]
    ndi = "my_package.ndi:NdiSourceFactory"

    class NdiSourceConfig(SourceConfigBase):
        type: Literal["ndi"]
        sender: str

    class NdiSourceFactory:
        config_model = NdiSourceConfig

        @classmethod
        def create(cls, config: NdiSourceConfig, *, clock: Pacer | None = None) -> Source:
            return NdiSource(config)

The table is validated by ``config_model`` (every error at once, under its key path), and
:meth:`SourceFactory.create` builds the :class:`~crossmodald.ingest.base.Source`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from pydantic import Field

from crossmodald.config_base import NAME_PATTERN, ConfigModel
from crossmodald.entrypoints import TypeLoadError, TypeRegistry
from crossmodald.ingest.base import Source, SourceError
from crossmodald.ingest.pacing import Pacer

__all__ = [
    "SOURCES_GROUP",
    "SourceConfigBase",
    "SourceFactory",
    "SourceRegistry",
    "create_source",
]

#: The entry-point group source types are found in.
SOURCES_GROUP = "crossmodald.sources"


class SourceConfigBase(ConfigModel):
    """What every ``[[sources]]`` table has; a source type's model subclasses it.

    A subclass narrows ``type`` to its own name (``type: Literal["ndi"]``) and adds its keys;
    unknown keys are errors (``extra="forbid"``) and the validated config is frozen.

    Attributes:
        type: The source type (the entry point's name).
        name: The stream's name: unique among streams, it names the stream in every event.
    """

    type: str
    name: str = Field(pattern=NAME_PATTERN)

    def declared_frame_rate(self) -> float | None:
        """The video frame rate this table fixes (None: no video, or known only once open).

        The daemon checks ``[window]`` against it when the config is read (a window must
        span a frame); a type that knows its rate from its table overrides this.
        """
        return None

    def declared_sample_rate(self) -> int | None:
        """The audio sample rate this table fixes (None: no audio, or known only once open)."""
        return None


class SourceFactory(Protocol):
    """What an entry point of group ``crossmodald.sources`` names."""

    #: The model of this type's ``[[sources]]`` table.
    config_model: ClassVar[type[SourceConfigBase]]

    @classmethod
    def create(cls, config: Any, *, clock: Pacer | None = None) -> Source:
        """Build the source a validated config (an instance of ``config_model``) describes.

        Args:
            config: The validated table.
            clock: The pacing clock for sources that pace themselves (None: real time); live
                sources that keep their own time ignore it.

        Raises:
            SourceError: The config describes a source that cannot exist. Opening errors come
                later, from :meth:`Source.open`.
        """
        ...


class SourceRegistry(TypeRegistry[SourceFactory, SourceConfigBase]):
    """The source types installed on this machine (entry-point group ``crossmodald.sources``)."""

    kind = "source"
    group = SOURCES_GROUP
    base = SourceConfigBase


def create_source(
    config: SourceConfigBase,
    *,
    clock: Pacer | None = None,
    registry: SourceRegistry | None = None,
) -> Source:
    """The source a validated ``[[sources]]`` table describes, built by its type's factory.

    Args:
        config: A validated ``[[sources]]`` entry.
        clock: The pacing clock (default: real time); tests pass a
            :class:`~crossmodald.ingest.pacing.VirtualPacer`.
        registry: Where the type is looked up (default: the installed types).

    Raises:
        SourceError: The type cannot be loaded, or the config describes a source that cannot
            exist (e.g. a media file that is not there). Opening errors come later,
            from ``open()``.
    """
    types = registry if registry is not None else SourceRegistry.default()
    try:
        factory = types.factory(config.type)
    except TypeLoadError as exc:
        raise SourceError(f"{config.name}: {exc}") from None
    return factory.create(config, clock=clock)
