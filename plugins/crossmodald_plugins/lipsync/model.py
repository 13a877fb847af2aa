"""SyncNet-style lip-sync model on lip landmarks and log-mel, and its lag scan.

Two fully convolutional 1-D encoders turn a span of lip features (one row per 40 ms slot) and
its log-mel (four rows per slot) into one 64-d unit embedding per slot, each seeing about five
slots around it. How well slot ``t``'s lips match the sound ``k`` slots earlier is the cosine
of ``lips[t]`` and ``audio[t - k]``: the audio leads the picture by ``k`` slots where that peaks
(``audio_lead_ms`` positive = audio ahead, ITU-R BT.1359).

Training (:mod:`.train`) pairs every slot with the audio at 31 lags (-15..+15 slots) and asks a
31-way softmax over the cosines for lag 0: the negatives are the same clip's own audio, shifted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .features import N_MELS, STEP_MS, STEPS_PER_SLOT
from .landmarks import FEATURE_DIM

ARCH = "lipsync-landmarks-v1"
EMBED = 64


class SyncNet(nn.Module):
    """Lip and audio encoders (see the module docstring)."""

    def __init__(self, hidden: int = 128, embed: int = EMBED) -> None:
        super().__init__()
        self.hidden = hidden
        self.embed = embed
        self.lips = nn.Sequential(
            nn.Conv1d(FEATURE_DIM, hidden, 3, padding=1),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Conv1d(hidden, embed, 1),
        )
        self.audio = nn.Sequential(
            nn.Conv1d(N_MELS, hidden, 5, padding=2),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            # Four 10 ms steps -> one 40 ms slot.
            nn.Conv1d(hidden, hidden, STEPS_PER_SLOT, stride=STEPS_PER_SLOT),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Conv1d(hidden, embed, 1),
        )
        #: Softmax temperature of the cosines (learned, as in CLIP).
        self.log_scale = nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))

    def embed_lips(self, lips: Tensor) -> Tensor:
        """(B, T, 160) -> (B, T, E) unit vectors."""
        out = self.lips(lips.transpose(1, 2)).transpose(1, 2)
        return nn.functional.normalize(out, dim=-1)

    def embed_audio(self, mel: Tensor) -> Tensor:
        """(B, 4 T, 40) -> (B, T, E) unit vectors (slot ``j`` from steps ``4 j .. 4 j + 3``)."""
        out = self.audio(mel.transpose(1, 2)).transpose(1, 2)
        return nn.functional.normalize(out, dim=-1)

    def lag_logits(self, lips: Tensor, mel: Tensor, max_lag: int) -> Tensor:
        """Training scores: lips of ``T`` slots against audio of ``T + 2 max_lag`` slots.

        Args:
            lips: (B, T, 160).
            mel: (B, 4 (T + 2 max_lag), 40), starting ``max_lag`` slots before the lips.

        Returns:
            (B, T, 2 max_lag + 1) scaled cosines; index ``max_lag + k`` pairs lips ``t`` with
            audio ``t - k`` (lag ``k``; the true pairing is index ``max_lag``).
        """
        v = self.embed_lips(lips)
        a = self.embed_audio(mel)
        t = v.shape[1]
        cols = [a[:, max_lag - k : max_lag - k + t] for k in range(-max_lag, max_lag + 1)]
        stacked = torch.stack(cols, dim=2)  # (B, T, L, E)
        cos = (stacked * v.unsqueeze(2)).sum(-1)
        return cos * self.log_scale.exp()


class SyncEnsemble(nn.Module):
    """Several trained models as one: its cosine at every slot and lag is the mean of theirs.

    Each member's embeddings are unit vectors; their concatenation divided by the square root
    of the number of members is a unit vector too, whose dot product with another such vector
    is the members' mean cosine. So :func:`scan` and everything after it take an ensemble as
    they take one model (``crossmodald train lipsync --members K`` trains one).
    """

    def __init__(self, members: Sequence[SyncNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self._scale = 1.0 / math.sqrt(len(members))

    def embed_lips(self, lips: Tensor) -> Tensor:
        """(B, T, 160) -> (B, T, members x E) unit vectors."""
        return torch.cat([m.embed_lips(lips) for m in self._each()], dim=-1) * self._scale

    def embed_audio(self, mel: Tensor) -> Tensor:
        """(B, 4 T, 40) -> (B, T, members x E) unit vectors."""
        return torch.cat([m.embed_audio(mel) for m in self._each()], dim=-1) * self._scale

    def _each(self) -> list[SyncNet]:
        return [cast(SyncNet, m) for m in self.members]


#: What :func:`scan` takes: one model or an ensemble.
SyncModel = SyncNet | SyncEnsemble


@dataclass(frozen=True, slots=True)
class LagScan:
    """Scores of one face over audio lags (10 ms steps).

    Attributes:
        lags_ms: Audio lead tested, ms.
        curve: Mean cosine per lag over the slots every lag can pair.
        per_slot: (slots,) cosine of each slot at the best lag (nan where it has no pair).
        slot_by_lag: (lags, slots) cosine of each slot at each lag (nan where it has no pair).
    """

    lags_ms: npt.NDArray[np.float32]
    curve: npt.NDArray[np.float32]
    per_slot: npt.NDArray[np.float32]
    slot_by_lag: npt.NDArray[np.float32]

    @property
    def best(self) -> int:
        return int(np.argmax(self.curve))

    @property
    def lead_ms(self) -> float:
        """The best lag, refined by a parabola through its neighbours."""
        i = self.best
        if 0 < i < len(self.curve) - 1:
            y0, y1, y2 = (float(self.curve[i + d]) for d in (-1, 0, 1))
            den = y0 - 2 * y1 + y2
            if den < 0:
                frac = 0.5 * (y0 - y2) / den
                return float(self.lags_ms[i]) + max(-0.5, min(0.5, frac)) * STEP_MS
        return float(self.lags_ms[i])

    @property
    def peak(self) -> float:
        """The best mean cosine."""
        return float(self.curve[self.best])

    @property
    def prominence(self) -> float:
        """How far the peak stands above the other lags: (peak - median) / std."""
        c = self.curve.astype(np.float64)
        return float((c.max() - np.median(c)) / (c.std() + 1e-6))


@torch.inference_mode()
def scan(
    model: SyncModel,
    lips: Tensor,
    mel: Tensor,
    max_lag_ms: int,
) -> list[LagScan]:
    """Lag curves of a batch of faces, every 10 ms within +/- ``max_lag_ms``.

    The audio encoder runs once per 10 ms phase (4 runs); a lag is then a slice. The curve
    averages only the slots that every lag can pair inside the window, so each hypothesis is
    judged on the same lips; ``slot_by_lag`` holds every slot each lag pairs (the speaker
    decision judges faces at one lag, over as much of the window as that lag covers).

    Args:
        lips: (B, T, 160) standardised lip features.
        mel: (B, 4 T, 40) standardised log-mel, step ``4 t`` at slot ``t``.
    """
    v = model.embed_lips(lips)  # (B, T, E)
    b, t, _ = v.shape
    k_max = max_lag_ms // STEP_MS
    margin = -(-k_max // STEPS_PER_SLOT) + 1
    if t - 2 * margin < 4:
        raise ValueError(f"window too short to scan +/-{max_lag_ms} ms: {t} slots")
    phases = []
    for p in range(STEPS_PER_SLOT):
        n = (mel.shape[1] - p) // STEPS_PER_SLOT
        phases.append(model.embed_audio(mel[:, p : p + STEPS_PER_SLOT * n]))
    lags = list(range(-k_max, k_max + 1))
    lo, hi = margin, t - margin
    curves = []
    by_lag = torch.full((b, len(lags), t), math.nan, dtype=v.dtype, device=v.device)
    for i, k in enumerate(lags):
        # Lips t with audio starting 10 k ms before t: mel step 4 t - k = p + 4 j.
        p = (-k) % STEPS_PER_SLOT
        q = (k + p) // STEPS_PER_SLOT
        a = phases[p]
        # Every slot this lag pairs (audio index t - q inside the window) gets its cosine;
        # the curve averages only [lo, hi), the slots that every lag pairs.
        first, last = max(0, q), min(t, a.shape[1] + q)
        cos = (v[:, first:last] * a[:, first - q : last - q]).sum(-1)
        by_lag[:, i, first:last] = cos
        curves.append(cos[:, lo - first : hi - first].mean(dim=1))
    curve = torch.stack(curves, dim=1).cpu().numpy()  # (B, L)
    per = by_lag.cpu().numpy()  # (B, L, T)
    out = []
    for i in range(b):
        best = int(np.argmax(curve[i]))
        out.append(
            LagScan(
                np.array(lags, np.float32) * STEP_MS,
                curve[i].astype(np.float32),
                per[i, best].astype(np.float32),
                per[i].astype(np.float32),
            )
        )
    return out


class CheckpointError(ValueError):
    """A file is not a lip-sync checkpoint this code can load."""


def save_checkpoint(path: Path, model: SyncNet, extra: dict[str, Any]) -> None:
    """Write atomically: ``arch``, ``hidden``, ``state_dict`` and everything in ``extra``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {"arch": ARCH, "hidden": model.hidden, "state_dict": model.state_dict(), **extra}, tmp
    )
    tmp.replace(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's dict (tensors on the CPU), checked for its architecture."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"lipsync weights {path}: no such file") from exc
    except Exception as exc:
        raise CheckpointError(f"lipsync weights {path}: not a checkpoint ({exc})") from exc
    if not isinstance(data, dict) or data.get("arch") != ARCH:
        got = data.get("arch") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"lipsync weights {path}: expected arch {ARCH!r}, got {got!r}")
    return data


def members_from(states: Sequence[dict[str, Any]], hidden: int) -> list[SyncNet]:
    """A :class:`SyncNet` per state dict (raises ``RuntimeError`` for one of another shape)."""
    members = []
    for state in states:
        member = SyncNet(hidden=hidden)
        member.load_state_dict(state)
        members.append(member)
    return members


def load_model(path: Path, device: str = "cpu", data: dict[str, Any] | None = None) -> SyncModel:
    """The model a checkpoint ``crossmodald train lipsync`` wrote serves, in eval mode.

    One member (``state_dict``): that model, whatever its epochs. Several (``--members``): the
    finished members (``members``) as a :class:`SyncEnsemble`, the one in training joining them
    once it has all its epochs. ``data``: the checkpoint as :func:`read_checkpoint` gave it, for a
    caller that reads its other figures too (not read again).
    """
    if data is None:
        data = read_checkpoint(path)
    states = list(data.get("members") or [])
    epochs = int((data.get("settings") or {}).get("epochs", 0))
    if not states or int(data.get("epoch", 0)) >= epochs:
        if "state_dict" not in data:
            raise CheckpointError(f"lipsync weights {path}: no state_dict")
        states.append(data["state_dict"])
    try:
        members = members_from(states, int(data.get("hidden", 128)))
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"lipsync weights {path}: {exc}") from exc
    model: SyncModel = members[0] if len(members) == 1 else SyncEnsemble(members)
    return model.to(device).eval()
