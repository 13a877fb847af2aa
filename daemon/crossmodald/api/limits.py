"""Per-client limits for the HTTP API: request sizes, connections, subscribers and streams.

A *client* is a peer IP address as the socket sees it (``request.remote``). Forwarded-for headers
are not trusted: behind a reverse proxy every client is the proxy, so size the per-client limits
for that (or let the proxy enforce its own).

What is limited, and how:

* Request line, header fields and header count: by aiohttp's parser (:func:`server_kwargs`);
  an oversized request is answered 400/413/431 before any handler runs.
* Request body: a ``Content-Length`` above ``max_body_bytes`` gets 413 before the body is read
  (:func:`limits_middleware`); a chunked body is cut off at the same size. The whole body must
  arrive within ``body_timeout_s`` (else 408 and the connection is closed), and it is read
  *before* the request takes any slot: a client that trickles bodies holds sockets for at
  most that long, never the slots other clients from its address need. Handlers get the body
  with ``await request.read()`` (already in memory).
* Requests in progress per client (``max_connections_per_client``): every request holds a slot
  until its handler returns, so a long-lived SSE or WebSocket stream holds one for its whole life.
  Idle keep-alive connections hold none; they are closed after :data:`KEEPALIVE_TIMEOUT_S`.
  The probes (:data:`PROBE_PATHS`) take no slot: they answer whatever the limits.
* Event subscribers per client (``max_subscribers_per_client``): requests to ``/v1/events*``.
* Streams started through the API (``max_streams`` in all, ``max_streams_per_client``): handlers
  that start a stream (REST sources, WHIP) take a :class:`Slot` with :func:`acquire_stream_slot`
  and release it when the stream ends.

Refusals are JSON ``{"error": ...}`` with 429 (per-client) or 503 (server-wide) and
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from crossmodald.api.serverlog import SERVER_LOG, one_line
from crossmodald.api_config import ApiLimitsConfig

log = logging.getLogger(__name__)

#: Seconds an idle keep-alive connection stays open (aiohttp's default is an hour).
KEEPALIVE_TIMEOUT_S = 75.0
#: Seconds a refused client is told to wait before trying again.
RETRY_AFTER_S = 1
#: Paths whose requests are event subscribers (SSE and WebSocket).
EVENTS_PREFIX = "/v1/events"
#: Health probes: cheap, public, and answered whatever a client's limits (no slot is taken).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Kind = Literal["connections", "subscribers", "streams"]


class LimitExceeded(Exception):
    """A limit refused a request; ``status`` is 429 (this client) or 503 (the whole server)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Slot:
    """One held unit of a limit; :meth:`release` (idempotent) gives it back."""

    def __init__(self, limits: ClientLimits, kind: Kind, client: str) -> None:
        self._limits = limits
        self.kind: Kind = kind
        self.client = client
        self._held = True

    @property
    def held(self) -> bool:
        """Whether the slot is still held."""
        return self._held

    def release(self) -> None:
        """Give the slot back (safe to call more than once)."""
        if self._held:
            self._held = False
            self._limits._release(self.kind, self.client)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class ClientLimits:
    """Counts what each client holds and refuses what goes over the configured limits.

    Args:
        config: The ``[api.limits]`` config.
    """

    def __init__(self, config: ApiLimitsConfig) -> None:
        self.config = config
        self._held: dict[Kind, Counter[str]] = {
            "connections": Counter(),
            "subscribers": Counter(),
            "streams": Counter(),
        }
        #: Refusals so far, by kind (exported as a metric).
        self.refused: Counter[str] = Counter()

    def held(self, kind: Kind, client: str | None = None) -> int:
        """Slots of ``kind`` held by ``client``, or by everyone when ``client`` is None."""
        counts = self._held[kind]
        return counts[client] if client is not None else sum(counts.values())

    def clients(self) -> int:
        """Distinct clients holding any slot now."""
        return len(set().union(*(set(c) for c in self._held.values())))

    def acquire(self, kind: Kind, client: str) -> Slot:
        """Take one slot of ``kind`` for ``client``.

        Raises:
            LimitExceeded: The client (429) or the server (503, streams only) is at its limit.
        """
        per_client = {
            "connections": self.config.max_connections_per_client,
            "subscribers": self.config.max_subscribers_per_client,
            "streams": self.config.max_streams_per_client,
        }[kind]
        counts = self._held[kind]
        if kind == "streams" and sum(counts.values()) >= self.config.max_streams:
            self.refused[kind] += 1
            raise LimitExceeded(
                f"too many streams (limit {self.config.max_streams}); try again later", 503
            )
        if counts[client] >= per_client:
            self.refused[kind] += 1
            raise LimitExceeded(
                f"too many {_NOUN[kind]} from {client} (limit {per_client} per client)", 429
            )
        counts[client] += 1
        return Slot(self, kind, client)

    def _release(self, kind: Kind, client: str) -> None:
        counts = self._held[kind]
        counts[client] -= 1
        if counts[client] <= 0:
            del counts[client]  # forget clients that hold nothing: the table stays bounded

    def snapshot(self) -> dict[str, Any]:
        """Held and refused counts, for metrics."""
        return {
            "clients": self.clients(),
            "held": {kind: sum(c.values()) for kind, c in self._held.items()},
            "refused": dict(self.refused),
        }


_NOUN: dict[Kind, str] = {
    "connections": "requests in progress",
    "subscribers": "event subscribers",
    "streams": "streams",
}

LIMITS = web.AppKey("api_limits", ClientLimits)


def server_kwargs(config: ApiLimitsConfig) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` that bound request lines, headers and idle time."""
    return {
        "max_line_size": config.max_line_bytes,
        "max_field_size": config.max_field_bytes,
        "max_headers": config.max_headers,
        "keepalive_timeout": KEEPALIVE_TIMEOUT_S,
    }


def client_of(request: web.Request) -> str:
    """The client address a request's limits are counted under."""
    return request.remote or "unknown"


def refusal(message: str, status: int) -> web.HTTPException:
    """A JSON error the API's error middleware passes through unchanged (with Retry-After).

    Args:
        message: The one-line reason.
        status: 413 (body too large), 429 (this client is at a limit) or 503 (the server is).
    """
    body = json.dumps({"error": message})
    if status == 413:
        # Its constructor wants the sizes; the message already names them.
        return web.HTTPRequestEntityTooLarge(
            max_size=0, actual_size=0, text=body, content_type="application/json"
        )
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if status == 429:
        return web.HTTPTooManyRequests(text=body, content_type="application/json", headers=retry)
    return web.HTTPServiceUnavailable(text=body, content_type="application/json", headers=retry)


def acquire_stream_slot(request: web.Request) -> Slot:
    """Take a stream slot for the requesting client (for handlers that start a stream).

    Release the slot when the stream ends, e.g. ``task.add_done_callback(lambda _t:
    slot.release())``. In an application without :data:`LIMITS` the slot limits nothing.

    Raises:
        web.HTTPException: 429 or 503 JSON error when a limit is reached.
    """
    limits = request.config_dict.get(LIMITS)
    if limits is None:
        limits = ClientLimits(ApiLimitsConfig())
    try:
        return limits.acquire("streams", client_of(request))
    except LimitExceeded as exc:
        _log_refusal(request, "api: refused a stream", f"api: refused a stream: {exc}")
        raise refusal(str(exc), exc.status) from None


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the body size and deadline, then the per-client request and subscriber limits."""
    if request.path in PROBE_PATHS:
        return await handler(request)
    limits = request.config_dict[LIMITS]
    max_body = limits.config.max_body_bytes
    length = request.content_length
    if length is not None and length > max_body:
        raise refusal(f"request body too large: {length} bytes (limit {max_body})", 413)
    if request.body_exists:
        await _read_body(request, limits.config)
    client = client_of(request)
    slots: list[Slot] = []
    try:
        slots.append(limits.acquire("connections", client))
        if request.path == EVENTS_PREFIX or request.path.startswith(EVENTS_PREFIX + "/"):
            slots.append(limits.acquire("subscribers", client))
    except LimitExceeded as exc:
        for slot in slots:
            slot.release()
        _log_refusal(
            request, "api: refused (limit)", f"api: refused {request.method} {request.path}: {exc}"
        )
        raise refusal(str(exc), exc.status) from None
    try:
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        for slot in slots:
            slot.release()


async def _read_body(request: web.Request, config: ApiLimitsConfig) -> None:
    """Read the whole body into the request within ``body_timeout_s`` (before any slot).

    Raises:
        web.HTTPException: 408 (too slow; the connection is closed), 413 (too large), 400
            (the body is malformed, e.g. bad chunked encoding, or the client went away).
    """
    try:
        async with asyncio.timeout(config.body_timeout_s):
            await request.read()
    except TimeoutError:
        request.protocol.force_close()  # don't linger reading what it still trickles
        _log_refusal(
            request,
            "api: slow request body",
            f"api: {request.remote}: request body not complete within "
            f"{config.body_timeout_s:g} s; connection closed",
        )
        raise _json_http(
            web.HTTPRequestTimeout,
            f"request body not complete within {config.body_timeout_s:g} s (api.limits.body_timeout_s)",
        ) from None
    except web.HTTPRequestEntityTooLarge:
        # No force_close: aiohttp reads (and drops) the rest for a while, so the client, still
        # sending, gets to read its 413.
        raise refusal(
            f"request body too large (limit {config.max_body_bytes} bytes)", 413
        ) from None
    except (ConnectionError, HttpProcessingError) as exc:
        # A client that vanished mid-body (nobody to answer) or sent a malformed body.
        request.protocol.force_close()
        _log_refusal(
            request,
            "api: unreadable request body",
            f"api: {request.remote}: request body unreadable: {one_line(exc)}",
        )
        raise _json_http(web.HTTPBadRequest, f"request body unreadable: {one_line(exc)}") from None


def _json_http(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def _log_refusal(request: web.Request, kind: str, message: str) -> None:
    """Refusals are client errors: logged once per interval and kind, with a count."""
    limiter = request.config_dict.get(SERVER_LOG)
    if limiter is None:
        log.info("%s", message)
        return
    limiter.log(logging.INFO, kind, message)
