"""WebRTC ingest: a received aiortc PeerConnection as a :class:`~crossmodald.ingest.base.Source`.

The WHIP endpoint (:mod:`crossmodald.api.whip`) negotiates the PeerConnection and hands it here.
This module then:

* **drains every track continuously** in its own task (aiortc's own queues are unbounded, so a
  track nobody reads leaks: aiortc #554), converting each decoded frame at once and putting it in
  one bounded queue (``[webrtc] queue_s``) that drops the oldest on overflow, counted and
  reported as an ``overflow`` fault;
* **times every frame on the sender's capture clock** through RTCP Sender Reports
  (:class:`~crossmodald.clock.rtcp.StreamTimeline`): aiortc throws the SR's RTP timestamp away,
  so :func:`install_receiver_hooks` wraps ``RTCRtpReceiver._handle_rtcp_packet`` (and
  ``_handle_rtp_packet``, for packet arrival times) and reads the RTP origin aiortc subtracted
  from ``frame.pts`` (WEBRTC.md §2). Until a track has SRs its frames are timed by arrival and
  say so (``clock = "arrival"``);
* **reports** packet loss (from the receiver's RTCP statistics), video freezes, timestamp jumps
  and sender restarts as :class:`~crossmodald.ingest.base.SourceFault` items, and the
  transport offset as ``sync.transport`` events (through the ``publish`` callback) and in its
  :meth:`WebRtcSource.status` (``source_status`` in ``/v1/streams``; declared metrics too);
* **ends the stream** when the peer vanishes: ICE failed, DTLS closed, or no media for
  ``vanish_s``. ``aclose()`` closes the PeerConnection, which frees its transports and threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import av
import ifaddr
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpSrPacket, RtpPacket

from crossmodald.bus.events import Event, JsonValue
from crossmodald.clock.rtcp import OPUS_DECODER_DELAY_NS, StreamTimeline, TrackSpec, frame_rtp
from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.frames import AudioMonoConverter, audio_chunk, video_frame_from_av
from crossmodald.ingest.webrtc_config import WebRtcConfig
from crossmodald.media import NS_PER_S, ClockKind, MediaItem, StreamInfo
from crossmodald.status import MetricSpec

__all__ = [
    "SYNC_TRANSPORT",
    "WebRtcSource",
    "WebRtcStats",
    "configure_host_addresses",
    "ice_configuration",
    "install_receiver_hooks",
]

log = logging.getLogger(__name__)

#: The event type of transport-offset reports.
SYNC_TRANSPORT = "sync.transport"
#: Where the hooks find a receiver's listener (an instance attribute set by the source).
_LISTENER_ATTR = "_crossmodald_listener"
# Nominal rates used to size the bounded queue: frames and audio packets per second.
_MAX_VIDEO_FPS = 60
#: Video frames the frame rate in `info()` is measured over (about 2 s at 30 fps).
_RATE_FRAMES = 60
_MAX_AUDIO_PPS = 50
_MONITOR_INTERVAL_S = 0.25
_STATS_INTERVAL_S = 1.0
_OVERFLOW_REPORT_S = 1.0


# -- aiortc hooks ---------------------------------------------------------------------------------


class _ReceiverListener:
    """What the hooks call for one receiver: its SRs and the first packet of each frame."""

    def __init__(
        self,
        on_report: Callable[[int, int], None],
        on_packet: Callable[[int, int], None],
    ) -> None:
        self.on_report = on_report
        self.on_packet = on_packet
        self._last_timestamp = -1

    def packet(self, timestamp: int) -> None:
        # Only the first packet of each frame (all packets of a frame share its timestamp).
        if timestamp != self._last_timestamp:
            self._last_timestamp = timestamp
            self.on_packet(timestamp, time.time_ns())


_hooks_installed = False


def install_receiver_hooks() -> None:
    """Wrap aiortc's receiver so SRs and packet arrivals reach the source (idempotent).

    The wrapped methods and the private ``TimestampMapper`` origin have been stable in aiortc
    since 2018 (WEBRTC.md §2); this checks they exist, so an aiortc that changed them fails at
    start-up with a clear message rather than silently losing capture-clock timing.

    Raises:
        RuntimeError: This aiortc lacks what the hooks need.
    """
    global _hooks_installed
    if _hooks_installed:
        return
    for name in ("_handle_rtcp_packet", "_handle_rtp_packet"):
        if not callable(getattr(RTCRtpReceiver, name, None)):
            raise RuntimeError(f"aiortc: RTCRtpReceiver.{name} is missing; WebRTC timing needs it")
    original_rtcp = RTCRtpReceiver._handle_rtcp_packet
    original_rtp = RTCRtpReceiver._handle_rtp_packet

    async def handle_rtcp_packet(self: RTCRtpReceiver, packet: Any) -> None:
        listener = self.__dict__.get(_LISTENER_ATTR)
        if listener is not None and isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            listener.on_report(info.ntp_timestamp, info.rtp_timestamp)
        await original_rtcp(self, packet)

    async def handle_rtp_packet(
        self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int
    ) -> None:
        listener = self.__dict__.get(_LISTENER_ATTR)
        if listener is not None:
            listener.packet(packet.timestamp)
        await original_rtp(self, packet, arrival_time_ms)

    RTCRtpReceiver._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]
    RTCRtpReceiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
    _hooks_installed = True


def _rtp_origin(receiver: RTCRtpReceiver) -> int | None:
    """The RTP timestamp aiortc subtracted from this receiver's ``frame.pts`` (None: not yet)."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    origin = getattr(mapper, "_origin", None)
    return origin if isinstance(origin, int) else None


_original_get_host_addresses = aioice.ice.get_host_addresses


def configure_host_addresses(
    addresses: Sequence[str] = (), interfaces: Sequence[str] = ()
) -> list[str] | None:
    """Make ICE offer host candidates only on these addresses or interfaces (process-wide).

    aioice gathers host candidates from every interface except loopback; this replaces its
    ``get_host_addresses`` (WEBRTC.md §5). With neither argument, aioice's own is restored.

    Returns:
        The addresses in use, or None for aioice's default.

    Raises:
        ValueError: An interface does not exist or has no address.
    """
    if not addresses and not interfaces:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return None
    chosen = list(addresses)
    if interfaces:
        adapters = {adapter.nice_name: adapter for adapter in ifaddr.get_adapters()}
        for name in interfaces:
            adapter = adapters.get(name)
            if adapter is None:
                raise ValueError(f"webrtc.interfaces: no network interface {name!r}")
            found = [ip.ip if isinstance(ip.ip, str) else ip.ip[0] for ip in adapter.ips]
            found = [a for a in found if not a.startswith("fe80:")]
            if not found:
                raise ValueError(f"webrtc.interfaces: interface {name!r} has no usable address")
            chosen.extend(found)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses
    return chosen


def ice_configuration(config: WebRtcConfig) -> RTCConfiguration:
    """The aiortc ICE configuration: the configured STUN/TURN servers, none by default.

    An empty list matters: aiortc falls back to Google's public STUN server when given None.
    """
    servers = [
        RTCIceServer(
            urls=list(server.urls),
            username=server.username,
            credential=server.credential.get_secret_value() if server.credential else None,
        )
        for server in config.ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


# -- the source ---------------------------------------------------------------------------------


@dataclass(slots=True)
class WebRtcStats:
    """Counters of one WebRTC source (cumulative)."""

    video_frames: int = 0
    audio_frames: int = 0
    dropped_video: int = 0
    dropped_audio: int = 0
    dropped_faults: int = 0
    packets_lost: dict[str, int] = field(default_factory=dict)
    freezes: int = 0
    timestamp_jumps: int = 0
    sender_reports: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "video_frames": self.video_frames,
            "audio_frames": self.audio_frames,
            "dropped_video": self.dropped_video,
            "dropped_audio": self.dropped_audio,
            "dropped_faults": self.dropped_faults,
            "packets_lost": dict(self.packets_lost),
            "freezes": self.freezes,
            "timestamp_jumps": self.timestamp_jumps,
            "sender_reports": dict(self.sender_reports),
        }


@dataclass(slots=True)
class _Track:
    kind: str
    track: MediaStreamTrack
    receiver: RTCRtpReceiver
    clock_rate: int
    converter: AudioMonoConverter | None = None
    last_mono_ns: int | None = None
    lost_total: int = 0
    ended: bool = False


class WebRtcSource:
    """One WHIP publisher's media, as a Source.

    Args:
        name: The stream name.
        pc: The PeerConnection, with its remote offer applied (its receivers exist).
        config: The ``[webrtc]`` config (queue size, freeze and vanish times).
        publish: Called with ``sync.transport`` events (None: not reported).
        clock_ns: The daemon's monotonic clock (arrival times).
    """

    def __init__(
        self,
        name: str,
        pc: RTCPeerConnection,
        config: WebRtcConfig,
        *,
        publish: Callable[[Event], object] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        install_receiver_hooks()
        self.name = name
        self.pc = pc
        self.config = config
        self.stats = WebRtcStats()
        self._publish = publish
        self._clock_ns = clock_ns
        self._tracks: dict[str, _Track] = {}
        for transceiver in pc.getTransceivers():
            kind = transceiver.kind
            receiver = transceiver.receiver
            if kind not in ("audio", "video") or receiver.track is None or kind in self._tracks:
                continue
            codecs = getattr(transceiver, "_codecs", None) or []
            rate = codecs[0].clockRate if codecs else (90000 if kind == "video" else 48000)
            self._tracks[kind] = _Track(kind, receiver.track, receiver, rate)
        if not self._tracks:
            raise SourceError(f"{name}: the offer has no audio or video track")
        specs = []
        for track in self._tracks.values():
            opus = track.kind == "audio" and track.clock_rate == 48000
            specs.append(
                TrackSpec(track.kind, track.clock_rate, OPUS_DECODER_DELAY_NS if opus else 0)
            )
        self.timeline = StreamTimeline(specs)
        media_per_s = (_MAX_VIDEO_FPS if "video" in self._tracks else 0) + (
            _MAX_AUDIO_PPS if "audio" in self._tracks else 0
        )
        self._queue_max = max(8, round(config.queue_s * media_per_s))
        self._queue: deque[MediaItem] = deque()
        self._faults: deque[SourceFault] = deque(maxlen=64)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ended: str | None = None  # why the source ended (None: running)
        self._failure: str | None = None  # set when the end is a failure (SourceError)
        self._opened_ns = 0
        self._last_media_ns: int | None = None
        self._frozen = False
        self._last_timing = ClockKind.ARRIVAL
        #: The decoded picture size, and the sender's frame times (for its frame rate).
        self._size: tuple[int, int] | None = None
        self._video_pts: deque[int] = deque(maxlen=_RATE_FRAMES)
        self._closed = False
        self._last_overflow_report_ns = 0
        self._unreported_drops = 0

    # -- Source -------------------------------------------------------------------------------

    async def open(self) -> StreamInfo:
        """Start draining the tracks; describes the stream (timing starts as ``arrival``)."""
        self._opened_ns = self._clock_ns()
        for track in self._tracks.values():
            track.receiver.__dict__[_LISTENER_ATTR] = _ReceiverListener(
                functools.partial(self._on_report, track.kind),
                functools.partial(self.timeline.add_packet_arrival, track.kind),
            )
            if track.kind == "audio":
                track.converter = AudioMonoConverter()
            self._tasks.append(
                asyncio.create_task(self._drain(track), name=f"ingest:{self.name}:{track.kind}")
            )
        self._tasks.append(asyncio.create_task(self._monitor(), name=f"ingest:{self.name}:monitor"))
        self.pc.on("connectionstatechange", self._on_connection_state)
        return self.info()

    def info(self) -> StreamInfo:
        """The stream as known now: the decoded picture size, the frame rate of the sender's
        timestamps (over the last frames) and the timing (``arrival`` until every track has
        Sender Reports, then ``rtcp``); None where not known yet."""
        audio = self._tracks.get("audio")
        width, height = self._size if self._size is not None else (None, None)
        return StreamInfo(
            name=self.name,
            kind="webrtc",
            has_video="video" in self._tracks,
            has_audio=audio is not None,
            frame_rate=self._frame_rate(),
            sample_rate=audio.clock_rate if audio else None,
            width=width,
            height=height,
            clock=self._last_timing,
        )

    def _frame_rate(self) -> float | None:
        pts = self._video_pts
        if len(pts) < _RATE_FRAMES // 2 or pts[-1] <= pts[0]:
            return None
        return round((len(pts) - 1) * NS_PER_S / (pts[-1] - pts[0]), 2)

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        return self._items()

    async def aclose(self) -> None:
        """Stop draining and close the PeerConnection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._end("closed")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for track in self._tracks.values():
            track.receiver.__dict__.pop(_LISTENER_ATTR, None)
        with contextlib.suppress(Exception):
            await self.pc.close()

    def receivers(self) -> dict[str, tuple[RTCRtpReceiver, int]]:
        """``kind -> (receiver, RTP clock rate)`` of the publisher's tracks (WHEP forwards them)."""
        return {kind: (t.receiver, t.clock_rate) for kind, t in self._tracks.items()}

    # -- state for the API ----------------------------------------------------------------------

    @property
    def ended(self) -> str | None:
        """Why the source ended, or None while it runs."""
        return self._ended

    #: The status values ``/metrics`` exports (see :func:`~crossmodald.ingest.base.source_metrics`).
    metrics: Sequence[MetricSpec] = (
        MetricSpec(
            "crossmodald_stream_transport_offset_seconds",
            "gauge",
            "Audio minus video network latency (seconds): the A/V offset the timestamps give "
            "media arriving together.",
            "transport.transport_offset_ms",
            scale=0.001,
        ),
        *(
            MetricSpec(
                "crossmodald_stream_transport_latency_seconds",
                "gauge",
                "Median packet arrival minus SR-mapped capture time (seconds), per track.",
                f"transport.{track}_latency_ms",
                {"track": track},
                scale=0.001,
            )
            for track in ("audio", "video")
        ),
        *(
            MetricSpec(
                "crossmodald_stream_packets_lost_total",
                "counter",
                "RTP packets lost, from the receiver's RTCP statistics.",
                f"receive.packets_lost.{track}",
                {"track": track},
            )
            for track in ("audio", "video")
        ),
        MetricSpec(
            "crossmodald_stream_freezes_total", "counter", "Video freezes.", "receive.freezes"
        ),
    )

    def status(self) -> dict[str, JsonValue]:
        """``source_status`` in /v1/streams: ``transport`` (the current estimate, as the
        ``sync.transport`` event's data) and ``receive`` (frames, drops, losses, SRs)."""
        transport = self.timeline.transport().as_dict()
        return {"transport": transport, "receive": self.stats.as_dict()}

    # -- internals ------------------------------------------------------------------------------

    async def _items(self) -> AsyncIterator[MediaItem | SourceFault]:
        while True:
            while self._faults:
                yield self._faults.popleft()
            if self._queue:
                yield self._queue.popleft()
                continue
            if self._ended is not None:
                if self._failure is not None:
                    raise SourceError(f"{self.name}: {self._failure}")
                return
            self._wake.clear()
            await self._wake.wait()

    def _end(self, reason: str, *, failure: bool = False) -> None:
        if self._ended is None:
            self._ended = reason
            if failure:
                self._failure = reason
            self._wake.set()

    def _fault(self, kind: str, message: str, pts_ns: int | None = None) -> None:
        if len(self._faults) == self._faults.maxlen:
            self.stats.dropped_faults += 1
        self._faults.append(SourceFault(kind, f"{self.name}: {message}", pts_ns))
        self._wake.set()

    def _on_report(self, kind: str, ntp: int, rtp: int) -> None:
        if self.timeline.add_sender_report(kind, ntp, rtp):
            self.stats.sender_reports[kind] = self.timeline.sender_reports(kind)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            what = "ICE or DTLS failed" if state == "failed" else "closed by the peer"
            self._end(f"peer connection {state} ({what})", failure=state == "failed")

    async def _drain(self, track: _Track) -> None:
        kind = track.kind
        try:
            while True:
                try:
                    frame = await track.track.recv()
                except MediaStreamError:
                    break
                self._take(track, frame)
        finally:
            log.debug("%s: %s track ended", self.name, kind)
            track.ended = True
            if all(t.ended for t in self._tracks.values()):
                # RTCP BYE or a stopped decoder: the peer is done with every track.
                self._end("the peer ended its tracks")

    def _take(self, track: _Track, frame: Any) -> None:
        arrival_ns = self._clock_ns()
        track.last_mono_ns = arrival_ns
        self._last_media_ns = arrival_ns
        origin = _rtp_origin(track.receiver) or 0
        rtp = frame_rtp(frame.pts, frame.time_base, track.clock_rate, origin)
        placed = self.timeline.map_frame(track.kind, rtp, arrival_ns)
        if placed.change in ("timestamp_jump", "sender_restart", "mapping_moved"):
            self.stats.timestamp_jumps += 1
            self._fault(
                "timestamp_jump",
                f"{placed.note}; moved {placed.jump_ns / 1e6:+.1f} ms on the timeline",
                placed.pts_ns,
            )
        if placed.clock is not self._last_timing:
            self._last_timing = placed.clock
            self._report_transport(placed.pts_ns)
        item: MediaItem
        if track.kind == "video":
            assert isinstance(frame, av.VideoFrame)
            if self._frozen:
                self._frozen = False
                self._fault("freeze_end", "video frames flow again", placed.pts_ns)
            item = video_frame_from_av(self.name, frame, placed.pts_ns, arrival_ns, placed.clock)
            self.stats.video_frames += 1
            self._size = (frame.width, frame.height)
            if self._video_pts and placed.pts_ns <= self._video_pts[-1]:
                self._video_pts.clear()  # a jump back: start the rate over
            self._video_pts.append(placed.pts_ns)
        else:
            assert isinstance(frame, av.AudioFrame)
            assert track.converter is not None
            mono = track.converter.convert(frame)
            item = audio_chunk(
                self.name, placed.pts_ns, arrival_ns, mono, frame.sample_rate, placed.clock
            )
            self.stats.audio_frames += 1
        if len(self._queue) >= self._queue_max:
            dropped = self._queue.popleft()
            if dropped.__class__.__name__ == "VideoFrame":
                self.stats.dropped_video += 1
            else:
                self.stats.dropped_audio += 1
            self._unreported_drops += 1
            if arrival_ns - self._last_overflow_report_ns >= _OVERFLOW_REPORT_S * NS_PER_S:
                self._last_overflow_report_ns = arrival_ns
                self._fault(
                    "overflow",
                    f"analysis is behind: dropped {self._unreported_drops} oldest media items "
                    f"(queue of {self._queue_max}; {self.stats.dropped_video} video, "
                    f"{self.stats.dropped_audio} audio in all)",
                    dropped.pts_ns,
                )
                self._unreported_drops = 0
        self._queue.append(item)
        self._wake.set()

    async def _monitor(self) -> None:
        """Freezes, vanished peers, packet loss and periodic transport reports."""
        cfg = self.config
        next_stats_ns = next_transport_ns = self._clock_ns()
        while self._ended is None:
            await asyncio.sleep(_MONITOR_INTERVAL_S)
            now = self._clock_ns()
            video = self._tracks.get("video")
            if (
                video is not None
                and video.last_mono_ns is not None
                and not self._frozen
                and now - video.last_mono_ns > cfg.freeze_s * NS_PER_S
            ):
                self._frozen = True
                self.stats.freezes += 1
                self._fault("freeze", f"video: no frame for {cfg.freeze_s:g} s")
            last = self._last_media_ns
            if last is None and now - self._opened_ns > cfg.connect_timeout_s * NS_PER_S:
                self._end(
                    f"peer vanished: no media within {cfg.connect_timeout_s:g} s", failure=True
                )
            elif last is not None and now - last > cfg.vanish_s * NS_PER_S:
                self._end(f"peer vanished: no media for {cfg.vanish_s:g} s", failure=True)
            if now >= next_stats_ns:
                next_stats_ns = now + round(_STATS_INTERVAL_S * NS_PER_S)
                await self._check_loss()
            if now >= next_transport_ns and self._last_media_ns is not None:
                next_transport_ns = now + round(cfg.transport_interval_s * NS_PER_S)
                self._report_transport(None)

    async def _check_loss(self) -> None:
        for track in self._tracks.values():
            try:
                report = await track.receiver.getStats()
            except Exception:  # the transport may be closing; loss is best effort
                continue
            lost = 0
            for stats in report.values():
                if getattr(stats, "type", "") == "inbound-rtp":
                    lost += max(0, int(getattr(stats, "packetsLost", 0) or 0))
            if lost > track.lost_total:
                self._fault(
                    "packet_loss",
                    f"{track.kind}: {lost - track.lost_total} RTP packets lost "
                    f"(in the last {_STATS_INTERVAL_S:g} s; {lost} in all)",
                )
            track.lost_total = max(track.lost_total, lost)
            self.stats.packets_lost[track.kind] = track.lost_total

    def _report_transport(self, pts_ns: int | None) -> None:
        if self._publish is None:
            return
        estimate = self.timeline.transport()
        at = pts_ns if pts_ns is not None else 0
        clock = ClockKind.RTCP if estimate.timing == "rtcp" else ClockKind.ARRIVAL
        self._publish(
            Event(
                type=SYNC_TRANSPORT,
                stream=self.name,
                start_ns=at,
                end_ns=at,
                data=estimate.as_dict(),
                clock=clock,
            )
        )
