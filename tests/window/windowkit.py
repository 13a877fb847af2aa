"""Test helpers for the windower: exact synthetic frames and audio, and a reference model.

Audio samples encode their own grid index (``(i % 2**20) / 2**20``, exact in float32), so a
window's audio proves where every sample came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np

from crossmodald.media import NS_PER_S, AudioChunk, ClockKind, F32Array, VideoFrame, Window
from crossmodald.window import Windower

STREAM = "s"
TINY = np.zeros((2, 2), np.uint8)
MS = 1_000_000
S = NS_PER_S


def rnd(x: Fraction) -> int:
    """Round half to even (Fraction rounding), as the windower does."""
    return round(x)


def frame(pts_ns: int) -> VideoFrame:
    """A tiny frame at ``pts_ns`` (the frame objects are shared into windows, not copied)."""
    return VideoFrame(STREAM, pts_ns, 0, TINY, TINY, ClockKind.PTS)


def frame_pts(i: int, fps: Fraction, base_ns: int = 0) -> int:
    """Pts of frame ``i`` at ``fps``, rounded to the ns."""
    return base_ns + rnd(Fraction(i * NS_PER_S) / fps)


def tone(index: int, n: int) -> F32Array:
    """Samples whose values are their grid indices ``index .. index + n - 1`` (mod 2**20)."""
    idx = np.arange(index, index + n, dtype=np.int64)
    return ((idx % 2**20) / 2**20).astype(np.float32)


def chunk(index: int, n: int, rate: int, origin_ns: int = 0) -> AudioChunk:
    """A chunk of ``n`` samples whose first one sits at grid ``index`` after ``origin_ns``."""
    pts = origin_ns + rnd(Fraction(index * NS_PER_S, rate))
    return AudioChunk(STREAM, pts, 0, tone(index, n), rate, ClockKind.PTS)


def make(
    *,
    length_ns: int = 2 * S,
    hop_ns: int = S // 2,
    lateness_ns: int = 0,
    video: bool = True,
    audio: bool = True,
    rate: int | None = 48000,
    fps: float | None = 30.0,
    **kw: int,
) -> Windower:
    """A windower with the usual test settings."""
    return Windower(
        STREAM,
        length_ns=length_ns,
        hop_ns=hop_ns,
        lateness_ns=lateness_ns,
        has_video=video,
        has_audio=audio,
        sample_rate=rate if audio else None,
        frame_rate=fps if video else None,
        clock=ClockKind.PTS,
        **kw,
    )


def av_items(
    seconds: float,
    fps: Fraction,
    rate: int,
    *,
    chunk_samples: int | None = None,
    base_ns: int = 0,
    video: bool = True,
    audio: bool = True,
) -> list[VideoFrame | AudioChunk]:
    """Frames and audio chunks of ``seconds`` of media from ``base_ns``, in media-time order.

    ``base_ns`` must be a multiple of the hop used (so it is the windows' origin).
    """
    items: list[tuple[int, int, VideoFrame | AudioChunk]] = []
    if video:
        n_frames = int(Fraction(seconds) * fps)
        for i in range(n_frames):
            p = frame_pts(i, fps, base_ns)
            items.append((p, 0, frame(p)))
    if audio:
        step = chunk_samples or rate // 50
        total = int(Fraction(seconds) * rate)
        for index in range(0, total, step):
            c = chunk(index, min(step, total - index), rate, base_ns)
            items.append((c.pts_ns, 1, c))
    items.sort(key=lambda t: (t[0], t[1]))
    return [item for _, _, item in items]


def run(w: Windower, items: Iterable[VideoFrame | AudioChunk]) -> list[Window]:
    """Push everything (now_ns = the item's position), then flush (now_ns = -1)."""
    out: list[Window] = []
    for i, item in enumerate(items):
        out += w.push(item, i)
    out += w.flush(-1)
    return out


def grid_start(k: int, hop_ns: int, rate: int) -> int:
    """Grid index of window k's first sample."""
    return rnd(Fraction(k * hop_ns * rate, NS_PER_S))


def expected_window(
    k: int,
    *,
    origin_ns: int,
    length_ns: int,
    hop_ns: int,
    frames_pts: Sequence[int],
    rate: int,
    have: np.ndarray | None = None,
) -> tuple[list[int], F32Array, np.ndarray]:
    """Reference contents of window k: frame pts, audio and the delivered flags.

    ``have`` is a bool array over grid indices saying which samples were delivered (None: all).
    """
    start = origin_ns + k * hop_ns
    end = start + length_ns
    pts = [p for p in frames_pts if start <= p < end]
    if not rate:
        return pts, np.zeros(0, np.float32), np.zeros(0, np.bool_)
    first = grid_start(k, hop_ns, rate)
    n = rnd(Fraction(length_ns * rate, NS_PER_S))
    valid = np.ones(n, np.bool_)
    if have is not None:
        idx = np.arange(first, first + n)
        inside = (idx >= 0) & (idx < len(have))
        valid = np.zeros(n, np.bool_)
        valid[inside] = have[idx[inside]]
    audio = np.where(valid, tone(first, n), np.float32(0)).astype(np.float32)
    return pts, audio, valid


def assert_window(
    window: Window,
    k: int,
    *,
    origin_ns: int = 0,
    length_ns: int = 2 * S,
    hop_ns: int = S // 2,
    frames_pts: Sequence[int] = (),
    rate: int = 0,
    have: np.ndarray | None = None,
) -> None:
    """Assert a window equals the reference model, exactly."""
    pts, audio, valid = expected_window(
        k,
        origin_ns=origin_ns,
        length_ns=length_ns,
        hop_ns=hop_ns,
        frames_pts=frames_pts,
        rate=rate,
        have=have,
    )
    assert window.index == k
    assert window.start_ns == origin_ns + k * hop_ns
    assert window.end_ns == window.start_ns + length_ns
    assert [f.pts_ns for f in window.video] == pts
    assert window.audio_rate == rate
    assert window.audio.dtype == np.float32
    assert window.audio_valid.dtype == np.bool_
    assert np.array_equal(window.audio_valid, valid)
    assert np.array_equal(window.audio, audio)
    assert window.info == {"frames": len(pts), "missing_audio_samples": int((~valid).sum())}


def signature(windows: Sequence[Window]) -> list[tuple[int, list[int], bytes, bytes]]:
    """A comparable summary of windows (index, frame pts, audio bytes, valid bytes)."""
    return [
        (w.index, [f.pts_ns for f in w.video], w.audio.tobytes(), w.audio_valid.tobytes())
        for w in windows
    ]
