"""The camera path of the device source, through captures OpenCV opens here (no V4L2 device
exists on CI): a recording and an image sequence stand in for a camera."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossmodald.ingest.base import Source, SourceError, SourceFault
from crossmodald.ingest.device import DeviceSource
from crossmodald.media import NS_PER_MS, ClockKind, MediaItem, VideoFrame
from crossmodald.service.config import DeviceSourceConfig

FPS = 30
FRAMES = 12
LEVEL_STEP = 18  # frame i is a flat grey picture of level i * LEVEL_STEP


def _write_clip(path: Path, frames: int = FRAMES) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * LEVEL_STEP, np.uint8))
    writer.release()
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return _write_clip(tmp_path / "camera.avi")


def _config(device: str | int, **extra: object) -> DeviceSourceConfig:
    return DeviceSourceConfig.model_validate(
        {"type": "device", "name": "cam1", "camera": {"device": device}, **extra}
    )


async def _collect(
    source: DeviceSource, until: int, *, timeout_s: float = 10.0
) -> list[MediaItem | SourceFault]:
    """Items until `until` video frames have arrived."""
    items: list[MediaItem | SourceFault] = []

    async def run() -> None:
        iterator: AsyncIterator[MediaItem | SourceFault] = aiter(source)
        async for item in iterator:
            items.append(item)
            if sum(isinstance(i, VideoFrame) for i in items) >= until:
                return

    await asyncio.wait_for(run(), timeout_s)
    return items


async def test_a_recording_plays_as_a_live_camera(clip: Path) -> None:
    source = DeviceSource(_config(str(clip)))
    assert isinstance(source, Source)
    # The capture thread starts inside open() and grabs its first frame at once.
    started_ns = time.monotonic_ns()
    info = await source.open()
    try:
        assert (info.kind, info.has_video, info.has_audio) == ("device", True, False)
        assert (info.width, info.height, info.frame_rate) == (64, 48, FPS)
        assert info.clock is ClockKind.CAPTURE
        items = await _collect(source, FRAMES)
    finally:
        await source.aclose()
    frames = [i for i in items if isinstance(i, VideoFrame)]
    assert [i for i in items if isinstance(i, SourceFault)] == []
    levels = [float(f.luma.mean()) for f in frames]
    assert levels == pytest.approx([i * LEVEL_STEP for i in range(FRAMES)], abs=3)
    assert all(f.clock is ClockKind.CAPTURE and f.source_id == "cam1" for f in frames)
    assert all(f.thumb.shape == (48, 64) for f in frames)
    pts = np.array([f.pts_ns for f in frames])
    # Stamped on the monotonic clock at grab time (not the file's own timestamps, which start
    # at 0), one frame per period (paced, no burst).
    assert pts[0] >= started_ns
    assert all(f.pts_ns <= f.arrival_ns for f in frames)
    steps_ms = np.diff(pts) / NS_PER_MS
    assert np.median(steps_ms) == pytest.approx(1000 / FPS, abs=2)
    assert steps_ms.min() > 1000 / FPS / 2


async def test_latency_correction_is_subtracted(clip: Path) -> None:
    camera = {"device": str(clip), "latency_ms": 250.0}
    source = DeviceSource(
        DeviceSourceConfig.model_validate({"type": "device", "name": "cam1", "camera": camera})
    )
    await source.open()
    try:
        frames = [i for i in await _collect(source, 3) if isinstance(i, VideoFrame)]
    finally:
        await source.aclose()
    assert all(f.arrival_ns - f.pts_ns >= 250 * NS_PER_MS for f in frames)
    assert all(f.arrival_ns - f.pts_ns < 350 * NS_PER_MS for f in frames)


async def test_an_image_sequence_capture_string_is_a_camera(tmp_path: Path) -> None:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"f{i:03d}.png"), np.full((20, 30, 3), 40 * i, np.uint8))
    source = DeviceSource(
        DeviceSourceConfig.model_validate(
            {
                "type": "device",
                "name": "seq",
                "camera": {"device": str(tmp_path / "f%03d.png"), "fps": 50},
            }
        )
    )
    info = await source.open()
    try:
        frames = [i for i in await _collect(source, 5) if isinstance(i, VideoFrame)]
    finally:
        await source.aclose()
    assert (info.width, info.height, info.frame_rate) == (30, 20, 50)
    assert [int(f.luma.mean()) for f in frames] == [0, 40, 80, 120, 160]
    assert np.median(np.diff([f.pts_ns for f in frames])) == pytest.approx(20 * NS_PER_MS, rel=0.2)


async def test_a_camera_that_vanishes_is_reported_retried_and_comes_back(clip: Path) -> None:
    """The recording ends (the camera stops delivering) and its file is gone (unplugged): the
    stream reports device_lost, retries with backoff, and resumes once the device is back."""
    hidden = clip.with_suffix(".away")
    source = DeviceSource(_config(str(clip), retry_initial_s=0.05, retry_max_s=0.2))
    await source.open()
    await asyncio.to_thread(clip.rename, hidden)  # unplugged; the open capture reads on to its end
    items: list[MediaItem | SourceFault] = []
    retries = frames_since_back = 0
    back = False
    try:
        async with asyncio.timeout(10):
            async for item in source:
                items.append(item)
                if isinstance(item, SourceFault) and item.kind == "device_retry":
                    retries += 1
                    if retries == 2:
                        await asyncio.to_thread(hidden.rename, clip)  # plugged back in
                back = back or (isinstance(item, SourceFault) and item.kind == "device_back")
                frames_since_back += back and isinstance(item, VideoFrame)
                if frames_since_back >= 3:
                    break
    finally:
        await source.aclose()
    faults = [i for i in items if isinstance(i, SourceFault)]
    kinds = [f.kind for f in faults]
    assert kinds[0] == "device_lost"
    assert faults[0].message.startswith("camera ")
    assert "reopening" in faults[0].message
    assert kinds.count("device_retry") >= 2
    assert all("cannot open" in f.message for f in faults if f.kind == "device_retry")
    assert kinds[-1] == "device_back"
    frames = [i for i in items if isinstance(i, VideoFrame)]
    assert len(frames) == FRAMES + 3
    assert np.all(np.diff([f.pts_ns for f in frames]) > 0)  # one timeline across the outage
    assert frames[FRAMES].pts_ns - frames[FRAMES - 1].pts_ns > 100 * NS_PER_MS  # the outage


async def test_a_camera_gone_for_good_fails_the_stream_after_its_retries(clip: Path) -> None:
    source = DeviceSource(_config(str(clip), retry_initial_s=0.02, retry_max_s=0.05, retry_limit=3))
    await source.open()
    await asyncio.to_thread(clip.unlink)
    items: list[MediaItem | SourceFault] = []

    async def drain() -> None:
        async with asyncio.timeout(10):
            async for item in source:
                items.append(item)

    try:
        with pytest.raises(SourceError, match=r"^cam1: camera '.*camera.avi': gone, 3 reopen"):
            await drain()
    finally:
        await source.aclose()
    kinds = [i.kind for i in items if isinstance(i, SourceFault)]
    assert kinds == ["device_lost", "device_retry", "device_retry", "device_retry"]


@pytest.mark.parametrize("device", ["/nonexistent/cam0.avi", 63])
async def test_a_camera_that_is_not_there_is_a_clear_error(device: str | int) -> None:
    source = DeviceSource(_config(device))
    with pytest.raises(SourceError, match=rf"^cam1: camera {device!r}: cannot open \(") as err:
        await source.open()
    assert "\n" not in str(err.value)
    await source.aclose()


async def test_aclose_stops_the_reader_thread(clip: Path) -> None:
    source = DeviceSource(_config(str(clip)))
    await source.open()
    await _collect(source, 2)
    await source.aclose()
    assert not any(worker.is_alive() for worker in source.workers)
    await source.aclose()  # idempotent


def test_create_source_builds_device_sources(clip: Path) -> None:
    from crossmodald.ingest import create_source

    source = create_source(_config(str(clip)))
    assert isinstance(source, DeviceSource)
    assert source.name == "cam1"
