"""The ``mqtt`` sink: every event on an MQTT topic, and a Home Assistant view (client:
``aiomqtt``).

Topics (QoS 1, not retained): ``<topic_prefix>/<stream>/<type>``, e.g.
``crossmodald/cam1/sync.offset``, payload the event's JSON. The stream name is one topic level,
escaped by :func:`~crossmodald.bus.broker.escape_token` (``/``, ``+``, ``#``, ``%`` and
whitespace become ``%2F``, ``%2B``, ``%23``, ``%25``, ``%20``...); daemon-wide events (empty
stream) go to ``<topic_prefix>/_/<type>``.

Availability: ``<topic_prefix>/_daemon/<daemon>/availability`` holds ``online`` (retained) while
the sink is connected; the broker publishes ``offline`` (the last will) when the connection
dies, and the sink publishes it when it closes.

Home Assistant (``homeassistant = true``): per stream a device with three entities, announced by
MQTT discovery (retained configs under ``<discovery_prefix>/<component>/<node>/<object>/config``)
when the stream's first event is seen:

* ``sensor`` *Audio lead*: the smoothed ``audio_lead_ms`` of ``sync.offset`` (unit ms; the
  confidence and method as attributes);
* ``binary_sensor`` *Sync alarm* (device class ``problem``): on while a ``sync.alarm`` lasts;
* ``binary_sensor`` *Speech* (device class ``sound``): on while ``speech`` lasts.

Their states are retained under ``<topic_prefix>/<stream>/state/<entity>``. When a stream ends
for another reason than the daemon stopping, its configs and states are removed (empty retained
payloads) and Home Assistant removes the entities; a daemon that stops leaves them, shown
unavailable. After every (re)connect, and when Home Assistant announces itself
(``<discovery_prefix>/status`` = ``online``), the sink publishes every config and state again.
The state is derived as events are taken off the bus, so it is right even when events are
dropped while the broker is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from crossmodald import __version__
from crossmodald.bus.broker import BrokerError, BrokerSink, BrokerSinkConfig, escape_token
from crossmodald.bus.events import Envelope
from crossmodald.redact import redact_text, redact_url
from crossmodald.secrets import Secret

try:
    import aiomqtt
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "the mqtt sink needs aiomqtt: pip install 'crossmodald[brokers]'"
    ) from exc

__all__ = ["MqttLink", "MqttSinkConfig", "MqttSinkFactory", "mqtt_topic"]

log = logging.getLogger(__name__)

#: Characters with a meaning in MQTT topics (escaped in stream and daemon names).
MQTT_RESERVED = "/+#"
#: QoS of every publish: at least once, acknowledged by the broker (PUBACK).
QOS = 1
#: The event types the Home Assistant view is derived from.
HA_TYPES = frozenset({"stream.start", "stream.end", "sync.offset", "sync.alarm", "speech"})
#: Retained messages published at once (per stream at most six; more streams: more at once).
MAX_STATE_BATCH = 256
#: A stream that ends with this reason keeps its entities (they show unavailable).
DAEMON_STOPPING = "daemon stopping"
_HA_ID = re.compile(r"[^A-Za-z0-9_-]")


def mqtt_topic(prefix: str, envelope: Envelope) -> str:
    """The topic one envelope is published on (see the module doc)."""
    return f"{prefix}/{escape_token(envelope.stream, MQTT_RESERVED)}/{envelope.type}"


def _ha_id(name: str) -> str:
    """A Home Assistant node/object id ([A-Za-z0-9_-]); a changed name gets a hash suffix so
    that two names never share an id."""
    safe = _HA_ID.sub("_", name)
    if safe == name:
        return name
    return f"{safe}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def _check_topic(value: str, what: str) -> str:
    if not value or "+" in value or "#" in value or "\x00" in value:
        raise ValueError(f"{what}: expected a topic without wildcards, got {value!r}")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(f"{what}: expected topic levels without empty ones, got {value!r}")
    return value


class MqttSinkConfig(BrokerSinkConfig):
    """A ``[[sinks]]`` table of type ``mqtt``."""

    type: Literal["mqtt"]
    #: The broker: ``mqtt://[user:pass@]host:port`` (``mqtts://`` for TLS, port 8883).
    url: str = "mqtt://127.0.0.1:1883"
    #: Authentication (or credentials in `url`; only one way at once).
    username: str | None = None
    password: Secret | None = None
    #: This daemon's name: in the availability topic, the client id and Home Assistant ids.
    daemon: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    #: The first level(s) of every topic.
    topic_prefix: str = Field("crossmodald", min_length=1, max_length=128)
    #: MQTT client id (default ``crossmodald-<daemon>``).
    client_id: str | None = Field(None, min_length=1, max_length=128)
    #: Keep-alive interval; the broker sends the last will after 1.5 times it without a word.
    keepalive_s: int = Field(30, ge=5, le=3600)
    #: Announce every stream to Home Assistant (MQTT discovery) and keep its state retained.
    homeassistant: bool = True
    #: Home Assistant's discovery prefix.
    discovery_prefix: str = Field("homeassistant", min_length=1, max_length=128)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        shown = redact_url(value)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError(f"not an MQTT URL (got {shown!r})") from None
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {shown!r}")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _check_topic(value, "topic_prefix")

    @field_validator("discovery_prefix")
    @classmethod
    def _discovery(cls, value: str) -> str:
        return _check_topic(value, "discovery_prefix")

    @model_validator(mode="after")
    def _auth(self) -> MqttSinkConfig:
        in_url = urlsplit(self.url).username is not None
        if in_url and (self.username is not None or self.password is not None):
            raise ValueError("give credentials in url or as username/password, not both")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self

    @property
    def availability_topic(self) -> str:
        """Where ``online``/``offline`` is retained for this daemon."""
        daemon = escape_token(self.daemon, MQTT_RESERVED)
        return f"{self.topic_prefix}/_daemon/{daemon}/availability"

    @property
    def identity(self) -> str:
        """``mqtt:<url without credentials>/<topic_prefix>#<daemon>``."""
        return f"mqtt:{redact_url(self.url)}/{self.topic_prefix}#{self.daemon}"


@dataclass(slots=True)
class _Entity:
    """One Home Assistant entity of a stream."""

    component: Literal["sensor", "binary_sensor"]
    key: str
    config: dict[str, Any]


class HomeAssistantView:
    """The retained messages (discovery configs and states) of every stream, derived from
    its events; what is not yet acknowledged by the broker is kept in :attr:`dirty`.

    Args:
        config: The sink's config (prefixes, daemon name).
    """

    def __init__(self, config: MqttSinkConfig) -> None:
        self.config = config
        self.node = _ha_id(f"crossmodald_{config.daemon}")
        #: Topic -> payload of every retained message that should be on the broker now.
        self.retained: dict[str, str] = {}
        #: Topic -> payload to publish ("" removes a retained message).
        self.dirty: dict[str, str] = {}
        self._topics: dict[str, list[str]] = {}  # stream -> its retained topics

    def state_topic(self, stream: str, key: str) -> str:
        escaped = escape_token(stream, MQTT_RESERVED)
        return f"{self.config.topic_prefix}/{escaped}/state/{key}"

    def config_topic(self, stream: str, component: str, key: str) -> str:
        return (
            f"{self.config.discovery_prefix}/{component}/{self.node}/"
            f"{_ha_id(f'{stream}_{key}')}/config"
        )

    def _set(self, topic: str, payload: str) -> None:
        if self.retained.get(topic) != payload:
            self.retained[topic] = payload
            self.dirty[topic] = payload

    def observe(self, envelope: Envelope) -> None:
        """Update the view from one event (only the types in :data:`HA_TYPES` matter)."""
        stream = envelope.stream
        if not stream or envelope.type not in HA_TYPES:
            return
        event = json.loads(envelope.json)
        data = event.get("data") or {}
        if envelope.type == "stream.end":
            if data.get("reason") != DAEMON_STOPPING:
                self.remove(stream)
            return
        if stream not in self._topics:
            self.announce(stream)
        if envelope.type == "sync.offset":
            value = data.get("smoothed_audio_lead_ms")
            if isinstance(value, int | float) and not isinstance(value, bool):
                state = {
                    "audio_lead_ms": round(float(value), 2),
                    "confidence": data.get("confidence"),
                    "method": data.get("method"),
                }
                self._set(self.state_topic(stream, "audio_lead_ms"), json.dumps(state))
        elif envelope.type in ("sync.alarm", "speech"):
            key = "sync_alarm" if envelope.type == "sync.alarm" else "speech"
            on = "OFF" if event.get("phase") == "end" else "ON"
            self._set(self.state_topic(stream, key), on)

    def announce(self, stream: str) -> None:
        """Publish the stream's discovery configs (and off states for the binary sensors)."""
        c = self.config
        device_id = f"{self.node}_{_ha_id(stream)}"
        device = {
            "identifiers": [device_id],
            "name": f"{stream} ({c.daemon})",
            "manufacturer": "crossmodald",
            "model": "audio-visual analysis",
            "sw_version": __version__,
        }
        common = {
            "availability_topic": c.availability_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            "origin": {"name": "crossmodald", "sw_version": __version__},
        }
        lead_topic = self.state_topic(stream, "audio_lead_ms")
        entities = [
            _Entity(
                "sensor",
                "audio_lead_ms",
                {
                    "name": "Audio lead",
                    "state_topic": lead_topic,
                    "value_template": "{{ value_json.audio_lead_ms }}",
                    "json_attributes_topic": lead_topic,
                    "unit_of_measurement": "ms",
                    "state_class": "measurement",
                    "icon": "mdi:timer-sync-outline",
                },
            ),
            _Entity(
                "binary_sensor",
                "sync_alarm",
                {
                    "name": "Sync alarm",
                    "state_topic": self.state_topic(stream, "sync_alarm"),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "problem",
                },
            ),
            _Entity(
                "binary_sensor",
                "speech",
                {
                    "name": "Speech",
                    "state_topic": self.state_topic(stream, "speech"),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "sound",
                },
            ),
        ]
        topics: list[str] = []
        for entity in entities:
            config = {
                **entity.config,
                "unique_id": f"{device_id}_{entity.key}",
                **common,
            }
            topic = self.config_topic(stream, entity.component, entity.key)
            self._set(topic, json.dumps(config, sort_keys=True))
            topics.append(topic)
            topics.append(entity.config["state_topic"])
        self._set(self.state_topic(stream, "sync_alarm"), "OFF")
        self._set(self.state_topic(stream, "speech"), "OFF")
        self._topics[stream] = topics

    def remove(self, stream: str) -> None:
        """Remove the stream's entities: empty retained payloads on its configs and states."""
        for topic in self._topics.pop(stream, []):
            self.retained.pop(topic, None)
            self.dirty[topic] = ""

    def resync(self) -> None:
        """Mark every retained message to be published again (a new connection, or Home
        Assistant restarted)."""
        self.dirty = {**self.retained, **self.dirty}


class MqttLink:
    """A :class:`~crossmodald.bus.broker.BrokerLink` to an MQTT broker (MQTT 3.1.1, QoS 1)."""

    def __init__(self, config: MqttSinkConfig) -> None:
        self.config = config
        self.observed_types = HA_TYPES if config.homeassistant else frozenset()
        self.view = HomeAssistantView(config) if config.homeassistant else None
        self._client: aiomqtt.Client | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._url = redact_url(config.url)

    def topic(self, envelope: Envelope) -> str:
        """The topic of one envelope."""
        return mqtt_topic(self.config.topic_prefix, envelope)

    def _client_args(self) -> dict[str, Any]:
        c = self.config
        parts = urlsplit(c.url)
        tls = parts.scheme == "mqtts"
        args: dict[str, Any] = {
            "hostname": parts.hostname,
            "port": parts.port or (8883 if tls else 1883),
            "identifier": c.client_id or f"crossmodald-{c.daemon}",
            "keepalive": c.keepalive_s,
            "timeout": c.ack_timeout_s,
            "max_inflight_messages": c.inflight,
            "will": aiomqtt.Will(c.availability_topic, "offline", qos=QOS, retain=True),
        }
        if parts.username is not None:
            args["username"] = unquote(parts.username)
            args["password"] = unquote(parts.password) if parts.password is not None else None
        elif c.username is not None:
            args["username"] = c.username
            args["password"] = c.password.get_secret_value() if c.password else None
        if tls:
            args["tls_context"] = ssl.create_default_context()
        return args

    async def connect(self) -> None:
        """Connect, announce ``online`` and publish every retained message again.

        Raises:
            BrokerError: The broker cannot be reached or refused us.
        """
        await self.disconnect()
        self._lost = asyncio.Event()
        client = aiomqtt.Client(**self._client_args())
        # aiomqtt warns above 10 unacknowledged publishes; the window allows `inflight`.
        client.pending_calls_threshold = self.config.inflight + MAX_STATE_BATCH
        try:
            await client.__aenter__()
        except Exception as exc:  # aiomqtt.MqttError, or OSError from the socket
            raise BrokerError(f"mqtt {self._url}: {_describe(exc)}") from None
        self._client = client
        self._watch = asyncio.create_task(self._watch_messages(client), name="sink:mqtt:watch")
        try:
            await client.publish(self.config.availability_topic, "online", qos=QOS, retain=True)
            if self.view is not None:
                await client.subscribe(f"{self.config.discovery_prefix}/status", qos=QOS)
                self.view.resync()
                await self.send_state()
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"mqtt {self._url}: {_describe(exc)}") from None

    async def _watch_messages(self, client: aiomqtt.Client) -> None:
        """Notice a lost connection, and Home Assistant's birth message."""
        try:
            async for message in client.messages:
                if message.payload in (b"online", "online") and self.view is not None:
                    log.info("mqtt %s: Home Assistant is online: announcing again", self._url)
                    self.view.resync()
                    with contextlib.suppress(aiomqtt.MqttError, BrokerError):
                        await self.send_state()
        except aiomqtt.MqttError:
            pass
        finally:
            self._lost.set()

    async def send(self, envelope: Envelope) -> Awaitable[object]:
        """Publish one event (QoS 1); the future resolves on the broker's PUBACK."""
        client = self._client
        if client is None or self._lost.is_set():
            raise BrokerError("not connected")
        return asyncio.ensure_future(client.publish(self.topic(envelope), envelope.json, qos=QOS))

    def observe(self, envelope: Envelope) -> bool:
        """Derive the Home Assistant state; True when retained messages wait."""
        if self.view is None:
            return False
        self.view.observe(envelope)
        return bool(self.view.dirty)

    async def send_state(self) -> None:
        """Publish the retained messages that changed and wait for their PUBACKs.

        Raises:
            BrokerError: The connection was lost (what was not acknowledged stays pending).
        """
        view, client = self.view, self._client
        if view is None or not view.dirty:
            return
        if client is None:
            raise BrokerError("not connected")
        while view.dirty:
            items = list(view.dirty.items())[:MAX_STATE_BATCH]
            batch = dict(items)
            for topic in batch:
                del view.dirty[topic]
            try:
                await asyncio.gather(
                    *(
                        client.publish(topic, payload.encode(), qos=QOS, retain=True)
                        for topic, payload in items
                    )
                )
            except BaseException as exc:
                view.dirty = {**batch, **view.dirty}
                if isinstance(exc, aiomqtt.MqttError):
                    raise BrokerError(f"mqtt {self._url}: {_describe(exc)}") from None
                raise

    async def wait_lost(self) -> None:
        """Return when the connection is lost."""
        await self._lost.wait()

    async def disconnect(self) -> None:
        """Say ``offline`` (when connected) and close (never raises)."""
        client, self._client = self._client, None
        watch, self._watch = self._watch, None
        if client is None:
            return
        if not self._lost.is_set():
            with contextlib.suppress(Exception):
                await client.publish(
                    self.config.availability_topic, "offline", qos=QOS, retain=True, timeout=2.0
                )
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), 5.0)
        except Exception as exc:
            log.debug("mqtt %s: close: %s", self._url, _describe(exc))


def _describe(exc: BaseException) -> str:
    return redact_text(str(exc).strip() or type(exc).__name__)


class MqttSinkFactory:
    """Sink type ``mqtt`` (entry point ``crossmodald.sinks``)."""

    config_model = MqttSinkConfig

    @classmethod
    def create(cls, config: MqttSinkConfig) -> BrokerSink:
        """An MQTT sink (``ValueError`` for a malformed filter)."""
        return BrokerSink(config, MqttLink(config), config.identity)

    @classmethod
    def check(cls, config: MqttSinkConfig) -> None:
        """Nothing to check before starting: a broker that is away is no reason to refuse
        (the sink buffers and reconnects)."""
