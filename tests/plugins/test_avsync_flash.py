"""The avsync flash method on rendered test-pattern windows: offsets, batching, nulls, speed."""

from __future__ import annotations

import time
from fractions import Fraction

import cv2
import numpy as np
import pytest

from crossmodald.media import NS_PER_S, ClockKind, VideoFrame, Window
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory, AvSyncPlugin, AvSyncResult

OFFSETS_MS = (-500.0, -320.0, -120.0, -40.0, 0.0, 13.3, 40.0, 120.0, 320.0, 500.0)
FPS = (Fraction(25), Fraction(30), Fraction(30000, 1001))
RATES = (16000, 44100, 48000)
PERIOD_S = 1.2


def render_pattern_window(
    *,
    fps: Fraction,
    rate: int,
    audio_lead_ms: float,
    flash_times_s: list[float],
    start_s: float,
    length_s: float = 2.0,
    flash_s: float = 0.1,
    beep_s: float = 0.1,
    tone_hz: float = 1000.0,
    size: tuple[int, int] = (240, 320),
    noise: float = 0.0,
    index: int = 0,
    seed: int = 0,
) -> Window:
    """Render the pattern definition into a Window.

    Frame i at t_i = i / fps integrates [t_i, t_i + 1/fps): its background is 16 + f * 219 with
    f the share of the exposure a flash covers; a 16x16 bright square moves across. Each beep is
    a 0.5-amplitude sine starting at zero phase at flash time - audio_lead.
    """
    rng = np.random.default_rng(seed)
    start_ns = round(start_s * NS_PER_S)
    end_ns = start_ns + round(length_s * NS_PER_S)
    frame_s = 1 / fps
    height, width = size
    frames = []
    first = int(start_s * fps) - 1
    for i in range(max(first, 0), int(end_ns * fps / NS_PER_S) + 2):
        pts_ns = round(i * NS_PER_S / fps)
        if not start_ns <= pts_ns < end_ns:
            continue
        t0, t1 = float(i * frame_s), float((i + 1) * frame_s)
        cover = sum(max(0.0, min(t1, t + flash_s) - max(t0, t)) for t in flash_times_s)
        luma_f = np.full((height, width), 16 + cover / float(frame_s) * 219)
        x = (i * 7) % (width - 16)
        luma_f[height // 2 : height // 2 + 16, x : x + 16] = 235.0
        luma = np.clip(np.round(luma_f), 0, 255).astype(np.uint8)
        thumb = np.asarray(cv2.resize(luma, (80, 60), interpolation=cv2.INTER_AREA), np.uint8)
        frames.append(VideoFrame("pat", pts_ns, 0, luma, thumb, ClockKind.SYNTHETIC))
    n = round(length_s * rate)
    t = start_ns / NS_PER_S + np.arange(n) / rate
    audio = rng.normal(0.0, noise, n) if noise else np.zeros(n)
    for flash_t in flash_times_s:
        onset = flash_t - audio_lead_ms / 1000
        on = (t >= onset) & (t < onset + beep_s)
        audio[on] += 0.5 * np.sin(2 * np.pi * tone_hz * (t[on] - onset))
    return Window(
        stream="pat",
        index=index,
        start_ns=start_ns,
        end_ns=end_ns,
        video=tuple(frames),
        audio=audio.astype(np.float32),
        audio_valid=np.ones(n, dtype=bool),
        audio_rate=rate,
        frame_rate=float(fps),
        clock=ClockKind.SYNTHETIC,
    )


def pattern_window(
    fps: Fraction, rate: int, lead_ms: float, rng: np.random.Generator, **kw: object
) -> Window:
    """A window whose flashes (every 1.2 s, random sub-frame phase) pair inside it."""
    start = float(rng.uniform(5.0, 50.0))
    first = start + 0.55 + float(rng.uniform(0.0, 0.1))
    flashes = [first - PERIOD_S, first, first + PERIOD_S]
    return render_pattern_window(
        fps=fps,
        rate=rate,
        audio_lead_ms=lead_ms,
        flash_times_s=flashes,
        start_s=start,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def plugin() -> AvSyncPlugin:
    return AvSyncFactory.create(AvSyncConfig(type="avsync"), "cpu")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fps", FPS, ids=lambda f: f"{float(f):.2f}fps")
def test_offsets_within_2ms(plugin: AvSyncPlugin, fps: Fraction, rate: int) -> None:
    rng = np.random.default_rng(int(fps * 1000) + rate)
    windows = [pattern_window(fps, rate, lead, rng, index=i) for i, lead in enumerate(OFFSETS_MS)]
    results = plugin.analyze(windows)
    for lead, result in zip(OFFSETS_MS, results, strict=True):
        assert result.method == "flash"
        assert result.audio_lead_ms is not None, f"{lead} ms: {result.reason}"
        assert abs(result.audio_lead_ms - lead) < 2.0, f"{lead} ms: got {result.audio_lead_ms}"
        assert result.confidence >= 0.5
        assert result.pairs
        for pair in result.pairs:
            expected = (pair.video_onset_ns - pair.audio_onset_ns) / 1e6
            assert pair.audio_lead_ms == pytest.approx(expected, abs=1e-3)


def test_flash_onset_is_sub_frame_and_on_the_media_timeline(plugin: AvSyncPlugin) -> None:
    flash_s = 20.0123457
    window = render_pattern_window(
        fps=Fraction(25),
        rate=48000,
        audio_lead_ms=0.0,
        flash_times_s=[flash_s],
        start_s=19.5,
    )
    (result,) = plugin.analyze([window])
    (pair,) = result.pairs
    assert abs(pair.video_onset_ns - flash_s * NS_PER_S) < 0.2e6
    assert abs(pair.audio_onset_ns - flash_s * NS_PER_S) < 0.2e6
    assert abs(result.measured_at_ns - pair.video_onset_ns) < 1


def test_noisy_audio_and_a_second_tone_still_within_2ms(plugin: AvSyncPlugin) -> None:
    rng = np.random.default_rng(7)
    windows = [
        pattern_window(Fraction(30), 44100, lead, rng, noise=0.01, tone_hz=440.0, seed=i)
        for i, lead in enumerate((-250.0, 0.0, 77.0))
    ]
    for lead, result in zip((-250.0, 0.0, 77.0), plugin.analyze(windows), strict=True):
        assert result.audio_lead_ms is not None
        assert abs(result.audio_lead_ms - lead) < 2.0


def test_batching_matches_single_calls(plugin: AvSyncPlugin) -> None:
    rng = np.random.default_rng(3)
    windows = [
        pattern_window(Fraction(25), 16000, -320.0, rng),
        pattern_window(Fraction(30000, 1001), 48000, 13.3, rng),
        pattern_window(Fraction(30), 44100, 500.0, rng),
        render_pattern_window(
            fps=Fraction(30), rate=48000, audio_lead_ms=0, flash_times_s=[], start_s=3.0
        ),
    ]
    batched = plugin.analyze(windows)
    single = [plugin.analyze([w])[0] for w in windows]
    for one, many in zip(single, batched, strict=True):
        assert one.method == many.method
        assert one.pairs == many.pairs
        if one.audio_lead_ms is None:
            assert many.audio_lead_ms is None
        else:
            assert many.audio_lead_ms == pytest.approx(one.audio_lead_ms, abs=1e-6)
        assert many.confidence == pytest.approx(one.confidence, abs=1e-9)


def _null(result: AvSyncResult) -> None:
    assert result.audio_lead_ms is None
    assert result.confidence == 0.0
    assert result.reason


def test_no_flash_or_silence_gives_null_not_garbage() -> None:
    plugin = AvSyncFactory.create(AvSyncConfig(type="avsync", method="flash"), "cpu")
    rng = np.random.default_rng(5)
    beeps_only = pattern_window(Fraction(30), 48000, 0.0, rng)
    dark = [
        VideoFrame(f.source_id, f.pts_ns, 0, f.luma * 0 + 16, f.thumb * 0 + 16, f.clock)
        for f in beeps_only.video
    ]
    no_flash = Window(
        "pat",
        0,
        beeps_only.start_ns,
        beeps_only.end_ns,
        tuple(dark),
        beeps_only.audio,
        beeps_only.audio_valid,
        48000,
        30.0,
        ClockKind.SYNTHETIC,
    )
    flashes = pattern_window(Fraction(30), 48000, 0.0, rng)
    silent = Window(
        "pat",
        1,
        flashes.start_ns,
        flashes.end_ns,
        flashes.video,
        np.zeros_like(flashes.audio),
        flashes.audio_valid,
        48000,
        30.0,
        ClockKind.SYNTHETIC,
    )
    # Flashes and beeps, but every beep 600 ms away from every flash (half the period).
    unpaired = pattern_window(Fraction(30), 48000, 600.0, rng)
    control = pattern_window(Fraction(30), 48000, 0.0, rng)
    results = plugin.analyze([no_flash, silent, unpaired, control])
    _null(results[0])
    assert results[0].reason == "no flash onset"
    _null(results[1])
    assert results[1].reason == "silent audio"
    _null(results[2])
    assert results[2].reason == "no flash/beep pair within max_lag_ms"
    assert results[3].audio_lead_ms is not None  # the control window does pair


def test_auto_falls_back_to_motion_without_a_pattern(plugin: AvSyncPlugin) -> None:
    rng = np.random.default_rng(9)
    window = pattern_window(Fraction(30), 48000, 0.0, rng)
    silent = Window(
        "pat",
        0,
        window.start_ns,
        window.end_ns,
        window.video,
        np.zeros_like(window.audio),
        window.audio_valid,
        48000,
        30.0,
        ClockKind.SYNTHETIC,
    )
    (result,) = plugin.analyze([silent])
    assert result.method == "motion"
    _null(result)


def test_batch_of_256_windows_is_fast(plugin: AvSyncPlugin) -> None:
    rng = np.random.default_rng(11)
    distinct = [
        pattern_window(Fraction(30), 48000, float(lead), rng, size=(120, 160))
        for lead in np.linspace(-400, 400, 8)
    ]
    batch = distinct * 32
    plugin.analyze(batch[:4])  # warm up torch's kernels
    started = time.perf_counter()
    results = plugin.analyze(batch)
    elapsed = time.perf_counter() - started
    print(f"infer(256 windows of 2 s, 30 fps, 48 kHz): {elapsed:.2f} s")
    assert len(results) == 256
    assert all(r.audio_lead_ms is not None for r in results)
    assert elapsed < 20.0


@pytest.mark.parametrize("columns", [1, 60, 511, 512, 700, 6000])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.3, 0.95, 1.0])
def test_compact_keeps_the_stable_sort_order(columns: int, density: float) -> None:
    # compact finds long rows' selected cells without sorting; it must give exactly the first
    # K columns of the stable sort (selected in order, then unselected in order) it replaces.
    import torch

    from crossmodald_plugins.avsync.batching import compact

    rng = np.random.default_rng(columns + int(density * 1000))
    for rows in (1, 3, 8):
        mask = torch.from_numpy(rng.random((rows, columns)) < density)
        values = torch.from_numpy(rng.random((rows, columns)))
        k = max(int(mask.sum(dim=1).max()), 1)
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :k]
        kept, (got,) = compact(mask, values)
        assert torch.equal(kept, torch.gather(mask, 1, order))
        assert torch.equal(got, torch.gather(values, 1, order))
