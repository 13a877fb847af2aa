"""Prometheus metrics at ``GET /metrics``, in the text exposition format (version 0.0.4).

Hand-written rather than through ``prometheus_client``: every figure already lives in the
daemon's own counters (stream snapshots, plugin host stats, bus stats), so the exporter only
reads them at scrape time and formats them; nothing is counted twice. See docs/metrics.md for
the list.

Rates that a dashboard wants as a plain gauge (observed fps, audio sample rate) are computed
between scrapes from the cumulative counters (over at least :data:`MIN_RATE_INTERVAL_S`); the
counters themselves are exported too, so ``rate()`` in PromQL works as usual.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from crossmodald import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Shortest interval between two counter samples that an observed rate is computed over.
MIN_RATE_INTERVAL_S = 1.0
#: Samples older than this are replaced, so an observed rate follows the recent past.
MAX_RATE_INTERVAL_S = 60.0


def _process_start_s() -> float:
    """When this process started (epoch seconds), from /proc; the import time elsewhere."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # Field 22 (starttime, clock ticks after boot) follows the ")" that ends comm.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot_s = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot_s + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


_PROCESS_START_S = _process_start_s()

Labels = Mapping[str, str]


@runtime_checkable
class PluginStatsView(Protocol):
    """Optional part of the daemon the exporter reads when it has it."""

    def plugin_stats(self) -> list[dict[str, Any]]:
        """One :meth:`PluginHost.snapshot` dict per loaded plugin."""
        ...


@runtime_checkable
class SourceMetricsView(Protocol):
    """Optional part of the daemon: the metrics each stream's source declares."""

    def source_metric_specs(self) -> Mapping[str, Sequence[Mapping[str, Any]]]:
        """Per stream name, :meth:`crossmodald.status.MetricSpec.as_dict` of each metric."""
        ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass(slots=True)
class _Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[str, Labels, float | int | bool]] = field(default_factory=list)


@runtime_checkable
class SinkStatsView(Protocol):
    """Optional part of the daemon the exporter reads when it has it."""

    def sink_stats(self) -> list[dict[str, Any]]:
        """One dict per running sink: ``sink`` (its identity) and its
        :class:`~crossmodald.bus.sinks.SinkStats` fields, read through the Sink protocol."""
        ...


@runtime_checkable
class FleetStatsView(Protocol):
    """Optional part of the daemon: its fleet membership's figures (fleet mode)."""

    def fleet_stats(self) -> Mapping[str, float | int | bool] | None:
        """``connected``, ``held``, ``daemons``, ``sources``, ``acquired``, ``lost``,
        ``released``, ``reconnects``; None outside fleet mode."""
        ...


#: Fleet figures: key, metric name, type, help.
_FLEET_METRICS = (
    ("connected", "crossmodald_fleet_connected", "gauge", "1 while the fleet's NATS is reachable."),
    ("held", "crossmodald_fleet_leases", "gauge", "Source leases this daemon holds."),
    ("daemons", "crossmodald_fleet_daemons", "gauge", "Live daemons in the fleet (last scan)."),
    ("sources", "crossmodald_fleet_sources", "gauge", "Sources in the fleet's list (last scan)."),
    ("acquired", "crossmodald_fleet_leases_acquired_total", "counter", "Leases taken."),
    ("lost", "crossmodald_fleet_leases_lost_total", "counter", "Leases lost (not renewed)."),
    ("released", "crossmodald_fleet_leases_released_total", "counter", "Leases handed back."),
    ("reconnects", "crossmodald_fleet_reconnects_total", "counter", "NATS reconnections."),
)


class MetricsText:
    """Builds one exposition: families with HELP/TYPE lines and escaped label values."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        value: float | int | bool | None,
        labels: Labels | None = None,
        *,
        suffix: str = "",
    ) -> None:
        """Add one sample to the family ``name`` (created on first use). None is skipped.

        Args:
            name: The family name (``crossmodald_...``).
            kind: ``counter``, ``gauge`` or ``histogram``.
            help_text: The HELP line.
            value: The sample value.
            labels: Label names and values.
            suffix: Appended to the sample name (``_bucket``/``_sum``/``_count`` of a histogram).
        """
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(name, kind, help_text)
        if value is None:
            return
        family.samples.append((suffix, labels or {}, value))

    def add_histogram(
        self, name: str, help_text: str, histogram: Mapping[str, Any] | None, labels: Labels
    ) -> None:
        """Add one histogram (:meth:`crossmodald.status.Histogram.as_dict`): its cumulative
        ``_bucket{le=...}`` samples, ``_sum`` and ``_count``. None is skipped."""
        if histogram is None:
            self.add(name, "histogram", help_text, None)
            return
        for bound, count in histogram["buckets"]:
            le = bound if isinstance(bound, str) else _number(float(bound))
            self.add(name, "histogram", help_text, count, {**labels, "le": le}, suffix="_bucket")
        self.add(name, "histogram", help_text, float(histogram["sum"]), labels, suffix="_sum")
        self.add(name, "histogram", help_text, int(histogram["count"]), labels, suffix="_count")

    def render(self) -> str:
        """The exposition text (families in insertion order, ending with a newline)."""
        lines: list[str] = []
        for family in self._families.values():
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            for suffix, labels, value in family.samples:
                label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                name = family.name + suffix
                head = f"{name}{{{label_text}}}" if label_text else name
                lines.append(f"{head} {_number(value)}")
        return "\n".join(lines) + "\n"


class RateMeter:
    """Observed rates of cumulative counters, from samples taken at each scrape.

    Args:
        clock_s: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._clock_s = clock_s
        self._base: dict[tuple[str, str], tuple[float, float]] = {}
        self._last_rate: dict[tuple[str, str], float] = {}

    def rate(self, key: tuple[str, str], value: float) -> float | None:
        """Per-second rate of ``value`` since an earlier sample (None until one is old enough)."""
        now = self._clock_s()
        base = self._base.get(key)
        if base is None or value < base[1] or now - base[0] > MAX_RATE_INTERVAL_S:
            # First sight, a counter reset (stream restarted) or a stale base: start over, but
            # keep answering with the last rate until a fresh one can be computed.
            self._base[key] = (now, value)
            return self._last_rate.get(key) if base is not None and value >= base[1] else None
        elapsed = now - base[0]
        if elapsed < MIN_RATE_INTERVAL_S:
            return self._last_rate.get(key)
        rate = (value - base[1]) / elapsed
        self._base[key] = (now, value)
        self._last_rate[key] = rate
        return rate

    def retain(self, streams: Iterable[str]) -> None:
        """Forget every stream not in ``streams`` (the tables stay bounded by live streams)."""
        keep = set(streams)
        for table in (self._base, self._last_rate):
            for key in [k for k in table if k[0] not in keep]:
                del table[key]


RATES = web.AppKey("api_metric_rates", RateMeter)


# -- collectors ---------------------------------------------------------------------------------


def _status_value(status: object, key: str) -> float | int | None:
    """``status[key]`` as a sample value: a dotted key reads nested mappings when ``status`` has
    no such key itself (True/False count as 1/0; anything but a number gives None)."""
    if not isinstance(status, Mapping):
        return None
    if key in status:
        value = status[key]
    else:
        value = status
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    return value if isinstance(value, int | float) else None  # bool is an int


def _declared_metrics(
    out: MetricsText,
    stream: str,
    owner: tuple[str, str],
    specs: Iterable[Mapping[str, Any]],
    status: object,
) -> None:
    """Metrics a plugin or source declares, read from its status for one stream.

    Built-in and third-party alike: a declared metric ``name`` with status key ``key`` becomes
    ``name{stream, plugin|source, **labels}`` = ``status[key] * scale``.
    """
    for spec in specs:
        labels = {"stream": stream, owner[0]: owner[1]}
        labels.update({str(k): str(v) for k, v in (spec.get("labels") or {}).items()})
        value = _status_value(status, spec["key"])
        scale = float(spec.get("scale", 1.0))
        if value is not None and scale != 1.0:
            value = float(value) * scale
        out.add(spec["name"], spec["type"], spec["help"], value, labels)


def _plugin_stream_metrics(
    out: MetricsText, stream: dict[str, Any], plugins: list[dict[str, Any]]
) -> None:
    """The per-stream metrics every plugin declares, read from ``plugin_status[plugin]``."""
    statuses = stream.get("plugin_status") or {}
    for p in plugins:
        plugin = str(p.get("plugin", ""))
        owner = ("plugin", plugin)
        _declared_metrics(
            out, str(stream.get("name", "")), owner, p.get("metrics") or (), statuses.get(plugin)
        )


def _stream_metrics(
    out: MetricsText,
    streams: list[dict[str, Any]],
    rates: RateMeter,
    plugins: list[dict[str, Any]] | None = None,
    source_specs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> None:
    plugins = plugins or []
    source_specs = source_specs or {}
    names: list[str] = []
    for s in streams:
        name = str(s.get("name", ""))
        names.append(name)
        lab = {"stream": name}
        out.add(
            "crossmodald_stream_up",
            "gauge",
            "1 while the stream runs, 0 once it ended or failed.",
            1 if s.get("state") == "running" else 0,
            {**lab, "source": str(s.get("source", "")), "state": str(s.get("state", ""))},
        )
        frames = int(s.get("video_frames") or 0)
        out.add(
            "crossmodald_stream_video_frames_total",
            "counter",
            "Video frames received.",
            frames,
            lab,
        )
        audio_s = float(s.get("audio_seconds") or 0.0)
        out.add(
            "crossmodald_stream_audio_seconds_total",
            "counter",
            "Seconds of audio received.",
            audio_s,
            lab,
        )
        if s.get("has_video"):
            fps = rates.rate((name, "frames"), frames)
            out.add(
                "crossmodald_stream_fps",
                "gauge",
                "Observed video frames per second (between scrapes).",
                fps,
                lab,
            )
            nominal = s.get("frame_rate")
            out.add(
                "crossmodald_stream_nominal_fps",
                "gauge",
                "Frame rate the source declares.",
                float(nominal) if nominal else None,
                lab,
            )
        if s.get("has_audio"):
            sample_rate = float(s.get("sample_rate") or 0)
            audio_rate = rates.rate((name, "audio_s"), audio_s)
            out.add(
                "crossmodald_stream_audio_rate_hz",
                "gauge",
                "Observed audio samples per second (between scrapes).",
                audio_rate * sample_rate if audio_rate is not None else None,
                lab,
            )
            out.add(
                "crossmodald_stream_nominal_audio_rate_hz",
                "gauge",
                "Sample rate the source declares.",
                sample_rate or None,
                lab,
            )
        out.add(
            "crossmodald_stream_faults_total",
            "counter",
            "stream.fault events (source faults, refusals, errors).",
            int(s.get("faults") or 0),
            lab,
        )
        windows = s.get("windows") or {}
        out.add(
            "crossmodald_stream_windows_total",
            "counter",
            "Windows closed.",
            windows.get("windows"),
            lab,
        )
        for what, key in (
            ("video_frames", "video_overflow"),
            ("video_duplicates", "video_duplicates"),
            ("audio_samples", "audio_overflow_samples"),
        ):
            out.add(
                "crossmodald_stream_dropped_total",
                "counter",
                "Media dropped by the windower (buffer bound, duplicates).",
                windows.get(key),
                {**lab, "what": what},
            )
        for what, key in (("video_frames", "video_late"), ("audio_samples", "audio_late_samples")):
            out.add(
                "crossmodald_stream_late_total",
                "counter",
                "Media that arrived after its window closed (counted, not merged).",
                windows.get(key),
                {**lab, "what": what},
            )
        for what, key in (
            ("video_frames", "video_missing_frames"),
            ("audio_samples", "audio_gap_samples"),
        ):
            out.add(
                "crossmodald_stream_missing_total",
                "counter",
                "Media never delivered (gaps between received media).",
                windows.get(key),
                {**lab, "what": what},
            )
        rates_ppm = s.get("clock_rates") or {}
        for track in ("video", "audio"):
            out.add(
                "crossmodald_stream_clock_rate_ppm",
                "gauge",
                "Track clock rate error against the daemon's monotonic clock (ppm).",
                rates_ppm.get(f"{track}_ppm"),
                {**lab, "track": track},
            )
        _plugin_stream_metrics(out, s, plugins)
        # The source's own metrics, read from ``source_status`` the way plugins' are.
        owner = ("source", str(s.get("source", "")))
        _declared_metrics(out, name, owner, source_specs.get(name, ()), s.get("source_status"))
    rates.retain(names)


def _plugin_metrics(out: MetricsText, plugins: list[dict[str, Any]]) -> None:
    for p in plugins:
        lab = {"plugin": str(p.get("plugin", ""))}
        out.add_histogram(
            "crossmodald_plugin_inference_seconds",
            "Duration of the plugin's batched inference calls.",
            p.get("inference_seconds"),
            lab,
        )
        out.add(
            "crossmodald_plugin_last_inference_seconds",
            "gauge",
            "Duration of the latest inference call.",
            float(p.get("last_infer_ms", 0.0)) / 1000.0,
            lab,
        )
        out.add(
            "crossmodald_plugin_batches_total",
            "counter",
            "Inference calls (batches).",
            int(p.get("batches", 0)),
            lab,
        )
        out.add(
            "crossmodald_plugin_windows_inferred_total",
            "counter",
            "Windows inferred (mean batch size: its rate over the batches' rate).",
            int(p.get("windows_done", 0)),
            lab,
        )
        out.add(
            "crossmodald_plugin_last_batch_windows",
            "gauge",
            "Windows in the latest inference call.",
            p.get("last_batch_size"),
            lab,
        )
        out.add(
            "crossmodald_plugin_windows_total",
            "counter",
            "Windows submitted to the plugin.",
            p.get("windows_in"),
            lab,
        )
        out.add(
            "crossmodald_plugin_windows_dropped_total",
            "counter",
            "Windows dropped on overload (oldest first).",
            p.get("windows_dropped"),
            lab,
        )
        for stream, dropped in sorted((p.get("dropped_by_stream") or {}).items()):
            out.add(
                "crossmodald_stream_windows_dropped_total",
                "counter",
                "Windows of the stream a plugin dropped on overload.",
                dropped,
                {**lab, "stream": stream},
            )
        out.add(
            "crossmodald_plugin_errors_total",
            "counter",
            "Inference and session errors (isolated and reported as plugin.error events).",
            p.get("errors"),
            lab,
        )
        out.add(
            "crossmodald_plugin_queue_depth",
            "gauge",
            "Windows waiting for the plugin.",
            p.get("queue_depth"),
            lab,
        )
        out.add_histogram(
            "crossmodald_plugin_window_latency_seconds",
            "Time from a window's close to the plugin's results for it.",
            p.get("window_latency_seconds"),
            lab,
        )
        for stream, ms in sorted((p.get("window_latency_ms_by_stream") or {}).items()):
            out.add(
                "crossmodald_stream_window_latency_seconds",
                "gauge",
                "Latest window latency of the stream (close to results), per plugin.",
                float(ms) / 1000.0,
                {**lab, "stream": stream},
            )


def _sink_metrics(out: MetricsText, sinks: list[dict[str, Any]]) -> None:
    for sink in sinks:
        lab = {"sink": str(sink.get("sink", ""))}
        out.add(
            "crossmodald_sink_events_written_total",
            "counter",
            "Events a sink wrote and flushed.",
            int(sink.get("written", 0)),
            lab,
        )
        out.add(
            "crossmodald_sink_resumes_total",
            "counter",
            "Times a sink was closed as slow and resubscribed.",
            int(sink.get("resumes", 0)),
            lab,
        )
        out.add(
            "crossmodald_sink_missed_resumes_total",
            "counter",
            "Resumes after which the replay buffer no longer held every missed event.",
            int(sink.get("missed_resumes", 0)),
            lab,
        )
        out.add(
            "crossmodald_sink_last_seq",
            "gauge",
            "seq of the last event a sink wrote.",
            int(sink.get("last_seq", 0)),
            lab,
        )
        out.add(
            "crossmodald_sink_events_dropped_total",
            "counter",
            "Events a sink took and gave up on (its buffer overflowed while its destination was away or slow).",
            int(sink.get("dropped", 0)),
            lab,
        )
        out.add(
            "crossmodald_sink_buffered_events",
            "gauge",
            "Events a sink holds, not yet written or acknowledged.",
            int(sink.get("buffered", 0)),
            lab,
        )
        connected = sink.get("connected")
        if connected is None:
            continue  # a sink without a connection (a file) has no more to show
        out.add(
            "crossmodald_sink_connected",
            "gauge",
            "1 while a sink's connection (to a broker) is up.",
            bool(connected),
            lab,
        )
        out.add(
            "crossmodald_sink_events_dropped_unconfirmed_total",
            "counter",
            "Of the events a broker sink dropped, those sent and not acknowledged before a "
            "connection broke: the broker may have stored them.",
            int(sink.get("dropped_unconfirmed", 0)),
            lab,
        )
        out.add(
            "crossmodald_sink_reconnects_total",
            "counter",
            "Connections a sink made again after one was lost or could not be made.",
            int(sink.get("reconnects", 0)),
            lab,
        )
        for quantile, key in (("0.5", "ack_p50_s"), ("0.99", "ack_p99_s")):
            value = sink.get(key)
            out.add(
                "crossmodald_sink_ack_seconds",
                "summary",
                "Publish-to-acknowledgement time of a sink's publishes (quantiles over the recent 1024).",
                float(value) if value is not None else None,
                {**lab, "quantile": quantile},
            )
        out.add(
            "crossmodald_sink_ack_seconds",
            "summary",
            "",
            float(sink.get("ack_seconds_sum", 0.0)),
            lab,
            suffix="_sum",
        )
        out.add(
            "crossmodald_sink_ack_seconds",
            "summary",
            "",
            int(sink.get("ack_count", 0)),
            lab,
            suffix="_count",
        )


def _bus_metrics(out: MetricsText, bus: Any) -> None:
    stats = bus.stats()
    out.add("crossmodald_subscribers", "gauge", "Open event subscribers.", stats.subscribers)
    out.add("crossmodald_events_published_total", "counter", "Events published.", stats.published)
    out.add(
        "crossmodald_events_dropped_total",
        "counter",
        "Events discarded when slow subscribers were closed.",
        stats.dropped,
    )
    out.add(
        "crossmodald_subscribers_closed_slow_total",
        "counter",
        "Subscribers closed for being too slow.",
        stats.closed_slow,
    )
    out.add(
        "crossmodald_replay_buffered_events",
        "gauge",
        "Events held for resume.",
        stats.replay_buffered,
    )
    depths = [sub.queue_depth + sub.replay_pending for sub in stats.per_subscriber]
    out.add(
        "crossmodald_subscriber_queue_depth_max",
        "gauge",
        "Deepest subscriber queue (events waiting, replay included).",
        max(depths, default=0),
    )
    out.add(
        "crossmodald_subscriber_queued_events",
        "gauge",
        "Events waiting in all subscriber queues.",
        sum(depths),
    )
    out.add(
        "crossmodald_subscribers_slow",
        "gauge",
        "Subscribers whose queue is full.",
        sum(1 for sub in stats.per_subscriber if sub.slow),
    )


def _api_metrics(out: MetricsText, app: web.Application) -> None:
    from crossmodald.api.auth import AUTH
    from crossmodald.api.limits import LIMITS

    auth = app.get(AUTH)
    if auth is not None:
        for status, count in (("401", auth.refused_401), ("403", auth.refused_403)):
            out.add(
                "crossmodald_api_auth_refused_total",
                "counter",
                "Requests refused by authentication (401) or authorisation (403).",
                count,
                {"status": status},
            )
    limits = app.get(LIMITS)
    if limits is not None:
        snap = limits.snapshot()
        for kind, held in snap["held"].items():
            out.add(
                "crossmodald_api_held",
                "gauge",
                "Per-client limited resources held now.",
                held,
                {"kind": kind},
            )
        for kind in ("connections", "subscribers", "streams"):
            out.add(
                "crossmodald_api_limit_refused_total",
                "counter",
                "Requests refused by a per-client or server-wide limit.",
                snap["refused"].get(kind, 0),
                {"kind": kind},
            )
        out.add(
            "crossmodald_api_clients", "gauge", "Clients holding requests now.", snap["clients"]
        )


def _read_statm() -> tuple[int, int] | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            size, resident, *_ = f.read().split()
    except (OSError, ValueError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    return int(size) * page, int(resident) * page


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def process_figures() -> dict[str, float | int | None]:
    """Memory, file descriptors, CPU time, threads and asyncio tasks of this process."""
    statm = _read_statm()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        tasks: int | None = len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        tasks = None
    return {
        "virtual_memory_bytes": statm[0] if statm else None,
        # ru_maxrss is the peak, in KiB on Linux: a fallback where /proc is missing.
        "resident_memory_bytes": statm[1] if statm else usage.ru_maxrss * 1024,
        "max_resident_memory_bytes": usage.ru_maxrss * 1024,
        "open_fds": _open_fds(),
        "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "cpu_seconds_total": usage.ru_utime + usage.ru_stime,
        "threads": threading.active_count(),
        "asyncio_tasks": tasks,
    }


def _process_metrics(out: MetricsText) -> None:
    f = process_figures()
    out.add(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        f["resident_memory_bytes"],
    )
    out.add(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        f["virtual_memory_bytes"],
    )
    out.add(
        "process_max_resident_memory_bytes",
        "gauge",
        "Peak resident memory in bytes.",
        f["max_resident_memory_bytes"],
    )
    out.add("process_open_fds", "gauge", "Open file descriptors.", f["open_fds"])
    out.add("process_max_fds", "gauge", "Limit on open file descriptors.", f["max_fds"])
    out.add(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time in seconds.",
        f["cpu_seconds_total"],
    )
    out.add(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the epoch, in seconds.",
        _PROCESS_START_S,
    )
    out.add("crossmodald_threads", "gauge", "Python threads alive.", f["threads"])
    out.add("crossmodald_asyncio_tasks", "gauge", "asyncio tasks alive.", f["asyncio_tasks"])


def render(app: web.Application) -> str:
    """The whole exposition for an API application built by :func:`crossmodald.api.build_app`."""
    from crossmodald.api.app import API_STATE

    state = app[API_STATE]
    rates = app.get(RATES)
    if rates is None:
        rates = RateMeter()
    out = MetricsText()
    out.add(
        "crossmodald_build_info",
        "gauge",
        "Always 1; the labels say which crossmodald and Python serve.",
        1,
        {"version": __version__, "python": platform.python_version()},
    )
    out.add(
        "crossmodald_ready", "gauge", "1 once the daemon is ready to serve.", state.streams.ready()
    )
    plugins = state.streams.plugin_stats() if isinstance(state.streams, PluginStatsView) else []
    sources = (
        state.streams.source_metric_specs() if isinstance(state.streams, SourceMetricsView) else {}
    )
    _stream_metrics(out, state.streams.streams(), rates, plugins, sources)
    if isinstance(state.streams, PluginStatsView):
        _plugin_metrics(out, plugins)
    if isinstance(state.streams, SinkStatsView):
        _sink_metrics(out, state.streams.sink_stats())
    fleet = state.streams.fleet_stats() if isinstance(state.streams, FleetStatsView) else None
    if fleet is not None:
        for key, name, kind, help_text in _FLEET_METRICS:
            out.add(name, kind, help_text, fleet.get(key))
    _bus_metrics(out, state.bus)
    _api_metrics(out, app)
    _process_metrics(out)
    return out.render()


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text exposition."""
    text = render(request.app)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def install(app: web.Application) -> None:
    """Add ``GET /metrics`` and its rate state to an API application."""
    app[RATES] = RateMeter()
    app.router.add_get("/metrics", metrics_handler)
