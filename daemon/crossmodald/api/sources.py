"""REST control of sources and the config, for the daemon's operators.

Routes (added to the API application by :func:`add_source_routes`):
    ``GET /v1/sources``              ``{"sources": [...]}``: every stream, with its origin
                                     (``config``, ``api``, ``publisher``), state and source
                                     config (secrets and URL credentials hidden, see
                                     :mod:`crossmodald.redact`).
    ``GET /v1/sources/{name}``       One of them.
    ``POST /v1/sources``             Start a stream: the body is one ``[[sources]]`` table as
                                     JSON, e.g. ``{"type": "pattern", "name": "bars"}``;
                                     201 with its entry and ``Location``. In fleet mode it
                                     goes into the fleet's shared list and runs on the
                                     daemon that leases it (``GET /v1/fleet`` shows which).
    ``DELETE /v1/sources/{name}``    Stop a stream (its open windows are finished and its
                                     sessions closed first) and forget it; 200 with its entry.
    ``POST /v1/reload``              Read the config file again and apply it, as SIGHUP does;
                                     200 when applied, 422 (with every error) when rejected.

Changing things needs the ``admin`` scope and reading them ``subscribe`` (see
:mod:`crossmodald.api.auth`; :func:`_authorize` is the one place this module asks). Streams
started here count against ``[api.limits]`` ``max_streams`` (see :mod:`crossmodald.api.limits`).
A config reload never stops a stream started here; ``DELETE`` does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from aiohttp import web
from pydantic import ValidationError

from crossmodald.config_errors import format_validation_error
from crossmodald.ingest.base import SourceError
from crossmodald.ingest.registry import SourceConfigBase, SourceRegistry
from crossmodald.redact import redact_text

#: Largest POST /v1/sources body, in bytes (one source table).
MAX_SOURCE_BODY_BYTES = 64 * 1024


class ReloadOutcome(Protocol):
    """What a reload returns (the daemon's ``ReloadResult``)."""

    @property
    def ok(self) -> bool: ...

    def as_dict(self) -> dict[str, Any]: ...


class SourcesControl(Protocol):
    """What these routes need from the daemon (the composition root provides it)."""

    @property
    def source_types(self) -> SourceRegistry:
        """The source types a ``POST`` body is validated with (its ``type`` picks one)."""
        ...

    def sources(self) -> list[dict[str, Any]]:
        """Every stream as a JSON-compatible dict with ``name``, ``origin``, ``state``."""
        ...

    async def start_source(self, config: SourceConfigBase) -> asyncio.Task[None] | None:
        """Start a stream; returns its task, or None when the source went into a shared list
        (fleet mode: it runs on whichever daemon leases it, see docs/fleet.md).

        Raises:
            RuntimeError: The daemon is stopping, or the shared list cannot be reached.
            ValueError: A stream (or shared source) of that name exists.
            SourceError: The source cannot exist.
        """
        ...

    async def remove_source(self, name: str) -> dict[str, Any]:
        """Stop and forget a stream (fleet mode: take it off the shared list).

        Raises:
            KeyError: There is none of that name.
            RuntimeError: The shared list cannot be reached.
        """
        ...

    async def reload_from_file(self) -> ReloadOutcome:
        """Read the config file again and apply it."""
        ...

    @property
    def stopping(self) -> bool:
        """Whether shutdown has begun."""
        ...


SOURCES_CONTROL = web.AppKey("sources_control", SourcesControl)


def add_source_routes(app: web.Application, control: SourcesControl) -> None:
    """Add the routes above to ``app`` (before it is started)."""
    app[SOURCES_CONTROL] = control
    app.router.add_get("/v1/sources", _list)
    app.router.add_post("/v1/sources", _create)
    app.router.add_get("/v1/sources/{name}", _get)
    app.router.add_delete("/v1/sources/{name}", _delete)
    app.router.add_post("/v1/reload", _reload)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _authorize(request: web.Request, scope: str) -> None:
    """The one place this module checks access; raises the API's JSON 401/403.

    The API's auth middleware already checks every route by its scope map; asking again
    here keeps these routes closed even in an application built without that middleware.
    """
    from crossmodald.api.auth import check_bearer

    check_bearer(request, "admin" if scope == "admin" else "subscribe")


async def _list(request: web.Request) -> web.Response:
    _authorize(request, "subscribe")
    return web.json_response({"sources": request.app[SOURCES_CONTROL].sources()})


async def _get(request: web.Request) -> web.Response:
    _authorize(request, "subscribe")
    name = request.match_info["name"]
    for entry in request.app[SOURCES_CONTROL].sources():
        if entry.get("name") == name:
            return web.json_response(entry)
    return _error(404, f"no source named {name[:80]!r}")


async def _read_json(request: web.Request) -> Any:
    """The request's JSON body, or raise a JSON 400/413/415 error."""
    if request.content_length is not None and request.content_length > MAX_SOURCE_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_SOURCE_BODY_BYTES,
            actual_size=request.content_length,
            text=json.dumps(
                {"error": f"body larger than {MAX_SOURCE_BODY_BYTES} bytes"}, ensure_ascii=False
            ),
            content_type="application/json",
        )
    if request.content_type not in ("application/json", ""):
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": f"expected application/json, got {request.content_type}"}),
            content_type="application/json",
        )
    body = bytearray()
    async for chunk in request.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_SOURCE_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_SOURCE_BODY_BYTES,
                actual_size=len(body),
                text=json.dumps({"error": f"body larger than {MAX_SOURCE_BODY_BYTES} bytes"}),
                content_type="application/json",
            )
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not JSON: {exc}"}), content_type="application/json"
        ) from None


async def _create(request: web.Request) -> web.Response:
    _authorize(request, "admin")
    control = request.app[SOURCES_CONTROL]
    if control.stopping:
        return _error(503, "the daemon is stopping")
    data = await _read_json(request)
    if not isinstance(data, dict):
        return _error(400, f"expected a JSON object (one source table), got {type(data).__name__}")
    try:
        config = control.source_types.validate_table(data)
    except ValidationError as exc:
        errors = format_validation_error(exc)
        return _error(400, errors[0] if errors else "invalid source", errors=errors)
    from crossmodald.api.limits import acquire_stream_slot

    slot = acquire_stream_slot(request)
    try:
        task = await control.start_source(config)
    except ValueError as exc:
        slot.release()
        return _error(409, str(exc))
    except SourceError as exc:
        slot.release()
        return _error(422, redact_text(f"source {config.name!r}: {exc}"))
    except RuntimeError as exc:
        slot.release()
        return _error(503, str(exc))
    if task is None:
        # A shared list (fleet mode): the stream runs wherever it is leased, not on this
        # request's daemon; [fleet] max_streams bounds what each daemon runs.
        slot.release()
    else:
        # The slot is held for the stream's life, however it ends (DELETE, end of media,
        # failure).
        task.add_done_callback(lambda _task: slot.release())
    entry = next((e for e in control.sources() if e.get("name") == config.name), None)
    response = web.json_response(entry, status=201)
    response.headers["Location"] = f"/v1/sources/{config.name}"
    return response


async def _delete(request: web.Request) -> web.Response:
    _authorize(request, "admin")
    name = request.match_info["name"]
    control = request.app[SOURCES_CONTROL]
    try:
        entry = await control.remove_source(name)
    except KeyError:
        return _error(404, f"no source named {name[:80]!r}")
    except RuntimeError as exc:
        return _error(503, str(exc))
    return web.json_response({**entry, "removed": True})


async def _reload(request: web.Request) -> web.Response:
    _authorize(request, "admin")
    control = request.app[SOURCES_CONTROL]
    if control.stopping:
        return _error(503, "the daemon is stopping")
    result = await control.reload_from_file()
    body = result.as_dict()
    if result.ok:
        return web.json_response(body)
    errors = body.get("errors") or ["reload rejected"]
    return web.json_response({"error": f"reload rejected: {errors[0]}", **body}, status=422)
