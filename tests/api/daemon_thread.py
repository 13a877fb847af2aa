"""The whole daemon in-process, on its own event loop thread, for tests that talk to it with
plain blocking sockets (hypothesis examples are synchronous): real pattern sources, bus, API,
REST sources and WHIP on 127.0.0.1, and its log as the daemon writes it (its own formatter)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
from pathlib import Path
from typing import Any

from crossmodald.api.limits import LIMITS
from crossmodald.service.config import load_config
from crossmodald.service.daemon import Daemon
from crossmodald.service.logs import make_formatter

CONFIG = """\
[[sources]]
type = "pattern"
name = "card"
width = 32
height = 32
fps = 10
sample_rate = 8000

[window]
length_s = 0.4
hop_s = 0.2
lateness_s = 0.05

[api]
port = 0
slow_subscriber_s = 1.0

[api.limits]
body_timeout_s = 2.0
max_streams_per_client = 4

[webrtc]
host_addresses = ["127.0.0.1"]
connect_timeout_s = 5
"""


class DaemonThread:
    """``with DaemonThread(tmp_path) as d``: a running daemon; ``d.port``, ``d.log_text()``."""

    def __init__(self, tmp_path: Path, config: str = CONFIG) -> None:
        self.path = tmp_path / "crossmodald.toml"
        self.path.write_text(config)
        self.port = 0
        self.daemon: Daemon | None = None
        self.exit_code: int | None = None
        self.crashed: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="daemon-thread", daemon=True)
        self._log = io.StringIO()
        self._handler = logging.StreamHandler(self._log)
        self._handler.setFormatter(make_formatter("plain"))
        self._handler.setLevel(logging.DEBUG)
        self._old_level = logging.getLogger().level

    def __enter__(self) -> DaemonThread:
        root = logging.getLogger()
        root.addHandler(self._handler)
        root.setLevel(logging.INFO)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError(f"the daemon did not get ready:\n{self.log_text()}")
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        finally:
            root = logging.getLogger()
            root.removeHandler(self._handler)
            root.setLevel(self._old_level)

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:  # reported by alive(): the test says what happened
            self.crashed = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _run(self) -> None:
        self.daemon = Daemon(load_config(self.path), config_path=self.path)
        await self.daemon.load_plugins()
        self._stop = asyncio.Event()
        task = asyncio.create_task(self.daemon.run(self._stop))
        while not self.daemon.ready() or self.daemon.api_port is None:
            if task.done():
                break
            await asyncio.sleep(0.01)
        self.port = self.daemon.api_port or 0
        self._ready.set()
        self.exit_code = await task

    def alive(self) -> bool:
        return self._thread.is_alive() and self.crashed is None and self.exit_code is None

    def log_text(self) -> str:
        return self._log.getvalue()

    def held(self) -> dict[str, int]:
        """Per-client slots held now, by kind (read across threads: plain int reads)."""
        assert self.daemon is not None
        assert self.daemon._app is not None
        limits = self.daemon._app[LIMITS]
        return {kind: limits.held(kind) for kind in ("connections", "subscribers", "streams")}

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the daemon's loop and return its result."""
        future = asyncio.run_coroutine_threadsafe(_call(fn), self._loop)
        return future.result(10)


async def _call(fn: Any) -> Any:
    return fn()


def request(port: int, data: bytes, *, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; the status (0: none), headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                if sep:
                    length = _content_length(head)
                    if length is not None and len(body) >= length:
                        break
        except (ConnectionResetError, TimeoutError):
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, received
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or 0)
    return None


def http(
    port: int,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with ``Connection: close`` (the answer ends with the connection)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return request(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
