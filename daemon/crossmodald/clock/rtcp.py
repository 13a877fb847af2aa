"""RTP timestamps to the sender's capture clock through RTCP Sender Reports (pure, no I/O).

A WebRTC sender stamps each track with RTP timestamps that start at a random origin and share no
time with the other track. Its RTCP Sender Reports (SRs) pair an RTP timestamp with the sender's
NTP wall clock, one clock for all tracks of a PeerConnection (one CNAME), so mapping every frame
through its track's SRs puts audio and video on one capture timeline (see WEBRTC.md §2-3).

Pieces, all plain synchronous classes (their tests need no event loop):

* :class:`RtpUnwrapper` extends 32-bit RTP timestamps to 64 bits (wrap-around both ways).
* :class:`SrMapper` keeps a window of one track's SRs and fits NTP = a + b * RTP by least squares
  (clock drift), detects a sender restart (an SR far off the fit, or NTP going back) and starts
  again from it.
* :class:`StreamTimeline` maps the frames of all tracks of one stream to one ns timeline: by
  arrival time until a track has an SR (clock "arrival", less exact), then by the SR mapping
  (clock "rtcp"); it subtracts each track's decoder delay (Opus: 6.5 ms), reports timestamp
  jumps and measures the transport offset (see :class:`TransportEstimate`).

Times: NTP timestamps are 64-bit fixed point seconds since 1900; everything else is integer ns.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

from crossmodald.media import NS_PER_MS, NS_PER_S, ClockKind

__all__ = [
    "NTP_UNIX_OFFSET_S",
    "OPUS_DECODER_DELAY_NS",
    "FrameTime",
    "RtpUnwrapper",
    "SrMapper",
    "StreamTimeline",
    "TrackSpec",
    "TransportEstimate",
    "frame_rtp",
    "ntp_to_ns",
    "unix_ns_to_ntp",
]

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET_S = 2_208_988_800
#: Decoded Opus lags its own RTP timestamp by the encoder's 312-sample lookahead (6.5 ms at
#: 48 kHz), measured in WEBRTC.md §7; subtracted so an audible onset lands at its capture time.
OPUS_DECODER_DELAY_NS = 6_500_000

_WRAP = 1 << 32
_HALF = 1 << 31


def ntp_to_ns(ntp: int) -> int:
    """A 64-bit NTP timestamp (32.32 fixed point seconds since 1900) in ns since 1900."""
    seconds, fraction = ntp >> 32, ntp & 0xFFFFFFFF
    return seconds * NS_PER_S + (fraction * NS_PER_S + _HALF) // _WRAP


def unix_ns_to_ntp(unix_ns: int) -> int:
    """Unix time in ns as a 64-bit NTP timestamp (what a sender puts in an SR)."""
    ntp_ns = unix_ns + NTP_UNIX_OFFSET_S * NS_PER_S
    seconds, rest = divmod(ntp_ns, NS_PER_S)
    return (seconds << 32) | ((rest << 32) // NS_PER_S)


def frame_rtp(pts: int, time_base: Fraction, clock_rate: int, origin: int) -> int:
    """The 32-bit RTP timestamp of a frame aiortc decoded, from its ``pts``.

    aiortc's receiver subtracts the track's first RTP timestamp (``origin``) and hands frames
    with ``pts`` in ``time_base`` ticks (1/clock_rate for its own decoders); this undoes both, so
    the frame can be placed by the SRs, which speak in RTP timestamps.

    Args:
        pts: The frame's pts.
        time_base: The frame's time base.
        clock_rate: The track's RTP clock rate.
        origin: The RTP timestamp aiortc subtracted (0 when not known yet).

    Returns:
        The RTP timestamp, in ``[0, 2**32)``.
    """
    ticks = pts * time_base.numerator * clock_rate // time_base.denominator
    return (ticks + origin) & 0xFFFFFFFF


def _signed32(diff: int) -> int:
    diff &= 0xFFFFFFFF
    return diff - _WRAP if diff >= _HALF else diff


class RtpUnwrapper:
    """Extends 32-bit RTP timestamps to 64 bits: each one is placed nearest the previous one.

    A step of less than 2^31 either way is taken as it is, so wrap-around (forward) and packet
    reordering or a sender restart (backward) both come out right, unlike aiortc's mapper, which
    takes any decrease as a wrap (aiortc #1041).
    """

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, rtp: int) -> int:
        """The extended timestamp of ``rtp`` (0 <= rtp < 2^32)."""
        if not 0 <= rtp < _WRAP:
            raise ValueError(f"RTP timestamp must be a 32-bit unsigned integer, got {rtp}")
        if self._last is None:
            self._last = rtp
        else:
            self._last += _signed32(rtp - self._last)
        return self._last

    def reset(self) -> None:
        """Forget the history (the next timestamp is taken as it is)."""
        self._last = None


@dataclass(frozen=True, slots=True)
class _Report:
    ext_rtp: int
    ntp_ns: int


class SrMapper:
    """One track's RTP -> sender NTP mapping, from its recent Sender Reports.

    Over a short span (under ``min_fit_span_s``) the nominal clock rate is used with the mean
    offset of the SRs; over a longer one, a least-squares line over the last ``history`` SRs, whose slope is kept within ``max_rate_error_ppm`` of nominal (SR times carry
    send jitter, and a short span would otherwise tilt the line).

    A sender restart (new RTP origin, new clock) shows as an SR more than
    ``restart_tolerance_ns`` off the current line, or as NTP going back: the history is dropped
    and the mapping starts again from that SR (counted in :attr:`restarts`).

    Args:
        clock_rate: RTP ticks per second (90000 video, 48000 Opus).
        history: SRs kept for the fit.
        restart_tolerance_ns: Largest disagreement with the line still taken as jitter.
        max_rate_error_ppm: Bound on the fitted rate's deviation from ``clock_rate``.
        min_fit_span_s: SRs spanning less than this give the nominal rate (and their mean
            offset); a longer span fits the rate too.
    """

    def __init__(
        self,
        clock_rate: int,
        *,
        history: int = 16,
        restart_tolerance_ns: int = 200 * NS_PER_MS,
        max_rate_error_ppm: float = 1000.0,
        min_fit_span_s: float = 5.0,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.clock_rate = clock_rate
        self.restart_tolerance_ns = restart_tolerance_ns
        self.max_rate_error_ppm = max_rate_error_ppm
        self.min_fit_span_s = min_fit_span_s
        self.reports_seen = 0
        self.restarts = 0
        self._reports: deque[_Report] = deque(maxlen=history)
        self._unwrap = RtpUnwrapper()
        # The fitted line: ntp_ns = anchor_ntp + (ext_rtp - anchor_rtp) * ns_per_tick
        self._anchor_rtp = 0
        self._anchor_ntp = 0.0
        self._ns_per_tick = NS_PER_S / clock_rate

    @property
    def ready(self) -> bool:
        """Whether at least one SR has been taken (the mapping exists)."""
        return bool(self._reports)

    @property
    def rate_error_ppm(self) -> float:
        """The fitted clock rate's deviation from nominal (ppm; positive = sender clock fast)."""
        return (NS_PER_S / self.clock_rate / self._ns_per_tick - 1.0) * 1e6

    def add(self, ntp: int, rtp: int) -> bool:
        """Take one SR (its 64-bit NTP and 32-bit RTP timestamps).

        Returns:
            True when taken; False when ignored (NTP 0: aiortc senders send it before media).
        """
        if ntp == 0:
            return False
        ntp_ns = ntp_to_ns(ntp)
        ext = self._unwrap.unwrap(rtp)
        if self._reports:
            last = self._reports[-1]
            predicted = self._predict(ext)
            if ntp_ns < last.ntp_ns or abs(ntp_ns - predicted) > self.restart_tolerance_ns:
                self.restarts += 1
                self._reports.clear()
                self._unwrap.reset()
                ext = self._unwrap.unwrap(rtp)
        self._reports.append(_Report(ext, ntp_ns))
        self.reports_seen += 1
        self._fit()
        return True

    def to_ntp_ns(self, rtp: int) -> int | None:
        """The sender NTP time (ns since 1900) of RTP timestamp ``rtp``, or None before any SR.

        ``rtp`` is placed within 2^31 ticks of the newest SR (13 h of video, 12 h of audio).
        """
        if not self._reports:
            return None
        ext = self._reports[-1].ext_rtp + _signed32(rtp - self._reports[-1].ext_rtp)
        return round(self._predict(ext))

    def _predict(self, ext_rtp: int) -> float:
        return self._anchor_ntp + (ext_rtp - self._anchor_rtp) * self._ns_per_tick

    def _fit(self) -> None:
        reports = self._reports
        nominal = NS_PER_S / self.clock_rate
        last = reports[-1]
        # Centre on the means so the numbers stay small (no cancellation).
        mean_rtp = sum(r.ext_rtp for r in reports) / len(reports)
        mean_ntp = sum(r.ntp_ns for r in reports) / len(reports)
        span_ticks = reports[-1].ext_rtp - reports[0].ext_rtp
        if span_ticks < self.min_fit_span_s * self.clock_rate:
            # Too short to tell a rate error from SR jitter: nominal rate, averaged offset.
            self._ns_per_tick = nominal
            self._anchor_rtp = last.ext_rtp
            self._anchor_ntp = mean_ntp + (last.ext_rtp - mean_rtp) * nominal
            return
        sxx = sum((r.ext_rtp - mean_rtp) ** 2 for r in reports)
        sxy = sum((r.ext_rtp - mean_rtp) * (r.ntp_ns - mean_ntp) for r in reports)
        slope = sxy / sxx if sxx > 0 else nominal
        bound = nominal * self.max_rate_error_ppm * 1e-6
        slope = min(max(slope, nominal - bound), nominal + bound)
        self._ns_per_tick = slope
        self._anchor_rtp = round(mean_rtp)
        self._anchor_ntp = mean_ntp + (self._anchor_rtp - mean_rtp) * slope


@dataclass(frozen=True, slots=True)
class TrackSpec:
    """One track of a stream.

    Attributes:
        kind: "audio" or "video".
        clock_rate: RTP ticks per second.
        decoder_delay_ns: How much the decoded media lags its RTP timestamp (Opus: 6.5 ms);
            subtracted from every mapped time.
    """

    kind: str
    clock_rate: int
    decoder_delay_ns: int = 0


@dataclass(frozen=True, slots=True)
class FrameTime:
    """Where one decoded frame sits on the stream's timeline.

    Attributes:
        pts_ns: Its time on the stream's timeline.
        clock: RTCP when every track that has delivered media is mapped by SRs, else ARRIVAL.
        jump_ns: How far this frame's track moved on the timeline here, against where its RTP
            spacing from the previous frame puts it (0 when it did not).
        change: What happened here, if anything worth reporting: "timestamp_jump" (the RTP
            step contradicts the arrival times), "sender_restart" (the SRs start a new line),
            "clock_switch" (from arrival to SR timing) or "mapping_moved" (an SR update moved
            the track by more than ``report_move_ns``); "" otherwise.
        note: One line saying so ("" when ``change`` is "").
    """

    pts_ns: int
    clock: ClockKind
    jump_ns: int = 0
    change: str = ""
    note: str = ""


#: The transport offset's medians take each track's arrivals of this last span of wall time:
#: the same span for both tracks, so that a change in the path's delay (congestion, a new
#: route) moves both medians together instead of showing as an offset for a while.
TRANSPORT_WINDOW_NS = 5 * NS_PER_S
#: At most this many arrivals kept per track (5 s of 10 ms audio packets, 100 fps video).
TRANSPORT_MAX_SAMPLES = 512


@dataclass(frozen=True, slots=True)
class TransportEstimate:
    """The transport offset: how the sender's SR-mapped timestamps and the arrival disagree.

    Each track's latency is a packet's arrival on the receiver's wall clock minus its SR-mapped
    capture time on the sender's clock. The clocks of two machines differ, so each latency
    alone carries that difference, but the two tracks share the sender's clock and the
    receiver's, so the difference of the latencies is exact. It is one measurement, read from
    either side (both in the ITU-R BT.1359 sign: positive = audio ahead):

    * ``transport_offset_ms`` = audio latency - video latency: the A/V offset the SR-mapped
      timestamps give media that arrive together. A sender whose audio timestamps (RTP + SRs)
      say the audio was captured X ms earlier than it was, sending in sync, shows +X here, and
      ``avsync`` (which measures on the same SR timeline) finds the same +X.
    * ``audio_lead_ms`` = video latency - audio latency (= -``transport_offset_ms``): how far
      audio arrives ahead of video relative to their SR-mapped capture times, i.e. what a
      player that ignored the SRs (playing by arrival) would add to the content offset. With
      correct SRs it is the network's and the sender pacing's doing: video packets 80 ms late
      give +80 here (and -80 as ``transport_offset_ms``) while ``sync.offset`` stays put.

    The content offset (``sync.offset``) is measured on the SR timeline, so the offset seen by
    arrival is ``sync.offset + audio_lead_ms`` (= ``sync.offset - transport_offset_ms``).

    Attributes:
        transport_offset_ms: Audio latency minus video latency (positive: the SR-mapped
            timestamps put the audio ahead of where its arrival puts it). None until both
            tracks have SR-mapped packets.
        audio_lead_ms: Video latency minus audio latency (positive: audio arrives ahead of
            video, relative to their SR-mapped capture). None likewise.
        audio_latency_ms: Median audio latency (includes the clock difference of the hosts).
        video_latency_ms: Median video latency (likewise).
        timing: "rtcp" once every track is mapped by SRs, else "arrival".
        audio_reports: SRs taken on the audio track.
        video_reports: SRs taken on the video track.
        restarts: Sender restarts seen (all tracks).
        samples: Latency samples behind the medians (both tracks; the last
            :data:`TRANSPORT_WINDOW_NS`).
    """

    transport_offset_ms: float | None
    audio_lead_ms: float | None
    audio_latency_ms: float | None
    video_latency_ms: float | None
    timing: str
    audio_reports: int
    video_reports: int
    restarts: int
    samples: int

    def as_dict(self) -> dict[str, float | int | str | None]:
        """The estimate as a JSON-ready dict (the ``sync.transport`` event's data)."""
        return {
            "transport_offset_ms": self.transport_offset_ms,
            "audio_lead_ms": self.audio_lead_ms,
            "audio_latency_ms": self.audio_latency_ms,
            "video_latency_ms": self.video_latency_ms,
            "timing": self.timing,
            "audio_reports": self.audio_reports,
            "video_reports": self.video_reports,
            "restarts": self.restarts,
            "samples": self.samples,
        }


@dataclass(slots=True)
class _Track:
    spec: TrackSpec
    mapper: SrMapper
    unwrap: RtpUnwrapper = field(default_factory=RtpUnwrapper)
    # Arrival timing: pts_ns = media_ns + anchor_ns (media_ns: ext RTP in ns).
    anchor_ns: int | None = None
    last_ext: int | None = None
    last_arrival_ns: int = 0
    last_pts_ns: int = 0
    rtcp: bool = False  # currently mapped by SRs
    restarts_seen: int = 0
    # (arrival Unix ns, latency ns) of the latest frames' first packets.
    latencies_ns: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=TRANSPORT_MAX_SAMPLES)
    )


class StreamTimeline:
    """Maps decoded frames of one stream's tracks onto one ns timeline; see the module docs.

    The timeline starts near 0 at the first frame's arrival. Until a track has an SR its frames
    are placed by arrival: the track's first frame at its arrival, the rest by their RTP
    spacing (exact within the track; across tracks off by the difference of their receive
    latencies, e.g. aiortc's 80 ms audio jitter buffer against ~40 ms for video). With SRs the
    SR-mapped sender time is used; the first track to get SRs fixes the offset between the two
    (so it does not move), the others move once, by their arrival-timing error
    (:attr:`FrameTime.jump_ns`).

    Args:
        tracks: The stream's tracks.
        max_step_ns: An RTP step between consecutive frames that disagrees with their arrival
            step by more than this is a timestamp jump; the track is placed by arrival again
            from there (until its next SR).
        history: SRs kept per track for the regression.
        report_move_ns: A move of a track on the timeline larger than this, when an SR updates
            its line, is reported (:attr:`FrameTime.note`); smaller ones are SR jitter.
    """

    def __init__(
        self,
        tracks: list[TrackSpec],
        *,
        max_step_ns: int = 1 * NS_PER_S,
        history: int = 16,
        report_move_ns: int = 20 * NS_PER_MS,
    ) -> None:
        kinds = [t.kind for t in tracks]
        if not tracks or len(set(kinds)) != len(kinds):
            raise ValueError(f"need one or more tracks with distinct kinds, got {kinds}")
        self.max_step_ns = max_step_ns
        self.report_move_ns = report_move_ns
        self._history = history
        self._tracks = {t.kind: _Track(t, SrMapper(t.clock_rate, history=history)) for t in tracks}
        self._origin_arrival_ns: int | None = None
        # sender NTP ns -> timeline ns: pts = ntp_ns - ntp_origin_ns (set by the first SR track)
        self._ntp_origin_ns: int | None = None

    @property
    def kinds(self) -> list[str]:
        """The track kinds, in the order given."""
        return list(self._tracks)

    def _track(self, kind: str) -> _Track:
        try:
            return self._tracks[kind]
        except KeyError:
            raise ValueError(f"no {kind!r} track in this stream (tracks: {self.kinds})") from None

    def add_sender_report(self, kind: str, ntp: int, rtp: int) -> bool:
        """Take one SR for a track; returns whether it was used (NTP 0 is ignored)."""
        return self._track(kind).mapper.add(ntp, rtp)

    def sender_reports(self, kind: str) -> int:
        """SRs taken so far on a track."""
        return self._track(kind).mapper.reports_seen

    def sender_ns(self, kind: str, rtp: int) -> int | None:
        """A track's RTP timestamp on the sender's NTP clock (ns since 1900); None before its SRs.

        A query: unlike :meth:`map_frame` it changes nothing (the WHEP relay times forwarded
        frames with it).
        """
        return self._track(kind).mapper.to_ntp_ns(rtp)

    def clock(self) -> ClockKind:
        """RTCP when every track that has delivered media is mapped by SRs, else ARRIVAL."""
        started = [t for t in self._tracks.values() if t.last_ext is not None]
        if started and all(t.rtcp for t in started):
            return ClockKind.RTCP
        return ClockKind.ARRIVAL

    def map_frame(self, kind: str, rtp: int, arrival_ns: int) -> FrameTime:
        """Place a decoded frame.

        Args:
            kind: Its track.
            rtp: Its 32-bit RTP timestamp.
            arrival_ns: When it reached the daemon (monotonic clock).
        """
        track = self._track(kind)
        spec = track.spec
        ext = track.unwrap.unwrap(rtp)
        media_ns = ext * NS_PER_S // spec.clock_rate
        if self._origin_arrival_ns is None:
            self._origin_arrival_ns = arrival_ns
        note = change = ""
        expected: int | None = None  # where the frame belongs if its track does not move
        if track.last_ext is None:
            track.anchor_ns = arrival_ns - self._origin_arrival_ns - media_ns
        else:
            media_step = (ext - track.last_ext) * NS_PER_S // spec.clock_rate
            arrival_step = arrival_ns - track.last_arrival_ns
            expected = track.last_pts_ns + media_step
            if abs(media_step - arrival_step) > self.max_step_ns:
                # The RTP step contradicts the arrival times: continue by arrival, and drop
                # the SR line (it belongs to the old RTP origin) until the next SR.
                change = "timestamp_jump"
                note = (
                    f"{kind} RTP timestamp jumped by {media_step / NS_PER_S:+.3f} s "
                    f"in {arrival_step / NS_PER_S:.3f} s"
                )
                expected = track.last_pts_ns + arrival_step
                track.anchor_ns = expected + spec.decoder_delay_ns - media_ns
                if track.mapper.ready:
                    track.mapper = SrMapper(spec.clock_rate, history=self._history)
                    track.restarts_seen = 0
        assert track.anchor_ns is not None
        ntp_ns = track.mapper.to_ntp_ns(rtp)
        if ntp_ns is None:
            pts_ns = media_ns + track.anchor_ns - spec.decoder_delay_ns
        else:
            if self._ntp_origin_ns is None:
                # The first SR-mapped track keeps its place on the timeline.
                self._ntp_origin_ns = ntp_ns - (media_ns + track.anchor_ns)
            pts_ns = ntp_ns - self._ntp_origin_ns - spec.decoder_delay_ns
        jump_ns = 0 if expected is None else pts_ns - expected
        if not note and expected is not None:
            if ntp_ns is not None and not track.rtcp:
                change = "clock_switch"
                note = f"{kind} timing switched from arrival to RTCP sender reports"
            elif track.mapper.restarts != track.restarts_seen:
                change = "sender_restart"
                note = f"{kind} sender restarted (its reports start a new RTP/NTP line)"
            elif abs(jump_ns) > self.report_move_ns:
                change = "mapping_moved"
                note = f"{kind} sender-report mapping moved"
        track.rtcp = ntp_ns is not None
        track.restarts_seen = track.mapper.restarts
        track.last_ext = ext
        track.last_arrival_ns = arrival_ns
        track.last_pts_ns = pts_ns
        return FrameTime(pts_ns, self.clock(), jump_ns, change, note)

    def add_packet_arrival(self, kind: str, rtp: int, arrival_unix_ns: int) -> None:
        """Record a packet's arrival (receiver wall clock, Unix ns) for the transport offset."""
        track = self._track(kind)
        ntp_ns = track.mapper.to_ntp_ns(rtp)
        if ntp_ns is None:
            return
        capture_unix_ns = ntp_ns - NTP_UNIX_OFFSET_S * NS_PER_S
        track.latencies_ns.append((arrival_unix_ns, arrival_unix_ns - capture_unix_ns))

    def transport(self) -> TransportEstimate:
        """The current transport offset and per-track latencies.

        Each latency is the median over the track's arrivals in the last
        :data:`TRANSPORT_WINDOW_NS` before the latest arrival of any track.
        """
        latest = max(
            (t.latencies_ns[-1][0] for t in self._tracks.values() if t.latencies_ns), default=0
        )
        since = latest - TRANSPORT_WINDOW_NS
        recent = {
            kind: [latency for arrival, latency in t.latencies_ns if arrival >= since]
            for kind, t in self._tracks.items()
        }

        def median_ms(kind: str) -> float | None:
            latencies = recent.get(kind)
            if not latencies:
                return None
            return round(statistics.median(latencies) / NS_PER_MS, 2)

        audio, video = median_ms("audio"), median_ms("video")
        lead = round(video - audio, 2) if audio is not None and video is not None else None
        # One number read from both sides; "0.0 -" so that no offset reads as -0.0 in JSON.
        offset = None if lead is None else 0.0 - lead
        a, v = self._tracks.get("audio"), self._tracks.get("video")
        return TransportEstimate(
            transport_offset_ms=offset,
            audio_lead_ms=lead,
            audio_latency_ms=audio,
            video_latency_ms=video,
            timing=self.clock().value,
            audio_reports=a.mapper.reports_seen if a else 0,
            video_reports=v.mapper.reports_seen if v else 0,
            restarts=sum(t.mapper.restarts for t in self._tracks.values()),
            samples=sum(len(latencies) for latencies in recent.values()),
        )
