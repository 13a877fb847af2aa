"""A real sd_notify receiver for tests: a bound AF_UNIX datagram socket read by a thread."""

from __future__ import annotations

import socket
import threading
import time


class NotifyListener:
    """A bound AF_UNIX datagram socket, read by a thread that stamps each message on arrival."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
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
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return [fields for _t, fields in self.messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def all(self) -> list[dict[str, str]]:
        """Every message so far, in arrival order."""
        return [fields for _t, fields in self.messages]
