"""Memory of a process that runs stream after stream: does it come back when a stream ends?

A daemon whose publishers come and go, and ``crossmodald eval`` over a folder of clips, open
many streams over their life. This runs streams one after another through the daemon's own
pipeline (:func:`crossmodald.harness.run_plugins`, ``streams_at_once=1``), each an 8 s 640x480
30 fps pattern file with the ``avsync`` plugin, and prints the process's resident memory after
the first stream and after every ``--every`` more, with the growth per ended stream between the
first reading and the last (the baseline is the same process after one stream; the ratio is
last over first).

    python benchmarks/bench_stream_memory.py [--streams 40] [--every 10] [--plugin avsync]

Measured on this 2-core machine (``--streams 120 --every 20``): before abb9160 and the windower's
free on flush (an ended stream kept its decoders until the cyclic garbage collector ran, and its
audio buffer for good) the process grew by 74 MiB per ended stream, 2.6 GB after 20 streams and
10.0 GB after 120; since, 0.36 MiB per stream (0.62 GB after 20, 0.65 GB after 120).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchkit import memory_growth, rss_mib

from crossmodald.harness import run_plugins_sync
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--plugin", default="avsync")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    pid = os.getpid()
    readings: list[tuple[int, float]] = []
    ended = 0

    def listen(envelope: object) -> None:
        nonlocal ended
        if getattr(envelope, "type", None) == "stream.end":
            ended += 1
            if ended == 1 or ended % args.every == 0:
                readings.append((ended, rss_mib(pid)))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pattern.mp4"
        write_pattern_file(
            PatternSourceConfig(type="pattern", name="bench"), path, duration_s=args.seconds
        )
        sources = [
            {"type": "media", "name": f"s{i}", "url": str(path), "realtime": False}
            for i in range(args.streams)
        ]
        result = run_plugins_sync(
            sources,
            [{"type": args.plugin, "device": "cpu"}],
            on_event=listen,
            streams_at_once=1,
        )
    if result.code != 0:
        raise SystemExit("; ".join(result.failures()))
    print(f"{args.streams} streams of {args.seconds:g} s one after another, plugin {args.plugin}")
    for n, mib in readings:
        print(f"  after {n:4d} streams: {mib:7.0f} MiB")
    print(memory_growth(readings, "stream"))


if __name__ == "__main__":
    main()
