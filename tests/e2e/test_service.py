"""`crossmodald run` as systemd runs it: a real process, a real NOTIFY_SOCKET, real signals.

* READY=1 only once the API answers; WATCHDOG=1 keeps coming; STATUS counts streams.
* SIGHUP with an identical, a changed and an invalid config: only what changed restarts; an
  invalid config is rejected and the old one keeps running.
* SIGTERM during live streams, SSE subscribers and a JSONL sink: every event accepted before
  the signal is in the file, subscribers are told why they end, exit 0 within the budget.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from servicekit import DaemonProcess, SseSubscriber, pattern_sources, start_daemon

# Shutdown budgets for these tests; their sum bounds how long a stop may take.
SERVICE = """
[service]
stop_ingest_s = 5
drain_plugins_s = 5
flush_sinks_s = 3
close_api_s = 3
status_interval_s = 0.5
"""
STOP_BUDGET_S = 16.0


def config_text(sources: str, sink: Path | None = None, extra: str = "") -> str:
    text = sources + '[window]\nlateness_s = 0.1\n[[plugins]]\ntype = "avsync"\ndevice = "cpu"\n'
    text += "[api]\nport = 0\n" + SERVICE + extra
    if sink is not None:
        text += f'[[sinks]]\ntype = "jsonl"\npath = "{sink}"\n'
    return text


async def _reload(daemon: DaemonProcess) -> dict[str, str]:
    """SIGHUP; wait for RELOADING=1 then READY=1; the messages in between, merged."""
    mark = len(daemon.notify.messages)
    daemon.proc.send_signal(signal.SIGHUP)
    start = await daemon.notify.wait_until(lambda m: m.get("RELOADING") == "1", mark, 30)
    done = await daemon.notify.wait_until(lambda m: m.get("READY") == "1", start + 1, 30)
    merged: dict[str, str] = {}
    for message in daemon.notify.all()[start : done + 1]:
        if "STATUS" in message:
            merged.setdefault("STATUS_FIRST", message["STATUS"])
        merged.update(message)
    return merged


def _stream_events(sub: SseSubscriber, start: int) -> list[tuple[str, str]]:
    return [
        (e["type"], e["stream"])
        for e in sub.events[start:]
        if e["type"] in ("stream.start", "stream.end")
    ]


async def _wait(predicate: Any, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 -- the subscriber task appends
            await asyncio.sleep(0.05)


async def test_ready_watchdog_and_reloads(tmp_path: Path) -> None:
    config = tmp_path / "crossmodald.toml"
    config.write_text(config_text(pattern_sources("s1", "s2")))
    daemon = await start_daemon(config, tmp_path)
    try:
        ready = next(m for m in daemon.notify.all() if m.get("READY") == "1")
        assert ready["STATUS"].startswith("2 streams running")
        async with aiohttp.ClientSession() as http:
            # READY=1 came after the API listens: it answers at once.
            async with http.get(f"{daemon.url}/readyz") as response:
                assert response.status == 200
            sub = SseSubscriber(daemon.url)
            sub.task = asyncio.create_task(sub.run(http))
            await daemon.notify.wait_until(lambda m: m.get("WATCHDOG") == "1", timeout_s=5)
            await daemon.notify.wait_until(lambda m: "event subscribers" in m.get("STATUS", ""))
            await _wait(lambda: any(e["type"] == "sync.offset" for e in sub.events))
            async with http.get(f"{daemon.url}/v1/streams") as response:
                started = {s["name"]: s["started_at"] for s in (await response.json())["streams"]}

            # 1. Identical config: nothing restarts.
            mark = len(sub.events)
            merged = await _reload(daemon)
            await asyncio.sleep(0.5)
            assert _stream_events(sub, mark) == []
            assert merged["STATUS"].startswith("2 streams running")

            # 2. Changed: s2's offset differs, s3 is new; s1 keeps running untouched.
            config.write_text(
                config_text(pattern_sources("s1") + pattern_sources("s2", audio_lead_ms=-30.0))
                + pattern_sources("s3")
            )
            mark = len(sub.events)
            merged = await _reload(daemon)
            assert "sources +s3 ~s2" in merged["STATUS_FIRST"]
            await _wait(lambda: ("stream.start", "s3") in _stream_events(sub, mark))
            assert sorted(_stream_events(sub, mark)) == [
                ("stream.end", "s2"),
                ("stream.start", "s2"),
                ("stream.start", "s3"),
            ]
            async with http.get(f"{daemon.url}/v1/streams") as response:
                now = {s["name"]: s for s in (await response.json())["streams"]}
            assert now["s1"]["started_at"] == started["s1"]
            assert now["s2"]["started_at"] > started["s2"]
            assert {s["state"] for s in now.values()} == {"running"}

            # 3. Invalid: rejected with the key path; the old config keeps running.
            config.write_text("[window]\nlength_s = -1\n")
            mark = len(sub.events)
            merged = await _reload(daemon)
            assert "reload rejected" in merged["STATUS_FIRST"]
            assert "window.length_s" in merged["STATUS_FIRST"]
            await asyncio.sleep(0.5)
            assert _stream_events(sub, mark) == []
            assert daemon.proc.returncode is None
            async with http.get(f"{daemon.url}/readyz") as response:
                assert response.status == 200
            async with http.get(f"{daemon.url}/v1/sources") as response:
                sources = {s["name"]: s for s in (await response.json())["sources"]}
            assert set(sources) == {"s1", "s2", "s3"}
            assert sources["s2"]["config"]["audio_lead_ms"] == -30.0
            assert "window.length_s" in daemon.log_text()

            mark = len(daemon.notify.messages)
            daemon.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STOP_BUDGET_S):
                assert await daemon.proc.wait() == 0
            await asyncio.wait([sub.task], timeout=5)
        stopping = [m for m in daemon.notify.all()[mark:] if m.get("STOPPING") == "1"]
        assert stopping, daemon.notify.all()[mark:]
    finally:
        await daemon.stop()


async def test_sigterm_loses_no_accepted_event(tmp_path: Path) -> None:
    sink = tmp_path / "events" / "events.jsonl"
    config = tmp_path / "crossmodald.toml"
    config.write_text(config_text(pattern_sources("a", "b", "c"), sink))
    daemon = await start_daemon(config, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            subs = [SseSubscriber(daemon.url) for _ in range(3)]
            for sub in subs:
                sub.task = asyncio.create_task(sub.run(http))
            await _wait(
                lambda: all(
                    sum(e["type"] == "sync.offset" for e in sub.events) >= 6 for sub in subs
                )
            )
            # Everything any subscriber has seen was accepted before the signal.
            seen = [e for sub in subs for e in sub.events]
            accepted_seq = max(e["seq"] for e in seen)
            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STOP_BUDGET_S):
                code = await daemon.proc.wait()
            elapsed = time.monotonic() - started
            await asyncio.wait([s.task for s in subs if s.task], timeout=5)
        assert code == 0, daemon.log_text()
        assert elapsed < STOP_BUDGET_S
        written = [json.loads(line) for line in sink.read_text().splitlines()]
        seqs = [e["seq"] for e in written]
        # No gap, no duplicate, nothing accepted before the signal missing.
        assert seqs == list(range(1, len(seqs) + 1))
        assert seqs[-1] >= accepted_seq
        ids = {e["id"] for e in written}
        assert {e["id"] for e in seen} <= ids
        for sub in subs:
            assert sub.closed_reason == "daemon stopping"
            sub_seqs = [e["seq"] for e in sub.events]
            assert sub_seqs == list(range(sub_seqs[0], sub_seqs[0] + len(sub_seqs)))
            # Each subscriber got everything up to the end, like the file.
            assert sub_seqs[-1] == seqs[-1]
        ends = {e["stream"]: e["data"]["reason"] for e in written if e["type"] == "stream.end"}
        assert ends == {"a": "daemon stopping", "b": "daemon stopping", "c": "daemon stopping"}
        notes = daemon.notify.all()
        ready = next(i for i, m in enumerate(notes) if m.get("READY") == "1")
        stopping = next(i for i, m in enumerate(notes) if m.get("STOPPING") == "1")
        assert ready < stopping
        assert "3 event subscribers" in notes[stopping]["STATUS"]
    finally:
        await daemon.stop()
