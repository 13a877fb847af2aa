"""The example package's own tests, as its CI would run them (``pytest`` in the package folder).

They run the plugin in the daemon's own pipeline through :mod:`crossmodald.harness`: the
installed ``tone`` source, the windower, the plugin host, the sessions; nothing is mocked.
"""

from __future__ import annotations

import pytest

from crossmodald.harness import run_plugins_sync
from crossmodald.media import NS_PER_S

#: Three seconds of a half-scale 440 Hz sine, as fast as the daemon takes it.
TONE = {"type": "tone", "name": "tone", "duration_s": 3, "realtime": False}


def test_a_half_scale_sine_reads_minus_9_dbfs() -> None:
    result = run_plugins_sync([TONE], [{"type": "loudness"}])
    assert result.code == 0, result.failures()
    levels = [e for e in result.events("tone") if e.type == "audio.level"]
    assert len(levels) >= 4
    for event in levels:
        # RMS of a sine of peak 0.5: 0.5 / sqrt(2), i.e. -9.03 dBFS; its peak: -6.02 dBFS.
        assert event.data["rms_dbfs"] == pytest.approx(-9.03, abs=0.02)
        assert event.data["peak_dbfs"] == pytest.approx(-6.02, abs=0.02)
        # Windows past the end of the tone hold fewer samples, measured all the same.
        assert event.data["valid"] == (
            1.0
            if event.end_ns <= 3 * NS_PER_S
            else pytest.approx((3 * NS_PER_S - event.start_ns) / (event.end_ns - event.start_ns))
        )
        # Face tracks are an optional need: without a `faces` table nobody tracks faces.
        assert "faces" not in event.data
    assert not [e for e in result.events("tone") if e.type == "face"]


def test_face_tracks_are_counted_when_faces_runs() -> None:
    result = run_plugins_sync([TONE], [{"type": "loudness"}, {"type": "faces"}])
    assert result.code == 0, result.failures()
    levels = [e for e in result.events("tone") if e.type == "audio.level"]
    assert levels
    assert all(event.data["faces"] == 0 for event in levels)  # a moving bar has no face


def test_a_tone_above_nyquist_is_a_config_error() -> None:
    from crossmodald.service.config import ConfigError

    with pytest.raises(ConfigError, match="below half the sample rate"):
        run_plugins_sync([{**TONE, "frequency_hz": 9000}], [{"type": "loudness"}])
