"""avsync: audio/video sync offsets (flash/beep patterns and motion vs audio onsets), batched.

The entry point ``avsync`` of group ``crossmodald.plugins`` names :class:`AvSyncFactory`.
"""

from __future__ import annotations

from crossmodald_plugins.avsync.config import AvSyncConfig
from crossmodald_plugins.avsync.plugin import AvSyncFactory, AvSyncPlugin
from crossmodald_plugins.avsync.result import AvSyncResult, FlashPair, MotionPeak
from crossmodald_plugins.avsync.session import AvSyncSession

__all__ = [
    "AvSyncConfig",
    "AvSyncFactory",
    "AvSyncPlugin",
    "AvSyncResult",
    "AvSyncSession",
    "FlashPair",
    "MotionPeak",
]
