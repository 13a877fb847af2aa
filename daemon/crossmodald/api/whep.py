"""WHEP output: a WHIP stream re-synchronised for viewers (browsers, OBS, GStreamer ``whepsrc``).

Routes (added by :func:`setup_whep`, next to WHIP, with WHIP's token and CORS rules: with
``[[api.tokens]]`` a token with scope ``subscribe``, else ``[webrtc] token`` if set; origins from
``[webrtc] allowed_origins``):

``POST /v1/whep/{stream}``
    ``Content-Type: application/sdp`` offer (receive-only audio and/or video); answers ``201``
    with the SDP answer (every ICE candidate in it), ``Location`` and ``ETag``. The viewer
    receives the publisher's media, forwarded without re-encoding, with the leading track
    delayed by the stream's correction (:mod:`crossmodald.ingest.relay`).
``DELETE /v1/whep/session/{id}``
    Stops that viewer: ``200``; ``404`` for an unknown session.
``PATCH /v1/whep/session/{id}``
    ``405`` (no trickle ICE, no ICE restart).
``PUT /v1/whep/{stream}/correction``
    JSON ``{"audio_lead_ms": number}`` holds that correction for the stream (reached at the slew
    rate), ``{"audio_lead_ms": null}`` follows the measurement again; ``200`` with the
    correction's state. Needs scope ``admin`` (it changes what every viewer gets).

Errors are JSON ``{"error": "..."}``: 400 malformed offer or name, 401/403 token or origin,
404 no WHIP stream of that name is being published, 415 wrong content type, 422 the offer
cannot receive the publisher's codec (forwarding needs the same codec), 503 with
``Retry-After`` at ``[webrtc] whep_max_viewers``.

The correction of a stream (one for all its viewers) follows the stream's smoothed measured
offset (``sync.offset`` events with confidence >= ``whep_min_confidence``), or holds
``whep_audio_lead_ms`` when set; it changes by at most ``whep_max_slew_ms_per_s`` and holds its
last value while the measurement is unsure. Each change is announced as a ``sync.correction``
event of the stream (docs/events.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import hdrs, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from crossmodald.api.serverlog import shield_from_client
from crossmodald.api.sources import parse_json_body
from crossmodald.api.whip import (
    MAX_OFFER_BYTES,
    OfferError,
    WhipEndpoint,
    _capability,
    check_transport,
)
from crossmodald.bus.bus import EventFilter, SubscriberClosed, Subscription
from crossmodald.bus.events import Event
from crossmodald.config_base import NAME_PATTERN
from crossmodald.ingest.relay import (
    CorrectionController,
    EncodedTap,
    RelayTrack,
    due_time_reports,
)
from crossmodald.ingest.webrtc import WebRtcSource, ice_configuration
from crossmodald.media import NS_PER_S

__all__ = ["SYNC_CORRECTION", "WHEP_PREFIX", "WhepEndpoint", "setup_whep"]

log = logging.getLogger(__name__)

WHEP_PREFIX = "/v1/whep"
#: The event type announcing a stream's correction.
SYNC_CORRECTION = "sync.correction"
_SDP_TYPE = "application/sdp"
_NAME = re.compile(NAME_PATTERN)
_ALLOW_SESSION = "OPTIONS, DELETE"
#: How often the correction moves (and may be announced).
_TICK_S = 0.1
#: A change smaller than this since the last announcement is not announced (ms).
_ANNOUNCE_STEP_MS = 1.0
#: Announce at least this often while viewers watch, even without change (s).
_ANNOUNCE_EVERY_S = 5.0


@dataclass(slots=True)
class _Viewer:
    id: str
    stream: str
    etag: str
    pc: RTCPeerConnection
    tracks: list[RelayTrack] = field(default_factory=list)


@dataclass(slots=True)
class _StreamRelay:
    """One stream's forwarding: the tap on its publisher, its correction, its viewers."""

    stream: str
    source: WebRtcSource
    tap: EncodedTap
    correction: CorrectionController
    viewers: dict[str, _Viewer] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    media_end_ns: int = 0
    announced: tuple[float, str] | None = None
    announced_at_ns: int = 0


class WhepEndpoint:
    """The WHEP viewers of one daemon, fed by its WHIP publishers."""

    def __init__(self, whip: WhipEndpoint) -> None:
        self.whip = whip
        self.host = whip.host
        self.config = whip.config
        self.relays: dict[str, _StreamRelay] = {}
        self.viewers: dict[str, _Viewer] = {}
        self._pending = 0
        #: Corrections set through the API, by stream (None: follow the measurement).
        self.fixed: dict[str, float | None] = {}

    def add_routes(self, app: web.Application) -> None:
        """Add the WHEP routes to an (unfrozen) application."""
        app.router.add_route("OPTIONS", WHEP_PREFIX + "/{stream}", self._options)
        app.router.add_post(WHEP_PREFIX + "/{stream}", self._post)
        app.router.add_route("OPTIONS", WHEP_PREFIX + "/session/{id}", self._options)
        app.router.add_delete(WHEP_PREFIX + "/session/{id}", self._delete)
        app.router.add_patch(WHEP_PREFIX + "/session/{id}", self._patch)
        app.router.add_put(WHEP_PREFIX + "/{stream}/correction", self._put_correction)
        app.on_shutdown.append(self._on_shutdown)

    # -- handlers ---------------------------------------------------------------------------

    async def _options(self, request: web.Request) -> web.Response:
        # WHIP's preflight answer fits WHEP word for word (methods, headers, Accept-Post).
        return await self.whip._options(request)

    def _refused(
        self, request: web.Request, scope: Literal["subscribe", "admin"]
    ) -> web.Response | None:
        """The answer to a request from a foreign origin or without the ``scope``, else None."""
        whip = self.whip
        if whip._cors(request) is None:
            return whip._forbidden_origin(request)
        return whip._authorize(request, scope)

    def _stream_refused(
        self, request: web.Request, scope: Literal["subscribe", "admin"]
    ) -> web.Response | None:
        """:meth:`_refused`, and 400 for a stream name the API does not take."""
        refused = self._refused(request, scope)
        if refused is not None:
            return refused
        name = request.match_info["stream"]
        if not _NAME.fullmatch(name):
            return self.whip._error(request, 400, f"bad stream name {name[:80]!r}")
        return None

    async def _post(self, request: web.Request) -> web.Response:
        whip = self.whip
        refused = self._stream_refused(request, "subscribe")
        if refused is not None:
            return refused
        name = request.match_info["stream"]
        if request.content_type != _SDP_TYPE:
            got = request.headers.get(hdrs.CONTENT_TYPE, "none")
            return whip._error(
                request, 415, f"WHEP offers must be Content-Type {_SDP_TYPE}, got {got[:80]!r}"
            )
        body = await request.read()  # read by the API's limits middleware (body_timeout_s)
        if len(body) > MAX_OFFER_BYTES:
            return whip._error(request, 413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
        try:
            sdp = body.decode("utf-8")
            parsed = SessionDescription.parse(sdp)
        except Exception as exc:  # aiortc's parser asserts; any failure means malformed
            return whip._error(request, 400, f"malformed SDP offer: {exc or type(exc).__name__}")
        try:
            # What ICE and DTLS need, checked as for WHIP before any PeerConnection exists.
            for index, media in enumerate(parsed.media):
                check_transport(media, index)
        except OfferError as exc:
            return whip._error(request, exc.status, exc.message)
        source = self._source(name)
        if source is None:
            return whip._error(
                request,
                404,
                f"no WHIP stream {name!r} is being published (WHEP forwards WHIP streams)",
            )
        if len(self.viewers) + self._pending >= self.config.whep_max_viewers:
            return whip._error(
                request,
                503,
                f"too many WHEP viewers (webrtc.whep_max_viewers = "
                f"{self.config.whep_max_viewers}); try again later",
                {hdrs.RETRY_AFTER: str(self.config.retry_after_s)},
            )
        codecs = _publisher_codecs(source)
        wanted: dict[str, RTCRtpCodecParameters] = {}
        for media in parsed.media:
            if media.kind not in codecs or media.kind in wanted:
                continue
            common = find_common_codecs([codecs[media.kind]], media.rtp.codecs)
            if not common:
                offered = ", ".join(dict.fromkeys(c.mimeType for c in media.rtp.codecs))
                return whip._error(
                    request,
                    422,
                    f"the viewer cannot receive the publisher's {media.kind} codec "
                    f"{codecs[media.kind].mimeType} (offered: {offered or 'none'}); media is "
                    "forwarded without re-encoding",
                )
            wanted[media.kind] = codecs[media.kind]
        if not wanted:
            return whip._error(request, 422, "the offer receives no audio or video")
        self._pending += 1
        try:
            # Shielded (see serverlog.shield_from_client): a viewer that hangs up mid-answer
            # does not leave a half-made PeerConnection behind.
            return await shield_from_client(self._answer(request, name, source, sdp, wanted))
        finally:
            self._pending -= 1

    async def _answer(
        self,
        request: web.Request,
        name: str,
        source: WebRtcSource,
        sdp: str,
        codecs: dict[str, RTCRtpCodecParameters],
    ) -> web.Response:
        relay = self._relay(name, source)
        pc = RTCPeerConnection(ice_configuration(self.config))
        viewer = _Viewer(
            id=secrets.token_urlsafe(24), stream=name, etag=f'"{secrets.token_hex(8)}"', pc=pc
        )
        try:
            for kind, codec in codecs.items():
                track = RelayTrack(kind, relay.tap, relay.correction)
                viewer.tracks.append(track)
                transceiver = pc.addTransceiver(track, direction="sendonly")
                transceiver.setCodecPreferences([_capability(codec)])
                due_time_reports(transceiver.sender, track)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, AssertionError, AttributeError, KeyError, IndexError) as exc:
            await self._close_viewer(viewer)
            self._drop_relay_if_idle(name)
            return self.whip._error(request, 400, f"cannot use the SDP offer: {exc}")
        except Exception:
            await self._close_viewer(viewer)
            self._drop_relay_if_idle(name)
            raise
        relay.viewers[viewer.id] = viewer
        self.viewers[viewer.id] = viewer
        pc.on("connectionstatechange", lambda: self._on_state(viewer))
        headers = {
            **(self.whip._cors(request) or {}),
            hdrs.LOCATION: f"{WHEP_PREFIX}/session/{viewer.id}",
            hdrs.ETAG: viewer.etag,
            hdrs.CONTENT_TYPE: _SDP_TYPE,
        }
        log.info("whep: %s watching stream %r (session %s)", request.remote, name, viewer.id)
        self._announce(relay, force=True)
        return web.Response(status=201, text=pc.localDescription.sdp, headers=headers)

    async def _delete(self, request: web.Request) -> web.Response:
        whip = self.whip
        refused = self._refused(request, "subscribe")
        if refused is not None:
            return refused
        viewer = self.viewers.get(request.match_info["id"])
        if viewer is None:
            return whip._error(request, 404, "no such WHEP session (ended, or never existed)")
        await shield_from_client(self.end_viewer(viewer))
        return web.json_response(
            {"stream": viewer.stream, "state": "ended"}, headers=whip._cors(request) or {}
        )

    async def _put_correction(self, request: web.Request) -> web.Response:
        whip = self.whip
        refused = self._stream_refused(request, "admin")
        if refused is not None:
            return refused
        name = request.match_info["stream"]
        try:
            body = parse_json_body(await request.read())
        except ValueError as exc:
            return whip._error(
                request, 400, f'expected JSON {{"audio_lead_ms": number or null}}: {exc}'
            )
        value = body.get("audio_lead_ms", "missing") if isinstance(body, dict) else "missing"
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not -2000 <= float(value) <= 2000
        ):
            return whip._error(
                request, 400, '"audio_lead_ms" must be a number within ±2000 or null'
            )
        fixed = None if value is None else float(value)
        if fixed is None and self.config.whep_audio_lead_ms is not None:
            fixed = self.config.whep_audio_lead_ms  # back to the configured one
        self.fixed[name] = fixed
        relay = self.relays.get(name)
        if relay is not None:
            relay.correction.set_fixed(fixed)
            self._announce(relay, force=True)
        return web.json_response(
            {
                "stream": name,
                "source": "fixed" if fixed is not None else "measured",
                "audio_lead_ms": fixed,
            },
            headers=whip._cors(request) or {},
        )

    async def _patch(self, request: web.Request) -> web.Response:
        return self.whip._error(
            request,
            405,
            "trickle ICE and ICE restarts are not supported: send every candidate in the offer",
            {hdrs.ALLOW: _ALLOW_SESSION},
        )

    # -- relays and viewers -----------------------------------------------------------------

    def _source(self, name: str) -> WebRtcSource | None:
        for session in self.whip.sessions.values():
            if session.stream == name and session.source is not None and not session.closing:
                return session.source
        return None

    def _relay(self, name: str, source: WebRtcSource) -> _StreamRelay:
        relay = self.relays.get(name)
        if relay is not None:
            if relay.source is source:
                return relay
            self._retire(relay)  # a new publisher took the name: the old one's viewers end
        cfg = self.config
        relay = _StreamRelay(
            stream=name,
            source=source,
            tap=EncodedTap(source.receivers(), source.timeline),
            correction=CorrectionController(
                max_slew_ms_per_s=cfg.whep_max_slew_ms_per_s,
                min_confidence=cfg.whep_min_confidence,
                fixed_audio_lead_ms=self.fixed.get(name, cfg.whep_audio_lead_ms),
            ),
        )
        self.relays[name] = relay
        loop = asyncio.get_running_loop()
        try:
            # From the stream's buffered events on: the first viewer starts at the offset
            # already measured (nothing has played at another one), later changes slew.
            sub = self.host.bus.subscribe(
                EventFilter.from_lists(["sync.offset"], [name]), 0, name=f"whep:{name}:offsets"
            )
        except SubscriberClosed:
            sub = None
        if sub is not None:
            for envelope in sub.drain_nowait(1_000_000):
                self._take_offset(relay, envelope)
            relay.correction.start_at_target()
            relay.tasks.append(
                loop.create_task(self._measure(relay, sub), name=f"whep:measure:{name}")
            )
        relay.tasks.append(loop.create_task(self._tick(relay), name=f"whep:correct:{name}"))
        return relay

    def _retire(self, relay: _StreamRelay) -> None:
        """Drop a relay whose publisher is gone, with its viewers."""
        self.relays.pop(relay.stream, None)
        relay.tap.close()
        for task in relay.tasks:
            task.cancel()
        for viewer in list(relay.viewers.values()):
            self.viewers.pop(viewer.id, None)
            asyncio.get_running_loop().create_task(
                self._close_viewer(viewer), name=f"whep:end:{viewer.stream}"
            )
        relay.viewers.clear()

    def _drop_relay_if_idle(self, name: str) -> None:
        relay = self.relays.get(name)
        if relay is not None and not relay.viewers:
            self.relays.pop(name, None)
            relay.tap.close()
            for task in relay.tasks:
                task.cancel()

    def _on_state(self, viewer: _Viewer) -> None:
        if viewer.pc.connectionState in ("failed", "closed") and viewer.id in self.viewers:
            asyncio.get_running_loop().create_task(
                self.end_viewer(viewer), name=f"whep:end:{viewer.stream}"
            )

    async def end_viewer(self, viewer: _Viewer) -> None:
        """Stop one viewer; the stream's relay goes when its last viewer does."""
        self.viewers.pop(viewer.id, None)
        relay = self.relays.get(viewer.stream)
        if relay is not None:
            relay.viewers.pop(viewer.id, None)
        await self._close_viewer(viewer)
        self._drop_relay_if_idle(viewer.stream)

    async def _close_viewer(self, viewer: _Viewer) -> None:
        for track in viewer.tracks:
            track.stop()
        with contextlib.suppress(Exception):
            await viewer.pc.close()

    async def aclose(self) -> None:
        """End every viewer (the daemon is stopping)."""
        for viewer in list(self.viewers.values()):
            await self.end_viewer(viewer)

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.aclose()

    # -- the correction ---------------------------------------------------------------------

    def _take_offset(self, relay: _StreamRelay, envelope: Any) -> None:
        body = envelope.as_dict()
        data: Any = body.get("data") or {}
        media: Any = body.get("media") or {}
        relay.media_end_ns = int(media.get("end_ns") or relay.media_end_ns)
        lead = data.get("smoothed_audio_lead_ms")
        if lead is None:
            lead = data.get("audio_lead_ms")
        confidence = float(data.get("confidence") or 0.0)
        relay.correction.measure(
            None if lead is None else float(lead),
            confidence if data.get("audio_lead_ms") is not None else 0.0,
        )

    async def _measure(self, relay: _StreamRelay, sub: Subscription) -> None:
        """Feed the stream's ``sync.offset`` events to its correction."""
        try:
            async for envelope in sub:
                self._take_offset(relay, envelope)
        except SubscriberClosed:
            pass
        finally:
            await sub.aclose()

    async def _tick(self, relay: _StreamRelay) -> None:
        """Move the correction at most by the slew; announce it; end viewers of an ended stream."""
        while True:
            await asyncio.sleep(_TICK_S)
            relay.correction.advance(time.monotonic_ns())
            self._announce(relay)
            if self._source(relay.stream) is not relay.source:
                for viewer in list(relay.viewers.values()):
                    await self.end_viewer(viewer)
                return

    def _announce(self, relay: _StreamRelay, *, force: bool = False) -> None:
        c = relay.correction
        state = "holding" if c.holding else "settled" if c.settled else "slewing"
        now = time.monotonic_ns()
        last = relay.announced
        if (
            not force
            and last is not None
            and last[1] == state
            and abs(last[0] - c.value_ms) < _ANNOUNCE_STEP_MS
            and now - relay.announced_at_ns < _ANNOUNCE_EVERY_S * NS_PER_S
        ):
            return
        relay.announced = (c.value_ms, state)
        relay.announced_at_ns = now
        tracks = [t for v in relay.viewers.values() for t in v.tracks]
        at = relay.media_end_ns
        self.host.publish(
            Event(
                type=SYNC_CORRECTION,
                stream=relay.stream,
                start_ns=at,
                end_ns=at,
                data={
                    "audio_lead_ms": round(c.value_ms, 3),
                    "target_audio_lead_ms": round(c.target_ms, 3),
                    "delayed": "audio" if c.value_ms > 0 else "video" if c.value_ms < 0 else None,
                    "state": state,
                    "source": c.source,
                    "max_slew_ms_per_s": c.max_slew_ms_per_s,
                    "viewers": len(relay.viewers),
                    "latency_ms": None
                    if relay.tap.latency_ns is None
                    else round(relay.tap.latency_ns / 1e6, 1),
                    "late_frames": sum(t.late for t in tracks),
                    "dropped_frames": sum(t.dropped for t in tracks),
                },
            )
        )


def _publisher_codecs(source: WebRtcSource) -> dict[str, RTCRtpCodecParameters]:
    """The codec each of the publisher's tracks was negotiated with."""
    out: dict[str, RTCRtpCodecParameters] = {}
    for transceiver in source.pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None) or []
        media = [c for c in codecs if c.mimeType.split("/", 1)[-1].lower() != "rtx"]
        if transceiver.kind in ("audio", "video") and media and transceiver.kind not in out:
            out[transceiver.kind] = media[0]
    return out


def setup_whep(app: web.Application, whip: WhipEndpoint) -> WhepEndpoint:
    """Add WHEP to an API application that serves WHIP (before it is served)."""
    endpoint = WhepEndpoint(whip)
    endpoint.add_routes(app)
    return endpoint
