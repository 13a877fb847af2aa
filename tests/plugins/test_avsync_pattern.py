"""avsync on the project's real pattern source, cut into windows by the real windower."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodald.ingest.pattern import PatternSource
from crossmodald.media import NS_PER_S, AudioChunk, VideoFrame, Window
from crossmodald.service.config import PatternSourceConfig
from crossmodald.window.windower import Windower
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory, AvSyncPlugin


async def _windows(**pattern: object) -> tuple[PatternSource, list[Window]]:
    config = PatternSourceConfig.model_validate(
        {"type": "pattern", "name": "pat", "width": 160, "height": 120, "realtime": False} | pattern
    )
    source = PatternSource(config)
    info = await source.open()
    assert info.sample_rate is not None
    windower = Windower(
        "pat",
        length_ns=2 * NS_PER_S,
        hop_ns=NS_PER_S // 2,
        lateness_ns=NS_PER_S // 5,
        has_video=True,
        has_audio=True,
        sample_rate=info.sample_rate,
        frame_rate=info.frame_rate,
        clock=info.clock,
    )
    windows: list[Window] = []
    async for item in source:
        if isinstance(item, VideoFrame | AudioChunk):
            windows += windower.push(item, 0)
    windows += windower.flush(0)
    return source, windows


@pytest.fixture(scope="module")
def plugin() -> AvSyncPlugin:
    return AvSyncFactory.create(AvSyncConfig(type="avsync"), "cpu")


@pytest.mark.parametrize(
    ("lead_ms", "fps", "rate"),
    [(-500.0, "30000/1001", 44100), (13.3, 25, 16000), (320.0, 30, 48000)],
)
async def test_pattern_offsets_within_2ms(
    plugin: AvSyncPlugin, lead_ms: float, fps: object, rate: int
) -> None:
    _, windows = await _windows(audio_lead_ms=lead_ms, fps=fps, sample_rate=rate, duration_s=12.0)
    results = plugin.analyze(windows)
    estimates = [r.audio_lead_ms for r in results if r.audio_lead_ms is not None]
    assert len(estimates) >= len(windows) // 2
    assert all(r.method == "flash" for r in results if r.audio_lead_ms is not None)
    assert max(abs(e - lead_ms) for e in estimates) < 2.0


async def test_pattern_drift_100ppm_within_20ppm_after_60s(plugin: AvSyncPlugin) -> None:
    source, windows = await _windows(audio_lead_ms=37.0, drift_ppm=100.0, duration_s=60.0)
    info = await source.open()
    session = plugin.open(info)
    events = []
    for start in range(0, len(windows), 64):
        batch = windows[start : start + 64]
        for window, result in zip(batch, plugin.analyze(batch), strict=True):
            events += session.update(window, result)
    offsets = [e for e in events if e.type == "sync.offset"]
    drift = offsets[-1].data["drift_ppm"]
    print(f"pattern 100 ppm, 60 s: drift estimate {drift:.2f} ppm")
    assert abs(drift - 100.0) < 20.0
    # The per-window offsets follow the drift: audio stamped later and later.
    leads = np.array(
        [e.data["audio_lead_ms"] for e in offsets if e.data["audio_lead_ms"] is not None]
    )
    assert leads[:10].mean() > leads[-10:].mean()
