"""Sources: where timed frames and audio chunks come from.

:func:`create_source` builds the source a validated config describes; every source satisfies
:class:`~crossmodald.ingest.base.Source`.
"""

from __future__ import annotations

from crossmodald.ingest.base import Source, SourceError, SourceFault
from crossmodald.ingest.device import DeviceSource
from crossmodald.ingest.media import MediaSource, MediaStats
from crossmodald.ingest.pacing import MonotonicPacer, Pacer, VirtualPacer
from crossmodald.ingest.pattern import (
    PatternSource,
    PatternStats,
    PatternTimeline,
    write_pattern_file,
)
from crossmodald.service.config import DeviceSourceConfig, MediaSourceConfig, PatternSourceConfig

__all__ = [
    "DeviceSource",
    "MediaSource",
    "MediaStats",
    "MonotonicPacer",
    "Pacer",
    "PatternSource",
    "PatternStats",
    "PatternTimeline",
    "Source",
    "SourceError",
    "SourceFault",
    "VirtualPacer",
    "create_source",
    "write_pattern_file",
]


def create_source(
    config: PatternSourceConfig | MediaSourceConfig | DeviceSourceConfig,
    *,
    clock: Pacer | None = None,
) -> Source:
    """The source a config describes.

    Args:
        config: A validated ``[[sources]]`` entry.
        clock: The pacing clock (default: real time, :class:`MonotonicPacer`); tests pass a
            :class:`VirtualPacer`.

    Raises:
        SourceError: The config describes a source that cannot exist (e.g. a pattern whose
            flash outlasts its period). Opening errors come later, from ``open()``.
    """
    pacer: Pacer = clock if clock is not None else MonotonicPacer()
    if isinstance(config, PatternSourceConfig):
        return PatternSource(config, pacer)
    if isinstance(config, MediaSourceConfig):
        return MediaSource(config, pacer)
    if isinstance(config, DeviceSourceConfig):
        return DeviceSource(config)  # live devices keep their own time: no pacer
    raise SourceError(
        f"{getattr(config, 'name', '?')}: unknown source type {type(config).__name__}"
    )
