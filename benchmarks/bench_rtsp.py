"""Measurement: the rtsp source against gst-rtsp-server on loopback (tests/ingest/rtspkit.py).

1. Offset: for each injected A/V offset, the server plays a pattern file (H.264 + AAC) and the
   source reads it for ``--seconds``; each flash/beep pair's measured audio lead (ms) on the
   RTCP clock against the injected one. ``--no-rtp-info`` makes the server leave RTP-Info out
   and start the video 0.5 s after the audio, so only the sender reports align the tracks.
2. Reconnect: the server is killed and started again on the same port, ``--restarts`` times;
   for each: how long the server was away (kill to listening again), when the source noticed
   the loss (after the kill), and from the loss to the new connection (``reconnected_s``) and
   to its first item (``outage_s``: the difference is the wait for every track's RTCP sender
   report).

    python benchmarks/bench_rtsp.py [--offsets -80 0 45] [--transport tcp] [--restarts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ingest"))

from ingestkit import Collected, beep_onsets, flash_onsets_s
from rtspkit import RtspServer, gi_python, pattern_mp4

from crossmodald.ingest.base import SourceFault
from crossmodald.ingest.rtsp import RtspSource, RtspSourceConfig
from crossmodald.media import VideoFrame

FPS = 30.0
RATE = 48000


def config(url: str, transport: str) -> RtspSourceConfig:
    return RtspSourceConfig.model_validate(
        {
            "type": "rtsp",
            "name": "cam",
            "url": url,
            "transport": transport,
            "timeout_s": 5,
            "reconnect_initial_s": 0.2,
            "reconnect_max_s": 1.0,
        }
    )


def leads_ms(got: Collected) -> list[float]:
    flashes = flash_onsets_s(got.frames, FPS)
    first, samples = got.audio(RATE)
    start_s, end_s = first / RATE, (first + len(samples)) / RATE
    beeps = [(first + i) / RATE for i in beep_onsets(samples)]
    covered = [f for f in flashes if start_s + 0.6 <= f <= end_s - 0.6]
    return [1000 * (f - min(beeps, key=lambda b, f=f: abs(b - f))) for f in covered]


async def offsets(args: argparse.Namespace, python: str, tmp: Path) -> None:
    print(f"offset on the RTCP clock ({args.transport}, {args.seconds:g} s each):")
    print("  injected_ms  pairs  median_ms  min_ms  max_ms  error_ms")
    for injected in args.offsets:
        delay = 0.5 if args.no_rtp_info else 0.0
        media = pattern_mp4(tmp / f"p{injected:+g}-{delay:g}.mp4", injected, video_delay_s=delay)
        server = RtspServer(python, media, no_rtp_info=args.no_rtp_info)
        server.start()
        try:
            source = RtspSource(config(server.url, args.transport))
            got = Collected(await source.open())
            first: float | None = None
            async for item in source:
                if isinstance(item, SourceFault):
                    print("  fault:", item.kind, item.message)
                    continue
                first = first if first is not None else time.monotonic()
                got.order.append(item)
                (got.frames if isinstance(item, VideoFrame) else got.chunks).append(item)
                if time.monotonic() - first >= args.seconds:
                    break
            await source.aclose()
        finally:
            server.stop()
        found = leads_ms(got)
        median = statistics.median(found)
        print(
            f"  {injected:11.1f}  {len(found):5d}  {median:9.2f}  {min(found):6.2f}  "
            f"{max(found):6.2f}  {median - injected:8.2f}   clock={got.order[0].clock.value}"
        )


async def reconnects(args: argparse.Namespace, python: str, tmp: Path) -> None:
    media = pattern_mp4(tmp / "p45.mp4", 45.0)
    server = RtspServer(python, media)
    server.start()
    source = RtspSource(config(server.url, args.transport))
    await source.open()
    rows: list[dict[str, float]] = []
    row: dict[str, Any] = {}
    items = 0
    print(f"reconnect after a server restart ({args.transport}, {args.restarts} restarts):")
    try:
        async for item in source:
            now = time.monotonic()
            if isinstance(item, SourceFault):
                if item.kind == "stream_lost":
                    row["lost"] = now
                elif item.kind == "stream_back":
                    row["back"] = now
                    assert source.stats.last_outage_s is not None
                    row["outage"] = source.stats.last_outage_s
                    assert source.stats.last_reconnect_s is not None
                    row["reconnect"] = source.stats.last_reconnect_s
                    rows.append(row)
                    row = {}
                    items = 0
                continue
            items += 1
            if items == 90 and not row:
                if len(rows) == args.restarts:
                    break
                row["kill"] = time.monotonic()
                server.stop()
                server.start()
                row["up"] = time.monotonic()
    finally:
        await source.aclose()
        server.stop()
    print("  server_away_s  noticed_after_kill_s  reconnected_s  outage_s")
    for r in rows:
        print(
            f"  {r['up'] - r['kill']:13.2f}  {r['lost'] - r['kill']:20.2f}  "
            f"{r['reconnect']:13.2f}  {r['outage']:8.2f}"
        )
    outages = [r["outage"] for r in rows]
    print(f"  outage median {statistics.median(outages):.2f} s, max {max(outages):.2f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offsets", type=float, nargs="+", default=[-80.0, 0.0, 45.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--transport", choices=["tcp", "udp"], default="tcp")
    parser.add_argument("--no-rtp-info", action="store_true")
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    try:
        python = gi_python()
    except BaseException as exc:  # pytest.skip outside pytest
        sys.exit(f"no RTSP server: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        await offsets(args, python, Path(tmp))
        if args.restarts:
            await reconnects(args, python, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
