"""systemd's notify protocol (``sd_notify``), spoken directly over the datagram socket.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Each message
is one datagram of ``KEY=value`` lines. Without ``NOTIFY_SOCKET`` every call is a no-op, so the
daemon runs the same outside systemd.

The watchdog is kept from a task on the event loop (:func:`run_watchdog`): a loop blocked by
a stuck call sends no ``WATCHDOG=1``, and systemd restarts the service (``Restart=on-failure``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: Longest STATUS= text sent, in characters (systemctl shows one line).
MAX_STATUS_CHARS = 200


class Notifier:
    """Sends sd_notify messages; a no-op when ``socket_path`` is None.

    Args:
        socket_path: The ``NOTIFY_SOCKET`` value: a filesystem path or ``@abstract-name``.
        watchdog_usec: The ``WATCHDOG_USEC`` value (None or 0: no watchdog).

    Raises:
        ValueError: ``socket_path`` is neither an absolute path nor ``@name``.
    """

    def __init__(self, socket_path: str | None = None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        if socket_path:
            if socket_path.startswith("@"):
                # Abstract namespace: a leading NUL byte instead of the '@'.
                self._address = b"\0" + socket_path[1:].encode()
            elif socket_path.startswith("/"):
                self._address = socket_path
            else:
                raise ValueError(
                    f"NOTIFY_SOCKET must be an absolute path or @name, got {socket_path!r}"
                )
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0
        self._last_status: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog applies only when ``WATCHDOG_PID`` is unset or names this process (as
        ``sd_watchdog_enabled`` does). A malformed variable is logged and ignored: a service
        must not fail to start over its supervisor's hints.
        """
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw_usec = env.get("WATCHDOG_USEC")
        raw_pid = env.get("WATCHDOG_PID")
        try:
            if raw_usec:
                usec = int(raw_usec)
            if raw_pid and int(raw_pid) != os.getpid():
                usec = None
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC/WATCHDOG_PID from the environment")
            usec = None
        try:
            return cls(path, usec)
        except ValueError as exc:
            log.warning("ignoring NOTIFY_SOCKET: %s", exc)
            return cls(None, None)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half the watchdog timeout (None: no watchdog)."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, **fields: str | int) -> bool:
        """Send one message, e.g. ``notify(READY=1, STATUS="ok")``; True when it was sent.

        A failure to send is counted and logged at debug level, never raised: the daemon's
        work must not depend on its supervisor's socket.
        """
        if self._address is None:
            return False
        for key, value in fields.items():
            if "\n" in str(value):
                raise ValueError(f"sd_notify {key}= must be one line")
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            self.failed += 1
            log.debug("sd_notify %s failed: %s", ",".join(fields), exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (startup or a reload finished), with an optional status line."""
        if status is None:
            return self.notify(READY=1)
        self._last_status = _one_line(status)
        return self.notify(READY=1, STATUS=self._last_status)

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (which systemd 253+ requires for it)."""
        return self.notify(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=_one_line(status))

    def status(self, text: str, *, force: bool = False) -> bool:
        """``STATUS=text``; unchanged text is not sent again unless ``force``."""
        line = _one_line(text)
        if line == self._last_status and not force:
            return False
        self._last_status = line
        return self.notify(STATUS=line)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for more time for the current start/stop/reload step."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(1, round(seconds * 1_000_000)))

    def close(self) -> None:
        """Close the socket (sending again reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_STATUS_CHARS else line[: MAX_STATUS_CHARS - 3] + "..."


async def run_watchdog(
    notifier: Notifier,
    status: Callable[[], str],
    *,
    status_interval_s: float = 5.0,
    watchdog_interval_s: float | None = None,
) -> None:
    """Keep the watchdog and the status line fresh until cancelled.

    Runs on the event loop on purpose: when the loop is blocked (a stuck call, a busy
    handler), no ``WATCHDOG=1`` goes out and systemd steps in.

    Args:
        notifier: Where to send.
        status: Builds the current ``STATUS=`` line (sent only when it changed).
        status_interval_s: How often to refresh the status line.
        watchdog_interval_s: How often to send ``WATCHDOG=1`` (default: the notifier's, half
            of ``WATCHDOG_USEC``; None there too: no watchdog messages).
    """
    if not notifier.enabled:
        return
    if status_interval_s <= 0:
        raise ValueError(f"status_interval_s must be > 0, got {status_interval_s}")
    watchdog_s = watchdog_interval_s or notifier.watchdog_interval_s
    tick_s = min(status_interval_s, watchdog_s) if watchdog_s else status_interval_s
    loop = asyncio.get_running_loop()
    next_status = loop.time()
    while True:
        if watchdog_s:
            notifier.watchdog()
        now = loop.time()
        if now >= next_status:
            notifier.status(status())
            next_status = now + status_interval_s
        await asyncio.sleep(tick_s)
