"""A synthetic clap recording written with PyAV: two bright hands meeting over a moving background.

Shared by the avsync clap tests and the ``calibrate`` tests.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

WIDTH, HEIGHT = 160, 120
RATE = 48_000
#: Sub-frame samples averaged per frame: the camera integrates over the whole frame interval.
EXPOSURE_STEPS = 8
HAND_RADIUS = 11.0
APPROACH_S = 0.2
PAUSE_S = 0.08
RETREAT_S = 0.3
TRAVEL_PX = 36.0


def _hand_gap(t_s: npt.NDArray[np.float64], contact_s: float) -> npt.NDArray[np.float64]:
    """How far each hand is from its contact position at ``t_s`` (one clap at ``contact_s``).

    The hands speed up into contact (a clap is fastest at impact), stop dead, rest briefly and
    ease back out to where they started.
    """
    gap = np.full_like(t_s, TRAVEL_PX)
    u = (contact_s - t_s) / APPROACH_S
    approaching = (u >= 0) & (u < 1)
    # Uniform acceleration from rest: fastest at contact.
    gap[approaching] = TRAVEL_PX * (1 - (1 - u[approaching]) ** 2)
    resting = (t_s >= contact_s) & (t_s < contact_s + PAUSE_S)
    gap[resting] = 0.0
    r = (t_s - contact_s - PAUSE_S) / RETREAT_S
    leaving = (r >= 0) & (r < 1)
    gap[leaving] = TRAVEL_PX * (1 - (1 - r[leaving]) ** 2)
    return gap


_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
#: Rows the lamp (top) and the hands (middle) can reach; the rest of the picture never changes.
_LAMP_ROWS = slice(0, 35)
_HAND_ROWS = slice(40, 101)


def _scene(t_s: float, contacts_s: tuple[float, ...]) -> npt.NDArray[np.float64]:
    """The picture at one instant: a dark room, a slowly drifting lamp, two bright hands."""
    picture: npt.NDArray[np.float64] = 40.0 + 10.0 * (_YY / HEIGHT)
    # Background motion: a dim lamp drifting across the top (10 px/s), always moving.
    lamp_x = 20.0 + 10.0 * t_s
    yy, xx = _YY[_LAMP_ROWS], _XX[_LAMP_ROWS]
    picture[_LAMP_ROWS] += 25.0 * np.exp(-(((xx - lamp_x) / 6.0) ** 2 + ((yy - 15.0) / 5.0) ** 2))
    gap = float(min(_hand_gap(np.array([t_s]), c)[0] for c in contacts_s))
    yy, xx = _YY[_HAND_ROWS], _XX[_HAND_ROWS]
    hands = picture[_HAND_ROWS]
    for side in (-1.0, 1.0):
        centre_x = WIDTH / 2 + side * (HAND_RADIUS + 1.0 + gap)
        d = np.hypot((xx - centre_x) / HAND_RADIUS, (yy - 70.0) / (1.4 * HAND_RADIUS))
        hands = np.maximum(hands, 200.0 / (1.0 + np.exp((d - 1.0) * 8.0)))
    picture[_HAND_ROWS] = hands
    return picture


def write_clap_clip(
    path: Path, *, fps: int, audio_lead_ms: float, contacts_s: tuple[float, ...], seconds: float
) -> Path:
    """Write a clap recording: each clap's hands meet at a contact time, its sound starts
    ``audio_lead_ms`` earlier (a decaying noise burst), over hiss and a moving background."""
    rng = np.random.default_rng(round(fps * 1000 + audio_lead_ms))
    frame_s = 1.0 / fps
    n_frames = round(seconds * fps)
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    sound = rng.normal(0, 0.003, n)
    for contact in contacts_s:
        after = t - (contact - audio_lead_ms / 1000)
        burst = np.where(after >= 0, np.exp(-np.clip(after, 0, None) / 0.012), 0.0)
        sound += 0.6 * burst * rng.normal(0, 1, n).clip(-2.5, 2.5) / 2.5
    samples = sound.astype(np.float32)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.bit_rate = 4_000_000
        audio = out.add_stream("pcm_s16le", rate=RATE)
        audio.layout = "mono"
        for i in range(n_frames):
            # Average the scene over the frame's exposure [t, t + 1/fps).
            steps = [
                _scene(i * frame_s + (k + 0.5) * frame_s / EXPOSURE_STEPS, contacts_s)
                for k in range(EXPOSURE_STEPS)
            ]
            luma = np.mean(steps, axis=0) + rng.normal(0, 1.5, (HEIGHT, WIDTH))
            grey = np.round(luma).clip(0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(grey[..., None], 3, axis=2), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
            # The audio of the same frame interval, interleaved as a recorder writes it.
            first, last = round(i * RATE / fps), round((i + 1) * RATE / fps)
            chunk = av.AudioFrame.from_ndarray(samples[None, first:last].copy(), "flt", "mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = RATE, first, Fraction(1, RATE)
            out.mux(audio.encode(chunk))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path
