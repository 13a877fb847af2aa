"""Benchmark: MediaSource against a plain PyAV decode loop (not collected by pytest).

Decodes a 60 s 640x480 30 fps H.264 + AAC pattern file and prints wall and CPU seconds (best of
N) for: a plain ``container.decode`` loop, the same with frame threads, MediaSource as the daemon
runs it (realtime=False, thread_type AUTO) and MediaSource with decoder threads off.

    python benchmarks/bench_media_decode.py [--repeat 5] [--file /tmp/pattern60.mp4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

from crossmodald.ingest.media import MediaSource
from crossmodald.ingest.pacing import VirtualPacer
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import MediaSourceConfig, PatternSourceConfig


def plain(path: Path, threads: bool) -> None:
    with av.open(str(path)) as container:
        if threads:
            container.streams.video[0].codec_context.thread_type = "AUTO"
        for _ in container.decode(video=0, audio=0):
            pass


def through_source(path: Path, options: dict[str, str]) -> None:
    async def run() -> None:
        config = MediaSourceConfig(
            type="media", name="bench", url=str(path), realtime=False, options=options
        )
        source = MediaSource(config, VirtualPacer())
        await source.open()
        async for _ in source:
            pass
        await source.aclose()

    asyncio.run(run())


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--file", type=Path, default=None)
    args = parser.parse_args()
    path: Path = args.file or Path(tempfile.gettempdir()) / "crossmodald-bench-pattern60.mp4"
    if not path.exists():
        config = PatternSourceConfig(type="pattern", name="bench")
        began = time.perf_counter()
        write_pattern_file(config, path, duration_s=60.0)
        print(f"wrote {path} in {time.perf_counter() - began:.1f} s")
    cases: dict[str, Callable[[], Any]] = {
        "plain decode loop": lambda: plain(path, threads=False),
        "plain decode loop, thread_type AUTO": lambda: plain(path, threads=True),
        "MediaSource (thread_type AUTO)": lambda: through_source(path, {}),
        "MediaSource, decoder threads=1": lambda: through_source(path, {"threads": "1"}),
    }
    results = {name: best_of(args.repeat, fn) for name, fn in cases.items()}
    base_wall, base_cpu = results["plain decode loop"]
    for name, (wall, cpu) in results.items():
        print(
            f"{name:40s} wall {wall:6.3f} s ({wall / base_wall:4.2f}x)"
            f"   cpu {cpu:6.3f} s ({cpu / base_cpu:4.2f}x)"
        )


if __name__ == "__main__":
    main()
