"""Benchmark: CPU per window with `faces` + `speech` + `speaker` on a talking-head clip.

Issue 10: with the three plugins on, main tracks every window twice (faces and speaker each run
a face tracker) and runs VAD twice (speech and speaker). Once providers share their results, the
three together should cost about what `speaker` alone costs. This script measures, in one
invocation, `crossmodald analyze` with each plugin set below on the same clip, and prints each
set's process CPU seconds (user + system of the analyze process and its threads, from wait4)
per window and per media second, and the ratio of each set to `speaker` alone:

    speaker | faces | speech | faces+speech+speaker

Start-up (imports, torch, model loading) is excluded by difference: every set also analyses a
1 s cut of the same clip, and its CPU is subtracted. The clip (default
../shared/media/talkinghead_hdtf_aoc_25fps.mp4, 8 s, 512x512 25 fps, 16 kHz) is re-encoded in
its own format looped ``--loops`` times so that the steady part dominates. A window is one hop
of media (the windower emits one window per hop): windows = media seconds / hop.

Runs are interleaved (set 1, set 2, ... then again) and the best (least CPU) of N is kept, so
the ratios hold on a shared machine.

    python benchmarks/bench_shared_work.py [--repeat 3] [--loops 4] [--clip PATH]
        [--events-dir DIR] [--compare-tree ../../main]

``--events-dir`` keeps each set's JSONL events of the full clip (``<set>.jsonl``) for
benchmarks/compare_events.py.

With ``--compare-tree PATH`` (another checkout or an export of one, e.g.
``git archive 6b8468b daemon plugins configs``) every set also runs with that tree's ``daemon/``
and ``plugins/`` first on ``PYTHONPATH`` (as benchmarks/bench_analyze.py does), interleaved with
this tree's runs: a second row per set, its ratio to the other tree's own ``speaker``, and this
tree's CPU per window over the other's: a before/after in one run. The entry points come from the
installed distribution, so the other tree must name its plugins' factories the same way.
``--events-dir`` then also keeps ``<set>.other.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from benchkit import tree_env

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "media" / "talkinghead_hdtf_aoc_25fps.mp4"
HOP_S = 0.5
SETS: dict[str, list[str]] = {
    "speaker": ["speaker"],
    "faces": ["faces"],
    "speech": ["speech"],
    "faces+speech+speaker": ["faces", "speech", "speaker"],
}


def loop_clip(src: Path, dst: Path, loops: int, max_seconds: float | None = None) -> float:
    """Re-encode `src` in its own size, rate and sample rate, `loops` times over.

    Returns the media seconds written. ``max_seconds`` cuts it (the short start-up file).
    """
    with av.open(str(src)) as inp:
        vstream = inp.streams.video[0]
        fps = vstream.average_rate or Fraction(25)
        width, height = vstream.codec_context.width, vstream.codec_context.height
        rate = inp.streams.audio[0].rate
        vframes = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    with av.open(str(src)) as inp:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        chunks = [o.to_ndarray()[0] for f in inp.decode(audio=0) for o in resampler.resample(f)]
        audio = np.concatenate(chunks)
    n_frames = len(vframes) * loops
    if max_seconds is not None:
        n_frames = min(n_frames, int(max_seconds * fps))
    seconds = float(n_frames / fps)
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "veryfast"}
        aus = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(vframes[i % len(vframes)], format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1) / fps
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        total = int(seconds * rate)
        looped = np.resize(audio, total).astype(np.float32)
        for start in range(0, total, 1024):
            block = np.ascontiguousarray(looped[start : start + 1024][None, :])
            aframe = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            aframe.sample_rate = rate
            aframe.pts = start
            for packet in aus.encode(aframe):
                out.mux(packet)
        for packet in aus.encode(None):
            out.mux(packet)
    return seconds


def analyze_cpu(
    path: Path, plugins: list[str], events: Path | None, env: dict[str, str] | None = None
) -> float:
    """CPU seconds (user + system) of one `crossmodald analyze` run with these plugins."""
    argv = [sys.executable, "-m", "crossmodald", "analyze", str(path), "--format", "jsonl"]
    for name in plugins:
        argv += ["--plugin", name]
    with open(events or os.devnull, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv}: failed:\n{err}")
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loops", type=int, default=4, help="times the clip is looped")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--events-dir", type=Path, help="keep each set's events here")
    parser.add_argument("--compare-tree", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    if not args.clip.is_file():
        raise SystemExit(f"{args.clip}: no such file")
    other = args.compare_tree.resolve() if args.compare_tree else None
    if other is not None and not (other / "daemon" / "crossmodald").is_dir():
        raise SystemExit(f"{other}: not a crossmodald checkout (no daemon/crossmodald)")
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"cpu count {os.cpu_count()}; best of {args.repeat}"
    )
    # Each tree runs with its own code first on PYTHONPATH; "" is this tree, "other" the other.
    trees: dict[str, dict[str, str] | None] = {"": tree_env(REPO)}
    if other is not None:
        print(f"this tree: {REPO}; other tree: {other}")
        trees["other"] = tree_env(other)
    with tempfile.TemporaryDirectory() as tmp:
        full, short = Path(tmp) / "clip.mp4", Path(tmp) / "clip-1s.mp4"
        seconds = loop_clip(args.clip, full, args.loops)
        short_s = loop_clip(args.clip, short, 1, max_seconds=1.0)
        if args.events_dir is not None:
            args.events_dir.mkdir(parents=True, exist_ok=True)
        best_full = {(t, name): float("inf") for t in trees for name in SETS}
        best_short = {(t, name): float("inf") for t in trees for name in SETS}
        for attempt in range(args.repeat):
            for name, plugins in SETS.items():
                for tree, env in trees.items():
                    suffix = f".{tree}" if tree else ""
                    keep = (
                        args.events_dir / f"{name}{suffix}.jsonl"
                        if args.events_dir and not attempt
                        else None
                    )
                    key = (tree, name)
                    best_full[key] = min(best_full[key], analyze_cpu(full, plugins, keep, env))
                    best_short[key] = min(best_short[key], analyze_cpu(short, plugins, None, env))
    steady_s = seconds - short_s
    windows = steady_s / HOP_S
    print(f"clip {args.clip.name} looped x{args.loops}: {seconds:.1f} s, {windows:.0f} windows")
    print(
        f"{'plugins':<22} {'cpu s':>7} {'cpu 1s':>7} {'ms/window':>10} {'cpu s/media s':>14} "
        f"{'x speaker':>10}" + (f" {'this/other':>11}" if other is not None else "")
    )

    def per_window(tree: str, name: str) -> float:
        return (best_full[tree, name] - best_short[tree, name]) / windows

    for name in SETS:
        for tree in trees:
            steady = per_window(tree, name)
            label = name if not tree else "  same, other tree"
            line = (
                f"{label:<22} {best_full[tree, name]:7.2f} {best_short[tree, name]:7.2f} "
                f"{1000 * steady:10.1f} {steady * windows / steady_s:14.3f} "
                f"{steady / per_window(tree, 'speaker'):10.2f}"
            )
            if other is not None and not tree:
                line += f" {steady / per_window('other', name):11.2f}"
            print(line)
    print(
        "CPU = user + system of the analyze process; the 1 s cut's CPU (start-up) is subtracted;"
        " 'x speaker' = this set's CPU per window / speaker alone's, same tree, same invocation"
        + ("; 'this/other' = CPU per window, this tree / other tree" if other is not None else "")
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
