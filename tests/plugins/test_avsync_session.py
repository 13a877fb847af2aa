"""The avsync session: offset events, smoothing, the sync alarm with hysteresis, drift."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from crossmodald.bus.events import Event, Phase
from crossmodald.media import NS_PER_S, ClockKind, StreamInfo, Window
from crossmodald_plugins.avsync import (
    AvSyncConfig,
    AvSyncResult,
    AvSyncSession,
    FlashPair,
    MotionPeak,
)

INFO = StreamInfo("cam", "pattern", True, True, 30.0, 48000, clock=ClockKind.SYNTHETIC)


def _window(index: int, hop_s: float = 0.5) -> Window:
    start_ns = round(index * hop_s * NS_PER_S)
    return Window(
        stream="cam",
        index=index,
        start_ns=start_ns,
        end_ns=start_ns + 2 * NS_PER_S,
        video=(),
        audio=np.zeros(0, dtype=np.float32),
        audio_valid=np.zeros(0, dtype=bool),
        audio_rate=48000,
        frame_rate=30.0,
        clock=ClockKind.SYNTHETIC,
        closed_ns=1000 + index,
    )


def _flash(window: Window, lead_ms: float | None, confidence: float = 0.9) -> AvSyncResult:
    at_ns = window.start_ns + NS_PER_S
    pairs = () if lead_ms is None else (FlashPair(at_ns, at_ns - round(lead_ms * 1e6), lead_ms),)
    return AvSyncResult(
        audio_lead_ms=lead_ms,
        confidence=confidence if lead_ms is not None else 0.0,
        method="flash",
        measured_at_ns=at_ns,
        pairs=pairs,
        reason="" if lead_ms is not None else "no flash onset",
    )


def _run(
    session: AvSyncSession, leads: Sequence[float | None], conf: float = 0.9
) -> list[list[Event]]:
    out = []
    for i, lead in enumerate(leads):
        out.append(session.update(_window(i), _flash(_window(i), lead, conf)))
    return out


def test_offset_event_shape() -> None:
    session = AvSyncSession(INFO, AvSyncConfig(type="avsync"))
    window = _window(4)
    (event,) = session.update(window, _flash(window, 12.5))
    assert event.type == "sync.offset"
    assert event.stream == "cam"
    assert (event.start_ns, event.end_ns) == (window.start_ns, window.end_ns)
    assert event.clock is ClockKind.SYNTHETIC
    assert event.closed_ns == window.closed_ns
    assert event.phase is None
    data = event.data
    assert data["audio_lead_ms"] == 12.5
    assert data["confidence"] == 0.9
    assert data["method"] == "flash"
    assert data["smoothed_audio_lead_ms"] == 12.5
    assert data["drift_ppm"] is None
    assert data["pairs"] == [
        {
            "video_onset_ns": window.start_ns + NS_PER_S,
            "audio_onset_ns": window.start_ns + NS_PER_S - 12_500_000,
            "audio_lead_ms": 12.5,
        }
    ]
    motion = AvSyncResult(-40.0, 0.6, "motion", 0, peak=MotionPeak(0.5, 0.7, "mouth"))
    (event,) = session.update(window, motion)
    assert event.data["peak"] == {"ncc": 0.5, "sharpness": 0.7, "region": "mouth"}
    assert "pairs" not in event.data


def test_null_window_reports_null_and_keeps_smoothing() -> None:
    session = AvSyncSession(INFO, AvSyncConfig(type="avsync"))
    _run(session, [10.0, 20.0])
    (event,) = session.update(_window(2), _flash(_window(2), None))
    assert event.data["audio_lead_ms"] is None
    assert event.data["confidence"] == 0.0
    assert event.data["reason"] == "no flash onset"
    assert event.data["smoothed_audio_lead_ms"] == 15.0


def test_smoothed_confidence_goes_with_the_smoothed_offset() -> None:
    # The smoothed offset is a median of confident windows; its confidence is theirs, not the
    # latest window's (which may be a low-confidence or empty one).
    session = AvSyncSession(INFO, AvSyncConfig(type="avsync", min_confidence=0.5))
    for i, (lead, conf) in enumerate([(10.0, 0.9), (20.0, 0.7), (30.0, 0.8), (99.0, 0.2)]):
        (event,) = session.update(_window(i), _flash(_window(i), lead, conf))
    assert event.data["confidence"] == 0.2
    assert event.data["smoothed_audio_lead_ms"] == 20.0
    assert event.data["smoothed_confidence"] == 0.8
    assert session.status()["smoothed_confidence"] == 0.8
    fresh = AvSyncSession(INFO, AvSyncConfig(type="avsync"))
    (event,) = fresh.update(_window(0), _flash(_window(0), None))
    assert event.data["smoothed_confidence"] is None


def test_smoothing_is_a_median_of_recent_confident_values() -> None:
    session = AvSyncSession(INFO, AvSyncConfig(type="avsync", smoothing_windows=3))
    events = _run(session, [10.0, 11.0, 400.0, 12.0, 13.0])
    smoothed = [e[0].data["smoothed_audio_lead_ms"] for e in events]
    assert smoothed == [10.0, 10.5, 11.0, 12.0, 13.0]
    # Low-confidence values do not enter the median.
    session.update(_window(5), _flash(_window(5), -900.0, confidence=0.1))
    assert session.smoothed_audio_lead_ms == 13.0


def _alarms(events: list[list[Event]]) -> list[tuple[int, Phase | None, object, object]]:
    return [
        (i, e.phase, e.data["direction"], e.data["limit_ms"])
        for i, batch in enumerate(events)
        for e in batch
        if e.type == "sync.alarm"
    ]


def test_alarm_hysteresis_and_sign() -> None:
    config = AvSyncConfig(type="avsync", smoothing_windows=1, alarm_windows=3)
    session = AvSyncSession(INFO, config)
    # 0, then audio 120 ms ahead (outside +90), a blip back inside, then inside for good.
    leads: list[float | None] = [0.0, 120, 120, 0.0, 120, 120, 120, 120, 0, 0, 120, 0, 0, 0]
    alarms = _alarms(_run(session, leads))
    assert alarms == [
        (6, Phase.START, "audio_leads", 90.0),
        (13, Phase.END, "audio_leads", 90.0),
    ]
    # Audio 200 ms late (beyond -185): an audio_lags alarm with the negative limit.
    session = AvSyncSession(INFO, config)
    alarms = _alarms(_run(session, [-200.0] * 3 + [-150.0] * 3))
    assert alarms == [(2, Phase.START, "audio_lags", -185.0), (5, Phase.END, "audio_lags", -185.0)]


def test_alarm_ignores_low_confidence_and_flips_direction() -> None:
    config = AvSyncConfig(type="avsync", smoothing_windows=1, alarm_windows=2)
    session = AvSyncSession(INFO, config)
    events = _run(session, [300.0, 300.0])
    assert _alarms(events) == [(1, Phase.START, "audio_leads", 90.0)]
    # Unconfident windows inside the band change nothing.
    for i in range(2, 6):
        assert session.update(_window(i), _flash(_window(i), 0.0, confidence=0.05))[1:] == []
    assert session.alarm == "audio_leads"
    flip = [session.update(_window(i), _flash(_window(i), -300.0)) for i in (6, 7)]
    assert _alarms(flip) == [
        (1, Phase.END, "audio_leads", 90.0),
        (1, Phase.START, "audio_lags", -185.0),
    ]


def test_close_ends_an_open_alarm() -> None:
    config = AvSyncConfig(type="avsync", smoothing_windows=1, alarm_windows=1)
    session = AvSyncSession(INFO, config)
    assert session.close() == []
    _run(session, [500.0])
    (end,) = session.close()
    assert end.type == "sync.alarm"
    assert end.phase is Phase.END
    assert end.data["direction"] == "audio_leads"
    assert (end.start_ns, end.end_ns) == (0, 2 * NS_PER_S)
    assert session.close() == []


@pytest.mark.parametrize("drift_ppm", [100.0, -100.0])
def test_session_reports_drift(drift_ppm: float) -> None:
    session = AvSyncSession(INFO, AvSyncConfig(type="avsync"))
    rng = np.random.default_rng(0)
    events = []
    for i in range(120):  # 60 s at a 0.5 s hop
        window = _window(i)
        t_s = (window.start_ns + NS_PER_S) / NS_PER_S
        lead = 20.0 - drift_ppm * 1e-3 * t_s + float(rng.uniform(-0.5, 0.5))
        events.append(session.update(window, _flash(window, lead))[0])
    assert events[10].data["drift_ppm"] is None  # not enough span yet
    final = events[-1].data["drift_ppm"]
    assert final is not None
    assert abs(final - drift_ppm) < 20.0
    assert events[-1].data["drift_uncertainty_ppm"] < 20.0
