"""The ``[fleet]`` table: several daemons share one source list in NATS JetStream.

Only the model lives here (``service/config.py`` composes it); what the fleet does is in
:mod:`crossmodald.service.fleet`, and docs/fleet.md explains it for operators.
"""

from __future__ import annotations

import re
import socket

from pydantic import Field, field_validator, model_validator

from crossmodald.config_base import NAME_PATTERN, ConfigModel
from crossmodald.secrets import Secret

#: JetStream bucket names: letters, digits, ``_`` and ``-`` (the fleet adds ``_leases`` and
#: ``_daemons`` to it for its two other buckets).
BUCKET_PATTERN = r"^[A-Za-z0-9_-]{1,48}$"


def default_daemon_id() -> str:
    """The host name, cut to a valid daemon id (``daemon`` when nothing of it is usable)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip(".-_")[:64]
    return name if re.fullmatch(NAME_PATTERN, name) else "daemon"


class FleetConfig(ConfigModel):
    """Fleet mode: sources live in a JetStream key-value bucket, each leased by one daemon.

    Attributes:
        nats_url: The NATS server(s) with JetStream on; several as a comma-separated list
            (``nats://a:4222,nats://b:4222``). ``tls://`` for TLS; user and password may be
            in the URL (they never appear in logs or the API).
        token: A NATS auth token (a secret: inline, ``{env}``, ``{file}`` or ``{credential}``).
        bucket: The key-value bucket holding the source list; the leases and the daemons'
            heartbeats go to ``<bucket>_leases`` and ``<bucket>_daemons``.
        daemon_id: This daemon's name in the fleet (unique per daemon); default the host name.
            Every event this daemon produces carries it as ``daemon``.
        lease_ttl_s: How long a lease lives without renewal (the server forgets it then, by its
            own clock). A dead daemon's sources move within this plus ``scan_interval_s``. The
            bucket keeps the TTL it was created with: all daemons of a fleet use the same one.
        scan_interval_s: How often the daemon reads the list, renews its leases and takes free
            sources (with ±20 % jitter). At most a third of ``lease_ttl_s``.
        max_streams: The most sources this daemon runs at once (0: none, it only serves the
            API). Below that each daemon takes its fair share: the sources divided by the
            live daemons, rounded up.
        rebalance: Whether a daemon over its fair share hands sources back (see below);
            false: a source stays where it runs until its daemon stops or dies.
        rebalance_after_s: A daemon that holds more than its fair share for this long, while
            another live daemon holds less, hands one source back per scan (the stream moves,
            with a gap).
        api_url: How others reach this daemon's API (shown by ``GET /v1/fleet``); default
            ``http://<api.host>:<api.port>``.
        connect_timeout_s: Time for one connection attempt and for each key-value request.
    """

    nats_url: str = "nats://127.0.0.1:4222"
    token: Secret | None = None
    bucket: str = Field("crossmodald", pattern=BUCKET_PATTERN)
    daemon_id: str = Field(default_factory=default_daemon_id, pattern=NAME_PATTERN)
    lease_ttl_s: float = Field(5.0, ge=1.0, le=300.0)
    scan_interval_s: float = Field(1.0, ge=0.1, le=60.0)
    max_streams: int = Field(64, ge=0, le=100_000)
    rebalance: bool = True
    rebalance_after_s: float = Field(10.0, ge=0.0, le=86_400.0)
    api_url: str | None = None
    connect_timeout_s: float = Field(2.0, gt=0.0, le=60.0)

    @field_validator("nats_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        for url in value.split(","):
            scheme = url.strip().partition("://")[0]
            if scheme not in ("nats", "tls", "ws", "wss"):
                raise ValueError(
                    "expected nats://, tls://, ws:// or wss:// URLs separated by commas, "
                    f"got scheme {scheme[:20]!r}"
                )
        return value

    @model_validator(mode="after")
    def _scan_within_ttl(self) -> FleetConfig:
        if self.scan_interval_s > self.lease_ttl_s / 3:
            raise ValueError(
                "fleet.scan_interval_s must be at most a third of fleet.lease_ttl_s "
                f"(a lease is renewed on a scan), got {self.scan_interval_s} and "
                f"{self.lease_ttl_s}"
            )
        return self

    @property
    def servers(self) -> list[str]:
        """The server URLs, one by one."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]
