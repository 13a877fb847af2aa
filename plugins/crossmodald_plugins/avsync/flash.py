"""The flash method: sub-frame flash onsets against sample-precise beep onsets, batched in torch.

The pattern it reads (see ``crossmodald.ingest.pattern``): frame i at ``t_i`` integrates the
light of ``[t_i, t_i + 1/fps)`` (360-degree shutter), so a flash that starts inside a frame lights
that frame by the fraction ``f`` of its exposure it covers. With per-frame mean brightness
normalised between the window's dark and flash levels, the first frame ``j`` of a rising edge
with ``f[j-1] < 0.5 <= f[j]`` gives the onset

    T = t_j + (1 - f[j]) * d - f[j-1] * d        (d = the exposure, one frame interval)

which covers both cases at once: the onset inside frame j (``f[j-1] ~ 0``) and the onset inside
frame j-1 (``f[j] ~ 1``). The beep is found on a coarse block-max envelope and refined on the raw
samples (first sample above a threshold relative to the burst's own peak, so AAC pre-echo below
it is ignored), then interpolated between samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
import torch

from crossmodald.media import NS_PER_S, Window
from crossmodald_plugins.avsync.batching import (
    compact,
    masked_max,
    masked_min,
    masked_nanmedian,
    pad_stack,
)
from crossmodald_plugins.avsync.result import FlashPair

#: Flash level minus dark level (Y levels of the frame mean) below which there is no flash.
MIN_CONTRAST_Y = 24.0
#: Above this share of frames caught between dark and flash levels the video is not a pattern.
MAX_TRANSITION_SHARE = 0.3
#: Audio peak over the median envelope below which there are no beeps.
MIN_BURST_RATIO = 8.0
#: Peak below this (about -60 dBFS) counts as silence.
SILENCE_PEAK = 1e-3
#: Coarse envelope: block max over _ENV_KERNEL samples every _ENV_STRIDE samples.
_ENV_KERNEL = 64
_ENV_STRIDE = 16
#: Coarse blocks before a crossing that must stay below the detection level (debounce), and
#: after it that give the burst's own peak.
_ENV_QUIET = 64
_ENV_PEAK = 64
#: Raw samples searched before the coarse crossing when refining.
_REFINE_BEFORE = 256
#: Refinement threshold: this fraction of the way from the noise floor to the burst peak.
_REFINE_FRACTION = 0.25
#: Pairing slack beyond max_lag_ms, so a true offset of exactly max_lag_ms still pairs.
PAIR_SLACK_S = 0.002


@dataclass(frozen=True, slots=True)
class FlashOutcome:
    """The flash method's findings for one window.

    Attributes:
        pattern_like: The window shows flashes and beeps (what ``method = "auto"`` checks).
        audio_lead_ms: Mean offset of the pairs, or None.
        confidence: 0..1.
        pairs: The matched pairs.
        reason: Why there is no estimate ("" when there is one).
    """

    pattern_like: bool
    audio_lead_ms: float | None
    confidence: float
    pairs: tuple[FlashPair, ...]
    reason: str


#: Thumbnails with fewer pixels than this sum exactly in uint32 (255 * 2**24 < 2**32).
_EXACT_U32_PIXELS = 2**24


def _frame_means(window: Window) -> npt.NDArray[np.float64]:
    """Mean brightness of each frame's thumbnail (cheap: one stack and one mean)."""
    if not window.video:
        return np.zeros(0, dtype=np.float64)
    shapes = {f.thumb.shape for f in window.video}
    if len(shapes) == 1:
        stack = np.stack([f.thumb for f in window.video])
        flat = stack.reshape(len(stack), -1)
        means: npt.NDArray[np.float64]
        if flat.dtype == np.uint8 and flat.shape[1] < _EXACT_U32_PIXELS:
            # An exact integer sum divided by the pixel count: the same float64 values as
            # ``mean(dtype=float64)`` (whose partial sums are exact integers too), ~3x faster.
            means = flat.sum(axis=1, dtype=np.uint32) / flat.shape[1]
        else:
            means = flat.mean(axis=1, dtype=np.float64)
        return means
    # A size change inside the window: rare, so a per-frame mean is fine here.
    return np.array([f.thumb.mean(dtype=np.float64) for f in window.video])


def _video_onsets(
    windows: Sequence[Window], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash onsets of every window.

    Returns:
        onset_s (B, K) seconds from window start, onset_ok (B, K), contrast (B,) in Y levels,
        flashy (B,) bool (bimodal brightness with enough contrast).
    """
    means = [_frame_means(w) for w in windows]
    times = [
        np.array([f.pts_ns - w.start_ns for f in w.video], dtype=np.float64) / NS_PER_S
        for w in windows
    ]
    nominal = torch.tensor(
        [1.0 / w.frame_rate if w.frame_rate else math.nan for w in windows],
        dtype=torch.float64,
        device=device,
    )
    m, ok = pad_stack(means, dtype=torch.float64, device=device, min_len=2)
    t, _ = pad_stack(times, dtype=torch.float64, device=device, min_len=2)

    hi = masked_max(m, ok)
    lowest = masked_min(m, ok)
    mid = (hi + lowest) / 2
    # Dark level: median of the frames below the middle (robust to noise); flash level: the max.
    lo = masked_nanmedian(m, ok & (m < mid[:, None]))
    lo = torch.where(torch.isnan(lo), lowest, lo)
    contrast = hi - lo
    frac = (m - lo[:, None]) / contrast.clamp_min(1e-9)[:, None]

    dt = t[:, 1:] - t[:, :-1]
    pair_ok = ok[:, 1:] & ok[:, :-1]
    exposure = masked_nanmedian(dt, pair_ok & (dt > 0))
    exposure = torch.where(torch.isnan(exposure), nominal, exposure)

    n_frames = ok.sum(dim=1)
    transition = ok & (frac > 0.1) & (frac < 0.9)
    share = transition.sum(dim=1) / n_frames.clamp_min(1)
    flashy = (contrast >= MIN_CONTRAST_Y) & (share <= MAX_TRANSITION_SHARE) & (n_frames >= 3)

    cols = torch.arange(m.shape[1], device=device).expand_as(m)
    dark = ok & (frac < 0.5)
    last_dark = torch.where(dark, cols, torch.full_like(cols, -1)).amax(dim=1)

    f_prev, f_cur = frac[:, :-1], frac[:, 1:]
    d = exposure[:, None]
    rising = (
        pair_ok
        & (f_prev < 0.5)
        & (f_cur >= 0.5)
        # Frames must be neighbours (a dropped frame hides where the onset was).
        & (dt < 1.5 * d)
        # At most one partial frame: a flash shorter than two frames is ambiguous.
        & ((f_cur > 0.9) | (f_prev < 0.1))
        # The flash must end inside the window so that its level is known.
        & (cols[:, 1:] < last_dark[:, None])
        & (contrast >= MIN_CONTRAST_Y)[:, None]
    )
    onset = t[:, 1:] + (1.0 - f_cur) * d - f_prev * d
    onset_ok, (onset_s,) = compact(rising, onset)
    return onset_s, onset_ok, contrast, flashy


def _block_max(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max of each run of ``stride`` columns of (B, N): (B, N // stride); ``stride`` a power of 2.

    Pairwise halving costs ~N compares per row, where ``max_pool1d(x, k, stride)`` costs
    ``k * N / stride`` (4x more for the envelope); max is exact, so the values are identical
    (NaN propagates either way).
    """
    x = x[:, : x.shape[1] // stride * stride]
    while stride > 1:
        x = torch.maximum(x[:, 0::2], x[:, 1::2])
        stride //= 2
    return x


def _sliding_max(x: torch.Tensor, k: int) -> torch.Tensor:
    """Max over every ``k`` consecutive columns of (B, L): (B, L - k + 1), like stride-1 pooling.

    By doubling (a width-2w max is two overlapping width-w maxes): log2(k) compares per cell
    instead of k, with exactly the same values.
    """
    width = 1
    while 2 * width <= k:
        x = torch.maximum(x[:, :-width], x[:, width:])
        width *= 2
    if width < k:
        rest = k - width  # <= width: two overlapping windows of `width` cover `k`
        x = torch.maximum(x[:, : x.shape[1] - rest], x[:, rest:])
    return x


def _envelope(values: torch.Tensor) -> torch.Tensor:
    """Block-max envelope: the max over _ENV_KERNEL samples every _ENV_STRIDE samples.

    Same values as ``max_pool1d(values, _ENV_KERNEL, _ENV_STRIDE)`` (the kernel is a whole number
    of strides): the max of each stride-long block, then a sliding max over kernel/stride blocks.
    """
    blocks = _block_max(values, _ENV_STRIDE)
    n_env = (values.shape[1] - _ENV_KERNEL) // _ENV_STRIDE + 1
    return _sliding_max(blocks, _ENV_KERNEL // _ENV_STRIDE)[:, :n_env]


@dataclass(frozen=True, slots=True)
class AudioOnsets:
    """The beep (transient) onsets of a batch of windows, with the samples they were found in.

    Computed once per batch by :func:`audio_onsets`; the flash method pairs the onsets with
    flashes and the clap method (``method = "auto"`` hands it the rows flash found no pattern
    in) checks the one dominant onset and its decay on the same samples.

    Attributes:
        onset_s: (B, K) onsets in seconds from window start.
        onset_ok: (B, K) bool, True where ``onset_s`` holds an onset.
        snr: (B,) burst peak over the noise floor (the median envelope).
        peak: (B,) the loudest envelope block.
        magnitude: (B, N) float32 ``|sample|``, 0 where a sample is padding or undelivered.
        valid: (B, N) bool, True where a sample was delivered.
        rates_hz: (B,) float64 sample rates (at least 1).
    """

    onset_s: torch.Tensor
    onset_ok: torch.Tensor
    snr: torch.Tensor
    peak: torch.Tensor
    magnitude: torch.Tensor
    valid: torch.Tensor
    rates_hz: torch.Tensor

    def __len__(self) -> int:
        return int(self.snr.shape[0])

    def rows(self, index: Sequence[int]) -> AudioOnsets:
        """The analysis of the windows at ``index``, in that order (``self`` when that is all)."""
        if list(index) == list(range(len(self))):
            return self
        at = torch.tensor(list(index), dtype=torch.long, device=self.snr.device)
        return AudioOnsets(*(getattr(self, f.name).index_select(0, at) for f in fields(self)))


def audio_onsets(windows: Sequence[Window], device: torch.device) -> AudioOnsets:
    """Beep onsets of every window (one batched computation; see :class:`AudioOnsets`)."""
    audio, delivered = pad_stack(
        [w.audio for w in windows], dtype=torch.float32, device=device, min_len=_ENV_KERNEL
    )
    valid, _ = pad_stack(
        [w.audio_valid for w in windows], dtype=torch.bool, device=device, min_len=_ENV_KERNEL
    )
    # A flag past the end of a window's audio flags no sample.
    valid &= delivered
    rates = torch.tensor(
        [max(w.audio_rate, 1) for w in windows], dtype=torch.float64, device=device
    )
    # Usually every sample of every window was delivered (and no row is padded): then the
    # validity masks are all True and need no arithmetic (checked on the host arrays, cheaply).
    all_valid = all(
        len(w.audio) == audio.shape[1]
        and len(w.audio_valid) == len(w.audio)
        and w.audio_valid.all()
        for w in windows
    )
    mag = audio.abs() if all_valid else audio.abs() * valid
    env = _envelope(mag)
    if all_valid:
        env_ok = torch.ones_like(env, dtype=torch.bool)
    else:
        env_ok = _envelope((~valid).float()) < 0.5

    peak = masked_max(env, env_ok).clamp_min(0.0)
    noise = masked_nanmedian(env, env_ok).nan_to_num(0.0)
    level = noise + 0.5 * (peak - noise)

    # Highest block among the _ENV_QUIET before each block, and among the _ENV_PEAK from it on.
    neg = torch.full_like(env[:, :1], float("-inf"))
    # +inf before the window: a burst already sounding at the window start has no onset here.
    pos_inf = torch.full_like(env[:, :1], float("inf"))
    padded_before = torch.cat([pos_inf.expand(-1, _ENV_QUIET), env], dim=1)
    before = _sliding_max(padded_before, _ENV_QUIET)[:, : env.shape[1]]
    padded_after = torch.cat([env, neg.expand(-1, _ENV_PEAK - 1)], dim=1)
    after = _sliding_max(padded_after, _ENV_PEAK)
    crossing = (
        env_ok
        & (env >= level[:, None])
        & (before < level[:, None])
        & (peak > SILENCE_PEAK)[:, None]
    )
    if not all_valid:
        # No undelivered block among the _ENV_QUIET before a crossing either.
        invalid_before = _sliding_max(
            torch.cat([torch.zeros_like(env[:, :1]).expand(-1, _ENV_QUIET), (~env_ok).float()], 1),
            _ENV_QUIET,
        )[:, : env.shape[1]]
        crossing &= invalid_before < 0.5
    cols = torch.arange(env.shape[1], device=device).expand_as(env)
    kept, (block, burst_peak) = compact(crossing, cols, after)

    # Refine on raw samples: first sample above the threshold near each coarse crossing.
    width = _REFINE_BEFORE + _ENV_KERNEL
    first = block * _ENV_STRIDE - _REFINE_BEFORE
    idx = first[..., None] + torch.arange(width, device=device)
    in_range = (idx >= 1) & (idx < mag.shape[1])
    idx_c = idx.clamp(1, mag.shape[1] - 1)
    flat = idx_c.reshape(idx_c.shape[0], -1)
    cur = torch.gather(mag, 1, flat).reshape(idx_c.shape)
    prev = torch.gather(mag, 1, flat - 1).reshape(idx_c.shape)
    region_valid = torch.gather(valid, 1, flat).reshape(idx_c.shape) & in_range
    thr = (noise[:, None] + _REFINE_FRACTION * (burst_peak - noise[:, None]))[..., None]
    above = (cur >= thr) & region_valid
    has = above.any(dim=-1)
    pos = torch.argmax(above.to(torch.int8), dim=-1)
    c = torch.gather(cur, 2, pos[..., None])[..., 0].double()
    p = torch.gather(prev, 2, pos[..., None])[..., 0].double()
    p = torch.where(p < thr[..., 0].double(), p, torch.zeros_like(p))
    # Sub-sample: where |x| crossed the threshold between the previous sample and this one.
    frac = ((thr[..., 0].double() - p) / (c - p).clamp_min(1e-12)).clamp(0.0, 1.0)
    sample = torch.gather(idx_c, 2, pos[..., None])[..., 0].double() - 1.0 + frac
    onset_s = sample / rates[:, None]
    onset_ok = kept & has
    snr = peak / noise.clamp_min(1e-9)
    return AudioOnsets(onset_s, onset_ok, snr, peak, mag, valid, rates)


def analyze_flash(
    windows: Sequence[Window],
    device: torch.device,
    max_lag_ms: float,
    onsets: AudioOnsets | None = None,
) -> list[FlashOutcome]:
    """Run the flash method on a batch of windows (one batched torch computation).

    Args:
        windows: Windows from any streams.
        device: Torch device to compute on.
        max_lag_ms: Pair a beep only with a flash within this many ms.
        onsets: ``audio_onsets(windows, device)`` when the caller already has it (computed
            here otherwise).

    Returns:
        One outcome per window, in order.
    """
    if not windows:
        return []
    if onsets is None:
        onsets = audio_onsets(windows, device)
    v_on, v_ok, contrast, flashy = _video_onsets(windows, device)
    a_on, a_ok, snr, peak = onsets.onset_s, onsets.onset_ok, onsets.snr, onsets.peak

    lead_s = v_on[:, None, :] - a_on[:, :, None]  # (B, audio K, video K)
    near = (lead_s.abs() <= max_lag_ms / 1000 + PAIR_SLACK_S) & a_ok[:, :, None] & v_ok[:, None, :]
    per_audio = near.sum(dim=2, keepdim=True)
    per_video = near.sum(dim=1, keepdim=True)
    paired = near & (per_audio == 1) & (per_video == 1)
    ambiguous = (near & ((per_audio > 1) | (per_video > 1))).any(dim=(1, 2))
    n_pairs = paired.sum(dim=(1, 2))
    lead_ms = lead_s * 1000.0
    mean_ms = torch.where(paired, lead_ms, torch.zeros_like(lead_ms)).sum(
        dim=(1, 2)
    ) / n_pairs.clamp(min=1)
    spread_ms = torch.where(paired, lead_ms, torch.full_like(lead_ms, -math.inf)).amax(
        dim=(1, 2)
    ) - torch.where(paired, lead_ms, torch.full_like(lead_ms, math.inf)).amin(dim=(1, 2))
    spread_ms = torch.where(n_pairs > 0, spread_ms, torch.zeros_like(spread_ms))

    # Confidence: more pairs, tighter agreement, stronger flash and beep all raise it.
    pairs_score = 1.0 - 0.3 ** n_pairs.double()
    agreement = 1.0 / (1.0 + (spread_ms / 5.0) ** 2)
    contrast_score = (contrast / 100.0).clamp(0.0, 1.0)
    snr_score = (torch.log10(snr.clamp_min(1.0)) / 2.0).clamp(0.0, 1.0)
    confidence = pairs_score * agreement * contrast_score * snr_score

    bursty = (snr >= MIN_BURST_RATIO) & (peak > SILENCE_PEAK)
    pattern_like = flashy & bursty & a_ok.any(dim=1)

    cpu = {
        "paired": paired.cpu().numpy(),
        "v_on": v_on.cpu().numpy(),
        "a_on": a_on.cpu().numpy(),
        "lead_ms": lead_ms.cpu().numpy(),
        "mean_ms": mean_ms.cpu().numpy(),
        "confidence": confidence.cpu().numpy(),
        "pattern_like": pattern_like.cpu().numpy(),
        "n_pairs": n_pairs.cpu().numpy(),
        "ambiguous": ambiguous.cpu().numpy(),
        "v_any": v_ok.any(dim=1).cpu().numpy(),
        "a_any": a_ok.any(dim=1).cpu().numpy(),
        "silent": (peak <= SILENCE_PEAK).cpu().numpy(),
        "flashy": flashy.cpu().numpy(),
    }
    out: list[FlashOutcome] = []
    for b, w in enumerate(windows):
        pairs = tuple(
            FlashPair(
                video_onset_ns=w.start_ns + round(float(cpu["v_on"][b, vi]) * NS_PER_S),
                audio_onset_ns=w.start_ns + round(float(cpu["a_on"][b, ai]) * NS_PER_S),
                audio_lead_ms=float(cpu["lead_ms"][b, ai, vi]),
            )
            for ai, vi in zip(*np.nonzero(cpu["paired"][b]), strict=True)
        )
        reason = ""
        if not pairs:
            reason = _no_pair_reason(w, {k: bool(v[b]) for k, v in cpu.items() if v.ndim == 1})
        out.append(
            FlashOutcome(
                pattern_like=bool(cpu["pattern_like"][b]),
                audio_lead_ms=float(cpu["mean_ms"][b]) if pairs else None,
                confidence=float(cpu["confidence"][b]) if pairs else 0.0,
                pairs=pairs,
                reason=reason,
            )
        )
    return out


def _no_pair_reason(window: Window, flags: dict[str, bool]) -> str:
    if not window.video:
        return "no video frames"
    if window.audio_rate <= 0 or len(window.audio) == 0:
        return "no audio"
    if flags["silent"]:
        return "silent audio"
    if not flags["v_any"]:
        return "no flash onset"
    if not flags["a_any"]:
        return "no beep onset"
    if flags["ambiguous"]:
        return "ambiguous flash/beep pairs"
    return "no flash/beep pair within max_lag_ms"
