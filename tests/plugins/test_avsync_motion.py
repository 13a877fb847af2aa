"""The avsync motion method: a synthetic mouth with a known shift, nulls, and a real talking head."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from crossmodald.ingest.frames import to_mono_f32, video_frame_from_luma
from crossmodald.media import NS_PER_S, ClockKind, VideoFrame, Window
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory, AvSyncPlugin

LEADS_MS = (-200.0, -80.0, 0.0, 120.0, 300.0)
SEEDS = range(6)


def speech_envelope(rng: np.random.Generator, length_s: float) -> npt.NDArray[np.float64]:
    """A speech-like envelope at 1 kHz: syllable bumps of 120-300 ms, short gaps, some pauses."""
    n = int(length_s * 1000)
    env = np.zeros(n)
    t = float(rng.uniform(0, 0.2))
    while t < length_s:
        dur = float(rng.uniform(0.12, 0.3))
        i0, i1 = int(t * 1000), int((t + dur) * 1000)
        k = np.arange(i0, min(i1, n))
        env[k] += rng.uniform(0.5, 1.0) * np.sin(np.pi * (k - i0) / (i1 - i0)) ** 2
        pause = rng.random() < 0.15
        t += dur + float(rng.uniform(0.3, 0.6) if pause else rng.uniform(0.05, 0.25))
    return env


def mouth_window(
    audio_lead_ms: float,
    *,
    seed: int,
    fps: int = 25,
    rate: int = 16000,
    start_s: float = 4.0,
    length_s: float = 2.0,
    still: bool = False,
) -> Window:
    """A dark "mouth" ellipse whose opening follows the envelope; the audio is a voiced buzz
    modulated by the same envelope, ``audio_lead_ms`` ahead of the picture."""
    rng = np.random.default_rng(seed)
    env = speech_envelope(rng, start_s + length_s + 2.0)

    def env_at(t_s: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = np.interp(np.asarray(t_s) * 1000, np.arange(len(env)), env)
        return out

    start_ns = round(start_s * NS_PER_S)
    end_ns = start_ns + round(length_s * NS_PER_S)
    height, width = 96, 128
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for i in range(int(start_s * fps), int((start_s + length_s) * fps) + 1):
        pts_ns = round(i * NS_PER_S / fps)
        if not start_ns <= pts_ns < end_ns:
            continue
        opening = 0.0 if still else float(env_at(pts_ns / NS_PER_S))
        radius = np.hypot((xx - width / 2) / 24.0, (yy - height * 0.6) / (2.0 + 18.0 * opening))
        luma_f = 120 - 90 / (1 + np.exp(-(1 - radius) * 6)) + rng.normal(0, 0.5, radius.shape)
        luma = np.round(luma_f).clip(0, 255).astype(np.uint8)
        thumb = np.asarray(cv2.resize(luma, (80, 60), interpolation=cv2.INTER_AREA), np.uint8)
        frames.append(VideoFrame("mouth", pts_ns, 0, luma, thumb, ClockKind.PTS))
    n = round(length_s * rate)
    t = start_s + np.arange(n) / rate
    buzz = (
        np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t) + 0.3 * rng.normal(0, 1, n)
    )
    audio = 0.3 * buzz * env_at(t + audio_lead_ms / 1000) + rng.normal(0, 1e-3, n)
    return Window(
        stream="mouth",
        index=0,
        start_ns=start_ns,
        end_ns=end_ns,
        video=tuple(frames),
        audio=audio.astype(np.float32),
        audio_valid=np.ones(n, dtype=bool),
        audio_rate=rate,
        frame_rate=float(fps),
        clock=ClockKind.PTS,
    )


@pytest.fixture(scope="module")
def motion_plugin() -> AvSyncPlugin:
    return AvSyncFactory.create(AvSyncConfig(type="avsync", method="motion"), "cpu")


def test_motion_recovers_a_known_shift(motion_plugin: AvSyncPlugin) -> None:
    windows = [mouth_window(lead, seed=seed) for seed in SEEDS for lead in LEADS_MS]
    results = motion_plugin.analyze(windows)
    est = np.array([r.audio_lead_ms for r in results], dtype=float).reshape(len(SEEDS), -1)
    assert all(r.method == "motion" and r.peak is not None for r in results)
    assert all(r.peak is not None and r.peak.region == "frame" for r in results)
    error = est - np.array(LEADS_MS)
    # The estimate moves with the shift: against the same clip unshifted, within 10 ms.
    moved = est - est[:, [LEADS_MS.index(0.0)]] - (np.array(LEADS_MS))
    print(f"motion: error median {np.median(error):+.1f} ms, max |error| {np.abs(error).max():.1f}")
    print(f"motion: shift error median {np.median(np.abs(moved)):.1f} ms")
    assert np.mean(np.abs(moved) <= 10.0) >= 0.8
    # Absolute: log-energy onsets lead the mid-rise of the mouth a little (an honest bias of the
    # features on this synthetic mouth, not subtracted); within about one 40 ms frame.
    assert abs(float(np.median(error))) <= 40.0
    assert np.mean(np.abs(error) <= 45.0) >= 0.9


def test_motion_batch_matches_single_calls(motion_plugin: AvSyncPlugin) -> None:
    windows = [mouth_window(lead, seed=3) for lead in (-80.0, 120.0)]
    batched = motion_plugin.analyze(windows)
    for window, many in zip(windows, batched, strict=True):
        (one,) = motion_plugin.analyze([window])
        assert one.audio_lead_ms is not None
        assert many.audio_lead_ms is not None
        assert many.audio_lead_ms == pytest.approx(one.audio_lead_ms, abs=1e-6)
        assert many.confidence == pytest.approx(one.confidence, abs=1e-6)


def test_no_motion_or_silence_gives_null(motion_plugin: AvSyncPlugin) -> None:
    still = mouth_window(0.0, seed=1, still=True)
    moving = mouth_window(0.0, seed=1)
    silent = Window(
        "mouth",
        1,
        moving.start_ns,
        moving.end_ns,
        moving.video,
        np.zeros_like(moving.audio),
        moving.audio_valid,
        moving.audio_rate,
        25.0,
        ClockKind.PTS,
    )
    no_video = Window(
        "mouth",
        2,
        moving.start_ns,
        moving.end_ns,
        (),
        moving.audio,
        moving.audio_valid,
        moving.audio_rate,
        25.0,
        ClockKind.PTS,
    )
    results = motion_plugin.analyze([still, silent, no_video])
    for result, reason in zip(
        results, ("no motion", "silent audio", "too few video frames"), strict=True
    ):
        assert result.audio_lead_ms is None
        assert result.confidence == 0.0
        assert result.reason == reason


def _decode(path: Path) -> tuple[list[VideoFrame], npt.NDArray[np.float32], int, int]:
    frames: list[VideoFrame] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            assert frame.pts is not None
            assert frame.time_base is not None
            pts_ns = round(frame.pts * frame.time_base * NS_PER_S)
            plane = frame.planes[0]
            luma = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
            luma = np.ascontiguousarray(luma[: frame.height, : frame.width])
            frames.append(video_frame_from_luma("th", pts_ns, 0, luma, ClockKind.PTS))
    chunks: list[npt.NDArray[np.float32]] = []
    audio_start_ns = 0
    with av.open(str(path)) as container:
        astream = container.streams.audio[0]
        rate = astream.rate
        for i, aframe in enumerate(container.decode(astream)):
            if i == 0 and aframe.pts is not None and aframe.time_base is not None:
                audio_start_ns = round(aframe.pts * aframe.time_base * NS_PER_S)
            chunks.append(to_mono_f32(aframe.to_ndarray(), channels_first=aframe.format.is_planar))
    return frames, np.concatenate(chunks), rate, audio_start_ns


def _clip_windows(
    frames: list[VideoFrame],
    audio: npt.NDArray[np.float32],
    rate: int,
    audio_start_ns: int,
    audio_lead_ms: float,
) -> list[Window]:
    """2 s windows every 0.5 s, the audio moved ``audio_lead_ms`` earlier than the picture."""
    out = []
    length_ns, hop_ns = 2 * NS_PER_S, NS_PER_S // 2
    n = 2 * rate
    k = 0
    while k * hop_ns + length_ns <= frames[-1].pts_ns:
        start_ns = k * hop_ns
        first = (start_ns - audio_start_ns) / NS_PER_S + audio_lead_ms / 1000
        idx = np.round(first * rate).astype(int) + np.arange(n)
        valid = (idx >= 0) & (idx < len(audio))
        samples = np.where(valid, audio[idx.clip(0, len(audio) - 1)], 0).astype(np.float32)
        video = tuple(f for f in frames if start_ns <= f.pts_ns < start_ns + length_ns)
        out.append(
            Window(
                "th",
                k,
                start_ns,
                start_ns + length_ns,
                video,
                samples,
                valid,
                rate,
                25.0,
                ClockKind.PTS,
            )
        )
        k += 1
    return out


@pytest.mark.media
def test_talking_head_shift(shared_media: Path, motion_plugin: AvSyncPlugin) -> None:
    frames, audio, rate, audio_start_ns = _decode(shared_media / "talkinghead_hdtf_aoc_25fps.mp4")
    estimates: dict[float, npt.NDArray[np.float64]] = {}
    regions = set()
    for shift in (-200.0, 0.0, 200.0):
        results = motion_plugin.analyze(_clip_windows(frames, audio, rate, audio_start_ns, shift))
        regions |= {r.peak.region for r in results if r.peak is not None}
        estimates[shift] = np.array(
            [np.nan if r.audio_lead_ms is None else r.audio_lead_ms for r in results]
        )
    base = estimates[0.0]
    print(f"talking head unshifted: median {np.nanmedian(base):+.0f} ms (natural lip/voice lag)")
    for shift in (-200.0, 200.0):
        moved = estimates[shift] - base
        hits = np.abs(moved - shift) <= 40.0
        print(
            f"talking head shift {shift:+.0f} ms: median move {np.nanmedian(moved):+.0f} ms, "
            f"{int(hits.sum())}/{len(moved)} windows moved by the shift within 40 ms"
        )
        assert abs(float(np.nanmedian(moved)) - shift) <= 40.0
        assert hits.mean() >= 0.5
    assert regions == {"mouth"}
