"""Diagnostic: how much a Python thread that holds the GIL slows a PyAV decoding thread.

PyAV lets go of the GIL in every demux and decode call and must win it back each time; a thread
running pure Python keeps it for up to the interpreter's switch interval. This decodes the first
``--items`` frames and audio chunks of a 640x480 30 fps pattern file alone, then beside a thread
that spins in Python, at each switch interval given, and prints the seconds and the slowdown
(the baseline is the same decode alone, in the same run).

    python benchmarks/bench_gil_decode.py [--items 6000] [--intervals 0.005 0.001 0.0002]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig


def decode(path: Path, items: int) -> float:
    """Seconds to demux and decode ``items`` frames and chunks on one decoder thread."""
    started = time.perf_counter()
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.codec_context.thread_count = 1  # as the media source decodes VGA
        n = 0
        for packet in container.demux(video, container.streams.audio[0]):
            for _ in packet.decode():
                n += 1
                if n >= items:
                    return time.perf_counter() - started
    return time.perf_counter() - started


def beside_spinner(path: Path, items: int) -> float:
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for _ in range(1000):
                x += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        return decode(path, items)
    finally:
        stop.set()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=6000)
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.005, 0.001, 0.0002])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pattern.mp4"
        config = PatternSourceConfig(type="pattern", name="gil")
        write_pattern_file(config, path, duration_s=args.items / 77 + 5)  # ~77 items a second
        default = sys.getswitchinterval()
        try:
            for interval in args.intervals:
                sys.setswitchinterval(interval)
                alone = decode(path, args.items)
                busy = beside_spinner(path, args.items)
                print(
                    f"switch interval {interval * 1000:5.2f} ms: alone {alone:6.2f} s, beside a "
                    f"Python thread {busy:7.2f} s ({busy / alone:6.1f}x)"
                )
        finally:
            sys.setswitchinterval(default)


if __name__ == "__main__":
    main()
