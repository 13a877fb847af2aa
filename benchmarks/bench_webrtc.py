"""Benchmark: N concurrent WHIP publishers (640x480 30 fps VP8 or H.264 + Opus) into one daemon.

Starts the real daemon (`crossmodald run`) as a subprocess with avsync, WHIP on 127.0.0.1 and
ICE on loopback only; the publishers (aiortc, pre-encoded packets: no encoding cost) run in this
process, alternating VP8 and H.264. For each N it prints:

- real time: per stream, video frames received / frames sent at 30 fps over the measured span,
  and media seconds advanced / wall seconds (a stream "stays real-time" at >= 0.95 on both with
  no frames dropped by the receive queue),
- CPU per stream (daemon process CPU seconds / wall seconds / N) and memory per stream (daemon
  RSS growth over the idle daemon / N),
- event latency from window completion (``closed_mono_ns``) to the data-channel message reaching
  the publisher, p50 / p99 (both ends read the system-wide CLOCK_MONOTONIC).

    python benchmarks/bench_webrtc.py [--streams 2 4 6 8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchkit import cpu_seconds, daemon_running, rss_mib, streams, whip_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ingest"))

from whipkit import EncodedMedia, Publisher, encode_pattern, publish

FPS = 30


async def run_n(
    n: int, seconds: float, media: dict[str, EncodedMedia], port: int
) -> dict[str, Any]:
    publishers: list[Publisher] = []
    config = whip_config(port, webrtc=f"max_streams = {max(n, 1)}\n", avsync='method = "flash"\n')
    async with daemon_running(config, port) as (proc, base), aiohttp.ClientSession() as http:
        try:
            idle_rss = rss_mib(proc.pid)
            for i in range(n):
                codec = "vp8" if i % 2 == 0 else "h264"
                publishers.append(await publish(base, f"pub{i}-{codec}", media[codec], loop=True))
            await asyncio.sleep(6.0)  # connect, first SRs, first windows
            before = await streams(http, base)
            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
            marks = [len(p.messages) for p in publishers]
            await asyncio.sleep(seconds)
            wall = time.monotonic() - wall0
            cpu = cpu_seconds(proc.pid) - cpu0
            after = await streams(http, base)
            rss = rss_mib(proc.pid)
        finally:
            for pub in publishers:
                try:
                    await pub.close()
                except Exception as exc:  # report and go on: the daemon is stopped next
                    print(f"close failed: {exc}", file=sys.stderr)
    latencies: list[float] = []
    realtime = 0
    rows = []
    for pub, mark in zip(publishers, marks, strict=True):
        for received_ns, text in pub.messages[mark:]:
            event = json.loads(text)
            if event["type"] == "sync.offset" and event.get("closed_mono_ns"):
                latencies.append((received_ns - event["closed_mono_ns"]) / 1e6)
    for name in sorted(after):
        a, b = after[name], before.get(name, {})
        frames = a["video_frames"] - b.get("video_frames", 0)
        media_s = (a["media_time_s"] or 0) - (b.get("media_time_s") or 0)
        frame_ratio = frames / (FPS * wall)
        media_ratio = media_s / wall
        dropped = a.get("windows", {}).get("video_overflow", 0)
        ok = frame_ratio >= 0.95 and media_ratio >= 0.95 and not dropped
        realtime += ok
        rows.append((name, frame_ratio, media_ratio, a["faults"], ok))
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))]
            if latencies
            else float("nan")
        )

    return {
        "n": n,
        "realtime": realtime,
        "cpu_per_stream_pct": 100 * cpu / wall / max(n, 1),
        "cpu_total_pct": 100 * cpu / wall,
        "mem_per_stream_mib": (rss - idle_rss) / max(n, 1),
        "latency_p50_ms": pct(0.5),
        "latency_p99_ms": pct(0.99),
        "latency_n": len(latencies),
        "rows": rows,
        "median_latency": statistics.median(latencies) if latencies else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--port", type=int, default=18751)
    args = parser.parse_args()
    print("encoding 640x480 30 fps VP8, H.264 and Opus (2 s, looped) ...", flush=True)
    media = {
        codec: encode_pattern(
            duration_s=2.0, width=640, height=480, video_codec=codec, bitrate=1_000_000
        )
        for codec in ("vp8", "h264")
    }
    print(f"cores: {os.cpu_count()}")
    print("N  real-time  CPU/stream  CPU total  MiB/stream  latency p50/p99 ms (events)")
    for n in args.streams:
        r = await run_n(n, args.seconds, media, args.port)
        print(
            f"{r['n']:<2} {r['realtime']:>3}/{r['n']:<5} {r['cpu_per_stream_pct']:>8.1f}% "
            f"{r['cpu_total_pct']:>8.1f}% {r['mem_per_stream_mib']:>10.1f} "
            f"{r['latency_p50_ms']:>9.1f} / {r['latency_p99_ms']:<7.1f} ({r['latency_n']})",
            flush=True,
        )
        for name, frames, media_ratio, faults, ok in r["rows"]:
            print(
                f"     {name:<12} frames {frames:.3f} media {media_ratio:.3f} "
                f"faults {faults} {'ok' if ok else 'BEHIND'}"
            )


if __name__ == "__main__":
    asyncio.run(main())
