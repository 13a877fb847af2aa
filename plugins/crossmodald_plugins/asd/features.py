"""Inputs of the Light-ASD network, computed the way the reference pipeline computed them.

Audio: ``python_speech_features.mfcc(audio_int16, 16000, numcep=13, winlen=0.025,
winstep=0.010)`` re-done in torch: pre-emphasis 0.97, rectangular 400-sample frames every 160
samples (frame ``i`` starts at sample ``160 i``; the tail is zero padded), 512-point power
spectrum / 512, 26 triangular mel filters on FFT bins ``floor(513 f / sr)``, natural log, DCT-II
(orthonormal), sine lifter 22, and the first coefficient replaced by the log frame energy. The
reference read 16-bit WAV files without scaling, so float samples are scaled by 32768 first (the
log energies, and so every coefficient, depend on that scale).

Video: the reference cropped each face from its (median-smoothed) detection box: ``bs`` is half
the box's longer side, the frame is padded by ``bs * 1.8`` with grey 110, the crop runs from
``bs`` above the centre to ``1.8 bs`` below it and ``1.4 bs`` either side (the box widened by
40 %), is resized to 224 x 224, and its centre 112 x 112 kept. Pictures were grey from full-range
RGB JPEGs, so limited-range luma (16..235) is stretched to 0..255 first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from crossmodald.media import U8Image

#: Sample rate of the network's audio.
MODEL_RATE = 16_000
WIN_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms at 16 kHz
N_FFT = 512
N_MELS = 26
N_CEPS = 13
PREEMPHASIS = 0.97
CEP_LIFTER = 22
#: int16 full scale: the reference computed MFCCs on raw 16-bit sample values.
INT16_SCALE = 32768.0

#: Grey level the reference padded frames with where a crop leaves the picture.
PAD_GREY = 110
#: Box widening of the reference crop (each side).
CROP_SCALE = 0.40


@lru_cache(maxsize=4)
def _mel_filterbank(sample_rate: int) -> Tensor:
    """(N_MELS, N_FFT/2+1) triangular filters, bins as python_speech_features rounds them."""

    def hz2mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel2hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = np.array([0.0, sample_rate / 2.0])
    low_mel, high_mel = hz2mel(edges)
    mel_points = np.linspace(low_mel, high_mel, N_MELS + 2)
    bins = np.floor((N_FFT + 1) * mel2hz(mel_points) / sample_rate).astype(np.int64)
    bank = np.zeros((N_MELS, N_FFT // 2 + 1), dtype=np.float64)
    for j in range(N_MELS):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(lo, mid):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            bank[j, i] = (hi - i) / (hi - mid)
    return torch.from_numpy(bank)


@lru_cache(maxsize=1)
def _dct_lifter() -> Tensor:
    """(N_MELS, N_CEPS): orthonormal DCT-II columns times the sine lifter."""
    n = np.arange(N_MELS, dtype=np.float64)
    k = np.arange(N_CEPS, dtype=np.float64)
    basis = np.cos(np.pi / N_MELS * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / N_MELS)
    basis[:, 0] *= 1.0 / math.sqrt(2.0)
    lift = 1.0 + (CEP_LIFTER / 2.0) * np.sin(np.pi * k / CEP_LIFTER)
    return torch.from_numpy(basis * lift[None, :])


def mfcc_frame_count(n_samples: int) -> int:
    """How many MFCC frames :func:`mfcc` returns for ``n_samples`` samples at 16 kHz."""
    if n_samples <= WIN_SAMPLES:
        return 1
    return 1 + math.ceil((n_samples - WIN_SAMPLES) / HOP_SAMPLES)


def mfcc(audio: Tensor) -> Tensor:
    """MFCCs of 16 kHz mono audio in [-1, 1], python_speech_features style.

    Args:
        audio: (N,) or (B, N) float samples at 16 kHz.

    Returns:
        (frames, 13) or (B, frames, 13) float32 MFCCs, 100 frames per second; frame ``i``
        covers samples [160 i, 160 i + 400).
    """
    if audio.ndim not in (1, 2):
        raise ValueError(f"mfcc: expected (N,) or (B, N) audio, got shape {tuple(audio.shape)}")
    batched = audio.ndim == 2
    x = (audio if batched else audio.unsqueeze(0)).to(torch.float64) * INT16_SCALE
    n_samples = x.shape[1]
    if n_samples == 0:
        raise ValueError("mfcc: no audio samples")
    x = torch.cat([x[:, :1], x[:, 1:] - PREEMPHASIS * x[:, :-1]], dim=1)
    n_frames = mfcc_frame_count(n_samples)
    pad = (n_frames - 1) * HOP_SAMPLES + WIN_SAMPLES - n_samples
    x = torch.nn.functional.pad(x, (0, pad))
    frames = x.unfold(1, WIN_SAMPLES, HOP_SAMPLES)  # (B, F, 400)
    power = torch.fft.rfft(frames, n=N_FFT).abs().square() / N_FFT
    eps = float(np.finfo(np.float64).eps)
    energy = power.sum(dim=-1)
    energy = torch.where(energy == 0, torch.full_like(energy, eps), energy)
    bank = _mel_filterbank(MODEL_RATE).to(power.device)
    feat = power @ bank.T
    feat = torch.where(feat == 0, torch.full_like(feat, eps), feat)
    ceps = torch.log(feat) @ _dct_lifter().to(power.device)
    ceps[..., 0] = torch.log(energy)
    out = ceps.to(torch.float32)
    return out if batched else out[0]


@lru_cache(maxsize=16)
def _sinc_kernel(orig_rate: int, new_rate: int, zeros: int = 16) -> tuple[Tensor, int, int, int]:
    """Polyphase Kaiser-windowed sinc kernels for rational resampling (orig -> new)."""
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    cutoff = min(up, down) * 0.97  # keep a little below Nyquist of the lower rate
    width = math.ceil(zeros * down / cutoff)
    idx = torch.arange(-width, width + down, dtype=torch.float64)[None, :] / down
    phases = -torch.arange(up, dtype=torch.float64)[:, None] / up
    t = (phases + idx) * cutoff / 1.0
    t = t.clamp(-zeros, zeros)
    beta = 8.6
    window = torch.special.i0(beta * torch.sqrt(1 - (t / zeros) ** 2)) / torch.special.i0(
        torch.tensor(beta, dtype=torch.float64)
    )
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
    kernel = kernel * window * cutoff / down
    return kernel.to(torch.float32), width, up, down


def resample(audio: Tensor, orig_rate: int, new_rate: int = MODEL_RATE) -> Tensor:
    """Band-limited resampling of (N,) or (B, N) audio (windowed sinc, rational ratio).

    Output sample ``j`` is at time ``j / new_rate``, the same origin as the input.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"resample: rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return audio
    batched = audio.ndim == 2
    x = audio if batched else audio.unsqueeze(0)
    kernel, width, up, down = _sinc_kernel(orig_rate, new_rate)
    n = x.shape[1]
    padded = torch.nn.functional.pad(x.float(), (width, width + down))
    out = torch.nn.functional.conv1d(
        padded[:, None, :], kernel[:, None, :].to(x.device), stride=down
    )
    out = out.transpose(1, 2).reshape(x.shape[0], -1)
    target = math.ceil(n * up / down)
    out = out[:, :target]
    return out if batched else out[0]


@dataclass(frozen=True, slots=True)
class CropBox:
    """A face as the crop needs it: centre and half-size, in pixels of the full picture."""

    cx: float
    cy: float
    half: float


def box_to_crop(x0: float, y0: float, x1: float, y1: float) -> CropBox:
    """The reference's crop box of a detection ``(x0, y0, x1, y1)``: half its longer side."""
    return CropBox(cx=(x0 + x1) / 2.0, cy=(y0 + y1) / 2.0, half=max(x1 - x0, y1 - y0) / 2.0)


def smooth_boxes(boxes: Sequence[CropBox], kernel: int = 13) -> list[CropBox]:
    """Median-filter centres and sizes over ``kernel`` frames, zero-padded at the ends as
    ``scipy.signal.medfilt`` (what the reference used) does."""
    if not boxes:
        return []
    arr = np.array([[b.cx, b.cy, b.half] for b in boxes], dtype=np.float64)
    k = kernel // 2
    padded = np.pad(arr, ((k, k), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=0)
    med = np.median(windows, axis=-1)
    return [CropBox(float(r[0]), float(r[1]), float(r[2])) for r in med]


_FULL_RANGE_LUT = np.clip(np.round((np.arange(256) - 16.0) * 255.0 / 219.0), 0, 255).astype(
    np.uint8
)


def luma_to_grey(luma: U8Image) -> U8Image:
    """Limited-range luma (16..235) to full-range grey (0..255), as RGB JPEGs decode to."""
    out: U8Image = _FULL_RANGE_LUT[luma]
    return out


def crop_face(luma: U8Image, box: CropBox, *, limited_range: bool = True) -> U8Image:
    """One 112 x 112 grey face crop exactly as the reference pipeline made it.

    Args:
        luma: Full-resolution grey picture (H, W), uint8.
        box: The (smoothed) face box.
        limited_range: Stretch 16..235 luma to 0..255 (True for ordinary video).

    Returns:
        (112, 112) uint8 crop.
    """
    bs = max(box.half, 1.0)
    # The reference padded the frame by ``pad_px`` and cut in padded coordinates; the same
    # integer truncation is kept so crops land on the same pixels.
    pad_px = int(bs * (1 + 2 * CROP_SCALE))
    my = box.cy + pad_px
    mx = box.cx + pad_px
    top, bottom = int(my - bs), int(my + bs * (1 + 2 * CROP_SCALE))
    left, right = int(mx - bs * (1 + CROP_SCALE)), int(mx + bs * (1 + CROP_SCALE))
    region: U8Image = _padded_region(
        luma, top - pad_px, bottom - pad_px, left - pad_px, right - pad_px, limited_range
    )
    face = np.asarray(cv2.resize(region, (224, 224), interpolation=cv2.INTER_LINEAR), np.uint8)
    out: U8Image = np.ascontiguousarray(face[56:168, 56:168])
    return out


def _padded_region(
    luma: U8Image, top: int, bottom: int, left: int, right: int, limited_range: bool
) -> U8Image:
    """luma[top:bottom, left:right] with PAD_GREY where the rectangle leaves the picture."""
    h, w = luma.shape
    out = np.full((max(bottom - top, 1), max(right - left, 1)), PAD_GREY, dtype=np.uint8)
    sy0, sy1 = max(top, 0), min(bottom, h)
    sx0, sx1 = max(left, 0), min(right, w)
    if sy1 > sy0 and sx1 > sx0:
        part = luma[sy0:sy1, sx0:sx1]
        out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = (
            _FULL_RANGE_LUT[part] if limited_range else part
        )
    return out
