"""API security: bearer tokens with scopes, a per-route scope map, CORS and TLS.

Tokens come from ``[[api.tokens]]`` (name, secret value, scopes). A request carries one as
``Authorization: Bearer <token>``; browsers' ``EventSource`` and ``WebSocket`` cannot set headers,
so the event routes also accept ``?access_token=<token>``. Presented tokens are hashed and
compared with every configured token by :func:`hmac.compare_digest`, with no early exit, so the
time taken does not say which token or how much of it matched.

Scopes: ``subscribe`` (read: events, streams, sources, metrics), ``publish`` (send media: WHIP),
``admin`` (change sources, reload; implies the other two). See :data:`ROUTE_SCOPES`; a route not
listed there needs ``subscribe`` to read (GET/HEAD) and ``admin`` for anything else, so a new
route is closed until it is placed. ``/healthz`` and ``/readyz`` are public (for probes), and so
are the publish page ``/`` and its ``/static/`` files.

With no tokens configured the API is open, which the config allows only on a loopback address
(unless ``allow_unauthenticated``). Open on loopback, two browser attacks remain and are blocked:
a web page posting to ``http://127.0.0.1:8750`` (refused: its ``Origin`` is not allowed) and DNS
rebinding (refused: the ``Host`` header must name this machine).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import hdrs, web

from crossmodald.api_config import ApiConfig, ApiTokenConfig, TlsConfig, is_loopback_host

log = logging.getLogger(__name__)

Scope = Literal["publish", "subscribe", "admin"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Realm named in ``WWW-Authenticate`` challenges.
REALM = "crossmodald"
#: Query parameter that carries a token on the event routes (EventSource, WebSocket).
ACCESS_TOKEN_PARAM = "access_token"
#: Longest Authorization value looked at; longer ones are refused without hashing.
_MAX_TOKEN_CHARS = 4096
#: ``(methods or "*", path prefix, scope or None for public)``: first match wins. A prefix
#: matches the path itself and anything below it (``/v1/events`` covers ``/v1/events/ws``).
ROUTE_SCOPES: tuple[tuple[str, str, Scope | None], ...] = (
    ("GET HEAD", "/healthz", None),
    ("GET HEAD", "/readyz", None),
    ("GET HEAD", "/static", None),  # the publish page's files (no data in them)
    ("GET HEAD", "/v1/events", "subscribe"),
    ("GET HEAD", "/v1/streams", "subscribe"),
    ("GET HEAD", "/v1/sources", "subscribe"),
    ("GET HEAD", "/v1/fleet", "subscribe"),
    ("GET HEAD", "/metrics", "subscribe"),
    ("*", "/v1/sources", "admin"),
    ("*", "/v1/reload", "admin"),
    ("*", "/v1/whip", "publish"),
    ("PUT", "/v1/whep", "admin"),  # setting a stream's correction changes what viewers get
    ("*", "/v1/whep", "subscribe"),  # watching a stream is reading it
    ("*", "/whip", "publish"),
)
#: Routes whose GETs also accept the token as a query parameter.
_QUERY_TOKEN_PREFIXES = ("/v1/events",)
#: Request headers browsers may send cross-origin (answered in CORS preflights).
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, If-Match"
_CORS_EXPOSE_HEADERS = "Location, ETag, Link, Retry-After, WWW-Authenticate"
_CORS_MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a token's name and scopes (``"anonymous"`` when the API is open)."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        """Whether this principal may act with ``scope`` (``admin`` implies every scope)."""
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Principal("anonymous", frozenset({"publish", "subscribe", "admin"}))


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    digest: bytes
    scopes: frozenset[str]


def _digest(token: str) -> bytes:
    # Hashing first gives compare_digest equal-length inputs, so no length is leaked either.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    """The configured tokens and how the API is exposed; held in the app under :data:`AUTH`.

    Args:
        tokens: The ``[[api.tokens]]`` entries; none means the API is open.
        host: The address the API binds (open mode checks ``Host`` headers against it).
        allow_unauthenticated: Open mode was chosen explicitly for a non-loopback address.
    """

    def __init__(
        self, tokens: Sequence[ApiTokenConfig], host: str, *, allow_unauthenticated: bool = False
    ) -> None:
        self._entries = tuple(
            _Entry(t.name, _digest(t.token.get_secret_value()), frozenset(t.scopes)) for t in tokens
        )
        self.host = host
        self.allow_unauthenticated = allow_unauthenticated
        #: Refused requests: 401 (no or wrong token) and 403 (scope, origin, host).
        self.refused_401 = 0
        self.refused_403 = 0

    @classmethod
    def from_config(cls, config: ApiConfig) -> Authenticator:
        """Build from the ``[api]`` config."""
        return cls(config.tokens, config.host, allow_unauthenticated=config.allow_unauthenticated)

    @property
    def open(self) -> bool:
        """Whether no tokens are configured (every request acts as :data:`ANONYMOUS`)."""
        return not self._entries

    def lookup(self, presented: str) -> Principal | None:
        """The principal a presented token belongs to, or None; constant time in the match."""
        digest = _digest(presented)
        found: _Entry | None = None
        for entry in self._entries:
            # No early exit: every entry is compared whatever matched before.
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return Principal(found.name, found.scopes) if found is not None else None

    def host_allowed(self, host_header: str | None) -> bool:
        """In open mode, whether a ``Host`` header names this machine (DNS-rebinding guard)."""
        if not self.open or self.allow_unauthenticated:
            return True
        if not host_header:
            return False
        name = host_header.strip()
        if name.startswith("["):  # [::1]:8750
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        return is_loopback_host(name) or name.lower() == self.host.lower()


AUTH = web.AppKey("api_auth", Authenticator)
#: Key under which a request's :class:`Principal` is stored once authenticated.
PRINCIPAL_KEY = web.RequestKey("principal", Principal)


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a request needs by :data:`ROUTE_SCOPES` (None: public)."""
    if path == "/" and method in ("GET", "HEAD"):
        return None  # the publish page (exact: a "/" prefix would match every path)
    for methods, prefix, scope in ROUTE_SCOPES:
        if methods != "*" and method not in methods.split():
            continue
        if path == prefix or path.startswith(prefix + "/"):
            return scope
    return "subscribe" if method in ("GET", "HEAD") else "admin"


def _json_error(
    cls: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    # JSON content type: the API's error middleware passes these through with their headers.
    return cls(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


def _challenge(error: str | None = None, scope: Scope | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error is not None:
        value += f', error="{error}"'
    if scope is not None:
        value += f', scope="{scope}"'
    return {hdrs.WWW_AUTHENTICATE: value}


def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        kind, _, value = header.strip().partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise _json_error(
                web.HTTPUnauthorized,
                "expected 'Authorization: Bearer <token>'",
                _challenge("invalid_request"),
            )
        return value.strip()
    if request.method in ("GET", "HEAD") and request.path.startswith(_QUERY_TOKEN_PREFIXES):
        return request.query.get(ACCESS_TOKEN_PARAM) or None
    return None


def check_bearer(request: web.Request, scope: Scope) -> Principal:
    """Authenticate a request and check that it may act with ``scope``.

    Handlers may call it directly (the middleware already does for every routed request). In an
    application without :data:`AUTH`, only loopback peers are let in, as anonymous.

    Args:
        request: The request.
        scope: The scope the action needs.

    Returns:
        The principal (:data:`ANONYMOUS` when the API is open).

    Raises:
        web.HTTPUnauthorized: No token, a malformed header, or an unknown token (JSON, with a
            ``WWW-Authenticate: Bearer`` challenge).
        web.HTTPForbidden: The token lacks ``scope``, or an open API got a foreign ``Host``.
    """
    auth = request.config_dict.get(AUTH)
    if auth is None:
        if request.remote is not None and is_loopback_host(request.remote):
            return ANONYMOUS
        raise _json_error(web.HTTPUnauthorized, "authentication is not configured", _challenge())
    if auth.open:
        if not auth.host_allowed(request.host):
            auth.refused_403 += 1
            raise _json_error(
                web.HTTPForbidden,
                f"host {request.host[:80]!r} does not name this machine "
                "(the API is open on loopback only)",
            )
        return ANONYMOUS
    presented = _presented_token(request)
    if presented is None:
        auth.refused_401 += 1
        raise _json_error(
            web.HTTPUnauthorized, f"a bearer token with scope {scope!r} is required", _challenge()
        )
    principal = auth.lookup(presented) if len(presented) <= _MAX_TOKEN_CHARS else None
    if principal is None:
        auth.refused_401 += 1
        raise _json_error(web.HTTPUnauthorized, "invalid bearer token", _challenge("invalid_token"))
    if not principal.allows(scope):
        auth.refused_403 += 1
        raise _json_error(
            web.HTTPForbidden,
            f"token {principal.name!r} lacks scope {scope!r}",
            _challenge("insufficient_scope", scope),
        )
    return principal


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply :func:`check_bearer` with the scope :func:`required_scope` names for the route."""
    scope = required_scope(request.method, request.path)
    if scope is not None:
        request[PRINCIPAL_KEY] = check_bearer(request, scope)
    return await handler(request)


# -- CORS ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """The origins allowed to call the API from a browser (``api.cors_origins``)."""

    origins: frozenset[str]

    @property
    def any(self) -> bool:
        """Whether every origin is allowed (``"*"``)."""
        return "*" in self.origins

    def allows(self, origin: str, request: web.Request) -> bool:
        """Whether a request from ``origin`` may proceed (listed, ``*``, or same-origin)."""
        if self.any or origin in self.origins:
            return True
        # Same origin: the page was served by this host (browsers send Origin on POSTs too).
        return origin in (f"{request.scheme}://{request.host}",)


CORS = web.AppKey("api_cors", CorsPolicy)
#: The origins allowed on the WHIP routes (``[webrtc] allowed_origins``), when WHIP is served.
WHIP_CORS = web.AppKey("whip_cors", CorsPolicy)
WHIP_PATH_PREFIX = "/v1/whip/"
#: WHEP (re-synchronised output) follows WHIP's origin rules.
WHEP_PATH_PREFIX = "/v1/whep/"
_CORS_HEADERS_KEY = web.RequestKey("cors_headers", dict[str, str])


def _cors_headers(origin: str, policy: CorsPolicy) -> dict[str, str]:
    return {
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*" if policy.any else origin,
        hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: _CORS_EXPOSE_HEADERS,
        hdrs.VARY: "Origin",
    }


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights, refuse foreign origins (403), and mark allowed responses.

    Refusing rather than only leaving the CORS headers out matters: a cross-origin "simple"
    request (a form POST) is sent by the browser without a preflight, and the daemon would act
    on it even though the page could not read the answer.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return await handler(request)
    policy = request.config_dict[CORS]
    whip = (
        request.path.startswith((WHIP_PATH_PREFIX, WHEP_PATH_PREFIX))
        and WHIP_CORS in request.config_dict
    )
    if whip:
        # WHIP has its own origin list ([webrtc] allowed_origins, any by default: RFC 9725
        # publishers are pages on other origins), set by crossmodald.api.whip.
        policy = request.config_dict[WHIP_CORS]
    if not policy.allows(origin, request):
        auth = request.config_dict.get(AUTH)
        if auth is not None:
            auth.refused_403 += 1
        setting = "webrtc.allowed_origins" if whip else "api.cors_origins"
        raise _json_error(web.HTTPForbidden, f"origin {origin[:100]!r} is not allowed ({setting})")
    headers = _cors_headers(origin, policy)
    if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        headers.update(
            {
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: _CORS_ALLOW_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: str(_CORS_MAX_AGE_S),
            }
        )
        if whip:
            headers["Accept-Post"] = "application/sdp"  # RFC 9725 §4.1
        return web.Response(status=204, headers=headers)
    # Added when the response is prepared (see _cors_on_prepare), so streamed responses (SSE),
    # WebSocket answers and error responses all carry them.
    request[_CORS_HEADERS_KEY] = headers
    return await handler(request)


async def _cors_on_prepare(request: web.BaseRequest, response: web.StreamResponse) -> None:
    if isinstance(request, web.Request):
        headers = request.get(_CORS_HEADERS_KEY)
        if headers is not None:
            response.headers.update(headers)


# -- TLS -------------------------------------------------------------------------------------


def tls_context(config: TlsConfig) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) from the configured certificate chain and key.

    Raises:
        ValueError: The certificate or key cannot be read or does not load (the message names
            the file and the reason; never the key's content).
    """
    for what, path in (("certificate", config.cert), ("key", config.key)):
        if not path.is_file():
            raise ValueError(f"api.tls: {what} {str(path)!r} is not a readable file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.cert, config.key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ValueError(
            f"api.tls: cannot load certificate {str(config.cert)!r} with key "
            f"{str(config.key)!r}: {reason}"
        ) from None
    return context


def install(app: web.Application, config: ApiConfig) -> None:
    """Put the authenticator and CORS policy for ``config`` into ``app``."""
    app[AUTH] = Authenticator.from_config(config)
    app[CORS] = CorsPolicy(frozenset(config.cors_origins))
    app.on_response_prepare.append(_cors_on_prepare)
    if not config.tokens:
        level = logging.INFO if is_loopback_host(config.host) else logging.WARNING
        log.log(level, "api: no [[api.tokens]] configured: open to anyone reaching %s", config.host)
