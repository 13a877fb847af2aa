"""What :meth:`AvSyncPlugin.infer` returns per window (handed to the session on the event loop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: "lipsync": the ``lipsync`` plugin, which reuses the avsync session for smoothing and alarms.
Method = Literal["flash", "motion", "clap", "lipsync"]


@dataclass(frozen=True, slots=True)
class FlashPair:
    """One flash matched with one beep.

    Attributes:
        video_onset_ns: Sub-frame onset of the flash on the window's media timeline.
        audio_onset_ns: Sample-precise onset of the beep.
        audio_lead_ms: ``video_onset - audio_onset`` in ms (positive = audio ahead).
    """

    video_onset_ns: int
    audio_onset_ns: int
    audio_lead_ms: float


@dataclass(frozen=True, slots=True)
class MotionPeak:
    """The correlation peak of the motion method.

    Attributes:
        ncc: Normalised cross-correlation at the peak (-1..1).
        sharpness: 0..1, how far the peak stands above the best lag away from it.
        region: "mouth" when a face was found, else "frame".
    """

    ncc: float
    sharpness: float
    region: Literal["mouth", "frame"]


@dataclass(frozen=True, slots=True)
class AvSyncResult:
    """The offset estimate of one window.

    Attributes:
        audio_lead_ms: The window's offset (positive = audio ahead of video, ITU-R BT.1359),
            None when the window gives no estimate.
        confidence: 0..1 (0 whenever ``audio_lead_ms`` is None).
        method: Which method produced it.
        measured_at_ns: Media time the estimate refers to (mean flash onset, or window middle).
        pairs: Flash/beep pairs used (flash method).
        peak: Correlation peak (motion method).
        reason: Why there is no estimate, e.g. "no flash", "silent audio"; "" otherwise.
    """

    audio_lead_ms: float | None
    confidence: float
    method: Method
    measured_at_ns: int
    pairs: tuple[FlashPair, ...] = ()
    peak: MotionPeak | None = None
    reason: str = ""
