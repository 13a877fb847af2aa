"""Settings of a training run (no torch here: the CLI builds its parser from them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """What a run is (stored in the checkpoint; a resume must match it)."""

    epochs: int = 30
    batch: int = 64
    span: int = 24  # lip slots per training example
    max_lag: int = 15  # slots either side (31-way softmax)
    lr: float = 2e-3
    hidden: int = 128
    seed: int = 0
    steps_per_epoch: int = 0  # 0: one pass over the training slots
    jitter: float = 0.004  # landmark jitter, inter-ocular distances
    noise_prob: float = 0.5  # chance of mixing noise into an example's audio
    warp: float = 0.15  # frequency warp of the audio: factor exp(U(-warp, warp)) (0: none)
    aspect: float = 0.15  # lip width against height: x scaled by exp(U(-aspect, aspect)) (0: none)
    members: int = 3  # models trained one after another (seeds seed, seed + 1, ...), averaged
