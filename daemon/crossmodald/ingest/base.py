"""The source contract: an async iterator of timed video frames and audio chunks.

Every ingest path (pattern, media files/URLs, WebRTC, local devices) implements :class:`Source`.
The daemon calls :meth:`Source.open` once (it raises :class:`SourceError` with a one-line reason
when the source cannot start), then iterates it until it ends, then calls :meth:`Source.aclose`.
Items of one kind (video or audio) come in capture order; the two kinds may interleave in any
order (the windower aligns them by ``pts_ns``, never by arrival order).

A source may also yield a :class:`SourceFault` among its items (a device that vanished and is being
retried, an overflow, a decode error it skipped): the daemon turns it into a ``stream.fault`` event
and the stream goes on. A fault that ends the source is raised as :class:`SourceError` instead.

A source may report its own state, the way plugins do (both optional, see :class:`ReportsStatus`):
a ``status()`` method whose mapping ``/v1/streams`` shows under ``source_status`` (WebRTC: its
transport estimate), and a ``metrics`` sequence of :class:`~crossmodald.status.MetricSpec` naming
the status values ``/metrics`` exports. The core reads them through :func:`source_status` and
:func:`source_metrics` and never names a source's fields.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from crossmodald.bus.events import JsonValue
from crossmodald.media import MediaItem, StreamInfo
from crossmodald.status import MetricSpec

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source cannot open or failed while running; the message is one line naming the thing
    and the reason, e.g. ``"clip.mp4: has no audio stream"``."""


@dataclass(frozen=True, slots=True)
class SourceFault:
    """A problem the source recovered from, reported as a ``stream.fault`` event.

    Attributes:
        kind: Short machine-readable kind, e.g. "decode_error", "overflow", "device_lost",
            "device_back", "timestamp_jump".
        message: One human-readable line.
        pts_ns: Where on the stream's media timeline it happened, if known.
    """

    kind: str
    message: str
    pts_ns: int | None = None


@runtime_checkable
class Source(Protocol):
    """A stream of timed media from one origin."""

    name: str

    async def open(self) -> StreamInfo:
        """Open the origin and describe the stream; raises :class:`SourceError`."""
        ...

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        """Frames and chunks until the source ends; raises :class:`SourceError` on failure."""
        ...

    async def aclose(self) -> None:
        """Release everything (idempotent)."""
        ...


@runtime_checkable
class ReportsStatus(Protocol):
    """The optional part of a :class:`Source`: its own status, and which values are metrics.

    Kept out of :class:`Source` so that a source with nothing to say implements neither.
    """

    #: The status values ``/metrics`` exports (labels ``stream`` and ``source``, the type).
    metrics: Sequence[MetricSpec]

    def status(self) -> Mapping[str, JsonValue]:
        """JSON-ready state for ``/v1/streams`` (``source_status``); cheap, on the event loop,
        and still answered after :meth:`Source.aclose` (an ended stream shows its last one)."""
        ...


@runtime_checkable
class DescribesLive(Protocol):
    """The optional part of a :class:`Source` that learns about its stream while it runs (a
    WebRTC publisher's picture size and frame rate, its timing moving to RTCP)."""

    def info(self) -> StreamInfo:
        """The stream as known now (what :meth:`Source.open` returned, updated); cheap."""
        ...


def source_info(source: Source) -> StreamInfo | None:
    """The source's current description, or None when it has no ``info()`` or it failed."""
    if not isinstance(source, DescribesLive):
        return None
    try:
        info = source.info()
    except Exception:  # like status(): never break /v1/streams
        log.exception("source %s: info failed", getattr(source, "name", "?"))
        return None
    return info if isinstance(info, StreamInfo) else None


def source_status(source: Source) -> dict[str, JsonValue] | None:
    """The source's own status, or None when it has no ``status()`` or it failed (logged)."""
    status = getattr(source, "status", None)
    if not callable(status):
        return None
    try:
        return dict(status())
    except Exception:  # one source's broken status must not break /v1/streams for all
        log.exception("source %s: status failed", getattr(source, "name", "?"))
        return None


def source_metrics(source: Source) -> tuple[MetricSpec, ...]:
    """The metrics the source declares (none when it has no ``metrics``).

    Raises:
        SourceError: ``metrics`` is not a sequence of :class:`~crossmodald.status.MetricSpec`.
    """
    specs = getattr(source, "metrics", ())
    name = getattr(source, "name", "?")
    if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
        raise SourceError(f"{name}: metrics must be a sequence of MetricSpec, got {specs!r}")
    for spec in specs:
        if not isinstance(spec, MetricSpec):
            raise SourceError(f"{name}: metrics must hold MetricSpec values, got {spec!r}")
    return tuple(specs)


class Backoff:
    """Exponential backoff: ``initial_s``, doubling up to ``max_s``; counts tries in a row.

    Args:
        initial_s: First delay.
        max_s: Largest delay.
        limit: Tries in a row before giving up (0: never give up).
    """

    def __init__(self, initial_s: float, max_s: float, limit: int = 0) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"Backoff: need 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.limit = limit
        self.tries = 0

    def next_delay_s(self) -> float | None:
        """The delay before the next try, or None once ``limit`` tries have failed."""
        if self.limit and self.tries >= self.limit:
            return None
        delay = min(self.max_s, self.initial_s * 2.0**self.tries)
        self.tries += 1
        return delay

    def reset(self) -> None:
        """It works again: start from ``initial_s`` next time."""
        self.tries = 0
