"""Benchmark: CPU per WHEP viewer of a re-synchronised stream, against the same daemon unwatched.

Starts the real daemon (``crossmodald run``) as a subprocess with avsync, WHIP/WHEP on
127.0.0.1 and ICE on loopback only. One aiortc publisher (pre-encoded 640x480 30 fps VP8 + Opus,
looped, the audio 80 ms ahead) runs in this process; then 0, 1, 2, 4 WHEP viewers (aiortc,
their decoding in this process, not the daemon's) watch it. For each count it prints the daemon
process's CPU (seconds of CPU per wall second, in % of one core) and the extra CPU per viewer
over the 0-viewer run measured in the same invocation. All traffic stays on 127.0.0.1.

    python benchmarks/bench_whep.py [--viewers 1 2 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from benchkit import cpu_seconds, daemon_running, whip_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ingest"))

from whipkit import encode_pattern, loopback_only, publish


async def viewer(http: aiohttp.ClientSession, url: str) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sink = MediaBlackhole()
    pc.on("track", sink.addTrack)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(
        url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
    ) as response:
        assert response.status == 201, await response.text()
        answer = await response.text()
        location = response.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await sink.start()
    return pc, location


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18752)
    args = parser.parse_args()
    loopback_only()
    media = encode_pattern(duration_s=2.0, width=640, height=480, audio_lead_ms=80.0)
    config = whip_config(
        args.port, webrtc="whep_max_slew_ms_per_s = 40.0\n", avsync='method = "flash"\n'
    )
    async with daemon_running(config, args.port) as (proc, base), aiohttp.ClientSession() as http:
        pub = await publish(base, "cam", media, loop=True, events_channel=False)
        await asyncio.sleep(6.0)  # connect, first SRs, first windows
        rows: list[tuple[int, float]] = []
        for n in [0, *args.viewers]:
            pcs = [await viewer(http, f"{base}/v1/whep/cam") for _ in range(n)]
            await asyncio.sleep(3.0)  # connect, key frame, latency measured
            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            pct = 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
            rows.append((n, pct))
            for pc, location in pcs:
                async with http.delete(base + location):
                    pass
                await pc.close()
            base_pct = rows[0][1]
            extra = f"{(pct - base_pct) / n:6.1f}% per viewer" if n else "(baseline)"
            print(f"viewers {n}: daemon CPU {pct:6.1f}% of a core  {extra}", flush=True)
        await pub.close()


if __name__ == "__main__":
    asyncio.run(main())
