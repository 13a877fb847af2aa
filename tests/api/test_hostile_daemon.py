"""A hostile client against the real `crossmodald run` (a subprocess on loopback): afterwards the
whole log it wrote holds none of the tokens the client sent and no traceback (issue 16)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from servicekit import pattern_sources, start_daemon

TOKEN = "sub-token-9d1e55b7c0ffee42"  # a configured token: valid, so worth stealing
BOGUS = "bogus-token-31337abcdef"


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(4096)
    finally:
        writer.close()


async def test_hostile_requests_leave_no_token_in_the_daemon_log(tmp_path: Path) -> None:
    config = tmp_path / "crossmodald.toml"
    config.write_text(
        pattern_sources("card")
        + '[api]\nport = 0\n[[api.tokens]]\nname = "reader"\n'
        + f'token = "{TOKEN}"\nscopes = ["subscribe"]\n[logging]\nlevel = "debug"\n'
    )
    daemon = await start_daemon(config, tmp_path)
    try:
        port = daemon.port
        assert port is not None
        for token in (TOKEN, BOGUS):
            t = token.encode()
            hostile = [
                b"GET /v1/events?access_token=" + t + b" HTTP/9.9\r\n\r\n",
                b"GET /v1/events?access_token=" + t + b"&p=" + b"A" * 9000 + b" HTTP/1.1\r\n\r\n",
                b"GET /v1/streams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t
                + b"\r\nBad\x01Name: y\r\n\r\n",
                b"GET /v1/streams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t
                + b"x" * 9000 + b"\r\n\r\n",
                b"GET http://u:" + t + b"@127.0.0.1/?key=" + t + b" HTTP/9.9\r\n\r\n",
                b"GET /v1/events?access_token=" + t + b"\x00 HTTP/1.1\r\n\r\n",
                # Well-formed, with a token the daemon checks (and refuses for the bogus one).
                b"GET /v1/streams?access_token=" + t + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + t + b"\r\nConnection: close\r\n\r\n",
            ]  # fmt: skip
            for data in hostile:
                answer = await _raw(port, data)
                assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), data[:60]
                assert answer[9:10] != b"5", answer[:200]
        for _ in range(50):
            await _raw(port, b"GET / HTTP/9.9\r\n\r\n")
    finally:
        await daemon.stop()
    log = daemon.log_text()
    assert "API listening" in log  # the log was read
    for secret in (TOKEN, BOGUS):
        assert secret not in log, [line for line in log.splitlines() if secret in line][:3]
    assert "Traceback" not in log
    assert len(log.splitlines()) < 60, log


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
