"""The broker sink's count of dropped events the broker may have stored (``unconfirmed``).

When a broker dies after storing a publish but before acknowledging it, the sink cannot know
the event arrived: it goes back to the buffer, and if the buffer then overflows it is dropped.
That race is rare with a real server (tests/bus/test_brokers_nats.py kills one under load); here
an in-memory broker stores every publish and holds its acknowledgements, so the case is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

import jsonschema

from crossmodald.bus import Event, EventBus, event_schema
from crossmodald.bus.broker import BrokerError, BrokerSink, BrokerSinkConfig
from crossmodald.bus.events import Envelope
from pollkit import until


class _Config(BrokerSinkConfig):
    type: Literal["memory"] = "memory"


class _MemoryBroker:
    """A :class:`~crossmodald.bus.broker.BrokerLink` to a broker in this process: it stores
    every publish at once and acknowledges only when told to."""

    observed_types: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.stored: list[int] = []
        self.up = True
        self.hold_acks = False
        self._lost: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        if not self.up:
            raise BrokerError("connection refused")
        self._lost = asyncio.get_running_loop().create_future()

    async def send(self, envelope: Envelope) -> Awaitable[object]:
        if not self.up:
            raise BrokerError("connection closed")
        self.stored.append(envelope.seq)
        ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if not self.hold_acks:
            ack.set_result(None)
        return ack

    def observe(self, envelope: Envelope) -> bool:
        return False

    async def send_state(self) -> None:
        return None

    async def wait_lost(self) -> None:
        assert self._lost is not None
        await self._lost

    async def disconnect(self) -> None:
        return None

    def die(self) -> None:
        """Go away with the held acknowledgements unsent (what was stored stays stored)."""
        self.up = False
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)


async def test_dropped_events_the_broker_stored_are_told_apart_as_unconfirmed() -> None:
    bus = EventBus(replay_size=1000, subscriber_queue=1000, slow_subscriber_s=30.0)
    broker = _MemoryBroker()
    config = _Config(buffer=10, inflight=4, reconnect_min_s=0.02, reconnect_max_s=0.05)
    sink = BrokerSink(config, broker, "memory:test")
    task = asyncio.create_task(sink.run(bus))
    await until(lambda: sink.stats.connected, 10, "connected", poll_s=0.01)
    broker.hold_acks = True
    for n in range(1, 5):  # four publishes stored by the broker, none acknowledged
        bus.publish(Event("sync.offset", "cam1", n, n + 1, {"n": n}))
    await until(lambda: len(broker.stored) == 4, 10, "four sent", poll_s=0.01)
    broker.die()
    await until(lambda: not sink.stats.connected, 10, "connection lost", poll_s=0.01)
    for n in range(5, 21):  # 4 back in the buffer + 16 new > 10: the oldest 10 go
        bus.publish(Event("sync.offset", "cam1", n, n + 1, {"n": n}))
    await until(lambda: sink.stats.dropped == 10, 10, "ten dropped", poll_s=0.01)
    broker.up, broker.hold_acks = True, False
    await until(
        lambda: any(e.type == "sink.fault" for e in bus.replay_snapshot()), 10, "fault", poll_s=0.01
    )
    await sink.flush()
    await sink.aclose()
    await task

    fault = next(e.as_dict() for e in bus.replay_snapshot() if e.type == "sink.fault")
    jsonschema.validate(fault, event_schema())
    data = fault["data"]
    assert (data["dropped"], data["first_seq"], data["last_seq"]) == (10, 1, 10)
    # Seqs 1-4 were stored before the broker died: dropped, but perhaps delivered.
    assert data["unconfirmed"] == 4
    assert (sink.stats.dropped, sink.stats.dropped_unconfirmed) == (10, 4)
    assert "4 of them sent and not acknowledged" in data["message"]
    assert broker.stored[:4] == [1, 2, 3, 4]
    # 5-10 were never sent: certainly lost. 11-20 and the fault itself came after the reconnect.
    assert not set(range(5, 11)) & set(broker.stored)
    assert set(range(11, 21)) <= set(broker.stored)
