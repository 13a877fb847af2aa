"""The ``nats`` sink: every event into a NATS JetStream stream (client: ``nats-py``).

Subjects are ``<subject_prefix>.<daemon>.<stream>.<type>``, e.g.
``crossmodald.studio-1.cam1.sync.offset``: the event type keeps its dots (so
``crossmodald.*.*.sync.>`` matches every ``sync.`` event), while the daemon and stream names are
one token each, escaped by :func:`~crossmodald.bus.broker.escape_token` (``.``, ``*``, ``>``,
``%`` and whitespace become ``%2E``, ``%2A``, ``%3E``, ``%25``, ``%20``...; daemon-wide events,
whose stream is empty, go to the token ``_``). Each message carries the event's JSON and the
header ``Nats-Msg-Id: <event id>``, so JetStream stores an event once within its duplicate
window however often it is sent (after a reconnect, or by a sink reopened on reload).

On connecting, the JetStream stream (``stream``, subjects ``<subject_prefix>.>``) is created
with the configured limits when it is missing (``create_stream``); an existing one is used as it
is. Buffering, the in-flight window, reconnects and drops are :mod:`crossmodald.bus.broker`'s.
Credentials go in the URL (``nats://user:pass@host``, ``nats://token@host``) or in ``user`` /
``password``, ``token`` or ``creds`` (a ``.creds`` file); the URL is shown redacted everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from crossmodald.bus.broker import BrokerError, BrokerSink, BrokerSinkConfig, escape_token
from crossmodald.bus.events import Envelope
from crossmodald.redact import redact_text, redact_url
from crossmodald.secrets import Secret

try:
    import nats
    import nats.aio.client
    import nats.errors
    import nats.js.api
    import nats.js.errors
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "the nats sink needs nats-py: pip install 'crossmodald[brokers]'"
    ) from exc

__all__ = ["NatsLink", "NatsSinkConfig", "NatsSinkFactory", "nats_subject"]

log = logging.getLogger(__name__)

#: Characters with a meaning in NATS subjects (escaped in daemon and stream names).
NATS_RESERVED = ".*>"
_SCHEMES = ("nats", "tls", "ws", "wss")
#: JetStream stream names: no whitespace, '.', '*', '>', path separators.
_STREAM_FORBIDDEN = set(".*>/\\") | {" ", "\t", "\n", "\r"}


def nats_subject(prefix: str, daemon: str, envelope: Envelope) -> str:
    """The subject one envelope is published on (see the module doc)."""
    return (
        f"{prefix}.{escape_token(daemon, NATS_RESERVED)}."
        f"{escape_token(envelope.stream, NATS_RESERVED)}.{envelope.type}"
    )


class NatsSinkConfig(BrokerSinkConfig):
    """A ``[[sinks]]`` table of type ``nats``."""

    type: Literal["nats"]
    #: The server: ``nats://[user:pass@|token@]host:port`` (``tls://`` for TLS).
    url: str = "nats://127.0.0.1:4222"
    #: This daemon's name: the subject's second token (default: the host name).
    daemon: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    #: First token(s) of every subject; the stream takes ``<subject_prefix>.>``.
    subject_prefix: str = Field("crossmodald", min_length=1, max_length=128)
    #: The JetStream stream the events are stored in.
    stream: str = Field("CROSSMODALD", min_length=1, max_length=64)
    #: Create the stream (with the limits below) when it is missing.
    create_stream: bool = True
    #: Limits of a created stream: oldest messages go first; 0 = no limit.
    max_age_s: float = Field(86_400.0, ge=0, le=1e9)
    max_bytes: int = Field(1 << 30, ge=0)
    max_msgs: int = Field(0, ge=0)
    #: How long JetStream remembers message ids to drop duplicates.
    duplicate_window_s: float = Field(120.0, gt=0, le=86_400)
    #: Storage of a created stream.
    storage: Literal["file", "memory"] = "file"
    #: Replicas of a created stream (in a cluster).
    replicas: int = Field(1, ge=1, le=5)
    #: Authentication (or credentials in `url`; only one way at once).
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    #: A NATS ``.creds`` file (JWT and NKey seed).
    creds: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        shown = redact_url(value)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError(f"not a NATS URL (got {shown!r})") from None
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise ValueError(f"expected nats://host:port (or tls://, ws://, wss://), got {shown!r}")
        return value

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        tokens = value.split(".")
        if any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
            raise ValueError(
                f"expected dot-separated subject tokens without wildcards or spaces, got {value!r}"
            )
        return value

    @field_validator("stream")
    @classmethod
    def _stream(cls, value: str) -> str:
        if set(value) & _STREAM_FORBIDDEN:
            raise ValueError(
                f"a JetStream stream name has no spaces, '.', '*', '>' or slashes, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _auth(self) -> NatsSinkConfig:
        ways = [
            name
            for name, given in (
                ("credentials in url", urlsplit(self.url).username is not None),
                ("user/password", self.user is not None or self.password is not None),
                ("token", self.token is not None),
                ("creds", self.creds is not None),
            )
            if given
        ]
        if len(ways) > 1:
            raise ValueError(f"give one way to authenticate, got {' and '.join(ways)}")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        return self

    @property
    def identity(self) -> str:
        """``nats:<url without credentials>/<subject_prefix>.<daemon>``: one sink per daemon
        and server."""
        daemon = escape_token(self.daemon, NATS_RESERVED)
        return f"nats:{redact_url(self.url)}/{self.subject_prefix}.{daemon}"


class NatsLink:
    """A :class:`~crossmodald.bus.broker.BrokerLink` to a NATS server with JetStream.

    nats-py's own reconnecting is off: :class:`~crossmodald.bus.broker.BrokerSink` reconnects
    with its backoff and keeps the buffer, so one policy holds for every broker.
    """

    observed_types: frozenset[str] = frozenset()

    def __init__(self, config: NatsSinkConfig) -> None:
        self.config = config
        self._nc: nats.aio.client.Client | None = None
        self._js: Any = None
        self._lost = asyncio.Event()
        self._url = redact_url(config.url)

    def subject(self, envelope: Envelope) -> str:
        """The subject of one envelope."""
        return nats_subject(self.config.subject_prefix, self.config.daemon, envelope)

    def _auth(self) -> dict[str, Any]:
        c = self.config
        if c.user is not None and c.password is not None:
            return {"user": c.user, "password": c.password.get_secret_value()}
        if c.token is not None:
            return {"token": c.token.get_secret_value()}
        if c.creds is not None:
            return {"user_credentials": str(c.creds)}
        return {}

    async def connect(self) -> None:
        """Connect and make sure the JetStream stream exists.

        Raises:
            BrokerError: The server cannot be reached, refused us, has no JetStream, or the
                stream is missing and may not be created.
        """
        await self.disconnect()
        lost = self._lost = asyncio.Event()

        async def on_gone() -> None:
            lost.set()

        async def on_error(exc: Exception) -> None:
            log.debug("nats %s: %s", self._url, redact_text(str(exc) or type(exc).__name__))

        c = self.config
        try:
            self._nc = await nats.connect(
                servers=[c.url],
                name=f"crossmodald {c.daemon}",
                allow_reconnect=False,
                connect_timeout=max(1, round(c.connect_timeout_s)),
                max_reconnect_attempts=0,
                error_cb=on_error,
                disconnected_cb=on_gone,
                closed_cb=on_gone,
                **self._auth(),
            )
        except Exception as exc:  # nats-py raises many kinds; all mean "not reachable now"
            raise BrokerError(f"nats {self._url}: {_describe(exc)}") from None
        self._js = self._nc.jetstream(timeout=c.ack_timeout_s, publish_async_max_pending=c.inflight)
        try:
            await self._ensure_stream()
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"nats {self._url}: JetStream: {_describe(exc)}") from None

    async def _ensure_stream(self) -> None:
        c = self.config
        try:
            await self._js.stream_info(c.stream)
            return
        except nats.js.errors.NotFoundError:
            if not c.create_stream:
                raise BrokerError(
                    f"nats {self._url}: JetStream stream {c.stream} does not exist "
                    "(create_stream = false)"
                ) from None
        stream_config = nats.js.api.StreamConfig(
            name=c.stream,
            description="crossmodald events",
            subjects=[f"{c.subject_prefix}.>"],
            max_age=c.max_age_s or None,
            max_bytes=c.max_bytes or -1,
            max_msgs=c.max_msgs or -1,
            duplicate_window=c.duplicate_window_s,
            storage=nats.js.api.StorageType(c.storage),
            num_replicas=c.replicas,
        )
        try:
            await self._js.add_stream(stream_config)
            log.info("nats %s: created JetStream stream %s", self._url, c.stream)
        except nats.js.errors.APIError:
            # Another daemon may have created it a moment ago: fine if it is there now.
            await self._js.stream_info(c.stream)

    async def send(self, envelope: Envelope) -> Awaitable[object]:
        """Publish one event; the future resolves with JetStream's acknowledgement."""
        if self._js is None or self._lost.is_set():
            raise BrokerError("not connected")
        try:
            future: Awaitable[object] = await self._js.publish_async(
                self.subject(envelope),
                envelope.json.encode(),
                headers={"Nats-Msg-Id": envelope.id},
            )
        except Exception as exc:
            raise BrokerError(f"publish: {_describe(exc)}") from None
        return future

    def observe(self, envelope: Envelope) -> bool:
        """Nothing derived: every event is published as it is."""
        return False

    async def send_state(self) -> None:
        """Nothing to send (no derived state)."""

    async def wait_lost(self) -> None:
        """Return when the connection closes."""
        await self._lost.wait()

    async def disconnect(self) -> None:
        """Close the connection (never raises)."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.close(), self.config.connect_timeout_s)
        except Exception as exc:
            log.debug("nats %s: close: %s", self._url, _describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if text.startswith("nats: "):
        text = text[len("nats: ") :]
    return redact_text(text)


class NatsSinkFactory:
    """Sink type ``nats`` (entry point ``crossmodald.sinks``)."""

    config_model = NatsSinkConfig

    @classmethod
    def create(cls, config: NatsSinkConfig) -> BrokerSink:
        """A JetStream sink (``ValueError`` for a malformed filter)."""
        return BrokerSink(config, NatsLink(config), config.identity)

    @classmethod
    def check(cls, config: NatsSinkConfig) -> None:
        """Fail early for a ``creds`` file that cannot be read; a server that is away is no
        reason to refuse (the sink buffers and reconnects)."""
        if config.creds is not None:
            try:
                with config.creds.open("rb"):
                    pass
            except OSError as exc:
                raise OSError(
                    exc.errno, f"nats sink: cannot read creds file {config.creds}: {exc.strerror}"
                ) from None
