"""Where the lipsync plugin's speaker thresholds come from: agreement on held-out speakers.

``crossmodald train lipsync`` measures them on its validation clips and stores them in the
checkpoint (``crossmodald_plugins/lipsync/agreement.py``); this prints what lies behind them.
For every 2 s window (50 slots of 40 ms, every 12 slots) of each clip, the sync model scans
+/-500 ms as the plugin does, and the face's agreement is its mean cosine over the slots that
the clip's lag pairs with audio in the window, at that lag (the median of its windows' best
lags, as the plugin's stream lag), averaged over its latest ``--windows`` windows (the plugin's
AGREEMENT_WINDOWS). "Matched": the clip's lips with its own audio. "Mismatched": its lips with
the audio of each other clip (up to six) at the same place: a face that is not the voice. Prints both
distributions, how often the matched face beats a mismatched one at the same place, the start
(mismatched 90th percentile) and release (mismatched median, at least 0) thresholds as training
measures them, and per threshold the share of each at or above it.

Then the plugin's decision over time, on two faces of these speakers: each clip's voice with its
own face and each other clip's face beside it (judged at the voiced clip's lag), window after
window: only the better of the two can speak; a face starts when it reaches the threshold and,
once speaking, stops when it falls to the release threshold or below. Printed per release
threshold (a few fixed ones and the checkpoint's): the share of windows where the voiced face
alone speaks, and where a face speaks though neither is the voice (two other faces with the
clip's audio).

    python benchmarks/lipsync_speaker_threshold.py VAL_CLIPS... [--weights W] [--cache DIR]
        [--windows 4] [--threshold T]

VAL_CLIPS: the checkpoint's validation clips (files or folders), e.g. the seven PC-AVS clips
named in weights/lipsync-v2.data.json under ``val_data``. ``--threshold``: the start threshold
to play the decision with (default: the checkpoint's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from crossmodald_plugins.lipsync import agreement
from crossmodald_plugins.lipsync.data import extract_all, find_clips
from crossmodald_plugins.lipsync.model import load_model, read_checkpoint
from crossmodald_plugins.lipsync.plugin import (
    AGREEMENT_WINDOWS,
    DEFAULT_SPEAKER_RELEASE,
    DEFAULT_SPEAKER_THRESHOLD,
    SHIPPED_WEIGHTS,
)

THRESHOLDS = (0.02, 0.04, 0.06, 0.08, 0.10, 0.15, 0.25)
RELEASES = (None, 0.03, 0.02, 0.01, 0.0)


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
    parser.add_argument("--threshold", type=float, help="default: the checkpoint's")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    stored = read_checkpoint(args.weights)
    model = load_model(args.weights, "cpu", stored)
    start = args.threshold
    if start is None:
        start = float(stored.get("speaker_threshold", DEFAULT_SPEAKER_THRESHOLD))
    stored_release = float(stored.get("speaker_release_threshold", DEFAULT_SPEAKER_RELEASE))
    releases = RELEASES if stored_release in RELEASES else (*RELEASES, stored_release)
    clips, skipped = extract_all(find_clips(args.clips), args.cache)
    for why in skipped:
        print(f"skipped {why}")
    if len(clips) < 2:
        raise SystemExit("needs at least two clips (mismatched pairs)")
    found = agreement.measure(model, clips, windows=args.windows, beside=True)
    m, x = np.array(found.matched), np.array(found.mismatched)
    print(f"{len(clips)} clips, {args.weights.name}, agreement over {args.windows} window(s)")
    print(
        f"matched face above a mismatched one at the same place: {found.wins / max(1, found.pairs):.2f}"
    )
    print(f"matched    {len(m):5d} windows: mean {m.mean():.3f}, median {np.median(m):.3f}")
    print(
        f"mismatched {len(x):5d} windows: mean {x.mean():.3f}, "
        f"p90 {np.percentile(x, 90):.3f}, p95 {np.percentile(x, 95):.3f}"
    )
    print(f"mismatched median {np.median(x):.3f}, p75 {np.percentile(x, 75):.3f}")
    measured = agreement.speaker_thresholds(found)
    assert measured is not None
    print(
        f"thresholds as training measures them: start {measured[0]:.4f}, release {measured[1]:.4f}"
    )
    for t in THRESHOLDS:
        print(
            f"threshold {t:.2f}: matched at or above {np.mean(m >= t):.2f}, "
            f"mismatched {np.mean(x >= t):.2f}"
        )
    print(f"two faces, threshold {start:.3f}, one speaker at a time, per window:")
    for release in releases:
        stop = start if release is None else release
        pairs = [pair for pairs_of in found.beside.values() for pair in pairs_of]
        voiced = [w == 0 for a, b in pairs for w in decide(a, b, start, stop)]
        others = {i: [b for _, b in pairs_of] for i, pairs_of in found.beside.items()}
        false = [
            w >= 0
            for faces in others.values()
            for k, a in enumerate(faces)
            for b in faces[k + 1 :]
            for w in decide(a, b, start, stop)
        ]
        name = "none (= threshold)" if release is None else f"{release:.3f}"
        print(
            f"release {name:>18}: voiced face alone speaking {np.mean(voiced):.2f} "
            f"({len(voiced)} windows), a face speaking with neither voiced "
            f"{np.mean(false):.2f} ({len(false)})"
        )


if __name__ == "__main__":
    main()
