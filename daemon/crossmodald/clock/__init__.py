"""clock: pure mapping of raw track timestamps (RTP/PTS/device time) to ns media time."""

from crossmodald.clock.timeline import (
    Mapped,
    TimelineStats,
    TimestampJump,
    TrackTimeline,
    jump_event,
    ns_to_ticks,
    ticks_to_ns,
)

__all__ = [
    "Mapped",
    "TimelineStats",
    "TimestampJump",
    "TrackTimeline",
    "jump_event",
    "ns_to_ticks",
    "ticks_to_ns",
]
