"""The host with providers and consumers: products handed over, drops and failures passed on,
per-stream state owned by the host, silent providers, status."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from crossmodald.bus.events import Event
from crossmodald.media import ClockKind, StreamInfo, Window
from crossmodald.runtime.host import Overload, PluginHost, link_hosts
from crossmodald.runtime.plugin import (
    BatchItem,
    MetricSpec,
    Need,
    PluginConfig,
    ProductKey,
)


@dataclass(frozen=True)
class Count:
    """The provider's product: how many windows of the stream it has seen (its state)."""

    stream: str
    n: int


COUNT: ProductKey[Count] = ProductKey("test.count", Count)


class ProviderConfig(PluginConfig):
    type: Literal["provider"] = "provider"


class ConsumerConfig(PluginConfig):
    type: Literal["consumer"] = "consumer"
    optional: bool = False

    def requires(self) -> tuple[Need, ...]:
        return (Need(COUNT, optional=self.optional),)


class Session:
    def __init__(self, name: str, stream: str) -> None:
        self.name, self.stream = name, stream
        self.last: Any = None

    def update(self, window: Window, result: Any) -> list[Event]:
        self.last = result
        return [Event(f"{self.name}.window", window.stream, window.start_ns, window.end_ns)]

    def close(self) -> list[Event]:
        return [Event(f"{self.name}.closed", self.stream, 0, 0)]

    def status(self) -> dict[str, Any]:
        return {"last": str(self.last)}


class ProviderPlugin:
    """Counts windows per stream in host-owned state; can fail or wait."""

    name = "provider"
    provides: ClassVar[ProductKey[Any]] = COUNT
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self) -> None:
        self.fail_on: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_video else "has no video"

    def new_state(self, stream: StreamInfo) -> list[int]:
        return [0]

    def open(self, stream: StreamInfo) -> Session:
        return Session(self.name, stream.name)

    def infer(self, batch: Sequence[BatchItem[list[int]]]) -> list[Count]:
        self.gate.wait(5)
        self.calls += 1
        if any(item.window.index in self.fail_on for item in batch):
            raise ValueError("provider broke")
        out = []
        for item in batch:
            item.state[0] += 1
            out.append(Count(item.window.stream, item.state[0]))
        return out


class ConsumerPlugin:
    name = "consumer"
    provides = None
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("crossmodald_stream_test_last", "gauge", "Last count.", "last"),
    )

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, Count | None]] = []

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> Session:
        return Session(self.name, stream.name)

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[int | None]:
        out: list[int | None] = []
        for item in batch:
            count = item.inputs.get(COUNT)
            self.seen.append((item.window.stream, item.window.index, count))
            out.append(count.n if count is not None else None)
        return out


def window(stream: str, index: int) -> Window:
    return Window(
        stream=stream,
        index=index,
        start_ns=index * 500_000_000,
        end_ns=index * 500_000_000 + 2_000_000_000,
        video=(),
        audio=np.zeros(4, np.float32),
        audio_valid=np.ones(4, bool),
        audio_rate=2,
        frame_rate=30.0,
        clock=ClockKind.SYNTHETIC,
    )


def info(name: str, video: bool = True) -> StreamInfo:
    return StreamInfo(name=name, kind="test", has_video=video, has_audio=True)


async def pair(
    *,
    silent: bool = False,
    optional: bool = False,
    overload: Overload = Overload.DROP_OLDEST,
    provider_queue: int = 256,
) -> tuple[PluginHost, PluginHost, ProviderPlugin, ConsumerPlugin, list[Event], list[Any]]:
    events: list[Event] = []
    provider, consumer = ProviderPlugin(), ConsumerPlugin()
    p_host = PluginHost(
        provider,
        ProviderConfig(queue_size=provider_queue),
        events.append,
        overload=overload,
        silent=silent,
    )
    c_host = PluginHost(
        consumer, ConsumerConfig(optional=optional), events.append, overload=overload
    )
    link_hosts([p_host, c_host])
    tasks = [asyncio.create_task(p_host.run()), asyncio.create_task(c_host.run())]
    return p_host, c_host, provider, consumer, events, tasks


async def finish(hosts: Sequence[PluginHost], streams: Sequence[str], tasks: list[Any]) -> None:
    for host in hosts:
        for stream in streams:
            await host.close_stream(stream)
        await host.aclose()
    await asyncio.gather(*tasks)


async def test_consumer_gets_the_providers_product_with_the_same_window() -> None:
    p_host, c_host, _provider, consumer, events, tasks = await pair()
    for name in ("a", "b"):
        assert p_host.open_stream(info(name)) is None
        assert c_host.open_stream(info(name)) is None
    for index in range(3):
        for name in ("a", "b"):
            # The consumer first: it waits for the product, whatever the submit order.
            await c_host.submit(window(name, index))
            await p_host.submit(window(name, index))
    await finish([p_host, c_host], ["a", "b"], tasks)
    got = {(s, i): c.n if c else None for s, i, c in consumer.seen}
    assert got == {(s, i): i + 1 for s in ("a", "b") for i in range(3)}  # state per stream
    assert all(c is not None and c.stream == s for s, _i, c in consumer.seen)
    assert [e.type for e in events].count("provider.window") == 6
    assert [e.type for e in events].count("consumer.window") == 6
    assert c_host.snapshot()["requires"] == [{"product": "test.count", "optional": False}]
    assert p_host.snapshot()["provides"] == "test.count"


async def test_silent_provider_publishes_nothing_and_status_is_per_stream() -> None:
    p_host, c_host, _provider, _consumer, events, tasks = await pair(silent=True)
    p_host.open_stream(info("a"))
    c_host.open_stream(info("a"))
    await p_host.submit(window("a", 0))
    await c_host.submit(window("a", 0))
    for _ in range(100):
        if c_host.stats.windows_done:
            break
        await asyncio.sleep(0.01)
    assert c_host.stream_status("a") == {"last": "1"}
    assert c_host.stream_status("zzz") is None
    assert [m.name for m in c_host.metric_specs()] == ["crossmodald_stream_test_last"]
    await finish([p_host, c_host], ["a"], tasks)
    assert {e.type for e in events} == {"consumer.window", "consumer.closed"}
    assert c_host.stream_status("a") == {"last": "1"}  # an ended stream keeps its last status


async def test_provider_failure_is_a_clear_error_for_the_consumers_window() -> None:
    p_host, c_host, provider, consumer, events, tasks = await pair()
    provider.fail_on = {1}
    p_host.open_stream(info("a"))
    c_host.open_stream(info("a"))
    for index in range(3):
        await p_host.submit(window("a", index))
        await asyncio.sleep(0.05)  # one window per batch: only window 1 fails
        await c_host.submit(window("a", index))
    await finish([p_host, c_host], ["a"], tasks)
    errors = [e for e in events if e.type == "plugin.error"]
    assert [e.data["plugin"] for e in errors] == ["provider", "consumer"]
    assert errors[1].data["message"] == (
        "input test.count unavailable: provider provider failed: ValueError: provider broke"
    )
    assert errors[1].start_ns == window("a", 1).start_ns
    assert [i for _s, i, _c in consumer.seen] == [0, 2]  # the others go on
    assert c_host.stats.errors == 1


async def test_window_the_provider_dropped_is_dropped_by_the_consumer_too() -> None:
    p_host, c_host, provider, consumer, _events, tasks = await pair(provider_queue=1)
    p_host.open_stream(info("a"))
    c_host.open_stream(info("a"))
    provider.gate.clear()
    await p_host.submit(window("a", 0))
    await asyncio.sleep(0.05)  # window 0 is in the provider's infer
    for index in range(3):
        await c_host.submit(window("a", index))
    await p_host.submit(window("a", 1))
    await p_host.submit(window("a", 2))  # queue of one: window 1 is dropped, oldest first
    provider.gate.set()
    await finish([p_host, c_host], ["a"], tasks)
    assert p_host.stats.dropped_by_stream == {"a": 1}
    # The consumer dropped the same window (counted, no error event); the others go on.
    assert [i for _s, i, _c in consumer.seen] == [0, 2]
    assert c_host.stats.dropped_by_stream == {"a": 1}
    assert c_host.stats.errors == 0


async def test_consumer_refuses_a_stream_its_provider_does_not_analyse() -> None:
    p_host, c_host, _p, _c, _events, tasks = await pair()
    assert p_host.open_stream(info("mic", video=False)) == "has no video"
    assert c_host.open_stream(info("mic", video=False)) == (
        "needs test.count, which no plugin provides for this stream"
    )
    await finish([p_host, c_host], [], tasks)


async def test_optional_need_without_a_provider_for_the_stream_runs_without_it() -> None:
    p_host, c_host, _provider, consumer, _events, tasks = await pair(optional=True)
    assert p_host.open_stream(info("mic", video=False)) == "has no video"
    assert c_host.open_stream(info("mic", video=False)) is None
    await c_host.submit(window("mic", 0))
    await finish([p_host, c_host], ["mic"], tasks)
    assert consumer.seen == [("mic", 0, None)]
