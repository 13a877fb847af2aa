"""Fleet mode: several daemons, one source list, built on NATS JetStream key-value buckets.

No protocol of our own: JetStream stores everything and its per-key compare-and-set (the
"expected last subject sequence" of a key-value ``create``/``update``) and the buckets' age
limit (``max_age``, enforced by the server's clock) give the leases. Three buckets
(``[fleet] bucket`` = ``B``):

``B``           The shared source list: key = source name, value = its ``[[sources]]`` table
                as JSON. ``POST``/``DELETE /v1/sources`` on any daemon write it.
``B_leases``    Who runs what: key = source name, value = ``{"daemon", "instance", "state",
                "error", "since"}``. Its age limit is the lease TTL: a lease that is not
                renewed within ``lease_ttl_s`` disappears on the server.
``B_daemons``   Heartbeats: key = daemon id, value = ``{"daemon", "api", "load", ...}``, with the
                same age limit; the daemons present are the live ones.

Every ``scan_interval_s`` (±20 % jitter, so daemons do not move in step) a daemon writes its
heartbeat, renews its leases (``update`` with the revision it holds: it fails if anyone else
wrote the key meanwhile), reads the three buckets, stops the streams whose source
was removed, and takes free sources (``create``: only one daemon can create a missing key)
while it holds fewer than its fair share, ``ceil(sources / live daemons)`` capped by
``max_streams``, in random order (a source left free for three scans by daemons that cannot
take it goes to any daemon below its ``max_streams``). A daemon over its share for ``rebalance_after_s`` while
another holds less hands one source back per scan.

A daemon that stops cleanly stops its streams and then deletes its leases and its heartbeat
(others take the sources at their next scan); one that dies (``kill -9``) stops renewing, and
the server drops its leases ``lease_ttl_s`` after their last renewal.

Split-brain rule: a lease is this daemon's until ``lease_ttl_s`` after the send time of its last
renewal that the server acknowledged (the server's expiry is no earlier than that). When NATS
is away the daemon keeps its streams running until ``lease_ttl_s - margin`` after that point
(margin: a fifth of the TTL, at least 0.5 s) and then stops them, before any other daemon can
have taken the lease; so at most one daemon runs a source at a time (up to the clock-rate
difference of two hosts over one TTL), and for a moment none may. The daemon reconnects with
exponential backoff and jitter and takes sources again as any daemon does. Nothing here
raises into the daemon: NATS errors are logged and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr, ValidationError

from crossmodald.ingest.base import SourceError
from crossmodald.ingest.registry import SourceConfigBase, SourceRegistry
from crossmodald.redact import redact_text
from crossmodald.service.fleet_config import FleetConfig
from crossmodald.service.streams import StreamState, redact_config

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

#: Suffixes of the leases and heartbeat buckets (after ``[fleet] bucket``).
LEASES_SUFFIX = "_leases"
DAEMONS_SUFFIX = "_daemons"
#: Reconnect backoff: first wait, longest wait (seconds); each wait is jittered by ±20 %.
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0
#: Daemons no longer alive that GET /v1/fleet still lists (the most recently seen).
MAX_GONE_DAEMONS = 64


class FleetMember(Protocol):
    """What the fleet needs from the daemon (the composition root, which provides it)."""

    stream_states: dict[str, StreamState]

    @property
    def source_types(self) -> SourceRegistry: ...

    @property
    def stopping(self) -> bool: ...

    def start_configured(self, config: SourceConfigBase, origin: str) -> asyncio.Task[None]: ...

    async def stop_stream(self, name: str) -> None: ...

    async def reload_from_file(self) -> Any: ...

    def sources(self) -> list[dict[str, Any]]: ...

    async def remove_source(self, name: str) -> dict[str, Any]: ...


@dataclass(slots=True)
class _Lease:
    """A lease this daemon holds, and its stream."""

    config: SourceConfigBase
    #: The revision of the source's entry in the list that the stream was started from.
    source_revision: int
    revision: int
    #: Monotonic time the last acknowledged write of the lease was sent (see the module doc).
    confirmed_mono: float
    since: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None
    #: Being handed back: the stream stops, then the lease is deleted.
    releasing: bool = False


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease as the bucket shows it."""

    daemon: str
    state: str
    error: str | None
    since: float | None
    revision: int


@dataclass(slots=True)
class Snapshot:
    """The three buckets as read at one scan."""

    sources: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    leases: dict[str, LeaseInfo] = field(default_factory=dict)
    daemons: dict[str, dict[str, Any]] = field(default_factory=dict)
    read_at: float = 0.0


def source_table(config: SourceConfigBase) -> dict[str, Any]:
    """A source config as the JSON table that validates back to it (secrets in the clear:
    the daemon that leases it must be able to open it; see docs/security.md)."""
    table: dict[str, Any] = _reveal(config.model_dump(mode="json"), config.model_dump())
    return table


def _reveal(dumped: Any, python: Any) -> Any:
    if isinstance(python, SecretStr):
        return python.get_secret_value()
    if isinstance(dumped, dict) and isinstance(python, dict):
        return {key: _reveal(value, python.get(key)) for key, value in dumped.items()}
    if isinstance(dumped, list) and isinstance(python, list | tuple) and len(python) == len(dumped):
        return [_reveal(d, p) for d, p in zip(dumped, python, strict=True)]
    return dumped


class Backoff:
    """Exponential backoff with ±20 % jitter (so that a fleet does not reconnect in step)."""

    def __init__(self, rng: random.Random, first_s: float = BACKOFF_FIRST_S) -> None:
        self._rng = rng
        self._first_s = first_s
        self._next_s = first_s

    def reset(self) -> None:
        self._next_s = self._first_s

    def next(self) -> float:
        """The next wait, in seconds."""
        wait = self._next_s * self._rng.uniform(0.8, 1.2)
        self._next_s = min(BACKOFF_MAX_S, self._next_s * 2)
        return wait


class Fleet:
    """One daemon's membership in a fleet: leases, heartbeats and the shared source list.

    It is the ``/v1/sources`` control in fleet mode (``POST``/``DELETE`` write the shared
    list) and the view behind ``GET /v1/fleet``.

    Args:
        config: The ``[fleet]`` table.
        member: The daemon (starts and stops the leased streams).
        api_url: How others reach this daemon's API (shown in ``/v1/fleet``).
        rng: Randomness for jitter and the order free sources are tried in.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        config: FleetConfig,
        member: FleetMember,
        *,
        api_url: Callable[[], str | None] = lambda: None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("nats") is None:
            raise ValueError(
                "[fleet] needs the NATS client nats-py: pip install 'crossmodald[fleet]'"
            )
        self.config = config
        self.daemon_id = config.daemon_id
        #: Tells this process apart from an earlier one of the same daemon id.
        self.instance = uuid.uuid4().hex
        self._member = member
        self._api_url = api_url
        self._rng = rng or random.Random()
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._snapshot = Snapshot()
        #: Daemons seen alive before that are no longer (GET /v1/fleet lists them dead).
        self._gone: dict[str, dict[str, Any]] = {}
        self._last_daemons: dict[str, dict[str, Any]] = {}
        self._nc: Client | None = None
        self._sources_kv: KeyValue | None = None
        self._leases_kv: KeyValue | None = None
        self._daemons_kv: KeyValue | None = None
        #: The TTL the leases bucket really has (it may predate this daemon's config).
        self._ttl_s = config.lease_ttl_s
        #: Set once the daemon stops: no more sources are taken (leases are still renewed).
        self._leaving = False
        #: Set by aclose: the scan loop ends.
        self._closing = asyncio.Event()
        self._run_done = asyncio.Event()
        self._run_done.set()  # cleared while run() runs
        self._background: set[asyncio.Task[object]] = set()
        self._joined_mono: float | None = None
        self._over_since: float | None = None
        #: Free sources seen at the last scans, with when they were first seen free.
        self._free_since: dict[str, float] = {}
        self._invalid_logged: set[tuple[str, int]] = set()
        self.started_at = time.time()
        #: Counters for /v1/fleet.
        self.acquired = 0
        self.lost = 0
        self.released = 0
        self.reconnects = 0

    # -- running -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up and the buckets are open."""
        return self._nc is not None and self._nc.is_connected and self._leases_kv is not None

    @property
    def _margin_s(self) -> float:
        return max(0.5, self._ttl_s / 5)

    async def run(self) -> None:
        """Stay in the fleet until :meth:`aclose`: connect (with backoff), scan, guard."""
        self._run_done.clear()
        guard = asyncio.create_task(self._guard(), name="fleet:guard")
        backoff = Backoff(self._rng)
        try:
            while not self._closing.is_set():
                try:
                    if self._nc is None:
                        await self._connect()
                    await self._session(backoff)
                except Exception as exc:  # a supervisor loop: every failure is logged, retried
                    log.warning("fleet: NATS %s: %s", self._where(), _describe(exc))
                if self._closing.is_set():
                    break  # aclose still needs the connection to release the leases
                await self._disconnect()
                self.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), backoff.next())
        finally:
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard
            self._run_done.set()

    def _where(self) -> str:
        return redact_text(self.config.nats_url)

    async def _connect(self) -> None:
        import nats
        from nats.js.api import KeyValueConfig, StorageType

        cfg = self.config
        token = cfg.token.get_secret_value() if cfg.token is not None else None
        # Our own reconnect loop (run), so that a lost connection ends the session, the
        # buckets are opened again and the backoff is ours.
        self._nc = await nats.connect(
            servers=cfg.servers,
            token=token,
            name=f"crossmodald {self.daemon_id}",
            allow_reconnect=False,
            connect_timeout=max(1, math.ceil(cfg.connect_timeout_s)),
            ping_interval=max(1, math.ceil(self._ttl_s / 2)),
            max_outstanding_pings=2,
        )
        js = self._nc.jetstream(timeout=cfg.connect_timeout_s)

        async def bucket(name: str, ttl_s: float | None) -> KeyValue:
            from nats.js.errors import BucketNotFoundError

            try:
                return await js.key_value(name)
            except BucketNotFoundError:
                return await js.create_key_value(
                    KeyValueConfig(bucket=name, history=1, ttl=ttl_s, storage=StorageType.FILE)
                )

        self._sources_kv = await bucket(cfg.bucket, None)
        self._daemons_kv = await bucket(cfg.bucket + DAEMONS_SUFFIX, cfg.lease_ttl_s)
        leases = await bucket(cfg.bucket + LEASES_SUFFIX, cfg.lease_ttl_s)
        ttl = (await leases.status()).ttl
        if ttl and abs(ttl - cfg.lease_ttl_s) > 1e-3:
            log.warning(
                "fleet: bucket %s has a lease TTL of %.1f s (created so), not lease_ttl_s = %.1f;"
                " using %.1f s",
                cfg.bucket + LEASES_SUFFIX,
                ttl,
                cfg.lease_ttl_s,
                ttl,
            )
        self._ttl_s = ttl or cfg.lease_ttl_s
        self._leases_kv = leases
        log.info("fleet: %s joined via %s (bucket %s)", self.daemon_id, self._where(), cfg.bucket)

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        self._sources_kv = self._leases_kv = self._daemons_kv = None
        self._joined_mono = None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), self.config.connect_timeout_s)

    async def _session(self, backoff: Backoff) -> None:
        """Scan until the connection is lost or the fleet closes."""
        failures = 0
        while not self._closing.is_set():
            nc = self._nc
            if nc is None or not nc.is_connected:
                raise ConnectionError("connection lost")
            try:
                await self._scan()
                failures = 0
                backoff.reset()
            except (TimeoutError, OSError) as exc:
                failures += 1
                log.warning("fleet: scan failed (%d in a row): %s", failures, _describe(exc))
                if failures >= 3:
                    raise
            wait = self.config.scan_interval_s * self._rng.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), wait)

    async def _guard(self) -> None:
        """Stop the streams whose leases could not be renewed in time (split-brain rule)."""
        while True:
            now = self._clock()
            for name, lease in list(self._leases.items()):
                if now - lease.confirmed_mono >= self._ttl_s - self._margin_s:
                    log.warning(
                        "fleet: lease on %s not renewed for %.1f s: stopping the stream before "
                        "it can expire (another daemon may take it)",
                        name,
                        now - lease.confirmed_mono,
                    )
                    self._leases.pop(name, None)
                    self.lost += 1
                    self._spawn(self._stop(name, lease, release=False))
            await asyncio.sleep(min(0.25, self._margin_s / 2))

    # -- one scan ------------------------------------------------------------------------

    async def _scan(self) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._leases_kv is not None
        assert self._daemons_kv is not None
        # The heartbeat first, then every lease: a dead daemon's heartbeat then expires just
        # before its leases, so the others count one daemon fewer when they take its sources.
        await self._daemons_kv.put(self.daemon_id, self._heartbeat())
        if self._joined_mono is None:
            self._joined_mono = self._clock()
        for name, lease in list(self._leases.items()):
            sent = self._clock()
            try:
                lease.revision = await self._leases_kv.update(
                    name, self._lease_value(name, lease), last=lease.revision
                )
                lease.confirmed_mono = sent
                if self._leases.get(name) is not lease:
                    # The guard gave it up while the renewal was on its way: the stream is
                    # stopping, so give the lease back rather than leave it to expire.
                    self._spawn(self._delete_lease(name, lease.revision))
            except KeyWrongLastSequenceError:
                if self._leases.get(name) is lease:
                    log.warning("fleet: lost the lease on %s (expired or taken)", name)
                    del self._leases[name]
                    self.lost += 1
                    self._spawn(self._stop(name, lease, release=False))
        snapshot = await self._read()
        self._snapshot = snapshot
        self._note_gone(snapshot)
        for name, lease in list(self._leases.items()):
            if lease.releasing:
                continue
            entry = snapshot.sources.get(name)
            if entry is None:
                log.info("fleet: %s was removed from the list: stopping it", name)
                self._hand_back(name, lease)
            elif entry[1] != lease.source_revision:
                # Removed and added again (maybe changed) between two scans: start it anew.
                log.info("fleet: %s was replaced in the list: handing it back", name)
                self._hand_back(name, lease)
        if not self._leaving and not self._member.stopping:
            await self._balance(snapshot)

    async def _read(self) -> Snapshot:
        assert self._sources_kv is not None
        assert self._leases_kv is not None
        assert self._daemons_kv is not None
        snapshot = Snapshot(read_at=time.time())
        for key, value, revision in await _entries(self._sources_kv):
            table = _json_object(value)
            if table is not None:
                snapshot.sources[key] = (table, revision)
        for key, value, revision in await _entries(self._leases_kv):
            lease = _json_object(value) or {}
            snapshot.leases[key] = LeaseInfo(
                daemon=str(lease.get("daemon", "?")),
                state=str(lease.get("state", "running")),
                error=lease.get("error") if isinstance(lease.get("error"), str) else None,
                since=lease.get("since") if isinstance(lease.get("since"), int | float) else None,
                revision=revision,
            )
        for key, value, _revision in await _entries(self._daemons_kv):
            snapshot.daemons[key] = _json_object(value) or {"daemon": key}
        return snapshot

    def _fair_share(self, snapshot: Snapshot) -> int:
        alive = len(snapshot.daemons.keys() | {self.daemon_id})
        return min(self.config.max_streams, math.ceil(len(snapshot.sources) / alive))

    async def _balance(self, snapshot: Snapshot) -> None:
        now = self._clock()
        # Wait one scan or two after joining, so daemons that start together see each other
        # before anyone takes everything.
        if self._joined_mono is None or now - self._joined_mono < 2 * self.config.scan_interval_s:
            return
        share = self._fair_share(snapshot)
        held = [name for name, lease in self._leases.items() if not lease.releasing]
        free = [
            name
            for name in snapshot.sources
            if name not in snapshot.leases and name not in self._leases
        ]
        self._free_since = {name: self._free_since.get(name, now) for name in free}
        # Left over: free for three scans, because the daemons under their share cannot
        # take it (their max_streams, or the source's type is not installed there).
        leftovers = [
            name
            for name, since in self._free_since.items()
            if now - since >= 3 * self.config.scan_interval_s
        ]
        if len(held) < share and free:
            self._over_since = None
            self._rng.shuffle(free)
            for name in free[: share - len(held)]:
                if self._leaving or self._member.stopping:
                    return
                await self._acquire(name, *snapshot.sources[name])
            return
        if leftovers and len(held) < self.config.max_streams:
            name = self._rng.choice(leftovers)
            await self._acquire(name, *snapshot.sources[name])
            return
        under = [
            daemon
            for daemon, info in snapshot.daemons.items()
            if daemon != self.daemon_id
            and _int(info.get("load")) < min(share, _int(info.get("max_streams"), share))
        ]
        if len(held) > share and under and self.config.rebalance:
            if self._over_since is None:
                self._over_since = now
            elif now - self._over_since >= self.config.rebalance_after_s:
                name = self._rng.choice(held)
                log.info(
                    "fleet: holding %d sources, fair share %d: handing %s back",
                    len(held),
                    share,
                    name,
                )
                self._hand_back(name, self._leases[name])
        else:
            self._over_since = None

    async def _acquire(self, name: str, table: dict[str, Any], revision: int) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._leases_kv is not None
        try:
            config = self._member.source_types.validate_table(table)
        except ValidationError as exc:
            if (name, revision) not in self._invalid_logged:
                self._invalid_logged.add((name, revision))
                log.error("fleet: source %s in the list is invalid here: %s", name, exc)
            return
        if config.name != name:
            log.error("fleet: source key %s holds a table named %r: skipped", name, config.name)
            return
        existing = self._member.stream_states.get(name)
        if existing is not None and existing.task is not None and not existing.task.done():
            return  # still stopping here (handed back a moment ago)
        lease = _Lease(
            config=config, source_revision=revision, revision=0, confirmed_mono=self._clock()
        )
        sent = self._clock()
        try:
            lease.revision = await self._leases_kv.create(name, self._lease_value(name, lease))
        except KeyWrongLastSequenceError:
            return  # another daemon was quicker
        lease.confirmed_mono = sent
        try:
            lease.task = self._member.start_configured(config, "fleet")
        except (RuntimeError, ValueError) as exc:
            log.warning("fleet: cannot start %s here: %s", name, exc)
            await self._delete_lease(name, lease.revision)
            return
        self._leases[name] = lease
        self.acquired += 1
        log.info("fleet: %s took %s", self.daemon_id, name)

    def _hand_back(self, name: str, lease: _Lease) -> None:
        lease.releasing = True
        self._spawn(self._stop(name, lease, release=True))

    async def _stop(self, name: str, lease: _Lease, *, release: bool) -> None:
        """Stop the stream of a lease; with ``release``, then delete the lease."""
        with contextlib.suppress(KeyError):
            await self._member.stop_stream(name)
        if release and self._leases.get(name) is lease:
            del self._leases[name]
            if await self._delete_lease(name, lease.revision):
                self.released += 1

    async def _delete_lease(self, name: str, revision: int) -> bool:
        kv = self._leases_kv
        if kv is None:
            return False
        try:
            # Only if it is still ours (the revision we last wrote).
            await kv.delete(name, last=revision)
        except Exception as exc:  # the lease then expires by itself
            log.info("fleet: could not release %s (%s); it expires by itself", name, exc)
            return False
        return True

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coro, name="fleet:stop")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _lease_value(self, name: str, lease: _Lease) -> bytes:
        state = self._member.stream_states.get(name)
        value = {
            "daemon": self.daemon_id,
            "instance": self.instance,
            "state": state.state if state is not None else "starting",
            "error": redact_text(state.error) if state is not None and state.error else None,
            "since": lease.since,
        }
        return json.dumps(value).encode()

    def _heartbeat(self) -> bytes:
        streams = sorted(self._leases)
        value = {
            "daemon": self.daemon_id,
            "instance": self.instance,
            "api": self._api_url(),
            "load": len(streams),
            "max_streams": self.config.max_streams,
            "streams": streams,
            "started_at": self.started_at,
            "ts": time.time(),
        }
        return json.dumps(value).encode()

    def _note_gone(self, snapshot: Snapshot) -> None:
        for daemon in snapshot.daemons:
            self._gone.pop(daemon, None)
        for daemon, info in self._last_daemons.items():
            if daemon not in snapshot.daemons:
                self._gone[daemon] = {**info, "gone_at": time.time()}
        while len(self._gone) > MAX_GONE_DAEMONS:
            del self._gone[next(iter(self._gone))]
        self._last_daemons = dict(snapshot.daemons)

    # -- stopping ------------------------------------------------------------------------

    def begin_close(self) -> None:
        """Take no more sources (the daemon is stopping; its streams stop next, while their
        leases are still renewed)."""
        self._leaving = True

    async def aclose(self) -> None:
        """Leave the fleet: after the daemon stopped the streams, delete the leases and the
        heartbeat (others take the sources at their next scan) and close the connection."""
        self._leaving = True
        self._closing.set()
        if self._background:
            await asyncio.wait(list(self._background))
        await self._run_done.wait()
        leases, self._leases = dict(self._leases), {}
        if self.connected:
            for name, lease in leases.items():
                if await self._delete_lease(name, lease.revision):
                    self.released += 1
            if self._daemons_kv is not None:
                with contextlib.suppress(Exception):
                    await self._daemons_kv.delete(self.daemon_id)
        await self._disconnect()

    # -- the /v1/sources control (fleet mode) -----------------------------------------

    @property
    def source_types(self) -> SourceRegistry:
        return self._member.source_types

    @property
    def stopping(self) -> bool:
        return self._member.stopping

    async def reload_from_file(self) -> Any:
        return await self._member.reload_from_file()

    def sources(self) -> list[dict[str, Any]]:
        """The shared list as of the last scan, each source with its leaseholder and state;
        then this daemon's own streams that are not the fleet's (WHIP publishers)."""
        return [
            *self._shared_sources(),
            *(entry for entry in self._member.sources() if entry.get("origin") != "fleet"),
        ]

    def _shared_sources(self) -> list[dict[str, Any]]:
        snapshot = self._snapshot
        out = []
        for name, (table, _revision) in sorted(snapshot.sources.items()):
            lease = snapshot.leases.get(name)
            out.append(
                {
                    "name": name,
                    "type": table.get("type"),
                    "origin": "fleet",
                    "state": lease.state if lease is not None else "unassigned",
                    "error": lease.error if lease is not None else None,
                    "daemon": lease.daemon if lease is not None else None,
                    "config": redact_config(table),
                }
            )
        return out

    async def start_source(self, config: SourceConfigBase) -> asyncio.Task[None] | None:
        """Add a source to the shared list (the daemon that leases it runs it).

        Raises:
            RuntimeError: NATS cannot be reached.
            ValueError: The list already has a source of that name.
            SourceError: The name cannot be a key-value key.
        """
        from nats.js.errors import InvalidKeyError, KeyWrongLastSequenceError

        kv = self._sources_kv
        if kv is None or not self.connected:
            raise RuntimeError("the fleet's NATS server cannot be reached; try again")
        table = source_table(config)
        try:
            revision = await kv.create(config.name, json.dumps(table).encode())
        except InvalidKeyError:
            raise SourceError(
                f"the name {config.name!r} cannot be a key of the fleet's list "
                "(it must not end with '.')"
            ) from None
        except KeyWrongLastSequenceError:
            raise ValueError(f"the fleet already has a source named {config.name!r}") from None
        except (TimeoutError, OSError) as exc:
            raise RuntimeError(f"the fleet's NATS server did not answer: {exc}") from None
        self._snapshot.sources[config.name] = (table, revision)
        return None

    async def remove_source(self, name: str) -> dict[str, Any]:
        """Take a source off the shared list (its leaseholder stops it at its next scan).

        Raises:
            KeyError: The list has no source of that name.
            RuntimeError: NATS cannot be reached.
        """
        from nats.js.errors import InvalidKeyError, KeyNotFoundError

        kv = self._sources_kv
        if kv is None or not self.connected:
            raise RuntimeError("the fleet's NATS server cannot be reached; try again")
        try:
            entry = await kv.get(name)
        except (KeyNotFoundError, InvalidKeyError):
            local = self._member.stream_states.get(name)
            if local is not None and local.origin != "fleet":
                return await self._member.remove_source(name)  # a publisher, not the fleet's
            raise KeyError(name) from None
        except (TimeoutError, OSError) as exc:
            raise RuntimeError(f"the fleet's NATS server did not answer: {exc}") from None
        await kv.delete(name, last=entry.revision)
        table = _json_object(entry.value) or {}
        self._snapshot.sources.pop(name, None)
        lease = self._snapshot.leases.get(name)
        return {
            "name": name,
            "type": table.get("type"),
            "origin": "fleet",
            "state": lease.state if lease is not None else "unassigned",
            "error": lease.error if lease is not None else None,
            "daemon": lease.daemon if lease is not None else None,
            "config": redact_config(table),
        }

    # -- GET /v1/fleet -----------------------------------------------------------------

    def stats(self) -> dict[str, float | int | bool]:
        """Figures for ``/metrics`` (see docs/metrics.md)."""
        snapshot = self._snapshot
        return {
            "connected": self.connected,
            "held": len(self._leases),
            "daemons": len(snapshot.daemons),
            "sources": len(snapshot.sources),
            "acquired": self.acquired,
            "lost": self.lost,
            "released": self.released,
            "reconnects": self.reconnects,
        }

    def fleet_status(self) -> dict[str, Any]:
        """The daemons (alive, load) and who runs which source, as of the last scan."""
        snapshot = self._snapshot
        daemons = []
        for daemon, info in sorted(snapshot.daemons.items()):
            daemons.append(_daemon_entry(daemon, info, alive=True, me=daemon == self.daemon_id))
        for daemon, info in sorted(self._gone.items()):
            if daemon not in snapshot.daemons:
                daemons.append(_daemon_entry(daemon, info, alive=False, me=False))
        return {
            "daemon": self.daemon_id,
            "connected": self.connected,
            "bucket": self.config.bucket,
            "lease_ttl_s": self._ttl_s,
            "scanned_at": snapshot.read_at or None,
            "fair_share": self._fair_share(snapshot),
            "daemons": daemons,
            "sources": [
                {k: v for k, v in entry.items() if k != "config"}
                for entry in self._shared_sources()
            ],
            "held": sorted(self._leases),
            "counters": {
                "acquired": self.acquired,
                "lost": self.lost,
                "released": self.released,
                "reconnects": self.reconnects,
            },
        }


def _daemon_entry(daemon: str, info: dict[str, Any], *, alive: bool, me: bool) -> dict[str, Any]:
    streams = info.get("streams")
    return {
        "daemon": daemon,
        "alive": alive,
        "self": me,
        "api": info.get("api"),
        "load": _int(info.get("load")) if alive else 0,
        "max_streams": info.get("max_streams"),
        "streams": list(streams) if isinstance(streams, list) and alive else [],
        "started_at": info.get("started_at"),
        "last_seen": info.get("ts"),
    }


async def _entries(kv: KeyValue) -> list[tuple[str, bytes, int]]:
    """Every live key of a bucket with its value and revision (deleted keys left out)."""
    from nats.js.kv import KV_DEL, KV_PURGE

    out: list[tuple[str, bytes, int]] = []
    watcher = await kv.watchall()
    try:
        async for entry in watcher:
            if entry is None:  # the initial values are all delivered
                break
            if entry.operation in (KV_DEL, KV_PURGE) or entry.value is None:
                continue
            out.append((entry.key, entry.value, entry.revision or 0))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return out


def _json_object(value: bytes | None) -> dict[str, Any] | None:
    try:
        data = json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _describe(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
