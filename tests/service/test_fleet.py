"""Fleet mode in-process: three daemons on one real ``nats-server -js`` (loopback).

Sources added through one daemon's API run on exactly one daemon, balanced; ``/v1/fleet`` and
``/v1/sources`` show the shared list from any daemon; events carry the daemon's id; a removed
source stops; NATS going away stops the streams only once their leases could have expired,
and the daemon takes them again when NATS is back. The kill -9 failover runs the daemons as
processes: tests/e2e/test_fleet_failover.py.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from crossmodald.bus import event_schema
from crossmodald.bus.bus import EventFilter
from crossmodald.config_errors import ConfigError
from crossmodald.ingest.registry import SourceRegistry
from crossmodald.service.config import load_config_text, validate_config
from crossmodald.service.daemon import Daemon
from crossmodald.service.fleet import Backoff, source_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from natskit import MISSING, NatsServer, Partition, free_port, nats_server, nats_server_binary

from pollkit import until

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[fleet]')")
needs_nats = pytest.mark.skipif(nats_server_binary() is None, reason=MISSING)

#: Small, cheap pattern sources (no plugins: the stream's own events are enough here).
PATTERN = {"type": "pattern", "width": 32, "height": 32, "fps": 10, "sample_rate": 8000}


def fleet_toml(url: str, daemon_id: str, bucket: str, ttl_s: float = 3.0, extra: str = "") -> str:
    return (
        "[api]\nport = 0\n"
        "[fleet]\n"
        f'nats_url = "{url}"\nbucket = "{bucket}"\ndaemon_id = "{daemon_id}"\n'
        f"lease_ttl_s = {ttl_s}\nscan_interval_s = 0.5\nrebalance_after_s = 2.0\n{extra}"
    )


class Member:
    def __init__(self, daemon: Daemon, stop: asyncio.Event, task: asyncio.Task[int]) -> None:
        self.daemon = daemon
        self.stop = stop
        self.task = task
        self.events: list[dict[str, Any]] = []
        #: Monotonic arrival time of each event (one clock for every daemon of the test).
        self.times: list[float] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.api_port}"

    def running(self) -> set[str]:
        return {
            name
            for name, state in self.daemon.stream_states.items()
            if state.task is not None and not state.task.done()
        }


@asynccontextmanager
async def member(text: str) -> AsyncIterator[Member]:
    daemon = Daemon(load_config_text(text))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    async with asyncio.timeout(10):
        # Ready, and in the fleet (the API answers 503 to POST /v1/sources until then).
        while not (daemon.ready() and daemon.fleet is not None and daemon.fleet.connected):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    out = Member(daemon, stop, task)
    sub = daemon.bus.subscribe(EventFilter(), 0, name="test")

    async def collect() -> None:
        try:
            async for envelope in sub:
                out.events.append(envelope.as_dict())
                out.times.append(time.monotonic())
        except Exception:
            return

    collector = asyncio.create_task(collect())
    try:
        yield out
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
        await asyncio.wait([collector], timeout=5)


# -- config ------------------------------------------------------------------------------


def test_fleet_config_is_validated() -> None:
    ok = validate_config({"fleet": {"daemon_id": "a", "nats_url": "nats://127.0.0.1:4222"}})
    assert ok.fleet is not None
    assert ok.fleet.lease_ttl_s == 5.0
    assert ok.fleet.servers == ["nats://127.0.0.1:4222"]
    with pytest.raises(ConfigError, match=r"cannot be used with \[fleet\]"):
        validate_config({"fleet": {}, "sources": [{"type": "pattern", "name": "p"}]})
    with pytest.raises(ConfigError, match=r"a third of fleet\.lease_ttl_s"):
        validate_config({"fleet": {"lease_ttl_s": 3, "scan_interval_s": 2}})
    with pytest.raises(ConfigError, match="nats://"):
        validate_config({"fleet": {"nats_url": "http://127.0.0.1:4222"}})
    with pytest.raises(ConfigError, match="daemon_id"):
        validate_config({"fleet": {"daemon_id": "a b"}})
    # Without [fleet] nothing changes: no daemon id in the events.
    assert validate_config({}).fleet is None


def test_the_fleet_guide_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import tomllib

    guide = (Path(__file__).resolve().parents[2] / "docs" / "fleet.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", guide, flags=re.DOTALL)
    assert blocks
    for name in ("api-token", "nats-token"):
        (tmp_path / name).write_text("a-secret-of-at-least-16-chars\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    for block in blocks:
        config = validate_config(tomllib.loads(block), "docs/fleet.md")
        assert config.fleet is not None
        assert config.fleet.daemon_id == "av1"


def test_source_table_validates_back_to_the_same_config() -> None:
    types = SourceRegistry.default()
    config = types.validate_table({**PATTERN, "name": "p1", "fps": "30000/1001"})
    assert types.validate_table(source_table(config)) == config


def test_backoff_grows_with_jitter_and_resets() -> None:
    import random

    backoff = Backoff(random.Random(1))
    waits = [backoff.next() for _ in range(10)]
    assert 0.16 <= waits[0] <= 0.24
    assert waits[3] > waits[0] * 4
    assert max(waits) <= 12.0  # capped (10 s ± 20 %)
    backoff.reset()
    assert backoff.next() <= 0.24


def test_events_carry_the_daemon_id_only_in_fleet_mode() -> None:
    from crossmodald.bus.bus import EventBus
    from crossmodald.bus.events import Event

    schema = event_schema()
    for daemon_id in ("av1", None):
        bus = EventBus(
            replay_size=4, subscriber_queue=4, slow_subscriber_s=1.0, daemon_id=daemon_id
        )
        event = bus.publish(Event("stream.fault", "s", 0, 1, {"kind": "gap", "message": "x"}))
        body = event.as_dict()
        jsonschema.validate(body, schema)
        assert body.get("daemon") == daemon_id
        assert ("daemon" in body) == (daemon_id is not None)


# -- three daemons -----------------------------------------------------------------------


@needs_nats
async def test_three_daemons_share_one_list(tmp_path: Path) -> None:
    async with nats_server(tmp_path / "js") as server, AsyncExitStack() as stack:
        members = [
            await stack.enter_async_context(member(fleet_toml(server.url, name, "t1")))
            for name in ("a", "b", "c")
        ]
        a, b, c = members
        names = [f"p{i}" for i in range(6)]
        async with aiohttp.ClientSession() as http:
            for name in names:
                async with http.post(f"{a.url}/v1/sources", json={**PATTERN, "name": name}) as r:
                    assert r.status == 201, await r.text()
                    body = await r.json()
                    assert body["origin"] == "fleet"
            async with http.post(f"{b.url}/v1/sources", json={**PATTERN, "name": "p0"}) as r:
                assert r.status == 409
                assert "already has a source" in (await r.json())["error"]

            def placed() -> bool:
                running = [m.running() for m in members]
                return sorted(n for r in running for n in r) == names

            await until(placed, 20, "every source running on one daemon")
            # Each on exactly one daemon, balanced two by two.
            assert [len(m.running()) for m in members] == [2, 2, 2]
            owner = {n: m.daemon.fleet.daemon_id for m in members for n in m.running()}  # type: ignore[union-attr]

            # Any daemon's /v1/fleet tells the same story (after its next scan).
            async def fleet_of(m: Member) -> dict[str, Any]:
                async with http.get(f"{m.url}/v1/fleet") as r:
                    assert r.status == 200
                    out: dict[str, Any] = await r.json()
                    return out

            async def agrees() -> bool:
                view = await fleet_of(c)
                on = {s["name"]: s["daemon"] for s in view["sources"]}
                return on == owner and all(s["state"] == "running" for s in view["sources"])

            async with asyncio.timeout(10):
                while not await agrees():  # noqa: ASYNC110 -- polls another daemon's API
                    await asyncio.sleep(0.1)
            view = await fleet_of(c)
            assert view["daemon"] == "c"
            assert view["connected"] is True
            loads = {d["daemon"]: (d["alive"], d["load"]) for d in view["daemons"]}
            assert loads == {"a": (True, 2), "b": (True, 2), "c": (True, 2)}
            async with http.get(f"{b.url}/v1/sources") as r:
                listed = {s["name"]: s["daemon"] for s in (await r.json())["sources"]}
            assert listed == owner
            async with http.get(f"{b.url}/metrics") as r:
                metrics = await r.text()
            assert "\ncrossmodald_fleet_connected 1\n" in metrics
            assert "\ncrossmodald_fleet_leases 2\n" in metrics
            assert "\ncrossmodald_fleet_sources 6\n" in metrics
            assert "\ncrossmodald_fleet_leases_acquired_total 2\n" in metrics

            # Events say which daemon produced them, and follow the schema.
            schema = event_schema()
            await until(
                lambda: all(
                    any(e["stream"] == n and e["type"] == "stream.start" for m in members
                        for e in m.events)
                    for n in names
                ),
                10,
                "stream.start of every source",
            )  # fmt: skip
            for m in members:
                me = m.daemon.fleet.daemon_id  # type: ignore[union-attr]
                for event in m.events:
                    assert event["daemon"] == me
                    jsonschema.validate(event, schema)
                    if event["stream"]:
                        assert owner[event["stream"]] == me

            # DELETE through another daemon: the leaseholder stops it.
            gone = names[0]
            holder = next(m for m in members if gone in m.running())
            async with http.delete(f"{b.url}/v1/sources/{gone}") as r:
                assert r.status == 200
                assert (await r.json())["removed"] is True
            async with http.delete(f"{b.url}/v1/sources/{gone}") as r:
                assert r.status == 404
            await until(lambda: gone not in holder.running(), 10, f"{gone} stopped")

            # A clean stop hands its sources over at once (no waiting for the TTL).
            moved = sorted(c.running())
            started = time.monotonic()
            c.stop.set()
            await c.task
            await until(lambda: set(moved) <= a.running() | b.running(), 10, f"{moved} taken over")
            took = time.monotonic() - started
            assert took < 3.0 + 2, took  # less than the lease TTL (3 s) plus two scans
            # Every other source stays placed. Not asserted at this instant: on a loaded machine
            # a renewal can be late by the guard's margin (the three daemons share one event
            # loop and one NATS server here), and the guard then stops that stream until a scan
            # takes it again (seen once in a full run: p2 and p5 stopped, "not renewed for 2.4 s").
            await until(
                lambda: sorted(a.running() | b.running()) == sorted(names[1:]),
                10,
                "every remaining source running on a or b",
            )


@needs_nats
async def test_nats_away_keeps_streams_until_the_leases_could_expire(tmp_path: Path) -> None:
    ttl = 3.0
    async with (
        nats_server(tmp_path / "js") as server,
        member(fleet_toml(server.url, "solo", "t2", ttl)) as m,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"{m.url}/v1/sources", json={**PATTERN, "name": "s"}) as r:
            assert r.status == 201
        await until(lambda: m.running() == {"s"}, 10, "s running")
        await server.stop()
        away = time.monotonic()
        # Still running for a while: the lease is ours until it could expire.
        await asyncio.sleep(ttl / 3)
        assert m.running() == {"s"}
        await until(lambda: not m.running(), ttl + 2, "s stopped (split-brain rule)")
        stopped_after = time.monotonic() - away
        assert stopped_after < ttl, stopped_after  # before the server would expire it
        # The API says so instead of failing obscurely; the daemon lives on.
        async with http.post(f"{m.url}/v1/sources", json={**PATTERN, "name": "x"}) as r:
            assert r.status == 503
        async with http.get(f"{m.url}/v1/fleet") as r:
            assert (await r.json())["connected"] is False
        assert not m.task.done()
        await server.start()  # same store: the list survived
        await until(lambda: m.running() == {"s"}, 20, "s running again after NATS is back")
        assert m.daemon.fleet is not None
        assert m.daemon.fleet.reconnects >= 1
        assert m.daemon.fleet.lost >= 1


@needs_nats
async def test_a_daemon_over_its_share_hands_sources_to_a_new_one(tmp_path: Path) -> None:
    names = {f"r{i}" for i in range(4)}
    async with (
        nats_server(tmp_path / "js") as server,
        member(fleet_toml(server.url, "a", "t3")) as a,
        aiohttp.ClientSession() as http,
    ):
        for name in sorted(names):
            async with http.post(f"{a.url}/v1/sources", json={**PATTERN, "name": name}) as r:
                assert r.status == 201
        await until(lambda: a.running() == names, 10, "a runs all four alone")
        async with member(fleet_toml(server.url, "b", "t3")) as b:
            # rebalance_after_s = 2: a hands two back, one per scan, and b takes them.
            await until(lambda: len(a.running()) == 2 and len(b.running()) == 2, 15, "two each")
            assert a.running() | b.running() == names
            assert a.daemon.fleet is not None
            assert a.daemon.fleet.released == 2
            # Stable: nothing moves any more.
            await asyncio.sleep(3)
            assert len(a.running()) == 2
            assert len(b.running()) == 2


@needs_nats
async def test_a_replaced_source_restarts_with_its_new_config(tmp_path: Path) -> None:
    async with (
        nats_server(tmp_path / "js") as server,
        member(fleet_toml(server.url, "a", "t4")) as a,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"{a.url}/v1/sources", json={**PATTERN, "name": "cam."}) as r:
            assert r.status == 422  # not a key-value key
        async with http.post(f"{a.url}/v1/sources", json={**PATTERN, "name": "s"}) as r:
            assert r.status == 201
        await until(lambda: a.running() == {"s"}, 10, "s running")

        def lead() -> float:
            config = a.daemon.stream_states["s"].source_config
            return config.audio_lead_ms  # type: ignore[union-attr,attr-defined,no-any-return]

        assert lead() == 0.0
        # Removed and added again with another offset, quicker than a scan.
        async with http.delete(f"{a.url}/v1/sources/s") as r:
            assert r.status == 200
        new = {**PATTERN, "name": "s", "audio_lead_ms": 80.0}
        async with http.post(f"{a.url}/v1/sources", json=new) as r:
            assert r.status == 201
        await until(lambda: a.running() == {"s"} and lead() == 80.0, 10, "s restarted anew")


@needs_nats
async def test_what_a_capped_daemon_cannot_take_goes_to_another(tmp_path: Path) -> None:
    names = {f"m{i}" for i in range(4)}
    async with (
        nats_server(tmp_path / "js") as server,
        member(fleet_toml(server.url, "small", "t5", extra="max_streams = 1\n")) as small,
        member(fleet_toml(server.url, "big", "t5")) as big,
        aiohttp.ClientSession() as http,
    ):
        for name in sorted(names):
            async with http.post(f"{small.url}/v1/sources", json={**PATTERN, "name": name}) as r:
                assert r.status == 201
        # Fair share 2 each; small stops at 1, and big takes the one left over beyond its share.
        await until(lambda: len(small.running()) == 1 and len(big.running()) == 3, 15, "1 + 3")
        assert small.running() | big.running() == names
        await asyncio.sleep(3)  # and nothing moves back and forth
        assert len(small.running()) == 1
        assert len(big.running()) == 3


@needs_nats
async def test_a_daemon_starts_without_nats_and_joins_when_it_comes(tmp_path: Path) -> None:
    binary = nats_server_binary()
    assert binary is not None
    server = NatsServer(binary, free_port(), tmp_path / "js")  # not started yet
    daemon = Daemon(load_config_text(fleet_toml(server.url, "late", "t6")))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(daemon.ready, 10, "ready without NATS")
        assert daemon.fleet is not None
        await asyncio.sleep(1.0)  # a few failed connection attempts
        assert not daemon.fleet.connected
        assert not task.done()
        await server.start()
        fleet = daemon.fleet
        await until(lambda: fleet.connected, 20, "joined once NATS is there")
        url = f"http://127.0.0.1:{daemon.api_port}"
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/sources", json={**PATTERN, "name": "z"}) as r,
        ):
            assert r.status == 201
        await until(lambda: "z" in daemon.stream_states, 10, "z taken")
    finally:
        stop.set()
        async with asyncio.timeout(30):
            assert await task == 0
        await server.stop()


@needs_nats
async def test_a_daemon_cut_off_from_nats_stops_before_another_takes_over(
    tmp_path: Path,
) -> None:
    ttl = 3.0
    async with nats_server(tmp_path / "js") as server:
        split = Partition(server.port)
        await split.start()
        try:
            async with (
                member(fleet_toml(split.url, "cut", "t7", ttl)) as cut,
                member(fleet_toml(server.url, "rest", "t7", ttl)) as rest,
                aiohttp.ClientSession() as http,
            ):
                names = {f"n{i}" for i in range(4)}
                for name in sorted(names):
                    async with http.post(
                        f"{rest.url}/v1/sources", json={**PATTERN, "name": name}
                    ) as r:
                        assert r.status == 201
                await until(
                    lambda: len(cut.running()) == 2 and len(rest.running()) == 2, 15, "2 + 2"
                )
                moved = cut.running()
                split.cut()  # silent: no reset, the daemon notices by time-outs only
                await until(lambda: rest.running() == names, 2 * ttl + 3, "rest runs all four")
                assert not cut.running()
                assert not cut.task.done()
                for name in moved:
                    # The cut-off daemon's last event of the stream (its stream.end) came
                    # before the other daemon's first: never two daemons at once.
                    last = max(
                        t for t, e in zip(cut.times, cut.events, strict=True) if e["stream"] == name
                    )
                    mark = next(
                        t
                        for t, e in zip(rest.times, rest.events, strict=True)
                        if e["stream"] == name and e["type"] == "stream.start"
                    )
                    assert last < mark, (name, mark - last)
                # Healed: the daemon comes back and gets its share again (rebalancing).
                split.heal()
                await until(
                    lambda: len(cut.running()) == 2 and len(rest.running()) == 2,
                    30,
                    "2 + 2 again after the split",
                )
                assert cut.daemon.fleet is not None
                assert cut.daemon.fleet.reconnects >= 1
        finally:
            await split.aclose()
