"""Where the lipsync plugin's ``speaker_threshold`` comes from: agreement on held-out speakers.

For every 2 s window (50 slots of 40 ms, every 12 slots) of each validation clip, the sync
model scans +/-500 ms as the plugin does, and the face's agreement is its mean cosine over the
slots that the clip's lag pairs with audio in the window, at that lag (the median of its
windows' best lags, as the plugin's stream lag), averaged over its latest ``--windows`` windows
(the plugin's AGREEMENT_WINDOWS).
"Matched": the clip's lips with its own audio. "Mismatched": its lips with the audio of each
other clip at the same place: a face that is not the voice. Prints both distributions, how often
the matched face beats a mismatched one at the same place, and per threshold the share of each
at or above it. The shipped default (0.045) is about the mismatched 90th percentile on the
shipped model's validation speakers (PC-AVS, never trained on).

Then the plugin's decision over time, on two faces of these speakers: each clip's voice with its
own face and each other clip's face beside it (judged at the voiced clip's lag), window after
window: only the better of the two can speak; a face starts when it reaches the threshold and,
once speaking, stops when it falls to the release threshold or below
(``speaker_release_threshold``). Printed per release threshold: the share of windows where the
voiced face alone speaks, and where a face speaks though neither is the voice (two other faces
with the clip's audio). The shipped release (0.0) is the mismatched median, rounded: a face
that speaks goes on speaking while its lips agree with the sound better than half of the faces
that are not the voice do.

    python benchmarks/lipsync_speaker_threshold.py VAL_CLIPS... [--weights W] [--cache DIR]
        [--windows 4] [--threshold 0.045]

VAL_CLIPS: the checkpoint's validation clips (files or folders), e.g. the seven PC-AVS clips
named in weights/lipsync-v1.data.json under ``val_data``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from crossmodald_plugins.lipsync.data import extract_all, find_clips
from crossmodald_plugins.lipsync.features import (
    STEPS_PER_SLOT,
    standardise_audio,
    standardise_lips,
)
from crossmodald_plugins.lipsync.landmarks import lip_features
from crossmodald_plugins.lipsync.model import LagScan, load_model, scan
from crossmodald_plugins.lipsync.plugin import (
    AGREEMENT_WINDOWS,
    SHIPPED_WEIGHTS,
    LipSyncConfig,
)

SLOTS = 50
STEP = 12
MAX_LAG_MS = 500
THRESHOLDS = (0.02, 0.04, 0.06, 0.08, 0.10, 0.15, 0.25)
RELEASES = (None, 0.03, 0.02, 0.01, 0.0)


def rolling(values: list[float], k: int) -> list[float]:
    """Mean of each value with up to ``k - 1`` before it."""
    return [float(np.mean(values[max(0, i - k + 1) : i + 1])) for i in range(len(values))]


def decide(first: list[float], second: list[float], start: float, release: float) -> list[int]:
    """Who speaks per window (0: ``first``, 1: ``second``, -1: nobody) under the plugin's rule:
    only the better face can speak; it starts at ``start`` and stops at ``release`` or below."""
    speaking = -1
    out = []
    for a, b in zip(first, second, strict=False):
        best, score = (0, a) if a > b else (1, b)
        if speaking == best:
            speaking = best if score > release else -1
        else:
            speaking = best if score >= start else -1
        out.append(speaking)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", type=Path, nargs="+")
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--cache", type=Path, help="feature cache of `train --cache`")
    parser.add_argument("--windows", type=int, default=AGREEMENT_WINDOWS)
    default = LipSyncConfig()
    parser.add_argument("--threshold", type=float, default=default.speaker_threshold)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(args.weights, "cpu")
    clips, skipped = extract_all(find_clips(args.clips), args.cache)
    for why in skipped:
        print(f"skipped {why}")
    if len(clips) < 2:
        raise SystemExit("needs at least two clips (mismatched pairs)")
    feats = [(lip_features(c.poses, c.valid), c.mel) for c in clips]

    def scan_at(lips_of: int, audio_of: int, start: int) -> LagScan | None:
        mel = feats[audio_of][1][start * STEPS_PER_SLOT : (start + SLOTS) * STEPS_PER_SLOT]
        if len(mel) < SLOTS * STEPS_PER_SLOT or start + SLOTS > len(feats[lips_of][0]):
            return None
        lips = standardise_lips(feats[lips_of][0][start : start + SLOTS])
        (res,) = scan(
            model,
            torch.from_numpy(lips[None]),
            torch.from_numpy(standardise_audio(mel)[None]),
            MAX_LAG_MS,
        )
        return res

    matched: list[float] = []
    mismatched: list[float] = []
    # (voiced face's agreement, another face's agreement with the same audio) per window, and
    # per voiced clip every other face's agreement with that audio.
    two_faces: list[tuple[list[float], list[float]]] = []
    others_of: dict[int, list[list[float]]] = {}
    wins = pairs = 0
    for i, (lips, _) in enumerate(feats):
        starts = range(0, len(lips) - SLOTS + 1, STEP)
        own = [r for r in (scan_at(i, i, s) for s in starts) if r is not None]
        if not own:
            continue
        lag = int(np.median([r.best for r in own]))
        mine = rolling([float(np.nanmean(r.slot_by_lag[lag])) for r in own], args.windows)
        matched += mine
        for j in range(len(feats)):
            if j != i:
                other = [r for r in (scan_at(i, j, s) for s in starts) if r is not None]
                theirs = rolling(
                    [float(np.nanmean(r.slot_by_lag[lag])) for r in other], args.windows
                )
                mismatched += theirs
                wins += sum(a > b for a, b in zip(mine, theirs, strict=False))
                pairs += min(len(mine), len(theirs))
                # Face j beside face i, both with i's audio (the two-face decision below).
                beside = [r for r in (scan_at(j, i, s) for s in starts) if r is not None]
                face_j = rolling(
                    [float(np.nanmean(r.slot_by_lag[lag])) for r in beside], args.windows
                )
                two_faces.append((mine, face_j))
                others_of.setdefault(i, []).append(face_j)
    m, x = np.array(matched), np.array(mismatched)
    print(f"{len(clips)} clips, {args.weights.name}, agreement over {args.windows} window(s)")
    print(f"matched face above a mismatched one at the same place: {wins / max(1, pairs):.2f}")
    print(f"matched    {len(m):5d} windows: mean {m.mean():.3f}, median {np.median(m):.3f}")
    print(
        f"mismatched {len(x):5d} windows: mean {x.mean():.3f}, "
        f"p90 {np.percentile(x, 90):.3f}, p95 {np.percentile(x, 95):.3f}"
    )
    print(f"mismatched median {np.median(x):.3f}, p75 {np.percentile(x, 75):.3f}")
    for t in THRESHOLDS:
        print(
            f"threshold {t:.2f}: matched at or above {np.mean(m >= t):.2f}, "
            f"mismatched {np.mean(x >= t):.2f}"
        )
    print(f"two faces, threshold {args.threshold:.3f}, one speaker at a time, per window:")
    for release in RELEASES:
        stop = args.threshold if release is None else release
        voiced = [w == 0 for a, b in two_faces for w in decide(a, b, args.threshold, stop)]
        false = [
            w >= 0
            for faces in others_of.values()
            for k, a in enumerate(faces)
            for b in faces[k + 1 :]
            for w in decide(a, b, args.threshold, stop)
        ]
        name = "none (= threshold)" if release is None else f"{release:.2f}"
        print(
            f"release {name:>18}: voiced face alone speaking {np.mean(voiced):.2f} "
            f"({len(voiced)} windows), a face speaking with neither voiced "
            f"{np.mean(false):.2f} ({len(false)})"
        )


if __name__ == "__main__":
    main()
