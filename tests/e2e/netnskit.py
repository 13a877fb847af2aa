"""End-to-end runs inside a network namespace that has only ``lo``.

A test re-runs a script of its own inside ``unshare -n`` (:func:`run_isolated`); there the script
starts the real daemon (``crossmodald run``, :func:`loopback_daemon`) and a publisher (headless
Chromium, :func:`chromium`; a Node.js WHIP client), so nothing they do can reach any network but
loopback. The script writes its findings as JSON under an output folder that the test reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def run_browser_script(script: Path, out: Path, timeout_s: float) -> dict[str, Any]:
    """Run a browser test's own script isolated (``script --inside out``); its result JSON.

    Skips the calling test when Chromium or a loopback-only namespace is not available, and
    fails it with the script's output when the script fails.
    """
    import pytest

    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    reason = namespace_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    done = run_isolated(script, ["--inside", str(out)], timeout_s=timeout_s)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


def only_loopback() -> None:
    """Refuse to go on outside a namespace whose only interface is ``lo``."""
    # if_nameindex asks the kernel for this namespace's interfaces (/sys/class/net would show
    # the sysfs of the namespace it was mounted in).
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise SystemExit(f"not in a loopback-only namespace: interfaces {interfaces}")


def write_config(
    path: Path, plugins: Sequence[dict[str, Any]], webrtc: dict[str, Any] | None = None
) -> Path:
    """A daemon config: API on 127.0.0.1:PORT, WHIP with ICE on 127.0.0.1 only, no sources.

    ``webrtc`` adds keys to ``[webrtc]`` (e.g. a token).
    """
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
        *(f"{key} = {json.dumps(value)}" for key, value in (webrtc or {}).items()),
        "",
    ]
    for plugin in plugins:
        lines.append("[[plugins]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in plugin.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
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


# -- headless Chromium ------------------------------------------------------------------------


def find_chromium() -> str | None:
    """The Chromium binary (Debian's ``chromium`` package), or None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


#: Flags for a headless Chromium that publishes on loopback and makes no traffic of its own.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
    # Media: permission prompts granted, audio without a user gesture, nothing played.
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
    # ICE on 127.0.0.1 (not mDNS names); see WEBRTC.md §6.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints",
    # No traffic of Chromium's own.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    # Keep timers and frames at full rate in the headless page.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-gpu",
    "--disable-dev-shm-usage",
)


class DevTools:
    """A minimal Chrome DevTools protocol client on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, browser: str) -> None:
        self.ws = ws
        self.browser = browser
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its result (events in between are skipped)."""
        call_id = next(self._ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page; its value (JSON-able)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def stopped(self) -> dict[str, Any]:
        """Press the page's Stop and wait until it has ended its session; the page's state."""
        await self.evaluate("document.getElementById('stop').click()")
        for _ in range(100):
            state = await self.state()
            if state["session"] is None and state["connection"] == "closed":
                break
            await asyncio.sleep(0.1)
        return state

    async def state(self) -> dict[str, Any]:
        """The publish page's ``window.crossmodald`` state."""
        data: dict[str, Any] = json.loads(await self.evaluate("JSON.stringify(window.crossmodald)"))
        return data


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process, log: Path) -> int:
    # With --remote-debugging-port=0 Chromium writes the port it chose into the profile.
    path = profile / "DevToolsActivePort"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.returncode is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}; see {log}")
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        await asyncio.sleep(0.1)
    raise RuntimeError(f"chromium did not open its DevTools port; see {log}")


@contextlib.asynccontextmanager
async def chromium(
    url: str, out: Path, http: aiohttp.ClientSession, extra_flags: Sequence[str] = ()
) -> AsyncIterator[DevTools]:
    """Run headless Chromium on ``url`` (fresh profile under ``out``); DevTools on its page."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed")
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=out))
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra_flags]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    log_path = out / "chromium.log"
    log = log_path.open("w")
    proc = await asyncio.create_subprocess_exec(binary, *flags, url, stdout=log, stderr=log)
    try:
        port = await _devtools_port(profile, proc, log_path)
        async with http.get(f"http://127.0.0.1:{port}/json/version") as response:
            browser = (await response.json())["Browser"]
        async with http.get(f"http://127.0.0.1:{port}/json") as response:
            target = next(t for t in await response.json() if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws, browser)
            # The target can exist before the page loaded: wait for the page's script.
            loaded = "document.readyState === 'complete' && typeof window.crossmodald === 'object'"
            for _ in range(300):
                if await tools.evaluate(loaded):
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{url} did not load in 30 s")
            yield tools
            with contextlib.suppress(Exception):
                await tools.call("Browser.close")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
