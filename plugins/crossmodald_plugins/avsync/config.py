"""The avsync plugin's config model (a ``[[plugins]]`` table with ``type = "avsync"``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from crossmodald.runtime.plugin import Need, PluginConfig
from crossmodald_plugins.products import FACE_TRACKS


class AvSyncConfig(PluginConfig):
    """Audio/video sync offset estimation.

    Attributes:
        method: "flash" (test-pattern flashes and beeps, sub-frame precise), "motion" (visual
            motion vs audio onsets, for general content), "clap" (hands meeting vs the clap's
            sound onset, for calibration) or "auto" (flash where a window shows flashes and
            beeps, else clap where it shows one clap, else motion).
        max_lag_ms: Largest offset searched, either sign.
        smoothing_windows: Confident values the smoothed offset is the median of.
        min_confidence: Windows below this confidence feed neither smoothing, alarm nor drift.
        alarm_audio_lead_ms: Alarm when the smoothed offset exceeds this (audio leading).
        alarm_audio_lag_ms: Alarm when the smoothed offset is below minus this (audio lagging).
        alarm_windows: Consecutive confident windows outside (inside) the band that start (end)
            an alarm.
        motion_rate_hz: Common rate of the motion and audio-onset signals of the motion method.
        face_detection: Look for a face and use its mouth region for motion (else whole frame):
            the ``faces`` plugin's tracks when it is enabled (one tracker per stream), else a
            Haar detection of this plugin's own on the middle frame of each window.
    """

    type: Literal["avsync"]
    method: Literal["auto", "flash", "motion", "clap"] = "auto"
    max_lag_ms: float = Field(500.0, gt=0, le=2000)
    smoothing_windows: int = Field(8, ge=1, le=1000)
    min_confidence: float = Field(0.3, ge=0, le=1)
    alarm_audio_lead_ms: float = Field(90.0, gt=0, le=10_000)
    alarm_audio_lag_ms: float = Field(185.0, gt=0, le=10_000)
    alarm_windows: int = Field(3, ge=1, le=1000)
    motion_rate_hz: float = Field(100.0, ge=20, le=1000)
    face_detection: bool = True

    def requires(self) -> tuple[Need, ...]:
        """Face tracks, optionally, when the motion method runs with face detection."""
        if self.face_detection and self.method in ("auto", "motion"):
            return (Need(FACE_TRACKS, optional=True),)
        return ()

    @model_validator(mode="after")
    def _lag_resolution(self) -> AvSyncConfig:
        # The correlation needs a few samples on each side of zero lag.
        if self.max_lag_ms * self.motion_rate_hz / 1000 < 2:
            raise ValueError("max_lag_ms must span at least 2 samples at motion_rate_hz")
        return self
