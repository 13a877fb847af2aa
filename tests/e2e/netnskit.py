"""End-to-end runs inside a network namespace that has only ``lo``.

A test re-runs a script of its own inside ``unshare -n`` (:func:`run_isolated`); there the script
starts the real daemon (``crossmodald run``, :func:`loopback_daemon`) and a publisher (headless
Chromium, a Node.js WHIP client), so nothing they do can reach any network but loopback. The
script writes its findings as JSON under an output folder that the test then reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

#: The API port inside the namespace (a fresh namespace has every port free).
PORT = 8750
BASE_URL = f"http://127.0.0.1:{PORT}"


def namespace_skip_reason() -> str | None:
    """Why a loopback-only network namespace cannot be made here (None: it can)."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux / iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        return f"cannot make a network namespace with unshare -n (needs root): {reason}"
    return None


def run_isolated(
    script: Path, args: Sequence[str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run ``python3 script args...`` in a new network namespace with only ``lo`` (up)."""
    command = [
        "unshare",
        "-n",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        sys.executable,
        str(script),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def only_loopback() -> None:
    """Refuse to go on outside a namespace whose only interface is ``lo``."""
    # if_nameindex asks the kernel for this namespace's interfaces (/sys/class/net would show
    # the sysfs of the namespace it was mounted in).
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise SystemExit(f"not in a loopback-only namespace: interfaces {interfaces}")


def write_config(path: Path, plugins: Sequence[dict[str, Any]], extra: str = "") -> Path:
    """A daemon config: API on 127.0.0.1:PORT, WHIP with ICE on 127.0.0.1 only, no sources."""
    lines = [
        "[window]",
        "length_s = 2.0",
        "hop_s = 0.5",
        "lateness_s = 0.2",
        "",
        "[api]",
        'host = "127.0.0.1"',
        f"port = {PORT}",
        "",
        "[webrtc]",
        'host_addresses = ["127.0.0.1"]',
        "",
    ]
    for plugin in plugins:
        lines.append("[[plugins]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in plugin.items())
        lines.append("")
    path.write_text("\n".join(lines) + extra, encoding="utf-8")
    return path


@dataclass
class DaemonRun:
    """A ``crossmodald run`` in this namespace and every event it published (from SSE)."""

    proc: asyncio.subprocess.Process
    http: aiohttp.ClientSession
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, stream: str, event_type: str) -> list[dict[str, Any]]:
        """The events of one type on one stream, in order."""
        return [e for e in self.events if e["stream"] == stream and e["type"] == event_type]

    async def wait_until(self, predicate: Any, timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds (re-checked at each event); False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
                return True
        return bool(predicate())

    async def get(self, path: str) -> Any:
        """GET a JSON document from the daemon's API."""
        async with self.http.get(BASE_URL + path) as response:
            return await response.json()

    async def _collect(self) -> None:
        async with self.http.get(
            BASE_URL + "/v1/events", timeout=aiohttp.ClientTimeout(total=None)
        ) as response:
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    if "seq" in data:
                        self.events.append(data)
                        self.changed.set()


@contextlib.asynccontextmanager
async def loopback_daemon(config: Path, log_path: Path) -> AsyncIterator[DaemonRun]:
    """Start ``crossmodald run --config`` here, wait until ready, collect its events; SIGTERM."""
    log = log_path.open("w", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crossmodald", "run", "--config", str(config), stderr=log
    )
    http = aiohttp.ClientSession()
    run = DaemonRun(proc, http)
    collector: asyncio.Task[None] | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"crossmodald run exited with {proc.returncode}; see {log_path}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(BASE_URL + "/readyz") as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"crossmodald run not ready after 60 s; see {log_path}")
            await asyncio.sleep(0.1)
        collector = asyncio.create_task(run._collect(), name="e2e:sse")
        yield run
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if collector is not None:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await collector
        await http.close()
        log.close()
