"""The ``[api]`` table: the HTTP server's address, tokens, TLS, CORS and limits.

A neutral module (it imports nothing of the daemon but the config basics), so that the API
(:mod:`crossmodald.api`) reads its config without importing the service that composes it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from crossmodald.config_base import NAME_PATTERN, ConfigModel, check_origins
from crossmodald.secrets import Secret

__all__ = [
    "ApiConfig",
    "ApiLimitsConfig",
    "ApiTokenConfig",
    "Scope",
    "TlsConfig",
    "is_loopback_host",
]


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or host name stays on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


#: What an API token may do: ``subscribe`` (read events, streams, sources, metrics), ``publish``
#: (send media, e.g. WHIP), ``admin`` (change sources, reload; implies the other two).
Scope = Literal["publish", "subscribe", "admin"]


class ApiTokenConfig(ConfigModel):
    """One bearer token for the API (``[[api.tokens]]``)."""

    #: A label for logs and metrics (never the token itself).
    name: str = Field(pattern=NAME_PATTERN)
    #: The token value. Kept as a secret: never shown in logs, reprs or error messages.
    #: Inline, or {env = NAME}, {file = PATH} or {credential = NAME} (see crossmodald/secrets.py).
    token: Secret
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("token")
    @classmethod
    def _strong(cls, value: SecretStr) -> SecretStr:
        # Why 16: short tokens are guessable; the message never echoes the value.
        secret = value.get_secret_value()
        if len(secret) < 16:
            raise ValueError(f"token must be at least 16 characters, got {len(secret)}")
        if not secret.isprintable() or secret != secret.strip():
            raise ValueError("token must be printable with no surrounding whitespace")
        return value


class TlsConfig(ConfigModel):
    """TLS for the HTTP server (``[api.tls]``): PEM certificate chain and private key."""

    cert: Path
    key: Path


class ApiLimitsConfig(ConfigModel):
    """Request size and per-client limits (``[api.limits]``)."""

    #: Largest request body accepted (bytes); larger ones get 413.
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=1024**3)
    #: Longest request line / URL (bytes); longer ones get 414/400.
    max_line_bytes: int = Field(8190, ge=256, le=1024 * 1024)
    #: Longest single header field (bytes); longer ones get 431/400.
    max_field_bytes: int = Field(8190, ge=256, le=1024 * 1024)
    #: Most header fields in one request.
    max_headers: int = Field(64, ge=8, le=1024)
    #: Requests in progress at once from one client address (long-lived event streams count).
    max_connections_per_client: int = Field(64, ge=1, le=100_000)
    #: SSE + WebSocket event subscribers at once from one client address.
    max_subscribers_per_client: int = Field(32, ge=1, le=100_000)
    #: Streams started through the API (REST sources, WHIP) at once, in all.
    max_streams: int = Field(64, ge=1, le=100_000)
    #: Streams started through the API at once from one client address.
    max_streams_per_client: int = Field(8, ge=1, le=100_000)
    #: Seconds a request body may take to arrive in full; a slower one gets 408 and its
    #: connection is closed. Bodies are read before the request takes a per-client slot.
    body_timeout_s: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False)
    #: Bytes of events an SSE/WebSocket subscriber's connection may hold in the kernel's send
    #: buffer and in the transport beyond the subscriber's own queue; past that the writer
    #: waits, and one that waits ``slow_subscriber_s`` closes the subscriber as too slow.
    subscriber_buffer_bytes: int = Field(64 * 1024, ge=4096, le=64 * 1024 * 1024)


class ApiConfig(ConfigModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8750, ge=0, le=65535)
    #: Events kept for `Last-Event-ID` resume.
    replay_size: int = Field(4096, ge=0, le=1_000_000)
    #: Events queued per subscriber before it counts as slow.
    subscriber_queue: int = Field(1024, ge=1, le=1_000_000)
    #: A subscriber whose queue stays full this long is closed with a reason.
    slow_subscriber_s: float = Field(5.0, gt=0, le=3600)
    #: Most SSE + WebSocket event subscribers at once; more get 503.
    max_subscribers: int = Field(default=256, ge=1, le=100_000)
    #: Bearer tokens; none configured means the API is open (allowed on loopback only).
    tokens: list[ApiTokenConfig] = Field(default_factory=list)
    #: Serve HTTPS with this certificate and key (None: plain HTTP).
    tls: TlsConfig | None = None
    #: Browser origins allowed to call the API (CORS), e.g. "https://dash.example.org"; "*" = any.
    cors_origins: list[str] = Field(default_factory=list)
    limits: ApiLimitsConfig = ApiLimitsConfig()
    #: Serve without tokens on a non-loopback address (anyone who can reach it has admin).
    allow_unauthenticated: bool = False

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return check_origins(value)

    @model_validator(mode="after")
    def _exposure(self) -> ApiConfig:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            # Messages here say "got" so the error formatter never echoes the input (secrets).
            raise ValueError(f"tokens: each token needs a unique name, got {sorted(names)}")
        values = [t.token.get_secret_value() for t in self.tokens]
        if len(set(values)) != len(values):
            raise ValueError("tokens: two tokens have the same value (got a duplicate)")
        if not self.tokens and not self.allow_unauthenticated and not is_loopback_host(self.host):
            raise ValueError(
                f"no [[api.tokens]] are configured and host is not a loopback address (got "
                f"{self.host!r}); add tokens, or set allow_unauthenticated = true to serve it open"
            )
        return self
