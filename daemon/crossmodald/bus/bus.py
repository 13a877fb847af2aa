"""The event bus: stamps events, serialises them once, keeps a replay buffer and fans out.

Every consumer (an SSE or WebSocket client, a sink) is a :class:`Subscription` with its own
bounded queue. Publishing is synchronous and never blocks: the envelope is appended to each
matching subscriber's queue. Backpressure policy (the "bus -> each subscriber" edge):

* ``subscriber_queue`` envelopes may wait in a subscriber's queue before it counts as *slow*;
* a subscriber that stays slow for ``slow_subscriber_s``, or whose queue reaches the hard bound
  ``subscriber_queue_max`` (default ``4 * subscriber_queue``), is closed with a reason
  ("too slow: N events behind"); the envelopes still queued for it are discarded and counted
  as dropped, and its iterator raises :class:`SubscriberClosed`.

A subscriber never sees a silent gap: it either gets every matching envelope in ``seq`` order or
is closed and may resume from the replay buffer with the last ``seq`` it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from crossmodald.bus.events import Envelope, Event, to_json_dict

#: Allowed characters of one filter entry.
_FILTER_ENTRY = re.compile(r"[A-Za-z0-9_.*-]+")
#: Longest filter entry, in characters.
MAX_FILTER_ENTRY_LEN = 128
#: Most entries in one filter list.
MAX_FILTER_ENTRIES = 64
#: Event types: dot-separated words of [A-Za-z0-9_-] (kept in step with event.schema.json).
EVENT_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")

#: Reason given to subscribers when the bus shuts down without an explicit reason.
SHUTDOWN_REASON = "daemon shutting down"


class SubscriberClosed(Exception):
    """Raised by a :class:`Subscription`'s iterator once the bus has closed it.

    Attributes:
        reason: Why it was closed, e.g. ``"too slow: 1024 events behind"``.
        slow: True when it was closed for being too slow (it may resume with ``last_seq``).
    """

    def __init__(self, reason: str, *, slow: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.slow = slow


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber wants: by type and by stream (an empty set means all).

    A type entry ending in ``"."`` or ``".*"`` is a prefix: ``"sync."`` and ``"sync.*"`` both
    match ``"sync.offset"``; ``"*"`` alone matches every type. Stream entries are exact names.

    Attributes:
        types: Type entries (exact types or prefixes).
        streams: Stream names.
    """

    types: frozenset[str] = frozenset()
    streams: frozenset[str] = frozenset()
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _all_types: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for entry in self.types:
            if entry == "*":
                continue
            if entry.endswith(".*"):
                prefixes.append(entry[:-1])
            elif entry.endswith("."):
                prefixes.append(entry)
            else:
                exact.add(entry)
        # Frozen dataclass: the derived lookup tables are set once, here.
        object.__setattr__(self, "_exact", frozenset(exact))
        object.__setattr__(self, "_prefixes", tuple(sorted(prefixes)))
        object.__setattr__(self, "_all_types", not self.types or "*" in self.types)

    @classmethod
    def parse(cls, types: str | None, streams: str | None) -> EventFilter:
        """Build a filter from comma-separated query values (``type=a,b.``, ``stream=x,y``).

        Args:
            types: Comma-separated type entries, or None/"" for all types.
            streams: Comma-separated stream names, or None/"" for all streams.

        Returns:
            The filter.

        Raises:
            ValueError: An entry is empty, too long, has characters outside ``[A-Za-z0-9_.*-]``,
                uses ``*`` other than as a trailing ``.*`` (or alone), or there are too many.
        """
        return cls.from_lists(_split(types, "type"), _split(streams, "stream"))

    @classmethod
    def from_lists(cls, types: Iterable[str], streams: Iterable[str]) -> EventFilter:
        """Build a filter from lists of entries (as in a sink's config), validating each.

        Raises:
            ValueError: As for :meth:`parse`.
        """
        type_list = list(types)
        stream_list = list(streams)
        for what, entries in (("type", type_list), ("stream", stream_list)):
            if len(entries) > MAX_FILTER_ENTRIES:
                raise ValueError(
                    f"{what} filter: at most {MAX_FILTER_ENTRIES} entries, got {len(entries)}"
                )
            for entry in entries:
                _check_entry(what, entry)
        return cls(frozenset(type_list), frozenset(stream_list))

    def matches(self, event_type: str, stream: str) -> bool:
        """Whether an event of this type on this stream passes the filter."""
        if self.streams and stream not in self.streams:
            return False
        if self._all_types or event_type in self._exact:
            return True
        return any(event_type.startswith(prefix) for prefix in self._prefixes)


def _split(value: str | None, what: str) -> list[str]:
    if value is None or not value.strip():
        return []
    # Bound the work before splitting a hostile query string.
    if len(value) > MAX_FILTER_ENTRIES * (MAX_FILTER_ENTRY_LEN + 1):
        raise ValueError(f"{what} filter: too long ({len(value)} characters)")
    return [part.strip() for part in value.split(",")]


def _check_entry(what: str, entry: str) -> None:
    if not entry:
        raise ValueError(f"{what} filter: empty entry")
    if len(entry) > MAX_FILTER_ENTRY_LEN:
        raise ValueError(
            f"{what} filter: entry longer than {MAX_FILTER_ENTRY_LEN} characters: {entry[:20]!r}..."
        )
    if not _FILTER_ENTRY.fullmatch(entry):
        raise ValueError(f"{what} filter: {entry[:40]!r} has characters outside [A-Za-z0-9_.*-]")
    if "*" in entry:
        if what == "stream":
            raise ValueError(f"stream filter: {entry!r}: '*' is not allowed in stream names")
        if entry != "*" and (not entry.endswith(".*") or entry.count("*") != 1):
            raise ValueError(
                f"type filter: {entry!r}: '*' is only allowed at the end after '.', as in 'sync.*'"
            )


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    """One subscriber's state, for metrics.

    Attributes:
        name: The subscriber's label (e.g. ``"sse 127.0.0.1:51234"``).
        queue_depth: Live envelopes waiting in its queue.
        replay_pending: Replayed envelopes it has not read yet.
        slow: Whether its queue is at or above ``subscriber_queue``.
        delivered: Envelopes it has read.
    """

    name: str
    queue_depth: int
    replay_pending: int
    slow: bool
    delivered: int


@dataclass(frozen=True, slots=True)
class BusStats:
    """Counters for metrics.

    Attributes:
        subscribers: Open subscriptions.
        published: Envelopes published since start.
        dropped: Envelopes discarded because their subscriber was closed for being slow.
        closed_slow: Subscribers closed for being too slow.
        replay_buffered: Envelopes held for resume.
        per_subscriber: Each open subscriber's state.
    """

    subscribers: int
    published: int
    dropped: int
    closed_slow: int
    replay_buffered: int
    per_subscriber: tuple[SubscriberStats, ...]


class Subscription:
    """An async iterator of envelopes for one consumer; create with :meth:`EventBus.subscribe`.

    Iteration yields replayed envelopes (if a ``last_seq`` was given) and then live ones, in
    ``seq`` order. It ends (``StopAsyncIteration``) after :meth:`aclose`, and raises
    :class:`SubscriberClosed` when the bus closed it: at once when it was too slow, or after
    the envelopes already queued when the bus shut down (or :meth:`end` was called).

    Attributes:
        name: Label used in stats and logs.
        filter: The subscriber's filter.
        replay_complete: False when a resume asked for envelopes the replay buffer no longer
            holds (the consumer missed events).
        first_replay_seq: ``seq`` of the first replayed envelope (None if nothing replayed).
        resume_after: The ``last_seq`` it resumed after (None for live only).
    """

    def __init__(
        self,
        bus: EventBus,
        name: str,
        event_filter: EventFilter,
        replay: list[Envelope],
        replay_complete: bool,
        resume_after: int | None = None,
    ) -> None:
        self._bus = bus
        self.resume_after = resume_after
        self.name = name
        self.filter = event_filter
        self.replay_complete = replay_complete
        self.first_replay_seq = replay[0].seq if replay else None
        self._replay: deque[Envelope] = deque(replay)
        self._queue: deque[Envelope] = deque()
        self._wakeup = asyncio.Event()
        self._closed = asyncio.Event()
        self._close_exc: SubscriberClosed | None = None
        self._discard = False  # True: drop what is queued (slow close, or closed by the owner)
        self._stopped = False  # closed by its owner: iteration just ends
        self._slow_since: float | None = None
        self.delivered = 0

    # -- consumer side -------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        while True:
            item = self._pop()
            if item is not None:
                return item
            if self._stopped:
                raise StopAsyncIteration
            if self._close_exc is not None:
                raise self._close_exc
            # Waiting on an Event (not a queue) so that a cancelled wait loses nothing.
            self._wakeup.clear()
            await self._wakeup.wait()

    def drain_nowait(self, max_items: int) -> list[Envelope]:
        """Up to ``max_items`` envelopes that are ready now, without waiting (for batching)."""
        out: list[Envelope] = []
        while len(out) < max_items:
            item = self._pop()
            if item is None:
                break
            out.append(item)
        return out

    def _pop(self) -> Envelope | None:
        if self._discard:
            return None
        if self._replay:
            item = self._replay.popleft()
        elif self._queue:
            item = self._queue.popleft()
            if self._slow_since is not None and len(self._queue) < self._bus.subscriber_queue:
                self._slow_since = None
        else:
            return None
        self.delivered += 1
        return item

    @property
    def closed(self) -> bool:
        """Whether the subscription receives no more live envelopes."""
        return self._closed.is_set()

    @property
    def close_reason(self) -> str | None:
        """Why the bus closed it (None while open or when its owner closed it)."""
        return self._close_exc.reason if self._close_exc is not None else None

    async def wait_closed(self) -> None:
        """Wait until the subscription is closed (by the bus, :meth:`end` or :meth:`aclose`)."""
        await self._closed.wait()

    def end(self, reason: str) -> None:
        """Stop receiving live envelopes; what is queued is still delivered, then
        :class:`SubscriberClosed` with ``reason`` is raised. Used for graceful shutdown."""
        self._close(SubscriberClosed(reason), discard=False)

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends and anything still queued is discarded."""
        if not self._closed.is_set():
            self._stopped = True
            self._close(None, discard=True)
        else:
            self._stopped = True
            self._discard = True
            self._wakeup.set()

    # -- bus side ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Envelopes not yet read (replayed and live)."""
        return len(self._replay) + len(self._queue)

    def _offer(self, envelope: Envelope, now: float) -> bool:
        """Queue one envelope; False when the subscriber is too slow (the bus then closes it)."""
        bus = self._bus
        depth = len(self._queue)
        if depth >= bus.subscriber_queue:
            if self._slow_since is None:
                self._slow_since = now
            if depth >= bus.subscriber_queue_max or now - self._slow_since >= bus.slow_subscriber_s:
                return False
        self._queue.append(envelope)
        self._wakeup.set()
        return True

    def _close(self, exc: SubscriberClosed | None, *, discard: bool) -> int:
        """Close; returns how many queued envelopes were discarded."""
        if self._closed.is_set():
            return 0
        self._close_exc = exc
        dropped = 0
        if discard:
            dropped = self.pending
            self._discard = True
            self._replay.clear()
            self._queue.clear()
        self._closed.set()
        self._wakeup.set()
        self._bus._forget(self)
        return dropped


class EventBus:
    """Stamps, serialises (once) and fans out events; keeps a replay buffer for resume.

    Args:
        replay_size: Envelopes kept for resume (``Last-Event-ID``); 0 keeps none.
        subscriber_queue: Envelopes queued per subscriber before it counts as slow.
        slow_subscriber_s: A subscriber slow for this long is closed.
        clock: Monotonic clock in seconds (injected so tests can use virtual time).
        wall_clock: Wall clock in seconds since the epoch, for the ``ts`` stamp.
        subscriber_queue_max: Hard bound of a subscriber's queue (default
            ``4 * subscriber_queue``); reaching it closes the subscriber at once.
        daemon_id: Stamped into every event as ``daemon`` (fleet mode: which daemon produced
            it); None leaves the key out.
    """

    def __init__(
        self,
        replay_size: int,
        subscriber_queue: int,
        slow_subscriber_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        subscriber_queue_max: int | None = None,
        daemon_id: str | None = None,
    ) -> None:
        if replay_size < 0:
            raise ValueError(f"replay_size must be >= 0, got {replay_size}")
        if subscriber_queue < 1:
            raise ValueError(f"subscriber_queue must be >= 1, got {subscriber_queue}")
        if slow_subscriber_s <= 0:
            raise ValueError(f"slow_subscriber_s must be > 0, got {slow_subscriber_s}")
        hard = 4 * subscriber_queue if subscriber_queue_max is None else subscriber_queue_max
        if hard < subscriber_queue:
            raise ValueError(
                f"subscriber_queue_max ({hard}) must be >= subscriber_queue ({subscriber_queue})"
            )
        self.replay_size = replay_size
        self.subscriber_queue = subscriber_queue
        self.subscriber_queue_max = hard
        self.slow_subscriber_s = slow_subscriber_s
        self._clock = clock
        self._wall_clock = wall_clock
        self.daemon_id = daemon_id
        self._replay: deque[Envelope] = deque(maxlen=replay_size)
        self._subs: dict[Subscription, None] = {}  # insertion-ordered set
        self._seq = 0
        self._dropped = 0
        self._closed_slow = 0
        self._close_reason: str | None = None

    @property
    def last_seq(self) -> int:
        """``seq`` of the newest envelope (0 before the first)."""
        return self._seq

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    def publish(self, event: Event) -> Envelope:
        """Stamp, serialise and deliver one event; never blocks. Call it on the event loop.

        Args:
            event: The event.

        Returns:
            The envelope delivered to subscribers.

        Raises:
            ValueError: The event's type is malformed or its data is not JSON (e.g. NaN);
                no ``seq`` is used up.
            RuntimeError: The bus is closed.
        """
        if self._close_reason is not None:
            raise RuntimeError(f"event bus is closed ({self._close_reason})")
        if not EVENT_TYPE_PATTERN.fullmatch(event.type):
            raise ValueError(f"event type {event.type!r} is not dot-separated [A-Za-z0-9_-] words")
        seq = self._seq + 1
        event_id = uuid.uuid4().hex
        try:
            text = json.dumps(
                to_json_dict(
                    event,
                    seq=seq,
                    event_id=event_id,
                    ts=_utc_ts(self._wall_clock()),
                    daemon=self.daemon_id,
                ),
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"event {event.type} on stream {event.stream!r}: data is not JSON: {exc}"
            ) from None
        self._seq = seq
        envelope = Envelope(seq=seq, id=event_id, type=event.type, stream=event.stream, json=text)
        self._replay.append(envelope)
        now = self._clock()
        too_slow: list[Subscription] = []
        for sub in self._subs:
            if sub.filter.matches(envelope.type, envelope.stream) and not sub._offer(envelope, now):
                too_slow.append(sub)
        for sub in too_slow:
            behind = sub.pending + 1
            self._closed_slow += 1
            # The envelope that did not fit is dropped too.
            self._dropped += 1 + sub._close(
                SubscriberClosed(f"too slow: {behind} events behind", slow=True), discard=True
            )
        return envelope

    def subscribe(
        self, event_filter: EventFilter, last_seq: int | None = None, *, name: str = "subscriber"
    ) -> Subscription:
        """Open a subscription; with ``last_seq``, first replay buffered envelopes after it.

        Replay and live delivery meet without a gap or a duplicate: the replay snapshot is taken
        and the subscriber registered in one synchronous step.

        Args:
            event_filter: Which events to deliver.
            last_seq: The last ``seq`` the consumer saw (0 = from the start), or None for live
                events only. A ``last_seq`` beyond the newest ``seq`` (a client of an earlier
                daemon run) replays the whole buffer and marks the replay incomplete.
            name: Label for stats and logs.

        Returns:
            The subscription.

        Raises:
            ValueError: ``last_seq`` is negative.
            SubscriberClosed: The bus is closed.
        """
        if self._close_reason is not None:
            raise SubscriberClosed(self._close_reason)
        replay: list[Envelope] = []
        complete = True
        if last_seq is not None:
            if last_seq < 0:
                raise ValueError(f"last_seq must be >= 0, got {last_seq}")
            oldest = self._replay[0].seq if self._replay else self._seq + 1
            if last_seq > self._seq:
                complete = False
                start = 0
            else:
                complete = last_seq == self._seq or oldest <= last_seq + 1
                start = max(0, last_seq + 1 - oldest)
            replay = [
                env
                for env in itertools.islice(self._replay, start, None)
                if event_filter.matches(env.type, env.stream)
            ]
        sub = Subscription(self, name, event_filter, replay, complete, last_seq)
        self._subs[sub] = None
        return sub

    def _forget(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)

    def stats(self) -> BusStats:
        """Counters and per-subscriber state, for metrics."""
        return BusStats(
            subscribers=len(self._subs),
            published=self._seq,
            dropped=self._dropped,
            closed_slow=self._closed_slow,
            replay_buffered=len(self._replay),
            per_subscriber=tuple(
                SubscriberStats(
                    name=sub.name,
                    queue_depth=sub.queue_depth,
                    replay_pending=len(sub._replay),
                    slow=sub.queue_depth >= self.subscriber_queue,
                    delivered=sub.delivered,
                )
                for sub in self._subs
            ),
        )

    def replay_snapshot(self) -> Sequence[Envelope]:
        """The envelopes currently held for resume, oldest first."""
        return tuple(self._replay)

    async def aclose(self, reason: str = SHUTDOWN_REASON) -> None:
        """Close the bus: no more publishing; every subscription ends with ``reason`` after
        delivering what it already has queued."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        for sub in list(self._subs):
            sub._close(SubscriberClosed(reason), discard=False)


def _utc_ts(epoch_s: float) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z``: ``2024-05-01T12:00:01.234Z``."""
    stamp = datetime.fromtimestamp(epoch_s, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def event_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event, shipped as ``event.schema.json``."""
    text = resources.files("crossmodald.bus").joinpath("event.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
