"""Memory of a daemon whose WHIP publishers come and go: does it come back when a session ends?

``bench_stream_memory.py`` runs media files through the pipeline; this does the same for the
WebRTC source. It starts the real daemon (``crossmodald run``, avsync, WHIP on 127.0.0.1, ICE on
loopback only) and publishes sessions into it in waves of ``--at-once`` (aiortc publishers in
this process: 640x480 30 fps VP8 + Opus, pre-encoded and looped), each for ``--seconds``, then
ended with a WHIP DELETE. After the first wave and after every ``--every`` more sessions it
prints the daemon's resident memory, and the growth per ended session from the second reading
to the last (the baseline is the same daemon after the first sessions; the ratio is last over
that reading).

    python benchmarks/bench_whip_memory.py [--sessions 40] [--every 10] [--at-once 2]
        [--seconds 4] [--port 18761]

Measured on this 2-core machine (``--sessions 100 --every 20``, 3.7 min): idle 294 MiB; after 2,
20, 40, 60, 80, 100 sessions 338 / 377 / 408 / 450 / 458 / 413 MiB: 0.46 MiB per ended session
from 20 to 100 (ratio 1.10), no steady growth (the media source's 74 MiB per ended stream,
fixed in abb9160, had no counterpart here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
from benchkit import daemon_running, memory_growth, rss_mib, streams, whip_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ingest"))

from whipkit import encode_pattern, publish


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--at-once", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--port", type=int, default=18761)
    args = parser.parse_args()
    if args.sessions < 1 or args.every < 1 or args.at_once < 1 or args.every % args.at_once:
        raise SystemExit("--sessions, --every and --at-once must be >= 1; --every a multiple")
    media = encode_pattern(duration_s=2.0, width=640, height=480, bitrate=1_000_000)
    readings: list[tuple[int, float]] = []
    config = whip_config(args.port, webrtc=f"max_streams = {args.at_once}\n")
    async with daemon_running(config, args.port) as (proc, base), aiohttp.ClientSession() as http:
        print(f"idle daemon: {rss_mib(proc.pid):.0f} MiB", flush=True)
        done = 0
        while done < args.sessions:
            names = [f"s{i}" for i in range(done, min(args.sessions, done + args.at_once))]
            pubs = [await publish(base, name, media, loop=True) for name in names]
            await asyncio.sleep(args.seconds)
            statuses = [await p.close() for p in pubs]
            if statuses != [200] * len(pubs):
                raise SystemExit(f"DELETE answered {statuses}")
            # The daemon lets go of a session's stream once its pipeline has ended.
            end = time.monotonic() + 15
            while time.monotonic() < end:
                listed = await streams(http, base)
                if all(listed.get(n, {}).get("state") == "ended" for n in names):
                    break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit(f"{names}: not ended 15 s after their DELETE")
            done += len(pubs)
            if done == len(pubs) or done % args.every == 0:
                readings.append((done, rss_mib(proc.pid)))
                print(f"  after {done:4d} sessions: {readings[-1][1]:7.0f} MiB", flush=True)
    print(
        f"{args.sessions} WHIP sessions of {args.seconds:g} s, {args.at_once} at a time: "
        + memory_growth(readings, "session")
    )


if __name__ == "__main__":
    asyncio.run(main())
