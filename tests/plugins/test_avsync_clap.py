"""The avsync clap method on synthetic clap recordings written with PyAV and read back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from clapkit import write_clap_clip
from mediakit import build_source, record_windows

from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.media import Window
from crossmodald.service.config import MediaSourceConfig, PatternSourceConfig, WindowConfig
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory, AvSyncPlugin
from crossmodald_plugins.avsync.clap import analyze_clap


async def clip_windows(path: Path, seconds: float) -> list[Window]:
    """The clip read by the real media source and cut by the real windower (2 s, hop 0.5 s)."""
    config = MediaSourceConfig.model_validate({"type": "media", "name": "clap", "url": str(path)})
    windows, _ = await record_windows(build_source(config), seconds, WindowConfig())
    return windows


@pytest.fixture(scope="module")
def clap_plugin() -> AvSyncPlugin:
    return AvSyncFactory.create(AvSyncConfig(type="avsync", method="clap"), "cpu")


@pytest.fixture(scope="module")
def auto_plugin() -> AvSyncPlugin:
    return AvSyncFactory.create(AvSyncConfig(type="avsync"), "cpu")


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("lead_ms", [-120.0, 0.0, 80.0])
async def test_clap_offset_within_a_frame(
    tmp_path: Path,
    clap_plugin: AvSyncPlugin,
    auto_plugin: AvSyncPlugin,
    fps: int,
    lead_ms: float,
) -> None:
    # The contact's phase within a frame differs from case to case.
    contact_s = 1.3 + 0.0071 * (lead_ms / 20.0) + 0.013 * (fps - 25)
    clip = write_clap_clip(
        tmp_path / "clap.mkv", fps=fps, audio_lead_ms=lead_ms, contacts_s=(contact_s,), seconds=3.0
    )
    windows = await clip_windows(clip, 3.0)
    frame_ms = 1000 / fps
    forced = clap_plugin.analyze(windows)
    auto = auto_plugin.analyze(windows)
    confident = [r for r in forced if r.audio_lead_ms is not None and r.confidence >= 0.3]
    assert confident, [r.reason for r in forced]
    errors = [r.audio_lead_ms - lead_ms for r in confident if r.audio_lead_ms is not None]
    print(f"clap {fps} fps, lead {lead_ms:+.0f} ms: errors {np.round(errors, 1)} ms")
    assert max(abs(e) for e in errors) < frame_ms
    assert all(r.method == "clap" for r in forced)
    for r in confident:
        (pair,) = r.pairs
        assert abs(pair.video_onset_ns / 1e9 - contact_s) < frame_ms / 1000
        assert pair.audio_onset_ns / 1e6 == pytest.approx(contact_s * 1000 - lead_ms, abs=0.5)
    # Auto finds the same windows to be claps and gives the same answers there.
    for one, other in zip(forced, auto, strict=True):
        if one.audio_lead_ms is not None:
            assert other.method == "clap"
            assert other.audio_lead_ms == pytest.approx(one.audio_lead_ms)


async def test_batch_matches_single_calls(tmp_path: Path, clap_plugin: AvSyncPlugin) -> None:
    clip = write_clap_clip(
        tmp_path / "clap.mkv", fps=25, audio_lead_ms=40.0, contacts_s=(1.2,), seconds=2.5
    )
    windows = await clip_windows(clip, 2.5)
    batched = clap_plugin.analyze(windows)
    assert any(r.audio_lead_ms is not None for r in batched)
    for window, many in zip(windows, batched, strict=True):
        (one,) = clap_plugin.analyze([window])
        assert (one.audio_lead_ms is None) == (many.audio_lead_ms is None)
        if one.audio_lead_ms is not None:
            assert many.audio_lead_ms == pytest.approx(one.audio_lead_ms, abs=1e-6)
            assert many.confidence == pytest.approx(one.confidence, abs=1e-6)


async def test_pattern_windows_stay_flash_in_auto(
    tmp_path: Path, auto_plugin: AvSyncPlugin
) -> None:
    pattern = PatternSourceConfig.model_validate(
        {
            "type": "pattern",
            "name": "p",
            "width": 160,
            "height": 120,
            "fps": 25,
            "audio_lead_ms": 60.0,
        }
    )
    clip = tmp_path / "pattern.mp4"
    write_pattern_file(pattern, clip, duration_s=4.0)
    results = auto_plugin.analyze(await clip_windows(clip, 4.0))
    estimated = [r for r in results if r.audio_lead_ms is not None]
    assert estimated
    assert all(r.method == "flash" for r in estimated)
    assert not any(r.method == "clap" for r in results)


async def test_sounds_that_are_not_claps(
    tmp_path: Path, clap_plugin: AvSyncPlugin, auto_plugin: AvSyncPlugin
) -> None:
    clip = write_clap_clip(
        tmp_path / "clap.mkv", fps=25, audio_lead_ms=0.0, contacts_s=(1.0,), seconds=2.0
    )
    (window,) = [w for w in await clip_windows(clip, 2.0) if w.start_ns == 0]
    rate = window.audio_rate
    t = np.arange(len(window.audio)) / rate
    rng = np.random.default_rng(3)
    hiss = rng.normal(0, 0.003, len(t))
    # A sustained vowel-like tone starting with the clap: loud, but it does not die down.
    vowel = np.where((t >= 0.95) & (t < 1.6), 0.4 * np.sin(2 * np.pi * 220 * t), 0.0) + hiss
    # Two claps 0.6 s apart: which one the hands made is ambiguous.
    two = hiss.copy()
    for onset in (0.7, 1.3):
        after = t - onset
        two += np.where(after >= 0, 0.5 * np.exp(-np.clip(after, 0, None) / 0.012), 0.0) * (
            rng.normal(0, 1, len(t)).clip(-2.5, 2.5) / 2.5
        )
    cases = {
        "sound not impulsive (or cut off by the window end)": vowel,
        "several loud sounds": two,
        "no clap sound": hiss,
    }
    windows = [replace(window, audio=audio.astype(np.float32)) for audio in cases.values()]
    assert [r.reason for r in clap_plugin.analyze(windows)] == list(cases)
    # Auto falls back to the motion method for all of them (no flash either).
    assert [r.method for r in auto_plugin.analyze(windows)] == ["motion"] * len(cases)


async def test_no_clap_reasons(tmp_path: Path, clap_plugin: AvSyncPlugin) -> None:
    # The hands clap in silence: motion but no sound; then a sound with nobody clapping.
    silent = write_clap_clip(
        tmp_path / "mute.mkv", fps=25, audio_lead_ms=0.0, contacts_s=(1.0,), seconds=2.0
    )
    windows = await clip_windows(silent, 2.0)
    muted = [replace(w, audio=w.audio * 0) for w in windows]
    assert {r.reason for r in clap_plugin.analyze(muted)} == {"silent audio"}
    # The clap's sound but a frozen picture (every frame the first one, at its own time).
    window = windows[0]
    frozen = tuple(replace(window.video[0], pts_ns=f.pts_ns) for f in window.video)
    still = replace(window, video=frozen)
    (result,) = clap_plugin.analyze([still])
    assert result.audio_lead_ms is None
    assert result.reason.startswith("no hands meeting")


def test_analyze_clap_of_nothing() -> None:
    import torch

    assert analyze_clap([], torch.device("cpu"), 500.0) == []
