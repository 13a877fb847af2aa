"""The rtsp source: an IP camera or RTSP server, pulled with reconnect and timed by RTCP.

Each connection is a :class:`~crossmodald.ingest.media.MediaSource` over FFmpeg's RTSP client
(PyAV): RTP over the RTSP TCP connection (interleaved, the default) or over UDP, with FFmpeg's
depacketizers and decoders and the media source's timestamp path (clock/timeline.py).

Timing. FFmpeg's RTSP demuxer maps each track's RTP timestamps through that track's latest
RTCP Sender Report onto one timeline for all tracks, the sender's NTP clock (its packets carry
the report as ``rtcp_sr`` side data, and ``start_time_realtime`` gives the sender's wall time of
PTS 0). Before a track's first report its timestamps rest on the RTP-Info of the PLAY reply, or
on its first packet, which need not agree with the other track. So each connection holds its
items back (decoded, dropped: :class:`~crossmodald.ingest.media.StartGate`) until every track
has had a report, then delivers them on clock ``rtcp``: audio and video aligned on the sender's
capture clock. A camera that sends no reports within ``rtcp_wait_s`` is timed by its RTP
timestamps alone (clock ``pts``), and a ``timing`` fault says so.

Reconnect. A connection that fails (refused, timed out, the server ended the stream, no data
for ``timeout_s``) is reported as a ``stream_lost`` fault and made again at once, then with
exponential backoff (``stream_retry`` on each failed try, ``stream_back`` once it delivers
again); the stream fails only after ``reconnect_limit`` retries (tries after a wait) in a row
have failed (0: never). The media
timeline stays monotonic over a reconnect: on clock ``rtcp`` it is the sender's clock (a gap as
long as the outage), otherwise the new connection starts where the old one ended plus the time
it was away. A failure to connect at start is retried the same way.

Credentials in the URL (``rtsp://user:password@camera/...``) go to FFmpeg only; every message,
fault, log line and status shows the URL through :func:`crossmodald.redact.redact_url`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal
from urllib.parse import quote

import av
import av.container
from pydantic import Field, field_validator, model_validator

from crossmodald.bus.events import JsonValue
from crossmodald.clock.timeline import ticks_to_ns
from crossmodald.ingest.base import Backoff, SourceError, SourceFault
from crossmodald.ingest.media import MediaSource, MediaSourceConfig
from crossmodald.ingest.pacing import MonotonicPacer, Pacer
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.media import AudioChunk, ClockKind, MediaItem, StreamInfo
from crossmodald.redact import redact_url
from crossmodald.secrets import Secret
from crossmodald.status import MetricSpec

log = logging.getLogger(__name__)

_SCHEMES = ("rtsp://", "rtsps://")
#: FFmpeg's microseconds.
_NS_PER_US = 1000


class RtspSourceConfig(SourceConfigBase):
    """An RTSP camera or server, pulled with reconnect; audio and video timed by RTCP."""

    type: Literal["rtsp"]
    #: rtsp:// or rtsps:// URL; credentials as rtsp://user:password@host/path (never shown).
    url: str = Field(min_length=1)
    #: RTP over the RTSP connection ("tcp", interleaved: works through NAT and firewalls) or
    #: over separate UDP ports ("udp": less latency, packets may be lost).
    transport: Literal["tcp", "udp"] = "tcp"
    #: Seconds to wait for the camera to answer or deliver data before the connection counts
    #: as lost.
    timeout_s: float = Field(10.0, gt=0, le=600)
    #: Seconds each connection waits for an RTCP sender report on every track before it times
    #: them by RTP timestamps alone (0: never wait, clock "pts").
    rtcp_wait_s: float = Field(10.0, ge=0, le=600)
    #: First wait before reconnecting; doubles up to reconnect_max_s.
    reconnect_initial_s: float = Field(0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    #: Failed retries in a row (tries after a wait; the first try after a loss is at once)
    #: before the stream fails (0: retry for ever).
    reconnect_limit: int = Field(0, ge=0, le=10**9)
    #: Shift the audio timeline by this many ms (positive = audio earlier, i.e. audio leads).
    audio_shift_ms: float = Field(0.0, ge=-60_000, le=60_000)
    #: User name for the camera, when it is not in the URL.
    username: str | None = Field(None, min_length=1)
    #: Its password: a string or a secret reference ({env = NAME}, {file = PATH},
    #: {credential = NAME}), so it need not be written into the config file.
    password: Secret | None = None
    #: More FFmpeg RTSP options, e.g. {buffer_size = "1048576"} (rtsp_transport and timeout
    #: come from the keys above).
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _rtsp_url(cls, value: str) -> str:
        if not value.lower().startswith(_SCHEMES):
            raise ValueError(
                f"must be an rtsp:// or rtsps:// URL, got {redact_url(value)!r} "
                '(files and other URLs: type = "media")'
            )
        return value

    @model_validator(mode="after")
    def _checks(self) -> RtspSourceConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must not be below reconnect_initial_s")
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username")
        if self.username is not None and _userinfo(self.url):
            raise ValueError("credentials go either in the url or in username/password, not both")
        taken = sorted({"rtsp_transport", "timeout"} & set(self.options))
        if taken:
            raise ValueError(
                f"options: {', '.join(taken)} come from transport and timeout_s, not options"
            )
        return self


def _userinfo(url: str) -> str:
    """The ``user:password`` part of an RTSP URL ("" when it has none)."""
    rest = url.split("://", 1)[1]
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    return authority.rpartition("@")[0]


def connect_url(config: RtspSourceConfig) -> str:
    """The URL FFmpeg is given: ``url`` with ``username``/``password`` put in (percent-encoded)."""
    if config.username is None:
        return config.url
    scheme, rest = config.url.split("://", 1)
    userinfo = quote(config.username, safe="")
    if config.password is not None:
        userinfo += ":" + quote(config.password.get_secret_value(), safe="")
    return f"{scheme}://{userinfo}@{rest}"


@dataclasses.dataclass(slots=True)
class RtspStats:
    """Counters of an :class:`RtspSource` across its connections."""

    connects: int = 0
    #: Connections lost after they delivered (or while waiting to), and failed connect tries.
    losses: int = 0
    failed_connects: int = 0
    #: "rtcp", "pts", or "waiting" (for the first report) on the current connection.
    timing: str = "waiting"
    connected: bool = False
    #: Seconds from losing the stream to the next connection (latest): connected again ...
    last_reconnect_s: float | None = None
    #: ... and to its first item (after the wait for every track's sender report).
    last_outage_s: float | None = None
    last_error: str = ""


class _Timing:
    """Where each connection's items land on the stream's one media timeline.

    The first connection's media time 0 is the sender's wall time ``origin_ns`` of its PTS 0
    (clock rtcp) or its own PTS 0 (clock pts); later connections continue on the sender's clock
    when they can, else from where the previous one ended plus the time away.
    """

    def __init__(self) -> None:
        self.origin_ns: int | None = None
        self.last_end_ns: int | None = None
        self.last_seen_ns = 0  # monotonic time of the last delivered item

    def seen(self, end_ns: int) -> None:
        if self.last_end_ns is None or end_ns > self.last_end_ns:
            self.last_end_ns = end_ns
        self.last_seen_ns = time.monotonic_ns()

    def continue_offset(self, first_ns: int) -> int:
        """The offset that puts ``first_ns`` after the last item, by the time away."""
        if self.last_end_ns is None:
            return 0
        away_ns = max(0, time.monotonic_ns() - self.last_seen_ns)
        return self.last_end_ns + away_ns - first_ns

    def sender_offset(self, sender_start_ns: int, first_ns: int) -> int:
        """The offset that puts the connection on the sender's clock (see the class)."""
        if self.origin_ns is None:
            self.origin_ns = sender_start_ns - self.continue_offset(first_ns)
        offset = sender_start_ns - self.origin_ns
        if self.last_end_ns is not None and first_ns + offset <= self.last_end_ns:
            # The sender's clock went back (a camera that lost its time): continue instead.
            offset = self.continue_offset(first_ns)
            self.origin_ns = sender_start_ns - offset
        return offset


class _RtcpGate:
    """One connection's :class:`~crossmodald.ingest.media.StartGate` (worker thread).

    Holds items back until every track has had a sender report, or ``wait_s`` has passed.
    FFmpeg attaches a report to the next packet of its track, and that packet may still carry
    the old timestamps (the H.264 parser hands packets on one behind), so a track counts as
    mapped from its next packet on: the gate admits a packet of a track whose report came on
    an earlier packet, once every track has had one.
    """

    def __init__(self, timing: _Timing, wait_s: float) -> None:
        self.timing = timing
        self.deadline = time.monotonic() + wait_s
        self.wait_s = wait_s
        self.reported: set[int] = set()
        self.clock: ClockKind | None = None

    def admit(
        self,
        packet: av.Packet[Any],
        container: av.container.InputContainer,
        tracks: frozenset[int],
    ) -> tuple[int, ClockKind] | None:
        index = packet.stream_index
        mapped = index in self.reported
        if packet.has_sidedata("rtcp_sr"):
            self.reported.add(index)
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None or packet.time_base is None:
            return None
        first_ns = ticks_to_ns(pts, packet.time_base, "floor")
        if self.wait_s == 0:
            self.clock = ClockKind.PTS
            return self.timing.continue_offset(first_ns), self.clock
        sender_start = container.start_time_realtime
        if mapped and tracks <= self.reported and sender_start is not None:
            self.clock = ClockKind.RTCP
            return self.timing.sender_offset(sender_start * _NS_PER_US, first_ns), self.clock
        if time.monotonic() >= self.deadline:
            self.clock = ClockKind.PTS
            return self.timing.continue_offset(first_ns), self.clock
        return None


class RtspSource:
    """Frames and audio from an RTSP URL, reconnecting when the stream is lost.

    Args:
        config: The URL, transport, timeouts, RTCP wait and reconnect backoff.
        pacer: The clock ``arrival_ns`` is read on.

    Attributes:
        stats: Connections, losses, timing and the latest outage.
        display: The URL as messages show it (credentials hidden).
    """

    def __init__(self, config: RtspSourceConfig, pacer: Pacer | None = None) -> None:
        self.name = config.name
        self.config = config
        self.pacer: Pacer = pacer if pacer is not None else MonotonicPacer()
        self.display = redact_url(config.url)
        self.stats = RtspStats()
        self._timing = _Timing()
        self._backoff = Backoff(
            config.reconnect_initial_s, config.reconnect_max_s, config.reconnect_limit
        )
        self._conn: MediaSource | None = None
        self._gate: _RtcpGate | None = None
        self._info: StreamInfo | None = None
        self._closed = False

    def _media_config(self) -> MediaSourceConfig:
        cfg = self.config
        options = {**cfg.options, "rtsp_transport": cfg.transport}
        return MediaSourceConfig(
            type="media",
            name=cfg.name,
            url=connect_url(cfg),
            realtime=False,  # a camera comes at its own pace: no pacing (live=True below)
            options=options,
            timeout_s=cfg.timeout_s,
            audio_shift_ms=cfg.audio_shift_ms,
        )

    async def _connect(self) -> MediaSource:
        gate = _RtcpGate(self._timing, self.config.rtcp_wait_s)
        conn = MediaSource(self._media_config(), self.pacer, gate=gate, live=True)
        self.stats.connects += 1
        try:
            info = await conn.open()
        except BaseException:
            await conn.aclose()
            raise
        if self._info is None:
            self._info = dataclasses.replace(
                info,
                kind="rtsp",
                clock=ClockKind.RTCP if self.config.rtcp_wait_s > 0 else ClockKind.PTS,
            )
        self._gate = gate
        self.stats.timing = "waiting"
        return conn

    async def open(self) -> StreamInfo:
        """Connect (retrying with backoff) and describe the stream; raises SourceError."""
        if self._closed:
            raise SourceError(f"{self.display}: source is closed")
        if self._info is None:
            self._conn = await self._connect_with_retry(None)
        assert self._info is not None
        return self._info

    async def _connect_with_retry(self, faults: list[SourceFault] | None) -> MediaSource:
        """Connect; on failure wait and try again (faults: where retries are reported; None at
        open, where the first failure is the error unless retries are allowed)."""
        while True:
            try:
                conn = await self._connect()
            except SourceError as exc:
                self.stats.failed_connects += 1
                self.stats.last_error = str(exc)
                delay = self._backoff.next_delay_s()
                if delay is None:
                    raise SourceError(
                        f"{self.display}: gave up after {self._backoff.tries} failed "
                        f"retries (last: {exc})"
                    ) from None
                if faults is None:
                    log.warning("%s; connecting again in %.1f s", exc, delay)
                else:
                    faults.append(
                        SourceFault(
                            "stream_retry",
                            f"{exc}; connecting again in {delay:.1f} s (try {self._backoff.tries})",
                            self._timing.last_end_ns,
                        )
                    )
                await asyncio.sleep(delay)
                if self._closed:
                    raise SourceError(f"{self.display}: source is closed") from None
                continue
            return conn

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        return self._run()

    async def _run(self) -> AsyncIterator[MediaItem | SourceFault]:
        await self.open()
        lost_at: float | None = None
        while not self._closed:
            conn = self._conn
            assert conn is not None
            self.stats.connected = True
            reason = "the server ended the stream"
            try:
                async for item in conn:
                    if isinstance(item, SourceFault):
                        yield item
                        continue
                    if self.stats.timing == "waiting":
                        fault = self._timing_settled(item.pts_ns)
                        if fault is not None:
                            yield fault
                    self._timing.seen(item.end_ns if isinstance(item, AudioChunk) else item.pts_ns)
                    if lost_at is not None:
                        outage_s = time.monotonic() - lost_at
                        self.stats.last_outage_s = outage_s
                        self._backoff.reset()
                        lost_at = None
                        yield SourceFault(
                            "stream_back",
                            f"{self.display}: delivering again, {outage_s:.1f} s after the loss",
                            item.pts_ns,
                        )
                    yield item
            except SourceError as exc:
                reason = str(exc).removeprefix(f"{self.display}: ")
            finally:
                self._conn = None
                self.stats.connected = False
                await conn.aclose()
            if self._closed:
                return
            self.stats.losses += 1
            self.stats.last_error = reason
            if lost_at is None:
                lost_at = time.monotonic()
            yield SourceFault(
                "stream_lost", f"{self.display}: {reason}; reconnecting", self._timing.last_end_ns
            )
            faults: list[SourceFault] = []
            retry = asyncio.ensure_future(self._connect_with_retry(faults))
            try:
                while True:
                    done, _ = await asyncio.wait({retry}, timeout=0.2)
                    while faults:
                        yield faults.pop(0)
                    if done:
                        break
                conn = retry.result()
                if self._closed:  # closed while it connected: nobody else closes this one
                    await conn.aclose()
                    return
                self._conn = conn
                self.stats.last_reconnect_s = time.monotonic() - lost_at
            finally:
                if not retry.done():
                    retry.cancel()

    def _timing_settled(self, pts_ns: int) -> SourceFault | None:
        """Note the clock the connection's gate chose; a fault when it is not RTCP."""
        gate = self._gate
        clock = gate.clock if gate is not None else None
        self.stats.timing = clock.value if clock is not None else ClockKind.PTS.value
        if clock is ClockKind.PTS and self.config.rtcp_wait_s > 0:
            return SourceFault(
                "timing",
                f"{self.display}: no RTCP sender report on every track within "
                f"{self.config.rtcp_wait_s:g} s; timed by RTP timestamps alone (clock pts)",
                pts_ns,
            )
        return None

    async def aclose(self) -> None:
        """Close the current connection (idempotent)."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    #: The status values ``/metrics`` exports.
    metrics: Sequence[MetricSpec] = (
        MetricSpec(
            "crossmodald_stream_reconnects_total",
            "counter",
            "Times the source lost its stream and connected again.",
            "losses",
        ),
    )

    def status(self) -> dict[str, JsonValue]:
        """``source_status`` in /v1/streams: :class:`RtspStats` and the connection's counters."""
        out: dict[str, JsonValue] = dataclasses.asdict(self.stats)
        conn = self._conn
        if conn is not None:
            out["connection"] = conn.status()
        return out


class RtspSourceFactory:
    """Source type ``rtsp`` (entry point ``crossmodald.sources``)."""

    config_model = RtspSourceConfig

    @classmethod
    def create(cls, config: RtspSourceConfig, *, clock: Pacer | None = None) -> RtspSource:
        """An RTSP source; ``clock`` is where ``arrival_ns`` is read (None: real time)."""
        return RtspSource(config, clock)
