"""The motion method: visual motion energy against audio onsets, cross-correlated in torch.

For general content. Per window:

* video: motion energy per pair of successive frames (mean absolute difference, per second of
  frame interval so that dropped frames and variable frame rates do not count as motion), in
  the mouth region when a face is found (OpenCV Haar cascade on one frame per window, the mouth
  being the lower third of the face box), else over the whole thumbnail. The energy of frames
  ``i-1, i`` is placed at the middle of their pts.
* audio: log energy in frames of ``1/rate_hz``, its derivative half-wave rectified (onsets).
* both resampled to ``rate_hz`` on the window's timeline and cross-correlated over lags within
  ``+/- max_lag_ms`` (normalised per lag over the overlap, via FFT for the whole batch); the
  peak is refined by parabolic interpolation.

The lag that best aligns the video with the audio is the audio lead: if the audio is ahead by L,
the audio at u matches the video at u + L. Natural speech leads lip motion by a physiological
amount (tens of ms) that is not subtracted here: the estimate says what the media show.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from crossmodald.media import NS_PER_S, U8Image, Window
from crossmodald_plugins.avsync.batching import masked_max, pad_stack
from crossmodald_plugins.avsync.result import MotionPeak

#: Every region is pooled to this size (rows, columns) before differencing.
REGION_SIZE = (32, 48)
#: Longest side of the picture the face detector sees.
FACE_DETECT_SIDE = 160
#: Motion energy (mean absolute frame difference, grey levels) varying less than this (standard
#: deviation over the window) means nothing moves: only sensor noise, which is steady.
MIN_MOTION = 0.05
#: Loudest audio frame RMS below this (about -50 dBFS) is silence.
MIN_AUDIO_RMS = 3e-3
#: Log-energy floor below the window's loudest frame (the dynamic range looked at), as power.
_ENERGY_RANGE = 1e-4
#: Lags at least this far from the peak count as side lobes for the sharpness.
_SIDELOBE_MS = 120.0
#: A lag needs this share of the window overlapping in both signals to count.
_MIN_OVERLAP = 0.5

Region = Literal["mouth", "frame"]


@dataclass(frozen=True, slots=True)
class MotionOutcome:
    """The motion method's findings for one window.

    Attributes:
        audio_lead_ms: The correlation peak's lag, or None.
        confidence: 0..1.
        peak: Peak details (None when there is no peak at all).
        reason: Why there is no estimate ("" when there is one).
    """

    audio_lead_ms: float | None
    confidence: float
    peak: MotionPeak | None
    reason: str


class FaceFinder:
    """Finds the largest frontal face with OpenCV's bundled Haar cascade (thread-safe)."""

    def __init__(self) -> None:
        classifier = getattr(cv2, "CascadeClassifier", None)
        haar_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if classifier is None or haar_dir is None:
            # OpenCV 5 moved Haar cascades out of the main package.
            raise RuntimeError(
                f"avsync: OpenCV {cv2.__version__} has no Haar face cascade; "
                "set face_detection = false or install opencv-python-headless 4.x"
            )
        path = haar_dir + "haarcascade_frontalface_default.xml"
        self._cascade = classifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"avsync: cannot load the face cascade {path}")
        # cv2 cascades are not documented as thread-safe; infer may run on any worker thread.
        self._lock = threading.Lock()

    def mouth_box(self, luma: U8Image) -> tuple[int, int, int, int] | None:
        """The mouth region (x0, y0, x1, y1) in ``luma`` pixels of the largest face, or None."""
        height, width = luma.shape
        scale = min(1.0, FACE_DETECT_SIDE / max(height, width))
        small: U8Image = luma
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(cv2.resize(luma, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        with self._lock:
            faces = self._cascade.detectMultiScale(
                small, scaleFactor=1.2, minNeighbors=4, minSize=(20, 20)
            )
        if len(faces) == 0:
            return None
        fx, fy, fw, fh = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
        # The mouth: lower third of the face box, its middle 60 % across.
        x0 = (fx + 0.2 * fw) / scale
        x1 = (fx + 0.8 * fw) / scale
        y0 = (fy + 2 * fh / 3) / scale
        y1 = (fy + fh) / scale
        box = (
            max(0, int(x0)),
            max(0, int(y0)),
            min(width, math.ceil(x1)),
            min(height, math.ceil(y1)),
        )
        if box[2] - box[0] < 8 or box[3] - box[1] < 4:
            return None
        return box


#: A window's mouth region from shared face tracks: (x0, y0, x1, y1), or "none" (no face).
MouthBox = tuple[int, int, int, int] | Literal["none"]


def _regions(
    window: Window, faces: FaceFinder | None, mouth: MouthBox | None = None
) -> tuple[npt.NDArray[np.float32], Region]:
    """The per-frame region pictures of a window, pooled to REGION_SIZE: (F, rows, cols)."""
    frames = window.video
    box = None
    if mouth is not None:
        box = None if mouth == "none" else mouth
    elif faces is not None:
        box = faces.mouth_box(frames[len(frames) // 2].luma)
    if box is not None:
        x0, y0, x1, y1 = box
        stack = np.stack([f.luma[y0:y1, x0:x1] for f in frames])
        region: Region = "mouth"
    else:
        stack = np.stack([f.thumb for f in frames])
        region = "frame"
    return _area_pool(stack), region


def _area_pool(stack: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Shrink (F, H, W) pictures to REGION_SIZE by averaging whole pixel blocks."""
    rows, cols = REGION_SIZE
    _, height, width = stack.shape
    fy, fx = height // rows, width // cols
    if fy >= 1 and fx >= 1 and fy * rows >= 0.8 * height and fx * cols >= 0.8 * width:
        # Integer blocks (a few edge pixels dropped): one reshape and mean, no resampling.
        y0, x0 = (height - fy * rows) // 2, (width - fx * cols) // 2
        crop = stack[:, y0 : y0 + fy * rows, x0 : x0 + fx * cols]
        blocks = crop.reshape(len(stack), rows, fy, cols, fx)
        # Block sums as fy*fx strided adds: ~15x faster than a mean over the axes (2, 4), and
        # the same values, since every partial sum of 8-bit pixels is an integer that float32
        # holds exactly (below 2**24), whatever the order.
        pooled: npt.NDArray[np.float32] = blocks[:, :, 0, :, 0].astype(np.float32)
        for dy in range(fy):
            for dx in range(fx):
                if dy or dx:
                    pooled += blocks[:, :, dy, :, dx]
        pooled /= np.float32(fy * fx)
        return pooled
    # Blocks would drop too much (or the picture is smaller than the target): exact area
    # averaging with fractional blocks (slower, so only here).
    tensor = torch.from_numpy(stack).float()[:, None]
    return F.adaptive_avg_pool2d(tensor, REGION_SIZE)[:, 0].numpy()


def video_motion(
    windows: Sequence[Window],
    faces: FaceFinder | None,
    device: torch.device,
    mouths: Sequence[MouthBox | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Region]]:
    """Motion energy per successive frame pair.

    Returns:
        time_s (B, F-1) middle of each pair, from window start (+inf where padded), energy
        (B, F-1) grey levels per nominal frame, mask (B, F-1), regions.
    """
    pictures: list[npt.NDArray[np.float32]] = []
    regions: list[Region] = []
    times: list[npt.NDArray[np.float64]] = []
    rows, cols = REGION_SIZE
    for i, w in enumerate(windows):
        if len(w.video) >= 2:
            pic, region = _regions(w, faces, mouths[i] if mouths is not None else None)
        else:
            pic, region = np.zeros((0, rows, cols), dtype=np.float32), "frame"
        pictures.append(pic)
        regions.append(region)
        times.append(
            np.array([f.pts_ns - w.start_ns for f in w.video], dtype=np.float64) / NS_PER_S
        )
    n = max(2, *(len(p) for p in pictures))
    stack = np.zeros((len(windows), n, rows, cols), dtype=np.float32)
    for b, pic in enumerate(pictures):
        stack[b, : len(pic)] = pic
    pics = torch.from_numpy(stack).to(device)
    t, ok = pad_stack(times, dtype=torch.float64, device=device, min_len=2)

    diff = (pics[:, 1:] - pics[:, :-1]).abs().mean(dim=(2, 3)).double()
    dt = t[:, 1:] - t[:, :-1]
    pair_ok = ok[:, 1:] & ok[:, :-1] & (dt > 0)
    typical = torch.nanmedian(torch.where(pair_ok, dt, torch.full_like(dt, math.nan)), dim=1).values
    # Per nominal frame interval: a dropped frame doubles the difference but also the interval.
    energy = diff * (typical[:, None] / dt.clamp_min(1e-9))
    energy = torch.where(pair_ok, energy, torch.zeros_like(energy))
    mid = torch.where(pair_ok, (t[:, 1:] + t[:, :-1]) / 2, torch.full_like(dt, math.inf))
    # Keep the times sorted for searchsorted: padded and invalid pairs sit at +inf.
    mid, order = torch.sort(mid, dim=1)
    return mid, torch.gather(energy, 1, order), torch.gather(pair_ok, 1, order), regions


def _resample(
    time_s: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, grid_s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear interpolation of irregular samples (sorted times, +inf padded) onto a grid."""
    n = time_s.shape[1]
    right = torch.searchsorted(time_s, grid_s.expand(time_s.shape[0], -1).contiguous())
    left = (right - 1).clamp(0, n - 1)
    right_c = right.clamp(0, n - 1)
    t0, t1 = torch.gather(time_s, 1, left), torch.gather(time_s, 1, right_c)
    v0, v1 = torch.gather(values, 1, left), torch.gather(values, 1, right_c)
    ok = (right >= 1) & (right < n) & torch.isfinite(t1) & torch.gather(mask, 1, left)
    ok &= torch.gather(mask, 1, right_c)
    w1 = ((grid_s - t0) / (t1 - t0).clamp_min(1e-12)).clamp(0.0, 1.0)
    out = torch.where(ok, v0 + (v1 - v0) * w1, torch.zeros_like(v0))
    return out, ok


def audio_onsets(
    windows: Sequence[Window], rate_hz: float, n_grid: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half-wave rectified log-energy derivative on the grid k / rate_hz, k = 0..n_grid-1.

    Returns:
        onset (B, G), mask (B, G), loudest frame RMS (B,).
    """
    audio, _ = pad_stack([w.audio for w in windows], dtype=torch.float32, device=device)
    valid, _ = pad_stack([w.audio_valid for w in windows], dtype=torch.bool, device=device)
    lengths = torch.tensor([len(w.audio) for w in windows], device=device)
    rates = torch.tensor(
        [max(w.audio_rate, 1) for w in windows], dtype=torch.float64, device=device
    )
    zero = torch.zeros_like(audio[:, :1], dtype=torch.float64)
    power_sum = torch.cat([zero, torch.cumsum(audio.double() ** 2, dim=1)], dim=1)
    # Usually every sample was delivered and no row is padded: the running count of valid
    # samples is then the sample index itself (exact in float64), no cumulative sum needed.
    all_valid = all(
        len(w.audio) == audio.shape[1]
        and len(w.audio_valid) == len(w.audio)
        and w.audio_valid.all()
        for w in windows
    )
    if all_valid:
        valid_sum = torch.arange(audio.shape[1] + 1, dtype=torch.float64, device=device).expand(
            audio.shape[0], -1
        )
    else:
        valid_sum = torch.cat([zero, torch.cumsum(valid.double(), dim=1)], dim=1)
    # Frame k covers samples [k, k+1) / rate_hz; its boundaries on each row's own sample grid.
    k = torch.arange(n_grid + 1, device=device, dtype=torch.float64)
    bounds = torch.floor(k[None, :] * rates[:, None] / rate_hz).long()
    bounds = torch.minimum(bounds, lengths[:, None])
    p = torch.gather(power_sum, 1, bounds)
    v = torch.gather(valid_sum, 1, bounds)
    count = (bounds[:, 1:] - bounds[:, :-1]).double()
    power = (p[:, 1:] - p[:, :-1]) / count.clamp_min(1.0)
    frame_ok = (count > 0) & ((v[:, 1:] - v[:, :-1]) >= 0.9 * count)
    loudest = masked_max(power, frame_ok).clamp_min(0.0)
    floor = (loudest * _ENERGY_RANGE).clamp_min(1e-12)
    log_e = torch.log(power + floor[:, None])
    # Derivative between frames k-1 and k sits at the boundary k / rate_hz.
    rise = (log_e[:, 1:] - log_e[:, :-1]).clamp_min(0.0)
    rise_ok = frame_ok[:, 1:] & frame_ok[:, :-1]
    onset = torch.cat([torch.zeros_like(rise[:, :1]), rise], dim=1)[:, :n_grid]
    mask = torch.cat([torch.zeros_like(rise_ok[:, :1]), rise_ok], dim=1)[:, :n_grid]
    return onset, mask, loudest.sqrt()


def _xcorr(a: torch.Tensor, b: torch.Tensor, size: int, max_lag: int) -> torch.Tensor:
    """sum_u a[u + lag] * b[u] for lag = -max_lag..max_lag, batched: (B, 2*max_lag+1)."""
    spec = torch.fft.rfft(a, n=size) * torch.conj(torch.fft.rfft(b, n=size))
    full = torch.fft.irfft(spec, n=size)
    return torch.cat([full[:, size - max_lag :], full[:, : max_lag + 1]], dim=1)


def analyze_motion(
    windows: Sequence[Window],
    device: torch.device,
    *,
    max_lag_ms: float,
    rate_hz: float,
    faces: FaceFinder | None,
    mouths: Sequence[MouthBox | None] | None = None,
) -> list[MotionOutcome]:
    """Run the motion method on a batch of windows (one batched torch computation).

    Args:
        windows: Windows from any streams.
        device: Torch device.
        max_lag_ms: Largest lag searched, either sign.
        rate_hz: Common rate of both signals.
        faces: Face finder for mouth regions, or None to use whole frames.
        mouths: Per window, the mouth region from shared face tracks (overrides ``faces``;
            None: ask ``faces``).

    Returns:
        One outcome per window, in order.
    """
    if not windows:
        return []
    longest_s = max(w.duration_ns for w in windows) / NS_PER_S
    n_grid = max(4, int(longest_s * rate_hz))
    grid = torch.arange(n_grid, device=device, dtype=torch.float64)[None, :] / rate_hz
    durations = torch.tensor([w.duration_ns / NS_PER_S for w in windows], device=device)
    in_window = grid < durations[:, None].double()

    mid, energy, e_ok, regions = video_motion(windows, faces, device, mouths)
    vid, vid_ok = _resample(mid, energy, e_ok, grid)
    vid_ok &= in_window
    aud, aud_ok, loudest_rms = audio_onsets(windows, rate_hz, n_grid, device)
    aud_ok &= in_window
    count = e_ok.sum(dim=1).clamp_min(1)
    e_mean = (energy * e_ok).sum(dim=1) / count
    motion_std = torch.sqrt((((energy - e_mean[:, None]) * e_ok) ** 2).sum(dim=1) / count)

    # Zero-mean over the valid part, zero outside, so the FFT correlation sees only real data.
    def centre(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        mean = (x * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1)
        return torch.where(m, x - mean, torch.zeros_like(x))

    v = centre(vid, vid_ok)
    a = centre(aud, aud_ok)
    vm, am = vid_ok.double(), aud_ok.double()
    max_lag = max(2, math.floor(max_lag_ms * rate_hz / 1000))
    size = 1 << math.ceil(math.log2(n_grid + max_lag + 1))
    # r[lag] = sum_u v[u+lag] a[u]: large where audio at u matches video at u + lag (lag = lead).
    r = _xcorr(v, a, size, max_lag)
    e_v = _xcorr(v * v, am, size, max_lag)
    e_a = _xcorr(vm, a * a, size, max_lag)
    overlap = _xcorr(vm, am, size, max_lag)
    ncc = r / torch.sqrt((e_v * e_a).clamp_min(1e-18))
    lag_ok = overlap >= _MIN_OVERLAP * in_window.sum(dim=1, keepdim=True)
    ncc = torch.where(lag_ok, ncc, torch.full_like(ncc, -2.0))

    best = torch.argmax(ncc, dim=1)
    n_lags = ncc.shape[1]
    left = (best - 1).clamp(0, n_lags - 1)
    right = (best + 1).clamp(0, n_lags - 1)
    y0 = torch.gather(ncc, 1, best[:, None])[:, 0]
    ym = torch.gather(ncc, 1, left[:, None])[:, 0]
    yp = torch.gather(ncc, 1, right[:, None])[:, 0]
    interior = (best > 0) & (best < n_lags - 1) & (ym > -2) & (yp > -2)
    denom = ym - 2 * y0 + yp
    delta = torch.where(
        interior & (denom < 0), 0.5 * (ym - yp) / denom.clamp(max=-1e-12), torch.zeros_like(y0)
    ).clamp(-0.5, 0.5)
    lead_ms = (best.double() - max_lag + delta) * 1000.0 / rate_hz

    lags = torch.arange(n_lags, device=device)[None, :]
    far = (lags - best[:, None]).abs().double() * 1000.0 / rate_hz > _SIDELOBE_MS
    side = torch.where(far & lag_ok, ncc, torch.full_like(ncc, -1.0)).amax(dim=1)
    sharpness = ((y0 - side.clamp_min(0.0)) / y0.clamp_min(1e-9)).clamp(0.0, 1.0)
    # Height and sharpness both count: a flat or low correlation is not trusted.
    confidence = (y0 / 0.5).clamp(0.0, 1.0) * (sharpness / 0.5).clamp(0.0, 1.0)

    cpu = {
        "lead": lead_ms.cpu().numpy(),
        "ncc": y0.cpu().numpy(),
        "sharp": sharpness.cpu().numpy(),
        "conf": confidence.cpu().numpy(),
        "interior": interior.cpu().numpy(),
        "motion": motion_std.cpu().numpy(),
        "rms": loudest_rms.cpu().numpy(),
    }
    out: list[MotionOutcome] = []
    for b, w in enumerate(windows):
        reason = ""
        if len(w.video) < 3:
            reason = "too few video frames"
        elif w.audio_rate <= 0 or len(w.audio) == 0:
            reason = "no audio"
        elif not cpu["rms"][b] >= MIN_AUDIO_RMS:
            reason = "silent audio"
        elif not cpu["motion"][b] >= MIN_MOTION:
            reason = "no motion"
        elif cpu["ncc"][b] <= -2:
            reason = "too little overlap"
        peak = None
        if not reason:
            peak = MotionPeak(
                ncc=float(cpu["ncc"][b]), sharpness=float(cpu["sharp"][b]), region=regions[b]
            )
            if not cpu["interior"][b]:
                reason = "correlation peak at max_lag_ms"
        if reason:
            out.append(MotionOutcome(None, 0.0, peak, reason))
        else:
            out.append(MotionOutcome(float(cpu["lead"][b]), float(cpu["conf"][b]), peak, ""))
    return out
