"""The HTTP API: events over SSE and WebSocket, per-stream state, health and readiness.

Routes:
    ``GET /v1/events``       Server-Sent Events; ``type``/``stream`` filters, resume with
                             ``Last-Event-ID`` (or ``?last_event_id=``).
    ``GET /v1/events/ws``    The same over a WebSocket (resume with ``?last_seq=``).
    ``GET /v1/streams``      ``{"streams": [...]}``; ``GET /v1/streams/{name}``: one stream.
    ``GET /healthz``         200 while the process serves requests.
    ``GET /readyz``          200 once the daemon is ready, else 503.
    ``GET /metrics``         Prometheus text exposition (:mod:`crossmodald.api.metrics`).
    ``GET /``                The publish page (WHIP from a browser, events, calibration);
                             its files under ``GET /static/``. Public.

Security (:mod:`crossmodald.api.auth`, :mod:`crossmodald.api.limits`): bearer tokens with
scopes per route, CORS allow-list, optional TLS, request size and per-client limits.

Every error is JSON ``{"error": "..."}`` with its status. Each event subscriber is a bus
subscription with its own bounded queue; see :mod:`crossmodald.bus.bus` for the slow-subscriber
policy. At most ``ApiConfig.max_subscribers`` event subscribers are served at once (then 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import WSCloseCode, web

from crossmodald.api import auth as _auth
from crossmodald.api import metrics as _metrics
from crossmodald.api.limits import LIMITS, ClientLimits, limits_middleware, server_kwargs
from crossmodald.api_config import ApiConfig
from crossmodald.bus.bus import EventBus, EventFilter, SubscriberClosed, Subscription

log = logging.getLogger(__name__)

#: Seconds between SSE keep-alive comments while no event flows.
DEFAULT_HEARTBEAT_S = 15.0
#: Reconnect delay suggested to EventSource clients (SSE ``retry:`` field), in ms.
SSE_RETRY_MS = 2000
#: Most envelopes written to one SSE response in one write.
SSE_BATCH_MAX = 256
#: Reason given to event subscribers when the server shuts down.
SERVER_SHUTDOWN_REASON = "server shutting down"
#: Longest WebSocket close reason, in bytes (RFC 6455 allows 123).
_WS_REASON_MAX_BYTES = 123
#: The publish page and its files (package data), served at ``/`` and ``/static/``.
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Longest ``Last-Event-ID`` / ``last_seq`` value we parse, in characters.
_MAX_SEQ_DIGITS = 19


class StreamsView(Protocol):
    """What the API needs from the daemon about its streams (the composition root provides it)."""

    def streams(self) -> list[dict[str, Any]]:
        """Per-stream state, one JSON-compatible dict per stream, each with a ``"name"``."""
        ...

    def ready(self) -> bool:
        """Whether the daemon is ready (config, plugins and models up)."""
        ...


@dataclass(slots=True)
class ApiState:
    """The API's shared state, held in the application under :data:`API_STATE`.

    Attributes:
        bus: The event bus.
        streams: The daemon's streams.
        config: The API config.
        heartbeat_s: Seconds between SSE keep-alive comments.
        ws_heartbeat_s: Seconds between WebSocket pings (None: no pings).
        subscriptions: Open SSE/WebSocket subscriptions (bounded by ``max_subscribers``).
        shutting_down: Set once shutdown began; new event subscribers get 503.
    """

    bus: EventBus
    streams: StreamsView
    config: ApiConfig
    heartbeat_s: float
    ws_heartbeat_s: float | None
    subscriptions: set[Subscription] = field(default_factory=set)
    shutting_down: bool = False


API_STATE = web.AppKey("api_state", ApiState)


def build_app(
    bus: EventBus,
    streams: StreamsView,
    config: ApiConfig,
    *,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    ws_heartbeat_s: float | None = DEFAULT_HEARTBEAT_S,
) -> web.Application:
    """Build the API application.

    Args:
        bus: The event bus to serve.
        streams: The daemon's per-stream state and readiness.
        config: The ``[api]`` config (``max_subscribers`` and slow-subscriber settings).
        heartbeat_s: Seconds between SSE keep-alive comments (tests use less).
        ws_heartbeat_s: Seconds between WebSocket pings; a client that does not answer within
            half of it is disconnected (aiohttp's heartbeat). None disables pings.

    Returns:
        The application; serve it with :func:`serve`.
    """
    if heartbeat_s <= 0:
        raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s}")
    # Outermost first: CORS marks every answer (errors too); limits count before auth works.
    app = web.Application(
        middlewares=[
            _auth.cors_middleware,
            _json_errors,
            limits_middleware,
            _auth.auth_middleware,
        ],
        client_max_size=config.limits.max_body_bytes,
    )
    app[API_STATE] = ApiState(bus, streams, config, heartbeat_s, ws_heartbeat_s)
    _auth.install(app, config)
    app[LIMITS] = ClientLimits(config.limits)
    _metrics.install(app)
    app.router.add_get("/v1/events", _events_sse)
    app.router.add_get("/v1/events/ws", _events_ws)
    app.router.add_get("/v1/streams", _streams)
    app.router.add_get("/v1/streams/{name}", _stream)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    # The publish page (issue 3 item 5): public, like /healthz (auth.ROUTE_SCOPES).
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.on_shutdown.append(_end_subscribers)
    return app


async def serve(
    app: web.Application, host: str, port: int, *, shutdown_timeout_s: float = 5.0
) -> web.AppRunner:
    """Start serving ``app`` on ``host:port`` (port 0 picks a free one; see :func:`bound_port`).

    Stop with ``await runner.cleanup()``: it stops listening, ends event subscribers with
    "server shutting down", waits up to ``shutdown_timeout_s`` for handlers, then closes.

    Raises:
        OSError: The address cannot be bound (the message names it).
    """
    config = app[API_STATE].config if API_STATE in app else None
    # Header/line limits and TLS come from the app's config (ValueError names a bad cert/key).
    extra = server_kwargs(config.limits) if config is not None else {}
    ssl_context = _auth.tls_context(config.tls) if config is not None and config.tls else None
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s, access_log=None, **extra)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"api: cannot listen on {host}:{port}: {exc.strerror}") from None
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the first site of a started runner listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("runner has no TCP site")


# -- middleware and helpers ---------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's own HTTP errors (404, 405, ...) into the API's JSON error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json" and exc.text:
            raise  # already in the API's shape (auth and limits errors carry their own headers)
        if exc.status == 404:
            message = f"not found: {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed for {request.path}"
        else:
            message = exc.reason
        response = _error(exc.status, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def _parse_seq(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_SEQ_DIGITS:
        raise ValueError(f"{what} must be a non-negative integer event seq, got {value[:40]!r}")
    return int(text)


def _subscribe(
    request: web.Request, last_seq_param: str, last_seq_header: str | None
) -> Subscription | web.Response:
    """Validate the query and open a subscription, or return the JSON error response."""
    state = request.app[API_STATE]
    try:
        event_filter = EventFilter.parse(request.query.get("type"), request.query.get("stream"))
        raw_seq = request.query.get(last_seq_param)
        what = last_seq_param
        if not raw_seq and last_seq_header is not None:
            raw_seq = request.headers.get(last_seq_header)
            what = last_seq_header
        last_seq = _parse_seq(raw_seq, what)
    except ValueError as exc:
        return _error(400, str(exc))
    if state.shutting_down:
        return _error(503, SERVER_SHUTDOWN_REASON)
    limit = state.config.max_subscribers
    if len(state.subscriptions) >= limit:
        return _error(503, f"too many event subscribers (limit {limit}); try again later")
    try:
        sub = state.bus.subscribe(
            event_filter, last_seq, name=f"{request.path} {request.remote or '?'}"
        )
    except SubscriberClosed as exc:
        return _error(503, exc.reason)
    state.subscriptions.add(sub)
    return sub


def _gap_notice(sub: Subscription) -> dict[str, Any]:
    return {
        "last_seq": sub.resume_after,
        "first_seq": sub.first_replay_seq,
        "message": "the replay buffer no longer holds every event after last_seq; some were missed",
    }


class _StuckWriteGuard:
    """Drops the connection of a subscriber that stopped reading.

    Once the bus has closed the subscription (too slow, or shutdown), the handler gets
    ``grace_s`` to get back from the write it may be blocked in; if it is still streaming
    events then, the client is not reading at all and only dropping the connection frees the
    handler. The close notice itself is written under its own time limit (see the handlers).

    The watcher coroutine sees only the request, the subscription and a flag, never the guard:
    a cancelled task keeps its CancelledError, whose traceback keeps the coroutine's frame; had
    that frame held the guard (which holds the task), every subscriber's request, transport and
    socket would form a reference cycle that waits in the oldest GC generation for a full
    collection (minutes apart under the soak). Without the cycle they are freed at once.
    """

    def __init__(self, request: web.Request, sub: Subscription, grace_s: float) -> None:
        self.grace_s = grace_s
        self._closing = _Flag()
        self._task: asyncio.Task[None] | None = asyncio.create_task(
            _abort_if_stuck(request, sub, grace_s, self._closing),
            name=f"api:stuck-guard:{sub.name}",
        )

    @property
    def closing(self) -> bool:
        """Whether the handler is writing its close notice (the guard then leaves it alone)."""
        return self._closing.value

    @closing.setter
    def closing(self, value: bool) -> None:
        self._closing.value = value

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None  # the loop holds it until it ends; then nothing does


@dataclass(slots=True)
class _Flag:
    value: bool = False


async def _abort_if_stuck(
    request: web.Request, sub: Subscription, grace_s: float, closing: _Flag
) -> None:
    """The stuck-write guard's watcher (see :class:`_StuckWriteGuard`)."""
    await sub.wait_closed()
    await asyncio.sleep(grace_s)
    transport = request.transport
    if not closing.value and transport is not None:
        log.info("api: %s stopped reading; dropping the connection", sub.name)
        transport.abort()


def _grace_s(state: ApiState) -> float:
    return max(1.0, state.bus.slow_subscriber_s)


# -- SSE ----------------------------------------------------------------------------------------


def _sse_frame(event: str, data: str, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


async def _events_sse(request: web.Request) -> web.StreamResponse:
    state = request.app[API_STATE]
    opened = _subscribe(request, "last_event_id", "Last-Event-ID")
    if isinstance(opened, web.Response):
        return opened
    sub = opened
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # Tell reverse proxies (nginx) not to buffer the stream.
            "X-Accel-Buffering": "no",
        }
    )
    guard = _StuckWriteGuard(request, sub, _grace_s(state))
    try:
        await response.prepare(request)
        await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
        if not sub.replay_complete:
            await response.write(_sse_frame("gap", json.dumps(_gap_notice(sub))))
        while True:
            try:
                async with asyncio.timeout(state.heartbeat_s):
                    first = await anext(sub)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            except StopAsyncIteration:
                break
            except SubscriberClosed as exc:
                guard.closing = True
                async with asyncio.timeout(guard.grace_s):
                    await response.write(_sse_frame("close", json.dumps({"reason": exc.reason})))
                break
            batch = [first, *sub.drain_nowait(SSE_BATCH_MAX - 1)]
            await response.write(b"".join(_sse_frame(env.type, env.json, env.seq) for env in batch))
    except (ConnectionError, TimeoutError):
        # The client went away, or did not take its close notice in time: nothing to tell it.
        if request.transport is not None:
            request.transport.abort()
    finally:
        guard.cancel()
        state.subscriptions.discard(sub)
        await sub.aclose()
    return response


# -- WebSocket ----------------------------------------------------------------------------------


async def _ws_reader(ws: web.WebSocketResponse, sub: Subscription) -> None:
    # Reading is what lets aiohttp answer pings and see the client's close frame; client
    # messages themselves carry no meaning here.
    async for _message in ws:
        pass
    await sub.aclose()  # the client is gone: end the writer's iteration


def _ws_reason(reason: str) -> bytes:
    data = reason.encode()
    return data if len(data) <= _WS_REASON_MAX_BYTES else data[: _WS_REASON_MAX_BYTES - 3] + b"..."


async def _events_ws(request: web.Request) -> web.StreamResponse:
    state = request.app[API_STATE]
    grace_s = _grace_s(state)
    # timeout: how long close() waits for the client's answering close frame.
    ws = web.WebSocketResponse(
        heartbeat=state.ws_heartbeat_s, max_msg_size=64 * 1024, timeout=grace_s
    )
    if not ws.can_prepare(request).ok:
        return _error(400, "expected a WebSocket upgrade request")
    opened = _subscribe(request, "last_seq", None)
    if isinstance(opened, web.Response):
        return opened
    sub = opened
    guard = _StuckWriteGuard(request, sub, grace_s)
    reader: asyncio.Task[None] | None = None
    try:
        await ws.prepare(request)
        reader = asyncio.create_task(_ws_reader(ws, sub), name=f"api:ws-reader:{sub.name}")
        if not sub.replay_complete:
            await ws.send_str(json.dumps({"control": "gap", **_gap_notice(sub)}))
        try:
            async for envelope in sub:
                await ws.send_str(envelope.json)
        except SubscriberClosed as exc:
            guard.closing = True
            code = WSCloseCode.TRY_AGAIN_LATER if exc.slow else WSCloseCode.GOING_AWAY
            # Bounded: the frame's write (grace_s) plus waiting for the answer (grace_s).
            async with asyncio.timeout(2 * grace_s):
                await ws.close(code=code, message=_ws_reason(exc.reason))
    except (ConnectionError, TimeoutError):
        if request.transport is not None:
            request.transport.abort()
    finally:
        guard.cancel()
        state.subscriptions.discard(sub)
        await sub.aclose()
        if ws.prepared and not ws.closed:
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(grace_s):
                    await ws.close()
        if reader is not None:
            # ws.close() ends the reader's loop; don't let a stuck socket hold the handler.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(grace_s):
                    await reader
            reader.cancel()
    return ws


# -- streams and health ---------------------------------------------------------------------------


async def _streams(request: web.Request) -> web.Response:
    return web.json_response({"streams": request.app[API_STATE].streams.streams()})


async def _stream(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for stream in request.app[API_STATE].streams.streams():
        if stream.get("name") == name:
            return web.json_response(stream)
    return _error(404, f"no stream named {name!r}")


async def _index(request: web.Request) -> web.FileResponse:
    """The page (static/index.html): the monitor of every stream, and publishing over WHIP."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[API_STATE].streams.ready():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def _end_subscribers(app: web.Application) -> None:
    """on_shutdown: tell every SSE/WebSocket subscriber why it ends, after what it has queued."""
    state = app[API_STATE]
    state.shutting_down = True
    for sub in list(state.subscriptions):
        sub.end(SERVER_SHUTDOWN_REASON)
