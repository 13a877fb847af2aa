"""EventBus: stamping, fan-out, filters, replay/resume, slow subscribers, shutdown."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from crossmodald.bus import Event, EventBus, EventFilter, Phase, SubscriberClosed, Subscription
from crossmodald.media import ClockKind


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def ev(n: int, type_: str = "sync.offset", stream: str = "cam1") -> Event:
    return Event(
        type=type_,
        stream=stream,
        start_ns=n * 1_000_000,
        end_ns=n * 1_000_000 + 500_000,
        data={"n": n},
        clock=ClockKind.PTS,
    )


def drain(sub: Subscription) -> list[int]:
    return [env.seq for env in sub.drain_nowait(1_000_000)]


def test_publish_stamps_seq_id_ts_and_serialises_once() -> None:
    bus = EventBus(
        replay_size=10,
        subscriber_queue=10,
        slow_subscriber_s=1.0,
        wall_clock=lambda: 1714564801.2345,
    )
    first = bus.publish(ev(1))
    second = bus.publish(
        Event("speech", "cam1", 0, 10, {"x": 1.5}, phase=Phase.START, closed_ns=42)
    )
    assert (first.seq, second.seq) == (1, 2)
    assert first.id != second.id
    body = json.loads(first.json)
    assert body["ts"] == "2024-05-01T12:00:01.234Z"
    assert body["seq"] == 1
    assert body["id"] == first.id
    assert body["schema"] == 1
    assert body["media"] == {"start_ns": 1_000_000, "end_ns": 1_500_000, "clock": "pts"}
    assert " " not in first.json  # compact
    assert json.loads(second.json)["phase"] == "start"
    assert json.loads(second.json)["closed_mono_ns"] == 42
    assert bus.last_seq == 2


def test_bad_event_is_rejected_without_using_a_seq() -> None:
    bus = EventBus(replay_size=10, subscriber_queue=10, slow_subscriber_s=1.0)
    with pytest.raises(ValueError, match=r"sync\.offset on stream 'cam1': data is not JSON"):
        bus.publish(Event("sync.offset", "cam1", 0, 1, {"audio_lead_ms": float("nan")}))
    with pytest.raises(ValueError, match="event type 'bad type'"):
        bus.publish(Event("bad type", "cam1", 0, 1))
    assert bus.publish(ev(1)).seq == 1


async def test_fan_out_to_every_matching_subscriber_in_order() -> None:
    bus = EventBus(replay_size=100, subscriber_queue=100, slow_subscriber_s=1.0)
    everything = bus.subscribe(EventFilter())
    sync_only = bus.subscribe(EventFilter.parse("sync.", None))
    cam2 = bus.subscribe(EventFilter.parse(None, "cam2"))
    for n in range(1, 7):
        bus.publish(ev(n, "sync.offset" if n % 2 else "stream.fault", "cam1" if n < 4 else "cam2"))
    assert drain(everything) == [1, 2, 3, 4, 5, 6]
    assert drain(sync_only) == [1, 3, 5]
    assert drain(cam2) == [4, 5, 6]
    # The iterator waits for live events.
    getter = asyncio.create_task(anext(everything))
    await asyncio.sleep(0)
    assert not getter.done()
    bus.publish(ev(7))
    assert (await asyncio.wait_for(getter, 1)).seq == 7


def test_filter_prefixes_and_exact_types() -> None:
    flt = EventFilter.parse("sync.*,stream.end", "a,b")
    assert flt.matches("sync.offset", "a")
    assert flt.matches("sync.alarm", "b")
    assert flt.matches("stream.end", "a")
    assert not flt.matches("stream.start", "a")
    assert not flt.matches("sync", "a")  # a prefix needs the dot
    assert not flt.matches("sync.offset", "c")
    assert EventFilter.parse("*", None).matches("anything.at_all", "x")
    assert EventFilter.parse("", "").matches("x", "y")
    assert EventFilter.parse(" sync. , plugin.error ", None).matches("plugin.error", "")


@pytest.mark.parametrize(
    ("types", "streams", "message"),
    [
        ("sync.offset,,x", None, "type filter: empty entry"),
        ("sy nc", None, "outside"),
        ("sync*", None, "only allowed at the end after '.'"),
        ("a.*.*", None, "only allowed at the end"),
        (None, "cam*", "not allowed in stream names"),
        (None, "ü", "outside"),
        ("x" * 129, None, "longer than 128"),
        (",".join(f"t{i}" for i in range(65)), None, "at most 64 entries"),
        ("a" * 20000, None, "too long"),
    ],
)
def test_filter_parse_errors_are_clear(
    types: str | None, streams: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        EventFilter.parse(types, streams)


def test_resume_from_replay_without_gap() -> None:
    bus = EventBus(replay_size=5, subscriber_queue=10, slow_subscriber_s=1.0)
    for n in range(1, 9):
        bus.publish(ev(n))  # buffer holds 4..8
    sub = bus.subscribe(EventFilter(), last_seq=5)
    assert sub.replay_complete
    assert sub.first_replay_seq == 6
    assert sub.resume_after == 5
    bus.publish(ev(9))
    assert drain(sub) == [6, 7, 8, 9]  # no gap, no duplicate at the seam
    # Resuming at the newest seq is complete and replays nothing.
    up_to_date = bus.subscribe(EventFilter(), last_seq=9)
    assert up_to_date.replay_complete
    assert drain(up_to_date) == []
    # Resuming right before the oldest buffered one is still complete.
    edge = bus.subscribe(EventFilter(), last_seq=4)
    assert edge.replay_complete
    assert drain(edge) == [5, 6, 7, 8, 9]


def test_resume_with_gap_is_reported() -> None:
    bus = EventBus(replay_size=3, subscriber_queue=10, slow_subscriber_s=1.0)
    for n in range(1, 8):
        bus.publish(ev(n))  # buffer holds 5..7
    sub = bus.subscribe(EventFilter(), last_seq=2)
    assert not sub.replay_complete
    assert drain(sub) == [5, 6, 7]
    # A last_seq from an earlier daemon run (beyond the newest seq): gap, whole buffer.
    stale = bus.subscribe(EventFilter(), last_seq=1000)
    assert not stale.replay_complete
    assert drain(stale) == [5, 6, 7]
    with pytest.raises(ValueError, match="last_seq must be >= 0"):
        bus.subscribe(EventFilter(), last_seq=-1)


def test_replay_applies_the_filter_and_zero_replay_size() -> None:
    bus = EventBus(replay_size=10, subscriber_queue=10, slow_subscriber_s=1.0)
    for n in range(1, 5):
        bus.publish(ev(n, stream="a" if n % 2 else "b"))
    assert drain(bus.subscribe(EventFilter.parse(None, "b"), last_seq=0)) == [2, 4]
    none_kept = EventBus(replay_size=0, subscriber_queue=10, slow_subscriber_s=1.0)
    none_kept.publish(ev(1))
    sub = none_kept.subscribe(EventFilter(), last_seq=0)
    assert not sub.replay_complete
    assert drain(sub) == []


async def test_slow_subscriber_closed_after_slow_time_fast_one_unaffected() -> None:
    clock = FakeClock()
    bus = EventBus(replay_size=0, subscriber_queue=3, slow_subscriber_s=2.0, clock=clock)
    slow = bus.subscribe(EventFilter(), name="slow")
    fast = bus.subscribe(EventFilter(), name="fast")
    got: list[int] = []
    for n in range(1, 5):  # slow's queue reaches 3 and stays there: marked slow
        bus.publish(ev(n))
        got += drain(fast)
    stats = bus.stats()
    assert {s.name: s.slow for s in stats.per_subscriber} == {"slow": True, "fast": False}
    clock.now_s += 1.9
    bus.publish(ev(5))
    got += drain(fast)
    assert not slow.closed
    clock.now_s += 0.2  # now slow for 2.1 s
    bus.publish(ev(6))
    got += drain(fast)
    assert slow.closed
    assert got == [1, 2, 3, 4, 5, 6]
    with pytest.raises(SubscriberClosed, match="too slow: ") as info:
        await anext(slow)
    assert info.value.slow
    assert slow.close_reason is not None
    assert "events behind" in slow.close_reason
    stats = bus.stats()
    assert stats.closed_slow == 1
    assert stats.subscribers == 1
    assert stats.dropped >= 1


async def test_subscriber_that_catches_up_is_no_longer_slow() -> None:
    clock = FakeClock()
    bus = EventBus(replay_size=0, subscriber_queue=2, slow_subscriber_s=1.0, clock=clock)
    sub = bus.subscribe(EventFilter())
    for n in range(1, 4):
        bus.publish(ev(n))
    clock.now_s += 0.9
    assert drain(sub) == [1, 2, 3]
    clock.now_s += 5.0
    for n in range(4, 6):
        bus.publish(ev(n))
    assert not sub.closed
    assert drain(sub) == [4, 5]


def test_queue_hard_bound_closes_at_once() -> None:
    clock = FakeClock()
    bus = EventBus(
        replay_size=0,
        subscriber_queue=2,
        slow_subscriber_s=60.0,
        clock=clock,
        subscriber_queue_max=5,
    )
    sub = bus.subscribe(EventFilter())
    for n in range(1, 6):
        bus.publish(ev(n))
    assert sub.queue_depth == 5
    assert not sub.closed
    bus.publish(ev(6))  # no time passed, but the hard bound is reached
    assert sub.closed
    assert sub.close_reason == "too slow: 6 events behind"
    assert bus.stats().dropped == 6  # five queued plus the one that did not fit
    with pytest.raises(ValueError, match="subscriber_queue_max"):
        EventBus(replay_size=0, subscriber_queue=4, slow_subscriber_s=1.0, subscriber_queue_max=3)


async def test_slow_subscriber_cut_off_in_real_time_while_fast_gets_every_event_on_time() -> None:
    bus = EventBus(replay_size=0, subscriber_queue=10, slow_subscriber_s=0.2)
    slow = bus.subscribe(EventFilter(), name="slow")  # never reads
    fast = bus.subscribe(EventFilter(), name="fast")
    sent_at: dict[int, float] = {}
    latencies_s: list[float] = []
    seqs: list[int] = []

    async def consume() -> None:
        async for env in fast:
            latencies_s.append(time.monotonic() - sent_at[env.seq])
            seqs.append(env.seq)
            if env.seq == 100:
                return

    consumer = asyncio.create_task(consume())
    for n in range(1, 101):
        envelope = bus.publish(ev(n))
        sent_at[envelope.seq] = time.monotonic()
        await asyncio.sleep(0.005)
    await asyncio.wait_for(consumer, 5)
    assert seqs == list(range(1, 101))
    assert max(latencies_s) < 0.1
    assert slow.closed
    assert slow.close_reason is not None
    assert slow.close_reason.startswith("too slow: ")
    assert bus.stats().closed_slow == 1


async def test_aclose_ends_subscriptions_after_what_they_have() -> None:
    bus = EventBus(replay_size=10, subscriber_queue=10, slow_subscriber_s=1.0)
    sub = bus.subscribe(EventFilter())
    bus.publish(ev(1))
    bus.publish(ev(2))
    waiting = bus.subscribe(EventFilter.parse("nothing.", None))
    waiter = asyncio.create_task(anext(waiting))
    await asyncio.sleep(0)
    await bus.aclose("maintenance")
    assert [e.seq async for e in _until_closed(sub)] == [1, 2]
    with pytest.raises(SubscriberClosed, match="maintenance"):
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(RuntimeError, match="event bus is closed"):
        bus.publish(ev(3))
    with pytest.raises(SubscriberClosed, match="maintenance"):
        bus.subscribe(EventFilter())


async def _until_closed(sub: Subscription):  # type: ignore[no-untyped-def]
    try:
        async for env in sub:
            yield env
    except SubscriberClosed:
        return


async def test_owner_aclose_ends_iteration_and_unsubscribes() -> None:
    bus = EventBus(replay_size=10, subscriber_queue=10, slow_subscriber_s=1.0)
    sub = bus.subscribe(EventFilter())
    bus.publish(ev(1))
    waiter = asyncio.create_task(anext(sub, None))
    assert (await waiter) is not None
    waiter = asyncio.create_task(anext(sub, None))
    await asyncio.sleep(0)
    await sub.aclose()
    assert await asyncio.wait_for(waiter, 1) is None
    assert bus.stats().subscribers == 0
    bus.publish(ev(2))  # nothing delivered to a closed subscription
    assert sub.pending == 0


async def test_end_drains_then_raises() -> None:
    bus = EventBus(replay_size=10, subscriber_queue=10, slow_subscriber_s=1.0)
    sub = bus.subscribe(EventFilter())
    bus.publish(ev(1))
    sub.end("bye")
    bus.publish(ev(2))  # after end(): not delivered
    assert (await anext(sub)).seq == 1
    with pytest.raises(SubscriberClosed, match="bye"):
        await anext(sub)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="subscriber_queue must be >= 1"):
        EventBus(replay_size=0, subscriber_queue=0, slow_subscriber_s=1.0)
    with pytest.raises(ValueError, match="slow_subscriber_s must be > 0"):
        EventBus(replay_size=0, subscriber_queue=1, slow_subscriber_s=0)
