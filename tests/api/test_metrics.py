"""GET /metrics: a valid Prometheus text exposition with the daemon's real figures."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_support import FakeStreams, StartServer, ev

from crossmodald import __version__
from crossmodald.api import bound_port, build_app, serve
from crossmodald.api.metrics import RATES, MetricsText, RateMeter, process_figures
from crossmodald.api.metrics import render as render_app
from crossmodald.bus import EventBus, EventFilter
from crossmodald.service.config import ApiConfig, load_config_text
from crossmodald.service.daemon import Daemon
from crossmodald.status import Histogram, MetricSpec

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>.*)\}})? (?P<value>\S+)$",
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """Parse and check the text format strictly: TYPE before samples, names, labels, values."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    series: Series = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert re.fullmatch(_NAME, name), line
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped"), line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        family = name
        if name not in types:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert types.get(family) == "histogram", f"sample {name} before/without its TYPE"
        labels: list[tuple[str, str]] = []
        raw = match["labels"] or ""
        pos = 0
        while pos < len(raw):
            label = _LABEL.match(raw, pos)
            assert label, f"bad labels in {line!r}"
            labels.append((label[1], label[2]))
            pos = label.end()
        value = match["value"]
        number = float(value.replace("+Inf", "inf").replace("-Inf", "-inf"))
        key = (name, frozenset(labels))
        assert key not in series, f"duplicate series {line!r}"
        series[key] = number
    return series, types


def get(series: Series, name: str, **labels: str) -> float:
    want = frozenset(labels.items())
    hits = [v for (n, lab), v in series.items() if n == name and want <= lab]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} series"
    return hits[0]


def test_metrics_text_escaping_and_values() -> None:
    out = MetricsText()
    out.add("x_total", "counter", "Things.", 3, {"stream": 'a"b\\c\nd'})
    out.add("y", "gauge", "Maybe.", None)
    out.add("z", "gauge", "Odd.", math.nan)
    out.add("w", "gauge", "Flag.", True)
    text = out.render()
    assert 'x_total{stream="a\\"b\\\\c\\nd"} 3' in text
    series, types = parse_exposition(text)
    assert types == {"x_total": "counter", "y": "gauge", "z": "gauge", "w": "gauge"}
    assert ("y", frozenset()) not in series
    assert math.isnan(series[("z", frozenset())])
    assert series[("w", frozenset())] == 1


def test_rate_meter() -> None:
    now = [100.0]
    meter = RateMeter(lambda: now[0])
    assert meter.rate(("s", "frames"), 0) is None
    now[0] += 0.5
    assert meter.rate(("s", "frames"), 15) is None  # too soon for a first rate
    now[0] += 1.5
    assert meter.rate(("s", "frames"), 60) == pytest.approx(30.0)
    now[0] += 0.2
    assert meter.rate(("s", "frames"), 70) == pytest.approx(30.0)  # too soon: the last rate
    now[0] += 1.0
    assert meter.rate(("s", "frames"), 5) is None  # counter reset (stream restarted)
    meter.retain([])
    assert meter.rate(("s", "frames"), 5) is None


@dataclass
class StatsStreams(FakeStreams):
    """A StreamsView that also has plugin stats, shaped like the daemon's."""

    plugins: list[dict[str, Any]] = field(default_factory=list)

    def plugin_stats(self) -> list[dict[str, Any]]:
        return list(self.plugins)


def _stream(frames: int, audio_s: float) -> dict[str, Any]:
    return {
        "name": "cam1",
        "source": "pattern",
        "state": "running",
        "has_video": True,
        "has_audio": True,
        "frame_rate": 30.0,
        "sample_rate": 48000,
        "video_frames": frames,
        "audio_seconds": audio_s,
        "faults": 2,
        "windows": {
            "windows": 7,
            "video_late": 3,
            "audio_late_samples": 480,
            "video_overflow": 1,
            "video_duplicates": 0,
            "audio_overflow_samples": 0,
            "video_missing_frames": 4,
            "audio_gap_samples": 960,
        },
        "clock_rates": {"video_ppm": 1.5, "audio_ppm": -20.0, "audio_uncertainty_ppm": 3.0},
        # Every plugin's own status (what its session reports), as /v1/streams shows it.
        "plugin_status": {
            "avsync": {"audio_lead_ms": 40.0, "drift_ppm": -21.0, "alarm": False},
            "lipcount": {"lips": 7, "label": "not a number"},
        },
    }


def _spec(name: str, kind: str, key: str, scale: float = 1.0, **labels: str) -> dict[str, Any]:
    spec = MetricSpec(name, kind, f"{name}.", key, labels, scale)  # type: ignore[arg-type]
    return spec.as_dict()


def _histogram(values: list[float]) -> dict[str, Any]:
    histogram = Histogram()
    for value in values:
        histogram.observe(value)
    return histogram.as_dict()


async def test_metrics_from_streams_plugins_bus_and_process(start_server: StartServer) -> None:
    plugin = {
        "plugin": "avsync",
        "queue_depth": 2,
        "windows_in": 12,
        "windows_done": 10,
        "windows_dropped": 1,
        "batches": 4,
        "errors": 1,
        "last_batch_size": 3,
        "last_infer_ms": 12.5,
        "infer_ms_total": 50.0,
        "window_latency_ms_total": 300.0,
        "window_latency_count": 10,
        "window_latency_ms_by_stream": {"cam1": 25.0},
        "dropped_by_stream": {"cam1": 1},
        "inference_seconds": _histogram([0.0125, 0.0125, 0.02, 0.005]),
        "window_latency_seconds": _histogram([0.03] * 10),
        "metrics": [
            _spec("crossmodald_stream_audio_lead_seconds", "gauge", "audio_lead_ms", 0.001),
            _spec("crossmodald_stream_sync_drift_ppm", "gauge", "drift_ppm"),
            _spec("crossmodald_stream_alarm", "gauge", "alarm"),
        ],
    }
    # A third-party plugin's declared metrics come out the same way as the built-in ones.
    third = {
        "plugin": "lipcount",
        "metrics": [
            _spec("crossmodald_stream_lips_total", "counter", "lips", side="upper"),
            _spec("crossmodald_stream_lip_label", "gauge", "label"),
            _spec("crossmodald_stream_lip_missing", "gauge", "absent"),
        ],
    }
    streams = StatsStreams(items=[_stream(0, 0.0)], plugins=[plugin, third])
    config = ApiConfig(port=0, subscriber_queue=4)
    bus = EventBus(config.replay_size, config.subscriber_queue, config.slow_subscriber_s)
    app = build_app(bus, streams, config)
    now = [1000.0]
    app[RATES] = RateMeter(lambda: now[0])
    runner = await serve(app, "127.0.0.1", 0, shutdown_timeout_s=1.0)
    url = f"http://127.0.0.1:{bound_port(runner)}/metrics"
    try:
        sub = bus.subscribe(EventFilter(), name="lagging")
        for n in range(3):
            bus.publish(ev(n))
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                first, _ = parse_exposition(await resp.text())
            now[0] += 2.0
            streams.items = [_stream(60, 2.0)]
            async with session.get(url) as resp:
                text = await resp.text()
                series, types = parse_exposition(text)
        await sub.aclose()
    finally:
        await runner.cleanup()

    promtool_check(text)
    assert ("crossmodald_stream_fps", frozenset({("stream", "cam1")})) not in first
    assert get(series, "crossmodald_stream_fps", stream="cam1") == pytest.approx(30.0)
    assert get(series, "crossmodald_stream_audio_rate_hz", stream="cam1") == pytest.approx(48000)
    assert get(series, "crossmodald_stream_nominal_fps", stream="cam1") == 30.0
    assert get(series, "crossmodald_stream_video_frames_total", stream="cam1") == 60
    assert get(series, "crossmodald_stream_up", stream="cam1", state="running") == 1
    assert get(series, "crossmodald_stream_late_total", stream="cam1", what="video_frames") == 3
    assert get(series, "crossmodald_stream_late_total", what="audio_samples") == 480
    assert get(series, "crossmodald_stream_dropped_total", what="video_frames") == 1
    assert get(series, "crossmodald_stream_missing_total", what="audio_samples") == 960
    assert not [k for k in series if k[0] == "crossmodald_stream_av_drift_ppm"]  # one drift
    assert get(series, "crossmodald_stream_clock_rate_ppm", track="audio") == -20.0
    assert get(series, "crossmodald_stream_audio_lead_seconds", stream="cam1") == 0.04
    assert get(series, "crossmodald_stream_sync_drift_ppm", stream="cam1") == -21.0
    assert get(series, "crossmodald_stream_alarm", stream="cam1", plugin="avsync") == 0
    assert types["crossmodald_stream_lips_total"] == "counter"
    lips = get(series, "crossmodald_stream_lips_total", stream="cam1", plugin="lipcount")
    assert lips == 7
    assert ("crossmodald_stream_lips_total", frozenset({
        ("stream", "cam1"), ("plugin", "lipcount"), ("side", "upper")
    })) in series  # fmt: skip
    # A non-numeric or missing status value gives no sample (the family is still declared).
    assert not [k for k in series if k[0].startswith("crossmodald_stream_lip_")]
    assert get(series, "crossmodald_stream_faults_total", stream="cam1") == 2
    assert types["crossmodald_plugin_inference_seconds"] == "histogram"
    assert get(series, "crossmodald_plugin_inference_seconds_sum", plugin="avsync") == 0.05
    assert get(series, "crossmodald_plugin_inference_seconds_count", plugin="avsync") == 4
    bucket = "crossmodald_plugin_inference_seconds_bucket"
    assert get(series, bucket, plugin="avsync", le="0.005") == 1
    assert get(series, bucket, plugin="avsync", le="0.01") == 1
    assert get(series, bucket, plugin="avsync", le="0.025") == 4
    assert get(series, bucket, plugin="avsync", le="+Inf") == 4
    assert get(series, "crossmodald_plugin_batches_total", plugin="avsync") == 4
    assert get(series, "crossmodald_plugin_windows_inferred_total", plugin="avsync") == 10
    assert types["crossmodald_plugin_window_latency_seconds"] == "histogram"
    assert get(series, "crossmodald_build_info", version=__version__) == 1
    assert get(series, "crossmodald_plugin_last_batch_windows", plugin="avsync") == 3
    assert get(series, "crossmodald_plugin_errors_total", plugin="avsync") == 1
    assert get(series, "crossmodald_plugin_queue_depth", plugin="avsync") == 2
    latency_sum = get(series, "crossmodald_plugin_window_latency_seconds_sum", plugin="avsync")
    assert latency_sum == pytest.approx(0.3)
    assert get(
        series, "crossmodald_stream_window_latency_seconds", stream="cam1", plugin="avsync"
    ) == pytest.approx(0.025)
    assert get(series, "crossmodald_stream_windows_dropped_total", stream="cam1") == 1
    assert get(series, "crossmodald_subscribers") == 1
    assert get(series, "crossmodald_events_published_total") == 3
    assert get(series, "crossmodald_subscriber_queue_depth_max") == 3
    assert get(series, "crossmodald_api_held", kind="connections") == 1  # the scrape itself
    assert get(series, "process_resident_memory_bytes") > 10 * 1024 * 1024
    assert get(series, "process_open_fds") > 3
    assert get(series, "crossmodald_asyncio_tasks") >= 1
    assert get(series, "crossmodald_ready") == 0


def test_process_figures() -> None:
    figures = process_figures()
    assert (figures["resident_memory_bytes"] or 0) > 0
    assert (figures["open_fds"] or 0) > 0
    assert figures["asyncio_tasks"] is None  # no loop running here


_DAEMON_TOML = """
[[sources]]
type = "pattern"
name = "live1"
fps = 30
sample_rate = 48000
width = 160
height = 120

[window]
length_s = 1.0
hop_s = 0.5
lateness_s = 0.1

[[plugins]]
type = "avsync"

[api]
port = 0
"""


async def test_metrics_of_a_running_daemon(tmp_path: Path) -> None:
    """A real daemon (real-time pattern source, avsync plugin) scraped twice over its API."""
    sink = tmp_path / "events.jsonl"
    daemon = Daemon(
        load_config_text(_DAEMON_TOML + f'\n[[sinks]]\ntype = "jsonl"\npath = "{sink}"\n')
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(30):
            while daemon.api_port is None or not daemon.ready():  # noqa: ASYNC110 - no ready event
                await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{daemon.api_port}/metrics"
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(0.5)
            async with session.get(url) as resp:
                parse_exposition(await resp.text())
            await asyncio.sleep(2.5)
            async with session.get(url) as resp:
                text = await resp.text()
                series, _ = parse_exposition(text)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    promtool_check(text)
    assert get(series, "crossmodald_ready") == 1
    assert 24 <= get(series, "crossmodald_stream_fps", stream="live1") <= 36
    assert 38000 <= get(series, "crossmodald_stream_audio_rate_hz", stream="live1") <= 58000
    assert get(series, "crossmodald_stream_windows_total", stream="live1") >= 3
    assert get(series, "crossmodald_plugin_inference_seconds_count", plugin="avsync") >= 1
    assert get(series, "crossmodald_plugin_windows_inferred_total", plugin="avsync") >= 1
    assert get(series, "crossmodald_plugin_window_latency_seconds_bucket", le="+Inf") >= 1
    latency = get(series, "crossmodald_stream_window_latency_seconds", stream="live1")
    assert 0 <= latency < 5
    assert get(series, "crossmodald_plugin_errors_total", plugin="avsync") == 0
    # avsync's declared metrics, from its session's status (pattern source: a known offset).
    assert get(series, "crossmodald_stream_alarm", stream="live1", plugin="avsync") == 0
    lead = get(series, "crossmodald_stream_audio_lead_seconds", stream="live1", plugin="avsync")
    assert abs(lead) < 0.005
    # Sink counters, read through the Sink protocol (the JSONL sink wrote the stream's events).
    assert get(series, "crossmodald_sink_events_written_total", sink=str(sink)) >= 1
    assert get(series, "crossmodald_sink_last_seq", sink=str(sink)) >= 1
    assert get(series, "crossmodald_sink_resumes_total", sink=str(sink)) == 0


# -- promtool ----------------------------------------------------------------------------------


def promtool_check(text: str) -> None:
    """``promtool check metrics``: Prometheus' own linter (names, units, suffixes, types)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; .ci/run installs it)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@dataclass
class SourceStatsStreams(StatsStreams):
    """Also the sources' declared metrics, as the daemon gives them."""

    sources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def source_metric_specs(self) -> dict[str, list[dict[str, Any]]]:
        return self.sources


def test_promtool_accepts_every_built_in_metric() -> None:
    # Every metric a built-in plugin or source declares, with a value, beside the core's own.
    from crossmodald.ingest.media import MediaSource
    from crossmodald.ingest.webrtc import WebRtcSource
    from crossmodald_plugins.asd.plugin import SpeakerPlugin
    from crossmodald_plugins.avsync.plugin import AvSyncPlugin
    from crossmodald_plugins.faces.plugin import FacesPlugin
    from crossmodald_plugins.vad.plugin import SpeechPlugin

    plugin_classes = {"avsync": AvSyncPlugin, "speaker": SpeakerPlugin, "faces": FacesPlugin}
    plugin_classes["speech"] = SpeechPlugin
    plugins = [
        {
            "plugin": name,
            "batches": 3,
            "windows_done": 5,
            "inference_seconds": _histogram([0.01, 0.2, 3.0]),
            "window_latency_seconds": _histogram([0.05] * 5),
            "window_latency_ms_by_stream": {"cam1": 50.0},
            "metrics": [m.as_dict() for m in cls.metrics],
        }
        for name, cls in plugin_classes.items()
    ]
    stream = _stream(30, 1.0)
    numbers = {"audio_lead_ms": 40.0, "drift_ppm": 1.0, "alarm": True, "faces": 1}
    numbers |= {"speaking": False, "speaking_faces": 1}
    stream["plugin_status"] = {name: numbers for name in plugin_classes}
    stream["source"] = "webrtc"
    stream["source_status"] = {
        "transport": {"transport_offset_ms": 10.0, "audio_latency_ms": 30.0},
        "receive": {"packets_lost": {"audio": 1, "video": 2}, "freezes": 0},
        "decode_errors": 0,
        "timestamp_jumps": 0,
    }
    specs = [m.as_dict() for m in (*WebRtcSource.metrics, *MediaSource.metrics)]
    streams = SourceStatsStreams(items=[stream], plugins=plugins, sources={"cam1": specs})
    config = ApiConfig(port=0)
    bus = EventBus(config.replay_size, config.subscriber_queue, config.slow_subscriber_s)
    text = render_app(build_app(bus, streams, config))
    series, types = parse_exposition(text)
    assert get(series, "crossmodald_stream_transport_offset_seconds", stream="cam1") == 0.01
    assert get(series, "crossmodald_stream_transport_latency_seconds", track="audio") == 0.03
    assert not [name for name in types if re.search(r"_ms$|_ms_|_sum$", name)], types
    promtool_check(text)
