"""Benchmark: `avsync` inference time per batch of 1, 8, 64 and 256 streams' windows.

Each window is 2 s of 640x480 30 fps video with 48 kHz audio, cut by the real windower from the
pattern source (flash method) and, with --motion, from a talking-head clip with face detection
(motion method); --auto times ``method = "auto"`` on the talking-head windows (not pattern-like,
so flash, then clap, then motion all look at them). The batch holds windows of distinct streams,
as the runtime builds it.

    python benchmarks/bench_avsync_batch.py [--device cpu|cuda] [--sizes 1 8 64 256] [--repeat 5]
        [--threads N] [--motion] [--auto] [--no-faces] [--no-flash]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from crossmodald.ingest import create_source
from crossmodald.ingest.pacing import VirtualPacer
from crossmodald.media import NS_PER_S, AudioChunk, VideoFrame, Window
from crossmodald.runtime.device import configure_threads, resolve_device
from crossmodald.service.config import MediaSourceConfig, PatternSourceConfig
from crossmodald.window import Windower
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory, AvSyncPlugin

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "media" / "talkinghead_hdtf_aoc_25fps.mp4"


async def windows_of(config: PatternSourceConfig | MediaSourceConfig, count: int) -> list[Window]:
    source = create_source(config, clock=VirtualPacer())
    info = await source.open()
    windower = Windower(
        config.name,
        length_ns=2 * NS_PER_S,
        hop_ns=NS_PER_S // 2,
        lateness_ns=0,
        has_video=info.has_video,
        has_audio=info.has_audio,
        sample_rate=info.sample_rate,
        frame_rate=info.frame_rate,
        clock=info.clock,
    )
    out: list[Window] = []
    async for item in source:
        if isinstance(item, VideoFrame | AudioChunk):
            out.extend(windower.push(item, 0))
        if len(out) >= count:
            break
    await source.aclose()
    return out[:count]


def time_batches(
    plugin: AvSyncPlugin, pool: list[Window], sizes: list[int], repeat: int, device: str
) -> list[float]:
    """Prints and returns the median milliseconds per batch of each size (the plugin's
    ``analyze``: what ``infer`` runs on the batch's windows, with no shared face tracks)."""
    medians: list[float] = []
    for size in sizes:
        batch = [dataclasses.replace(pool[i % len(pool)], stream=f"s{i}") for i in range(size)]
        plugin.analyze(batch)  # warm-up
        times = []
        for _ in range(repeat):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            plugin.analyze(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append((time.perf_counter() - started) * 1000.0)
        median = statistics.median(times)
        medians.append(median)
        print(
            f"  batch {size:4d}: {median:9.1f} ms per batch, {median / size:7.2f} ms per window, "
            f"{size * 0.5 / (median / 1000):8.0f} streams' worth of 0.5 s hops per second"
        )
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--motion", action="store_true", help="also time the motion method")
    parser.add_argument(
        "--auto", action="store_true", help="also time method=auto on non-pattern windows"
    )
    parser.add_argument(
        "--no-faces", action="store_true", help="motion and auto without face detection"
    )
    parser.add_argument("--no-flash", action="store_true", help="skip the flash method timing")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: the daemon's, half the CPUs)"
    )
    args = parser.parse_args()
    configure_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    pattern = PatternSourceConfig(
        type="pattern", name="p", audio_lead_ms=40.0, duration_s=12.0, realtime=False
    )
    if not args.no_flash:
        pool = asyncio.run(windows_of(pattern, 16))
        plugin = AvSyncFactory.create(
            AvSyncConfig(type="avsync", method="flash", face_detection=False), device
        )
        print("flash method (pattern, 640x480 30 fps, 48 kHz):")
        time_batches(plugin, pool, args.sizes, args.repeat, device)
    if not (args.motion or args.auto):
        return 0
    if not CLIP.is_file():
        print(f"(motion and auto skipped: {CLIP} is absent)")
        return 0
    clip = MediaSourceConfig(type="media", name="c", url=str(CLIP), realtime=False)
    pool = asyncio.run(windows_of(clip, 12))
    methods = [m for m, on in (("motion", args.motion), ("auto", args.auto)) if on]
    faces = not args.no_faces
    for method in methods:
        config = AvSyncConfig(type="avsync", method=method, face_detection=faces)
        plugin = AvSyncFactory.create(config, device)
        print(
            f"{method} method (talking head 512x512 25 fps, 16 kHz, "
            f"face detection {'on' if faces else 'off'}):"
        )
        time_batches(plugin, pool, args.sizes, args.repeat, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
