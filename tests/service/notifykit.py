"""A real sd_notify receiver for tests: a bound AF_UNIX datagram socket read by a thread.

The one listener for the in-process lifecycle tests (tests/service) and for the tests that run
``crossmodald run`` as a subprocess (tests/e2e/servicekit.py imports it from here).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable


class NotifyListener:
    """A bound AF_UNIX datagram socket, read by a thread that stamps each message on arrival.

    Attributes:
        address: What the socket is bound to: a filesystem path, or bytes starting with a NUL
            for an abstract-namespace name; it is what NOTIFY_SOCKET names.
        messages: ``(time.monotonic() on arrival, fields)`` per datagram, in arrival order.
    """

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        # A short timeout so the reader thread sees the stop flag soon after close().
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict[str, str]]:
        """Block until ``count`` messages arrived or ``timeout_s`` passed; every message so far."""
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.all()

    async def wait_until(
        self, predicate: Callable[[dict[str, str]], bool], start: int = 0, timeout_s: float = 60
    ) -> int:
        """Index of the first message from ``start`` on that matches, awaited without blocking.

        Raises:
            TimeoutError: No message matched within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                for index in range(start, len(self.messages)):
                    if predicate(self.messages[index][1]):
                        return index
                await asyncio.sleep(0.02)

    def close(self) -> None:
        """Stop the reader thread and close the socket."""
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def all(self) -> list[dict[str, str]]:
        """Every message so far, in arrival order."""
        return [fields for _t, fields in self.messages]
