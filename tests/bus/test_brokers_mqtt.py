"""The ``mqtt`` sink against a real ``mosquitto`` on a loopback port; what arrived is read with
aiomqtt (the official asyncio client), not with our code."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokerkit import BrokerProcess, mosquitto_binary

from crossmodald.bus import Event, EventBus, JsonlSink, Phase
from crossmodald.bus.broker import BrokerSink
from crossmodald.bus.jsonl import JsonlSinkConfig

aiomqtt = pytest.importorskip(
    "aiomqtt", reason="aiomqtt is not installed (pip install -e '.[test]')"
)

from crossmodald.bus.mqtt_sink import MqttSinkConfig, MqttSinkFactory  # noqa: E402

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        mosquitto_binary() is None,
        reason="mosquitto is not installed (apt-get install mosquitto; .ci/run does)",
    ),
]

# Persistent sessions survive a broker restart (the test's subscriber keeps its queue), and an
# offline subscriber's queue is not capped at mosquitto's default 1000.
PERSISTENT = "persistence true\nautosave_interval 1\nmax_queued_messages 0\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(
        "mqtt", tmp_path / "mqtt", extra_conf=PERSISTENT + f"persistence_location {tmp_path}/\n"
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def new_bus() -> EventBus:
    return EventBus(replay_size=50_000, subscriber_queue=50_000, slow_subscriber_s=30.0)


def ev(n: int, type_: str = "test.tick", stream: str = "cam1", **data: Any) -> Event:
    return Event(type_, stream, n, n + 1, {"n": n, **data})


def sink_config(url: str, **kw: Any) -> MqttSinkConfig:
    base: dict[str, Any] = {
        "type": "mqtt",
        "url": url,
        "daemon": "d1",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
        "ack_timeout_s": 3.0,
        "connect_timeout_s": 2.0,
    }
    return MqttSinkConfig(**{**base, **kw})


async def start(sink: BrokerSink, bus: EventBus) -> asyncio.Task[None]:
    task = asyncio.create_task(sink.run(bus, after_seq=bus.last_seq))
    async with asyncio.timeout(10):
        while not sink.stats.connected:  # noqa: ASYNC110 - a test watches a flag
            await asyncio.sleep(0.02)
    return task


async def retained(port: int, topic: str, settle_s: float = 0.5) -> dict[str, bytes]:
    """Every retained message under ``topic`` now (a fresh subscription gets them)."""
    out: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(settle_s):
                async for message in client.messages:
                    if message.retain:
                        out[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
        except TimeoutError:
            pass
    return out


async def test_events_on_topics_with_qos1_and_availability(server: BrokerProcess) -> None:
    bus = new_bus()
    sink = MqttSinkFactory.create(sink_config(server.url, homeassistant=False))
    got: list[Any] = []
    async with aiomqtt.Client("127.0.0.1", server.port) as client:
        await client.subscribe("crossmodald/#", qos=1)
        task = await start(sink, bus)
        bus.publish(ev(1, "sync.offset", "cam1"))
        bus.publish(ev(2, "speech", "cam.2"))
        bus.publish(Event("stream.fault", "", 0, 0, {"kind": "x", "message": "daemon-wide"}))
        await sink.flush()
        async with asyncio.timeout(5):
            async for message in client.messages:
                if str(message.topic) != "crossmodald/_daemon/d1/availability":
                    got.append(message)
                if len(got) == 3:
                    break
        events = got
        assert [str(m.topic) for m in events] == [
            "crossmodald/cam1/sync.offset",
            "crossmodald/cam.2/speech",
            "crossmodald/_/stream.fault",
        ]
        assert all(m.qos == 1 and not m.retain for m in events)
        assert [json.loads(m.payload)["seq"] for m in events] == [1, 2, 3]
        assert (await retained(server.port, "crossmodald/_daemon/+/availability")) == {
            "crossmodald/_daemon/d1/availability": b"online"
        }
        await sink.aclose()
        await task
    # A sink that closes says so.
    assert (await retained(server.port, "crossmodald/_daemon/+/availability")) == {
        "crossmodald/_daemon/d1/availability": b"offline"
    }


_DIE = """
import asyncio, sys
from crossmodald.bus import EventBus
from crossmodald.bus.mqtt_sink import MqttSinkConfig, MqttSinkFactory
async def main():
    bus = EventBus(replay_size=10, subscriber_queue=10, slow_subscriber_s=5)
    sink = MqttSinkFactory.create(MqttSinkConfig(type="mqtt", url=sys.argv[1], daemon="dies"))
    task = asyncio.create_task(sink.run(bus))
    while not sink.stats.connected:
        await asyncio.sleep(0.02)
    print("connected", flush=True)
    await task
asyncio.run(main())
"""


async def test_last_will_says_offline_when_the_daemon_dies(server: BrokerProcess) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DIE, server.url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"connected"
        topic = "crossmodald/_daemon/dies/availability"
        assert (await retained(server.port, topic)) == {topic: b"online"}
        os.kill(proc.pid, signal.SIGKILL)  # no goodbye: the broker publishes the will
        await asyncio.wait_for(proc.wait(), 10)
        async with asyncio.timeout(5):
            while (await retained(server.port, topic, 0.2)) != {topic: b"offline"}:
                pass
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def check_discovery(config: dict[str, Any], component: str) -> None:
    """The keys Home Assistant's MQTT discovery needs for these entities, with valid values."""
    assert isinstance(config["name"], str)
    assert config["name"]
    assert isinstance(config["unique_id"], str)
    assert config["unique_id"]
    assert config["state_topic"].startswith("crossmodald/")
    assert "+" not in config["state_topic"]
    assert "#" not in config["state_topic"]
    assert config["availability_topic"] == "crossmodald/_daemon/d1/availability"
    assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    assert config["device"]["identifiers"]
    assert config["device"]["name"]
    if component == "sensor":
        assert config["unit_of_measurement"] == "ms"
        assert config["state_class"] == "measurement"
        assert config["value_template"] == "{{ value_json.audio_lead_ms }}"
    else:
        assert (config["payload_on"], config["payload_off"]) == ("ON", "OFF")
        assert config["device_class"] in ("problem", "sound")


async def test_home_assistant_discovery_state_and_removal(server: BrokerProcess) -> None:
    bus = new_bus()
    sink = MqttSinkFactory.create(sink_config(server.url))
    task = await start(sink, bus)
    for stream in ("cam1", "cam2"):
        bus.publish(Event("stream.start", stream, 0, 0, {"kind": "pattern"}))
    bus.publish(ev(3, "sync.offset", "cam1", smoothed_audio_lead_ms=39.96, confidence=0.9))
    bus.publish(ev(4, "sync.offset", "cam1", smoothed_audio_lead_ms=None, confidence=0.0))
    bus.publish(Event("sync.alarm", "cam1", 0, 0, {"audio_lead_ms": 90}, phase=Phase.START))
    bus.publish(Event("speech", "cam1", 0, 0, {}, phase=Phase.START))
    bus.publish(Event("speech", "cam1", 0, 0, {}, phase=Phase.END))
    await sink.flush()
    configs = await retained(server.port, "homeassistant/#")
    assert sorted(configs) == sorted(
        f"homeassistant/{component}/crossmodald_d1/{stream}_{key}/config"
        for stream in ("cam1", "cam2")
        for component, key in (
            ("sensor", "audio_lead_ms"),
            ("binary_sensor", "sync_alarm"),
            ("binary_sensor", "speech"),
        )
    )
    parsed = {topic: json.loads(payload) for topic, payload in configs.items()}
    for topic, config in parsed.items():
        check_discovery(config, topic.split("/")[1])
    assert len({c["unique_id"] for c in parsed.values()}) == 6
    states = await retained(server.port, "crossmodald/+/state/#")
    lead = parsed["homeassistant/sensor/crossmodald_d1/cam1_audio_lead_ms/config"]
    # The sensor's template on its state: the smoothed offset (the null one did not erase it).
    assert json.loads(states[lead["state_topic"]])["audio_lead_ms"] == 39.96
    alarm = parsed["homeassistant/binary_sensor/crossmodald_d1/cam1_sync_alarm/config"]
    assert states[alarm["state_topic"]] == b"ON"
    speech = parsed["homeassistant/binary_sensor/crossmodald_d1/cam1_speech/config"]
    assert states[speech["state_topic"]] == b"OFF"
    assert states["crossmodald/cam2/state/sync_alarm"] == b"OFF"
    # A removed stream's entities go (empty retained payloads); a daemon stopping keeps them.
    bus.publish(Event("stream.end", "cam1", 0, 0, {"reason": "stopped"}))
    bus.publish(Event("stream.end", "cam2", 0, 0, {"reason": "daemon stopping"}))
    await sink.flush()
    left = await retained(server.port, "homeassistant/#")
    assert sorted(left) == sorted(t for t in configs if "/cam2_" in t)
    assert not any(t.startswith("crossmodald/cam1/") for t in await retained(server.port, "#"))
    await sink.aclose()
    await task


async def test_broker_stopped_and_restarted_under_load(
    server: BrokerProcess, tmp_path: Path
) -> None:
    """Events buffered while the broker is away are delivered once it is back, the overflow
    counted and told by sink.fault; a subscriber with a persistent session receives every
    event that was not reported dropped. The JSONL sink on the same bus keeps going."""
    bus = new_bus()
    sink = MqttSinkFactory.create(sink_config(server.url, buffer=300, inflight=32))
    jsonl_path = tmp_path / "all.jsonl"
    jsonl = JsonlSink(JsonlSinkConfig(type="jsonl", path=jsonl_path))
    jsonl_task = asyncio.create_task(jsonl.run(bus))
    received: list[int] = []

    async def subscribe(ready: asyncio.Event, stop: asyncio.Event) -> None:
        client = aiomqtt.Client("127.0.0.1", server.port, identifier="t-sub", clean_session=False)
        async with client:
            await client.subscribe("crossmodald/+/+", qos=1)
            ready.set()
            async for message in client.messages:
                received.append(json.loads(message.payload)["seq"])  # type: ignore[arg-type]
                if stop.is_set():
                    return

    ready, stop = asyncio.Event(), asyncio.Event()
    sub_task = asyncio.create_task(subscribe(ready, stop))
    await ready.wait()
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
    await sink.flush()
    server.stop(kill=False)  # mosquitto saves the subscriber's session as it stops
    with pytest.raises(aiomqtt.MqttError):
        await asyncio.wait_for(sub_task, 5)
    await load(1000)
    assert sink.stats.buffered <= 300
    server.start()
    async with asyncio.timeout(20):
        while not any(e.type == "sink.fault" for e in bus.replay_snapshot()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await load(200)
    await sink.flush()
    ready = asyncio.Event()
    sub_task = asyncio.create_task(subscribe(ready, stop))  # the same session: its queue
    last_event = bus.last_seq
    async with asyncio.timeout(20):
        while last_event not in received:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    stop.set()
    sub_task.cancel()
    await sink.aclose()
    await task
    await jsonl.aclose()
    await jsonl_task
    faults = [e.as_dict() for e in bus.replay_snapshot() if e.type == "sink.fault"]
    dropped: set[int] = set()
    for fault in faults:
        if fault["data"]["dropped"]:
            dropped.update(range(fault["data"]["first_seq"], fault["data"]["last_seq"] + 1))
    assert sink.stats.dropped > 0
    assert sum(f["data"]["dropped"] for f in faults) == sink.stats.dropped
    published = {e["seq"] for e in map(json.loads, jsonl_path.read_text().splitlines())}
    assert published == set(range(1, bus.last_seq + 1))  # the JSONL sink never stopped
    closing_fault = faults[-1]["seq"] if faults[-1]["seq"] == bus.last_seq else None
    missing = published - set(received) - {closing_fault}
    assert missing <= dropped
    assert len(missing) == sink.stats.dropped


@pytest.fixture
def passwd_file(tmp_path: Path) -> Path:
    """A mosquitto password file with the user ``ha`` (password ``pw-77``)."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        pytest.skip("mosquitto_passwd is not installed (Debian's mosquitto package has it)")
    passwd = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(passwd), "ha", "pw-77"], check=True)
    return passwd


async def test_username_password_against_a_broker_that_requires_them(
    tmp_path: Path, passwd_file: Path
) -> None:
    # allow_anonymous false after brokerkit's allow_anonymous true: the last one wins.
    proc = BrokerProcess(
        "mqtt",
        tmp_path / "auth",
        extra_conf=f"password_file {passwd_file}\nallow_anonymous false\n",
    )
    proc.start()
    try:
        for config, ok in (
            (sink_config(proc.url, username="ha", password="pw-77"), True),
            (sink_config(proc.url.replace("//", "//ha:pw-77@")), True),
            (sink_config(proc.url, username="ha", password="wrong"), False),
        ):
            bus = new_bus()
            sink = MqttSinkFactory.create(config)
            run = asyncio.create_task(sink.run(bus, after_seq=0))
            bus.publish(ev(1))
            async with asyncio.timeout(5):
                while ok and sink.stats.written < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            if not ok:
                await asyncio.sleep(0.5)
            assert sink.stats.connected is ok
            assert "pw-77" not in sink.identity
            await sink.aclose()
            await run
    finally:
        proc.stop()
