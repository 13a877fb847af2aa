"""Frame and audio helpers: Y plane read in place, thumbnails, mono downmix of PyAV audio."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from crossmodald.ingest.frames import (
    AudioMonoConverter,
    luma_from_av_frame,
    make_thumb,
    video_frame_from_av,
)
from crossmodald.media import THUMB_MAX_SIDE, ClockKind


def _yuv420(luma: np.ndarray, fmt: str = "yuv420p") -> av.VideoFrame:
    height, width = luma.shape
    chroma = np.full((height // 2, width), 128, dtype=np.uint8)
    return av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format=fmt)


@pytest.fixture
def noise() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (48, 70), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p"])
def test_luma_is_the_y_plane_copied(noise: np.ndarray, fmt: str) -> None:
    frame = _yuv420(noise, fmt)
    # 70 px rows are padded (line_size > width): the copy must drop the padding.
    assert frame.planes[0].line_size > frame.planes[0].width
    luma = luma_from_av_frame(frame)
    assert luma.dtype == np.uint8
    assert luma.flags.c_contiguous
    np.testing.assert_array_equal(luma, noise)
    # A copy: the decoder reuses its buffers.
    frame.planes[0].update(bytes(frame.planes[0].buffer_size))
    np.testing.assert_array_equal(luma, noise)


def test_luma_from_nv12_yuv444_and_gray(noise: np.ndarray) -> None:
    for fmt in ("nv12", "yuv444p", "yuv422p"):
        frame = _yuv420(noise).reformat(format=fmt)
        np.testing.assert_array_equal(luma_from_av_frame(frame), noise)
    gray = av.VideoFrame.from_ndarray(noise, format="gray")
    np.testing.assert_array_equal(luma_from_av_frame(gray), noise)


def test_other_formats_go_through_swscale(noise: np.ndarray) -> None:
    rgb = np.stack([noise, noise, noise], axis=-1)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    luma = luma_from_av_frame(frame)
    assert luma.shape == noise.shape
    # Grey in, grey out (swscale's full-range gray keeps the level within rounding).
    assert np.abs(luma.astype(int) - noise.astype(int)).max() <= 2


def test_video_frame_from_av_builds_thumb() -> None:
    luma = np.full((480, 640), 16, dtype=np.uint8)
    luma[100:140, 200:240] = 235
    frame = video_frame_from_av("cam", _yuv420(luma), 5, 7, ClockKind.PTS)
    assert frame.pts_ns == 5
    assert frame.arrival_ns == 7
    assert frame.thumb.shape == (60, 80)
    assert frame.thumb.mean() == pytest.approx(luma.mean(), abs=0.01)


@pytest.mark.parametrize(
    "shape",
    [(480, 640), (1080, 1920), (720, 1280), (844, 844), (481, 641), (96, 96), (120, 160), (60, 80)],
)
def test_thumb_matches_inter_area(shape: tuple[int, int]) -> None:
    luma = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    thumb = make_thumb(luma)
    height, width = shape
    assert max(thumb.shape) <= THUMB_MAX_SIDE
    if max(shape) <= THUMB_MAX_SIDE:
        assert thumb is luma
        return
    scale = THUMB_MAX_SIDE / max(shape)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    reference = cv2.resize(luma, size, interpolation=cv2.INTER_AREA)
    assert thumb.shape == reference.shape
    # Halving in steps rounds at each step: one grey level at most, on pure noise.
    assert np.abs(thumb.astype(int) - reference.astype(int)).max() <= 1


def _audio(data: np.ndarray, fmt: str, layout: str, rate: int = 48000) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def test_mono_float_planar_is_copied() -> None:
    x = np.linspace(-1, 1, 1024, dtype=np.float32)
    frame = _audio(x[np.newaxis, :], "fltp", "mono")
    mono = AudioMonoConverter().convert(frame)
    np.testing.assert_array_equal(mono, x)
    frame.planes[0].update(bytes(frame.planes[0].buffer_size))
    np.testing.assert_array_equal(mono, x)


def test_stereo_downmix_is_the_channel_mean() -> None:
    left = np.full(512, 0.8, dtype=np.float32)
    right = np.full(512, 0.4, dtype=np.float32)
    conv = AudioMonoConverter()
    planar = conv.convert(_audio(np.stack([left, right]), "fltp", "stereo"))
    np.testing.assert_allclose(planar, 0.6, atol=1e-6)
    # A centred full-scale stereo signal stays in [-1, 1] (swresample's matrix would give 1.41).
    full = conv.convert(_audio(np.ones((2, 16), np.float32), "fltp", "stereo"))
    np.testing.assert_allclose(full, 1.0)
    packed = np.empty(1024, dtype=np.int16)
    packed[0::2] = 16384
    packed[1::2] = -16384
    interleaved = conv.convert(_audio(packed[np.newaxis, :], "s16", "stereo"))
    assert interleaved.shape == (512,)
    np.testing.assert_allclose(interleaved, 0.0, atol=1e-6)
    s32 = np.full((2, 100), 2**30, dtype=np.int32)
    np.testing.assert_allclose(conv.convert(_audio(s32, "s32p", "stereo")), 0.5, atol=1e-6)
    mono16 = np.full((1, 64), -16384, dtype=np.int16)
    np.testing.assert_allclose(conv.convert(_audio(mono16, "s16", "mono")), -0.5)


def test_unsigned_8_bit_goes_through_swresample() -> None:
    u8 = np.full((1, 256), 192, dtype=np.uint8)  # 128 is silence: +0.5
    mono = AudioMonoConverter().convert(_audio(u8, "u8", "mono", 8000))
    assert mono.dtype == np.float32
    assert mono.shape == (256,)
    np.testing.assert_allclose(mono, 0.5, atol=1e-6)


def test_unpadded_luma_is_read_in_place_and_stays_intact(tmp_path: Path) -> None:
    # 128-px rows are not padded: the luma is a view of the decoded picture, which the decoder
    # must never write into again while it is referenced (reference-counted frames).
    rng = np.random.default_rng(3)
    pictures = [rng.integers(16, 236, (48, 128), dtype=np.uint8) for _ in range(12)]
    path = tmp_path / "noise.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 48, "yuv420p"
        for index, picture in enumerate(pictures):
            frame = _yuv420(picture)
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
        lumas = [luma_from_av_frame(frame) for frame in decoded]
        assert decoded[0].planes[0].line_size == 128
        assert not lumas[0].flags.owndata  # read in place, not copied
        del decoded  # only the arrays keep the pictures alive now
        assert all(luma.flags.c_contiguous for luma in lumas)
        for luma, picture in zip(lumas, pictures, strict=True):
            np.testing.assert_array_equal(luma, picture)
