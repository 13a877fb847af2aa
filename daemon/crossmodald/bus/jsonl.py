"""The ``jsonl`` sink: one JSON line per event, appended to a file.

Writes in batches off the event loop. If the bus closes it for being slow (a stalled disk), it
resubscribes with the last ``seq`` it wrote and catches up from the replay buffer; events that
fell out of that buffer meanwhile are counted in ``SinkStats.missed_resumes`` and logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import IO, Literal

from pydantic import Field, field_validator

from crossmodald.bus.bus import EventBus, EventFilter, SubscriberClosed, Subscription
from crossmodald.bus.events import Envelope
from crossmodald.bus.sinks import SinkConfigBase, SinkStats

__all__ = ["BATCH_MAX", "JsonlSink", "JsonlSinkConfig", "JsonlSinkFactory"]

log = logging.getLogger(__name__)

#: Most envelopes written in one batch (one write + flush in a worker thread).
BATCH_MAX = 512


class JsonlSinkConfig(SinkConfigBase):
    """A ``[[sinks]]`` table of type ``jsonl``."""

    type: Literal["jsonl"]
    path: Path
    #: Only these event types (exact or prefix ending in '.', e.g. "sync."); empty = all.
    types: list[str] = Field(default_factory=list)
    streams: list[str] = Field(default_factory=list)
    #: fsync after each batch of writes.
    fsync: bool = False

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        # The filter the sink builds, checked where check-config sees it.
        EventFilter.from_lists(value, ())
        return value

    @field_validator("streams")
    @classmethod
    def _streams(cls, value: list[str]) -> list[str]:
        EventFilter.from_lists((), value)
        return value

    @property
    def identity(self) -> str:
        """The file's path: one sink per file."""
        return str(self.path)


class JsonlSink:
    """Appends one JSON line per matching envelope to a file.

    A :class:`~crossmodald.bus.sinks.Sink`. Run :meth:`run` as a task
    (``tg.create_task(sink.run(bus), name="sink:jsonl")``); stop it with :meth:`aclose`, which
    drains and flushes, or by closing the bus.

    Args:
        config: The sink's config (path, type/stream filters, fsync).
        batch_max: Most envelopes per write batch.

    Raises:
        ValueError: A filter entry in the config is malformed.
    """

    def __init__(self, config: JsonlSinkConfig, *, batch_max: int = BATCH_MAX) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        try:
            self.filter = EventFilter.from_lists(config.types, config.streams)
        except ValueError as exc:
            raise ValueError(f"jsonl sink {config.path}: {exc}") from None
        self.config = config
        self.stats = SinkStats()
        self._batch_max = batch_max
        self._sub: Subscription | None = None
        self._closing = False
        self._done = asyncio.Event()
        self._running = False
        # Held while a batch is written: flush() waits for the batch in progress.
        self._writing = asyncio.Lock()
        self._file: IO[str] | None = None

    @property
    def identity(self) -> str:
        """The file's path."""
        return self.config.identity

    async def run(self, bus: EventBus, after_seq: int | None = None) -> None:
        """Subscribe and write until :meth:`aclose` or the bus closes (everything flushed).

        Args:
            bus: The bus to read.
            after_seq: Write every envelope after this ``seq`` (replayed from the bus's buffer),
                so that events published while the file opens are not missed; None: only
                those published after the subscription.

        Raises:
            OSError: The file cannot be opened or written (the error names the path).
        """
        if self._running:
            raise RuntimeError(f"jsonl sink {self.config.path} is already running")
        self._running = True
        try:
            file = await asyncio.to_thread(self._open)
            self._file = file
            try:
                await self._consume(bus, file, after_seq)
            finally:
                self._file = None
                await asyncio.to_thread(file.close)
        finally:
            self._done.set()

    async def _consume(self, bus: EventBus, file: IO[str], after_seq: int | None = None) -> None:
        # Resume point: the last seq written, or (before the first write) the newest seq when
        # the sink first subscribed, so a cut-off before any write still loses nothing.
        last_seq: int | None = after_seq
        first_seq_seen = bus.last_seq if after_seq is None else after_seq
        while not self._closing:
            try:
                sub = bus.subscribe(self.filter, last_seq, name=f"sink:jsonl:{self.config.path}")
            except SubscriberClosed:
                return  # the bus has shut down
            self._sub = sub
            if not sub.replay_complete:
                self.stats.missed_resumes += 1
                log.warning(
                    "jsonl sink %s: replay buffer no longer holds every event after seq %s",
                    self.config.path,
                    last_seq,
                )
            try:
                async for first in sub:
                    batch = [first, *sub.drain_nowait(self._batch_max - 1)]
                    async with self._writing:
                        await asyncio.to_thread(self._write, file, batch)
                    last_seq = batch[-1].seq
                return  # aclose() of the subscription: nothing more to do
            except SubscriberClosed as exc:
                if not exc.slow:
                    return  # the bus shut down or aclose() ended it; all queued was written
                self.stats.resumes += 1
                log.warning("jsonl sink %s: %s; resuming", self.config.path, exc.reason)
                if last_seq is None:
                    last_seq = first_seq_seen

    def _open(self) -> IO[str]:
        path = self.config.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("a", encoding="utf-8")
        except OSError as exc:
            raise OSError(exc.errno, f"jsonl sink: cannot open {path}: {exc.strerror}") from None

    def _write(self, file: IO[str], batch: list[Envelope]) -> None:
        # Runs in a worker thread: one write, one flush (and fsync) per batch.
        file.write("".join(env.json + "\n" for env in batch))
        file.flush()
        if self.config.fsync:
            os.fsync(file.fileno())
        self.stats.written += len(batch)
        self.stats.batches += 1
        self.stats.last_seq = batch[-1].seq

    async def flush(self) -> None:
        """Return once every batch taken off the bus is written, flushed and on disk.

        Each batch is flushed as it is written; this waits for the one in progress and
        fsyncs the file, whether or not the config asks for ``fsync``.
        """
        async with self._writing:
            file = self._file
            if file is not None:
                await asyncio.to_thread(os.fsync, file.fileno())

    async def aclose(self) -> None:
        """Stop taking new events, write and flush everything queued, close the file."""
        self._closing = True
        if self._sub is not None:
            self._sub.end("sink closing")
        if self._running:
            await self._done.wait()


class JsonlSinkFactory:
    """Sink type ``jsonl`` (entry point ``crossmodald.sinks``)."""

    config_model = JsonlSinkConfig

    @classmethod
    def create(cls, config: JsonlSinkConfig) -> JsonlSink:
        """A JSONL sink (``ValueError`` for a malformed filter)."""
        return JsonlSink(config)

    @classmethod
    def check(cls, config: JsonlSinkConfig) -> None:
        """Fail early when the file cannot be opened for appending (the message names it)."""
        path = config.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise OSError(exc.errno, f"jsonl sink: cannot open {path}: {exc.strerror}") from None
