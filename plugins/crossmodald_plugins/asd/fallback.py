"""Weight-free active speaker and lip-sync: mouth motion against the speech envelope.

Used when no Light-ASD weights are configured (or they fail to load and the config says to fall
back). Two cheap signals per face track, both on the 25 fps slot grid of a window:

* mouth motion: mean absolute difference of the (32 x 16, area-averaged) mouth region between
  consecutive slots;
* the audio's change signal: absolute frame-to-frame change of the log energy (the MFCC's first
  coefficient), on the 10 ms grid.

Speaking score: the normalised correlation of the two over the window (at zero lag), gated by
speech being present, squashed to (0, 1). Lip-sync: the lag of the peak of their normalised
cross-correlation over the scan range (positive: audio leads).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from crossmodald.media import U8Image

F32 = npt.NDArray[np.float32]

MOUTH_SIZE = (32, 16)  # (width, height) of the compared mouth patch
#: Log-energy (of int16-scaled audio, 10 ms frames) below which a frame counts as silence.
SILENCE_LOG_ENERGY = 12.0


def mouth_motion(
    lumas: Sequence[U8Image], mouths: Sequence[tuple[float, float, float, float]]
) -> F32:
    """Mouth motion per slot (first slot 0): mean |difference| of consecutive mouth patches.

    Args:
        lumas: Grey picture per slot.
        mouths: Mouth box ``(x, y, w, h)`` per slot, in pixels of the picture.
    """
    patches = np.stack([_patch(luma, box) for luma, box in zip(lumas, mouths, strict=True)])
    diffs = np.abs(np.diff(patches, axis=0)).mean(axis=(1, 2))
    return np.concatenate([[0.0], diffs]).astype(np.float32)


def _patch(luma: U8Image, box: tuple[float, float, float, float]) -> F32:
    x, y, w, h = box
    height, width = luma.shape
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(width, max(x0 + 1, int(x + w))), min(height, max(y0 + 1, int(y + h)))
    region = luma[y0:y1, x0:x1]
    if region.size == 0:
        return np.zeros((MOUTH_SIZE[1], MOUTH_SIZE[0]), np.float32)
    out = cv2.resize(region, MOUTH_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    return np.asarray(out, dtype=np.float32)


def energy_change(log_energy: F32) -> F32:
    """|frame-to-frame change| of the 10 ms log energy (first value 0)."""
    return np.concatenate([[0.0], np.abs(np.diff(log_energy))]).astype(np.float32)


def _z(x: F32) -> F32:
    std = float(x.std())
    return ((x - x.mean()) / std).astype(np.float32) if std > 1e-9 else np.zeros_like(x)


def speaking_scores(motion: F32, log_energy: F32, steps_per_slot: int = 4) -> F32:
    """Per-slot speaking score in (0, 1) for one face.

    The correlation of the face's mouth motion with the audio's change signal over the window
    says whether this mouth goes with this voice; frames without speech score low regardless.
    """
    n = len(motion)
    change = energy_change(log_energy)[: n * steps_per_slot]
    change = np.pad(change, (0, n * steps_per_slot - len(change)), mode="edge")
    per_slot = change.reshape(n, steps_per_slot).mean(axis=1)
    corr = float((_z(motion) * _z(per_slot)).mean())
    energy = np.pad(log_energy, (0, max(0, n * steps_per_slot - len(log_energy))), mode="edge")
    speech = (
        energy[: n * steps_per_slot].reshape(n, steps_per_slot).max(axis=1) > SILENCE_LOG_ENERGY
    )
    moving = _z(motion) > -0.5
    logit = 12.0 * corr - 1.0
    score = 1.0 / (1.0 + np.exp(-logit))
    out: F32 = np.where(speech & moving, score, score * 0.2).astype(np.float32)
    return out


def scan_offset(
    motion: F32, log_energy: F32, max_shift_ms: int, steps_per_slot: int = 4
) -> tuple[int, float]:
    """Lag (ms, audio lead positive) of peak mouth-motion / energy-change correlation, and the
    peak's normalised correlation (0..1)."""
    motion10 = np.repeat(motion, steps_per_slot)
    change = energy_change(log_energy)
    n = min(len(motion10), len(change))
    k_max = max_shift_ms // 10
    if n - 2 * k_max < 40:
        raise ValueError(f"window too short to scan +/-{max_shift_ms} ms")
    video = _z(motion10[k_max : n - k_max])
    best_k, best = 0, -np.inf
    for k in range(-k_max, k_max + 1):
        audio = _z(change[k_max - k : n - k_max - k])
        score = float((video * audio).mean())
        if score > best:
            best_k, best = k, score
    return best_k * 10, max(0.0, min(1.0, best))
