"""clock: pure mapping of raw track timestamps (RTP/PTS/device time) to ns media time.

Every source maps its timestamps through here: container PTS through :class:`TrackTimeline`
(wrap-around, jumps, per-track time bases; a :class:`TimelineGroup` per source), audio sample
counts through :mod:`~crossmodald.clock.samples`, RTP through RTCP sender reports in
:mod:`~crossmodald.clock.rtcp`. Plain synchronous code: no asyncio, no events (a jump comes back
as a :class:`TimestampJump`; the source turns it into a fault), no torch.
"""

from crossmodald.clock.timeline import (
    Mapped,
    Rounding,
    TimelineGroup,
    TimelineStats,
    TimestampJump,
    TrackTimeline,
    ns_to_ticks,
    ticks_to_ns,
)

__all__ = [
    "Mapped",
    "Rounding",
    "TimelineGroup",
    "TimelineStats",
    "TimestampJump",
    "TrackTimeline",
    "ns_to_ticks",
    "ticks_to_ns",
]
