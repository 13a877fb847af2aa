"""The ``csv`` sink: one CSV row per event, appended to a file.

Columns: ``seq, ts, stream, type, phase, start_ns, end_ns, data`` (``data`` as compact JSON); a
header row starts a new or empty file. Rows are written in batches on a worker thread (the event
loop never waits for the disk) and flushed after each batch; :meth:`CsvSink.aclose` writes what
it has taken off the bus before it closes the file.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import IO, Literal

from pydantic import Field, field_validator

from crossmodald.bus.bus import EventBus, EventFilter, SubscriberClosed, Subscription
from crossmodald.bus.events import Envelope
from crossmodald.bus.sinks import SinkConfigBase, SinkStats

COLUMNS = ("seq", "ts", "stream", "type", "phase", "start_ns", "end_ns", "data")
#: Most envelopes per write.
BATCH_MAX = 256


class CsvSinkConfig(SinkConfigBase):
    """A ``[[sinks]]`` table of type ``csv``."""

    type: Literal["csv"]
    path: Path
    #: Only these event types (exact, or a prefix ending in '.'); empty: all.
    types: list[str] = Field(default_factory=list)

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        EventFilter.from_lists(value, [])  # a malformed entry is a config error, said here
        return value

    @property
    def identity(self) -> str:
        """One sink per file."""
        return f"csv:{self.path}"


def _row(envelope: Envelope) -> list[object]:
    body = envelope.as_dict()
    media = body["media"]
    data = json.dumps(body["data"], separators=(",", ":"), sort_keys=True)
    phase = body["phase"] or ""
    return [
        *(body["seq"], body["ts"], body["stream"], body["type"], phase),
        *(media["start_ns"], media["end_ns"], data),
    ]


class CsvSink:
    """A :class:`~crossmodald.bus.sinks.Sink` appending one CSV row per event."""

    def __init__(self, config: CsvSinkConfig) -> None:
        self.config = config
        self.stats = SinkStats()
        self._filter = EventFilter.from_lists(config.types, [])
        self._sub: Subscription | None = None
        self._closing = False
        self._done = asyncio.Event()
        self._running = False
        # Held while a batch is written, so flush() can wait for the one in progress.
        self._writing = asyncio.Lock()

    @property
    def identity(self) -> str:
        return self.config.identity

    async def run(self, bus: EventBus, after_seq: int | None = None) -> None:
        """Append rows until :meth:`aclose` or the bus closes; raises OSError naming the file."""
        if self._running:
            raise RuntimeError(f"csv sink {self.config.path} is already running")
        self._running = True
        try:
            file = await asyncio.to_thread(_open, self.config.path)
            try:
                await self._consume(bus, file, after_seq)
            finally:
                await asyncio.to_thread(file.close)
        finally:
            self._done.set()

    async def _consume(self, bus: EventBus, file: IO[str], after_seq: int | None) -> None:
        last_seq = after_seq if after_seq is not None else bus.last_seq
        while not self._closing:
            try:
                sub = bus.subscribe(self._filter, last_seq, name=f"sink:{self.identity}")
            except SubscriberClosed:
                return  # the bus has shut down
            self._sub = sub
            if not sub.replay_complete:
                self.stats.missed_resumes += 1  # the replay buffer lost some while we stalled
            try:
                async for first in sub:
                    batch = [first, *sub.drain_nowait(BATCH_MAX - 1)]
                    async with self._writing:
                        await asyncio.to_thread(self._write, file, batch)
                    last_seq = batch[-1].seq
                return
            except SubscriberClosed as exc:
                if not exc.slow:
                    return  # shutdown or aclose(): everything queued was written
                # Too slow (a stalled disk): go on from the last row written, from the replay.
                self.stats.resumes += 1

    def _write(self, file: IO[str], batch: list[Envelope]) -> None:
        # Worker thread: one write and one flush per batch.
        text = io.StringIO()
        csv.writer(text).writerows(_row(envelope) for envelope in batch)
        file.write(text.getvalue())
        file.flush()
        self.stats.written += len(batch)
        self.stats.batches += 1
        self.stats.last_seq = batch[-1].seq

    async def flush(self) -> None:
        """Every batch is flushed once written: wait for the one in progress."""
        async with self._writing:
            pass

    async def aclose(self) -> None:
        """Stop taking events; write what was taken, close the file (idempotent)."""
        self._closing = True
        if self._sub is not None:
            self._sub.end("sink closing")
        if self._running:
            await self._done.wait()


def _open(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = path.open("a", encoding="utf-8", newline="")
    except OSError as exc:
        raise OSError(exc.errno, f"csv sink: cannot open {path}: {exc.strerror}") from None
    if file.tell() == 0:
        csv.writer(file).writerow(COLUMNS)
    return file


class CsvSinkFactory:
    """Sink type ``csv`` (entry point ``crossmodald.sinks``)."""

    config_model = CsvSinkConfig

    @classmethod
    def create(cls, config: CsvSinkConfig) -> CsvSink:
        return CsvSink(config)

    @classmethod
    def check(cls, config: CsvSinkConfig) -> None:
        """Fail before the daemon is ready when the file cannot be opened for appending."""
        _open(config.path).close()
