"""Sources: where timed frames and audio chunks come from.

:func:`create_source` builds the source a validated ``[[sources]]`` table describes, through
the factory its ``type`` names (entry-point group ``crossmodald.sources``, see
:mod:`crossmodald.ingest.registry`); every source satisfies
:class:`~crossmodald.ingest.base.Source`.

The names below are imported on first use, so that importing one source type (or reading a
config) does not import every other one (OpenCV, PyAV, aiortc).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossmodald.ingest.base import Source, SourceError, SourceFault
from crossmodald.ingest.pacing import MonotonicPacer, Pacer, VirtualPacer
from crossmodald.ingest.registry import (
    SourceConfigBase,
    SourceFactory,
    SourceRegistry,
    create_source,
)

if TYPE_CHECKING:
    from crossmodald.ingest.device import DeviceSource
    from crossmodald.ingest.media import MediaSource, MediaStats
    from crossmodald.ingest.pattern import (
        PatternSource,
        PatternStats,
        PatternTimeline,
        write_pattern_file,
    )

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
    "SourceConfigBase",
    "SourceError",
    "SourceFactory",
    "SourceFault",
    "SourceRegistry",
    "VirtualPacer",
    "create_source",
    "write_pattern_file",
]

_LAZY = {
    "DeviceSource": "crossmodald.ingest.device",
    "MediaSource": "crossmodald.ingest.media",
    "MediaStats": "crossmodald.ingest.media",
    "PatternSource": "crossmodald.ingest.pattern",
    "PatternStats": "crossmodald.ingest.pattern",
    "PatternTimeline": "crossmodald.ingest.pattern",
    "write_pattern_file": "crossmodald.ingest.pattern",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
