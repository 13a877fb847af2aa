"""A real daemon with a provider and a consumer: the provider added silently, products handed
over, and reloads that swap either one keep the consumer fed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from crossmodald.bus import EventFilter
from crossmodald.bus.events import Event
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, Need, PluginConfig, ProductKey
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.config import load_config_text
from crossmodald.service.daemon import Daemon


@dataclass(frozen=True)
class Tagged:
    tag: str


TAGGED: ProductKey[Tagged] = ProductKey("test.tagged", Tagged)


class MakerConfig(PluginConfig):
    type: Literal["maker"] = "maker"
    tag: str = "default"


class UserConfig(PluginConfig):
    type: Literal["user"] = "user"
    label: str = "u1"

    def requires(self) -> tuple[Need, ...]:
        return (Need(TAGGED),)


class EchoSession:
    def __init__(self, kind: str, label: str) -> None:
        self.kind, self.label, self.last = kind, label, ""

    def update(self, window: Window, result: Any) -> list[Event]:
        self.last = str(result)
        data = {"result": self.last, "label": self.label}
        return [Event(self.kind, window.stream, window.start_ns, window.end_ns, data)]

    def close(self) -> list[Event]:
        return []

    def status(self) -> dict[str, Any]:
        return {"last": self.last}


class Maker:
    name = "maker"
    provides: ClassVar[ProductKey[Any]] = TAGGED
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, config: MakerConfig) -> None:
        self.config = config

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> EchoSession:
        return EchoSession("maker.window", "")

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[Tagged]:
        return [Tagged(self.config.tag) for _ in batch]


class User:
    name = "user"
    provides = None
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, config: UserConfig) -> None:
        self.config = config

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> EchoSession:
        return EchoSession("user.window", self.config.label)

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[str]:
        return [item.inputs[TAGGED].tag for item in batch]


class MakerFactory:
    config_model: ClassVar[type[PluginConfig]] = MakerConfig
    provides: ClassVar[ProductKey[Any] | None] = TAGGED

    @classmethod
    def create(cls, config: Any, device: str) -> Maker:
        return Maker(config)


class UserFactory:
    config_model: ClassVar[type[PluginConfig]] = UserConfig
    provides: ClassVar[ProductKey[Any] | None] = None

    @classmethod
    def create(cls, config: Any, device: str) -> User:
        return User(config)


SOURCE = """
[[sources]]
type = "pattern"
name = "s1"
width = 32
height = 32
fps = 10
sample_rate = 8000

[window]
length_s = 0.4
hop_s = 0.2
lateness_s = 0.05

[api]
enabled = false
"""


def config(plugins: str) -> Any:
    return load_config_text(SOURCE + plugins)


async def test_silent_provider_and_reloads_that_swap_provider_and_consumer() -> None:
    registry = PluginRegistry({"maker": MakerFactory, "user": UserFactory})
    daemon = Daemon(config('[[plugins]]\ntype = "user"\n'), registry=registry)
    await daemon.load_plugins()
    assert [(h.name, h.silent) for h in daemon.hosts] == [("maker", True), ("user", False)]
    events: list[dict[str, Any]] = []
    sub = daemon.bus.subscribe(EventFilter(), 0, name="test")

    async def collect() -> None:
        async for envelope in sub:
            events.append(envelope.as_dict())

    async def wait_for(result: str, label: str) -> None:
        mark = len(events)
        async with asyncio.timeout(10):
            while not any(  # noqa: ASYNC110 - the test polls the collected events
                e["type"] == "user.window" and e["data"] == {"result": result, "label": label}
                for e in events[mark:]
            ):
                await asyncio.sleep(0.02)

    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    collector = asyncio.create_task(collect())
    try:
        await wait_for("default", "u1")
        (entry,) = daemon.streams()
        assert entry["plugins"] == ["maker", "user"]
        assert entry["plugin_status"] == {"user": {"last": "default"}}  # maker is silent
        # The provider gets a table of its own (changed): a new host, no longer silent.
        result = await daemon.reload(config('[[plugins]]\ntype = "user"\n[[plugins]]\n'
                                            'type = "maker"\ntag = "b"\n'))  # fmt: skip
        assert result.ok, result
        await wait_for("b", "u1")
        # The consumer changes: its new host takes the product from the running provider.
        result = await daemon.reload(config('[[plugins]]\ntype = "user"\nlabel = "u2"\n'
                                            '[[plugins]]\ntype = "maker"\ntag = "b"\n'))  # fmt: skip
        assert result.ok, result
        await wait_for("b", "u2")
        assert any(e["type"] == "maker.window" for e in events)
        assert not [e for e in events if e["type"] == "plugin.error"]
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
        collector.cancel()


async def test_reload_that_removes_the_consumer_also_removes_its_silent_provider() -> None:
    registry = PluginRegistry({"maker": MakerFactory, "user": UserFactory})
    daemon = Daemon(config('[[plugins]]\ntype = "user"\n'), registry=registry)
    await daemon.load_plugins()
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(10):
            while not daemon.streams():  # noqa: ASYNC110 - polls the running daemon
                await asyncio.sleep(0.02)
        assert [(h.name, h.silent) for h in daemon.hosts] == [("maker", True), ("user", False)]
        result = await daemon.reload(config(""))
        assert result.ok, result
        assert daemon.hosts == []
        (entry,) = daemon.streams()
        assert entry["plugins"] == []
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
