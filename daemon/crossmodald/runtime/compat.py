"""Plugins written for contract version 1 (``infer(windows)``), adapted to version 2.

A version-1 plugin has ``name``, ``check_stream``, ``open`` and ``infer(batch of windows)``
and sessions without ``status``. :func:`as_v2` wraps one so the host runs it unchanged: no
per-stream state (``new_state`` gives None), no products, no metrics, an empty status. The
registry logs a deprecation warning when it adapts one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crossmodald.bus.events import Event, JsonValue
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, Plugin, ProductKey, Session


def is_v1(plugin: object) -> bool:
    """A version-1 plugin: ``check_stream``, ``open``, ``infer`` but no ``new_state``."""
    return (
        all(callable(getattr(plugin, m, None)) for m in ("check_stream", "open", "infer"))
        and getattr(plugin, "new_state", None) is None
    )


class _V1Session:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def update(self, window: Window, result: Any) -> list[Event]:
        events: list[Event] = self._inner.update(window, result)
        return events

    def close(self) -> list[Event]:
        events: list[Event] = self._inner.close()
        return events

    def status(self) -> Mapping[str, JsonValue]:
        status = getattr(self._inner, "status", None)
        return dict(status()) if callable(status) else {}


class V1Plugin:
    """A version-1 plugin seen through the version-2 contract."""

    provides: ProductKey[Any] | None = None

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.metrics: Sequence[MetricSpec] = tuple(getattr(inner, "metrics", ()))

    def check_stream(self, stream: StreamInfo) -> str | None:
        reason: str | None = self.inner.check_stream(stream)
        return reason

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> Session[Any]:
        return _V1Session(self.inner.open(stream))

    def infer(self, batch: Sequence[BatchItem[None]]) -> Sequence[Any]:
        results: Sequence[Any] = self.inner.infer([item.window for item in batch])
        return results


def as_v2(plugin: Any) -> Plugin[Any, Any]:
    """``plugin`` itself when it keeps contract version 2, else a :class:`V1Plugin` wrapper."""
    if is_v1(plugin):
        return V1Plugin(plugin)
    result: Plugin[Any, Any] = plugin
    return result
