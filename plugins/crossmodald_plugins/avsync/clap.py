"""The clap method: the moment two hands meet against the clap's sample-precise sound onset.

Motion energy alone (the motion method) peaks while the hands approach and again while they
retreat, never at contact, so correlating it with the audio onset envelope misses a clap by a
few hundred ms. This method instead looks for the moment the approaching motion *stops*:

* audio: the onset of the window's one dominant transient, found by the flash method's beep
  onset code (sample-precise, interpolated between samples); it must stand well above the
  window's median envelope and decay quickly (a clap, not a vowel or a chord);
* video: the frame-difference energy ``e`` of successive frames (the motion method's, whole
  frame) minus its median (background motion and sensor noise), as a function of the pair.
  A clap's approach is a run of high energy that ends abruptly when the hands meet.

Contact time model. Frame ``k`` integrates the scene over ``[t_k, t_k + d)`` (360-degree
shutter, as the flash method and the pattern source assume), so a hand moving at speed ``v``
until it stops at ``T`` puts the frame's mean position ``p_k`` on the line ``v (t_k + d/2)``
while it moves, and at ``v T`` once stopped; the frames exposed across ``T`` fall in between
and spread the last displacement over two frame pairs. Summing the energy of the pairs after
the last full-speed pair ``j`` (frames ``j-1, j``) therefore gives the remaining distance, and

    T = (t_j + d/2) + d_j * (e[j+1] + e[j+2] + e[j+3]) / e[j]

is exact for a constant approach speed whichever sub-frame phase the contact has (``d_j`` is
the interval of pair ``j``). Hands speed up into a clap, so the speed's trend over the last two
full pairs is carried on (constant acceleration; never a slowdown) when converting the
remaining distance into time. ``e`` is proportional to displacement while it stays below the
hands' size, which holds for claps filmed at 25 fps and above.

A stop is accepted where the pair three after a high-motion pair is still (below a fifth of
it), the high-motion pair is not much slower than the one before it (a hand easing to rest, as
at the end of the retreat, is no clap) and the run before it is at least two pairs long (a
flash switching off is no clap). The strongest such stop within ``max_lag_ms`` of the sound
onset is the contact; competing stops there lower the confidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from crossmodald.media import NS_PER_S, Window
from crossmodald_plugins.avsync.batching import masked_max, masked_nanmedian
from crossmodald_plugins.avsync.flash import PAIR_SLACK_S, SILENCE_PEAK, AudioOnsets, audio_onsets
from crossmodald_plugins.avsync.motion import video_motion as motion_energy

#: Audio peak over the median envelope below which there is no clap (a dominant transient).
MIN_CLAP_RATIO = 10.0
#: The tail after the onset, in seconds, whose envelope must have decayed.
DECAY_FROM_S = 0.15
DECAY_TO_S = 0.25
#: Largest tail level, as a share of the way from the noise floor to the peak.
MAX_TAIL_SHARE = 0.3
#: Frame-difference energy (grey levels above the median) below which no hand moves.
MIN_CLAP_MOTION = 0.3
#: The high-motion pair must reach this share of the window's strongest motion.
_RUN_SHARE = 0.5
#: Still after the stop: the pair three after the high-motion pair, relative to it.
_STILL_SHARE = 0.2
#: The high-motion pair over the pair before it (not decelerating), and that pair's least share.
_NOT_SLOWING = 0.75
_RUN_BEFORE = 0.5
#: Pair spacing that counts as regular (relative to the typical one): dropped frames hide motion.
_SPACING_TOLERANCE = 0.25


@dataclass(frozen=True, slots=True)
class ClapOutcome:
    """The clap method's findings for one window.

    Attributes:
        clap_like: One dominant impulsive sound and a visual stop near it (what ``auto`` checks).
        audio_lead_ms: ``contact - sound onset`` in ms (positive = audio ahead), or None.
        confidence: 0..1.
        contact_ns: Media time the hands met, or None.
        audio_onset_ns: Media time of the clap's sound onset, or None.
        reason: Why there is no estimate ("" when there is one).
    """

    clap_like: bool
    audio_lead_ms: float | None
    confidence: float
    contact_ns: int | None
    audio_onset_ns: int | None
    reason: str


def _audio_clap(
    windows: Sequence[Window], onsets: AudioOnsets
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dominant transient of every window, from the flash method's onsets of its audio.

    Returns:
        onset_s (B,) seconds from window start (of the first onset), count (B,) onsets above
        half the peak, snr (B,) peak over median envelope, peak (B,), and decayed (B,): the
        tail has died down (False when it reaches past the window end).
    """
    snr, peak, rates = onsets.snr, onsets.peak, onsets.rates_hz
    magnitude, valid = onsets.magnitude, onsets.valid
    count = onsets.onset_ok.sum(dim=1)
    first = torch.argmax(onsets.onset_ok.to(torch.int8), dim=1)
    onset = torch.gather(onsets.onset_s, 1, first[:, None])[:, 0]

    # Tail [onset + DECAY_FROM_S, onset + DECAY_TO_S) on each row's own sample grid.
    start = torch.ceil((onset + DECAY_FROM_S) * rates).long()
    stop = torch.ceil((onset + DECAY_TO_S) * rates).long()
    span = max(1, math.ceil(max(w.audio_rate for w in windows) * (DECAY_TO_S - DECAY_FROM_S)))
    idx = start[:, None] + torch.arange(span + 1, device=magnitude.device)
    inside = (idx < stop[:, None]) & (idx < magnitude.shape[1])
    idx_c = idx.clamp(0, magnitude.shape[1] - 1)
    tail_ok = torch.gather(valid, 1, idx_c) & inside
    tail = masked_max(torch.gather(magnitude, 1, idx_c), tail_ok)
    noise = peak / snr.clamp_min(1e-9)
    # The whole tail must lie inside the window: a clap cut off by the window end is not judged.
    complete = tail_ok.sum(dim=1) >= (stop - start).clamp_min(1)
    decayed = complete & (tail - noise <= MAX_TAIL_SHARE * (peak - noise))
    return onset, count, snr, peak, decayed


def _contacts(
    windows: Sequence[Window], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every visual stop (candidate contact) of every window.

    Returns:
        contact_s (B, P) seconds from window start, ok (B, P), strength (B, P) the motion of the
        high-motion pair above the median, sharpness (B, P) 0..1, all per high-motion pair.
    """
    mid, energy, ok, _ = motion_energy(windows, None, device)
    floor = masked_nanmedian(energy, ok).nan_to_num(0.0)
    e = torch.where(ok, (energy - floor[:, None]).clamp_min(0.0), torch.zeros_like(energy))
    strongest = masked_max(e, ok).clamp_min(0.0)

    n = e.shape[1]

    def shift(x: torch.Tensor, by: int, fill: float | bool) -> torch.Tensor:
        # x[:, j + by] at column j (fill where it falls outside).
        out = torch.full_like(x, fill)
        if by >= 0 and by < n:
            out[:, : n - by] = x[:, by:]
        elif by < 0 and -by < n:
            out[:, -by:] = x[:, : n + by]
        return out

    gaps = mid[:, 1:] - mid[:, :-1]
    gap_ok = ok[:, 1:] & ok[:, :-1]
    typical = masked_nanmedian(gaps, gap_ok)
    regular_gap = gap_ok & (
        (gaps - typical[:, None]).abs() <= _SPACING_TOLERANCE * typical[:, None]
    )
    # regular[:, j]: pairs j and j+1 are neighbours at the typical spacing.
    regular = torch.cat([regular_gap, torch.zeros_like(regular_gap[:, :1])], dim=1)

    prev, e1, e2, e3 = shift(e, -1, 0.0), shift(e, 1, 0.0), shift(e, 2, 0.0), shift(e, 3, 0.0)
    spacing_ok = shift(regular, -1, False) & regular & shift(regular, 1, False)
    spacing_ok &= shift(regular, 2, False)
    stop = (
        ok
        & shift(ok, 3, False)
        & spacing_ok
        & (e >= MIN_CLAP_MOTION)
        & (e >= _RUN_SHARE * strongest[:, None])
        & (e >= _NOT_SLOWING * prev)
        & (prev >= _RUN_BEFORE * e)
        & (e3 < _STILL_SHARE * e)
    )
    # The first stop of a run: the next high-motion pair would see the same still pair.
    stop &= ~shift(stop, -1, False)
    # Pair j joins frames j and j+1 here, so the model's (t + d/2) of the frame ending the
    # high-motion pair is the midpoint of pair j+1, and the spacing of the two is one interval.
    mid1 = shift(mid, 1, 0.0)
    interval = mid1 - mid
    # Hands speed up until they meet: carry the speed's trend over the last two pairs on to
    # the contact (constant acceleration, never extrapolating a slowdown) and solve
    # remaining = v0 t + accel t^2 / 2 for the time t the remaining distance takes.
    remaining = e1 + e2 + e3
    # In units of one frame interval: speed e per interval, acceleration per interval squared.
    accel = (e - prev).clamp_min(0.0)
    v0 = e + accel / 2
    # The positive root, written so that it stays exact (remaining / v0) at zero acceleration.
    root = torch.sqrt(v0**2 + 2 * accel * remaining)
    contact = mid1 + interval * 2 * remaining / (v0 + root).clamp_min(1e-9)
    sharp = (1.0 - e3 / e.clamp_min(1e-9)).clamp(0.0, 1.0)
    return torch.where(stop, contact, torch.zeros_like(contact)), stop, e, sharp


def analyze_clap(
    windows: Sequence[Window],
    device: torch.device,
    max_lag_ms: float,
    onsets: AudioOnsets | None = None,
) -> list[ClapOutcome]:
    """Run the clap method on a batch of windows (one batched torch computation).

    Args:
        windows: Windows from any streams.
        device: Torch device.
        max_lag_ms: Pair the sound only with a contact within this many ms.
        onsets: ``audio_onsets(windows, device)`` when the caller already has it (the flash
            method's, for ``method = "auto"``); computed here otherwise.

    Returns:
        One outcome per window, in order.
    """
    if not windows:
        return []
    if onsets is None:
        onsets = audio_onsets(windows, device)
    onset, count, snr, peak, decayed = _audio_clap(windows, onsets)
    impulsive = (count == 1) & (snr >= MIN_CLAP_RATIO) & (peak > SILENCE_PEAK) & decayed
    # Only windows with a clap-like sound are worth the picture analysis (most are not).
    rows = torch.nonzero(impulsive).flatten().cpu().tolist()
    n_near = torch.zeros_like(count)
    any_stop = torch.zeros_like(impulsive)
    lead_ms = torch.zeros_like(onset)
    contact_s = torch.zeros_like(onset)
    confidence = torch.zeros_like(onset)
    if rows:
        picked = torch.tensor(rows, device=device)
        contact, stop, strength, sharp = _contacts([windows[r] for r in rows], device)
        lead_s = contact - onset[picked, None]
        near = stop & (lead_s.abs() <= max_lag_ms / 1000 + PAIR_SLACK_S)
        n_near[picked] = near.sum(dim=1)
        any_stop[picked] = stop.any(dim=1)
        best = torch.argmax(torch.where(near, strength, torch.full_like(strength, -1.0)), dim=1)
        pick = best[:, None]
        lead_ms[picked] = torch.gather(lead_s, 1, pick)[:, 0] * 1000.0
        contact_s[picked] = torch.gather(contact, 1, pick)[:, 0]
        best_strength = torch.gather(strength, 1, pick)[:, 0]
        best_sharp = torch.gather(sharp, 1, pick)[:, 0]
        # Confidence: a loud clean sound, a strong abrupt stop, and no competing stop nearby.
        snr_score = (torch.log10(snr[picked].clamp_min(1.0)) / 2.0).clamp(0.0, 1.0)
        motion_score = (best_strength / (4.0 * MIN_CLAP_MOTION)).clamp(0.0, 1.0)
        confidence[picked] = (
            snr_score * best_sharp * motion_score / n_near[picked].clamp_min(1)
        ).to(confidence.dtype)
    found = impulsive & (n_near >= 1)

    cpu = {
        "lead_ms": lead_ms.cpu().numpy(),
        "contact": contact_s.cpu().numpy(),
        "onset": onset.cpu().numpy(),
        "confidence": confidence.cpu().numpy(),
        "found": found.cpu().numpy(),
        "count": count.cpu().numpy(),
        "snr": snr.cpu().numpy(),
        "peak": peak.cpu().numpy(),
        "decayed": decayed.cpu().numpy(),
        "any_stop": any_stop.cpu().numpy(),
    }
    out: list[ClapOutcome] = []
    for b, w in enumerate(windows):
        if cpu["found"][b]:
            out.append(
                ClapOutcome(
                    clap_like=True,
                    audio_lead_ms=float(cpu["lead_ms"][b]),
                    confidence=float(cpu["confidence"][b]),
                    contact_ns=w.start_ns + round(float(cpu["contact"][b]) * NS_PER_S),
                    audio_onset_ns=w.start_ns + round(float(cpu["onset"][b]) * NS_PER_S),
                    reason="",
                )
            )
            continue
        out.append(ClapOutcome(False, None, 0.0, None, None, _no_clap_reason(w, cpu, b)))
    return out


def _no_clap_reason(window: Window, cpu: Mapping[str, npt.NDArray[np.generic]], b: int) -> str:
    def at(key: str) -> float:
        return float(cpu[key][b])

    if len(window.video) < 6:
        return "too few video frames"
    if window.audio_rate <= 0 or len(window.audio) == 0:
        return "no audio"
    if at("peak") <= SILENCE_PEAK:
        return "silent audio"
    if at("count") == 0 or at("snr") < MIN_CLAP_RATIO:
        return "no clap sound"
    if at("count") > 1:
        return "several loud sounds"
    if not at("decayed"):
        return "sound not impulsive (or cut off by the window end)"
    if not at("any_stop"):
        return "no hands meeting"
    return "no hands meeting within max_lag_ms of the clap sound"
