"""JsonlSink against a real bus and a real file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from crossmodald.bus import Event, EventBus, JsonlSink, Sink
from crossmodald.bus.jsonl import JsonlSinkConfig


def ev(n: int, type_: str = "sync.offset", stream: str = "cam1") -> Event:
    return Event(type_, stream, n, n + 1, {"n": n})


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def test_writes_every_accepted_event_and_flushes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "events.jsonl"
    bus = EventBus(replay_size=100, subscriber_queue=10_000, slow_subscriber_s=5.0)
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=path, fsync=True), batch_max=7)
    assert isinstance(sink, Sink)  # the protocol the daemon runs every sink through
    assert sink.identity == str(path)
    task = asyncio.create_task(sink.run(bus))
    await asyncio.sleep(0.05)  # let it subscribe
    for n in range(1, 501):
        bus.publish(ev(n))
        if n % 100 == 0:
            await asyncio.sleep(0)  # some batches go out while publishing continues
    await sink.aclose()  # everything queued is written before it returns
    await asyncio.wait_for(task, 5)
    written = lines(path)
    assert [item["seq"] for item in written] == list(range(1, 501))
    assert sink.stats.written == 500
    assert sink.stats.last_seq == 500
    assert sink.stats.batches >= 500 // 7
    # Appends on a second run instead of truncating.
    sink2 = JsonlSink(JsonlSinkConfig(type="jsonl", path=path))
    task2 = asyncio.create_task(sink2.run(bus))
    await asyncio.sleep(0.05)
    bus.publish(ev(501))
    await bus.aclose()  # closing the bus also drains and stops the sink
    await asyncio.wait_for(task2, 5)
    assert [item["seq"] for item in lines(path)] == [*range(1, 501), 501]


async def test_filters_from_config(tmp_path: Path) -> None:
    path = tmp_path / "sync.jsonl"
    bus = EventBus(replay_size=10, subscriber_queue=100, slow_subscriber_s=5.0)
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=path, types=["sync."], streams=["cam2"]))
    task = asyncio.create_task(sink.run(bus))
    await asyncio.sleep(0.05)
    bus.publish(ev(1, "sync.offset", "cam1"))
    bus.publish(ev(2, "sync.offset", "cam2"))
    bus.publish(ev(3, "stream.fault", "cam2"))
    bus.publish(ev(4, "sync.alarm", "cam2"))
    await sink.aclose()
    await task
    assert [(item["seq"], item["type"]) for item in lines(path)] == [
        (2, "sync.offset"),
        (4, "sync.alarm"),
    ]


def test_bad_filter_in_config_is_refused_by_the_model() -> None:
    # Where check-config sees it: it used to pass and then stop `run` with a traceback.
    with pytest.raises(ValidationError, match="type filter: 'sy nc' has characters outside"):
        JsonlSinkConfig(type="jsonl", path=Path("/tmp/x.jsonl"), types=["sy nc"])
    with pytest.raises(ValidationError, match="stream filter"):
        JsonlSinkConfig(type="jsonl", path=Path("/tmp/x.jsonl"), streams=[""])


async def test_unwritable_path_fails_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bus = EventBus(replay_size=10, subscriber_queue=100, slow_subscriber_s=5.0)
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=blocker / "sub" / "e.jsonl"))
    with pytest.raises(OSError, match=r"jsonl sink: cannot open .*file/sub/e\.jsonl"):
        await sink.run(bus)
    await sink.aclose()


async def test_slow_sink_resumes_from_replay_without_losing_events(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    bus = EventBus(
        replay_size=1000, subscriber_queue=2, slow_subscriber_s=60.0, subscriber_queue_max=4
    )
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=path))
    task = asyncio.create_task(sink.run(bus))
    await asyncio.sleep(0.05)
    # A burst larger than the sink's queue bound, with no chance to run in between: the bus
    # cuts the sink off; it resubscribes after the last seq it wrote and catches up.
    for n in range(1, 51):
        bus.publish(ev(n))
    await asyncio.sleep(0.2)
    for n in range(51, 61):
        bus.publish(ev(n))
        await asyncio.sleep(0.01)
    await sink.aclose()
    await task
    assert bus.stats().closed_slow >= 1
    assert sink.stats.resumes >= 1
    assert sink.stats.missed_resumes == 0
    assert [item["seq"] for item in lines(path)] == list(range(1, 61))
