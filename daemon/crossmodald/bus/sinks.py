"""Sinks: consumers that take events off the bus and put them somewhere.

A sink is an ordinary bus subscriber (one mechanism for everyone): it reads its
:class:`~crossmodald.bus.bus.Subscription` from a ``seq`` on and writes what it takes off it.
Every sink satisfies :class:`Sink`; the daemon starts, reloads, flushes and closes sinks, and
reads their :class:`SinkStats`, only through it. An envelope a sink has taken off its
subscription is never lost silently: :meth:`Sink.aclose` writes and flushes everything it
holds, or (a broker sink whose broker is away) counts what it could not deliver in
:attr:`SinkStats.dropped` and tells it with a ``sink.fault`` event.

Sink types of ``[[sinks]]`` tables are found by entry point (group ``crossmodald.sinks``, the
entry point's name is the ``type``), the built-in ``jsonl`` (:mod:`crossmodald.bus.jsonl`)
included, and the broker sinks ``nats`` and ``mqtt`` (:mod:`crossmodald.bus.broker`)::

    [project.entry-points."crossmodald.sinks"]
    kafka = "my_package.kafka:KafkaSinkFactory"

    class KafkaSinkConfig(SinkConfigBase):
        type: Literal["kafka"]
        brokers: str

        @property
        def identity(self) -> str:
            return f"kafka:{self.brokers}"

    class KafkaSinkFactory:
        config_model = KafkaSinkConfig

        @classmethod
        def create(cls, config: KafkaSinkConfig) -> Sink: ...

        @classmethod
        def check(cls, config: KafkaSinkConfig) -> None: ...  # or nothing to check

A sink for another broker can reuse :class:`~crossmodald.bus.broker.BrokerSink` (buffer,
acknowledged in-flight window, reconnects, drops told as ``sink.fault``) with a
:class:`~crossmodald.bus.broker.BrokerLink` of its own.

Sinks made by other parts (the WebRTC data channel that sends a publisher its events, see
:mod:`crossmodald.api.whip`) are the same kind of object, run by :func:`run_sink`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from crossmodald.bus.bus import EventBus
from crossmodald.config_base import ConfigModel
from crossmodald.entrypoints import TypeRegistry

__all__ = [
    "SINKS_GROUP",
    "Sink",
    "SinkConfigBase",
    "SinkFactory",
    "SinkRegistry",
    "SinkStats",
    "run_sink",
]

log = logging.getLogger(__name__)

#: The entry-point group sink types are found in.
SINKS_GROUP = "crossmodald.sinks"


@dataclass(slots=True)
class SinkStats:
    """Counters of one sink.

    Attributes:
        written: Envelopes written (sent, stored) and flushed.
        batches: Write batches.
        resumes: Times it was closed as slow and resubscribed.
        missed_resumes: Resumes where the replay buffer no longer held every missed envelope.
        last_seq: ``seq`` of the last envelope written (0 before the first; the highest
            acknowledged for a broker sink, which may acknowledge out of order).
        dropped: Envelopes it took and gave up on (a broker sink's buffer overflowed while the
            broker was away or slow); each loss is also told by a ``sink.fault`` event.
        dropped_unconfirmed: Of ``dropped``, those sent and not acknowledged before a
            connection broke: the broker may have stored them (a broker sink).
        buffered: Envelopes it holds now, not yet written (queued and in flight).
        connected: Whether its connection is up; None for a sink without one (a file).
        reconnects: Connections made again after one was lost or could not be made.
        ack_count: Publishes the destination acknowledged (a broker sink).
        ack_seconds_sum: Their publish-to-acknowledgement time, summed.
        ack_p50_s: Median publish-to-acknowledgement time of the recent publishes (None
            before the first or for a sink without acknowledgements).
        ack_p99_s: Their 99th percentile.
    """

    written: int = 0
    batches: int = 0
    resumes: int = 0
    missed_resumes: int = 0
    last_seq: int = 0
    dropped: int = 0
    dropped_unconfirmed: int = 0
    buffered: int = 0
    connected: bool | None = None
    reconnects: int = 0
    ack_count: int = 0
    ack_seconds_sum: float = 0.0
    ack_p50_s: float | None = None
    ack_p99_s: float | None = None


@runtime_checkable
class Sink(Protocol):
    """Something that takes events off the bus and puts them somewhere.

    Run :meth:`run` as a task; stop it with :meth:`aclose` (or by closing the bus).
    """

    @property
    def identity(self) -> str:
        """What it writes to (a path, a broker topic, a peer), unique among running sinks.

        A reload keeps a sink whose identity and config are unchanged, and replaces one whose
        config changed; the new sink goes on from the ``seq`` where the old one stopped.
        """
        ...

    @property
    def stats(self) -> SinkStats:
        """Its counters (read by ``/metrics``)."""
        ...

    async def run(self, bus: EventBus, after_seq: int | None = None) -> None:
        """Subscribe and write until :meth:`aclose` or the bus closes (everything flushed).

        Args:
            bus: The bus to read.
            after_seq: Take every envelope after this ``seq`` (replayed from the bus's buffer);
                None: those published after the subscription.

        Raises:
            OSError: Its destination cannot be opened or written (the message names it).
        """
        ...

    async def flush(self) -> None:
        """Return once everything taken off the bus so far is written and flushed."""
        ...

    async def aclose(self) -> None:
        """Stop taking events, write and flush everything taken, release (idempotent)."""
        ...


class SinkConfigBase(ConfigModel):
    """What every ``[[sinks]]`` table has; a sink type's model subclasses it.

    A subclass narrows ``type`` to its own name and, if one daemon may run more than one sink
    of its type, overrides :attr:`identity`.

    Attributes:
        type: The sink type (the entry point's name).
    """

    type: str

    @property
    def identity(self) -> str:
        """What the sink writes to, unique among ``[[sinks]]``; the same as its sink's."""
        return self.type


class SinkFactory(Protocol):
    """What an entry point of group ``crossmodald.sinks`` names."""

    #: The model of this type's ``[[sinks]]`` table.
    config_model: ClassVar[type[SinkConfigBase]]

    @classmethod
    def create(cls, config: Any) -> Sink:
        """Build the sink a validated config (an instance of ``config_model``) describes.

        Raises:
            ValueError: The config describes a sink that cannot exist.
        """
        ...

    @classmethod
    def check(cls, config: Any) -> None:
        """Fail early (before READY, or rejecting a reload) when the sink cannot work.

        Runs in a worker thread: it may block (open a file, resolve a host).

        Raises:
            OSError: Its destination cannot be opened (the message names it).
        """
        ...


class SinkRegistry(TypeRegistry[SinkFactory, SinkConfigBase]):
    """The sink types installed on this machine (entry-point group ``crossmodald.sinks``)."""

    kind = "sink"
    group = SINKS_GROUP
    base = SinkConfigBase
    required = ("create", "check")


async def run_sink(sink: Sink, bus: EventBus, after_seq: int | None = None) -> None:
    """Run a sink; a sink whose destination fails is logged, and nothing else stops with it."""
    try:
        await sink.run(bus, after_seq)
    except OSError as exc:
        log.error("sink %s failed: %s", sink.identity, exc)
