"""Broker sink configs, subjects and topics: validated with clear errors, names escaped
reversibly, credentials never shown. No server needed."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import pytest

from crossmodald.bus.broker import escape_token
from crossmodald.bus.events import Envelope
from crossmodald.bus.sinks import SinkRegistry
from crossmodald.config_errors import ConfigError
from crossmodald.service.config import load_config_text

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")
pytest.importorskip("aiomqtt", reason="aiomqtt is not installed (pip install -e '.[test]')")

from crossmodald.bus.mqtt_sink import MqttSinkConfig, mqtt_topic
from crossmodald.bus.nats_sink import NatsSinkConfig, nats_subject


def envelope(stream: str, type_: str = "sync.offset") -> Envelope:
    return Envelope(seq=1, id="x", type=type_, stream=stream, json="{}")


@pytest.mark.parametrize(
    "name",
    ["cam1", "cam.1", "a*b", "a>b", "50%", "two words", "tab\tx", "ü.ß", "a/b+c#d", ""],
)
def test_names_are_one_token_and_come_back(name: str) -> None:
    nats_token = escape_token(name, ".*>")
    mqtt_token = escape_token(name, "/+#")
    for token, reserved in ((nats_token, ".*>"), (mqtt_token, "/+#")):
        assert token
        assert not set(token) & set(reserved)
        assert not any(c.isspace() for c in token)
        assert unquote(token) == (name or "_")


def test_subjects_and_topics() -> None:
    assert nats_subject("crossmodald", "studio.1", envelope("cam.1")) == (
        "crossmodald.studio%2E1.cam%2E1.sync.offset"
    )
    assert nats_subject("crossmodald", "d", envelope("", "sink.fault")) == (
        "crossmodald.d._.sink.fault"
    )
    assert mqtt_topic("crossmodald", envelope("cam/1")) == "crossmodald/cam%2F1/sync.offset"
    assert mqtt_topic("a/b", envelope("", "sink.fault")) == "a/b/_/sink.fault"


def test_nats_config_is_validated_and_credentials_never_shown() -> None:
    text = """
[[sinks]]
type = "nats"
url = "nats://alice:hunter2@127.0.0.1:4222"
daemon = "d1"
max_age_s = 60
"""
    config = load_config_text(text)
    sink_cfg = config.sinks[0]
    assert isinstance(sink_cfg, NatsSinkConfig)
    assert sink_cfg.identity == "nats:nats://***@127.0.0.1:4222/crossmodald.d1"
    assert "nats" in SinkRegistry.default().names()
    bad = [
        'url = "http://x"',
        'subject_prefix = "a.*"',
        'stream = "A.B"',
        'url = "nats://u:p@h:1"\ntoken = "t"',
        'user = "u"',
        "inflight = 20\nbuffer = 10",
    ]
    for extra in bad:
        with pytest.raises(ConfigError) as err:
            load_config_text(f'[[sinks]]\ntype = "nats"\n{extra}\n')
        assert "p@h" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config_text('[[sinks]]\ntype = "nats"\nurl = "nats://bob:pw9@h:x"\n')
    assert "pw9" not in str(err.value)


def test_mqtt_config_is_validated_and_credentials_never_shown() -> None:
    config = load_config_text(
        '[[sinks]]\ntype = "mqtt"\nurl = "mqtt://ha:pw-77@127.0.0.1:1883"\ndaemon = "d1"\n'
    )
    sink_cfg = config.sinks[0]
    assert isinstance(sink_cfg, MqttSinkConfig)
    assert sink_cfg.identity == "mqtt:mqtt://***@127.0.0.1:1883/crossmodald#d1"
    for extra in (
        'url = "nats://x"',
        'topic_prefix = "a/+"',
        'topic_prefix = "a/"',
        'discovery_prefix = "#"',
        'password = "p"',
        'url = "mqtt://u:pw-77@h"\nusername = "u"',
    ):
        with pytest.raises(ConfigError) as err:
            load_config_text(f'[[sinks]]\ntype = "mqtt"\n{extra}\n')
        assert "pw-77" not in str(err.value)


@pytest.mark.parametrize("kind", ["nats", "mqtt"])
async def test_credentials_in_the_url_never_reach_logs_or_events(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A broker that is not there (a closed loopback port): connection errors are logged and,
    # on close, the dropped events told; none of it may carry the password.
    import socket

    from crossmodald.bus import Event, EventBus
    from crossmodald.bus.mqtt_sink import MqttSinkFactory
    from crossmodald.bus.nats_sink import NatsSinkFactory

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"{kind}://alice:pw-s3cr3t@127.0.0.1:{port}"
    common = {"url": url, "daemon": "d1", "reconnect_min_s": 0.05, "connect_timeout_s": 1.0}
    sink = (
        NatsSinkFactory.create(NatsSinkConfig(type="nats", **common))
        if kind == "nats"
        else MqttSinkFactory.create(MqttSinkConfig(type="mqtt", **common))
    )
    bus = EventBus(replay_size=100, subscriber_queue=100, slow_subscriber_s=5.0)
    caplog.set_level("DEBUG")
    task = asyncio.create_task(sink.run(bus, after_seq=0))
    bus.publish(Event("sync.offset", "cam1", 0, 1, {}))
    await asyncio.sleep(0.5)
    await sink.aclose()
    await task
    assert sink.stats.dropped == 1
    assert "pw-s3cr3t" not in sink.identity
    assert "broker unreachable" in caplog.text
    assert "pw-s3cr3t" not in caplog.text
    assert "alice" not in caplog.text
    fault = bus.replay_snapshot()[-1]
    assert fault.type == "sink.fault"
    assert "pw-s3cr3t" not in fault.json


def test_in_fleet_mode_broker_sinks_name_the_fleet_daemon_unless_told_otherwise() -> None:
    config = load_config_text(
        '[fleet]\nnats_url = "nats://127.0.0.1:4222"\ndaemon_id = "edge-7"\n'
        '[[sinks]]\ntype = "nats"\nurl = "nats://127.0.0.1:4222"\n'
        '[[sinks]]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1883"\n'
        '[[sinks]]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1884"\ndaemon = "own"\n'
    )
    nats, mqtt, mqtt_own = config.sinks
    assert isinstance(nats, NatsSinkConfig)
    assert isinstance(mqtt, MqttSinkConfig)
    assert isinstance(mqtt_own, MqttSinkConfig)
    assert (nats.daemon, mqtt.daemon, mqtt_own.daemon) == ("edge-7", "edge-7", "own")
    assert nats.identity.endswith("/crossmodald.edge-7")
