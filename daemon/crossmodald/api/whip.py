"""WHIP (RFC 9725) ingest on the API server: publishers send WebRTC media to the daemon.

Routes (added to the API application by :func:`setup_whip`):

``POST /v1/whip/{stream}``
    ``Content-Type: application/sdp`` offer; answers ``201 Created`` with the SDP answer (every
    ICE candidate in it: no trickle needed, so OBS offers without candidates work), a
    ``Location`` for the session, an ``ETag`` and ``Link`` headers for configured STUN/TURN
    servers. The publisher becomes stream ``{stream}`` (its events carry that name).
``DELETE /v1/whip/session/{id}``
    Ends the session and its stream: ``200``; ``404`` for an unknown session.
``PATCH /v1/whip/session/{id}``
    ``405``: neither trickle ICE nor ICE restarts are supported (RFC 9725 §4.3).
``OPTIONS`` on both
    CORS preflight with ``Accept-Post: application/sdp``.

Errors are JSON ``{"error": "..."}`` with: 400 malformed SDP or stream name, 401 missing or
wrong token, 403 origin not allowed, 409 stream name in use, 413 offer too large, 415 wrong
content type, 422 more than one audio or video track or no usable codec (the message lists the
supported ones), 503 with ``Retry-After`` at ``[webrtc] max_streams``. A failed request changes
nothing for other streams.

Every WHIP response carries CORS headers for an allowed ``Origin`` (``[webrtc] allowed_origins``,
any by default), so a page from another origin can publish and read ``Location``.

Tokens: with ``[[api.tokens]]`` configured, WHIP needs one with scope ``publish``
(:func:`crossmodald.api.auth.check_bearer`); otherwise, if ``[webrtc] token`` is set, that
bearer token; otherwise none.

Events back to the publisher: when the publisher opens a data channel labelled ``events``,
every event of its stream is sent over it as the same JSON text as one SSE ``data:`` line,
from the stream's first event on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiohttp import hdrs, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import CODECS
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from crossmodald.bus.bus import EventBus, EventFilter, SubscriberClosed, Subscription
from crossmodald.bus.events import Event
from crossmodald.bus.sinks import SinkStats, run_sink
from crossmodald.config_base import NAME_PATTERN
from crossmodald.ingest.base import Source
from crossmodald.ingest.webrtc import (
    WebRtcSource,
    configure_host_addresses,
    ice_configuration,
    install_receiver_hooks,
)
from crossmodald.ingest.webrtc_config import WebRtcConfig

__all__ = [
    "WHIP_PREFIX",
    "DataChannelSink",
    "OfferError",
    "OfferSummary",
    "StreamHost",
    "WhipEndpoint",
    "check_offer",
    "setup_whip",
]

log = logging.getLogger(__name__)

#: Where the WHIP routes live.
WHIP_PREFIX = "/v1/whip"
#: Largest SDP offer accepted (bytes); real offers are 2-10 KiB.
MAX_OFFER_BYTES = 64 * 1024
#: Data channel label that asks for the stream's events.
EVENTS_LABEL = "events"
# Data-channel backpressure: stop taking events above this many buffered bytes, go on below
# the low mark; meanwhile the bus subscription's own bounded queue fills, and a channel that
# stays stuck is closed by the bus as a slow subscriber.
_CHANNEL_HIGH_BYTES = 1024 * 1024
_CHANNEL_LOW_BYTES = 256 * 1024
_SDP_TYPE = "application/sdp"
_NAME = re.compile(NAME_PATTERN)
_ALLOW_SESSION = "OPTIONS, DELETE"
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, If-Match"
_CORS_EXPOSE_HEADERS = "Location, ETag, Link, Accept-Post, Retry-After, WWW-Authenticate"


class StreamHost(Protocol):
    """What WHIP needs from the daemon (:class:`crossmodald.service.daemon.Daemon` has it)."""

    bus: EventBus

    def add_stream(
        self, name: str, kind: str, make_source: Callable[[], Source], *, origin: str = ...
    ) -> asyncio.Task[None]:
        """Start a stream; raises ValueError if one of that name runs, RuntimeError if stopping."""
        ...

    async def stop_stream(self, name: str) -> None:
        """Stop a stream and wait for it to finish."""
        ...

    def publish(self, event: Event) -> object:
        """Publish an event on the bus."""
        ...

    def streams(self) -> list[dict[str, Any]]:
        """Per-stream state (``name`` and ``state`` are used)."""
        ...


# -- offer checks (pure) ----------------------------------------------------------------------


class OfferError(Exception):
    """An offer the endpoint refuses: ``status`` (400 or 422) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class OfferSummary:
    """What an acceptable offer carries.

    Attributes:
        kinds: The media kinds, in offer order ("audio", "video").
        codecs: Per kind, the codecs both sides support, in the daemon's preference order.
        data_channel: Whether it has an application (data channel) section.
    """

    kinds: tuple[str, ...]
    codecs: dict[str, list[RTCRtpCodecParameters]]
    data_channel: bool


def _codec_label(codec: RTCRtpCodecParameters) -> str:
    name = codec.mimeType.split("/", 1)[-1]
    if name.upper() == "H264":
        profile = codec.parameters.get("profile-level-id", "42e01f")
        mode = codec.parameters.get("packetization-mode", "0")
        return f"H264 ({str(profile).lower()}, packetization-mode={mode})"
    return name


def supported_codecs(config: WebRtcConfig, kind: str) -> list[RTCRtpCodecParameters]:
    """aiortc's codecs of ``kind`` that the config allows, in the config's order."""
    wanted = config.video_codecs if kind == "video" else config.audio_codecs
    local = [c for c in CODECS[kind] if c.mimeType.split("/", 1)[-1].lower() != "rtx"]
    ordered: list[RTCRtpCodecParameters] = []
    for name in wanted:
        ordered.extend(c for c in local if c.mimeType.split("/", 1)[-1].lower() == name.lower())
    return ordered


def describe_supported(config: WebRtcConfig) -> str:
    """The supported codecs, as said in 422 messages."""
    parts = []
    for kind in ("video", "audio"):
        labels = list(dict.fromkeys(_codec_label(c) for c in supported_codecs(config, kind)))
        if labels:
            parts.append(f"{kind}: {', '.join(labels)}")
    return "; ".join(parts)


def check_offer(sdp: str, config: WebRtcConfig) -> OfferSummary:
    """Check a WHIP offer before any WebRTC work.

    Raises:
        OfferError: 400 when it is not a usable SDP offer; 422 for more than one audio or one
            video section, no media, or a media section with no codec in common (the message
            names what was offered and what is supported).
    """
    text = sdp.strip()
    if not text.startswith("v=0"):
        raise OfferError(400, "malformed SDP offer: it must start with 'v=0'")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser asserts; any failure means malformed
        detail = str(exc) or type(exc).__name__
        raise OfferError(400, f"malformed SDP offer: {detail}") from None
    kinds: list[str] = []
    codecs: dict[str, list[RTCRtpCodecParameters]] = {}
    data_channel = False
    for media in parsed.media:
        if media.kind == "application":
            data_channel = True
            continue
        if media.kind not in ("audio", "video"):
            raise OfferError(422, f"unsupported media section {media.kind!r} in the offer")
        if media.kind in kinds:
            raise OfferError(
                422,
                f"the offer has more than one {media.kind} track; WHIP takes one audio and "
                "one video track",
            )
        kinds.append(media.kind)
        offered = [c for c in media.rtp.codecs if c.mimeType.split("/", 1)[-1].lower() != "rtx"]
        common = find_common_codecs(supported_codecs(config, media.kind), offered)
        common = [c for c in common if c.mimeType.split("/", 1)[-1].lower() != "rtx"]
        if not common:
            names = ", ".join(dict.fromkeys(_codec_label(c) for c in offered)) or "none"
            raise OfferError(
                422,
                f"no usable {media.kind} codec in the offer (offered: {names}); "
                f"supported: {describe_supported(config)}",
            )
        codecs[media.kind] = common
    if not kinds:
        raise OfferError(422, "the offer has no audio or video track")
    return OfferSummary(tuple(kinds), codecs, data_channel)


# -- sessions ---------------------------------------------------------------------------------


@dataclass(slots=True)
class WhipSession:
    """One publisher: its PeerConnection, stream and data channels."""

    id: str
    stream: str
    etag: str
    pc: RTCPeerConnection
    source: WebRtcSource | None = None
    task: asyncio.Task[None] | None = None
    first_seq: int = 0
    forwarders: set[asyncio.Task[None]] = field(default_factory=set)
    closing: bool = False


class WhipEndpoint:
    """The WHIP sessions of one daemon.

    Args:
        host: The daemon (starts and stops streams, holds the bus).
        config: The ``[webrtc]`` config.
        legacy_token_check: Check ``[webrtc] token`` when the app has no API authenticator.
    """

    def __init__(self, host: StreamHost, config: WebRtcConfig) -> None:
        install_receiver_hooks()
        configure_host_addresses(config.host_addresses, config.interfaces)
        self.host = host
        self.config = config
        self.sessions: dict[str, WhipSession] = {}
        self._pending = 0  # offers being answered (they hold a slot)
        self.refused: dict[int, int] = {}

    # -- routes -----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Add the WHIP routes to an (unfrozen) application."""
        from crossmodald.api.auth import WHIP_CORS, CorsPolicy

        # The API's CORS middleware, when installed, applies this list on the WHIP routes.
        app[WHIP_CORS] = CorsPolicy(frozenset(self.config.allowed_origins))
        app.router.add_route("OPTIONS", WHIP_PREFIX + "/{stream}", self._options)
        app.router.add_post(WHIP_PREFIX + "/{stream}", self._post)
        app.router.add_route("OPTIONS", WHIP_PREFIX + "/session/{id}", self._options)
        app.router.add_delete(WHIP_PREFIX + "/session/{id}", self._delete)
        app.router.add_patch(WHIP_PREFIX + "/session/{id}", self._patch)
        app.on_shutdown.append(self._on_shutdown)

    @property
    def active(self) -> int:
        """Sessions holding a slot (answered or being answered)."""
        return len(self.sessions) + self._pending

    # -- helpers ----------------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str] | None:
        """CORS headers for the request's Origin; None when the origin is not allowed."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return {}
        allowed = self.config.allowed_origins
        if "*" in allowed:
            return {
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
                hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: _CORS_EXPOSE_HEADERS,
            }
        if origin in allowed:
            return {
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: _CORS_EXPOSE_HEADERS,
                hdrs.VARY: "Origin",
            }
        return None

    def _error(
        self,
        request: web.Request,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        self.refused[status] = self.refused.get(status, 0) + 1
        out = dict(self._cors(request) or {})
        out.update(headers or {})
        return web.json_response({"error": message}, status=status, headers=out)

    def _forbidden_origin(self, request: web.Request) -> web.Response:
        origin = request.headers.get(hdrs.ORIGIN, "")
        return self._error(
            request, 403, f"origin {origin[:100]!r} is not allowed (webrtc.allowed_origins)"
        )

    def _authorize(
        self, request: web.Request, scope: Literal["publish", "subscribe", "admin"] = "publish"
    ) -> web.Response | None:
        """None when the request may act with ``scope``, else the error response (401/403)."""
        from crossmodald.api.auth import AUTH, check_bearer

        auth = request.config_dict.get(AUTH)
        if auth is not None and not auth.open:
            try:
                check_bearer(request, scope)
            except web.HTTPException as exc:
                headers = {str(k): v for k, v in exc.headers.items() if k == hdrs.WWW_AUTHENTICATE}
                return self._error(request, exc.status, _message_of(exc), headers)
            return None
        token = self.config.token
        if token is None:
            return None
        challenge = {str(hdrs.WWW_AUTHENTICATE): 'Bearer realm="crossmodald-whip"'}
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        kind, _, value = header.strip().partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            return self._error(
                request, 401, "WHIP needs 'Authorization: Bearer <token>'", challenge
            )
        if not hmac.compare_digest(
            value.strip().encode("utf-8", "surrogatepass"),
            token.get_secret_value().encode("utf-8", "surrogatepass"),
        ):
            return self._error(request, 401, "invalid bearer token", challenge)
        return None

    # -- handlers ---------------------------------------------------------------------------

    async def _options(self, request: web.Request) -> web.Response:
        cors = self._cors(request)
        if cors is None:
            return self._forbidden_origin(request)
        on_session = "id" in request.match_info
        headers = {
            **cors,
            hdrs.ALLOW: _ALLOW_SESSION if on_session else "OPTIONS, POST",
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: _ALLOW_SESSION if on_session else "OPTIONS, POST",
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: _CORS_ALLOW_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: "600",
        }
        if not on_session:
            headers["Accept-Post"] = _SDP_TYPE
        return web.Response(status=204, headers=headers)

    async def _post(self, request: web.Request) -> web.Response:
        if self._cors(request) is None:
            return self._forbidden_origin(request)
        denied = self._authorize(request)
        if denied is not None:
            return denied
        name = request.match_info["stream"]
        if not _NAME.fullmatch(name):
            return self._error(
                request,
                400,
                f"bad stream name {name[:80]!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                "(starting with a letter or digit)",
            )
        if request.content_type != _SDP_TYPE:
            got = request.headers.get(hdrs.CONTENT_TYPE, "none")
            return self._error(
                request, 415, f"WHIP offers must be Content-Type {_SDP_TYPE}, got {got[:80]!r}"
            )
        if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
            return self._error(request, 413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
        body = await request.content.read(MAX_OFFER_BYTES + 1)
        if len(body) > MAX_OFFER_BYTES:
            return self._error(request, 413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(request, 400, "malformed SDP offer: not UTF-8 text")
        try:
            summary = check_offer(sdp, self.config)
        except OfferError as exc:
            return self._error(request, exc.status, exc.message)
        running = any(
            s.get("name") == name and s.get("state") in ("starting", "running")
            for s in self.host.streams()
        )
        if running or any(s.stream == name for s in self.sessions.values()):
            return self._error(request, 409, f"stream {name!r} is already running")
        if self.active >= self.config.max_streams:
            return self._error(
                request,
                503,
                f"too many WebRTC streams (webrtc.max_streams = {self.config.max_streams}); "
                "try again later",
                {hdrs.RETRY_AFTER: str(self.config.retry_after_s)},
            )
        self._pending += 1
        try:
            return await self._answer(request, name, sdp, summary)
        finally:
            self._pending -= 1

    async def _answer(
        self, request: web.Request, name: str, sdp: str, summary: OfferSummary
    ) -> web.Response:
        pc = RTCPeerConnection(ice_configuration(self.config))
        session = WhipSession(
            id=secrets.token_urlsafe(24), stream=name, etag=f'"{secrets.token_hex(8)}"', pc=pc
        )
        try:
            # Receive-only transceivers first, limited to the configured codecs: aiortc then
            # negotiates nothing else (it reuses them for the offer's sections of their kind).
            for kind in summary.kinds:
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(
                    [_capability(c) for c in supported_codecs(self.config, kind)]
                )
            pc.on("datachannel", lambda channel: self._on_channel(session, channel))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except (ValueError, AssertionError, AttributeError, KeyError, IndexError) as exc:
            await pc.close()
            detail = str(exc) or type(exc).__name__
            return self._error(request, 400, f"cannot use the SDP offer: {detail}")
        except Exception:
            await pc.close()
            raise
        try:
            source = WebRtcSource(name, pc, self.config, publish=self.host.publish)
        except Exception as exc:
            await pc.close()
            return self._error(request, 422, str(exc))
        session.source = source
        session.first_seq = self.host.bus.last_seq
        try:
            session.task = self.host.add_stream(name, "webrtc", lambda: source, origin="publisher")
        except (ValueError, RuntimeError) as exc:
            await pc.close()
            status = 409 if isinstance(exc, ValueError) else 503
            return self._error(request, status, str(exc))
        self.sessions[session.id] = session
        session.task.add_done_callback(lambda _task: self._stream_ended(session))
        location = f"{WHIP_PREFIX}/session/{session.id}"
        headers = {
            **(self._cors(request) or {}),
            hdrs.LOCATION: location,
            hdrs.ETAG: session.etag,
            hdrs.CONTENT_TYPE: _SDP_TYPE,
        }
        links = _ice_links(self.config)
        if links:
            headers[hdrs.LINK] = links
        log.info("whip: %s publishing as stream %r (session %s)", request.remote, name, location)
        return web.Response(status=201, text=pc.localDescription.sdp, headers=headers)

    async def _delete(self, request: web.Request) -> web.Response:
        if self._cors(request) is None:
            return self._forbidden_origin(request)
        denied = self._authorize(request)
        if denied is not None:
            return denied
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return self._error(request, 404, "no such WHIP session (ended, or never existed)")
        await self.end_session(session)
        return web.json_response(
            {"stream": session.stream, "state": "ended"}, headers=self._cors(request) or {}
        )

    async def _patch(self, request: web.Request) -> web.Response:
        return self._error(
            request,
            405,
            "trickle ICE and ICE restarts are not supported: send every candidate in the offer "
            "(the answer carries all of the daemon's)",
            {hdrs.ALLOW: _ALLOW_SESSION},
        )

    # -- session lifecycle ------------------------------------------------------------------

    async def end_session(self, session: WhipSession) -> None:
        """End a session: stop its stream (windows finished, sessions closed) and free it."""
        if session.closing:
            if session.task is not None:
                await asyncio.wait([session.task])
            return
        session.closing = True
        self.sessions.pop(session.id, None)
        if session.task is not None and not session.task.done():
            with contextlib.suppress(KeyError):
                await self.host.stop_stream(session.stream)
        await self._free(session)

    def _stream_ended(self, session: WhipSession) -> None:
        # The stream ended by itself (peer vanished, ICE failed): drop the session.
        if self.sessions.pop(session.id, None) is not None:
            log.info("whip: stream %r ended; session freed", session.stream)
            task = asyncio.get_running_loop().create_task(
                self._free(session), name=f"whip:free:{session.stream}"
            )
            session.forwarders.add(task)
            task.add_done_callback(session.forwarders.discard)

    async def _free(self, session: WhipSession) -> None:
        current = asyncio.current_task()
        for task in list(session.forwarders):
            if task is not current:
                task.cancel()
        if session.source is not None:
            await session.source.aclose()
        with contextlib.suppress(Exception):
            await session.pc.close()

    async def aclose(self) -> None:
        """End every session (the daemon is stopping)."""
        await asyncio.gather(
            *(self.end_session(s) for s in list(self.sessions.values())), return_exceptions=True
        )

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.aclose()

    # -- events over the data channel -------------------------------------------------------

    def _on_channel(self, session: WhipSession, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL:
            log.info("whip: %s: ignoring data channel %r", session.stream, channel.label)
            return
        task = asyncio.get_running_loop().create_task(
            self._forward(session, channel), name=f"whip:events:{session.stream}"
        )
        session.forwarders.add(task)
        task.add_done_callback(session.forwarders.discard)

    async def _forward(self, session: WhipSession, channel: RTCDataChannel) -> None:
        """Send the stream's events over the channel (from the stream's first event on)."""
        sink = DataChannelSink(channel, session.stream, identity=f"whip:{session.id}:events")
        await run_sink(sink, self.host.bus, session.first_seq)


class DataChannelSink:
    """A :class:`~crossmodald.bus.sinks.Sink` that sends one stream's events over a WebRTC
    data channel, as the same JSON text as one SSE ``data:`` line.

    Backpressure: above ``high_bytes`` buffered in the channel it stops taking events until
    the buffer drains below ``low_bytes``; meanwhile its bus subscription's bounded queue
    fills, and a channel that stays stuck is closed by the bus as a slow subscriber.

    Args:
        channel: An open (or opening) data channel.
        stream: Only this stream's events are sent.
        identity: Its name among sinks (logs, metrics).
        high_bytes: Buffered bytes above which it waits.
        low_bytes: Buffered bytes below which it goes on.
    """

    def __init__(
        self,
        channel: RTCDataChannel,
        stream: str,
        *,
        identity: str,
        high_bytes: int = _CHANNEL_HIGH_BYTES,
        low_bytes: int = _CHANNEL_LOW_BYTES,
    ) -> None:
        self.channel = channel
        self.stream = stream
        self._identity = identity
        self._high = high_bytes
        self._low = low_bytes
        self.stats = SinkStats()
        self._sub: Subscription | None = None
        self._closing = False

    @property
    def identity(self) -> str:
        """The name given at construction."""
        return self._identity

    async def run(self, bus: EventBus, after_seq: int | None = None) -> None:
        """Send events until the channel closes, :meth:`aclose`, or the bus ends it."""
        if self._closing:
            return
        try:
            sub = bus.subscribe(
                EventFilter.from_lists([], [self.stream]),
                after_seq,
                name=f"whip:{self.stream}:datachannel",
            )
        except SubscriberClosed:
            return
        self._sub = sub
        channel = self.channel
        low = asyncio.Event()
        channel.bufferedAmountLowThreshold = self._low
        channel.on("bufferedamountlow", low.set)
        try:
            async for envelope in sub:
                if channel.readyState != "open":
                    if channel.readyState in ("closing", "closed"):
                        break
                    continue
                channel.send(envelope.json)
                self.stats.written += 1
                self.stats.batches += 1
                self.stats.last_seq = envelope.seq
                if channel.bufferedAmount > self._high:
                    low.clear()
                    await low.wait()
        except SubscriberClosed as exc:
            log.info("whip: %s: events channel closed: %s", self.stream, exc.reason)
        finally:
            await sub.aclose()

    async def flush(self) -> None:
        """Nothing to do: each event is handed to the channel as it is taken off the bus."""

    async def aclose(self) -> None:
        """Stop taking events (what was sent stays sent)."""
        self._closing = True
        if self._sub is not None:
            self._sub.end("sink closing")


def _capability(codec: RTCRtpCodecParameters) -> RTCRtpCodecCapability:
    return RTCRtpCodecCapability(
        mimeType=codec.mimeType,
        clockRate=codec.clockRate,
        channels=codec.channels,
        parameters=dict(codec.parameters),
    )


def _ice_links(config: WebRtcConfig) -> str:
    """``Link`` header values for the configured ICE servers (RFC 9725 §4.4)."""
    links = []
    for server in config.ice_servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += (
                    f'; username="{server.username}"; '
                    f'credential="{server.credential.get_secret_value()}"; '
                    'credential-type="password"'
                )
            links.append(link)
    return ", ".join(links)


def _message_of(exc: web.HTTPException) -> str:
    import json

    try:
        data: Any = json.loads(exc.text or "")
        return str(data.get("error", exc.reason))
    except (ValueError, AttributeError):
        return exc.reason


def setup_whip(app: web.Application, host: StreamHost, config: WebRtcConfig) -> WhipEndpoint:
    """Add WHIP to an API application (before it is served); returns the endpoint."""
    endpoint = WhipEndpoint(host, config)
    endpoint.add_routes(app)
    return endpoint
