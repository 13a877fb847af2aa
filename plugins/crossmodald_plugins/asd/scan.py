"""Lip-sync offset by scanning audio shifts through the audio-visual model.

For a face track, pair each video frame with audio shifted by ``k`` MFCC steps (10 ms each)
and ask the model how much the face is speaking *that* audio; the agreement between lips and
sound peaks at the true offset. ``k > 0`` pairs video frame ``t`` with earlier audio, i.e. tests
the hypothesis that the audio leads the video by ``10 k`` ms (``audio_lead_ms``, BT.1359 sign).

Cost: the audio encoder runs once per MFCC phase (4 runs over the whole window, not one per
shift): it is translation-equivariant in time up to its stride of 4 steps, so a shift by a
multiple of 4 is a slice of the same embedding. Only the GRU backend runs per shift, and all
shifts of all faces go through it in one batched call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import AUDIO_STEPS_PER_FRAME, LightASD

#: One MFCC step, in ms.
STEP_MS = 10


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """Which shifts to try and which video frames to score (the same for every shift)."""

    shifts: tuple[int, ...]  # MFCC steps (10 ms), audio lead positive
    first_frame: int
    n_frames: int

    @property
    def shifts_ms(self) -> list[int]:
        return [k * STEP_MS for k in self.shifts]


def plan_scan(n_video: int, n_mfcc: int, max_shift_ms: int, step_ms: int = 10) -> ScanPlan:
    """Shifts in [-max, +max] every ``step_ms``, and the central frames every shift can reach.

    Raises:
        ValueError: The window is too short for the scan range.
    """
    if step_ms % STEP_MS or step_ms <= 0:
        raise ValueError(f"scan step must be a positive multiple of {STEP_MS} ms, got {step_ms}")
    k_max = max_shift_ms // STEP_MS
    step = step_ms // STEP_MS
    shifts = tuple(range(-k_max - (-k_max) % step, k_max + 1, step))
    if 0 not in shifts:
        raise ValueError("scan range must include zero shift")
    margin = math.ceil(k_max / AUDIO_STEPS_PER_FRAME) + 1
    last = min(n_video, n_mfcc // AUDIO_STEPS_PER_FRAME)
    n_frames = last - 2 * margin
    if n_frames < 8:
        raise ValueError(
            f"window too short to scan +/-{max_shift_ms} ms: {n_video} frames, {n_mfcc} MFCC steps"
        )
    return ScanPlan(shifts=shifts, first_frame=margin, n_frames=n_frames)


def phase_embeddings(model: LightASD, mfcc: Tensor) -> list[Tensor]:
    """Audio embeddings of (B, F, 13) MFCCs at the 4 phases: ``out[p][:, j]`` covers MFCC steps
    ``[p + 4 j, p + 4 j + 4)``."""
    n = (mfcc.shape[1] - (AUDIO_STEPS_PER_FRAME - 1)) // AUDIO_STEPS_PER_FRAME
    return [
        model.audio_embed(mfcc[:, p : p + AUDIO_STEPS_PER_FRAME * n])
        for p in range(AUDIO_STEPS_PER_FRAME)
    ]


def shifted_audio(phases: list[Tensor], plan: ScanPlan) -> Tensor:
    """(B, S, n_frames, 128): audio embeddings paired with the plan's frames for each shift."""
    out = []
    for k in plan.shifts:
        p = (-k) % AUDIO_STEPS_PER_FRAME
        # MFCC start for frame t is 4 t - k = p + 4 j  =>  j = t - (k + p) / 4
        offset = (k + p) // AUDIO_STEPS_PER_FRAME
        j0 = plan.first_frame - offset
        out.append(phases[p][:, j0 : j0 + plan.n_frames])
    return torch.stack(out, dim=1)


def scan_logits(model: LightASD, mfcc: Tensor, visual: Tensor, plan: ScanPlan) -> Tensor:
    """Speaking logits for every shift: (B, S, n_frames).

    Args:
        model: The network.
        mfcc: (B, F, 13) MFCCs of each face's audio (the window's audio, per face).
        visual: (B, T, 128) visual embeddings of each face track.
        plan: From :func:`plan_scan`.
    """
    audio = shifted_audio(phase_embeddings(model, mfcc), plan)  # (B, S, N, 128)
    b, s, n, c = audio.shape
    vis = visual[:, plan.first_frame : plan.first_frame + n].unsqueeze(1).expand(b, s, n, c)
    logits = model.fuse(audio.reshape(b * s, n, c), vis.reshape(b * s, n, c))
    return logits.reshape(b, s, n)
