"""Benchmark: MediaSource against a plain PyAV decode loop (not collected by pytest).

Decodes a 60 s 640x480 30 fps H.264 + AAC pattern file and prints wall and CPU seconds (best of
N) for: a plain ``container.decode`` loop (PyAV's defaults: slice threads on every CPU), the same
on one thread and with frame threads, and MediaSource as ``analyze`` reads it (realtime=False:
slice threads on half the CPUs, one on 2 or 3) and with 1 and 2 slice threads. The pattern
file's pictures have as many slices as the writing machine's x264 had threads (printed).

Then the source's two threads' work each alone, one after the other on one thread (no loop, no
contention): the decoding thread's (demux, decode, timestamps) and the finishing thread's (luma
planes, thumbnails, mono audio). Their sum is the least CPU the source spends on the file.

    python benchmarks/bench_media_decode.py [--repeat 5] [--file /tmp/pattern60.mp4]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
from benchkit import x264_slices

from crossmodald.ingest import media
from crossmodald.ingest.media import MediaSource, _finish
from crossmodald.ingest.pacing import VirtualPacer
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import MediaSourceConfig, PatternSourceConfig


def plain(path: Path, threads: str | None) -> None:
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        if threads == "one":
            ctx.thread_count = 1
        elif threads == "frame":
            ctx.thread_type = "AUTO"
        for _ in container.decode(video=0, audio=0):
            pass


def through_source(path: Path, slice_threads: int | None) -> None:
    async def run() -> None:
        config = MediaSourceConfig(type="media", name="bench", url=str(path), realtime=False)
        source = MediaSource(config, VirtualPacer())
        if slice_threads is not None:
            source._reader._slice_threads = slice_threads
        await source.open()
        async for _ in source:
            pass
        await source.aclose()

    asyncio.run(run())


def stages(path: Path) -> tuple[float, float]:
    """Seconds of the decoding thread's and of the finishing thread's work, each alone."""
    config = MediaSourceConfig(type="media", name="bench", url=str(path), realtime=False)
    reader = MediaSource(config, VirtualPacer())._reader
    reader.open()
    decoding = finishing = 0.0
    try:
        ended = False
        while not ended:
            began = time.perf_counter()
            batch = reader.read_batch()
            decoding += time.perf_counter() - began
            ended = batch[2]
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            done.set_result(batch)
            began = time.perf_counter()
            _finish(done)
            finishing += time.perf_counter() - began
    finally:
        reader.close()
    return decoding, finishing


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
    print(
        f"{x264_slices(path)} slices a picture; {media._slice_threads()} slice threads offline here"
    )
    cases: dict[str, Callable[[], Any]] = {
        "plain decode loop": lambda: plain(path, None),
        "plain decode loop, one thread": lambda: plain(path, "one"),
        "plain decode loop, frame threads": lambda: plain(path, "frame"),
        "MediaSource offline (as analyze)": lambda: through_source(path, None),
        "MediaSource, 1 slice thread": lambda: through_source(path, 1),
        "MediaSource, 2 slice threads": lambda: through_source(path, 2),
    }
    results = {name: best_of(args.repeat, fn) for name, fn in cases.items()}
    base_wall, base_cpu = results["plain decode loop"]
    for name, (wall, cpu) in results.items():
        print(
            f"{name:40s} wall {wall:6.3f} s ({wall / base_wall:4.2f}x)"
            f"   cpu {cpu:6.3f} s ({cpu / base_cpu:4.2f}x)"
        )
    alone = [stages(path) for _ in range(args.repeat)]
    decoding, finishing = min(a for a, _ in alone), min(b for _, b in alone)
    print(
        f"alone, one thread: the decoding thread's work {decoding:.3f} s "
        f"({decoding / base_wall:4.2f}x), the finishing thread's {finishing:.3f} s"
    )


if __name__ == "__main__":
    main()
