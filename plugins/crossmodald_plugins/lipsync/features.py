"""The sync model's inputs: 40-band log-mel audio and lip features on a 25 fps slot grid.

Audio: 16 kHz mono, 25 ms frames every 10 ms (frame ``i`` covers samples ``[160 i, 160 i +
400)``), 512-point power spectrum, 40 triangular mel bands (HTK mel scale, 0..8 kHz), natural log.
Four audio steps per 40 ms video slot. Both streams are standardised per window
(:func:`standardise_audio`, :func:`standardise_lips`): the model sees shapes of change, not
levels, so recording gain and how wide a speaker opens the mouth matter less.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from crossmodald_plugins.asd.features import resample

SAMPLE_RATE = 16_000
WIN = 400
HOP = 160
N_FFT = 512
N_MELS = 40
#: Audio steps (10 ms) per video slot (40 ms, 25 fps).
STEPS_PER_SLOT = 4
SLOT_MS = 40
STEP_MS = 10


def _band_edges_hz() -> npt.NDArray[np.float64]:
    """The mel bands' edge frequencies (Hz): band ``j`` spans ``[j, j + 2]``, centre ``j + 1``."""

    def hz2mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel2hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    lo, hi = hz2mel(np.array([0.0, SAMPLE_RATE / 2.0]))
    edges: npt.NDArray[np.float64] = mel2hz(np.linspace(lo, hi, N_MELS + 2))
    return edges


@lru_cache(maxsize=1)
def _mel_bank() -> Tensor:
    hz = _band_edges_hz()
    freqs = np.linspace(0.0, SAMPLE_RATE / 2.0, N_FFT // 2 + 1)
    bank = np.zeros((N_MELS, len(freqs)))
    for j in range(N_MELS):
        left, mid, right = hz[j], hz[j + 1], hz[j + 2]
        up = (freqs - left) / max(mid - left, 1e-9)
        down = (right - freqs) / max(right - mid, 1e-9)
        bank[j] = np.clip(np.minimum(up, down), 0.0, None)
    return torch.from_numpy(bank).float()


def log_mel(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    """``(steps, 40)`` log-mel of mono audio at any rate (resampled to 16 kHz first)."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if rate != SAMPLE_RATE:
        x = resample(x, rate, SAMPLE_RATE)
    n = x.shape[0]
    steps = max(1, 1 + math.ceil(max(0, n - WIN) / HOP))
    x = torch.nn.functional.pad(x, (0, (steps - 1) * HOP + WIN - n))
    frames = x.unfold(0, WIN, HOP) * torch.hann_window(WIN)
    power = torch.fft.rfft(frames, n=N_FFT).abs().square()
    mel = torch.log(power @ _mel_bank().T + 1e-6)
    out: npt.NDArray[np.float32] = mel.numpy().astype(np.float32)
    return out


def warp_bands(mel: npt.NDArray[np.float32], factor: float) -> npt.NDArray[np.float32]:
    """``mel`` as a voice whose spectrum is stretched by ``factor`` in frequency would give it.

    Band ``j`` takes the (interpolated) value of the band whose centre lies at ``centre_j /
    factor``; bands that would read above the top or below the bottom band repeat the edge band.
    A factor above 1 moves formants up (a shorter vocal tract: most women and children against
    most men), below 1 down (vocal tract length perturbation, a training augmentation).
    """
    centres = _band_edges_hz()[1:-1]
    source = np.interp(centres / factor, centres, np.arange(N_MELS, dtype=np.float64))
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, N_MELS - 1)
    frac = (source - low).astype(np.float32)
    out: npt.NDArray[np.float32] = (mel[:, low] * (1.0 - frac) + mel[:, high] * frac).astype(
        np.float32
    )
    return out


def standardise_audio(mel: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per band: zero mean, unit variance over the span (per window or clip)."""
    mu = mel.mean(axis=0, keepdims=True)
    sd = mel.std(axis=0, keepdims=True) + 1e-3
    out: npt.NDArray[np.float32] = ((mel - mu) / sd).astype(np.float32)
    return out


def standardise_lips(feats: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Lip features ``(T, 160)``: the mean pose removed, positions and deltas each scaled to
    unit RMS over the span (one scale each, so the shape of the movement is kept)."""
    half = feats.shape[1] // 2
    pos = feats[:, :half] - feats[:, :half].mean(axis=0, keepdims=True)
    delta = feats[:, half:]
    pos = pos / (float(np.sqrt(np.mean(pos**2))) + 1e-4)
    delta = delta / (float(np.sqrt(np.mean(delta**2))) + 1e-4)
    return np.concatenate([pos, delta], axis=1).astype(np.float32)


def slot_index(
    frame_pts_s: npt.NDArray[np.float64], first_s: float, n_slots: int
) -> npt.NDArray[np.int64]:
    """For each 40 ms slot from ``first_s``, the frame on screen then (latest pts <= slot)."""
    slots = first_s + SLOT_MS / 1000.0 * np.arange(n_slots)
    idx = np.searchsorted(frame_pts_s, slots + 1e-6, side="right") - 1
    out: npt.NDArray[np.int64] = np.clip(idx, 0, len(frame_pts_s) - 1).astype(np.int64)
    return out
