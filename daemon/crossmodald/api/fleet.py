"""``GET /v1/fleet``: the daemons of a fleet (alive, load) and which daemon runs which source.

Added only in fleet mode (see docs/fleet.md). The body, as of the daemon's last scan of the
fleet's buckets (``scanned_at``; one scan every ``[fleet] scan_interval_s``)::

    {"daemon": "a", "connected": true, "bucket": "crossmodald", "lease_ttl_s": 5.0,
     "scanned_at": 1764860000.1, "fair_share": 4,
     "daemons": [{"daemon": "a", "alive": true, "self": true, "api": "http://10.0.0.1:8700",
                  "load": 4, "max_streams": 64, "streams": ["cam1", ...],
                  "started_at": ..., "last_seen": ...}, ...],
     "sources": [{"name": "cam1", "type": "pattern", "origin": "fleet", "state": "running",
                  "error": null, "daemon": "a"}, ...],
     "held": ["cam1", ...],
     "counters": {"acquired": 4, "lost": 0, "released": 0, "reconnects": 0}}

A daemon that left or died is listed with ``"alive": false`` once this daemon has seen it
alive. Reading needs the ``subscribe`` scope.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web


class FleetView(Protocol):
    """What the route needs from the daemon's fleet membership."""

    def fleet_status(self) -> dict[str, Any]:
        """The body of ``GET /v1/fleet`` (JSON-compatible)."""
        ...


FLEET_VIEW = web.AppKey("fleet_view", FleetView)


def add_fleet_routes(app: web.Application, view: FleetView) -> None:
    """Add ``GET /v1/fleet`` to ``app`` (before it is started)."""
    app[FLEET_VIEW] = view
    app.router.add_get("/v1/fleet", _fleet)


async def _fleet(request: web.Request) -> web.Response:
    from crossmodald.api.auth import check_bearer

    check_bearer(request, "subscribe")
    return web.json_response(request.app[FLEET_VIEW].fleet_status())
