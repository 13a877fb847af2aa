"""Soak: a bounded run of the real daemon under churning subscribers; memory flat, no leaks.

Starts ``crossmodald run`` as a subprocess on a loopback port with N real-time pattern streams
and the avsync plugin, then keeps M event subscribers joining and leaving (SSE and WebSocket,
random filters, each staying 1-8 s). The daemon's own ``/metrics`` is sampled every few seconds
(resident memory, open file descriptors, asyncio tasks, threads, subscribers). At the end every
subscriber leaves, the daemon is sampled once more, then stopped with SIGTERM.

Checks (each printed with its figures; the exit code is 1 if any fails):
- memory flat: median RSS of the last quarter minus the median of the second quarter (the first
  quarter is warm-up) below ``--max-growth-mib``;
- no task or fd leak: with every subscriber gone, asyncio tasks and open fds are back to what
  they were before the first subscriber joined;
- every stream ran the whole time (its media clock advanced at real time) and nothing failed;
- SIGTERM: exit code 0 within the stop timeout.

    python benchmarks/soak.py                  # 10 minutes, 4 streams, 20 subscribers
    python benchmarks/soak.py --duration-s 60  # the short variant (tests/test_soak.py runs it)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@dataclass
class Sample:
    t_s: float
    rss_bytes: float
    fds: float
    tasks: float
    threads: float
    subscribers: float
    published: float
    media_s: dict[str, float]


@dataclass
class ClientStats:
    connects: int = 0
    events: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(streams: int, port: int, plugin: str, width: int, height: int) -> str:
    parts = []
    for i in range(streams):
        parts.append(
            f'[[sources]]\ntype = "pattern"\nname = "soak{i}"\nwidth = {width}\n'
            f"height = {height}\nfps = 30\nsample_rate = 48000\n"
            f"audio_lead_ms = {10 * i}.0\nseed = {i}\n"
        )
    parts.append("[window]\nlength_s = 2.0\nhop_s = 0.5\nlateness_s = 0.2\n")
    if plugin != "none":
        parts.append(f'[[plugins]]\ntype = "{plugin}"\n')
    parts.append(f'[api]\nhost = "127.0.0.1"\nport = {port}\nreplay_size = 256\n')
    parts.append('[logging]\nlevel = "warning"\n')
    return "\n".join(parts)


def parse_metrics(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """Unlabelled samples by name, and each stream's media seconds (audio counter)."""
    plain: dict[str, float] = {}
    media: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        if labels is None:
            plain[name] = float(value)
        elif name == "crossmodald_stream_audio_seconds_total":
            stream = re.search(r'stream="([^"]*)"', labels)
            if stream:
                media[stream.group(1)] = float(value)
    return plain, media


async def scrape(session: aiohttp.ClientSession, base: str, t0: float) -> Sample:
    async with session.get(base + "/metrics") as resp:
        plain, media = parse_metrics(await resp.text())
    return Sample(
        t_s=time.monotonic() - t0,
        rss_bytes=plain.get("process_resident_memory_bytes", float("nan")),
        fds=plain.get("process_open_fds", float("nan")),
        tasks=plain.get("crossmodald_asyncio_tasks", float("nan")),
        threads=plain.get("crossmodald_threads", float("nan")),
        subscribers=plain.get("crossmodald_subscribers", float("nan")),
        published=plain.get("crossmodald_events_published_total", float("nan")),
        media_s=media,
    )


async def subscriber(
    index: int, base: str, stop: asyncio.Event, stats: ClientStats, rng: random.Random
) -> None:
    """Join, read for a while, leave, pause, again, until ``stop``."""
    filters = ["", "?type=sync.", "?type=stream.", f"?stream=soak{index % 4}", "?type=*"]
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            stay_s = rng.uniform(1.0, 8.0)
            query = rng.choice(filters)
            try:
                async with asyncio.timeout(stay_s):
                    if index % 2:
                        await _read_ws(session, base, query, stats)
                    else:
                        await _read_sse(session, base, query, stats)
            except TimeoutError:
                pass  # stayed as long as planned: leave
            except (aiohttp.ClientError, ConnectionError) as exc:
                stats.errors.append(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.uniform(0.05, 1.0)):
                    await stop.wait()


async def _read_sse(
    session: aiohttp.ClientSession, base: str, query: str, stats: ClientStats
) -> None:
    async with session.get(base + "/v1/events" + query) as resp:
        if resp.status != 200:
            stats.refused += 1
            return
        stats.connects += 1
        async for line in resp.content:
            if line.startswith(b"id: "):
                stats.events += 1


async def _read_ws(
    session: aiohttp.ClientSession, base: str, query: str, stats: ClientStats
) -> None:
    try:
        ws = await session.ws_connect(base.replace("http", "ws", 1) + "/v1/events/ws" + query)
    except aiohttp.WSServerHandshakeError:
        stats.refused += 1
        return
    stats.connects += 1
    try:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT and '"seq"' in message.data:
                stats.events += 1
    finally:
        await ws.close()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="crossmodald-soak-") as tmp:
        config = Path(tmp) / "soak.toml"
        config.write_text(
            config_text(args.streams, port, args.plugin, args.width, args.height), "utf-8"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crossmodald", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            return await _drive(args, proc, base)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _drive(
    args: argparse.Namespace, proc: asyncio.subprocess.Process, base: str
) -> dict[str, Any]:
    t0 = time.monotonic()
    samples: list[Sample] = []
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(120):
            while True:
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    raise RuntimeError(f"daemon exited early: {err.decode()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.2)
        await asyncio.sleep(args.settle_s)  # streams and plugin warm up before the baseline
        baseline = await scrape(session, base, t0)
        stop = asyncio.Event()
        stats = ClientStats()
        rng = random.Random(1234)
        clients = [
            asyncio.create_task(subscriber(i, base, stop, stats, random.Random(rng.random())))
            for i in range(args.subscribers)
        ]
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < args.duration_s:
            await asyncio.sleep(min(args.sample_s, args.duration_s - elapsed))
            samples.append(await scrape(session, base, t0))
            if args.verbose:
                s = samples[-1]
                print(
                    f"t={s.t_s:6.1f}s rss={s.rss_bytes / 2**20:7.1f} MiB fds={s.fds:4.0f} "
                    f"tasks={s.tasks:4.0f} subs={s.subscribers:3.0f} events={s.published:8.0f}",
                    flush=True,
                )
        stop.set()
        await asyncio.gather(*clients)
        # The daemon notices a departed SSE client at its next write: events flow all the time.
        after = await scrape(session, base, t0)
        for _ in range(40):
            if after.subscribers == 0 and after.tasks <= baseline.tasks:
                break
            await asyncio.sleep(0.25)
            after = await scrape(session, base, t0)
        wall_s = time.monotonic() - start
    stop_started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(proc.wait(), args.stop_timeout_s)
    except TimeoutError:
        code = None
    stop_s = time.monotonic() - stop_started
    stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
    return _report(args, baseline, samples, after, stats, wall_s, code, stop_s, stderr)


def _report(
    args: argparse.Namespace,
    baseline: Sample,
    samples: list[Sample],
    after: Sample,
    stats: ClientStats,
    wall_s: float,
    code: int | None,
    stop_s: float,
    stderr: str,
) -> dict[str, Any]:
    quarter = max(1, len(samples) // 4)
    early = samples[quarter : 2 * quarter] or samples[:1]
    late = samples[-quarter:]
    early_rss = statistics.median(s.rss_bytes for s in early) / 2**20
    late_rss = statistics.median(s.rss_bytes for s in late) / 2**20
    growth = late_rss - early_rss
    media_rates = {
        name: (after.media_s.get(name, 0.0) - baseline.media_s.get(name, 0.0))
        / max(after.t_s - baseline.t_s, 1e-9)
        for name in baseline.media_s
    }
    checks = {
        "memory_flat": growth < args.max_growth_mib,
        "no_task_leak": after.tasks <= baseline.tasks and after.subscribers == 0,
        "no_fd_leak": after.fds <= baseline.fds,
        "streams_real_time": len(media_rates) == args.streams
        and all(0.9 <= rate <= 1.1 for rate in media_rates.values()),
        "clients_ok": stats.connects > 0 and not stats.errors,
        "sigterm_exit_0": code == 0,
    }
    return {
        "duration_s": round(wall_s, 1),
        "streams": args.streams,
        "subscribers": args.subscribers,
        "plugin": args.plugin,
        "samples": len(samples),
        "rss_mib": {
            "baseline": round(baseline.rss_bytes / 2**20, 1),
            "second_quarter_median": round(early_rss, 1),
            "last_quarter_median": round(late_rss, 1),
            "growth": round(growth, 1),
            "max": round(max(s.rss_bytes for s in samples) / 2**20, 1),
        },
        "tasks": {
            "baseline": baseline.tasks,
            "max": max(s.tasks for s in samples),
            "after": after.tasks,
        },
        "fds": {"baseline": baseline.fds, "max": max(s.fds for s in samples), "after": after.fds},
        "threads": {"baseline": baseline.threads, "after": after.threads},
        "subscribers_max": max(s.subscribers for s in samples),
        "connects": stats.connects,
        "refused": stats.refused,
        "client_errors": stats.errors[:5],
        "events_received": stats.events,
        "events_published": after.published - baseline.published,
        "media_rate": {k: round(v, 3) for k, v in sorted(media_rates.items())},
        "sigterm": {"exit_code": code, "seconds": round(stop_s, 2)},
        "daemon_stderr_tail": stderr[-1500:],
        "checks": checks,
        "ok": all(checks.values()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--subscribers", type=int, default=20)
    p.add_argument("--plugin", default="avsync", help="plugin to run, or 'none'")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--settle-s", type=float, default=5.0, help="warm-up before the baseline")
    p.add_argument("--max-growth-mib", type=float, default=20.0)
    p.add_argument("--stop-timeout-s", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    p.add_argument("--verbose", action="store_true", help="print every sample")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if key != "daemon_stderr_tail":
                print(f"{key:>18}: {value}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
