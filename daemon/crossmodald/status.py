"""Status and declared metrics: how a part the core does not know reports its own values.

Plugins (their sessions' :meth:`~crossmodald.runtime.plugin.Session.status`) and sources
(:func:`crossmodald.ingest.base.source_status`) report a JSON-ready mapping per stream, shown in
``/v1/streams`` under ``plugin_status`` and ``source_status``. Each may declare which of its status
values are metrics (:class:`MetricSpec`); ``/metrics`` exports them all the same way, so the core
never names a plugin's or a source's fields.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: Prometheus metric and label names (the exposition format's grammar, without colons in labels).
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Labels ``/metrics`` sets itself (which stream, and whose metric it is).
RESERVED = frozenset({"stream", "plugin", "source"})


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A per-stream metric a plugin or a source declares, read from its status.

    ``/metrics`` exports ``name{stream=..., plugin=... | source=..., **labels}`` with the value of
    ``status[key]`` for every stream (numbers; True/False as 1/0; None, a missing key or a
    non-number: no sample). When ``status`` has no key ``key`` itself, a dotted key reads nested
    mappings: ``"transport.audio_lead_ms"`` is ``status["transport"]["audio_lead_ms"]``.

    Attributes:
        name: Prometheus metric name (``crossmodald_stream_...``).
        type: "gauge" or "counter".
        help: One line for ``# HELP``.
        key: The status key the value comes from.
        labels: Constant labels added to the sample.
        scale: Multiplies the status value, so the metric is in a base unit while the status
            keeps its own (0.001 exports a status value in ms as seconds).

    Raises:
        ValueError: A name, type or label that Prometheus cannot take.
    """

    name: str
    type: Literal["gauge", "counter"]
    help: str
    key: str
    labels: Mapping[str, str] = field(default_factory=dict)
    scale: float = 1.0

    def __post_init__(self) -> None:
        # Checked here so a bad declaration fails where it is written, not at the first scrape.
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"metric name {self.name!r} is not a Prometheus metric name")
        if self.type not in ("gauge", "counter"):
            raise ValueError(
                f"metric {self.name}: type must be gauge or counter, not {self.type!r}"
            )
        if not self.key:
            raise ValueError(f"metric {self.name}: key must name a status value")
        for label in self.labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label in RESERVED:
                raise ValueError(f"metric {self.name}: {label!r} is not a usable label name")

    def as_dict(self) -> dict[str, object]:
        """The declaration as JSON (what ``/metrics`` reads)."""
        return {
            "name": self.name,
            "type": self.type,
            "help": self.help,
            "key": self.key,
            "labels": dict(self.labels),
            "scale": self.scale,
        }


#: Bucket bounds of the latency histograms, seconds (Prometheus' ``le``; +Inf is implied).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Histogram:
    """Counts of observed values per bucket (a Prometheus histogram's state).

    Attributes:
        bounds: Upper bounds of the buckets, increasing (the +Inf bucket is implied).
        counts: Observations per bucket, not cumulative; one more than ``bounds`` (+Inf).
        sum: Sum of the observed values.
    """

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one value (in the first bucket whose bound is >= it)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def as_dict(self) -> dict[str, object]:
        """JSON form: cumulative ``buckets`` ``[[le, count], ...]`` (last le "+Inf"), ``sum``,
        ``count``; what ``/metrics`` exports and ``/v1/streams`` shows."""
        buckets: list[list[object]] = []
        total = 0
        for bound, n in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            total += n
            buckets.append([bound, total])
        return {"buckets": buckets, "sum": round(self.sum, 6), "count": total}
