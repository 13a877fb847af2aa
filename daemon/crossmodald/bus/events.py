"""Typed events, and their one JSON form (schema version :data:`SCHEMA_VERSION`).

Plugins and sources create :class:`Event` values; the bus stamps each with an ``id``, a
per-daemon ``seq`` and a wall-clock ``ts`` and serialises it once into an :class:`Envelope`.
The JSON shape is documented in ``event.schema.json`` beside this module and in
``docs/events.md``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crossmodald.media import ClockKind

SCHEMA_VERSION = 1

JsonValue = Any  # JSON-compatible value (str, int, float, bool, None, list, dict)


class Phase(enum.StrEnum):
    """Lifecycle of events that last (speech, a face speaking, an alarm, a fault)."""

    START = "start"
    UPDATE = "update"
    END = "end"


@dataclass(frozen=True, slots=True)
class Event:
    """One event, before the bus stamps it.

    Attributes:
        type: Dotted event type, e.g. ``sync.offset``, ``sync.alarm``, ``stream.fault``.
        stream: The stream it concerns ("" for daemon-wide events).
        start_ns: Start of the media-time span it covers (on the stream's timeline).
        end_ns: End of that span.
        data: The type-specific payload (JSON-compatible).
        phase: For lasting events: start, update or end; None for instantaneous ones.
        clock: The clock the media times rest on.
        closed_ns: Daemon monotonic time when the window behind it closed (0 when none); lets
            local subscribers measure latency.
    """

    type: str
    stream: str
    start_ns: int
    end_ns: int
    data: Mapping[str, JsonValue] = field(default_factory=dict)
    phase: Phase | None = None
    clock: ClockKind = ClockKind.UNKNOWN
    closed_ns: int = 0


@dataclass(frozen=True, slots=True)
class Envelope:
    """An event as the bus delivers it: stamped, and serialised exactly once."""

    seq: int
    id: str
    type: str
    stream: str
    json: str

    def as_dict(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = json.loads(self.json)
        return out


def to_json_dict(
    event: Event, *, seq: int, event_id: str, ts: str, daemon: str | None = None
) -> dict[str, JsonValue]:
    """The event's JSON object (see ``event.schema.json``).

    ``daemon`` names the daemon that produced it (fleet mode: its ``daemon_id``); the key is
    left out when None.
    """
    media: dict[str, JsonValue] = {
        "start_ns": event.start_ns,
        "end_ns": event.end_ns,
        "clock": event.clock.value,
    }
    out: dict[str, JsonValue] = {
        "schema": SCHEMA_VERSION,
        "id": event_id,
        "seq": seq,
        "ts": ts,
        "stream": event.stream,
        "type": event.type,
        "phase": event.phase.value if event.phase is not None else None,
        "media": media,
        "data": dict(event.data),
    }
    if event.closed_ns:
        out["closed_mono_ns"] = event.closed_ns
    if daemon is not None:
        out["daemon"] = daemon
    return out
