"""Running the real `crossmodald run` as a service would: a subprocess with NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# The sd_notify listener lives with the service tests; this kit imports it from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from notifykit import NotifyListener


@dataclass
class DaemonProcess:
    proc: asyncio.subprocess.Process
    notify: NotifyListener
    log: list[str] = field(default_factory=list)
    port: int | None = None
    _reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode():
            self.log.append(line)
            found = re.search(r"API listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))

    def log_text(self) -> str:
        return "".join(self.log)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)
        self.notify.close()


async def start_daemon(
    config: Path, tmp_path: Path, watchdog_usec: int = 2_000_000
) -> DaemonProcess:
    """Start `crossmodald run --config CONFIG` with a notify socket; returns once READY=1."""
    notify_path = str(tmp_path / "notify.sock")
    notify = NotifyListener(notify_path)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "NOTIFY_SOCKET": notify_path,
        "WATCHDOG_USEC": str(watchdog_usec),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crossmodald", "run", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    daemon = DaemonProcess(proc, notify)
    daemon._reader = asyncio.create_task(daemon._read_log())
    try:
        await notify.wait_until(lambda m: m.get("READY") == "1")
    except TimeoutError:
        await daemon.stop()
        raise AssertionError("no READY=1:\n" + daemon.log_text()) from None
    # The log line naming the port may be read a moment after the READY datagram.
    try:
        async with asyncio.timeout(10):
            while daemon.port is None:  # noqa: ASYNC110 -- the log reader task sets it
                await asyncio.sleep(0.02)
    except TimeoutError:
        await daemon.stop()
        raise AssertionError("no 'API listening' line:\n" + daemon.log_text()) from None
    return daemon


@dataclass
class SseSubscriber:
    """An SSE client that records every event (and the close notice) it gets."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    closed_reason: str | None = None
    task: asyncio.Task[None] | None = None
    received_at: list[float] = field(default_factory=list)

    async def run(self, session: aiohttp.ClientSession) -> None:
        kind = ""
        async with session.get(f"{self.url}/v1/events") as response:
            assert response.status == 200
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if kind == "close":
                        self.closed_reason = data["reason"]
                    elif kind != "gap":
                        self.events.append(data)
                        self.received_at.append(time.monotonic())


def pattern_sources(*names: str, **extra: Any) -> str:
    out = ""
    for name in names:
        fields: dict[str, Any] = {"type": "pattern", "name": name, "width": 160, "height": 120}
        fields |= extra
        out += "[[sources]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    return out
