"""Pattern files: the truth written with PyAV must read back (through MediaSource) unchanged."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from ingestkit import (
    NS,
    Collected,
    beep_onsets,
    flash_onsets_s,
    pattern_config,
    read_media,
)

from crossmodald.ingest.pattern import PatternTimeline, write_pattern_file

# Flash and beep times off the frame grid (sub-frame onsets), a lead and a drift in the audio.
CONFIG = pattern_config(
    period_s=1.21, flash_ms=90.0, beep_ms=120.0, audio_lead_ms=37.0, drift_ppm=300.0
)
DURATION_S = 3.0


def encoder_available(name: str) -> bool:
    return name in av.codecs_available


def truth_audio(first: int, count: int) -> np.ndarray:
    return PatternTimeline(CONFIG).render_audio(first, count)


def check_video(read: Collected, *, pts_exact: bool, level_tolerance: int) -> None:
    timeline = PatternTimeline(CONFIG)
    n = timeline.frame_count(round(DURATION_S * NS))
    assert len(read.frames) == n
    for i, frame in enumerate(read.frames):
        truth_ns = timeline.frame_pts_ns(i)
        if pts_exact:
            assert frame.pts_ns == truth_ns, f"frame {i}"
        else:  # Matroska/WebM store ms
            assert abs(frame.pts_ns - truth_ns) <= 500_000, f"frame {i}"
        assert (frame.width, frame.height) == (160, 120)
        level = float(np.median(frame.luma[:10]))
        assert abs(level - timeline.background_level(i)) <= level_tolerance, f"frame {i}"
    onsets = flash_onsets_s(read.frames, 30.0)
    truth = [timeline.flash_start_ns(k) / NS for k in range(3)]
    assert len(onsets) == len(truth)
    tolerance_s = 0.5e-3 + level_tolerance / 219 / 30
    for onset, true_onset in zip(onsets, truth, strict=True):
        assert onset == pytest.approx(true_onset, abs=tolerance_s)


def check_audio_exact(read: Collected) -> None:
    """Lossless audio: every sample sits at its true pts (to within 16-bit quantisation)."""
    first, samples = read.audio(48000)
    assert first == 0
    assert len(samples) == 3 * 48000
    np.testing.assert_allclose(samples, truth_audio(0, len(samples)), atol=1.5 / 32768)


def check_beeps(read: Collected, tolerance_ms: float) -> None:
    timeline = PatternTimeline(CONFIG)
    first, samples = read.audio(48000)
    found = [first + i for i in beep_onsets(samples)]
    expected = beep_onsets(truth_audio(0, 3 * 48000))
    assert len(expected) == 3
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        assert abs(got - want) / 48 <= tolerance_ms, (got, want)
    # The truth's onset is where the definitions put it: (T_k - lead) * (1 + drift).
    for k, want in enumerate(expected):
        onset_ns = timeline.beep_onset_pts_ns(k)
        stretched_s = (timeline.flash_start_ns(k) / NS - 0.037) * (1 + 300e-6)
        assert onset_ns / NS == pytest.approx(stretched_s, abs=1 / 48000)
        assert 0 <= want - onset_ns * 48000 // NS <= 5  # the sine reaches 0.25 in 4 samples


async def test_mp4_h264_aac(tmp_path: Path) -> None:
    path = tmp_path / "pattern.mp4"
    write_pattern_file(CONFIG, path, duration_s=DURATION_S)
    read = await read_media(str(path))
    assert read.info.has_video
    assert read.info.has_audio
    assert read.info.frame_rate == 30.0
    assert read.info.sample_rate == 48000
    check_video(read, pts_exact=True, level_tolerance=3)
    # AAC: the mp4 edit list makes the decoder drop the encoder's 1024 priming samples, so
    # the first decoded sample is sample 0 and onsets land on the truth.
    first, _ = read.audio(48000)
    assert first == 0
    check_beeps(read, tolerance_ms=1.0)
    assert read.faults == []


async def test_mkv_h264_pcm(tmp_path: Path) -> None:
    path = tmp_path / "pattern.mkv"
    write_pattern_file(CONFIG, path, duration_s=DURATION_S, audio_codec="pcm_s16le")
    read = await read_media(str(path))
    check_video(read, pts_exact=False, level_tolerance=3)
    check_audio_exact(read)
    check_beeps(read, tolerance_ms=0.1)


async def test_mkv_aac_ms_timestamps_stay_sample_exact(tmp_path: Path) -> None:
    # Matroska stores 1 ms ticks: 1024-sample AAC frames are stamped 21 or 22 ms apart. The
    # source keeps counting samples, so no rounding jitter or resync appears.
    path = tmp_path / "aac.mkv"
    write_pattern_file(CONFIG, path, duration_s=DURATION_S, audio_codec="aac")
    source_read = await read_media(str(path))
    starts = [c.pts_ns for c in source_read.chunks]
    counts = np.cumsum([0] + [len(c.samples) for c in source_read.chunks[:-1]])
    assert starts == [int(n) * NS // 48000 for n in counts]
    check_beeps(source_read, tolerance_ms=1.0)


@pytest.mark.skipif(
    not (encoder_available("libvpx-vp9") and encoder_available("libopus")),
    reason="PyAV's FFmpeg lacks libvpx-vp9 or libopus",
)
async def test_webm_vp9_opus(tmp_path: Path) -> None:
    path = tmp_path / "pattern.webm"
    write_pattern_file(CONFIG, path, duration_s=DURATION_S)
    read = await read_media(str(path))
    check_video(read, pts_exact=False, level_tolerance=4)
    check_beeps(read, tolerance_ms=1.0)


@pytest.mark.skipif(not encoder_available("libvpx"), reason="PyAV's FFmpeg lacks libvpx (VP8)")
async def test_webm_vp8(tmp_path: Path) -> None:
    path = tmp_path / "vp8.webm"
    write_pattern_file(CONFIG, path, duration_s=DURATION_S, video_codec="libvpx")
    read = await read_media(str(path))
    check_video(read, pts_exact=False, level_tolerance=4)


async def test_avi_mjpeg_pcm(tmp_path: Path) -> None:
    path = tmp_path / "pattern.avi"
    write_pattern_file(CONFIG, path, duration_s=DURATION_S)
    read = await read_media(str(path))
    check_video(read, pts_exact=True, level_tolerance=3)
    check_audio_exact(read)


@pytest.mark.parametrize("ext", [".wav", ".flac"])
async def test_audio_only_files(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"pattern{ext}"
    write_pattern_file(CONFIG, path, duration_s=DURATION_S)
    read = await read_media(str(path))
    assert not read.info.has_video
    assert read.info.has_audio
    assert read.frames == []
    check_audio_exact(read)
    check_beeps(read, tolerance_ms=0.1)


def test_writer_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown file type '\.xyz'"):
        write_pattern_file(CONFIG, tmp_path / "a.xyz", duration_s=1)
    with pytest.raises(ValueError, match="audio only"):
        write_pattern_file(CONFIG, tmp_path / "a.wav", duration_s=1, video_codec="libx264")
    odd = pattern_config(width=161)
    with pytest.raises(ValueError, match="even width and height, got 161x120"):
        write_pattern_file(odd, tmp_path / "a.mp4", duration_s=1)
    with pytest.raises(ValueError, match="libopus cannot encode 44100 Hz"):
        write_pattern_file(pattern_config(sample_rate=44100), tmp_path / "a.ogg", duration_s=1)
    assert not any(tmp_path.iterdir())
