"""Speech activity: Silero VAD (weights from the installed ``silero-vad`` package).

The ``speech`` plugin resamples each window's audio to 16 kHz in torch, runs Silero VAD on all
windows of a batch in one call and emits ``speech`` events per stream: ``start`` once a segment
is confirmed, ``update`` per window while it lasts, ``end`` with the whole segment; ``data``
holds ``probability`` (and ``duration_ms`` on ``end``).

:func:`attribute_turns` (in :mod:`.turns`) attributes speech segments to face tracks from their
per-frame speaking scores, for ``dialogue.turn`` events.
"""

from __future__ import annotations

from crossmodald_plugins.vad.model import SileroVad, VadLoadError, resample
from crossmodald_plugins.vad.plugin import SpeechConfig, SpeechFactory, SpeechPlugin, SpeechResult
from crossmodald_plugins.vad.segments import SegmentChange, SpeechSegment, SpeechSegmenter
from crossmodald_plugins.vad.turns import OFF_SCREEN, DialogueTurn, TrackScores, attribute_turns

__all__ = [
    "OFF_SCREEN",
    "DialogueTurn",
    "SegmentChange",
    "SileroVad",
    "SpeechConfig",
    "SpeechFactory",
    "SpeechPlugin",
    "SpeechResult",
    "SpeechSegment",
    "SpeechSegmenter",
    "TrackScores",
    "VadLoadError",
    "attribute_turns",
    "resample",
]
