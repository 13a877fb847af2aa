"""Shared by the benchmarks: what they read about a process they started (Linux /proc) or a
file they wrote, the environment that runs another checkout's code for a same-run comparison
(``--compare-tree``), and the real daemon run as a subprocess on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def x264_slices(path: Path) -> str:
    """The slices a picture that x264 wrote in its settings (the first video packet), or '?'.

    PyAV's libx264 cuts each picture into one slice per encoder thread, so a file written here
    has as many as this machine gave x264; a plain decode spreads them over its CPUs.
    """
    import av

    with av.open(str(path)) as container:
        first = bytes(next(container.demux(video=0)))
    found = re.search(rb" slices=(\d+)", first)
    return found.group(1).decode() if found else "?"


def rss_mib(pid: int) -> float:
    """The process's resident set size now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def memory_growth(readings: Sequence[tuple[int, float]], unit: str) -> str:
    """The memory benchmarks' figure: resident MiB after ``n`` ended streams or sessions
    (``readings``, the first after the first one ended) as growth per ended ``unit`` from the
    second reading to the last, and the last over the second. The first readings warm the
    process up (the allocator's heaps, caches); from the second on, a process that gives back
    what each one held stays flat. Exits when there are fewer than three readings."""
    if len(readings) < 3:
        raise SystemExit(f"needs at least two readings after the first (--{unit}s, --every)")
    (n0, first), (n1, last) = readings[1], readings[-1]
    return (
        f"growth per ended {unit} from {n0} to {n1}: {(last - first) / (n1 - n0):.2f} MiB; "
        f"after {n1} / after {n0}: {last / first:.2f}"
    )


def tree_env(tree: Path | None) -> dict[str, str] | None:
    """The environment that imports crossmodald from checkout ``tree`` (None: as installed)."""
    if tree is None:
        return None
    env = dict(os.environ)
    paths = [str(tree / "daemon"), str(tree / "plugins")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def whip_config(port: int, *, webrtc: str = "", avsync: str = "") -> str:
    """A daemon config for the WebRTC benchmarks: API on 127.0.0.1:``port``, ICE on loopback
    only, the avsync plugin; ``webrtc`` and ``avsync`` are extra TOML lines for those tables."""
    return (
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[webrtc]\nhost_addresses = ["127.0.0.1"]\n{webrtc}'
        f'[[plugins]]\ntype = "avsync"\n{avsync}'
        '[logging]\nlevel = "warning"\n'
    )


@contextlib.asynccontextmanager
async def daemon_running(
    config_text: str, port: int, ready_s: float = 30.0
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``crossmodald run`` with ``config_text`` (its API on 127.0.0.1:``port``), once ready.

    Yields the process and the API's base URL; stops the daemon (SIGTERM, as systemd does) on
    the way out.
    """
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(config_text, encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crossmodald", "run", "--config", str(config)
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(round(ready_s * 10)):
                    if proc.returncode is not None:
                        raise SystemExit(f"the daemon exited with {proc.returncode}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{base}/readyz") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.1)
                else:
                    raise SystemExit(f"the daemon did not become ready in {ready_s:g} s")
            yield proc, base
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


async def streams(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    """The daemon's ``/v1/streams``, by stream name."""
    async with http.get(f"{base}/v1/streams") as response:
        return {s["name"]: s for s in (await response.json())["streams"]}
