"""The source contract: an async iterator of timed video frames and audio chunks.

Every ingest path (pattern, media files/URLs, WebRTC, local devices) implements :class:`Source`.
The daemon calls :meth:`Source.open` once (it raises :class:`SourceError` with a one-line reason
when the source cannot start), then iterates it until it ends, then calls :meth:`Source.aclose`.
Items of one kind (video or audio) come in capture order; the two kinds may interleave in any
order (the windower aligns them by ``pts_ns``, never by arrival order).

A source may also yield a :class:`SourceFault` among its items (a device that vanished and is being
retried, an overflow, a decode error it skipped): the daemon turns it into a ``stream.fault`` event
and the stream goes on. A fault that ends the source is raised as :class:`SourceError` instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from crossmodald.media import MediaItem, StreamInfo


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
