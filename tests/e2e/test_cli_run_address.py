"""``crossmodald run --host/--port``: the API address for one run, checked like ``[api]``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest


def crossmodald(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossmodald", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_run_host_and_port_override_the_config(tmp_path: Path) -> None:
    from crossmodald.cli import _with_api_address
    from crossmodald.service.config import ConfigError, load_config

    config = load_config(None)
    changed = _with_api_address(config, "::1", 9123)
    assert (changed.api.host, changed.api.port) == ("::1", 9123)
    assert _with_api_address(config, None, None) is config
    with pytest.raises(ConfigError) as bad_port:
        _with_api_address(config, None, 70000)
    assert "api.port" in bad_port.value.errors[0]
    # The API's own rule: an open address needs tokens (or allow_unauthenticated).
    with pytest.raises(ConfigError) as exposed:
        _with_api_address(config, "0.0.0.0", None)
    assert "no [[api.tokens]]" in exposed.value.errors[0]
    result = crossmodald("run", "--port", "70000")
    assert result.returncode == 2
    assert "api.port" in result.stderr


async def test_run_listens_on_the_port_given(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "run.toml"
    config.write_text('[[sources]]\ntype = "pattern"\nname = "p"\nwidth = 64\nheight = 48\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crossmodald", "run", "--config", str(config),
        "--host", "127.0.0.1", "--port", str(port),
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(60):
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
