"""What the broker sinks (``nats``, ``mqtt``) share: a bounded buffer, acknowledged publishing
with a bounded in-flight window, reconnects with backoff, and drops that are counted and told.

:class:`BrokerSink` is the :class:`~crossmodald.bus.sinks.Sink`; a :class:`BrokerLink` is one
broker's client (:mod:`crossmodald.bus.nats_sink`, :mod:`crossmodald.bus.mqtt_sink`). The data
path of one sink::

    bus subscription ──► reader ──► buffer (bounded, oldest dropped) ──► sender ──► link
                          │                                              │ at most `inflight`
                          └─ link.observe() (derived state, e.g. HA)      │ publishes unacked

Backpressure ("bus -> broker sink" in the architecture): the reader takes every envelope off the
bus at once, so the bus never closes the sink as slow; the buffer holds ``buffer`` envelopes
(queued and in flight). When it is full, the oldest is dropped and counted
(:attr:`~crossmodald.bus.sinks.SinkStats.dropped`). An envelope leaves the buffer only when the
broker acknowledged it; envelopes in flight when the connection is lost go back to the front of
the buffer and are sent again after the reconnect (a broker that already stored one drops the
copy: NATS by ``Nats-Msg-Id``; MQTT QoS 1 is at least once). So after a reconnect events may
arrive out of ``seq`` order. One that goes back and is then dropped (the buffer overflowed
before the broker was back) counts as dropped, though the broker may have stored it and lost only
its acknowledgement: the ``sink.fault`` says how many of its drops are such (``unconfirmed``).

When the link is back after an outage (the first acknowledgement after a reconnect proves it,
or the reconnect itself when nothing is held), the sink publishes one ``sink.fault`` event on the bus
(every subscriber and sink sees it, this one included): ``kind`` ``dropped`` with the count and
the ``seq`` range of what was lost, or ``outage`` when nothing was. Envelopes it still holds when
it is closed while the broker is away are dropped, counted, logged and, if the bus is still open
(a reload), told the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field, model_validator

from crossmodald.bus.bus import EventBus, EventFilter, SubscriberClosed, Subscription
from crossmodald.bus.events import Envelope, Event
from crossmodald.bus.sinks import SinkConfigBase, SinkStats
from crossmodald.redact import redact_text

__all__ = [
    "ACK_SAMPLES",
    "BrokerError",
    "BrokerLink",
    "BrokerSink",
    "BrokerSinkConfig",
    "escape_token",
]

log = logging.getLogger(__name__)

#: Recent acknowledgement latencies kept for the p50/p99 in the sink's stats.
ACK_SAMPLES = 1024
#: While connected, drops (a broker slower than the events) are told at most this often.
OVERFLOW_REPORT_S = 1.0


class BrokerError(Exception):
    """The broker cannot be reached, refused us, or the connection was lost (one line)."""


def escape_token(name: str, reserved: str) -> str:
    """``name`` made safe as one token of a subject/topic: ``%`` and each character of
    ``reserved``, whitespace and control characters become ``%XX`` (upper-case hex of the
    UTF-8 bytes, as in URLs); ``urllib.parse.unquote`` reverses it. The empty name (daemon-wide
    events) becomes ``_`` (no stream name starts with ``_``).

    Args:
        name: A daemon or stream name.
        reserved: Characters with a meaning in the broker's subjects/topics (``".*>"`` for
            NATS, ``"/+#"`` for MQTT).
    """
    if not name:
        return "_"
    out: list[str] = []
    for char in name:
        if char == "%" or char in reserved or char.isspace() or ord(char) < 0x20 or char == "\x7f":
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


class BrokerSinkConfig(SinkConfigBase):
    """What every broker sink's ``[[sinks]]`` table has (``nats``, ``mqtt``)."""

    #: Only these event types (exact or prefix ending in '.', e.g. "sync."); empty = all.
    types: list[str] = Field(default_factory=list)
    #: Only these streams; empty = all.
    streams: list[str] = Field(default_factory=list)
    #: Envelopes held (queued and in flight) while the broker is slow or away; the oldest is
    #: dropped (and counted) beyond it.
    buffer: int = Field(10_000, ge=1, le=10_000_000)
    #: Publishes awaiting the broker's acknowledgement at once.
    inflight: int = Field(256, ge=1, le=65_536)
    #: A publish not acknowledged within this long counts as a lost connection.
    ack_timeout_s: float = Field(5.0, gt=0, le=600)
    #: Longest a connection attempt may take.
    connect_timeout_s: float = Field(5.0, gt=0, le=600)
    #: First wait before a reconnect; doubled after each failed attempt up to `reconnect_max_s`.
    reconnect_min_s: float = Field(0.5, gt=0, le=600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _backoff(self) -> BrokerSinkConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        if self.inflight > self.buffer:
            raise ValueError("inflight must not exceed buffer")
        return self


class BrokerLink(Protocol):
    """One broker's client, driven by :class:`BrokerSink` (never two calls at once, except
    :meth:`observe`, which runs whenever an envelope is taken off the bus).

    After :meth:`connect` returns, the link is up until :meth:`wait_lost` returns or
    :meth:`disconnect` is called; :meth:`connect` is called again for the next connection.
    """

    #: Extra event types the link needs to see beyond the sink's filter (for derived state);
    #: empty: none.
    observed_types: frozenset[str]

    async def connect(self) -> None:
        """Connect and prepare (create the JetStream stream, announce availability).

        Raises:
            BrokerError: It cannot (the message says why, credentials hidden).
        """
        ...

    async def send(self, envelope: Envelope) -> Awaitable[object]:
        """Start publishing one envelope; the returned awaitable completes on the broker's
        acknowledgement (raising :class:`BrokerError` or another exception when it fails).

        Raises:
            BrokerError: It cannot even be started (the connection is gone).
        """
        ...

    def observe(self, envelope: Envelope) -> bool:
        """See an envelope as it is taken off the bus (filtered or not); True when the link
        now has state of its own to publish (:meth:`send_state`)."""
        ...

    async def send_state(self) -> None:
        """Publish the link's own pending state and wait for its acknowledgements.

        Raises:
            BrokerError: The connection was lost (the state stays pending).
        """
        ...

    async def wait_lost(self) -> None:
        """Return when the connection is lost (not when :meth:`disconnect` closes it)."""
        ...

    async def disconnect(self) -> None:
        """Close the connection gracefully (idempotent; never raises)."""
        ...


@dataclass(slots=True)
class _Outage:
    """What happened while the link was down (for the ``sink.fault`` once it is back)."""

    since: float
    #: The broker was away (not only slower than the events while connected).
    away: bool = True
    dropped: int = 0
    #: Of ``dropped``, those that had been sent and not acknowledged: the broker may have them.
    unconfirmed: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


class BrokerSink:
    """A :class:`~crossmodald.bus.sinks.Sink` that publishes envelopes through a
    :class:`BrokerLink`, buffering while the broker is away (see the module doc).

    Args:
        config: The sink's config (filters, buffer, in-flight window, timeouts, backoff).
        link: The broker's client.
        identity: The sink's identity (credentials already hidden).
        clock: Monotonic seconds (injectable).

    Raises:
        ValueError: A filter entry in the config is malformed.
    """

    def __init__(
        self,
        config: BrokerSinkConfig,
        link: BrokerLink,
        identity: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self.filter = EventFilter.from_lists(config.types, config.streams)
            wanted = (
                []
                if not config.types or not link.observed_types
                else sorted({*config.types, *link.observed_types})
            )
            self._sub_filter = EventFilter.from_lists(wanted, config.streams)
        except ValueError as exc:
            raise ValueError(f"{config.type} sink {identity}: {exc}") from None
        self.config = config
        self.link = link
        self._identity = identity
        self._clock = clock
        self._buffer: deque[Envelope] = deque()
        self._inflight: dict[int, tuple[Envelope, float]] = {}
        #: Seqs in the buffer that were sent before, unacknowledged (the connection broke).
        self._unconfirmed: set[int] = set()
        self._wakeup = asyncio.Event()  # the buffer or the link's state got something
        self._idle = asyncio.Event()  # nothing buffered, in flight or pending
        self._idle.set()
        self._state_pending = False
        self._reader_done = asyncio.Event()
        self._closing = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._sub: Subscription | None = None
        self._bus: EventBus | None = None
        self._outage: _Outage | None = None
        # Counters (read through `stats`).
        self._written = 0
        self._batches = 0
        self._resumes = 0
        self._missed_resumes = 0
        self._last_seq = 0
        self._dropped = 0
        self._dropped_unconfirmed = 0
        self._connected = False
        self._reconnects = 0
        self._ack_count = 0
        self._ack_sum_s = 0.0
        self._acks: deque[float] = deque(maxlen=ACK_SAMPLES)

    @property
    def identity(self) -> str:
        """Where it publishes (broker URL without credentials, and what on it)."""
        return self._identity

    @property
    def stats(self) -> SinkStats:
        """Its counters, with the p50/p99 of the recent acknowledgement latencies."""
        recent = sorted(self._acks)
        return SinkStats(
            written=self._written,
            batches=self._batches,
            resumes=self._resumes,
            missed_resumes=self._missed_resumes,
            last_seq=self._last_seq,
            dropped=self._dropped,
            dropped_unconfirmed=self._dropped_unconfirmed,
            buffered=len(self._buffer) + len(self._inflight),
            connected=self._connected,
            reconnects=self._reconnects,
            ack_count=self._ack_count,
            ack_seconds_sum=self._ack_sum_s,
            ack_p50_s=_quantile(recent, 0.5),
            ack_p99_s=_quantile(recent, 0.99),
        )

    # -- running ---------------------------------------------------------------------------

    async def run(self, bus: EventBus, after_seq: int | None = None) -> None:
        """Subscribe and publish until :meth:`aclose` or the bus closes.

        What is held when it ends is published if the broker is there; otherwise it is
        dropped, counted and logged (see the module doc). Never raises for the broker's sake.
        """
        if self._running:
            raise RuntimeError(f"sink {self.identity} is already running")
        self._running = True
        self._bus = bus
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(bus, after_seq), name=f"sink:{self.identity}:read")
                tg.create_task(self._send_loop(), name=f"sink:{self.identity}:send")
        finally:
            # What is still held, and drops not yet told (a broker slower than the events):
            # counted, logged and told now.
            self._drop_all("closed with events held or drops untold")
            await self.link.disconnect()
            self._connected = False
            self._done.set()

    async def _read(self, bus: EventBus, after_seq: int | None) -> None:
        last_seq: int | None = after_seq if after_seq is not None else bus.last_seq
        try:
            while not self._closing.is_set():
                try:
                    sub = bus.subscribe(self._sub_filter, last_seq, name=f"sink:{self.identity}")
                except SubscriberClosed:
                    return
                self._sub = sub
                if not sub.replay_complete:
                    self._missed_resumes += 1
                    log.warning(
                        "sink %s: replay buffer no longer holds every event after seq %s",
                        self.identity,
                        last_seq,
                    )
                try:
                    async for envelope in sub:
                        self._take(envelope)
                        last_seq = envelope.seq
                    return
                except SubscriberClosed as exc:
                    if not exc.slow:
                        return
                    self._resumes += 1
                    log.warning("sink %s: %s; resuming", self.identity, exc.reason)
        finally:
            self._reader_done.set()
            self._wakeup.set()

    def _take(self, envelope: Envelope) -> None:
        if self.link.observe(envelope):
            self._state_pending = True
            self._idle.clear()
            self._wakeup.set()
        if not self.filter.matches(envelope.type, envelope.stream):
            return
        self._buffer.append(envelope)
        self._idle.clear()
        while len(self._buffer) + len(self._inflight) > self.config.buffer and self._buffer:
            self._drop(self._buffer.popleft())
        self._wakeup.set()

    def _drop(self, envelope: Envelope) -> None:
        self._dropped += 1
        outage = self._outage
        if outage is None:  # the broker is there but slower than the events
            outage = self._outage = _Outage(since=self._clock(), away=not self._connected)
        outage.dropped += 1
        if envelope.seq in self._unconfirmed:
            self._unconfirmed.discard(envelope.seq)
            self._dropped_unconfirmed += 1
            outage.unconfirmed += 1
        if outage.first_seq is None or envelope.seq < outage.first_seq:
            outage.first_seq = envelope.seq
        if outage.last_seq is None or envelope.seq > outage.last_seq:
            outage.last_seq = envelope.seq

    def _drop_all(self, why: str) -> None:
        self._unconfirmed.update(self._inflight)
        held = sorted(
            [*self._buffer, *(env for env, _sent in self._inflight.values())],
            key=lambda env: env.seq,
        )
        self._buffer.clear()
        self._inflight.clear()
        for envelope in held:
            self._drop(envelope)
        outage = self._outage
        if outage is not None and outage.dropped:
            log.error(
                "sink %s: %s: dropped %d events (seq %s..%s)",
                self.identity,
                why,
                outage.dropped,
                outage.first_seq,
                outage.last_seq,
            )
            self._report(outage, why)
        self._outage = None
        self._idle.set()

    @property
    def _finished(self) -> bool:
        """Closing, nothing more coming, nothing held."""
        return (
            self._reader_done.is_set()
            and not self._buffer
            and not self._inflight
            and not self._state_pending
        )

    async def _send_loop(self) -> None:
        backoff = self.config.reconnect_min_s
        first = True
        give_up = False  # closing, and the last try to reach the broker failed
        while True:
            if self._finished:
                return
            if give_up:
                self._drop_all("closed while the broker was away")
                return
            # Wait before trying again, longer after each failure (closing: one more try now).
            if not first and not self._reader_done.is_set():
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_s)
            try:
                await asyncio.wait_for(self.link.connect(), self.config.connect_timeout_s)
            except Exception as exc:  # BrokerError, a timeout, or a client library's surprise
                self._unreachable(exc)
                await self.link.disconnect()
                first = False
                give_up = self._reader_done.is_set()
                continue
            if not first:
                self._reconnects += 1
            first = False
            self._connected = True
            log.info("sink %s: connected", self.identity)
            if self._outage is not None and not self._buffer and not self._inflight:
                # Nothing to deliver that could prove otherwise: it is back. (With events
                # held, the first acknowledgement says so: see _acked.)
                self._report_back()
            acked = self._ack_count
            try:
                await self._deliver()
            except Exception as exc:  # nothing the broker does may stop the sink
                self._connected = False
                # Told once per outage; a broker that takes the connection but refuses every
                # publish is retried with the backoff, quietly.
                level = logging.WARNING if self._outage is None else logging.DEBUG
                if self._outage is None:
                    self._outage = _Outage(since=self._clock())
                self._outage.away = True
                log.log(
                    level,
                    "sink %s: connection lost: %s",
                    self.identity,
                    redact_text(str(exc) or type(exc).__name__),
                    exc_info=not isinstance(exc, BrokerError | TimeoutError | OSError),
                )
                await self.link.disconnect()
                if self._ack_count > acked:
                    backoff = self.config.reconnect_min_s  # it worked for a while
                # Closing: one more connection if this one delivered something, else give up.
                give_up = self._reader_done.is_set() and self._ack_count == acked
                continue
            return  # everything delivered and nothing more coming

    def _unreachable(self, exc: Exception) -> None:
        message = redact_text(str(exc) or type(exc).__name__)
        unexpected = not isinstance(exc, BrokerError | TimeoutError | OSError)
        if self._outage is None:
            self._outage = _Outage(since=self._clock())
            log.warning(
                "sink %s: broker unreachable: %s", self.identity, message, exc_info=unexpected
            )
        else:
            self._outage.away = True
            log.debug("sink %s: still unreachable: %s", self.identity, message)

    async def _sleep(self, seconds: float) -> None:
        # Jitter, so that many daemons do not reconnect in step; closing cuts the wait short.
        delay = seconds * random.uniform(0.8, 1.2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader_done.wait(), delay)

    async def _deliver(self) -> None:
        """Publish until closing and everything is acknowledged; raise when the link is lost."""
        link = self.link
        lost: asyncio.Future[Any] = asyncio.ensure_future(link.wait_lost())
        acks: dict[asyncio.Future[Any], int] = {}
        try:
            while True:
                if self._state_pending:
                    self._state_pending = False
                    try:
                        await asyncio.wait_for(link.send_state(), self.config.ack_timeout_s)
                    except BaseException:
                        self._state_pending = True
                        raise
                while self._buffer and len(self._inflight) < self.config.inflight:
                    envelope = self._buffer.popleft()
                    self._inflight[envelope.seq] = (envelope, self._clock())
                    acks[asyncio.ensure_future(await link.send(envelope))] = envelope.seq
                if self._outage is not None and self._outage.dropped:
                    self._report_overflow()
                if self._finished:
                    self._idle.set()
                    return
                if not self._buffer and not self._inflight and not self._state_pending:
                    self._idle.set()
                if self._state_pending:
                    continue  # taken while the state or a publish was awaited
                waiters: set[asyncio.Future[Any]] = {*acks, lost}
                wake: asyncio.Future[Any] | None = None
                self._wakeup.clear()
                if not self._buffer and not self._reader_done.is_set():
                    wake = asyncio.ensure_future(self._wakeup.wait())
                    waiters.add(wake)
                timeout = None
                if self._inflight:
                    oldest = min(sent for _env, sent in self._inflight.values())
                    timeout = max(0.0, oldest + self.config.ack_timeout_s - self._clock())
                done, _ = await asyncio.wait(
                    waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if wake is not None and not wake.done():
                    wake.cancel()
                if lost in done:
                    raise BrokerError("connection lost")
                now = self._clock()
                for future in [f for f in done if f in acks]:
                    seq = acks.pop(future)
                    exc = future.exception()
                    if exc is not None:
                        raise BrokerError(f"publish failed: {exc}") from exc
                    envelope, sent = self._inflight.pop(seq)
                    self._acked(envelope, now - sent)
                if not done and self._inflight:
                    raise BrokerError(f"no acknowledgement within {self.config.ack_timeout_s:g} s")
        finally:
            lost.cancel()
            for future in acks:
                future.cancel()
                # A future that failed while we stopped waiting must not be reported unread.
                if future.done() and not future.cancelled():
                    future.exception()
            if self._inflight:
                # Unacknowledged: back to the front, in seq order, to be sent again.
                again = sorted(self._inflight.values(), key=lambda item: item[0].seq)
                self._unconfirmed.update(self._inflight)
                self._inflight.clear()
                self._buffer.extendleft(env for env, _sent in reversed(again))

    def _report_overflow(self) -> None:
        """Connected, but the broker is slower than the events: tell at most once a second."""
        outage = self._outage
        if outage is None or outage.away or self._clock() - outage.since < OVERFLOW_REPORT_S:
            return
        self._outage = None
        log.warning(
            "sink %s: broker slower than the events: dropped %d (seq %s..%s)",
            self.identity,
            outage.dropped,
            outage.first_seq,
            outage.last_seq,
        )
        self._report(outage, "buffer full")

    def _report_back(self) -> None:
        outage, self._outage = self._outage, None
        if outage is not None:
            self._report(outage, "broker back")

    def _acked(self, envelope: Envelope, latency_s: float) -> None:
        self._unconfirmed.discard(envelope.seq)
        if self._outage is not None and self._outage.away:
            self._report_back()
        self._written += 1
        self._batches += 1
        self._last_seq = max(self._last_seq, envelope.seq)
        self._ack_count += 1
        self._ack_sum_s += latency_s
        self._acks.append(latency_s)

    def _report(self, outage: _Outage, why: str) -> None:
        """Publish the ``sink.fault`` of one outage on the bus (if it is still open)."""
        down_s = max(0.0, self._clock() - outage.since)
        if outage.dropped:
            kind = "dropped"
            message = (
                f"{self.identity}: {outage.dropped} events dropped "
                f"(seq {outage.first_seq}..{outage.last_seq}) while the broker was away "
                f"or slow ({why})"
            )
            if outage.unconfirmed:
                message += (
                    f"; {outage.unconfirmed} of them sent and not acknowledged before the "
                    "connection broke: the broker may have them"
                )
        else:
            kind = "outage"
            message = f"{self.identity}: broker away for {down_s:.1f} s; nothing lost"
        bus = self._bus
        if bus is None or bus.closed:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            bus.publish(
                Event(
                    type="sink.fault",
                    stream="",
                    start_ns=0,
                    end_ns=0,
                    data={
                        "sink": self.identity,
                        "kind": kind,
                        "message": redact_text(message),
                        "dropped": outage.dropped,
                        "unconfirmed": outage.unconfirmed,
                        "first_seq": outage.first_seq,
                        "last_seq": outage.last_seq,
                        "down_s": round(down_s, 3),
                    },
                )
            )

    async def flush(self) -> None:
        """Return once everything taken so far is acknowledged by the broker (or dropped)."""
        if not self._running or self._done.is_set():
            return
        done = asyncio.ensure_future(self._done.wait())
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait({done, idle}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            idle.cancel()

    async def aclose(self) -> None:
        """Stop taking events; publish what is held if the broker is there (one more
        connection attempt if it is not), drop and report the rest; disconnect."""
        self._closing.set()
        if self._sub is not None:
            self._sub.end("sink closing")
        elif self._running:
            self._reader_done.set()
            self._wakeup.set()
        if self._running:
            await self._done.wait()


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
