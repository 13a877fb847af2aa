"""Hostile and careless clients (issue 16): no 500, no leaked slot, no token or traceback in the
log, bounded logs, slow clients cannot hold the door, WHIP offers checked before any session.

Most cases run against the whole daemon in-process (:mod:`daemon_thread`) with blocking sockets;
the slow-client cases against the API app with small limits. Each error path is followed by a
count of the slots still held.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from api_support import FakeStreams
from daemon_thread import DaemonThread, http, request

from crossmodald.api import API_STATE, bound_port, build_app, serve
from crossmodald.api.limits import LIMITS
from crossmodald.api.serverlog import RateLimitedLog
from crossmodald.api.sources import SOURCES_CONTROL, add_source_routes
from crossmodald.api.whip import OfferError, check_offer
from crossmodald.bus import Event, EventBus
from crossmodald.ingest.webrtc_config import WebRtcConfig
from crossmodald.service.config import ApiConfig, ApiLimitsConfig

TOKEN = "hostile-token-5f1c0ffee"


def _deep(n: int) -> bytes:
    return b'{"type": "pattern", "name": "deep", "x": ' + b"[" * n + b"]" * n + b"}"


#: (what, body, content type) for POST /v1/sources: each must get a JSON 4xx.
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("Infinity", b'{"type": "pattern", "name": "a", "flash_ms": Infinity}', "application/json"),
    ("-Infinity", b'{"type": "pattern", "name": "a", "flash_ms": -Infinity}', "application/json"),
    ("NaN", b'{"type": "pattern", "name": "a", "flash_ms": NaN}', "application/json"),
    ("1e999", b'{"type": "pattern", "name": "a", "flash_ms": 1e999}', "application/json"),
    ("deep nesting", _deep(20_000), "application/json"),
    ("5000-digit integer", b'{"type": "pattern", "name": "a", "seed": ' + b"7" * 5000 + b"}",
     "application/json"),
    ("wrong type", b'{"type": "pattern", "name": ["x"]}', "application/json"),
    ("type not a string", b'{"type": {"a": 1}, "name": "x"}', "application/json"),
    ("array", b"[1, 2]", "application/json"),
    ("string", b'"pattern"', "application/json"),
    ("invalid UTF-8", b'{"type": "\xff\xfe"}', "application/json"),
    ("lone surrogate", b'{"type": "pattern", "name": "\\ud800"}', "application/json"),
    ("wrong content type", b'{"type": "pattern", "name": "a"}', "text/plain"),
    ("not JSON", b"{type: pattern", "application/json"),
    ("empty", b"", "application/json"),
    ("too large", b'{"x": "' + b"a" * 70_000 + b'"}', "application/json"),
]  # fmt: skip


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    with DaemonThread(tmp_path_factory.mktemp("hostile")) as running:
        yield running


def _settled(daemon: DaemonThread, streams: int = 0) -> dict[str, int]:
    """Slots held once the answers are out (a handler's slot goes as it returns)."""
    deadline = time.monotonic() + 2.0
    want = {"connections": 0, "subscribers": 0, "streams": streams}
    while (held := daemon.held()) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return held


def test_bad_bodies_get_a_json_4xx_and_keep_no_slot(daemon: DaemonThread) -> None:
    # More bad bodies than the client has stream slots (4): a leak would refuse the good one.
    for _round in range(2):
        for what, body, ctype in BAD_BODIES:
            status, headers, answer = http(
                daemon.port, "POST", "/v1/sources", body, {"Content-Type": ctype}
            )
            assert 400 <= status < 500, (what, status, answer[:200])
            assert headers.get("content-type", "").startswith("application/json"), what
            message = json.loads(answer)["error"]
            assert message, what
            assert "\n" not in message, (what, message)
            assert _settled(daemon) == {"connections": 0, "subscribers": 0, "streams": 0}, what
    status, _, answer = http(
        daemon.port, "POST", "/v1/sources",
        b'{"type": "pattern", "name": "good", "width": 32, "height": 32}',
        {"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 201, answer
    assert _settled(daemon, streams=1)["streams"] == 1
    status, _, _ = http(daemon.port, "DELETE", "/v1/sources/good")
    assert status == 200
    assert _settled(daemon) == {"connections": 0, "subscribers": 0, "streams": 0}
    assert daemon.alive()
    assert "Traceback" not in daemon.log_text()


def test_whip_offers_without_dtls_or_ice_are_refused_before_any_session(
    daemon: DaemonThread,
) -> None:
    fp = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
    ice = ["a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx"]
    good = [
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", *ice, fp, "a=setup:actpass",
        "a=mid:0", "a=sendonly", "a=rtcp-mux", "a=rtpmap:96 VP8/90000", "",
    ]  # fmt: skip
    cases = {
        "a=fingerprint": [x for x in good if not x.startswith("a=fingerprint")],
        "a=setup": [x for x in good if not x.startswith("a=setup")],
        "a=ice-ufrag": [x for x in good if not x.startswith("a=ice-ufrag")],
        "usable a=fingerprint": [
            "a=fingerprint:md5 AB:CD" if x.startswith("a=fingerprint") else x for x in good
        ],
    }
    for lacking, lines in cases.items():
        sdp = "\r\n".join(lines).encode()
        status, _, answer = http(
            daemon.port, "POST", "/v1/whip/nofp", sdp, {"Content-Type": "application/sdp"}
        )
        assert status == 400, (lacking, answer)
        assert lacking in json.loads(answer)["error"]
        streams = json.loads(http(daemon.port, "GET", "/v1/streams")[2])["streams"]
        assert "nofp" not in [s["name"] for s in streams]
    # The pure check says the same without a server.
    with pytest.raises(OfferError) as info:
        check_offer("\r\n".join(cases["a=fingerprint"]), WebRtcConfig())
    assert info.value.status == 400
    assert "AssertionError" not in daemon.log_text()


def test_hostile_request_lines_log_no_token_and_no_traceback(daemon: DaemonThread) -> None:
    t = TOKEN.encode()
    hostile = [
        b"GET /v1/events?access_token=" + t + b" HTTP/9.9\r\n\r\n",
        b"GET /v1/events?access_token=" + t + b"&p=" + b"A" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET /v1/streams?token=" + t + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t
        + b"\r\nBad\x01Name: y\r\n\r\n",
        b"GET /v1/streams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t + b"x" * 9000
        + b"\r\n\r\n",
        b"GET http://u:" + t + b"@127.0.0.1/?key=" + t + b" HTTP/9.9\r\n\r\n",
        b"GET /v1/events?access_token=" + t + b"\x00 HTTP/1.1\r\n\r\n",
    ]  # fmt: skip
    mark = len(daemon.log_text())
    for data in hostile:
        status, _, _ = request(daemon.port, data)
        assert status == 400 or status == 431 or status == 414, data[:60]
    # 100 of the same malformed request: a few lines with a count, no traceback each.
    for _ in range(100):
        request(daemon.port, b"GET / HTTP/9.9\r\n\r\n")
    # A client that vanishes half-way through its body.
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            sock.sendall(
                b"POST /v1/sources HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
    time.sleep(0.5)
    log = daemon.log_text()[mark:]
    assert len(log.splitlines()) <= 10, log
    whole = daemon.log_text()  # everything the daemon logged since it started
    assert TOKEN not in whole
    assert "Traceback" not in whole
    assert "api: bad request" in log  # it is logged, once, redacted
    assert _settled(daemon) == {"connections": 0, "subscribers": 0, "streams": 0}
    assert daemon.alive()


def test_a_repeated_client_error_is_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limiter = RateLimitedLog(logging.getLogger("test.bounded"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "test.bounded"):
        for i in range(100):
            now[0] = i * 0.05  # 5 s of one error every 50 ms
            limiter.log(logging.INFO, "bad", f"bad request {i} ?access_token={TOKEN}")
        now[0] = 11.0
        limiter.log(logging.INFO, "bad", "bad request again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad request 0 ?access_token=***",
        "bad request again (and 99 more like it in the last 10 s)",
    ]


# -- slow clients ---------------------------------------------------------------------------


class _Control:
    """SourcesControl at the seam: starts nothing, or raises what a broken source would."""

    def __init__(self, exc: BaseException | None = None) -> None:
        self.exc = exc
        self.started: list[asyncio.Task[None]] = []

    @property
    def source_types(self) -> Any:
        from crossmodald.ingest.registry import SourceRegistry

        return SourceRegistry.default()

    def sources(self) -> list[dict[str, Any]]:
        return []

    async def start_source(self, config: Any) -> asyncio.Task[None]:
        # Async, as SourcesControl.start_source is (fleet mode writes to the shared list).
        if self.exc is not None:
            raise self.exc
        task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        self.started.append(task)
        return task

    async def remove_source(self, name: str) -> dict[str, Any]:
        raise KeyError(name)

    async def reload_from_file(self) -> Any:
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        return False


async def _serve(config: ApiConfig, control: _Control | None = None) -> tuple[str, web.AppRunner]:
    bus = EventBus(config.replay_size, config.subscriber_queue, config.slow_subscriber_s)
    app = build_app(bus, FakeStreams(), config, heartbeat_s=15.0, ws_heartbeat_s=None)
    add_source_routes(app, control or _Control())
    runner = await serve(app, "127.0.0.1", 0, shutdown_timeout_s=1.0)
    return f"http://127.0.0.1:{bound_port(runner)}", runner


@pytest.fixture
async def small() -> AsyncIterator[tuple[str, web.Application]]:
    config = ApiConfig(
        port=0,
        slow_subscriber_s=1.0,
        limits=ApiLimitsConfig(
            max_connections_per_client=4, max_subscribers_per_client=4, body_timeout_s=1.0
        ),
    )
    url, runner = await _serve(config)
    try:
        yield url, runner.app
    finally:
        await runner.cleanup()


async def _trickle(port: int, stop: asyncio.Event) -> float | None:
    """POST headers, then a byte every 0.3 s; seconds until the server answered or closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    try:
        writer.write(
            b"POST /v1/sources HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n"
        )
        while not stop.is_set():
            writer.write(b" ")
            await writer.drain()
            try:
                async with asyncio.timeout(0.3):
                    answer = await reader.read(200)
            except TimeoutError:
                continue
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
            return time.monotonic() - t0
        return None
    except ConnectionError:
        return time.monotonic() - t0
    finally:
        writer.close()


async def test_trickled_bodies_hold_no_slot_and_are_cut_at_the_deadline(
    small: tuple[str, web.Application],
) -> None:
    url, app = small
    port = int(url.rsplit(":", 1)[1])
    stop = asyncio.Event()
    tricklers = [asyncio.create_task(_trickle(port, stop)) for _ in range(16)]  # 4x the limit
    await asyncio.sleep(0.5)
    limits = app[LIMITS]
    assert limits.held("connections") == 0  # bodies still arriving hold nothing
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/v1/streams"):
            async with session.get(url + path) as resp:
                assert resp.status == 200, path
        body = {"type": "pattern", "name": "ok"}
        async with session.post(url + "/v1/sources", json=body) as resp:
            assert resp.status == 201, await resp.text()
    cut_after = await asyncio.wait_for(asyncio.gather(*tricklers), 10)
    assert all(t is not None and t < 3.0 for t in cut_after), cut_after
    stop.set()
    assert limits.held("connections") == 0
    assert limits.held("streams") == 1  # the stream that started


async def test_healthz_answers_whatever_the_per_client_limits(
    small: tuple[str, web.Application],
) -> None:
    url, _app = small
    async with aiohttp.ClientSession() as session:
        subs = [await session.get(url + "/v1/events") for _ in range(4)]
        assert [s.status for s in subs] == [200] * 4
        async with session.get(url + "/v1/streams") as resp:
            assert resp.status == 429
        for path in ("/healthz", "/readyz"):
            async with session.get(url + path) as resp:
                assert resp.status in (200, 503), path  # readyz: FakeStreams is not ready
                assert resp.status != 429
        for sub in subs:
            sub.close()


async def test_a_closed_filtered_subscriber_frees_its_slot_at_once(
    small: tuple[str, web.Application],
) -> None:
    url, app = small
    limits = app[LIMITS]
    async with aiohttp.ClientSession() as session:
        resp = await session.get(url + "/v1/events?stream=nothing-ever")
        assert resp.status == 200
        assert limits.held("subscribers") == 1
        resp.close()
        t0 = time.monotonic()
        while limits.held("subscribers") and time.monotonic() - t0 < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # The keep-alive comment is 15 s away: only noticing the close frees it this soon.
    assert time.monotonic() - t0 < 1.0
    assert limits.held("connections") == 0


async def test_a_subscriber_that_does_not_read_is_cut_after_slow_subscriber_s() -> None:
    config = ApiConfig(port=0, slow_subscriber_s=1.0, subscriber_queue=100_000)
    url, runner = await _serve(config)
    bus = runner.app[API_STATE].bus
    limits = runner.app[LIMITS]
    port = int(url.rsplit(":", 1)[1])
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        while limits.held("subscribers") == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        # 1 MiB of events over 2 s: far less than the kernel would buffer unbounded (megabytes),
        # far more than the client's receive buffer plus subscriber_buffer_bytes. The bus's own
        # queue never gets full (subscriber_queue is large): only the stalled write can cut it.
        payload = {"pad": "x" * 1000}
        for n in range(1024):
            bus.publish(Event("test.big", "s", n, n + 1, payload))
            if n % 64 == 0:
                await asyncio.sleep(0.125)
        published_at = time.monotonic()
        while limits.held("subscribers") and time.monotonic() - published_at < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert limits.held("subscribers") == 0, "the non-reading subscriber was not cut"
        assert time.monotonic() - published_at < 1.0 + 3.0
        writer.close()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("exc", [OverflowError("cannot convert float infinity"), KeyError("x")])
async def test_a_source_that_raises_at_start_is_a_422_and_keeps_no_slot(
    exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    url, runner = await _serve(ApiConfig(port=0), _Control(exc))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(10):  # more than max_streams_per_client (8)
                body = {"type": "pattern", "name": "boom"}
                async with session.post(url + "/v1/sources", json=body) as resp:
                    assert resp.status == 422
                    message = (await resp.json())["error"]
                    assert type(exc).__name__ in message
                    assert "\n" not in message
        assert runner.app[LIMITS].held("streams") == 0
        assert SOURCES_CONTROL in runner.app
        assert "Traceback" not in caplog.text
    finally:
        await runner.cleanup()


async def test_a_client_that_vanishes_mid_body_logs_nothing(
    small: tuple[str, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    url, app = small
    port = int(url.rsplit(":", 1)[1])
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /v1/sources HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 500\r\n\r\n{"
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()
        await asyncio.sleep(0.3)
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info is not None]
    assert app[LIMITS].held("connections") == 0


async def test_work_a_departed_client_started_still_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from crossmodald.api.serverlog import shield_from_client

    finished: list[bool] = []

    async def work(fail: bool) -> None:
        await asyncio.sleep(0.05)
        finished.append(fail)
        if fail:
            raise ValueError("the stream would not stop")

    for fail in (False, True):
        handler = asyncio.create_task(shield_from_client(work(fail)))
        await asyncio.sleep(0.01)
        handler.cancel()  # what aiohttp does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await handler
        await asyncio.sleep(0.1)
    assert finished == [False, True]
    assert "work for a client that left failed: ValueError: the stream would not stop" in (
        caplog.text
    )
    assert "never retrieved" not in caplog.text
