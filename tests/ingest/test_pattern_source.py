"""The pattern source is the ground truth of the accuracy tests: check it against its definitions.

Expected values here are computed from the written definitions (module docstring of
crossmodald.ingest.pattern), independently of the generator's own arithmetic.
"""

from __future__ import annotations

import itertools
import math
import time
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from crossmodald.ingest.pacing import MonotonicPacer, VirtualPacer
from crossmodald.ingest.pattern import PatternSource, PatternTimeline
from crossmodald.media import AudioChunk, ClockKind, VideoFrame
from crossmodald.service.config import PatternSourceConfig

NS = 1_000_000_000


def make_config(**overrides: Any) -> PatternSourceConfig:
    base: dict[str, Any] = {
        "type": "pattern",
        "name": "pat",
        "width": 64,
        "height": 48,
        "duration_s": 4.0,
        "realtime": False,
    }
    base.update(overrides)
    return PatternSourceConfig.model_validate(base)


async def collect_in_order(source: PatternSource) -> list[VideoFrame | AudioChunk]:
    """Every item, in the order the source yielded it."""
    await source.open()
    items = [item async for item in source if isinstance(item, VideoFrame | AudioChunk)]
    await source.aclose()
    return items


async def collect(source: PatternSource) -> tuple[list[VideoFrame], list[AudioChunk]]:
    frames: list[VideoFrame] = []
    chunks: list[AudioChunk] = []
    await source.open()
    async for item in source:
        if isinstance(item, VideoFrame):
            frames.append(item)
        elif isinstance(item, AudioChunk):
            chunks.append(item)
    await source.aclose()
    return frames, chunks


def expected_fraction(i: int, fps: Fraction, period: Fraction, flash: Fraction) -> Fraction:
    """f_i straight from the definition: overlap of each flash with [i/fps, (i+1)/fps), * fps."""
    start, end = i / fps, (i + 1) / fps
    total = Fraction(0)
    k = 0
    while (on := Fraction(1, 2) + k * period) < end:
        total += max(Fraction(0), min(end, on + flash) - max(start, on))
        k += 1
    return total * fps


def frame_index(pts_ns: int, fps: int = 30) -> int:
    """Invert pts = floor(i * 1e9 / fps)."""
    return -(-pts_ns * fps // NS)


def background(frame: VideoFrame) -> int:
    return int(frame.luma[0, 0])  # the square runs through the middle rows only


async def test_stream_info_is_exact() -> None:
    source = PatternSource(make_config(fps="30000/1001", sample_rate=44100, width=320, height=240))
    info = await source.open()
    assert info.kind == "pattern"
    assert info.has_video
    assert info.has_audio
    assert info.frame_rate == 30000 / 1001
    assert info.sample_rate == 44100
    assert (info.width, info.height) == (320, 240)
    assert info.clock is ClockKind.SYNTHETIC


@pytest.mark.parametrize(
    ("fps", "period_s", "flash_ms"),
    [("30", 1.2, 100.0), ("30000/1001", 1.3, 70.0), ("25", 0.77, 13.0), ("60", 1.01, 41.5)],
)
async def test_flash_levels_follow_the_integrating_shutter(
    fps: str, period_s: float, flash_ms: float
) -> None:
    config = make_config(fps=fps, period_s=period_s, flash_ms=flash_ms, duration_s=5.0)
    frames, _ = await collect(PatternSource(config))
    rate = Fraction(fps)
    period, flash = Fraction(str(period_s)), Fraction(str(flash_ms)) / 1000
    assert len(frames) == math.ceil(5 * rate)
    lit = Fraction(0)
    for i, frame in enumerate(frames):
        assert frame.pts_ns == i * NS * rate.denominator // rate.numerator
        assert frame.clock is ClockKind.SYNTHETIC
        f = expected_fraction(i, rate, period, flash)
        assert background(frame) == 16 + round(f * 219), f"frame {i}: f={f}"
        lit += f / rate
    # Energy is conserved: the fractions add up to the total flash time in the stream.
    n_flashes = sum(1 for k in range(100) if Fraction(1, 2) + k * period < 5)
    assert lit == n_flashes * flash


async def test_sub_frame_onset_is_recoverable_from_luminance() -> None:
    config = make_config(period_s=1.23, flash_ms=80.0, duration_s=6.0)
    frames, _ = await collect(PatternSource(config))
    levels = np.array([background(f) for f in frames])
    lit = levels > 16
    starts = np.nonzero(lit & ~np.r_[False, lit[:-1]])[0]
    assert len(starts) == 5
    for k, i in enumerate(starts):
        fraction = (levels[i] - 16) / 219
        onset_s = frames[i].pts_ns / NS + (1 - fraction) / 30
        # One grey level of quantisation is 1/219 of a frame: 0.15 ms at 30 fps.
        assert onset_s == pytest.approx(0.5 + k * 1.23, abs=0.16e-3)


async def test_square_moves_with_constant_area_and_brightness() -> None:
    frames, _ = await collect(PatternSource(make_config(width=160, height=120, duration_s=3.0)))
    side = 120 // 16
    dark = [f for f in frames if background(f) == 16]
    assert len(dark) > 60
    positions = set()
    for frame in dark:
        _ys, xs = np.nonzero(frame.luma == 235)
        assert len(xs) == side * side
        positions.add(int(xs.min()))
        assert frame.luma.mean() == pytest.approx(dark[0].luma.mean(), abs=1e-9)
    assert len(positions) > 30
    assert frames[0].thumb.shape == (60, 80)


async def test_beep_onset_sample_and_shape() -> None:
    config = make_config(duration_s=2.0)
    _, chunks = await collect(PatternSource(config))
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) == 2 * 48000
    assert all(len(c.samples) == 960 for c in chunks)  # 20 ms packets
    for j, chunk in enumerate(chunks):
        assert chunk.pts_ns == j * 960 * NS // 48000
        assert chunk.sample_rate == 48000
    # Beep 0: true [0.5, 0.6) s, samples [24000, 28800); beep 1 at 1.7 s.
    nonzero = np.nonzero(audio)[0]
    assert nonzero[0] == 24001  # sample 24000 is sin(0) = 0: zero phase at the onset
    n = np.arange(24000, 28800)
    expected = 0.5 * np.sin(2 * np.pi * 1000 * (n / 48000 - 0.5))
    np.testing.assert_allclose(audio[24000:28800], expected, atol=1e-6)
    assert not audio[:24000].any()
    assert not audio[28800:81600].any()  # exact silence between beeps
    assert np.abs(audio[81600:86400]).max() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(("lead_ms", "first"), [(40.0, 22080), (-25.0, 25200), (0.0, 24000)])
def test_audio_lead_moves_the_beep(lead_ms: float, first: int) -> None:
    timeline = PatternTimeline(make_config(audio_lead_ms=lead_ms))
    assert timeline.beep_samples(0) == (first, first + 4800)
    assert timeline.beep_onset_pts_ns(0) == first * NS // 48000


def test_beeps_before_time_zero_are_omitted() -> None:
    timeline = PatternTimeline(make_config(audio_lead_ms=600.0))
    assert timeline.beep_samples(0) == (0, 0)
    assert not timeline.render_audio(0, 48000).any()
    first, _ = timeline.beep_samples(1)
    assert first == round((1.7 - 0.6) * 48000)


async def test_drift_maps_true_time_to_stamped_time() -> None:
    drift_ppm = 1000.0
    config = make_config(drift_ppm=drift_ppm, period_s=1.0, duration_s=14.0, fps=10)
    timeline = PatternTimeline(config)
    _, chunks = await collect(PatternSource(config))
    audio = np.concatenate([c.samples for c in chunks])
    rate_true = 48000 * (1 + drift_ppm * 1e-6)  # 48048 samples per true second
    for k in (0, 5, 12):
        onset_true = 0.5 + k
        first = math.ceil(onset_true * rate_true - 1e-9)
        assert timeline.beep_samples(k)[0] == first
        # The onset's stamped time is the true time stretched by (1 + drift).
        stamped = timeline.beep_onset_pts_ns(k) / NS
        assert stamped == pytest.approx(onset_true * (1 + drift_ppm * 1e-6), abs=1 / 48000)
        n = np.arange(first, first + 4000)
        expected = 0.5 * np.sin(2 * np.pi * 1000 * (n / rate_true - onset_true))
        np.testing.assert_allclose(audio[first : first + 4000], expected, atol=2e-6)
        assert audio[first - 1] == 0.0


async def test_drops_and_losses_repeat_with_a_seed() -> None:
    config = make_config(drop_frames=0.2, lose_audio=0.1, duration_s=20.0, seed=42)
    source = PatternSource(config)
    frames, chunks = await collect(source)
    stats = source.stats
    assert stats.frames + stats.frames_dropped == 600
    assert stats.packets + stats.packets_lost == 1000
    assert stats.frames == len(frames)
    # What /v1/streams shows as the stream's source_status.
    assert source.status() == {
        "frames": stats.frames,
        "frames_dropped": stats.frames_dropped,
        "packets": stats.packets,
        "packets_lost": stats.packets_lost,
    }
    # Binomial counts within 4 standard deviations of the expectation.
    assert abs(stats.frames_dropped - 120) < 4 * math.sqrt(600 * 0.2 * 0.8)
    assert abs(stats.packets_lost - 100) < 4 * math.sqrt(1000 * 0.1 * 0.9)
    # Lost packets leave gaps in pts (never stretched): every chunk sits on the 20 ms grid.
    pts = [c.pts_ns for c in chunks]
    assert all(p % 20_000_000 == 0 for p in pts)
    assert sum(1 for a, b in itertools.pairwise(pts) if b - a > 20_000_000) > 50
    again_frames, again_chunks = await collect(PatternSource(config))
    assert [f.pts_ns for f in again_frames] == [f.pts_ns for f in frames]
    assert [c.pts_ns for c in again_chunks] == pts
    other, _ = await collect(PatternSource(make_config(drop_frames=0.2, duration_s=20.0, seed=43)))
    assert [f.pts_ns for f in other] != [f.pts_ns for f in frames]


async def test_jitter_bounds_and_reorders_delivery() -> None:
    jitter_ms = 60.0
    config = make_config(jitter_ms=jitter_ms, duration_s=6.0, realtime=True, seed=3)
    pacer = VirtualPacer(start_ns=10 * NS)
    source = PatternSource(config, pacer)
    timeline = source.timeline
    delivered = await collect_in_order(source)
    frames = [x for x in delivered if isinstance(x, VideoFrame)]
    chunks = [x for x in delivered if isinstance(x, AudioChunk)]
    arrivals = [f.arrival_ns for f in frames]
    captured = [timeline.frame_pts_ns(frame_index(f.pts_ns) + 1) for f in frames]
    delays = [a - 10 * NS - c for a, c in zip(arrivals, captured, strict=True)]
    assert min(delays) >= 0
    assert max(delays) <= jitter_ms * 1_000_000
    assert max(delays) > 0.8 * jitter_ms * 1_000_000
    # Frames (and packets) overtake one another.
    assert any(b.pts_ns < a.pts_ns for a, b in itertools.pairwise(frames))
    assert any(b.pts_ns < a.pts_ns for a, b in itertools.pairwise(chunks))
    # Items leave in delivery order across both kinds: arrivals never go back.
    arrival_order = [x.arrival_ns for x in delivered]
    assert arrival_order == sorted(arrival_order)
    assert len(frames) == 180
    assert len(chunks) == 300


async def test_realtime_delivers_at_capture_completion_on_the_pacer() -> None:
    pacer = VirtualPacer(start_ns=5 * NS)
    source = PatternSource(make_config(realtime=True, duration_s=2.0), pacer)
    await source.open()
    order: list[tuple[str, int, int]] = []
    async for item in source:
        assert isinstance(item, VideoFrame | AudioChunk)
        order.append(("v" if isinstance(item, VideoFrame) else "a", item.pts_ns, item.arrival_ns))
    start = 5 * NS
    for kind, pts, arrival in order:
        if kind == "v":
            index = frame_index(pts)
            assert arrival == start + (index + 1) * NS // 30  # end of the exposure
        else:
            assert arrival == start + pts + 20_000_000  # when the packet's last sample is taken
    assert [a for _, _, a in order] == sorted(a for _, _, a in order)
    assert pacer.now_ns() == start + 2 * NS


async def test_realtime_on_the_real_clock_takes_real_time() -> None:
    source = PatternSource(make_config(realtime=True, duration_s=0.3), MonotonicPacer())
    began_ns = time.monotonic_ns()
    frames, chunks = await collect(source)
    elapsed = (time.monotonic_ns() - began_ns) / NS
    assert len(frames) == 9
    assert len(chunks) == 15
    assert elapsed >= 0.29
    assert elapsed < 5.0  # only guards against a hang on a loaded machine
    # Never delivered before its capture completes (the pacer may be late, never early).
    for i, frame in enumerate(frames):
        assert frame.arrival_ns >= began_ns + (i + 1) * NS // 30


def test_29_97_timestamps_after_one_hour_are_exact() -> None:
    timeline = PatternTimeline(make_config(fps=29.97))
    assert timeline.fps == Fraction(30000, 1001)
    one_hour = 107892  # frames in 3599.9964 s
    assert timeline.frame_pts_ns(one_hour) == 3_599_996_400_000
    assert timeline.frame_pts_ns(one_hour + 1) == 3_600_029_766_666
    # Summing rounded frame durations would drift; the formula does not.
    step = round(NS * 1001 / 30000)
    assert one_hour * step != timeline.frame_pts_ns(one_hour)
    assert timeline.frame_count(3600 * NS) == one_hour + 1


async def test_endless_stream_stops_on_aclose() -> None:
    source = PatternSource(make_config(duration_s=None))
    await source.open()
    seen = 0
    async for _ in source:
        seen += 1
        if seen == 500:
            await source.aclose()
    assert seen == 500


def test_impossible_patterns_are_refused_by_the_config_model() -> None:
    # A cross-field rule of the model (what check-config and POST /v1/sources see), not a
    # surprise when the source is built.
    with pytest.raises(ValidationError, match=r"flash_ms must be shorter than period_s \(1.2 s\)"):
        make_config(flash_ms=1300.0)
    with pytest.raises(ValidationError, match="beep_ms must be shorter"):
        make_config(beep_ms=1500.0, period_s=1.5)
    make_config(beep_ms=1499.0, period_s=1.5)


async def test_eight_live_vga_streams_are_cheap() -> None:
    # 8 streams x 1 s of 640x480 at 30 fps with audio must render far faster than real time.
    sources = [
        PatternSource(make_config(name=f"p{i}", width=640, height=480, duration_s=1.0))
        for i in range(8)
    ]
    began = time.process_time()
    for source in sources:
        frames, chunks = await collect(source)
        assert len(frames) == 30
        assert len(chunks) == 50
    assert time.process_time() - began < 0.8  # about 0.1 s on the project machine


@pytest.mark.parametrize(
    ("fps", "period_s", "flash_ms"),
    [
        (Fraction(25), 1.0, 40.0),  # the flash is exactly frame 37 (edges on frame edges)
        (Fraction(30000, 1001), 0.7, 33.3667),
        (Fraction(60), 0.35, 1.0),  # shorter than a frame
        (Fraction(30), 1.0, 50.0),
    ],
)
def test_flash_fraction_matches_the_definition_at_every_frame(
    fps: Fraction, period_s: float, flash_ms: float
) -> None:
    # flash_fraction skips flashes that cannot overlap a frame by integer ns bounds before the
    # exact arithmetic: frames touching a flash edge exactly must still come out exact.
    tl = PatternTimeline(make_config(fps=str(fps), period_s=period_s, flash_ms=flash_ms))
    period = Fraction(round(period_s * NS), NS)
    flash = Fraction(round(flash_ms * 1_000_000), NS)
    lit = 0
    for i in range(int(6 * fps)):
        expected = expected_fraction(i, fps, period, flash)
        assert tl.flash_fraction(i) == expected, i
        lit += expected > 0
    assert lit >= 6


@pytest.mark.parametrize("drift_ppm", [0.0, 37.5, -120.25, 1000.0])
def test_sample_true_time_is_the_exact_ceiling(drift_ppm: float) -> None:
    tl = PatternTimeline(make_config(drift_ppm=drift_ppm, sample_rate=44100))
    rate_true = 44100 * (1 + Fraction(str(drift_ppm)) / 10**6)
    for n in [*range(0, 2000, 7), *range(44100 * 3600, 44100 * 3600 + 500)]:
        assert tl.sample_true_ns(n) == math.ceil(Fraction(n * NS) / rate_true), n


async def test_thumbnails_are_each_frames_own_and_read_only() -> None:
    # Thumbnails are shared between frames with the same picture: each must still be the
    # shrunk picture of its own frame (flashes, partial flashes, every square position).
    from crossmodald.ingest.frames import make_thumb

    config = make_config(width=640, height=480, fps="30000/1001", duration_s=4.5)
    frames, _ = await collect(PatternSource(config))
    assert len({background(f) for f in frames}) >= 3
    for frame in frames:
        assert np.array_equal(frame.thumb, make_thumb(frame.luma))
        assert not frame.thumb.flags.writeable
        assert frame.luma.flags.writeable  # the picture itself is the frame's own
