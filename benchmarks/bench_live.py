"""Benchmark: live `crossmodald run` with N pattern streams at 640x480 / 30 fps + 48 kHz.

Starts the real daemon as a subprocess on a loopback port, subscribes over SSE, and prints:
- real-time factor per stream (media seconds advanced / wall seconds),
- CPU per stream (daemon process CPU seconds / wall seconds / streams),
- event latency from the moment a window's media is complete (the window closes on the
  watermark; lateness is set to 0 here, so that is when its last media arrived) to the
  `sync.offset` event reaching the SSE subscriber, p50 / p99 / max (both ends read the
  system-wide CLOCK_MONOTONIC),
- backlog: windows dropped by the runtime, and latency p99 in the last third against the first.

With ``--compare-tree PATH`` (another checkout, e.g. an export of main) the same measurement
also runs with that tree's ``daemon/`` and ``plugins/`` first on ``PYTHONPATH``. The runs
alternate, the other tree first, ``--rounds`` times, so before and after share the machine's
load; each tree's latencies are pooled over its rounds.

    python benchmarks/bench_live.py [--streams 8] [--seconds 40] [--compare-tree ../main]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from benchkit import cpu_seconds, rss_mib, tree_env


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


async def run(streams: int, seconds: float, warmup: float, tree: Path | None) -> Measured:
    """One daemon run: start it, measure ``seconds`` after ``warmup``, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(config_text(streams))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crossmodald", "run", "--config", str(config),
            stderr=asyncio.subprocess.PIPE, env=tree_env(tree),
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

    return Measured(
        wall=wall,
        rtfs=rtfs,
        cpu=cpu1 - cpu0,
        rss=rss,
        latencies=latencies,
        windows=delta("crossmodald_plugin_window_latency_seconds_count"),
        runtime_s=delta("crossmodald_plugin_window_latency_seconds_sum"),
        dropped=int(delta("crossmodald_plugin_windows_dropped_total")),
    )


@dataclass
class Measured:
    """What one or more runs of one tree measured."""

    wall: float
    rtfs: list[float]
    cpu: float
    rss: float
    latencies: list[tuple[float, float]]  # (wall time, latency ms), in arrival order
    windows: float
    runtime_s: float
    dropped: int

    def add(self, other: Measured) -> None:
        """Pool another run of the same tree into this one."""
        self.wall += other.wall
        self.rtfs += other.rtfs
        self.cpu += other.cpu
        self.rss = max(self.rss, other.rss)
        self.latencies += other.latencies
        self.windows += other.windows
        self.runtime_s += other.runtime_s
        self.dropped += other.dropped


def pct(data: list[float], q: float) -> float:
    return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


def report(m: Measured, streams: int, rounds: int, label: str) -> None:
    values = sorted(ms for _, ms in m.latencies)
    third = len(m.latencies) // 3
    first = sorted(ms for _, ms in m.latencies[:third])
    last = sorted(ms for _, ms in m.latencies[-third:])
    runtime_ms = 1000 * m.runtime_s / max(m.windows, 1)
    print(
        f"{label}: {streams} pattern streams, 640x480 30 fps + 48 kHz, avsync, "
        f"{m.wall:.0f} s measured ({rounds} run{'s' if rounds > 1 else ''})"
    )
    print(
        f"  real-time factor per stream: min {min(m.rtfs):.3f} "
        f"median {statistics.median(m.rtfs):.3f}"
    )
    print(
        f"  daemon CPU: {100 * m.cpu / m.wall:.0f} % of one core in all, "
        f"{100 * m.cpu / m.wall / streams:.1f} % per stream; RSS {m.rss:.0f} MiB"
    )
    print(f"  events received: {len(values)} (expected about {int(streams * m.wall / 0.5)})")
    if values:
        print(
            f"  latency window complete -> SSE subscriber: p50 {pct(values, 0.5):.1f} ms, "
            f"p90 {pct(values, 0.9):.1f} ms, p99 {pct(values, 0.99):.1f} ms, "
            f"max {values[-1]:.1f} ms"
        )
    print(f"  runtime part (window closed -> plugin results): mean {runtime_ms:.1f} ms")
    print(f"  windows dropped on overload: {m.dropped}")
    print(
        f"  backlog: p99 first third {pct(first, 0.99):.1f} ms, last third {pct(last, 0.99):.1f} ms"
    )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--compare-tree", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=1, help="runs per tree (alternating)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    other = args.compare_tree.resolve() if args.compare_tree else None
    if other is not None and not (other / "daemon" / "crossmodald").is_dir():
        parser.error(f"--compare-tree {other}: no daemon/crossmodald there")
    print(f"load average before: {load()}")
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if other is not None:
        trees.insert(0, (f"other tree {other}", other))
    pooled: dict[str, Measured] = {}
    for _ in range(args.rounds):
        for label, tree in trees:
            measured = asyncio.run(run(args.streams, args.seconds, args.warmup, tree))
            values = sorted(ms for _, ms in measured.latencies)
            # Each run's own figures: the pooled p99 rests on a few hops, so show the spread.
            print(
                f"  run ({label}): p50 {pct(values, 0.5):.1f} ms, p99 {pct(values, 0.99):.1f} ms, "
                f"max {values[-1] if values else float('nan'):.1f} ms; load {load()}",
                flush=True,
            )
            if label in pooled:
                pooled[label].add(measured)
            else:
                pooled[label] = measured
    for label, _ in trees:
        report(pooled[label], args.streams, args.rounds, label)
    print(f"load average after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
