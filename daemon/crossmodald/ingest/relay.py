"""Re-synchronised forwarding of a WebRTC stream: the media side of WHEP output.

A WHIP publisher's encoded frames are forwarded, never re-encoded, to WHEP viewers with the
leading track delayed by the stream's correction:

* :class:`EncodedTap` takes each encoded frame as the publisher's receiver completes it (the
  jitter buffer's output, just before aiortc hands it to its decoder thread) and fans it out.
* :class:`RelayTrack` (one per viewer and track) sends each frame at its *capture* time (the
  publisher's Sender Reports, through the source's :class:`~crossmodald.clock.rtcp.StreamTimeline`)
  plus one latency common to both tracks plus the track's delay, so the receive path's own
  skew (aiortc's 80 ms audio jitter buffer against ~one frame for video) is not forwarded,
  and stamps the RTP timestamps and its own SRs with that same due time (so a viewer that
  syncs on SRs, as libwebrtc does, plays them at the corrected offset). Until the publisher's
  SRs arrive, frames leave on arrival plus the delay.
* :class:`CorrectionController` (pure) turns measured offsets into the correction: it follows
  the smoothed measured offset (or holds a fixed one), changes by at most ``max_slew_ms_per_s``
  (no jump: the delayed track's timestamps stretch by at most that rate, which a receiver's
  jitter buffer absorbs), and holds its last value while the measurement is unsure.

The correction's sign is the project's: ``audio_lead_ms`` > 0 (audio ahead) delays the audio by
it, < 0 delays the video by ``-audio_lead_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError

from crossmodald.clock.rtcp import NTP_UNIX_OFFSET_S, StreamTimeline, unix_ns_to_ntp
from crossmodald.media import NS_PER_MS, NS_PER_S

__all__ = [
    "CorrectionController",
    "EncodedFrame",
    "EncodedTap",
    "RelayTrack",
    "is_keyframe",
]

_WRAP = 1 << 32


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame as the publisher's receiver completed it.

    Attributes:
        kind: "audio" or "video".
        rtp: Its RTP timestamp as sent (32 bits).
        pts: The same, less the receiver's origin, unwrapped (ticks of ``clock_rate``).
        data: The encoded bytes (VP8 frame, H.264 Annex B access unit, Opus packet).
        clock_rate: RTP ticks per second.
        arrival_unix_ns: When it left the jitter buffer (wall clock).
    """

    kind: str
    rtp: int
    pts: int
    data: bytes
    clock_rate: int
    arrival_unix_ns: int


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether an encoded video frame can start decoding (VP8 key frame, H.264 IDR or SPS)."""
    name = codec.lower()
    if name == "vp8":
        return bool(data) and not data[0] & 0x01
    if name == "h264":
        i = 0
        while True:
            i = data.find(b"\x00\x00\x01", i)
            if i < 0 or i + 3 >= len(data):
                return False
            if data[i + 3] & 0x1F in (5, 7):
                return True
            i += 3
    return True  # audio codecs: every frame decodes


class CorrectionController:
    """The correction to apply (``audio_lead_ms``), changing gradually; pure (no clock of its own).

    Args:
        max_slew_ms_per_s: Largest change of the correction per second of wall time.
        min_confidence: Measurements below this are unsure: the correction holds.
        fixed_audio_lead_ms: Hold this correction, whatever is measured (None: follow).
    """

    def __init__(
        self,
        *,
        max_slew_ms_per_s: float,
        min_confidence: float,
        fixed_audio_lead_ms: float | None = None,
    ) -> None:
        if max_slew_ms_per_s <= 0:
            raise ValueError(f"max_slew_ms_per_s must be positive, got {max_slew_ms_per_s}")
        self.max_slew_ms_per_s = max_slew_ms_per_s
        self.min_confidence = min_confidence
        self.fixed = fixed_audio_lead_ms
        self.target_ms = fixed_audio_lead_ms if fixed_audio_lead_ms is not None else 0.0
        self.value_ms = self.target_ms
        self.holding = fixed_audio_lead_ms is None  # nothing measured yet
        self.source = "fixed" if fixed_audio_lead_ms is not None else "measured"
        self._last_ns: int | None = None

    def set_fixed(self, audio_lead_ms: float | None) -> None:
        """Hold ``audio_lead_ms`` from now on (None: follow the measurement again).

        The value still moves there at the slew rate: a change made while people watch is as
        gradual as a measured one.
        """
        self.fixed = audio_lead_ms
        self.source = "fixed" if audio_lead_ms is not None else "measured"
        if audio_lead_ms is not None:
            self.target_ms = audio_lead_ms
            self.holding = False
        else:
            self.holding = True  # until the next confident measurement

    def start_at_target(self) -> None:
        """Take the target at once: only before anything was sent (no viewer saw another value)."""
        self.value_ms = self.target_ms

    def measure(self, audio_lead_ms: float | None, confidence: float) -> None:
        """Take one measured (smoothed) offset; an unsure one makes the correction hold."""
        if self.fixed is not None:
            return
        if audio_lead_ms is None or confidence < self.min_confidence:
            self.holding = True
            return
        self.holding = False
        self.target_ms = audio_lead_ms

    def advance(self, now_ns: int) -> float:
        """Move toward the target by at most the slew since the last call; the new value."""
        last, self._last_ns = self._last_ns, now_ns
        if last is None:
            return self.value_ms
        step = self.max_slew_ms_per_s * max(0, now_ns - last) / NS_PER_S
        delta = self.target_ms - self.value_ms
        self.value_ms += max(-step, min(step, delta))
        return self.value_ms

    @property
    def settled(self) -> bool:
        """Whether the value has reached its target."""
        return abs(self.target_ms - self.value_ms) < 1e-6

    def delay_ns(self, kind: str) -> int:
        """How much a track is delayed: the leading one by the correction, the other not at all."""
        lead = self.value_ms if kind == "audio" else -self.value_ms
        return round(max(0.0, lead) * NS_PER_MS)


class EncodedTap:
    """Fan out the encoded frames of a publisher's receivers (before they are decoded).

    aiortc hands each completed frame to its decoder thread through a ``queue.Queue``
    (``RTCRtpReceiver.__decoder_queue``, since aiortc 1.0); the tap wraps that queue's ``put``
    on the instance, so decoding, and the analysis that uses it, go on unchanged.

    Args:
        receivers: ``kind -> (receiver, clock rate)``.
        timeline: The source's timeline (the publisher's SR mappings).
        latency_frames: Frames (of all tracks) whose receive latency sets the common latency.
        latency_margin_ms: Added to the 90th percentile of the latencies seen over those frames.
    """

    def __init__(
        self,
        receivers: dict[str, tuple[RTCRtpReceiver, int]],
        timeline: StreamTimeline,
        *,
        latency_frames: int = 100,
        latency_margin_ms: float = 40.0,
    ) -> None:
        self.timeline = timeline
        self.codecs: dict[str, str] = {}
        self._listeners: set[Callable[[EncodedFrame], None]] = set()
        self._restore: list[Callable[[], None]] = []
        self._latency_frames = latency_frames
        self._margin_ns = round(latency_margin_ms * NS_PER_MS)
        self._seen_latency_ns: list[int] = []
        #: Capture (sender wall clock) to send time, common to both tracks; None until measured.
        self.latency_ns: int | None = None
        self.frames = 0
        self.keyframe_requests = 0
        self._receivers = {kind: receiver for kind, (receiver, _) in receivers.items()}
        self._last_request_ns = 0
        self._requests: set[asyncio.Future[None]] = set()
        for kind, (receiver, clock_rate) in receivers.items():
            self._wrap(kind, receiver, clock_rate)

    def request_keyframe(self) -> None:
        """Ask the publisher for a key frame (RTCP PLI), at most twice a second.

        A viewer joining mid-stream can only start decoding at one; browsers send them only on
        request (aiortc's ``_send_rtcp_pli``, the receiver's own PLI path since aiortc 1.0).
        """
        receiver = self._receivers.get("video")
        now = time.monotonic_ns()
        if receiver is None or now - self._last_request_ns < 500 * NS_PER_MS:
            return
        self._last_request_ns = now
        streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None) or {}
        send = getattr(receiver, "_send_rtcp_pli", None)
        if send is None:
            return
        for ssrc in list(streams):
            self.keyframe_requests += 1
            future = asyncio.ensure_future(send(ssrc))
            self._requests.add(future)
            future.add_done_callback(self._requests.discard)

    def _wrap(self, kind: str, receiver: RTCRtpReceiver, clock_rate: int) -> None:
        queue = getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)
        if queue is None or not callable(getattr(queue, "put", None)):
            raise RuntimeError("aiortc: RTCRtpReceiver has no decoder queue; WHEP cannot forward")
        original = queue.put
        last = [0]  # the previous pts, for unwrapping

        def put(item: Any, *args: Any, **kwargs: Any) -> None:
            original(item, *args, **kwargs)
            if item is None:
                return
            codec, frame = item
            self.codecs[kind] = str(codec.mimeType.split("/", 1)[-1])
            mapped = int(frame.timestamp)
            pts = last[0] + (((mapped - last[0]) + (1 << 31)) % _WRAP - (1 << 31))
            last[0] = pts
            mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
            origin = getattr(mapper, "_origin", 0) or 0
            self._emit(
                EncodedFrame(
                    kind,
                    (mapped + origin) % _WRAP,
                    pts,
                    bytes(frame.data),
                    clock_rate,
                    time.time_ns(),
                )
            )

        queue.put = put
        self._restore.append(lambda: queue.__dict__.pop("put", None))

    def _emit(self, frame: EncodedFrame) -> None:
        self.frames += 1
        if self.latency_ns is None:
            capture = self.capture_unix_ns(frame)
            if capture is not None:
                self._seen_latency_ns.append(frame.arrival_unix_ns - capture)
                if len(self._seen_latency_ns) >= self._latency_frames:
                    # The 90th percentile: start-up stragglers would set a needlessly long
                    # delay for every viewer; a frame later than that leaves late (counted)
                    # and still carries its due time in the SRs.
                    seen = sorted(self._seen_latency_ns)
                    self.latency_ns = seen[len(seen) * 9 // 10] + self._margin_ns
        for listener in list(self._listeners):
            listener(frame)

    def capture_unix_ns(self, frame: EncodedFrame) -> int | None:
        """The frame's capture time on the publisher's clock (Unix ns), None before its SRs."""
        ntp_ns = self.timeline.sender_ns(frame.kind, frame.rtp)
        return None if ntp_ns is None else ntp_ns - NTP_UNIX_OFFSET_S * NS_PER_S

    def add(self, listener: Callable[[EncodedFrame], None]) -> None:
        """Call ``listener`` with every frame from now on."""
        self._listeners.add(listener)

    def remove(self, listener: Callable[[EncodedFrame], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners.discard(listener)

    def close(self) -> None:
        """Unhook the receivers (idempotent)."""
        self._listeners.clear()
        for restore in self._restore:
            restore()
        self._restore.clear()


class RelayTrack(MediaStreamTrack):
    """One viewer's copy of one track: encoded frames, each sent when it is due.

    Args:
        kind: "audio" or "video".
        tap: Where the frames come from.
        correction: The stream's correction (shared by its viewers).
        max_queue_s: Frames waiting longer than this are dropped (counted); video then waits
            for the next key frame.
    """

    def __init__(
        self,
        kind: str,
        tap: EncodedTap,
        correction: CorrectionController,
        *,
        max_queue_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._tap = tap
        self._correction = correction
        self._queue: deque[EncodedFrame] = deque()
        self._max_queue = max(16, round(max_queue_s * (60 if kind == "video" else 50)))
        self._wake = asyncio.Event()
        self._need_key = kind == "video"
        self.sent = 0
        self.dropped = 0
        self.late = 0
        #: Due time (Unix ns) of the frame ``recv`` returned last: what this track's SRs carry,
        #: 0 while frames are timed by arrival (SRs then say NTP 0, which receivers ignore: a
        #: line mixing arrival- and capture-based stamps would tilt their RTP/NTP regression).
        self.due_unix_ns = 0
        tap.add(self._take)

    def _take(self, frame: EncodedFrame) -> None:
        if frame.kind != self.kind:
            return
        if self._need_key:
            if not is_keyframe(self._tap.codecs.get(self.kind, ""), frame.data):
                self._tap.request_keyframe()
                return
            self._need_key = False
        if len(self._queue) >= self._max_queue:
            self._queue.clear()
            self.dropped += 1
            self._need_key = self.kind == "video"
            return
        self._queue.append(frame)
        self._wake.set()

    def _due_unix_ns(self, frame: EncodedFrame, delay: int) -> tuple[int, bool]:
        """When the frame is due, and whether that rests on its capture time (else arrival)."""
        capture = self._tap.capture_unix_ns(frame)
        latency = self._tap.latency_ns
        if capture is None or latency is None:
            return frame.arrival_unix_ns + delay, False
        return capture + latency + delay, True

    async def recv(self) -> Any:
        """The next frame as an ``av.Packet``, once it is due (aiortc packs it unchanged)."""
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        frame = self._queue.popleft()
        delay = self._correction.delay_ns(self.kind)  # once: timestamps and due time agree
        due, timed = self._due_unix_ns(frame, delay)
        wait_ns = due - time.time_ns()
        if wait_ns > 0:
            await asyncio.sleep(wait_ns / NS_PER_S)
        elif wait_ns < -20 * NS_PER_MS:
            self.late += 1
        self.due_unix_ns = due if timed else 0
        # The RTP timestamp carries the delay too, so timestamps, SRs and sending agree.
        delay_ticks = delay * frame.clock_rate // NS_PER_S
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = frame.pts + delay_ticks
        packet.time_base = fractions.Fraction(1, frame.clock_rate)
        self.sent += 1
        return packet

    def stop(self) -> None:
        self._tap.remove(self._take)
        self._wake.set()
        super().stop()


def due_time_reports(sender: RTCRtpSender, track: RelayTrack) -> None:
    """Stamp this sender's SRs with the due time of their packet, not the moment it went out.

    aiortc stamps an SR with the wall clock right after its last packet was sent (for that
    packet's RTP timestamp); on a busy event loop that is late by a few ms at random, and the
    lateness would enter every viewer's A/V mapping. A property on a per-sender subclass
    replaces the stamp with the due time of that packet (aiortc sends every packet of a frame
    before it asks the track for the next one). Call it once per sender.
    """
    key = "_crossmodald_ntp"

    def get(self: RTCRtpSender) -> int:
        return int(self.__dict__.get(key, 0))

    def set_(self: RTCRtpSender, value: int) -> None:
        self.__dict__[key] = unix_ns_to_ntp(track.due_unix_ns) if value and track.due_unix_ns else 0

    cls = type(
        "DueTimeSender", (type(sender),), {"_RTCRtpSender__ntp_timestamp": property(get, set_)}
    )
    current = sender.__dict__.pop("_RTCRtpSender__ntp_timestamp", 0)
    sender.__class__ = cls
    sender.__dict__[key] = current


async def cancel_quietly(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for it, whatever it raises."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
