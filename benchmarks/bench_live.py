"""Benchmark: live `crossmodald run` with N pattern streams at 640x480 / 30 fps + 48 kHz.

Starts the real daemon as a subprocess on a loopback port, subscribes over SSE, and prints:
- real-time factor per stream (media seconds advanced / wall seconds),
- CPU per stream (daemon process CPU seconds / wall seconds / streams),
- event latency from the moment a window's media is complete (the window closes on the
  watermark; lateness is set to 0 here, so that is when its last media arrived) to the
  `sync.offset` event reaching the SSE subscriber, p50 / p99 / max (both ends read the
  system-wide CLOCK_MONOTONIC),
- backlog: windows dropped by the runtime, and latency p99 in the last third against the first.

    python benchmarks/bench_live.py [--streams 8] [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchkit import cpu_seconds, rss_mib


def config_text(streams: int) -> str:
    parts = []
    for i in range(streams):
        parts.append(
            f'[[sources]]\ntype = "pattern"\nname = "cam{i}"\nwidth = 640\nheight = 480\n'
            f"fps = 30\nsample_rate = 48000\naudio_lead_ms = {10 * i}.0\n"
        )
    parts.append("[window]\nlength_s = 2.0\nhop_s = 0.5\nlateness_s = 0.0\n")
    parts.append('[[plugins]]\ntype = "avsync"\n')
    parts.append("[api]\nport = 0\n")
    return "\n".join(parts)


async def streams_state(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    async with http.get(f"{base}/v1/streams") as response:
        return {s["name"]: s for s in (await response.json())["streams"]}


async def metric_sums(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """Prometheus samples summed over their labels, by metric name."""
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


async def run(streams: int, seconds: float, warmup: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(config_text(streams))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crossmodald", "run", "--config", str(config),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        port = None
        while port is None:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise SystemExit("daemon exited before listening")
            found = re.search(r"API listening on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None

        async def drain_stderr() -> None:
            assert proc.stderr is not None
            while await proc.stderr.readline():
                pass

        drainer = asyncio.create_task(drain_stderr())
        base = f"http://127.0.0.1:{port}"
        latencies: list[tuple[float, float]] = []  # (wall time, latency ms)
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(warmup)
            before = await streams_state(http, base)
            metrics0 = await metric_sums(http, base)
            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()

            async def subscribe() -> None:
                async with http.get(f"{base}/v1/events", params={"type": "sync.offset"}) as resp:
                    async for raw in resp.content:
                        text = raw.decode()
                        if text.startswith("data:"):
                            now = time.monotonic_ns()
                            event = json.loads(text[5:])
                            closed = event.get("closed_mono_ns")
                            if closed:
                                latencies.append((time.monotonic(), (now - closed) / 1e6))

            sub = asyncio.create_task(subscribe())
            await asyncio.sleep(seconds)
            sub.cancel()
            cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
            after = await streams_state(http, base)
            rss = rss_mib(proc.pid)
            metrics1 = await metric_sums(http, base)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        drainer.cancel()

    wall = wall1 - wall0
    rtfs = []
    for name, state in after.items():
        advanced = state["media_time_s"] - before[name]["media_time_s"]
        rtfs.append(advanced / wall)

    def delta(name: str) -> float:
        return metrics1.get(name, 0.0) - metrics0.get(name, 0.0)

    windows = delta("crossmodald_plugin_window_latency_seconds_count")
    runtime_ms = 1000 * delta("crossmodald_plugin_window_latency_seconds_sum") / max(windows, 1)
    dropped = int(delta("crossmodald_plugin_windows_dropped_total"))
    values = sorted(ms for _, ms in latencies)
    third = len(latencies) // 3
    first = sorted(ms for _, ms in latencies[:third])
    last = sorted(ms for _, ms in latencies[-third:])

    def pct(data: list[float], q: float) -> float:
        return data[min(len(data) - 1, int(q * len(data)))]

    print(f"{streams} pattern streams, 640x480 30 fps + 48 kHz, avsync, {wall:.0f} s measured")
    print(
        f"  real-time factor per stream: min {min(rtfs):.3f} median {statistics.median(rtfs):.3f}"
    )
    print(
        f"  daemon CPU: {100 * (cpu1 - cpu0) / wall:.0f} % of one core in all, "
        f"{100 * (cpu1 - cpu0) / wall / streams:.1f} % per stream; RSS {rss:.0f} MiB"
    )
    print(f"  events received: {len(values)} (expected about {int(streams * wall / 0.5)})")
    print(
        f"  latency window complete -> SSE subscriber: p50 {pct(values, 0.5):.1f} ms, "
        f"p99 {pct(values, 0.99):.1f} ms, max {values[-1]:.1f} ms"
    )
    print(f"  runtime part (window closed -> plugin results): mean {runtime_ms:.1f} ms")
    print(f"  windows dropped on overload: {dropped}")
    print(
        f"  backlog: p99 first third {pct(first, 0.99):.1f} ms, last third {pct(last, 0.99):.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(run(args.streams, args.seconds, args.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
