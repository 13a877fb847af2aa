"""The plugin host: batching across streams, overload policy, error isolation, close order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pytest

from crossmodald.bus.events import Event
from crossmodald.media import ClockKind, StreamInfo, Window
from crossmodald.runtime.host import OFFLINE_BATCH, OFFLINE_GATHER_S, Overload, PluginHost
from crossmodald.runtime.plugin import BatchItem, PluginConfig


class CountConfig(PluginConfig):
    type: Literal["count"] = "count"


class CountSession:
    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.closed = False

    def update(self, window: Window, result: Any) -> list[Event]:
        if result == "boom-update":
            raise RuntimeError("update failed")
        return [Event("test.window", window.stream, window.start_ns, window.end_ns, {"r": result})]

    def close(self) -> list[Event]:
        self.closed = True
        return [Event("test.closed", self.stream, 0, 0)]

    def status(self) -> dict[str, Any]:
        return {"closed": self.closed}


class CountPlugin:
    """Records every batch it sees; can be told to fail or to wait."""

    name = "count"
    config_model: ClassVar[type[PluginConfig]] = CountConfig
    provides = None
    metrics = ()

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.threads: set[str] = set()
        self.fail_on: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_audio else "has no audio"

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> CountSession:
        return CountSession(stream.name)

    def infer(self, items: Sequence[BatchItem[None]]) -> list[Any]:
        batch = [item.window for item in items]
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        self.batches.append([(w.stream, w.index) for w in batch])
        if any(w.index in self.fail_on for w in batch):
            raise ValueError("bad window")
        return ["boom-update" if w.index == 99 else w.index for w in batch]


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


def info(name: str, audio: bool = True) -> StreamInfo:
    return StreamInfo(name=name, kind="test", has_video=True, has_audio=audio)


async def start(
    plugin: CountPlugin, overload: Overload = Overload.DROP_OLDEST, **cfg: Any
) -> tuple[PluginHost, list[Event], asyncio.Task[None]]:
    events: list[Event] = []
    host = PluginHost(plugin, CountConfig(**cfg), events.append, overload=overload)
    task = asyncio.create_task(host.run())
    return host, events, task


async def test_one_inference_call_serves_many_streams() -> None:
    plugin = CountPlugin()
    plugin.gate.clear()  # hold the worker so windows of all streams queue up
    host, events, task = await start(plugin)
    for name in ("a", "b", "c"):
        assert host.open_stream(info(name)) is None
    await host.submit(window("a", 0))
    await asyncio.sleep(0.05)  # the worker takes window a0 alone and blocks in infer
    for name in ("a", "b", "c"):
        await host.submit(window(name, 1))
    plugin.gate.set()
    for name in ("a", "b", "c"):
        await host.close_stream(name)
    await host.aclose()
    await task
    assert plugin.batches == [[("a", 0)], [("a", 1), ("b", 1), ("c", 1)]]
    assert all(name.startswith("plugin:count") for name in plugin.threads)
    assert [e.type for e in events].count("test.window") == 4
    assert [e.type for e in events][-3:] == ["test.closed"] * 3
    assert host.stats.batches == 2
    assert host.stats.windows_done == 4


async def test_overload_drops_oldest_and_counts() -> None:
    plugin = CountPlugin()
    plugin.gate.clear()
    host, _events, task = await start(plugin, queue_size=3)
    host.open_stream(info("a"))
    await host.submit(window("a", 0))
    await asyncio.sleep(0.05)  # window 0 is in inference
    for index in range(1, 7):
        await host.submit(window("a", index))
    assert host.queue_depth == 3
    assert host.stats.windows_dropped == 3
    assert host.stats.dropped_by_stream == {"a": 3}
    plugin.gate.set()
    await host.close_stream("a")
    await host.aclose()
    await task
    seen = [index for batch in plugin.batches for _, index in batch]
    assert seen == [0, 4, 5, 6]  # the oldest waiting windows (1, 2, 3) were dropped


async def test_block_mode_loses_nothing() -> None:
    plugin = CountPlugin()
    host, _, task = await start(plugin, overload=Overload.BLOCK, queue_size=2, max_batch=2)
    host.open_stream(info("a"))
    for index in range(20):
        await host.submit(window("a", index))
    await host.close_stream("a")
    await host.aclose()
    await task
    seen = [index for batch in plugin.batches for _, index in batch]
    assert seen == list(range(20))
    assert host.stats.windows_dropped == 0
    assert max(len(b) for b in plugin.batches) <= 2


async def test_plugin_errors_are_isolated_and_reported() -> None:
    plugin = CountPlugin()
    plugin.fail_on = {1}
    host, events, task = await start(plugin, max_batch=1)
    host.open_stream(info("a"))
    host.open_stream(info("b"))
    for w in (window("a", 0), window("a", 1), window("b", 2), window("a", 99), window("a", 3)):
        await host.submit(w)
    await host.close_stream("a")
    await host.close_stream("b")
    await host.aclose()
    await task
    types = [(e.type, e.stream) for e in events]
    assert ("plugin.error", "a") in types
    errors = [e for e in events if e.type == "plugin.error"]
    assert len(errors) == 2
    assert "bad window" in errors[0].data["message"]
    assert "update failed" in errors[1].data["message"]
    done = [e.data["r"] for e in events if e.type == "test.window"]
    assert done == [0, 2, 3]  # the other windows and streams went on
    assert host.stats.errors == 2


async def test_refused_stream_and_unknown_stream_windows() -> None:
    plugin = CountPlugin()
    host, _, task = await start(plugin)
    assert host.open_stream(info("silent", audio=False)) == "has no audio"
    await host.submit(window("silent", 0))  # no session: ignored, never inferred
    await host.aclose()
    await task
    assert plugin.batches == []


@pytest.mark.parametrize("count", [1, 64, 200])
async def test_max_batch_respected(count: int) -> None:
    plugin = CountPlugin()
    plugin.gate.clear()
    host, _, task = await start(plugin, max_batch=64, queue_size=1000)
    host.open_stream(info("a"))
    for index in range(count):
        await host.submit(window("a", index))
    plugin.gate.set()
    await host.close_stream("a")
    await host.aclose()
    await task
    assert sum(len(b) for b in plugin.batches) == count
    assert max(len(b) for b in plugin.batches) <= 64


async def test_block_mode_holds_at_most_one_batch_waiting() -> None:
    # Offline ingest may run no further ahead than one batch: queued windows hold frames.
    plugin = CountPlugin()
    plugin.gate.clear()  # a slow model: the worker blocks in infer
    host, _, task = await start(plugin, overload=Overload.BLOCK, queue_size=256, max_batch=4)
    host.open_stream(info("a"))

    async def feed() -> None:
        for index in range(40):
            await host.submit(window("a", index))

    feeder = asyncio.create_task(feed())
    await asyncio.sleep(0.1)
    assert not feeder.done()  # ingest waits ...
    assert host.queue_depth == 4  # ... with one batch queued behind the one in infer
    plugin.gate.set()
    await feeder
    await host.close_stream("a")
    await host.aclose()
    await task
    seen = [index for batch in plugin.batches for _, index in batch]
    assert seen == list(range(40))


async def test_block_mode_gathers_full_batches() -> None:
    # Offline, the model sees batches of OFFLINE_BATCH windows, not one window per call.
    plugin = CountPlugin()
    host, _, task = await start(plugin, overload=Overload.BLOCK, max_batch=64)
    host.open_stream(info("a"))
    for index in range(40):
        await host.submit(window("a", index))
    await host.close_stream("a")
    await host.aclose()
    await task
    sizes = [len(batch) for batch in plugin.batches]
    full, rest = divmod(40, OFFLINE_BATCH)
    assert sizes == [OFFLINE_BATCH] * full + ([rest] if rest else [])
    seen = [index for batch in plugin.batches for _, index in batch]
    assert seen == list(range(40))


async def test_block_mode_does_not_hold_a_lone_window_for_long() -> None:
    plugin = CountPlugin()
    host, _, task = await start(plugin, overload=Overload.BLOCK, max_batch=64)
    host.open_stream(info("a"))
    await host.submit(window("a", 0))
    await asyncio.sleep(OFFLINE_GATHER_S + 0.5)
    assert plugin.batches == [[("a", 0)]]
    await host.close_stream("a")
    await host.aclose()
    await task
