"""Per-stream state of the avsync plugin: smoothing, the sync alarm and the drift estimate."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from typing import Literal

from crossmodald.bus.events import Event, JsonValue, Phase
from crossmodald.clock.drift import DriftEstimator
from crossmodald.media import ClockKind, StreamInfo, Window
from crossmodald_plugins.avsync.config import AvSyncConfig
from crossmodald_plugins.avsync.result import AvSyncResult

Direction = Literal["audio_leads", "audio_lags"]

OFFSET_EVENT = "sync.offset"
ALARM_EVENT = "sync.alarm"


class AvSyncSession:
    """Turns each window's :class:`AvSyncResult` into ``sync.offset`` and ``sync.alarm`` events.

    * The smoothed offset is the median of the last ``smoothing_windows`` confident values.
    * The alarm starts after ``alarm_windows`` consecutive confident windows whose smoothed
      offset lies outside the band ``[-alarm_audio_lag_ms, +alarm_audio_lead_ms]`` on the same
      side, and ends after as many inside it (windows below ``min_confidence`` are ignored).
    * Confident offsets feed a :class:`DriftEstimator`; ``drift_ppm`` is reported once it has
      enough span of media time.

    Args:
        stream: The stream this session belongs to.
        config: The plugin config.
        drift: The drift estimator to feed (a fresh default one when None).
    """

    def __init__(
        self, stream: StreamInfo, config: AvSyncConfig, drift: DriftEstimator | None = None
    ) -> None:
        self.stream = stream
        self.config = config
        self.drift = drift if drift is not None else DriftEstimator()
        self._recent: deque[float] = deque(maxlen=config.smoothing_windows)
        #: The confidences of the windows in ``_recent`` (``smoothed_confidence``).
        self._recent_confidence: deque[float] = deque(maxlen=config.smoothing_windows)
        self._alarm: Direction | None = None
        self._outside: Direction | None = None
        self._outside_run = 0
        self._inside_run = 0
        self._last_span: tuple[int, int, ClockKind, int] | None = None
        self._last_data: dict[str, JsonValue] | None = None

    @property
    def alarm(self) -> Direction | None:
        """The direction of the open alarm, or None."""
        return self._alarm

    @property
    def smoothed_audio_lead_ms(self) -> float | None:
        """Median of the recent confident offsets, or None before the first one."""
        return statistics.median(self._recent) if self._recent else None

    def update(self, window: Window, result: AvSyncResult) -> list[Event]:
        """Events for one window: always a ``sync.offset``, and ``sync.alarm`` on changes."""
        self._last_span = (window.start_ns, window.end_ns, window.clock, window.closed_ns)
        confident = (
            result.audio_lead_ms is not None and result.confidence >= self.config.min_confidence
        )
        if confident:
            assert result.audio_lead_ms is not None
            self._recent.append(result.audio_lead_ms)
            self._recent_confidence.append(result.confidence)
            self.drift.add(result.measured_at_ns, result.audio_lead_ms)
        smoothed = self.smoothed_audio_lead_ms
        drift = self.drift.estimate()
        data: dict[str, JsonValue] = {
            "audio_lead_ms": result.audio_lead_ms,
            "confidence": round(result.confidence, 4),
            "method": result.method,
            "smoothed_audio_lead_ms": smoothed,
            "smoothed_confidence": (
                round(statistics.median(self._recent_confidence), 4)
                if self._recent_confidence
                else None
            ),
            "drift_ppm": drift.ppm if drift is not None else None,
            "drift_uncertainty_ppm": drift.uncertainty_ppm if drift is not None else None,
            "reason": result.reason or None,
        }
        if result.method in ("flash", "clap"):  # a clap is one contact/sound pair
            data["pairs"] = [
                {
                    "video_onset_ns": p.video_onset_ns,
                    "audio_onset_ns": p.audio_onset_ns,
                    "audio_lead_ms": p.audio_lead_ms,
                }
                for p in result.pairs
            ]
        else:
            data["peak"] = (
                {
                    "ncc": result.peak.ncc,
                    "sharpness": result.peak.sharpness,
                    "region": result.peak.region,
                }
                if result.peak is not None
                else None
            )
        self._last_data = data
        events = [self._event(OFFSET_EVENT, data, None)]
        if confident and smoothed is not None:
            events.extend(self._alarm_step(smoothed))
        return events

    def status(self) -> Mapping[str, JsonValue]:
        """The latest ``sync.offset`` fields of this stream and whether the alarm is on.

        Keys: ``audio_lead_ms``, ``confidence``, ``method``, ``smoothed_audio_lead_ms``,
        ``smoothed_confidence``, ``drift_ppm``, ``drift_uncertainty_ppm``, ``reason`` (None before the first window),
        ``alarm`` (bool) and ``alarm_direction`` ("audio_leads", "audio_lags" or None).
        """
        last = self._last_data or {}
        out: dict[str, JsonValue] = {
            key: last.get(key)
            for key in (
                "audio_lead_ms",
                "confidence",
                "method",
                "smoothed_audio_lead_ms",
                "smoothed_confidence",
                "drift_ppm",
                "drift_uncertainty_ppm",
                "reason",
            )
        }
        out["alarm"] = self._alarm is not None
        out["alarm_direction"] = self._alarm
        return out

    def close(self) -> list[Event]:
        """End an open alarm (the stream ended)."""
        if self._alarm is None:
            return []
        smoothed = self.smoothed_audio_lead_ms
        event = self._alarm_event(Phase.END, self._alarm, smoothed)
        self._alarm = None
        return [event]

    def _alarm_step(self, smoothed: float) -> list[Event]:
        side: Direction | None = None
        if smoothed > self.config.alarm_audio_lead_ms:
            side = "audio_leads"
        elif smoothed < -self.config.alarm_audio_lag_ms:
            side = "audio_lags"
        if side is None:
            self._inside_run += 1
            self._outside, self._outside_run = None, 0
        else:
            self._inside_run = 0
            self._outside_run = self._outside_run + 1 if side == self._outside else 1
            self._outside = side
        needed = self.config.alarm_windows
        events: list[Event] = []
        if self._alarm is not None and (
            self._inside_run >= needed
            or (self._outside not in (None, self._alarm) and self._outside_run >= needed)
        ):
            events.append(self._alarm_event(Phase.END, self._alarm, smoothed))
            self._alarm = None
        if self._alarm is None and self._outside is not None and self._outside_run >= needed:
            self._alarm = self._outside
            events.append(self._alarm_event(Phase.START, self._alarm, smoothed))
        return events

    def _alarm_event(self, phase: Phase, side: Direction, smoothed: float | None) -> Event:
        limit = (
            self.config.alarm_audio_lead_ms
            if side == "audio_leads"
            else -self.config.alarm_audio_lag_ms
        )
        return self._event(
            ALARM_EVENT,
            {"audio_lead_ms": smoothed, "limit_ms": limit, "direction": side},
            phase,
        )

    def _event(self, kind: str, data: dict[str, JsonValue], phase: Phase | None) -> Event:
        start_ns, end_ns, clock, closed_ns = self._last_span or (0, 0, self.stream.clock, 0)
        return Event(
            type=kind,
            stream=self.stream.name,
            start_ns=start_ns,
            end_ns=end_ns,
            data=data,
            phase=phase,
            clock=clock,
            closed_ns=closed_ns,
        )
