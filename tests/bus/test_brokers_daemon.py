"""A whole daemon (pattern source, avsync) with a JSONL, a NATS and an MQTT sink from its config:
the NATS server is killed and restarted while it runs; the other sinks keep going, /metrics shows
the outage, and afterwards JetStream holds every event the JSONL file has."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from brokerkit import BrokerProcess, mosquitto_binary, nats_binary

from crossmodald.service.config import load_config_text
from crossmodald.service.daemon import Daemon
from pollkit import until

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")
aiomqtt = pytest.importorskip(
    "aiomqtt", reason="aiomqtt is not installed (pip install -e '.[test]')"
)

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        nats_binary() is None or mosquitto_binary() is None,
        reason="nats-server or mosquitto is not installed (apt-get install nats-server "
        "mosquitto; .ci/run does)",
    ),
]

CONFIG = """
[[sources]]
type = "pattern"
name = "live1"
fps = 30
sample_rate = 48000
width = 160
height = 120

[window]
length_s = 1.0
hop_s = 0.5
lateness_s = 0.1

[[plugins]]
type = "avsync"

[api]
port = 0

[[sinks]]
type = "jsonl"
path = "{jsonl}"

[[sinks]]
type = "nats"
url = "{nats}"
daemon = "t1"
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[[sinks]]
type = "mqtt"
url = "{mqtt}"
daemon = "t1"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    nats_server = BrokerProcess("nats", tmp_path / "nats")
    mqtt_server = BrokerProcess("mqtt", tmp_path / "mqtt")
    nats_server.start()
    mqtt_server.start()
    try:
        yield nats_server, mqtt_server
    finally:
        nats_server.stop()
        mqtt_server.stop()


def sample(text: str, name: str, sink: str) -> float:
    pattern = rf'^{name}\{{sink="{re.escape(sink)}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no {name} for {sink}"
    return float(match[1])


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def test_daemon_sinks_through_a_nats_outage(
    tmp_path: Path, servers: tuple[BrokerProcess, BrokerProcess]
) -> None:
    nats_server, mqtt_server = servers
    jsonl = tmp_path / "events.jsonl"
    config = load_config_text(
        CONFIG.format(jsonl=jsonl, nats=nats_server.url, mqtt=mqtt_server.url)
    )
    daemon = Daemon(config)
    nats_id = f"nats:{nats_server.url}/crossmodald.t1"
    mqtt_id = f"mqtt:{mqtt_server.url}/crossmodald#t1"
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))

    def offsets() -> int:
        return sum(1 for e in lines(jsonl) if e["type"] == "sync.offset") if jsonl.exists() else 0

    try:
        await until(lambda: offsets() >= 2, 60, "two offsets in the JSONL file")
        stats = {s["sink"]: s for s in daemon.sink_stats()}
        assert stats[nats_id]["connected"]
        assert stats[mqtt_id]["connected"]
        nats_server.stop()  # SIGKILL
        before = offsets()
        mqtt_before = {s["sink"]: s for s in daemon.sink_stats()}[mqtt_id]["written"]
        await until(lambda: offsets() >= before + 3, 20, "the JSONL sink going on")
        url = f"http://127.0.0.1:{daemon.api_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            text = await resp.text()
        assert sample(text, "crossmodald_sink_connected", nats_id) == 0
        assert sample(text, "crossmodald_sink_buffered_events", nats_id) >= 3
        assert sample(text, "crossmodald_sink_events_dropped_unconfirmed_total", nats_id) == 0
        assert sample(text, "crossmodald_sink_connected", mqtt_id) == 1
        assert sample(text, "crossmodald_sink_events_written_total", mqtt_id) > mqtt_before
        assert 'sink="' + str(jsonl) + '"' in text
        assert "crossmodald_sink_connected{sink=" + json.dumps(str(jsonl)) not in text
        assert "dropped_unconfirmed_total{sink=" + json.dumps(str(jsonl)) not in text
        nats_server.start()
        await until(
            lambda: any(e["type"] == "sink.fault" for e in lines(jsonl)), 20, "a sink.fault"
        )
        await until(
            lambda: {s["sink"]: s for s in daemon.sink_stats()}[nats_id]["buffered"] == 0,
            20,
            "the NATS sink's buffer sent",
        )
        # A reload that changes the NATS sink: the old one delivers what it took, the new one
        # goes on from the next event (its identity is unchanged: same server and daemon).
        changed = load_config_text(
            CONFIG.format(jsonl=jsonl, nats=nats_server.url, mqtt=mqtt_server.url).replace(
                'daemon = "t1"\nreconnect_min_s', 'daemon = "t1"\ninflight = 64\nreconnect_min_s', 1
            )
        )
        result = await daemon.reload(changed, "test")
        assert result.ok, result.errors
        assert result.diff is not None
        assert result.diff.sinks_changed == (nats_id,)
        after_reload = offsets()
        await until(lambda: offsets() >= after_reload + 2, 20, "offsets after the reload")
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    written = lines(jsonl)
    fault = next(e for e in written if e["type"] == "sink.fault")
    assert fault["data"]["kind"] == "outage"
    assert fault["data"]["sink"] == nats_id
    # JetStream has every event the file has (the buffer held them through the outage), each
    # once, on its subject.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        count = (await js.stream_info("CROSSMODALD")).state.messages
        sub = await js.subscribe("crossmodald.t1.>", ordered_consumer=True)
        msgs = [await sub.next_msg(5) for _ in range(count)]
    finally:
        await nc.close()
    stored = {json.loads(m.data)["seq"]: m.subject for m in msgs}
    assert len(stored) == len(msgs)
    assert set(stored) == {e["seq"] for e in written}
    assert stored[written[0]["seq"]] == f"crossmodald.t1.live1.{written[0]['type']}"
    # Home Assistant: the stream's entities stay (the daemon stopped, it was not removed),
    # shown unavailable; the sensor holds the pattern's smoothed offset (about 0 ms).
    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", mqtt_server.port) as client:
        await client.subscribe("#", qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
        except TimeoutError:
            pass
    assert got["crossmodald/_daemon/t1/availability"] == b"offline"
    assert "homeassistant/sensor/crossmodald_t1/live1_audio_lead_ms/config" in got
    assert abs(json.loads(got["crossmodald/live1/state/audio_lead_ms"])["audio_lead_ms"]) < 5
