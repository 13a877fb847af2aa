"""Building VideoFrame and AudioChunk values from decoded pictures and sample buffers.

Every source goes through these helpers so that frames look the same whatever their origin: a
full-resolution grey picture (the Y plane) plus a small area-averaged thumbnail for cheap
per-frame features.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from crossmodald.media import THUMB_MAX_SIDE, AudioChunk, ClockKind, U8Image, VideoFrame


def make_thumb(luma: U8Image) -> U8Image:
    """Shrink a grey picture by area averaging so its longest side is <= THUMB_MAX_SIDE."""
    height, width = luma.shape
    scale = THUMB_MAX_SIDE / max(height, width)
    if scale >= 1.0:
        return luma
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb: U8Image = cv2.resize(luma, size, interpolation=cv2.INTER_AREA)
    return thumb


def video_frame_from_luma(
    source_id: str,
    pts_ns: int,
    arrival_ns: int,
    luma: U8Image,
    clock: ClockKind,
) -> VideoFrame:
    """A VideoFrame from a grey picture the caller owns (it must not be modified afterwards)."""
    if luma.ndim != 2 or luma.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey picture, got {luma.dtype} {luma.shape}")
    if not luma.flags.c_contiguous:
        luma = np.ascontiguousarray(luma)
    return VideoFrame(
        source_id=source_id,
        pts_ns=pts_ns,
        arrival_ns=arrival_ns,
        luma=luma,
        thumb=make_thumb(luma),
        clock=clock,
    )


def to_mono_f32(samples: npt.NDArray[np.generic], *, channels_first: bool) -> npt.NDArray[np.float32]:
    """Downmix interleaved (n, ch) or planar (ch, n) samples of any numeric type to mono float32.

    Integer samples are scaled to [-1, 1] by their type's full scale.
    """
    data = np.asarray(samples)
    if np.issubdtype(data.dtype, np.integer):
        full_scale = float(np.iinfo(data.dtype).max) + 1.0
        scaled = data.astype(np.float32) / full_scale
    else:
        scaled = data.astype(np.float32, copy=False)
    if scaled.ndim == 2:
        mono = scaled.mean(axis=0 if channels_first else 1, dtype=np.float32)
    elif scaled.ndim == 1:
        mono = scaled
    else:
        raise ValueError(f"expected 1-D or 2-D samples, got shape {data.shape}")
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_chunk(
    source_id: str,
    pts_ns: int,
    arrival_ns: int,
    mono: npt.NDArray[np.float32],
    sample_rate: int,
    clock: ClockKind,
) -> AudioChunk:
    """An AudioChunk from mono float32 samples the caller owns."""
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    return AudioChunk(
        source_id=source_id,
        pts_ns=pts_ns,
        arrival_ns=arrival_ns,
        samples=mono,
        sample_rate=sample_rate,
        clock=clock,
    )
