"""sd_notify over a real datagram socket: message format and order, no-op without a socket,
and a watchdog that stops when the event loop is blocked."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from notifykit import NotifyListener

from crossmodald.service.notify import MAX_STATUS_CHARS, Notifier, run_watchdog


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, NotifyListener]]:
    path = str(tmp_path / "notify.sock")
    sock = NotifyListener(path)
    yield path, sock
    sock.close()


def test_messages_arrive_in_order(listener: tuple[str, NotifyListener]) -> None:
    path, sock = listener
    notifier = Notifier(path)
    assert notifier.enabled
    assert notifier.notify(STATUS="loading plugins")
    assert notifier.ready("2 streams running; 0 event subscribers")
    assert notifier.reloading()
    assert notifier.ready()
    assert notifier.stopping("stopping")
    notifier.close()
    got = sock.wait_for(5)
    assert got[0] == {"STATUS": "loading plugins"}
    assert got[1] == {"READY": "1", "STATUS": "2 streams running; 0 event subscribers"}
    assert got[2]["RELOADING"] == "1"
    # systemd 253+ wants the reload's start on CLOCK_MONOTONIC in µs.
    assert abs(int(got[2]["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 5_000_000
    assert got[3] == {"READY": "1"}
    assert got[4] == {"STOPPING": "1", "STATUS": "stopping"}
    assert notifier.sent == 5


def test_status_is_one_bounded_line_and_sent_only_when_changed(
    listener: tuple[str, NotifyListener],
) -> None:
    path, sock = listener
    notifier = Notifier(path)
    assert notifier.status("a\nb   c")
    assert not notifier.status("a b c")  # unchanged
    assert notifier.status("a b c", force=True)
    assert notifier.status("x" * 1000)
    got = sock.wait_for(3)
    assert got[0] == {"STATUS": "a b c"}
    assert len(got[2]["STATUS"]) == MAX_STATUS_CHARS
    with pytest.raises(ValueError, match="one line"):
        notifier.notify(STATUS="two\nlines")


def test_abstract_socket() -> None:
    name = f"crossmodald-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = NotifyListener(b"\0" + name.encode())
    try:
        assert Notifier(f"@{name}").ready()
        assert sock.wait_for(1) == [{"READY": "1"}]
    finally:
        sock.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()
    assert notifier.watchdog_interval_s is None
    assert notifier.sent == 0


def test_a_vanished_socket_is_counted_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert not notifier.ready()
    assert notifier.failed == 1


def test_from_env() -> None:
    pid = str(os.getpid())
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "4000000"})
    assert n.enabled
    assert n.watchdog_interval_s == 2.0
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}
    )
    assert n.watchdog_interval_s == 2.0
    # The watchdog belongs to another process (e.g. a wrapper): not ours to feed.
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
    )
    assert n.watchdog_interval_s is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "soon"}).enabled
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative.sock"}).enabled
    with pytest.raises(ValueError, match="absolute path or @name"):
        Notifier("relative.sock")


async def test_watchdog_stops_while_the_loop_is_blocked(
    listener: tuple[str, NotifyListener],
) -> None:
    path, sock = listener
    notifier = Notifier(path, watchdog_usec=100_000)  # ping every 50 ms
    statuses = iter(range(1000))
    task = asyncio.create_task(
        run_watchdog(notifier, lambda: f"status {next(statuses)}", status_interval_s=0.2)
    )
    await asyncio.sleep(0.5)
    blocked_from = time.monotonic()
    time.sleep(0.6)  # noqa: ASYNC251 -- the point: a stuck call blocks the event loop
    blocked_to = time.monotonic()
    await asyncio.sleep(0.4)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.1)
    pings = [t for t, fields in sock.messages if fields.get("WATCHDOG") == "1"]
    before = [t for t in pings if t < blocked_from]
    after = [t for t in pings if t > blocked_to + 0.1]
    # Margins: a ping sent just before the block may be stamped by the reader a little later.
    during = [t for t in pings if blocked_from + 0.1 < t <= blocked_to - 0.01]
    assert len(before) >= 5, pings
    assert during == []
    assert len(after) >= 3, pings
    # Healthy: pings at most ~2 intervals apart; blocked: a gap as long as the block.
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 0.55
    assert sorted(gaps)[len(gaps) // 2] < 0.1
    statuses_sent = [f["STATUS"] for _t, f in sock.messages if "STATUS" in f]
    assert statuses_sent[0] == "status 0"
    assert len(statuses_sent) >= 4


async def test_watchdog_without_socket_returns_at_once() -> None:
    async with asyncio.timeout(1):
        await run_watchdog(Notifier(None, 100_000), lambda: "x")
