"""Each clip's own A/V offset read from its lip closures, with no model: are the clips in sync?

``crossmodald eval lipsync`` counts a window as a hit when its reading is within 40 ms of the
applied shift, i.e. it takes every clip as in sync at 0. None of the talking heads in
../shared/media has a published offset. This reads one from a physical event that needs no
training: where the lips part after a closure (a /p/, /b/, /m/, or the lips meeting on /f/, /v/
or at a pause), the sound's energy rises at that moment, since a closed mouth radiates almost
nothing. Per clip:

* the inner-lip aperture per frame (MediaPipe Face Mesh through the lipsync plugin's own
  landmark code: the mean gap of three upper/lower inner-lip point pairs, in inter-ocular
  distances);
* a closure: a local minimum of the aperture in the lowest quarter of the clip's range
  (2nd to 90th percentile), followed within 6 frames by a frame above 60 % of it; its release:
  the time the aperture crosses half-way between the minimum and that frame (interpolated
  between frames);
* the sound's onset there: within 200 ms either side of the release (symmetric, so that it
  favours no lag), the steepest rise of the log energy (10 ms windows every 2.5 ms, smoothed over
  15 ms) that rises at least 8 dB within 50 ms from a level below the clip's 60th percentile;
* the delay: onset minus release. The clip's delay is the median over its closures.

Where the lips part is read a little differently for each face (how far they open, how fast),
so one clip's delay says little on its own; what the method gives is each clip against the
others: a clip's ``audio_lead_ms`` (positive: audio early, the daemon's sign) is the median of
all the clips' delays minus its own, i.e. it takes the typical clip as in sync. Optionally the
same is read on control clips (``--control``, e.g. GRID, recorded in a laboratory) and printed
beside, against their median delay. Per clip it also prints how many closures lie within 40 ms
of its median (one stable delay reads as most of them; a clip where the method finds no
agreement, as few) and the 90 % interval of its median (bootstrap over its closures).

    python benchmarks/lipsync_closures.py CLIPS... [--control CLIPS... [--max-control N]]

e.g. ``python benchmarks/lipsync_closures.py ../shared/media --control
../shared/datasets/grid-s1 --max-control 60`` (in a folder holding ``talkinghead_*`` files, only
those are read). For evaluation only: nothing here is trained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from crossmodald_plugins.lipsync.data import ClipError, decode, find_clips
from crossmodald_plugins.lipsync.landmarks import LIPS, N_LIPS, poses_of_frames

#: Upper/lower inner-lip point pairs (Face Mesh indices): left of centre, centre, right.
APERTURE_PAIRS = ((82, 87), (13, 14), (312, 317))
SEARCH_S = 0.2
ENERGY_WINDOW_S = 0.010
ENERGY_HOP_S = 0.0025
SMOOTH_STEPS = 6
#: A rise counts when the log10 energy gains this much (8 dB) within 50 ms ...
MIN_RISE = 0.8
#: ... from below this percentile of the clip's smoothed log energy.
QUIET_PERCENTILE = 60.0
CLUSTER_MS = 40.0
BOOTSTRAP = 2000

F64 = npt.NDArray[np.float64]


def aperture(poses: npt.NDArray[np.float32]) -> F64:
    """Inner-lip gap per frame (inter-ocular distances) from normalised lip poses."""
    points = poses.reshape(len(poses), N_LIPS, 2).astype(np.float64)
    gaps = [
        points[:, LIPS.index(lo), 1] - points[:, LIPS.index(up), 1] for up, lo in APERTURE_PAIRS
    ]
    out: F64 = np.mean(gaps, axis=0)
    return out


def log_energy(audio: npt.NDArray[np.float32], rate: int) -> tuple[F64, F64]:
    """(times in s, smoothed log10 energy) of ``audio``."""
    hop = max(1, round(rate * ENERGY_HOP_S))
    win = round(rate * ENERGY_WINDOW_S)
    n = 1 + (len(audio) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    energy = np.log10((audio[idx].astype(np.float64) ** 2).mean(axis=1) + 1e-10)
    smooth: F64 = np.convolve(energy, np.ones(SMOOTH_STEPS) / SMOOTH_STEPS, mode="same")
    times: F64 = (np.arange(n) * hop + win / 2) / rate
    return times, smooth


def releases(times: F64, gap: F64, valid: npt.NDArray[np.bool_]) -> list[float]:
    """Times (s) where the lips part after a closure (see the module docstring)."""
    lo, hi = np.percentile(gap[valid], [2, 90])
    closed, opened = lo + 0.25 * (hi - lo), lo + 0.6 * (hi - lo)
    out = []
    i = 1
    while i < len(gap) - 1:
        if not (valid[i] and gap[i] < closed and gap[i] <= gap[i - 1] and gap[i] < gap[i + 1]):
            i += 1
            continue
        j = next(
            (j for j in range(i + 1, min(len(gap), i + 7)) if valid[j] and gap[j] >= opened), None
        )
        if j is None:
            i += 1
            continue
        # The deepest frame of the closure, then where the lips pass half-way to open.
        low = i + int(np.argmin(gap[i:j]))
        mid = (gap[low] + gap[j]) / 2
        m = next(m for m in range(low + 1, j + 1) if gap[m] >= mid)
        frac = (mid - gap[m - 1]) / (gap[m] - gap[m - 1])
        out.append(float(times[m - 1] + frac * (times[m] - times[m - 1])))
        i = j + 1  # one release per closure, however the closed frames jitter
    return out


def onset_delays(released: list[float], times: F64, energy: F64) -> list[float]:
    """Per release, the delay (s) of the sound's steepest qualifying rise around it."""
    slope = np.gradient(energy, times)
    quiet = np.percentile(energy, QUIET_PERCENTILE)
    before = (round(0.030 / ENERGY_HOP_S), round(0.010 / ENERGY_HOP_S))
    after = (round(0.010 / ENERGY_HOP_S), round(0.050 / ENERGY_HOP_S))
    out = []
    for t in released:
        near = np.flatnonzero((times >= t - SEARCH_S) & (times <= t + SEARCH_S))
        for c in near[np.argsort(-slope[near])]:
            pre = energy[max(0, c - before[0]) : c - before[1]]
            post = energy[c + after[0] : c + after[1]]
            if len(pre) and len(post) and pre.min() < quiet and post.max() - pre.min() > MIN_RISE:
                out.append(float(times[c] - t))
                break
    return out


def median_interval(delays: F64, seed: int = 0) -> tuple[float, float]:
    """90 % interval of the median of ``delays`` (bootstrap)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(delays), (BOOTSTRAP, len(delays)))
    medians = np.median(delays[picks], axis=1)
    return float(np.percentile(medians, 5)), float(np.percentile(medians, 95))


def clip_delays(path: Path) -> list[float]:
    lumas, times, audio, rate = decode(path)
    poses, valid = poses_of_frames(lumas)
    if not valid.any():
        raise ClipError(f"{path.name}: Face Mesh found no face")
    t, energy = log_energy(audio, rate)
    return onset_delays(releases(times, aperture(poses), valid), t, energy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", type=Path, nargs="+")
    parser.add_argument("--control", type=Path, nargs="+", help="in-sync clips to print against")
    parser.add_argument("--max-control", type=int, default=150, help="control clips read, at most")
    args = parser.parse_args()

    def usable(paths: list[Path]) -> list[Path]:
        found = find_clips(paths)
        named = [p for p in found if "talkinghead" in p.name]
        return named if named and len(named) < len(found) else found

    rows = []
    for path in usable(args.clips):
        try:
            delays = np.asarray(clip_delays(path)) * 1000.0
        except ClipError as exc:
            print(f"{path.name}: skipped: {exc}")
            continue
        if len(delays) == 0:
            print(f"{path.name}: no closure found")
            continue
        rows.append((path.name, delays))
    if not rows:
        raise SystemExit("no closure found in any clip")
    zero = float(np.median([np.median(d) for _, d in rows]))
    control = None
    if args.control:
        controls = usable(args.control)
        step = max(1, len(controls) // args.max_control)
        picked = controls[::step][: args.max_control]
        found: list[float] = []
        for path in picked:
            try:
                found += clip_delays(path)
            except ClipError:
                continue
        if found:
            ms = np.asarray(found) * 1000.0
            control = float(np.median(ms))
            print(
                f"controls: {len(ms)} closures in {len(picked)} clips, median delay "
                f"{control:+.1f} ms, median distance from it "
                f"{float(np.median(np.abs(ms - control))):.1f} ms"
            )
    print(f"clips' median delay (their zero): {zero:+.1f} ms (positive: sound after lips part)")
    head = (
        f"{'clip':42s} closures  median delay  within {CLUSTER_MS:.0f} ms  "
        "audio_lead_ms (90 % interval)"
    )
    print(head + ("  vs controls" if control is not None else ""))
    for name, delays in rows:
        med = float(np.median(delays))
        near = int(np.sum(np.abs(delays - med) <= CLUSTER_MS))
        lo, hi = median_interval(delays)
        line = (
            f"{name:42s} {len(delays):8d}  {med:+9.1f} ms  {near:4d} of {len(delays):<4d}"
            f"  {zero - med:+13.1f} ({zero - hi:+.0f} .. {zero - lo:+.0f})"
        )
        print(line + (f"  {control - med:+11.1f}" if control is not None else ""))


if __name__ == "__main__":
    main()
