"""Benchmark: `crossmodald analyze` throughput against a plain PyAV decode of the same file.

Issue 2's target: analyze runs at >= 0.5 of decode-only speed on a 640x480 30 fps + 48 kHz file.
Both run in fresh subprocesses, back to back in the same run, best of N; the ratio printed is
decode-only wall time / analyze wall time (1.0 = as fast as decoding alone). Peak memory is each
subprocess's maximum resident set size.

Files: a 60 s pattern file (H.264 + AAC, written by the project), and, when ../shared/media is
there, a real talking-head clip transcoded to 640x480 30 fps + 48 kHz AAC and looped to 60 s.

    python benchmarks/bench_analyze.py [--repeat 3] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

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

STARTUP_ONLY = (
    "import torch, crossmodald.cli, crossmodald.service.daemon, crossmodald_plugins.avsync"
)


def run_measured(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one subprocess."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv}: failed:\n{err}")
    return wall, usage.ru_maxrss / 1024.0


def transcode_clip(src: Path, dst: Path, seconds: float) -> None:
    """The real clip as 640x480 30 fps H.264 + 48 kHz AAC, looped to `seconds`."""
    with av.open(str(src)) as inp:
        vframes = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    with av.open(str(src)) as inp:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=48000)
        chunks = []
        for frame in inp.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray()[0])
        audio = np.concatenate(chunks)
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 640, 480, "yuv420p"
        vs.options = {"preset": "veryfast"}
        aus = out.add_stream("aac", rate=48000, layout="mono")
        n_frames = int(seconds * 30)
        for i in range(n_frames):
            src_index = int(i * 25 / 30) % len(vframes)
            frame = av.VideoFrame.from_ndarray(vframes[src_index], format="rgb24")
            frame = frame.reformat(width=640, height=480, format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, 30)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        total = int(seconds * 48000)
        looped = np.resize(audio, total).astype(np.float32)
        for start in range(0, total, 1024):
            block = looped[start : start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate = 48000
            frame.pts = start
            for packet in aus.encode(frame):
                out.mux(packet)
        for packet in aus.encode(None):
            out.mux(packet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files: list[tuple[str, Path]] = []
        pattern = Path(tmp) / "pattern.mp4"
        config = PatternSourceConfig(type="pattern", name="bench", audio_lead_ms=40.0)
        write_pattern_file(config, pattern, duration_s=args.seconds)
        files.append(("pattern 640x480 30fps H.264 + 48k AAC", pattern))
        if CLIP.is_file():
            real = Path(tmp) / "real.mp4"
            transcode_clip(CLIP, real, args.seconds)
            files.append(("talking head 640x480 30fps H.264 + 48k AAC", real))
        else:
            print(f"(real clip skipped: {CLIP} is absent)")
        print(f"{args.seconds:g} s files, best of {args.repeat}, cpu count {os.cpu_count()}")
        startup = min(
            run_measured([sys.executable, "-c", STARTUP_ONLY])[0] for _ in range(args.repeat)
        )
        print(f"process start-up (python + torch + crossmodald imports): {startup:.2f} s")
        print(
            f"{'file':<44} {'decode s':>9} {'analyze s':>10} {'ratio':>6} {'ratio w/o start':>16} "
            f"{'decode MiB':>11} {'analyze MiB':>12} {'x realtime':>11}"
        )
        for label, path in files:
            decode = [
                run_measured([sys.executable, "-c", DECODE_ONLY, str(path)])
                for _ in range(args.repeat)
            ]
            analyze = [
                run_measured(
                    [sys.executable, "-m", "crossmodald", "analyze", str(path), "--format", "jsonl"]
                )
                for _ in range(args.repeat)
            ]
            d_wall = min(w for w, _ in decode)
            a_wall = min(w for w, _ in analyze)
            steady = max(a_wall - startup, 1e-3)
            print(
                f"{label:<44} {d_wall:9.2f} {a_wall:10.2f} {d_wall / a_wall:6.2f} "
                f"{d_wall / steady:16.2f} "
                f"{max(m for _, m in decode):11.0f} {max(m for _, m in analyze):12.0f} "
                f"{args.seconds / a_wall:11.1f}"
            )
    print(
        "ratio = plain PyAV decode wall time / `crossmodald analyze` wall time (target >= 0.5);"
        " 'w/o start' subtracts the fixed process start-up"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
