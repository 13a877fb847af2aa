"""Fleet mode end to end: three `crossmodald run` processes, one real ``nats-server -js``.

Sources added through one daemon's API run on exactly one daemon; ``kill -9`` of a daemon
moves its sources to the others within 10 s (the lease TTL is the default 5 s); ``/v1/fleet``
shows the dead daemon and who runs what; every event says which daemon produced it.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from natskit import MISSING, nats_server, nats_server_binary
from servicekit import DaemonProcess, SseSubscriber, start_daemon

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[fleet]')")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(nats_server_binary() is None, reason=MISSING),
]

SOURCE = {
    "type": "pattern",
    "width": 32,
    "height": 32,
    "fps": 10,
    "sample_rate": 8000,
    "period_s": 0.5,
    "flash_ms": 50,
    "beep_ms": 50,
    "audio_lead_ms": 40.0,
}


def config(url: str, daemon_id: str) -> str:
    return (
        "[api]\nport = 0\n"
        '[[plugins]]\ntype = "avsync"\ndevice = "cpu"\n'
        "[window]\nlength_s = 1.0\nhop_s = 0.5\nlateness_s = 0.1\n"
        f'[fleet]\nnats_url = "{url}"\nbucket = "e2e"\ndaemon_id = "{daemon_id}"\n'
    )


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_kill_9_moves_the_sources_within_10_s(tmp_path: Path) -> None:
    names = [f"cam{i}" for i in range(6)]
    async with (
        nats_server(tmp_path / "js") as server,
        AsyncExitStack() as stack,
        aiohttp.ClientSession() as http,
    ):
        daemons: dict[str, DaemonProcess] = {}
        for daemon_id in ("a", "b", "c"):
            home = tmp_path / daemon_id
            home.mkdir()
            path = home / "crossmodald.toml"
            path.write_text(config(server.url, daemon_id))
            daemons[daemon_id] = await start_daemon(path, home)
            stack.push_async_callback(daemons[daemon_id].stop)
        subscribers = {d: SseSubscriber(p.url) for d, p in daemons.items()}
        for sub in subscribers.values():
            sub.task = asyncio.create_task(sub.run(http))

        # Every daemon in the fleet (its first scans) before the list is written.
        async def fleet(daemon_id: str) -> dict[str, Any]:
            out: dict[str, Any] = await get_json(http, f"{daemons[daemon_id].url}/v1/fleet")
            return out

        async with asyncio.timeout(20):
            while len((await fleet("a"))["daemons"]) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        for name in names:
            async with http.post(
                f"{daemons['a'].url}/v1/sources", json={**SOURCE, "name": name}
            ) as response:
                assert response.status == 201, await response.text()

        async def placement() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for daemon_id, proc in daemons.items():
                if proc.proc.returncode is not None:
                    continue
                streams = (await get_json(http, f"{proc.url}/v1/streams"))["streams"]
                out[daemon_id] = {
                    s["name"] for s in streams if s["state"] in ("starting", "running")
                }
            return out

        async with asyncio.timeout(30):
            while sorted(n for s in (await placement()).values() for n in s) != names:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        placed = await placement()
        assert sorted(len(s) for s in placed.values()) == [2, 2, 2], placed

        # Events: each stream's from exactly one daemon, stamped with its id.
        def offsets(daemon_id: str, stream: str, after: float = 0.0) -> list[float]:
            sub = subscribers[daemon_id]
            return [
                t
                for e, t in zip(sub.events, sub.received_at, strict=True)
                if e["stream"] == stream and e["type"] == "sync.offset" and t >= after
            ]

        async with asyncio.timeout(30):
            while not all(offsets(d, n) for d, s in placed.items() for n in s):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        for daemon_id, sub in subscribers.items():
            assert sub.events
            assert {e["daemon"] for e in sub.events} == {daemon_id}
            assert {e["stream"] for e in sub.events if e["stream"]} == placed[daemon_id]

        # kill -9 the daemon c: its sources produce events on a or b within 10 s.
        victim = "c"
        moved = placed[victim]
        killed_at = time.monotonic()
        daemons[victim].proc.kill()
        await daemons[victim].proc.wait()

        def first_event_elsewhere(stream: str) -> float | None:
            times = [
                t
                for d in ("a", "b")
                for e, t in zip(subscribers[d].events, subscribers[d].received_at, strict=True)
                if e["stream"] == stream and t > killed_at
            ]
            return min(times) - killed_at if times else None

        async with asyncio.timeout(15):
            while any(first_event_elsewhere(n) is None for n in moved):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        gaps = {n: first_event_elsewhere(n) for n in moved}
        assert all(g is not None and g <= 10.0 for g in gaps.values()), gaps
        # ... and they really run there: sync offsets again, from the new daemon.
        async with asyncio.timeout(20):
            while not all(  # noqa: ASYNC110
                offsets("a", n, killed_at) or offsets("b", n, killed_at) for n in moved
            ):
                await asyncio.sleep(0.2)
        after = await placement()
        assert sorted(n for s in after.values() for n in s) == names
        assert sorted(len(s) for s in after.values()) == [3, 3]
        for d in ("a", "b"):
            for e in subscribers[d].events:
                assert e["daemon"] == d

        # /v1/fleet on a survivor: c is dead, every source on a live daemon.
        async with asyncio.timeout(10):
            while True:
                view = await fleet("b")
                alive = {x["daemon"]: x["alive"] for x in view["daemons"]}
                on = {s["name"]: s["daemon"] for s in view["sources"]}
                # Loads come from heartbeats (each daemon's, written at its last scan).
                loads = {x["daemon"]: x["load"] for x in view["daemons"] if x["alive"]}
                if alive == {"a": True, "b": True, "c": False} and loads == {"a": 3, "b": 3}:
                    break
                await asyncio.sleep(0.2)
        assert on == {n: d for d, s in after.items() for n in s}
        tasks = [sub.task for sub in subscribers.values() if sub.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # c's ended when it was killed
        print(json.dumps({"failover_s": gaps}))
