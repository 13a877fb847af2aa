"""Benchmark: `crossmodald analyze` throughput against a plain PyAV decode of the same file.

Issue 10's target: analyze runs at >= 0.8 of decode-only speed on a 5-minute 640x480 30 fps
H.264 + 48 kHz AAC pattern file, start-up excluded. Every measurement runs in a fresh
subprocess; decode-only and analyze run back to back, interleaved, in the same invocation, best
of N, so the printed ratios hold on a loaded machine even when the absolute seconds do not.

Start-up is excluded by difference: each file is also written as a 1-second version with the
same content and format, and both the decode and the analyze of that short file are subtracted
(process start, imports, torch, plugin set-up, the first window all cancel out):

    steady ratio = (decode(full) - decode(1 s)) / (analyze(full) - analyze(1 s))

The raw ratio (decode wall / analyze wall, start-up included) is printed too.

With ``--compare-tree PATH`` (another checkout, e.g. ../main) analyze also runs with that tree's
``daemon/`` and ``plugins/`` first on ``PYTHONPATH``, interleaved with this one's, and a second
line and the ratio of the two steady ratios are printed: a before/after in one run.

Files: a pattern file (H.264 + AAC, written by the project, default plugins: avsync), and, when
../shared/media is there, a real talking-head clip transcoded to 640x480 30 fps + 48 kHz AAC and
looped, analysed with avsync + faces (``--clip-plugin`` to change).

    python benchmarks/bench_analyze.py [--repeat 3] [--seconds 300] [--clip-seconds 60]
        [--plugin NAME ...] [--clip-plugin NAME ...] [--no-clip] [--compare-tree ../../main]

Prints the load average before and after, then one line per file: wall seconds (best of N) of
decode and analyze for the full and the 1 s file, the raw ratio, the steady ratio, peak RSS of
analyze, and analyze's media seconds per wall second; under it the CPU seconds (user + system,
least of N, steady) of both and the steady ratio that analyze's CPU time allows at most on the
cores this process may use (its CPU seconds over the cores is the least wall time it can take).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from benchkit import tree_env, x264_slices

from crossmodald.ingest.media import _slice_threads
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "media" / "talkinghead_hdtf_aoc_25fps.mp4"

DECODE_ONLY = """
import sys, av
with av.open(sys.argv[1]) as c:
    for _ in c.decode(video=0, audio=0):
        pass
"""

SHORT_S = 1.0


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of one subprocess."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv}: failed:\n{err}")
    return wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def transcode_clip(src: Path, dst: Path, seconds: float) -> None:
    """The real clip as 640x480 30 fps H.264 + 48 kHz AAC, looped to `seconds`."""
    with av.open(str(src)) as inp:
        vframes = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    with av.open(str(src)) as inp:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=48000)
        chunks = []
        for frame in inp.decode(audio=0):
            for resampled in resampler.resample(frame):
                chunks.append(resampled.to_ndarray()[0])
        audio = np.concatenate(chunks)
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 640, 480, "yuv420p"
        vs.options = {"preset": "veryfast"}
        aus = out.add_stream("aac", rate=48000, layout="mono")
        n_frames = int(seconds * 30)
        for i in range(n_frames):
            src_index = int(i * 25 / 30) % len(vframes)
            picture = av.VideoFrame.from_ndarray(vframes[src_index], format="rgb24")
            picture = picture.reformat(width=640, height=480, format="yuv420p")
            picture.pts = i
            picture.time_base = Fraction(1, 30)
            for packet in vs.encode(picture):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        total = int(seconds * 48000)
        looped = np.resize(audio, total).astype(np.float32)
        for start in range(0, total, 1024):
            block = looped[start : start + 1024][None, :]
            samples = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            samples.sample_rate = 48000
            samples.pts = start
            for packet in aus.encode(samples):
                out.mux(packet)
        for packet in aus.encode(None):
            out.mux(packet)


def analyze_argv(path: Path, plugins: list[str]) -> list[str]:
    """The `crossmodald analyze` command line for `path` with these plugins."""
    argv = [sys.executable, "-m", "crossmodald", "analyze", str(path), "--format", "jsonl"]
    for name in plugins:
        argv += ["--plugin", name]
    return argv


def measure(
    label: str,
    full: Path,
    short: Path,
    seconds: float,
    plugins: list[str],
    repeat: int,
    other: Path | None = None,
) -> None:
    """Interleaved decode/analyze runs of the full and the short file; prints one line.

    With ``other`` (another checkout) its analyze runs too, interleaved, on a second line.
    """
    decode_argv = [sys.executable, "-c", DECODE_ONLY]
    trees: list[tuple[str, dict[str, str] | None]] = [("", tree_env(REPO))]
    if other is not None:
        trees.append(("o", tree_env(other)))
    runs: dict[str, list[tuple[float, float, float]]] = {"df": [], "ds": []}
    for _ in range(repeat):
        runs["df"].append(run_measured([*decode_argv, str(full)]))
        for key, env in trees:
            runs.setdefault(key + "af", []).append(run_measured(analyze_argv(full, plugins), env))
        runs["ds"].append(run_measured([*decode_argv, str(short)]))
        for key, env in trees:
            runs.setdefault(key + "as", []).append(run_measured(analyze_argv(short, plugins), env))
    best = {key: min(w for w, _, _ in values) for key, values in runs.items()}
    cpu = {key: min(c for _, _, c in values) for key, values in runs.items()}
    cores = len(os.sched_getaffinity(0))
    steadies: list[float] = []
    for key, _ in trees:
        af, as_ = best[key + "af"], best[key + "as"]
        # Too short a file (or too noisy a machine) leaves no steady part to measure: say so.
        spent = af - as_
        steady = (best["df"] - best["ds"]) / spent if spent > 0 else float("nan")
        steadies.append(steady)
        rss = max(m for _, m, _ in runs[key + "af"])
        name = label if not key else "  same, other tree"
        print(
            f"{name:<34} {best['df']:7.2f} {af:8.2f} {best['ds']:7.2f} {as_:8.2f} "
            f"{best['df'] / af:6.2f} {steady:7.2f} {rss:8.0f} {seconds / af:7.1f}"
        )
        # However well the work were spread over the cores, analyze cannot take less wall time
        # than its CPU time over the cores: the steady ratio this machine allows at most.
        cpu_steady = cpu[key + "af"] - cpu[key + "as"]
        ceiling = (best["df"] - best["ds"]) / (cpu_steady / cores) if cpu_steady > 0 else math.nan
        print(
            f"    cpu s (user+sys, steady): decode {cpu['df'] - cpu['ds']:.2f}, analyze "
            f"{cpu_steady:.2f}; on {cores} cores the steady ratio is at most {ceiling:.2f}"
        )
    if other is not None:
        print(f"    steady this/other: {steadies[0] / steadies[1]:.2f}")
    print(f"    plugins: {','.join(plugins) or 'default (avsync)'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=300.0, help="pattern file length")
    parser.add_argument("--clip-seconds", type=float, default=60.0, help="looped clip length")
    parser.add_argument("--plugin", action="append", default=[], help="plugins for the pattern")
    parser.add_argument(
        "--clip-plugin", action="append", default=None, help="plugins for the clip (avsync,faces)"
    )
    parser.add_argument("--no-clip", action="store_true", help="measure the pattern file only")
    parser.add_argument("--compare-tree", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    other = args.compare_tree.resolve() if args.compare_tree else None
    if other is not None and not (other / "daemon" / "crossmodald").is_dir():
        raise SystemExit(f"{other}: not a crossmodald checkout (no daemon/crossmodald)")
    clip_plugins = args.clip_plugin or ["avsync", "faces"]
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"cpu count {os.cpu_count()}; best of {args.repeat}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files: list[tuple[str, Path, Path, float, list[str]]] = []
        config = PatternSourceConfig(type="pattern", name="bench", audio_lead_ms=40.0)
        pattern, pattern_short = Path(tmp) / "pattern.mp4", Path(tmp) / "pattern-1s.mp4"
        write_pattern_file(config, pattern, duration_s=args.seconds)
        write_pattern_file(config, pattern_short, duration_s=SHORT_S)
        files.append((f"pattern {args.seconds:g} s", pattern, pattern_short, args.seconds,
                      args.plugin))  # fmt: skip
        if CLIP.is_file() and not args.no_clip:
            real, real_short = Path(tmp) / "real.mp4", Path(tmp) / "real-1s.mp4"
            transcode_clip(CLIP, real, args.clip_seconds)
            transcode_clip(CLIP, real_short, SHORT_S)
            files.append((f"talking head {args.clip_seconds:g} s", real, real_short,
                          args.clip_seconds, clip_plugins))  # fmt: skip
        elif not args.no_clip:
            print(f"(real clip skipped: {CLIP} is absent)")
        print(
            f"{'file (640x480 30fps H.264+48k AAC)':<34} {'dec s':>7} {'anal s':>8} "
            f"{'dec 1s':>7} {'anal 1s':>8} {'raw':>6} {'steady':>7} {'anl MiB':>8} {'x rt':>7}"
        )
        for label, full, short, seconds, plugins in files:
            measure(label, full, short, seconds, plugins, args.repeat, other)
        print(
            f"the pattern's pictures have {x264_slices(pattern)} slices (x264's threads here); "
            f"the plain decode spreads them over every CPU, analyze over {_slice_threads()}"
        )
    print(
        "raw = decode wall / analyze wall; steady = the same with the 1 s file's times"
        " subtracted from both (start-up excluded; target >= 0.8)"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
