"""The ``nats`` sink against a real ``nats-server`` (JetStream on) on a loopback port; what
arrived is read with nats-py's own JetStream consumer, not with our code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from brokerkit import BrokerProcess, nats_binary

from crossmodald.bus import Event, EventBus, JsonlSink, Sink, event_schema
from crossmodald.bus.broker import BrokerSink
from crossmodald.bus.jsonl import JsonlSinkConfig

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")

from crossmodald.bus.nats_sink import NatsSinkConfig, NatsSinkFactory  # noqa: E402

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        nats_binary() is None,
        reason="nats-server is not installed (apt-get install nats-server; .ci/run does)",
    ),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BrokerProcess]:
    proc = BrokerProcess("nats", tmp_path / "nats")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def new_bus() -> EventBus:
    return EventBus(replay_size=50_000, subscriber_queue=50_000, slow_subscriber_s=30.0)


def ev(n: int, type_: str = "sync.offset", stream: str = "cam1") -> Event:
    return Event(type_, stream, n, n + 1, {"n": n})


def sink_config(url: str, **kw: Any) -> NatsSinkConfig:
    base: dict[str, Any] = {
        "type": "nats",
        "url": url,
        "daemon": "studio.1",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
        "ack_timeout_s": 2.0,
        "connect_timeout_s": 2.0,
    }
    return NatsSinkConfig(**{**base, **kw})


async def start(sink: BrokerSink, bus: EventBus) -> asyncio.Task[None]:
    task = asyncio.create_task(sink.run(bus))
    async with asyncio.timeout(10):
        while not sink.stats.connected:  # noqa: ASYNC110 - a test watches a flag
            await asyncio.sleep(0.02)
    return task


async def stored(url: str, stream: str = "CROSSMODALD") -> list[Any]:
    """Every message in the JetStream stream, read by an ordered push consumer (nats-py)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        count = info.state.messages
        sub = await js.subscribe(">", stream=stream, ordered_consumer=True)
        out = [await sub.next_msg(5) for _ in range(count)]
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def test_subjects_headers_payload_and_stream_limits(server: BrokerProcess) -> None:
    bus = new_bus()
    config = sink_config(server.url, max_age_s=3600, max_bytes=10_000_000, max_msgs=5000)
    sink = NatsSinkFactory.create(config)
    assert isinstance(sink, Sink)
    assert sink.identity == f"nats:{server.url}/crossmodald.studio%2E1"
    task = await start(sink, bus)
    bus.publish(ev(1, "sync.offset", "cam.1"))
    bus.publish(ev(2, "sync.alarm", "cam1"))
    bus.publish(Event("stream.fault", "", 0, 0, {"kind": "x", "message": "daemon-wide"}))
    await sink.flush()
    await sink.aclose()
    await task
    msgs = await stored(server.url)
    assert [m.subject for m in msgs] == [
        "crossmodald.studio%2E1.cam%2E1.sync.offset",
        "crossmodald.studio%2E1.cam1.sync.alarm",
        "crossmodald.studio%2E1._.stream.fault",
    ]
    bodies = [json.loads(m.data) for m in msgs]
    assert [b["seq"] for b in bodies] == [1, 2, 3]
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [b["id"] for b in bodies]
    assert sink.stats.written == 3
    assert sink.stats.ack_count == 3
    assert sink.stats.ack_p50_s is not None
    # The stream was created with the configured limits.
    nc = await nats.connect(server.url)
    try:
        info = await nc.jetstream().stream_info("CROSSMODALD")
    finally:
        await nc.close()
    assert info.config.subjects == ["crossmodald.>"]
    assert info.config.max_age == 3600
    assert info.config.max_bytes == 10_000_000
    assert info.config.max_msgs == 5000


async def test_duplicates_are_dropped_by_msg_id(server: BrokerProcess) -> None:
    # A sink that sends again what another already sent (a reload replaying from an older seq,
    # a resend after a reconnect): JetStream keeps each event once.
    bus = new_bus()
    first = NatsSinkFactory.create(sink_config(server.url))
    task = await start(first, bus)
    for n in range(1, 51):
        bus.publish(ev(n))
    await first.flush()
    await first.aclose()
    await task
    again = NatsSinkFactory.create(sink_config(server.url))
    task = asyncio.create_task(again.run(bus, after_seq=0))  # replays all 50
    await asyncio.sleep(0.1)
    bus.publish(ev(51))
    async with asyncio.timeout(10):
        while again.stats.written < 51:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await again.aclose()
    await task
    msgs = await stored(server.url)
    assert [json.loads(m.data)["seq"] for m in msgs] == list(range(1, 52))


async def test_server_killed_and_restarted_under_load(
    server: BrokerProcess, tmp_path: Path
) -> None:
    """Events published while the server is away are buffered and delivered once it is back;
    with a small buffer the overflow is counted and told by a sink.fault with its seq range.
    Every seq is accounted for: stored in JetStream, or inside a reported dropped range. A
    JSONL sink on the same bus keeps writing meanwhile."""
    bus = new_bus()
    sink = NatsSinkFactory.create(sink_config(server.url, buffer=300, inflight=32))
    jsonl_path = tmp_path / "all.jsonl"
    jsonl = JsonlSink(JsonlSinkConfig(type="jsonl", path=jsonl_path))
    jsonl_task = asyncio.create_task(jsonl.run(bus))
    task = await start(sink, bus)
    n = 0

    async def load(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            bus.publish(ev(n))
            if n % 20 == 0:
                await asyncio.sleep(0.005)

    await load(400)
    before_kill = bus.last_seq
    server.stop()  # SIGKILL, mid-stream
    await load(1000)  # far more than the buffer holds
    async with asyncio.timeout(10):
        while sink.stats.connected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert sink.stats.buffered <= 300
    server.start()
    async with asyncio.timeout(20):
        while not any(e.type == "sink.fault" for e in bus.replay_snapshot()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await load(200)
    await sink.flush()
    await sink.aclose()
    await task
    await jsonl.aclose()
    await jsonl_task
    stats = sink.stats
    assert stats.dropped > 0
    assert stats.reconnects >= 1
    faults = [e.as_dict() for e in bus.replay_snapshot() if e.type == "sink.fault"]
    assert all(f["data"]["sink"] == sink.identity for f in faults)
    schema = jsonschema.Draft202012Validator(event_schema())
    assert all(schema.is_valid(f) for f in faults)
    dropped_seqs: set[int] = set()
    for fault in faults:
        data = fault["data"]
        if data["dropped"]:
            assert data["kind"] == "dropped"
            dropped_seqs.update(range(data["first_seq"], data["last_seq"] + 1))
    assert sum(f["data"]["dropped"] for f in faults) == stats.dropped
    got = [json.loads(m.data)["seq"] for m in await stored(server.url)]
    assert len(got) == len(set(got)), "a duplicate was stored"
    published = {e["seq"] for e in map(json.loads, jsonl_path.read_text().splitlines())}
    # The JSONL sink kept going through the outage: it has every event of the bus.
    assert published == set(range(1, bus.last_seq + 1))
    # None silently lost: each event is stored or lies in a range a sink.fault reported (but
    # the last fault, told on the bus by the sink as it closed, came after its subscription).
    closing_fault = faults[-1]["seq"] if faults[-1]["seq"] == bus.last_seq else None
    missing = published - set(got) - {closing_fault}
    assert missing, "the small buffer should have overflowed"
    assert missing <= dropped_seqs
    # Counted as dropped but stored: in flight at the kill, the server stored it and the ack was
    # lost with the connection; it went back to the buffer and overflowed from there. The
    # faults count those as unconfirmed (at most `inflight`, all published before the kill).
    unconfirmed = sum(f["data"]["unconfirmed"] for f in faults)
    assert 0 <= stats.dropped - len(missing) <= unconfirmed <= 32
    assert all(seq <= before_kill for seq in (dropped_seqs - {closing_fault}) & set(got))


async def test_closing_while_the_server_is_away_counts_and_tells(tmp_path: Path) -> None:
    # A server that never comes: the sink buffers, and when it is closed (a reload) it drops
    # what it holds, counts it, and tells the still-open bus.
    probe = BrokerProcess("nats", tmp_path / "nowhere")  # its port, never started
    bus = new_bus()
    sink = NatsSinkFactory.create(sink_config(probe.url, buffer=1000))
    task = asyncio.create_task(sink.run(bus, after_seq=0))
    for n in range(1, 101):
        bus.publish(ev(n))
    await asyncio.sleep(0.3)
    assert sink.stats.connected is False
    assert sink.stats.buffered == 100
    await asyncio.wait_for(sink.aclose(), 10)
    await task
    assert sink.stats.dropped == 100
    fault = bus.replay_snapshot()[-1].as_dict()
    assert fault["type"] == "sink.fault"
    assert fault["data"]["kind"] == "dropped"
    assert (fault["data"]["first_seq"], fault["data"]["last_seq"]) == (1, 100)


async def test_credentials_user_password_and_token(tmp_path: Path) -> None:
    for name, auth in (
        ("userpass", "authorization { user: crossmodald, password: s3cret-pw }"),
        ("token", "authorization { token: tok-123456 }"),
    ):
        proc = BrokerProcess("nats", tmp_path / name, extra_conf=auth)
        proc.start()
        try:
            if name == "token":
                good = sink_config(proc.url, token="tok-123456")
                bad = sink_config(proc.url, token="wrong-token")
                in_url = sink_config(proc.url.replace("//", "//tok-123456@"))
            else:
                good = sink_config(proc.url, user="crossmodald", password="s3cret-pw")
                bad = sink_config(proc.url, user="crossmodald", password="wrong")
                in_url = sink_config(proc.url.replace("//", "//crossmodald:s3cret-pw@"))
            assert "s3cret" not in in_url.identity
            assert "tok-123456" not in in_url.identity
            for config, ok in ((good, True), (in_url, True), (bad, False)):
                bus = new_bus()
                sink = NatsSinkFactory.create(config)
                task = asyncio.create_task(sink.run(bus, after_seq=0))
                bus.publish(ev(1))
                async with asyncio.timeout(5):
                    while ok and sink.stats.written < 1:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                if not ok:
                    await asyncio.sleep(0.5)
                assert sink.stats.connected is ok, config.identity
                await sink.aclose()
                await task
        finally:
            proc.stop()


async def test_a_stream_that_does_not_take_our_subjects_backs_off(server: BrokerProcess) -> None:
    # Connecting works, every publish fails (the configured stream exists but does not cover
    # the subjects): the sink must back off like for an absent server, not spin.
    nc = await nats.connect(server.url)
    try:
        await nc.jetstream().add_stream(name="OTHER", subjects=["other.>"])
    finally:
        await nc.close()
    bus = new_bus()
    config = sink_config(server.url, stream="OTHER", create_stream=False, reconnect_max_s=0.4)
    sink = NatsSinkFactory.create(config)
    task = asyncio.create_task(sink.run(bus, after_seq=0))
    bus.publish(ev(1))
    await asyncio.sleep(2.0)
    stats = sink.stats
    await sink.aclose()
    await task
    assert stats.written == 0
    assert stats.buffered == 1  # held, not lost, while the server refuses it
    # 0.05 s doubling to 0.4 s: about 7 attempts in 2 s; a spinning sink would make hundreds.
    assert 2 <= stats.reconnects <= 12
    faults = [e for e in bus.replay_snapshot() if e.type == "sink.fault"]
    assert len(faults) <= stats.reconnects + 1
    assert sink.stats.dropped == 1  # closed while it could not deliver: counted and told


def test_check_refuses_a_creds_file_it_cannot_read(tmp_path: Path) -> None:
    config = sink_config("nats://127.0.0.1:4222", creds=tmp_path / "missing.creds")
    with pytest.raises(OSError, match=r"cannot read creds file .*missing\.creds"):
        NatsSinkFactory.check(config)
    readable = tmp_path / "d.creds"
    readable.write_text("-----BEGIN NATS USER JWT-----\n")
    NatsSinkFactory.check(sink_config("nats://127.0.0.1:4222", creds=readable))
    # A server that is away is no reason to refuse: the sink buffers and reconnects.
    NatsSinkFactory.check(sink_config("nats://127.0.0.1:1"))
