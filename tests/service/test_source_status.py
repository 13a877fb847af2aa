"""A source's own status and declared metrics reach /v1/streams and /metrics, as plugins' do.

The daemon is real (real-time pattern media, API on 127.0.0.1); the sources under test are
small sources of their own built around the real pattern source, the way a third-party package
would write one: the core must show their values without knowing their names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from crossmodald.bus.events import JsonValue
from crossmodald.ingest import create_source
from crossmodald.ingest.base import ReportsStatus, Source, SourceError, source_metrics
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.media import MediaItem, StreamInfo
from crossmodald.runtime.plugin import MetricSpec as PluginMetricSpec
from crossmodald.service.config import load_config_text
from crossmodald.service.daemon import Daemon
from crossmodald.status import MetricSpec

_TOML = """
[window]
length_s = 1.0
hop_s = 0.5
lateness_s = 0.1

[api]
port = 0
"""
_PATTERN = """
[[sources]]
type = "pattern"
name = "{name}"
fps = 30
sample_rate = 16000
width = 64
height = 48
duration_s = {duration_s}
"""


class Wrapped:
    """A source with nothing to say: the pattern's media, no status, no metrics."""

    def __init__(self, inner: Source) -> None:
        self.name = inner.name
        self.inner = inner
        self.items = 0

    async def open(self) -> StreamInfo:
        return await self.inner.open()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        async for item in self.inner:
            if isinstance(item, MediaItem):
                self.items += 1
            yield item

    async def aclose(self) -> None:
        await self.inner.aclose()


class Counting(Wrapped):
    """A source that reports how many items it passed on, and declares that as a metric."""

    metrics = (
        MetricSpec(
            "test_source_items_total",
            "counter",
            "Items the source passed on.",
            "items.total",
            {"unit": "items"},
        ),
        MetricSpec("test_source_label", "gauge", "Not a number: no sample.", "label"),
    )

    def status(self) -> Mapping[str, JsonValue]:
        return {"items": {"total": self.items}, "label": "counting"}


class BadMetrics(Wrapped):
    """A source whose metrics are not MetricSpec values (a packaging mistake)."""

    metrics = ({"name": "test_bad", "type": "gauge", "help": "", "key": "x"},)


def _factory(config: SourceConfigBase) -> Source:
    inner = create_source(config)
    kind = {"own": Counting, "plain": Wrapped, "bad": BadMetrics}.get(config.name)
    return kind(inner) if kind is not None else inner


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


async def _fetch(base: str) -> tuple[dict[str, dict[str, Any]], str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/streams") as response:
            streams = {s["name"]: s for s in (await response.json())["streams"]}
        async with http.get(f"{base}/metrics") as response:
            metrics = await response.text()
    return streams, metrics


async def test_source_status_and_metrics_in_streams_and_metrics() -> None:
    sources = "".join(
        _PATTERN.format(name=name, duration_s=2.5) for name in ("own", "plain", "bad", "pattern")
    )
    daemon = Daemon(load_config_text(sources + _TOML), source_factory=_factory)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(30):
            while daemon.api_port is None or not daemon.ready():  # noqa: ASYNC110 - no ready event
                await asyncio.sleep(0.05)
            base = f"http://127.0.0.1:{daemon.api_port}"
            states = daemon.stream_states
            while states["own"].video_frames < 10:  # noqa: ASYNC110 - polling a counter
                await asyncio.sleep(0.05)
            running, running_metrics = await _fetch(base)
            while any(s.task is None or not s.task.done() for s in states.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            ended, ended_metrics = await _fetch(base)
    finally:
        stop.set()
        # Exit status 1: a stream failed (the one with bad metrics, below).
        assert await asyncio.wait_for(task, 30) == 1
    assert daemon.failed_streams == ["bad"]

    # While it runs: the source's own status, shown as it reports it.
    own = running["own"]
    assert own["state"] == "running"
    assert own["source_status"]["label"] == "counting"
    assert own["source_status"]["items"]["total"] > 0
    # Its declared metric, read by a dotted key, labelled with the stream and the source type.
    (line,) = _samples(running_metrics, "test_source_items_total")
    assert line.startswith('test_source_items_total{stream="own",source="pattern",unit="items"} ')
    assert float(line.split()[-1]) > 0
    assert "# TYPE test_source_items_total counter" in running_metrics
    # A non-number declared as a metric gives no sample (its family is still declared).
    assert _samples(running_metrics, "test_source_label") == []
    assert "# TYPE test_source_label gauge" in running_metrics

    # Once ended, the stream keeps the source's last status, and its metric the last value.
    source = daemon.stream_states["own"]
    assert source.source is None  # released: an ended stream does not hold its source
    total = ended["own"]["source_status"]["items"]["total"]
    assert ended["own"]["state"] == "ended"
    assert total == ended["own"]["video_frames"] + ended["own"]["audio_chunks"]
    (line,) = _samples(ended_metrics, "test_source_items_total")
    assert float(line.split()[-1]) == total

    # A source with nothing to say has no status and adds no metric.
    assert ended["plain"]["state"] == "ended"
    assert ended["plain"]["source_status"] is None
    assert 'stream="plain"' not in "\n".join(_samples(ended_metrics, "test_source_items_total"))
    # The built-in pattern source reports what it emitted.
    assert ended["pattern"]["source_status"]["frames"] == ended["pattern"]["video_frames"]
    assert ended["pattern"]["source_status"]["frames_dropped"] == 0
    # Metrics that are not MetricSpec values fail the stream with a clear reason.
    assert ended["bad"]["state"] == "failed"
    assert "bad: metrics must hold MetricSpec values" in ended["bad"]["error"]


def test_source_contract_helpers() -> None:
    config = load_config_text(_PATTERN.format(name="p", duration_s=1.0)).sources[0]
    counting = Counting(create_source(config))
    assert isinstance(counting, Source)
    assert isinstance(counting, ReportsStatus)
    assert not isinstance(Wrapped(create_source(config)), ReportsStatus)
    assert source_metrics(counting) == Counting.metrics
    assert source_metrics(Wrapped(create_source(config))) == ()
    wrong = Wrapped(create_source(config))
    wrong.metrics = "crossmodald_x"  # type: ignore[attr-defined]
    with pytest.raises(SourceError, match="p: metrics must be a sequence of MetricSpec"):
        source_metrics(wrong)


def test_metric_spec_is_shared_and_checked() -> None:
    # Plugins import it from runtime.plugin as before; it is the one class sources use too.
    assert PluginMetricSpec is MetricSpec
    with pytest.raises(ValueError, match="not a Prometheus metric name"):
        MetricSpec("bad-name", "gauge", "", "k")
    with pytest.raises(ValueError, match="type must be gauge or counter"):
        MetricSpec("ok", "summary", "", "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'stream' is not a usable label name"):
        MetricSpec("ok", "gauge", "", "k", {"stream": "x"})
    with pytest.raises(ValueError, match="key must name a status value"):
        MetricSpec("ok", "gauge", "", "")
