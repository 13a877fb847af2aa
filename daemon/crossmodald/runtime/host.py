"""The plugin host: batches windows from many streams into one inference call per plugin.

One :class:`PluginHost` per loaded plugin. Streams submit closed windows; a worker task takes
everything queued (up to ``max_batch``), runs :meth:`Plugin.infer` once on the plugin's own worker
thread (so the event loop never blocks on a model), and hands each result to the stream's
:class:`Session` on the event loop. The queue is bounded: in ``drop_oldest`` mode (live) the oldest
windows are dropped and counted when it is full; in ``block`` mode (offline analysis) submitters
wait while one batch is already waiting, and the worker gathers a batch of
:data:`OFFLINE_BATCH` windows (at most ``max_batch`` and ``queue_size``) before it calls the
model, unless a stream closes or the oldest window has waited :data:`OFFLINE_GATHER_S`. A plugin
that raises is isolated: the error is counted and reported as a ``plugin.error`` event, and the
streams and other plugins go on.

The host owns each stream's plugin state (:meth:`Plugin.new_state`) and passes it back with the
stream's windows; one worker per host means no two ``infer`` calls of a plugin overlap. When a
stream ends, a plugin that has the optional ``finish(state)`` method (see
:mod:`crossmodald.runtime.plugin`) gets it called on the same worker thread after the stream's
last window, and a result it returns goes to the session like a window's, before ``close``.

Providers and consumers (see :mod:`crossmodald.runtime.plugin`): :func:`link_hosts` connects
every consumer host to the hosts providing what its config requires. A provider hands its result
for each window to its consumers (:meth:`PluginHost.deliver`); a consumer's worker waits until
every window of its batch has its products, then calls ``infer`` with them. A window the
provider dropped on overload is dropped by the consumer too (counted); a window the provider
failed on is a ``plugin.error`` of the consumer for that window, naming the provider. A *silent*
host (a provider the registry added for a consumer) publishes no events of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from crossmodald.bus.events import Event, JsonValue
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import (
    BatchItem,
    Inputs,
    MetricSpec,
    Need,
    Plugin,
    PluginConfig,
    ProductKey,
    Session,
)
from crossmodald.status import Histogram

log = logging.getLogger(__name__)

Publish = Callable[[Event], object]

#: Offline (``block``) batch: enough windows to amortise a model call's fixed cost (avsync on a
#: CPU, 2 s windows: 3.3 ms per window one by one, 1.4 ms in batches of 16, slower again at 64,
#: whose audio no longer fits in cache), few enough that the frames held stay bounded (two
#: batches of VGA windows: ~100 MB; 16 cost ~130 MB more for little).
OFFLINE_BATCH = 8
#: Offline, a batch goes to the model after this long even if not full (a slow network input).
OFFLINE_GATHER_S = 0.25


#: Products held for windows a consumer has not taken yet, per consumer (a bound: entries for
#: windows the consumer dropped are evicted oldest first).
INBOX_LIMIT = 4096
#: Closed streams whose last session status is kept (``/v1/streams`` lists ended streams).
CLOSED_STATUS_LIMIT = 1024


class Overload(enum.StrEnum):
    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


@dataclass(slots=True)
class HostStats:
    """Counters of one plugin host (exported as metrics and in /v1/streams)."""

    windows_in: int = 0
    windows_done: int = 0
    windows_dropped: int = 0
    batches: int = 0
    errors: int = 0
    last_batch_size: int = 0
    last_infer_ms: float = 0.0
    infer_ms_total: float = 0.0
    dropped_by_stream: dict[str, int] = field(default_factory=dict)
    #: Window latency: daemon monotonic time from a window's close to its results (ms).
    window_latency_ms_total: float = 0.0
    window_latency_count: int = 0
    #: Each stream's latest window latency (ms).
    window_latency_ms_by_stream: dict[str, float] = field(default_factory=dict)
    #: Inference call durations and window latencies, seconds (Prometheus histograms).
    inference_s: Histogram = field(default_factory=Histogram)
    window_latency_s: Histogram = field(default_factory=Histogram)


@dataclass(frozen=True, slots=True)
class _Dropped:
    """The provider dropped this window on overload."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """The provider failed on this window."""

    message: str


_DROPPED = _Dropped()
_WindowKey = tuple[str, int, int]


def _key(window: Window) -> _WindowKey:
    return (window.stream, window.start_ns, window.end_ns)


@dataclass(frozen=True, slots=True)
class _CloseMarker:
    stream: str
    done: asyncio.Future[None]


class PluginHost:
    """Runs one plugin for every stream; see the module docstring."""

    def __init__(
        self,
        plugin: Plugin[Any, Any],
        config: PluginConfig,
        publish: Publish,
        *,
        overload: Overload = Overload.DROP_OLDEST,
        silent: bool = False,
    ) -> None:
        self.plugin = plugin
        self.name = plugin.name
        self.config = config
        #: A provider added for a consumer: its sessions' events and errors are not published.
        self.silent = silent
        self._publish = publish
        self._overload = overload
        self._queue: deque[Window | _CloseMarker] = deque()
        self._windows_queued = 0
        #: Windows queued per stream (offline, each open stream gets a fair share of the queue).
        self._queued_by_stream: dict[str, int] = {}
        self._markers_queued = 0
        self._changed = asyncio.Condition()
        self._sessions: dict[str, Session[Any]] = {}
        self._states: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"plugin:{self.name}")
        self.stats = HostStats()
        self._closed = False
        self.needs: tuple[Need, ...] = tuple(config.requires())
        self.provides: ProductKey[Any] | None = plugin.provides
        # Provider hosts per needed product (a reload may briefly leave an old and a new one).
        self._providers: dict[ProductKey[Any], list[PluginHost]] = {}
        self._consumers: list[PluginHost] = []
        self._inbox: OrderedDict[_WindowKey, dict[ProductKey[Any], object]] = OrderedDict()
        self._inbox_changed = asyncio.Event()
        self._closed_status: OrderedDict[str, dict[str, JsonValue]] = OrderedDict()
        #: Each open stream's latest analysed window (the span a ``finish`` result reports on).
        self._last_window: dict[str, Window] = {}

    # -- providers and consumers ---------------------------------------------------------

    def add_provider(self, key: ProductKey[Any], provider: PluginHost) -> None:
        """Take ``key`` from ``provider`` (its results for this host's streams' windows)."""
        hosts = self._providers.setdefault(key, [])
        if provider not in hosts:
            hosts.append(provider)
        if self not in provider._consumers:
            provider._consumers.append(self)

    def remove_provider(self, provider: PluginHost) -> None:
        """Stop taking products from a retired ``provider``."""
        for hosts in self._providers.values():
            if provider in hosts:
                hosts.remove(provider)
        if self in provider._consumers:
            provider._consumers.remove(self)

    def deliver(self, key: ProductKey[Any], window: Window, value: object) -> None:
        """A provider's product for one window (or that it dropped / failed on it)."""
        if window.stream not in self._sessions:
            return
        self._inbox.setdefault(_key(window), {})[key] = value
        while len(self._inbox) > INBOX_LIMIT:
            self._inbox.popitem(last=False)
        self._inbox_changed.set()

    def _serving(self, key: ProductKey[Any], stream: str) -> bool:
        return any(h.has_stream(stream) for h in self._providers.get(key, ()))

    def _awaited(self, window: Window) -> list[ProductKey[Any]]:
        return [n.key for n in self.needs if self._serving(n.key, window.stream)]

    def _inputs_ready(self, batch: Sequence[Window]) -> bool:
        for window in batch:
            got = self._inbox.get(_key(window), {})
            if any(key not in got for key in self._awaited(window)):
                return False
        return True

    async def _wait_inputs(self, batch: Sequence[Window]) -> None:
        while not self._inputs_ready(batch):
            self._inbox_changed.clear()
            if self._inputs_ready(batch):
                return
            await self._inbox_changed.wait()

    # -- streams -------------------------------------------------------------------------

    def open_stream(self, info: StreamInfo) -> str | None:
        """Start a session for ``info``; returns why the plugin refuses the stream, or None.

        A consumer refuses a stream no provider of a required product analyses (so providers
        are opened first: hosts in dependency order).
        """
        reason = self.plugin.check_stream(info)
        if reason is not None:
            return reason
        for need in self.needs:
            if not need.optional and not self._serving(need.key, info.name):
                return f"needs {need.key.name}, which no plugin provides for this stream"
        self._closed_status.pop(info.name, None)
        self._states[info.name] = self.plugin.new_state(info)
        self._sessions[info.name] = self.plugin.open(info)
        return None

    def stream_status(self, stream: str) -> dict[str, JsonValue] | None:
        """The status the stream's session reports (after it closed: its last status; None:
        the plugin never analysed the stream)."""
        session = self._sessions.get(stream)
        if session is None:
            return self._closed_status.get(stream)
        try:
            return dict(session.status())
        except Exception:
            log.exception("plugin %s: session status failed on %s", self.name, stream)
            return None

    def metric_specs(self) -> Sequence[MetricSpec]:
        """The per-stream metrics the plugin declares."""
        return tuple(self.plugin.metrics)

    def has_stream(self, stream: str) -> bool:
        return stream in self._sessions

    async def close_stream(self, stream: str) -> None:
        """Finish the stream's queued windows, then close its session (its events published)."""
        if stream not in self._sessions:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._changed:
            self._queue.append(_CloseMarker(stream, done))
            self._markers_queued += 1
            self._changed.notify_all()
        await done

    # -- windows -------------------------------------------------------------------------

    async def submit(self, window: Window) -> None:
        """Queue a closed window (dropping the oldest, or waiting, when the queue is full)."""
        if window.stream not in self._sessions:
            return
        async with self._changed:
            if self._overload is Overload.BLOCK:
                # Offline, one batch waiting keeps the worker busy; a deeper queue only lets
                # ingest run ahead, holding every queued window's frames (256 windows: two
                # minutes of video, gigabytes at 1080p).
                # Each open stream may hold its share of that batch, so that a source that
                # decodes far ahead cannot fill every batch alone: one model call serves the
                # windows of many streams, as live.
                depth = self.offline_batch
                stream = window.stream
                await self._changed.wait_for(
                    lambda: (
                        self._windows_queued < depth
                        and self._queued_by_stream.get(stream, 0) < self._fair_share(depth)
                    )
                )
            elif self._windows_queued >= self.config.queue_size:
                self._drop_oldest_window()
            self._queue.append(window)
            self._windows_queued += 1
            self._queued_by_stream[window.stream] = self._queued_by_stream.get(window.stream, 0) + 1
            self.stats.windows_in += 1
            self._changed.notify_all()

    def _count_drop(self, window: Window) -> None:
        self.stats.windows_dropped += 1
        by_stream = self.stats.dropped_by_stream
        by_stream[window.stream] = by_stream.get(window.stream, 0) + 1
        self._inbox.pop(_key(window), None)
        if self.provides is not None:
            for consumer in self._consumers:
                consumer.deliver(self.provides, window, _DROPPED)

    def _fair_share(self, depth: int) -> int:
        return max(1, -(-depth // max(1, len(self._sessions))))

    def _dequeued(self, window: Window) -> None:
        self._windows_queued -= 1
        left = self._queued_by_stream.get(window.stream, 0) - 1
        if left > 0:
            self._queued_by_stream[window.stream] = left
        else:
            self._queued_by_stream.pop(window.stream, None)

    def _drop_oldest_window(self) -> None:
        for index, item in enumerate(self._queue):
            if isinstance(item, Window):
                del self._queue[index]
                self._dequeued(item)
                self._count_drop(item)
                if (
                    self.stats.windows_dropped in (1, 10, 100)
                    or self.stats.windows_dropped % 1000 == 0
                ):
                    log.warning(
                        "plugin %s overloaded: %d windows dropped so far (oldest first)",
                        self.name,
                        self.stats.windows_dropped,
                    )
                return

    @property
    def queue_depth(self) -> int:
        return self._windows_queued

    @property
    def offline_batch(self) -> int:
        """Windows per model call in ``block`` mode (and the most that wait for it)."""
        return min(OFFLINE_BATCH, self.config.max_batch, self.config.queue_size)

    def _batch_ready(self) -> bool:
        return (
            self._windows_queued >= self.offline_batch or self._markers_queued > 0 or self._closed
        )

    # -- worker --------------------------------------------------------------------------

    async def run(self) -> None:
        """The worker: runs until cancelled, or until :meth:`aclose` once the queue is empty."""
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: bool(self._queue) or self._closed)
                    if not self._queue:
                        return
                    if self._overload is Overload.BLOCK and not self._batch_ready():
                        # Offline: gather a batch (per-call overhead dominates one window),
                        # but not for long: a live input read offline still moves on.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                self._changed.wait_for(self._batch_ready), OFFLINE_GATHER_S
                            )
                    batch, marker = self._take_batch()
                    self._changed.notify_all()
                if batch:
                    if self.needs:
                        await self._wait_inputs(batch)
                    await self._run_batch(batch)
                if marker is not None:
                    await self._finish_stream(marker.stream)
                    self._close_session(marker)
        finally:
            # Nobody may wait forever on a stream close once the worker is gone.
            for item in self._queue:
                if isinstance(item, _CloseMarker) and not item.done.done():
                    item.done.set_result(None)
                elif isinstance(item, Window) and self.provides is not None:
                    # Consumers must not wait for windows this worker will never run.
                    for consumer in self._consumers:
                        consumer.deliver(self.provides, item, _DROPPED)
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _take_batch(self) -> tuple[list[Window], _CloseMarker | None]:
        batch: list[Window] = []
        while self._queue and len(batch) < self.config.max_batch:
            item = self._queue[0]
            if isinstance(item, _CloseMarker):
                if batch:
                    break  # close after the windows before it are done
                self._queue.popleft()
                self._markers_queued -= 1
                return batch, item
            self._queue.popleft()
            self._dequeued(item)
            batch.append(item)
        return batch, None

    def _items(self, batch: list[Window]) -> tuple[list[BatchItem[Any]], list[Window]]:
        """The batch items with their inputs; windows the providers dropped or failed on are
        counted (dropped) or reported (error) and left out."""
        items: list[BatchItem[Any]] = []
        kept: list[Window] = []
        for window in batch:
            got = self._inbox.pop(_key(window), {})
            values: dict[ProductKey[Any], object] = {}
            problem: str | None = None
            dropped = False
            for need in self.needs:
                value = got.get(need.key)
                if isinstance(value, _Dropped):
                    dropped = dropped or not need.optional
                elif isinstance(value, _Failed):
                    if not need.optional:
                        problem = f"input {need.key.name} unavailable: {value.message}"
                elif value is not None:
                    values[need.key] = value
                elif not need.optional:
                    problem = f"input {need.key.name} unavailable: no provider analysed the window"
            if dropped:
                self._count_drop(window)
                continue
            if problem is not None:
                self.stats.errors += 1
                self._report_error(window.stream, [window], problem)
                self._fail_consumers([window], problem)
                continue
            items.append(BatchItem(window, self._states.get(window.stream), Inputs(values)))
            kept.append(window)
        return items, kept

    def _fail_consumers(self, windows: Sequence[Window], message: str) -> None:
        if self.provides is None:
            return
        failed = _Failed(f"provider {self.name} failed: {message}")
        for consumer in self._consumers:
            for window in windows:
                consumer.deliver(self.provides, window, failed)

    async def _run_batch(self, batch: list[Window]) -> None:
        items, batch = self._items(batch)
        if not batch:
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._infer, items)
        except Exception as exc:  # a plugin fault must not take the daemon down
            self.stats.errors += 1
            log.exception("plugin %s: inference failed on a batch of %d", self.name, len(batch))
            message = f"{type(exc).__name__}: {exc}"
            for stream in sorted({w.stream for w in batch}):
                self._report_error(stream, batch, message)
            self._fail_consumers(batch, message)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self.stats.batches += 1
        self.stats.last_batch_size = len(batch)
        self.stats.last_infer_ms = elapsed_ms
        self.stats.infer_ms_total += elapsed_ms
        self.stats.inference_s.observe(elapsed_ms / 1000.0)
        if self.provides is not None:
            # Consumers' workers can start on this batch while our sessions make events.
            for consumer in self._consumers:
                for window, result in zip(batch, results, strict=True):
                    consumer.deliver(self.provides, window, result)
        done_ns = time.monotonic_ns()
        for window, result in zip(batch, results, strict=True):
            self._last_window[window.stream] = window
            session = self._sessions.get(window.stream)
            self.stats.windows_done += 1
            if window.closed_ns:
                # closed_ns is on the daemon's monotonic clock (virtual clocks in tests skew it).
                latency_ms = max(0.0, (done_ns - window.closed_ns) / 1e6)
                self.stats.window_latency_ms_total += latency_ms
                self.stats.window_latency_count += 1
                self.stats.window_latency_s.observe(latency_ms / 1000.0)
                self.stats.window_latency_ms_by_stream[window.stream] = latency_ms
            if session is not None:
                self._update_session(session, window, result)

    def _update_session(self, session: Session[Any], window: Window, result: Any) -> None:
        try:
            events = session.update(window, result)
        except Exception as exc:
            self.stats.errors += 1
            log.exception("plugin %s: session update failed on %s", self.name, window.stream)
            self._report_error(window.stream, [window], f"{type(exc).__name__}: {exc}")
            return
        if not self.silent:
            for event in events:
                self._publish(event)

    async def _finish_stream(self, stream: str) -> None:
        """Run the plugin's optional ``finish(state)`` for an ending stream (worker thread) and
        hand a result to its session, on the span of the stream's last window."""
        window = self._last_window.pop(stream, None)
        finish = getattr(self.plugin, "finish", None)
        session = self._sessions.get(stream)
        if window is None or session is None or not callable(finish):
            return
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, finish, self._states.get(stream))
        except Exception as exc:  # isolated like a failed batch
            self.stats.errors += 1
            log.exception("plugin %s: finish failed on %s", self.name, stream)
            self._report_error(stream, [window], f"{type(exc).__name__}: {exc}")
            return
        if result is not None:
            self._update_session(session, window, result)

    def _infer(self, items: Sequence[BatchItem[Any]]) -> Sequence[Any]:
        results = self.plugin.infer(items)
        if len(results) != len(items):
            raise RuntimeError(f"returned {len(results)} results for {len(items)} windows")
        key = self.provides
        if key is not None:
            for result in results:
                if not isinstance(result, key.type):
                    raise TypeError(
                        f"provides {key.name} but returned {type(result).__name__}, "
                        f"not {key.type.__name__}"
                    )
        return results

    def _report_error(self, stream: str, batch: Sequence[Window], message: str) -> None:
        if self.silent:
            return  # the consumers report the failure for their windows
        spans = [w for w in batch if w.stream == stream]
        self._publish(
            Event(
                type="plugin.error",
                stream=stream,
                start_ns=min(w.start_ns for w in spans),
                end_ns=max(w.end_ns for w in spans),
                data={
                    "plugin": self.name,
                    "message": message,
                    "count": self.stats.errors,
                },
                clock=spans[0].clock,
            )
        )

    def _close_session(self, marker: _CloseMarker) -> None:
        final = self.stream_status(marker.stream)
        if final is not None:
            self._closed_status[marker.stream] = final
            while len(self._closed_status) > CLOSED_STATUS_LIMIT:
                self._closed_status.popitem(last=False)
        session = self._sessions.pop(marker.stream, None)
        self._states.pop(marker.stream, None)
        self._last_window.pop(marker.stream, None)
        self.stats.window_latency_ms_by_stream.pop(marker.stream, None)  # bounded by live streams
        try:
            if session is not None:
                events = session.close()
                if not self.silent:
                    for event in events:
                        self._publish(event)
        except Exception:
            self.stats.errors += 1
            log.exception("plugin %s: session close failed on %s", self.name, marker.stream)
        finally:
            if not marker.done.done():
                marker.done.set_result(None)

    async def aclose(self) -> None:
        """Let the worker finish what is queued, then stop."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "plugin": self.name,
            "silent": self.silent,
            "provides": self.provides.name if self.provides is not None else None,
            "requires": [{"product": n.key.name, "optional": n.optional} for n in self.needs],
            "metrics": [m.as_dict() for m in self.plugin.metrics],
            "queue_depth": self._windows_queued,
            "windows_in": s.windows_in,
            "windows_done": s.windows_done,
            "windows_dropped": s.windows_dropped,
            "batches": s.batches,
            "errors": s.errors,
            "last_batch_size": s.last_batch_size,
            "last_infer_ms": round(s.last_infer_ms, 3),
            "infer_ms_total": round(s.infer_ms_total, 3),
            "window_latency_ms_total": round(s.window_latency_ms_total, 3),
            "window_latency_count": s.window_latency_count,
            "window_latency_ms_by_stream": {
                k: round(v, 3) for k, v in s.window_latency_ms_by_stream.items()
            },
            "dropped_by_stream": dict(s.dropped_by_stream),
            "inference_seconds": s.inference_s.as_dict(),
            "window_latency_seconds": s.window_latency_s.as_dict(),
        }


def link_hosts(hosts: Iterable[PluginHost]) -> None:
    """Connect every consumer host to the hosts providing the products its config requires.

    Call after building the hosts and after each reload swap; whoever retires a host unlinks
    it (:meth:`PluginHost.remove_provider`) once it has drained, so a consumer may briefly take
    a product from an old and a new provider.

    Raises:
        ValueError: A required product that no host provides (the registry prevents this).
    """
    hosts = list(hosts)
    by_key: dict[ProductKey[Any], list[PluginHost]] = {}
    for host in hosts:
        if host.provides is not None:
            by_key.setdefault(host.provides, []).append(host)
    for host in hosts:
        for need in host.needs:
            providers = by_key.get(need.key, [])
            if not providers and not need.optional:
                raise ValueError(
                    f"plugin {host.name!r} needs {need.key.name}: no plugin provides it"
                )
            for provider in providers:
                host.add_provider(need.key, provider)
