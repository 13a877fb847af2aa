"""How well faces' lips agree with a voice: where a checkpoint's speaker thresholds come from.

The ``lipsync`` plugin calls a face speaking when its agreement (its mean cosine over a 2 s
window's slots at the stream's lag, averaged over its latest :data:`AGREEMENT_WINDOWS` windows
with sound) reaches a threshold, and lets it go on speaking while the agreement stays above a
lower release threshold. Cosines have no fixed scale: each trained model has its own, so the
thresholds are measured per checkpoint, on its validation clips (other speakers, never trained
on), and stored in it (:func:`speaker_thresholds`).

For every 2 s window (50 slots, every 12 slots: the plugin's 0.5 s hop) of each clip, the model
scans +/-500 ms as the plugin does; a face's agreement is taken at the clip's lag (the median of
its windows' best lags, as the plugin's stream lag). "Matched": a clip's lips with its own audio.
"Mismatched": its lips with each other clip's audio (up to six others) at the same place, a
face that is not the voice. The start threshold is the mismatched 90th percentile (a face that
is not the voice reaches it in one window of ten), the release the mismatched median (a face
that speaks goes on while its lips agree with the sound better than half of the faces that are
not the voice do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from .data import ClipFeatures
from .features import STEPS_PER_SLOT, standardise_audio, standardise_lips
from .landmarks import lip_features
from .model import LagScan, SyncModel, scan
from .plugin import AGREEMENT_WINDOWS

#: Window length and hop (slots of 40 ms), and the lags scanned: the plugin's.
WINDOW_SLOTS = 50
WINDOW_STEP = 12
MAX_LAG_MS = 500
#: The start threshold: this percentile of the mismatched agreements; the release: their median.
START_PERCENTILE = 90.0
#: Each clip's lips are paired with the audio of at most this many other clips (the next ones,
#: in order, wrapping round), so that the cost grows with the number of clips, not its square:
#: training measures this after every epoch.
MAX_OTHERS = 6


@dataclass(slots=True)
class Agreements:
    """Per window, averaged over the latest ``windows`` windows (see the module docstring).

    Attributes:
        matched: A clip's lips with its own audio.
        mismatched: A clip's lips with another clip's audio, at the same place.
        wins: How many (matched, mismatched) pairs at the same place the matched face won.
        pairs: How many such pairs there were.
        beside: Per voiced clip ``i``, per other clip ``j``: (face ``i``'s, face ``j``'s)
            agreement with ``i``'s audio, window by window (two faces on screen, one voiced).
    """

    matched: list[float] = field(default_factory=list)
    mismatched: list[float] = field(default_factory=list)
    wins: int = 0
    pairs: int = 0
    beside: dict[int, list[tuple[list[float], list[float]]]] = field(default_factory=dict)


def rolling(values: Sequence[float], k: int) -> list[float]:
    """Mean of each value with up to ``k - 1`` before it."""
    return [float(np.mean(values[max(0, i - k + 1) : i + 1])) for i in range(len(values))]


def measure(
    model: SyncModel,
    clips: Sequence[ClipFeatures],
    *,
    windows: int = AGREEMENT_WINDOWS,
    beside: bool = False,
    device: str = "cpu",
) -> Agreements:
    """Matched and mismatched agreements over ``clips`` (``beside``: the two-face pairs too).

    Each clip is paired with up to :data:`MAX_OTHERS` other clips (all of them when there are
    at most that many others)."""
    feats = [(lip_features(c.poses, c.valid), c.mel) for c in clips]
    out = Agreements()
    was_training = model.training
    model.eval()
    try:
        for i, (lips, _) in enumerate(feats):
            starts = list(range(0, len(lips) - WINDOW_SLOTS + 1, WINDOW_STEP))
            own = scan_windows(model, lips, feats[i][1], starts, device=device)
            if not own:
                continue
            lag = int(np.median([r.best for r in own]))
            mine = rolling([float(np.nanmean(r.slot_by_lag[lag])) for r in own], windows)
            out.matched += mine
            for k in range(1, min(len(feats), MAX_OTHERS + 1)):
                j = (i + k) % len(feats)
                other = scan_windows(model, lips, feats[j][1], starts, device=device)
                theirs = rolling([float(np.nanmean(r.slot_by_lag[lag])) for r in other], windows)
                out.mismatched += theirs
                out.wins += sum(a > b for a, b in zip(mine, theirs, strict=False))
                out.pairs += min(len(mine), len(theirs))
                if beside:
                    # Face j beside face i, both with i's audio, judged at i's lag.
                    face_j = scan_windows(model, feats[j][0], feats[i][1], starts, device=device)
                    scores = [float(np.nanmean(r.slot_by_lag[lag])) for r in face_j]
                    pair = (mine, rolling(scores, windows))
                    out.beside.setdefault(i, []).append(pair)
    finally:
        model.train(was_training)
    return out


def speaker_thresholds(agreements: Agreements) -> tuple[float, float] | None:
    """(start, release) from the mismatched agreements (None: no mismatched pairs).

    The release is never below 0 (the plugin's ``speaker_release_threshold`` floor) and never
    above the start.
    """
    if not agreements.mismatched:
        return None
    x = np.asarray(agreements.mismatched, np.float64)
    start = float(np.percentile(x, START_PERCENTILE))
    release = min(start, max(0.0, float(np.median(x))))
    return round(start, 4), round(release, 4)


def scan_windows(
    model: SyncModel,
    lips_all: npt.NDArray[np.float32],
    mel_all: npt.NDArray[np.float32],
    starts: Sequence[int],
    *,
    shift: int = 0,
    device: str = "cpu",
) -> list[LagScan]:
    """The plugin's scan of the 2 s windows of a face's lip features (``lip_features``) that
    start at ``starts`` (slots), each against the log-mel ``shift`` slots later (the audio
    ``shift`` x 40 ms late), all in one batched call; windows the lips or the audio do not
    cover are left out."""
    lips_rows, mel_rows = [], []
    for start in starts:
        a0 = (start + shift) * STEPS_PER_SLOT
        mel = mel_all[max(0, a0) : a0 + WINDOW_SLOTS * STEPS_PER_SLOT]
        if a0 < 0 or len(mel) < WINDOW_SLOTS * STEPS_PER_SLOT:
            continue
        if start < 0 or start + WINDOW_SLOTS > len(lips_all):
            continue
        lips_rows.append(standardise_lips(lips_all[start : start + WINDOW_SLOTS]))
        mel_rows.append(standardise_audio(mel))
    if not lips_rows:
        return []
    return scan(
        model,
        torch.from_numpy(np.stack(lips_rows)).to(device),
        torch.from_numpy(np.stack(mel_rows)).to(device),
        MAX_LAG_MS,
    )
