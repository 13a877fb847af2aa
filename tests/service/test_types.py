"""Source and sink types by entry point: each table validated by its type's model.

The built-in types come through the same entry-point groups a third party's would
(``crossmodald.sources``, ``crossmodald.sinks``); the tests below add types the way a third
party does (a factory class with ``config_model`` and ``create``), through a registry given
explicitly instead of an installed distribution.
"""

from __future__ import annotations

import asyncio
import dataclasses
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field

from crossmodald.bus.bus import EventBus, EventFilter, SubscriberClosed, Subscription
from crossmodald.bus.events import Envelope
from crossmodald.bus.jsonl import JsonlSink, JsonlSinkConfig, JsonlSinkFactory
from crossmodald.bus.sinks import Sink, SinkConfigBase, SinkRegistry, SinkStats
from crossmodald.config_errors import ConfigError
from crossmodald.ingest import create_source
from crossmodald.ingest.base import Source, SourceError
from crossmodald.ingest.device import DeviceSourceFactory
from crossmodald.ingest.media import MediaSourceFactory
from crossmodald.ingest.pacing import Pacer, VirtualPacer
from crossmodald.ingest.pattern import PatternSource, PatternSourceConfig, PatternSourceFactory
from crossmodald.ingest.registry import SourceConfigBase, SourceRegistry
from crossmodald.runtime.host import Overload
from crossmodald.runtime.registry import PluginLoadError, PluginRegistry
from crossmodald.service.config import load_config, validate_config
from crossmodald.service.daemon import Daemon

# -- a third party's source type: "bars", a pattern with fewer knobs ------------------------


class BarsConfig(SourceConfigBase):
    type: Literal["bars"]
    seconds: float = Field(gt=0)
    lead_ms: float = 0.0


class BarsFactory:
    config_model = BarsConfig

    @classmethod
    def create(cls, config: BarsConfig, *, clock: Pacer | None = None) -> Source:
        if config.seconds > 60:
            raise SourceError(f"{config.name}: at most 60 s of bars")
        pattern = PatternSourceConfig(
            type="pattern",
            name=config.name,
            duration_s=config.seconds,
            audio_lead_ms=config.lead_ms,
            realtime=False,
        )
        return PatternSource(pattern, clock if clock is not None else VirtualPacer())


# -- a third party's sink type: keeps what it takes in memory -------------------------------


class MemorySinkConfig(SinkConfigBase):
    type: Literal["memory"]
    label: str
    types: list[str] = Field(default_factory=list)

    @property
    def identity(self) -> str:
        return f"memory:{self.label}"


class MemorySink:
    """A complete Sink: subscribes from a seq, keeps every envelope, drains on aclose."""

    def __init__(self, config: MemorySinkConfig) -> None:
        self.config = config
        self.stats = SinkStats()
        self.seen: list[Envelope] = []
        self._sub: Subscription | None = None

    @property
    def identity(self) -> str:
        return self.config.identity

    async def run(self, bus: EventBus, after_seq: int | None = None) -> None:
        try:
            self._sub = bus.subscribe(EventFilter.from_lists(self.config.types, []), after_seq)
        except SubscriberClosed:
            return
        try:
            async for envelope in self._sub:
                self.seen.append(envelope)
                self.stats.written += 1
                self.stats.batches += 1
                self.stats.last_seq = envelope.seq
        except SubscriberClosed:
            return

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        if self._sub is not None:
            self._sub.end("sink closing")


class MemorySinkFactory:
    config_model = MemorySinkConfig
    made: ClassVar[list[MemorySink]] = []

    @classmethod
    def create(cls, config: MemorySinkConfig) -> MemorySink:
        sink = MemorySink(config)
        cls.made.append(sink)
        return sink

    @classmethod
    def check(cls, config: MemorySinkConfig) -> None:
        return None


def _sources(**extra: Any) -> SourceRegistry:
    return SourceRegistry({"pattern": PatternSourceFactory, "bars": BarsFactory, **extra})


def _sinks(**extra: Any) -> SinkRegistry:
    return SinkRegistry({"jsonl": JsonlSinkFactory, "memory": MemorySinkFactory, **extra})


def _errors(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data, "t.toml", **kwargs)
    return info.value.errors


def test_builtin_types_come_through_entry_points() -> None:
    sources = SourceRegistry.discover()
    assert {"pattern", "media", "device"} <= set(sources.names())
    assert sources.factory("pattern") is PatternSourceFactory
    assert sources.factory("media") is MediaSourceFactory
    assert sources.factory("device") is DeviceSourceFactory
    sinks = SinkRegistry.discover()
    assert "jsonl" in sinks.names()
    assert sinks.factory("jsonl") is JsonlSinkFactory


def test_a_table_is_validated_by_the_model_of_its_type() -> None:
    config = validate_config(
        {
            "sources": [
                {"type": "bars", "name": "b1", "seconds": 2},
                {"type": "pattern", "name": "p1", "fps": "30000/1001"},
            ],
            "sinks": [{"type": "memory", "label": "x"}, {"type": "jsonl", "path": "/tmp/e.jsonl"}],
        },
        source_types=_sources(),
        sink_types=_sinks(),
    )
    assert isinstance(config.sources[0], BarsConfig)
    assert isinstance(config.sources[1], PatternSourceConfig)
    assert isinstance(config.sinks[0], MemorySinkConfig)
    assert isinstance(config.sinks[1], JsonlSinkConfig)
    # Dumps keep every key of each type (not just the base model's).
    dumped = config.model_dump(mode="json")
    assert dumped["sources"][0] == {"type": "bars", "name": "b1", "seconds": 2.0, "lead_ms": 0.0}
    assert dumped["sinks"][0]["label"] == "x"


def test_every_error_of_every_table_at_once_with_key_paths() -> None:
    errors = _errors(
        {
            "sources": [
                {"type": "bars", "name": "b1", "seconds": -1, "colour": "red"},
                {"type": "nope", "name": "x"},
                {"name": "untyped"},
                {"type": "pattern", "name": "bad name"},
                "not a table",
            ],
            "sinks": [{"type": "memory"}, {"type": "kafka"}],
            "window": {"hop_s": "x"},
        },
        source_types=_sources(),
        sink_types=_sinks(),
    )
    assert "sources.0.seconds: Input should be greater than 0 (got -1)" in errors
    assert "sources.0.colour: unknown key" in errors
    assert "sources.1.type: unknown source type (installed: bars, pattern) (got 'nope')" in errors
    assert "sources.2.type: required key is missing" in errors
    assert any(e.startswith("sources.3.name: String should match pattern") for e in errors)
    assert "sources.4: expected a source table (got 'not a table')" in errors
    assert "sinks.0.label: required key is missing" in errors
    assert "sinks.1.type: unknown sink type (installed: jsonl, memory) (got 'kafka')" in errors
    assert any(e.startswith("window.hop_s:") for e in errors)


def test_a_type_that_fails_to_import_is_an_error_only_where_used() -> None:
    broken = EntryPoint(
        name="broken", value="crossmodald_no_such_module:Factory", group="crossmodald.sources"
    )
    types = _sources(broken=broken)
    # Not used: the config is fine.
    validate_config({"sources": [{"type": "bars", "name": "b", "seconds": 1}]}, source_types=types)
    errors = _errors({"sources": [{"type": "broken", "name": "b"}]}, source_types=types)
    assert len(errors) == 1
    assert errors[0].startswith(
        "sources.0.type: source type 'broken': cannot import crossmodald_no_such_module:Factory: "
        "ModuleNotFoundError"
    )


def test_a_factory_without_its_parts_is_refused() -> None:
    class NoModel:
        @classmethod
        def create(cls, config: Any) -> None:
            return None

    errors = _errors(
        {"sinks": [{"type": "odd"}]}, sink_types=SinkRegistry({"odd": MemorySinkConfig})
    )
    assert "has no `config_model`" in errors[0]
    errors = _errors(
        {"sources": [{"type": "odd", "name": "n"}]}, source_types=_sources(odd=NoModel)
    )
    assert errors[0].startswith("sources.0.type: source type 'odd':")


def test_two_sinks_with_one_identity_are_refused() -> None:
    errors = _errors(
        {
            "sinks": [
                {"type": "jsonl", "path": "/tmp/a.jsonl"},
                {"type": "jsonl", "path": "/tmp/a.jsonl", "fsync": True},
            ]
        }
    )
    assert errors == ["(top level): two sinks write to the same place, got '/tmp/a.jsonl'"]


def test_create_source_uses_the_factory_of_the_type() -> None:
    config = _sources().validate_table({"type": "bars", "name": "b", "seconds": 2})
    source = create_source(config, registry=_sources())
    assert isinstance(source, PatternSource)
    with pytest.raises(SourceError, match="at most 60 s"):
        create_source(
            _sources().validate_table({"type": "bars", "name": "b", "seconds": 61}),
            registry=_sources(),
        )
    # A type no registry knows (a config built against another registry).
    with pytest.raises(SourceError, match=r"b: unknown source type 'bars' \(installed: pattern\)"):
        create_source(config, registry=SourceRegistry({"pattern": PatternSourceFactory}))


def test_with_no_types_installed_the_error_says_where_the_built_in_ones_come_from() -> None:
    # A checkout run from PYTHONPATH, not installed, has no entry points: the error said
    # "(installed: )" and nothing more (seen on a GPU machine running the tests that way).
    empty = SourceRegistry({})
    config = _sources().validate_table({"type": "bars", "name": "b", "seconds": 2})
    with pytest.raises(SourceError) as caught:
        create_source(config, registry=empty)
    assert str(caught.value) == (
        "b: unknown source type 'bars' (none installed in entry-point group "
        "'crossmodald.sources': crossmodald's own come with its installed package; "
        "in a checkout, pip install -e . rather than PYTHONPATH)"
    )
    errors = _errors(
        {"sinks": [{"type": "jsonl", "path": "/tmp/a.jsonl"}]}, sink_types=SinkRegistry({})
    )
    assert errors == [
        "sinks.0.type: unknown sink type (none installed in entry-point group "
        "'crossmodald.sinks': crossmodald's own come with its installed package; "
        "in a checkout, pip install -e . rather than PYTHONPATH) (got 'jsonl')"
    ]
    with pytest.raises(
        PluginLoadError,
        match=r"unknown plugin 'avsync' \(none installed in entry-point group 'crossmodald.plugins'",
    ):
        PluginRegistry({}).factory("avsync")


async def test_third_party_source_and_sink_types_run_in_the_daemon(tmp_path: Path) -> None:
    MemorySinkFactory.made.clear()
    sources, sinks = _sources(), _sinks()
    config = validate_config(
        {
            "sources": [{"type": "bars", "name": "b1", "seconds": 3}],
            "sinks": [
                {"type": "memory", "label": "all"},
                {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
            ],
            "api": {"enabled": False},
        },
        source_types=sources,
        sink_types=sinks,
    )
    daemon = Daemon(
        config,
        overload=Overload.BLOCK,
        serve_api=False,
        source_types=sources,
        sink_types=sinks,
        source_factory=lambda cfg: create_source(cfg, clock=VirtualPacer(), registry=sources),
    )
    assert await asyncio.wait_for(daemon.run(asyncio.Event(), exit_when_sources_end=True), 60) == 0
    (memory,) = MemorySinkFactory.made
    types = [e.type for e in memory.seen]
    assert types[0] == "stream.start"
    assert types[-1] == "stream.end"
    assert memory.seen[0].as_dict()["data"]["source"] == "bars"
    # Stats are read through the Sink protocol, keyed by identity.
    stats = {s["sink"]: s for s in daemon.sink_stats()}
    assert stats["memory:all"]["written"] == len(memory.seen)
    jsonl = stats[str(tmp_path / "events.jsonl")]
    assert jsonl["written"] == len(memory.seen)  # the JSONL sink saw the same events
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == jsonl["written"]


async def test_jsonl_sink_is_a_sink_and_aclose_writes_everything_taken(
    tmp_path: Path,
) -> None:
    from crossmodald.bus.events import Event

    path = tmp_path / "e.jsonl"
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=path))
    assert isinstance(sink, Sink)
    assert sink.identity == str(path)
    bus = EventBus(replay_size=64, subscriber_queue=64, slow_subscriber_s=5.0)
    for i in range(3):  # before the sink runs: replayed from seq 0 on
        bus.publish(Event(type="test.tick", stream="s", start_ns=i, end_ns=i))
    task = asyncio.create_task(sink.run(bus, 0))
    await asyncio.sleep(0.05)  # let it open the file and subscribe
    for i in range(3, 5):
        bus.publish(Event(type="test.tick", stream="s", start_ns=i, end_ns=i))
    await sink.flush()  # whatever is written so far is on disk; nothing fails mid-run
    await sink.aclose()  # writes everything queued for it before it returns
    await asyncio.wait_for(task, 5)
    assert len(path.read_text().splitlines()) == 5
    await sink.flush()  # closed: nothing left to do, no error
    assert dataclasses.asdict(sink.stats)["last_seq"] == 5


async def test_reload_tells_sinks_apart_by_identity(tmp_path: Path) -> None:
    from crossmodald.bus.events import Event

    MemorySinkFactory.made.clear()
    sources, sinks = _sources(), _sinks()
    path = tmp_path / "crossmodald.toml"

    def write(*labels: str, types: str = "[]") -> None:
        tables = "".join(
            f'[[sinks]]\ntype = "memory"\nlabel = "{label}"\ntypes = {types}\n' for label in labels
        )
        path.write_text("[api]\nenabled = false\n" + tables)

    write("a", "b")
    daemon = Daemon(
        load_config(path, source_types=sources, sink_types=sinks),
        serve_api=False,
        config_path=path,
        source_types=sources,
        sink_types=sinks,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    async with asyncio.timeout(10):
        while not daemon.ready():  # noqa: ASYNC110 - no ready event
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # let the sinks subscribe
    a, b = MemorySinkFactory.made
    daemon.publish(Event(type="test.one", stream="s", start_ns=0, end_ns=0))
    # b changes (a filter), c is new, a goes.
    write("b", "c", types='["test."]')
    result = await daemon.reload_from_file()
    assert result.ok, result.errors
    assert result.diff is not None
    assert result.diff.summary() == "sinks +memory:c -memory:a ~memory:b"
    _a, _b, b2, c = MemorySinkFactory.made
    await asyncio.sleep(0.05)
    daemon.publish(Event(type="test.two", stream="s", start_ns=0, end_ns=0))
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0
    assert [e.type for e in a.seen] == ["test.one"]  # closed: nothing after the reload
    assert [e.type for e in b.seen] == ["test.one"]
    assert [e.type for e in b2.seen] == ["test.two"]  # the changed sink goes on, no gap
    assert [e.type for e in c.seen] == ["test.two"]
