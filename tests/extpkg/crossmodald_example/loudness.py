"""The ``loudness`` plugin: each window's audio level as an ``audio.level`` event.

For every window it measures the RMS and the peak of the samples that were delivered, in dBFS
(0 dBFS: a full-scale square wave; a full-scale sine has an RMS of -3.01 dBFS), and keeps the
loudest peak so far in the host-owned per-stream state. With ``count_faces`` it also reports
how many face tracks the ``faces`` plugin sees on the window, when ``faces`` runs anyway: an
optional need, so it never adds ``faces`` by itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from crossmodald.bus.events import Event, JsonValue
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, Need, PluginConfig, ProductKey
from crossmodald_plugins.products import FACE_TRACKS

EVENT_TYPE = "audio.level"


class LoudnessConfig(PluginConfig):
    """``[[plugins]]`` table of the ``loudness`` plugin."""

    type: str = "loudness"
    #: Levels below this are reported as this (digital silence has no finite dBFS).
    floor_dbfs: float = Field(-100.0, ge=-200.0, lt=0.0)
    #: Add the number of face tracks on the window (when the ``faces`` plugin runs).
    count_faces: bool = True

    def requires(self) -> tuple[Need, ...]:
        """Face tracks, optionally: used when ``faces`` is configured, never added for us."""
        return (Need(FACE_TRACKS, optional=True),) if self.count_faces else ()


@dataclass(slots=True)
class LevelState:
    """Per-stream state, made and kept by the host; only ``infer`` touches it (no lock)."""

    max_peak_dbfs: float | None = None


@dataclass(frozen=True, slots=True)
class Level:
    """The plugin's result for one window.

    Attributes:
        rms_dbfs: RMS of the delivered samples (None when none were delivered).
        peak_dbfs: Largest absolute sample (None when none were delivered).
        max_peak_dbfs: The loudest peak of the stream so far.
        valid: Fraction of the window's samples that were delivered.
        faces: Face tracks on the window, or None when no face tracks came with it.
    """

    rms_dbfs: float | None
    peak_dbfs: float | None
    max_peak_dbfs: float | None
    valid: float
    faces: int | None


def dbfs(value: float, floor_dbfs: float) -> float:
    """``20 * log10(value)``, never below ``floor_dbfs``, rounded to 0.01 dB."""
    if value <= 0.0:
        return floor_dbfs
    return round(max(floor_dbfs, 20.0 * math.log10(value)), 2)


class LoudnessSession:
    """One stream's events and status (runs on the event loop)."""

    def __init__(self) -> None:
        self._latest: Level | None = None
        self._windows = 0

    def update(self, window: Window, result: Level) -> list[Event]:
        """One ``audio.level`` event per window."""
        self._latest = result
        self._windows += 1
        data: dict[str, JsonValue] = {
            "rms_dbfs": result.rms_dbfs,
            "peak_dbfs": result.peak_dbfs,
            "max_peak_dbfs": result.max_peak_dbfs,
            "valid": result.valid,
        }
        if result.faces is not None:
            data["faces"] = result.faces
        return [
            Event(
                type=EVENT_TYPE,
                stream=window.stream,
                start_ns=window.start_ns,
                end_ns=window.end_ns,
                data=data,
                clock=window.clock,
                closed_ns=window.closed_ns,
            )
        ]

    def close(self) -> list[Event]:
        """Nothing lasts between windows: nothing to close."""
        return []

    def status(self) -> Mapping[str, JsonValue]:
        """The latest level (``/v1/streams`` ``plugin_status.loudness``; the metrics read it)."""
        latest = self._latest
        return {
            "level_dbfs": latest.rms_dbfs if latest else None,
            "peak_dbfs": latest.peak_dbfs if latest else None,
            "windows": self._windows,
        }


class LoudnessPlugin:
    """Audio level per window; one per daemon, shared by every stream."""

    name = "loudness"
    provides: ClassVar[ProductKey[Any] | None] = None
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "crossmodald_stream_example_audio_level_dbfs",
            "gauge",
            "RMS audio level of the latest window (dBFS).",
            "level_dbfs",
        ),
        MetricSpec(
            "crossmodald_stream_example_windows_total",
            "counter",
            "Windows whose level was measured.",
            "windows",
        ),
    )

    def __init__(self, config: LoudnessConfig) -> None:
        self.config = config

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_audio else "has no audio"

    def new_state(self, stream: StreamInfo) -> LevelState:
        return LevelState()

    def open(self, stream: StreamInfo) -> LoudnessSession:
        return LoudnessSession()

    def infer(self, batch: Sequence[BatchItem[LevelState]]) -> list[Level]:
        """Measure each window (on the plugin's worker thread, windows of many streams)."""
        return [self._measure(item) for item in batch]

    def _measure(self, item: BatchItem[LevelState]) -> Level:
        window, state, floor = item.window, item.state, self.config.floor_dbfs
        samples = window.audio[window.audio_valid].astype(np.float64)
        valid = float(window.audio_valid.mean()) if len(window.audio_valid) else 0.0
        rms = peak = None
        if len(samples):
            rms = dbfs(float(np.sqrt(np.mean(samples * samples))), floor)
            peak = dbfs(float(np.max(np.abs(samples))), floor)
            if state.max_peak_dbfs is None or peak > state.max_peak_dbfs:
                state.max_peak_dbfs = peak
        tracks = item.inputs.get(FACE_TRACKS)
        faces = len(tracks.tracks) if tracks is not None else None
        return Level(rms, peak, state.max_peak_dbfs, round(valid, 4), faces)


class LoudnessFactory:
    """Audio level per window (RMS and peak dBFS) as audio.level events (example package)."""

    config_model: ClassVar[type[PluginConfig]] = LoudnessConfig
    provides: ClassVar[ProductKey[Any] | None] = None

    @classmethod
    def create(cls, config: Any, device: str) -> LoudnessPlugin:
        """Build the plugin (``device`` is unused: numpy on the CPU is enough)."""
        if not isinstance(config, LoudnessConfig):
            raise TypeError(f"loudness: expected LoudnessConfig, got {type(config).__name__}")
        return LoudnessPlugin(config)
