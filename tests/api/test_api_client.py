"""The events client (crossmodald events) against a real server on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import sys

import pytest
from api_support import StartServer, ev

from crossmodald.api import EventsClientError, FollowedEvent, events_command, follow_events
from crossmodald.api.client import events_url, format_table_line
from crossmodald.bus import Event, EventBus
from crossmodald.service.config import ApiConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_subscribers(bus: EventBus, count: int) -> None:
    async with asyncio.timeout(10):
        # Polling: the subscription is made inside the server's handler; nothing to await.
        while bus.stats().subscribers != count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Collector:
    """Collects followed events and lets the test wait for a given seq."""

    def __init__(self) -> None:
        self.events: list[FollowedEvent] = []
        self.notices: list[str] = []
        self._changed = asyncio.Event()

    def on_event(self, event: FollowedEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def on_notice(self, text: str) -> None:
        self.notices.append(text)

    async def wait_seq(self, seq: int) -> None:
        async with asyncio.timeout(10):
            while not self.events or self.events[-1].seq != seq:
                self._changed.clear()
                await self._changed.wait()

    @property
    def seqs(self) -> list[int | None]:
        return [event.seq for event in self.events]


def test_events_url_accepts_base_or_full_url() -> None:
    assert str(events_url("http://127.0.0.1:8750")) == "http://127.0.0.1:8750/v1/events"
    assert str(events_url("http://127.0.0.1:8750/")) == "http://127.0.0.1:8750/v1/events"
    assert str(events_url("http://h:1/v1/events?x=1")) == "http://h:1/v1/events"
    assert str(events_url("http://h:1/proxy/")) == "http://h:1/proxy/v1/events"
    with pytest.raises(EventsClientError, match="not an http"):
        events_url("ftp://h/")


def test_table_line() -> None:
    bus = EventBus(10, 10, 1.0, wall_clock=lambda: 1714564801.2345)
    offset = bus.publish(
        Event(
            "sync.offset",
            "testcard",
            0,
            1,
            {"audio_lead_ms": 40.0, "confidence": 0.98, "method": "flash_beep"},
        )
    )
    assert format_table_line(json.loads(offset.json)) == (
        "12:00:01.234 testcard sync.offset audio_lead_ms=+40.0 confidence=0.98 method=flash_beep"
    )
    fault = bus.publish(Event("stream.fault", "", 0, 1, {"kind": "gap", "message": "no audio"}))
    assert format_table_line(json.loads(fault.json)) == (
        '12:00:01.234 - stream.fault kind=gap message="no audio"'
    )


async def test_cannot_connect_is_one_line_and_exit_1() -> None:
    port = free_port()
    out, err = io.StringIO(), io.StringIO()
    code = await events_command(f"http://127.0.0.1:{port}", [], [], "jsonl", out=out, err=err)
    assert code == 1
    assert err.getvalue() == f"cannot connect to http://127.0.0.1:{port}: Connection refused\n"
    assert out.getvalue() == ""


async def test_usage_errors_exit_2() -> None:
    err = io.StringIO()
    assert await events_command("http://127.0.0.1:1", [], [], "xml", err=err) == 2
    assert "unknown format 'xml'" in err.getvalue()
    err = io.StringIO()
    assert await events_command("http://127.0.0.1:1", ["bad type"], [], "jsonl", err=err) == 2
    assert "type filter" in err.getvalue()


async def test_server_refusal_is_reported(start_server: StartServer) -> None:
    server = await start_server()
    err = io.StringIO()
    code = await events_command(f"{server.url}/elsewhere", [], [], "jsonl", err=err)
    assert code == 1
    assert err.getvalue() == (
        f"{server.url}/elsewhere/v1/events: HTTP 404: not found: /elsewhere/v1/events\n"
    )


async def test_jsonl_and_table_output(start_server: StartServer) -> None:
    server = await start_server(heartbeat_s=0.05)  # notices a client that left at once
    out = io.StringIO()
    task = asyncio.create_task(
        events_command(server.url, ["sync."], ["testcard"], "jsonl", out=out, err=io.StringIO())
    )
    await wait_subscribers(server.bus, 1)
    published = [
        server.bus.publish(ev(1, "sync.offset", audio_lead_ms=40.0, confidence=0.98)),
        server.bus.publish(ev(2, "stream.end", reason="eof")),  # filtered out
        server.bus.publish(ev(3, "sync.alarm", "cam1")),  # filtered out
        server.bus.publish(ev(4, "sync.alarm", audio_lead_ms=-90.0, limit_ms=60)),
    ]
    async with asyncio.timeout(5):
        while out.getvalue().count("\n") < 2:  # noqa: ASYNC110 - StringIO: nothing to await
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out.getvalue().splitlines() == [published[0].json, published[3].json]
    await wait_subscribers(server.bus, 0)

    table = io.StringIO()
    task = asyncio.create_task(events_command(server.url, [], [], "table", out=table))
    await wait_subscribers(server.bus, 1)
    server.bus.publish(ev(5, "sync.offset", audio_lead_ms=-12.25, confidence=0.5))
    async with asyncio.timeout(5):
        while not table.getvalue():  # noqa: ASYNC110 - StringIO: nothing to await
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert table.getvalue().endswith(" testcard sync.offset audio_lead_ms=-12.2 confidence=0.50\n")


async def test_reconnects_with_last_event_id_after_server_restart(
    start_server: StartServer,
) -> None:
    port = free_port()
    config = ApiConfig(port=port)
    bus = EventBus(config.replay_size, config.subscriber_queue, config.slow_subscriber_s)
    server = await start_server(bus=bus, config=config, port=port)
    got = Collector()
    follower = asyncio.create_task(
        follow_events(
            server.url,
            on_event=got.on_event,
            on_notice=got.on_notice,
            backoff_s=0.05,
            max_backoff_s=0.2,
            reconnect_attempts=100,
        )
    )
    await wait_subscribers(bus, 1)
    for n in range(1, 4):
        bus.publish(ev(n))
    await got.wait_seq(3)
    await server.stop()  # the daemon's API goes away ...
    for n in range(4, 6):
        bus.publish(ev(n))  # ... while events keep coming
    await asyncio.sleep(0.3)  # some reconnect attempts fail meanwhile
    await start_server(bus=bus, config=config, port=port)  # back on the same port
    await wait_subscribers(bus, 1)
    bus.publish(ev(6))
    await got.wait_seq(6)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    # 4 and 5 came from the replay buffer: the client resumed after seq 3, no duplicates.
    assert got.seqs == [1, 2, 3, 4, 5, 6]
    assert any("server shutting down" in text for text in got.notices)
    assert any("reconnecting" in text for text in got.notices)


async def test_gives_up_after_bounded_attempts(start_server: StartServer) -> None:
    server = await start_server()
    err = io.StringIO()
    task = asyncio.create_task(
        events_command(
            server.url,
            [],
            [],
            "jsonl",
            out=io.StringIO(),
            err=err,
            reconnect_attempts=2,
            backoff_s=0.01,
        )
    )
    await wait_subscribers(server.bus, 1)
    await server.stop()
    assert await asyncio.wait_for(task, 10) == 1
    last = err.getvalue().splitlines()[-1]
    assert last == (
        f"lost connection to {server.url}: Connection refused (gave up after 2 reconnect attempts)"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child is POSIX")
async def test_ctrl_c_exits_0(start_server: StartServer) -> None:
    server = await start_server()
    code = (
        "import asyncio, sys\n"
        "from crossmodald.api import events_command\n"
        f"sys.exit(asyncio.run(events_command({server.url!r}, [], [], 'jsonl')))\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_subscribers(server.bus, 1)
        first = server.bus.publish(ev(1))
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 10)
        assert line.decode().rstrip("\n") == first.json
        child.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(child.wait(), 10) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
