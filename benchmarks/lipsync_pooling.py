"""What pooling a face's lag curves over windows buys the lipsync offset (held-out speakers).

The plugin reads each 2 s window on its own. On natural content one window's curve is weak
evidence: its best lag is within 40 ms of the truth on about a third of the windows and its
prominence ((peak - median) / std, what the plugin's confidence is made of) says little about
which third. This measures, on clips the model never saw (use the checkpoint's validation clips),
2 s windows every 12 slots (about 0.5 s, as the plugin's default hop) with the audio shifted by
-400 ... +400 ms:

* pooled: the mean of the face's lag curves over its last N windows (the window and the N - 1
  before it), read as the plugin reads one curve (best lag, parabola-refined, minus the
  checkpoint's ``calibration_ms``), for N in ``--pool``;
* the median of the last N windows' own estimates, for comparison;
* per prominence band of the pooled curve, the share within 40 ms (what a confidence built on
  pooled curves could stand on);
* against the plugin's default alarm limits (audio 90 ms early, 185 ms late), window by window:
  the share of pooled readings beyond a limit where the applied shift is within both (-80, 0 ms:
  a false alarm's raw material) and where it is beyond one (+120 ... +400, -200, -400 ms).

    python benchmarks/lipsync_pooling.py VAL_CLIPS... [--weights W] [--cache DIR] [--pool 1 2 4 8]

VAL_CLIPS: the checkpoint's validation clips (files or folders), e.g. the seven PC-AVS clips
named in weights/lipsync-v2.data.json under ``val_data``. The checkpoint's ``calibration_ms``
came from those clips' unshifted windows, so every share here is somewhat optimistic; the
comparison between the rows is not. The shipped model's figures are in its model card (limits).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from crossmodald_plugins.lipsync import agreement
from crossmodald_plugins.lipsync.agreement import scan_windows
from crossmodald_plugins.lipsync.data import extract_all, find_clips
from crossmodald_plugins.lipsync.landmarks import lip_features
from crossmodald_plugins.lipsync.model import LagScan, load_model, read_checkpoint
from crossmodald_plugins.lipsync.plugin import SHIPPED_WEIGHTS, LipSyncConfig

SLOTS = agreement.WINDOW_SLOTS  # 2 s windows every 12 slots, +/-500 ms: the plugin's scan
STEP = agreement.WINDOW_STEP
SHIFTS = (-10, -5, -2, 0, 3, 6, 10)  # slots of 40 ms: -400 ... +400 ms
TOLERANCE_MS = 40.0
BANDS = ((0.0, 2.5), (2.5, 3.0), (3.0, 3.5), (3.5, 4.0), (4.0, 99.0))
DEFAULTS = LipSyncConfig()


def beyond(lead_ms: float) -> bool:
    """Outside the plugin's default alarm limits."""
    return lead_ms > DEFAULTS.alarm_audio_lead_ms or lead_ms < -DEFAULTS.alarm_audio_lag_ms


def pooled(scans: list[LagScan]) -> LagScan:
    """The scans' mean lag curve, as one scan (read with its ``lead_ms`` and ``prominence``)."""
    curve = np.mean([r.curve for r in scans], axis=0).astype(np.float32)
    return LagScan(scans[-1].lags_ms, curve, np.zeros(1, np.float32), np.zeros((1, 1), np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", type=Path, nargs="+")
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--cache", type=Path, help="feature cache of `train --cache`")
    parser.add_argument("--pool", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    stored = read_checkpoint(args.weights)
    model = load_model(args.weights, "cpu", stored)
    calibration = float(stored.get("calibration_ms", 0.0))
    clips, skipped = extract_all(find_clips(args.clips), args.cache)
    for why in skipped:
        print(f"skipped {why}")
    # Per clip and shift, the windows' scans in order (one stream each).
    streams: list[tuple[float, list[LagScan]]] = []
    for clip in clips:
        lips_all = lip_features(clip.poses, clip.valid)
        for d in SHIFTS:
            starts = range(max(0, -d), len(lips_all) - SLOTS - max(0, d) + 1, STEP)
            streams.append((d * 40.0, scan_windows(model, lips_all, clip.mel, starts, shift=d)))
    windows = sum(len(s) for _, s in streams)
    print(f"{len(clips)} clips, {args.weights.name}, {windows} windows of 2 s (every 0.48 s)")
    for n in args.pool:
        pooled_ok: list[bool] = []
        median_ok: list[bool] = []
        bands: list[tuple[float, bool]] = []
        alarms: dict[bool, list[bool]] = {False: [], True: []}
        for shift_ms, scans in streams:
            for k in range(len(scans)):
                last = scans[max(0, k - n + 1) : k + 1]
                pool = pooled(last)
                reading = pool.lead_ms - calibration
                ok = abs(reading - shift_ms) <= TOLERANCE_MS
                pooled_ok.append(ok)
                alarms[beyond(shift_ms)].append(beyond(reading))
                own = float(np.median([r.lead_ms for r in last]))
                median_ok.append(abs(own - calibration - shift_ms) <= TOLERANCE_MS)
                if len(last) == n:
                    bands.append((pool.prominence, ok))
        print(
            f"pool {n}: within {TOLERANCE_MS:.0f} ms {np.mean(pooled_ok):.1%} "
            f"(median of the last {n} estimates: {np.mean(median_ok):.1%})"
        )
        print(
            f"  beyond the alarm limits: {np.mean(alarms[False]):.1%} of {len(alarms[False])} "
            f"windows shifted within them, {np.mean(alarms[True]):.1%} of {len(alarms[True])} "
            "shifted beyond"
        )
        for lo, hi in BANDS:
            chosen = [ok for p, ok in bands if lo <= p < hi]
            if chosen:
                print(
                    f"  pooled prominence {lo:.1f}-{hi:.1f}: {len(chosen):4d} windows, "
                    f"within {TOLERANCE_MS:.0f} ms {np.mean(chosen):.1%}"
                )


if __name__ == "__main__":
    main()
