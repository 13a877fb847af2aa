"""A WHIP publisher for tests and benchmarks: aiortc sending pre-encoded packets on one clock.

Why pre-encoded: when aiortc encodes, its Sender Reports carry the encoder's delay (10-60 ms of
error); packing ready-made ``av.Packet``s makes the SRs exact to ~1 ms (WEBRTC.md §6-7), so a
test can demand the transport offset within 2 ms. aiortc stamps an SR with the time its last
packet went out, which on a loaded event loop (several publishers and the daemon in one process)
is late by a few ms at random, and an SR carries that lateness into the mapping of every packet
after it. So the publisher stamps its SRs with each packet's *capture* time (when it was due),
as libwebrtc does for video (:func:`capture_time_reports`).

Content comes from the pattern generator (:class:`PatternTimeline`): a white flash and a 1 kHz
beep every period, with ``audio_lead_ms`` as the *content* skew (what the capture chain did).
``network_audio_lead_ms`` is a *transport* skew: one track's packets leave later than their
capture time (as a network or pacing delay would make them), while its SRs still give the
capture time, as libwebrtc's capture-time SRs do.
``timestamp_audio_lead_ms`` is a *timestamp* skew: media in sync and sent in sync, but the audio
track's timestamps (its RTP timestamps as its SRs map them to the sender's NTP clock) say the
audio was captured that much earlier than it was, as a sender with a mis-set audio capture clock
would stamp it. It is injected by shifting the audio SRs' NTP stamps: a receiver sees only the
RTP -> NTP mapping, so that is the same as shifting the RTP timestamps against correct SRs.

Network safety: ICE host candidates only on 127.0.0.1 and no STUN servers (see
:func:`loopback_only`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aioice.ice
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from multidict import CIMultiDict

from crossmodald.ingest.pattern import PatternTimeline
from crossmodald.service.config import PatternSourceConfig

NS_PER_S = 1_000_000_000


def loopback_only() -> None:
    """ICE host candidates on 127.0.0.1 only (aioice skips loopback by default)."""
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


@dataclass
class EncodedMedia:
    """Pre-encoded packets: ``video`` at 90 kHz, ``audio`` (Opus) at 48 kHz; pts from 0."""

    video: list[av.Packet]
    audio: list[av.Packet]
    duration_s: float
    video_codec: str


def encode_pattern(
    *,
    duration_s: float,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    audio_lead_ms: float = 0.0,
    video_codec: str = "vp8",
    period_s: float = 1.0,
    bitrate: int = 400_000,
) -> EncodedMedia:
    """Encode the test pattern (flash + beep every ``period_s``) to VP8 or H.264 and Opus."""
    config = PatternSourceConfig(
        type="pattern",
        name="whip",
        width=width,
        height=height,
        fps=fps,
        period_s=period_s,
        audio_lead_ms=audio_lead_ms,
    )
    timeline = PatternTimeline(config)
    codec_name = "libvpx" if video_codec == "vp8" else "libx264"
    video = av.CodecContext.create(codec_name, "w")
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.time_base = fractions.Fraction(1, 90000)
    video.framerate = fractions.Fraction(fps)
    video.bit_rate = bitrate
    video.gop_size = fps  # pre-encoded streams cannot honour PLI: a keyframe every second
    if video_codec == "h264":
        video.options = {"profile": "baseline", "level": "31", "tune": "zerolatency"}
        video.profile = "Constrained Baseline"
    else:
        video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    frames = round(duration_s * fps)
    vpackets: list[av.Packet] = []
    chroma = np.full((height // 2, width // 2), 128, np.uint8)
    for index in range(frames):
        luma = timeline.render_luma(index)
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.planes[0].update(np.ascontiguousarray(luma).tobytes())
        frame.planes[1].update(chroma.tobytes())
        frame.planes[2].update(chroma.tobytes())
        frame.pts = round(index * 90000 / fps)
        frame.time_base = fractions.Fraction(1, 90000)
        vpackets.extend(video.encode(frame))
    vpackets.extend(video.encode(None))
    for packet in vpackets:
        packet.time_base = fractions.Fraction(1, 90000)

    audio = av.CodecContext.create("libopus", "w")
    audio.sample_rate, audio.layout, audio.format = 48000, "mono", "s16"
    audio.time_base = fractions.Fraction(1, 48000)
    audio.options = {"application": "voip", "frame_duration": "20"}  # 6.5 ms lookahead, as browsers
    samples = round(duration_s * 48000)
    mono = timeline.render_audio(0, samples)
    pcm = np.clip(np.round(mono * 32767), -32768, 32767).astype(np.int16)
    apackets: list[av.Packet] = []
    for start in range(0, samples - 960 + 1, 960):
        frame = av.AudioFrame.from_ndarray(
            pcm[None, start : start + 960], format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = start
        frame.time_base = fractions.Fraction(1, 48000)
        apackets.extend(audio.encode(frame))
    for packet in apackets:
        packet.time_base = fractions.Fraction(1, 48000)
    # Opus packets come out with the encoder's pre-skip in their pts; put packet k at 20k ms so
    # RTP timestamps count the content exactly (the 6.5 ms decoder delay stays, as in real life).
    for k, packet in enumerate(apackets):
        packet.pts = packet.dts = k * 960
    return EncodedMedia(vpackets, apackets, duration_s, video_codec)


class PacedPackets(MediaStreamTrack):
    """A track returning pre-encoded packets at ``t0 + pts + delay`` on the monotonic clock.

    With ``loop`` the packets repeat with pts continuing (content period must divide the
    duration, and video must start with a keyframe, which ``encode_pattern`` gives).
    """

    def __init__(
        self, kind: str, packets: list[av.Packet], rate: int, duration_s: float, loop: bool
    ) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._rate = rate
        self._span = round(duration_s * rate)
        self._loop = loop
        self._iter = self._generate()
        self.t0: float = 0.0
        self.delay_s = 0.0
        self.sent = 0
        #: Capture time (monotonic s) of the packet ``recv`` returned last: ``t0 + pts``.
        self.captured_s = 0.0
        #: ``captured_s`` of the frame whose first packet ``send_lateness_s`` has last.
        self.last_frame_captured_s = -1.0
        #: (when it went out, Unix s; how late, s) for the first RTP packet of each of
        #: the latest frames, against capture + ``delay_s``: what an SR stamped at send time
        #: would carry (:func:`capture_time_reports` leaves it out), and what a loaded event
        #: loop adds to the packets' real transport delay (the daemon times the first packet
        #: of each frame too).
        self.send_lateness_s: deque[tuple[float, float]] = deque(maxlen=512)

    def _generate(self) -> Iterator[tuple[int, av.Packet]]:
        offset = 0
        while True:
            for packet in self._packets:
                yield offset + int(packet.pts or 0), packet
            if not self._loop:
                return
            offset += self._span

    async def recv(self) -> Any:
        try:
            pts, packet = next(self._iter)
        except StopIteration:
            self.stop()
            raise
        captured = self.t0 + pts / self._rate
        wait = captured + self.delay_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.captured_s = captured
        out = av.Packet(bytes(packet))
        out.pts = out.dts = pts
        out.time_base = fractions.Fraction(1, self._rate)
        out.is_keyframe = packet.is_keyframe
        self.sent += 1
        return out


def capture_time_reports(sender: RTCRtpSender, track: PacedPackets, shift_s: float = 0.0) -> None:
    """Stamp this sender's SRs with the capture time of their packet, less ``shift_s``.

    aiortc stamps an SR with the time the last packet went out (``__ntp_timestamp``, set right
    after each send, for the packet whose RTP timestamp the SR carries). A property on a
    per-sender subclass moves each stamp back to that packet's capture time
    (``track.captured_s``: aiortc sends every packet of a frame before it asks the track for the
    next one), so neither a track's ``delay_s`` nor event-loop lateness reaches the SRs.
    ``shift_s`` > 0 then stamps the track that much earlier than it was captured (the timestamp
    skew). Call it once per sender.
    """
    shift = round(shift_s * (1 << 32))
    key = "_crossmodald_ntp"

    def get(self: RTCRtpSender) -> int:
        return int(self.__dict__.get(key, 0))

    def set_(self: RTCRtpSender, value: int) -> None:
        if not value:
            self.__dict__[key] = 0
            return
        # ``value`` is aiortc's wall clock (NTP) read just now; step it back to the capture.
        late_s = time.monotonic() - track.captured_s
        if track.captured_s != track.last_frame_captured_s:  # a frame's first packet
            track.send_lateness_s.append((time.time(), late_s - track.delay_s))
            track.last_frame_captured_s = track.captured_s
        self.__dict__[key] = value - round(late_s * (1 << 32)) - shift

    cls = type(
        "CaptureTimeSender",
        (type(sender),),
        {"_RTCRtpSender__ntp_timestamp": property(get, set_)},
    )
    current = sender.__dict__.pop("_RTCRtpSender__ntp_timestamp", 0)
    sender.__class__ = cls
    sender.__dict__[key] = current


@dataclass
class Publisher:
    """One WHIP publisher (aiortc PeerConnection + HTTP session)."""

    pc: RTCPeerConnection
    http: aiohttp.ClientSession
    location: str | None = None
    channel: RTCDataChannel | None = None
    messages: list[tuple[int, str]] = field(default_factory=list)  # (monotonic ns, text)
    status: int = 0
    tracks: list[PacedPackets] = field(default_factory=list)
    response_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)

    async def close(self) -> int | None:
        """DELETE the session (if any) and close everything; returns the DELETE status."""
        status = None
        if self.location is not None:
            async with self.http.delete(self.location, headers=self._headers) as response:
                status = response.status
            self.location = None
        await self.pc.close()
        await self.http.close()
        return status

    _headers: dict[str, str] = field(default_factory=dict)


async def publish(
    base_url: str,
    stream: str,
    media: EncodedMedia,
    *,
    network_audio_lead_ms: float = 0.0,
    timestamp_audio_lead_ms: float = 0.0,
    token: str | None = None,
    events_channel: bool = True,
    loop: bool = False,
    start_delay_s: float = 0.5,
    offer_filter: Callable[[str], str] | None = None,
    origin: str | None = None,
) -> Publisher:
    """Publish ``media`` over WHIP to ``base_url`` as ``stream``; returns once answered.

    Args:
        network_audio_lead_ms: Transport skew: > 0 delays the video packets by that much,
            < 0 delays the audio packets (SRs keep the capture time; see the module docs).
        timestamp_audio_lead_ms: Timestamp skew: > 0 makes the audio's RTP timestamps, through
            its SRs, say it was captured that much earlier than it was (< 0: later); the media
            and its sending stay as they are.
        offer_filter: Rewrites the offer before it is sent (e.g. :func:`obs_style`).
        origin: An ``Origin`` header to send (as a browser page would).
    """
    loopback_only()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = PacedPackets("video", media.video, 90000, media.duration_s, loop)
    audio = PacedPackets("audio", media.audio, 48000, media.duration_s, loop)
    vsender = pc.addTransceiver(video, direction="sendonly").sender
    asender = pc.addTransceiver(audio, direction="sendonly").sender
    if media.video_codec == "h264":
        from aiortc.rtcrtpsender import RTCRtpSender as Sender

        caps = [c for c in Sender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        pc.getTransceivers()[0].setCodecPreferences(caps)
    lead_s = network_audio_lead_ms / 1000
    delayed = video if lead_s > 0 else audio
    delayed.delay_s = abs(lead_s)
    capture_time_reports(vsender, video)
    capture_time_reports(asender, audio, timestamp_audio_lead_ms / 1000)
    headers = {"Content-Type": "application/sdp"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if origin is not None:
        headers["Origin"] = origin
    pub = Publisher(pc, aiohttp.ClientSession(), tracks=[video, audio])
    pub._headers = {k: v for k, v in headers.items() if k == "Authorization"}
    if events_channel:
        channel = pc.createDataChannel("events")
        pub.channel = channel
        channel.on("message", lambda text: pub.messages.append((time.monotonic_ns(), text)))
    # The shared clock must be set before the senders start pulling packets.
    t0 = time.monotonic() + start_delay_s + 2.0
    video.t0 = audio.t0 = t0
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    if offer_filter is not None:
        offer = offer_filter(offer)
    async with pub.http.post(
        f"{base_url}/v1/whip/{stream}", data=offer, headers=headers
    ) as response:
        pub.response_headers = CIMultiDict(response.headers)
        pub.status = response.status
        body = await response.text()
        if response.status != 201:
            await pc.close()
            await pub.http.close()
            raise WhipRefused(response.status, body, CIMultiDict(response.headers))
        location = response.headers["Location"]
        pub.location = location if location.startswith("http") else base_url + location
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return pub


class WhipRefused(Exception):
    """The endpoint did not answer 201."""

    def __init__(self, status: int, body: str, headers: CIMultiDict[str]) -> None:
        super().__init__(f"WHIP answered {status}: {body[:200]}")
        self.status = status
        self.body = body
        self.headers = headers


# -- a daemon with WHIP on loopback -----------------------------------------------------------


@dataclass
class WhipDaemon:
    """A running daemon (real plugins, bus, windows, API with WHIP) on 127.0.0.1."""

    daemon: Any
    base_url: str
    events: list[dict[str, Any]]
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait until ``predicate()`` holds, re-checking at every event published."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def of(self, stream: str, event_type: str) -> list[dict[str, Any]]:
        """The events of one type on one stream, in order."""
        return [e for e in self.events if e["stream"] == stream and e["type"] == event_type]

    def stream(self, name: str) -> dict[str, Any]:
        """The stream's /v1/streams entry (from the daemon itself)."""
        found: dict[str, Any] = next(s for s in self.daemon.streams() if s["name"] == name)
        return found


@contextlib.asynccontextmanager
async def whip_daemon(
    *, plugins: list[dict[str, Any]] | None = None, api: dict[str, Any] | None = None, **webrtc: Any
) -> AsyncIterator[WhipDaemon]:
    """Run a daemon with its API and WHIP on 127.0.0.1 (a free port), ICE on loopback only."""
    import json

    from crossmodald.service.config import DaemonConfig
    from crossmodald.service.daemon import Daemon

    loopback_only()
    config = DaemonConfig.model_validate(
        {
            "plugins": plugins if plugins is not None else [{"type": "avsync", "method": "flash"}],
            "api": {"host": "127.0.0.1", "port": 0, **(api or {})},
            "webrtc": {"host_addresses": ["127.0.0.1"], **webrtc},
        }
    )
    events: list[dict[str, Any]] = []
    changed = asyncio.Event()

    def listen(envelope: Any) -> None:
        events.append(json.loads(envelope.json))
        changed.set()

    daemon = Daemon(config, listeners=(listen,))
    await daemon.load_plugins()
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run(stop))
    while not daemon.ready():  # the daemon offers no readiness event to wait on
        if run.done():
            await run  # raises what stopped it
        await asyncio.sleep(0.01)
    try:
        yield WhipDaemon(daemon, f"http://127.0.0.1:{daemon.api_port}", events, changed)
    finally:
        stop.set()
        await run


def obs_style(offer: str) -> str:
    """Rewrite an aiortc offer the way OBS's WHIP output sends it.

    No ICE candidates (OBS gathers after the answer, so the server learns its address as a
    peer-reflexive candidate), video H.264 42e01f packetization-mode=1 only with no RTX, audio
    Opus only (libdatachannel's defaults).
    """
    out: list[str] = []
    keep: set[str] = set()
    section = ""
    lines = offer.replace("\r\n", "\n").split("\n")
    # First pass: the payload types to keep per section.
    for line in lines:
        if line.startswith("m="):
            section = line.split()[0][2:]
        elif line.startswith("a=rtpmap:"):
            pt, codec = line[9:].split(" ", 1)
            if section == "audio" and codec.lower().startswith("opus/"):
                keep.add(f"audio:{pt}")
            if section == "video" and codec.upper().startswith("H264/"):
                keep.add(f"video:{pt}?")
        elif line.startswith("a=fmtp:") and section == "video":
            pt, params = line[7:].split(" ", 1)
            if f"video:{pt}?" in keep and "profile-level-id=42e01f" in params.lower():
                keep.add(f"video:{pt}")
    section = ""
    for line in lines:
        if not line:
            continue
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        if line.startswith("m="):
            parts = line.split()
            section = parts[0][2:]
            if section in ("audio", "video"):
                pts = [pt for pt in parts[3:] if f"{section}:{pt}" in keep]
                line = " ".join([*parts[:3], *pts])
            out.append(line)
            continue
        if line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) and section in (
            "audio",
            "video",
        ):
            pt = line.split(":", 1)[1].split(" ", 1)[0]
            if f"{section}:{pt}" not in keep:
                continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"
