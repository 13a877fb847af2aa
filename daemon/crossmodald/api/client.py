"""A client for the daemon's event stream (SSE): ``crossmodald events URL``.

:func:`follow_events` connects to ``/v1/events``, hands each event to a callback and, when the
connection drops or the server ends the stream, reconnects with ``Last-Event-ID`` so nothing is
missed while the daemon's replay buffer still holds it (the server says ``gap`` otherwise).
:func:`events_command` is the CLI command built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
from yarl import URL

from crossmodald.bus.bus import EventFilter
from crossmodald.bus.text import format_event_line

#: Output formats of :func:`events_command`.
FORMATS = ("jsonl", "table")
#: Longest SSE line the client accepts, in bytes (one event's JSON).
MAX_LINE_BYTES = 1 << 20


class EventsClientError(Exception):
    """The event stream cannot be (re)opened; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class FollowedEvent:
    """One event as received.

    Attributes:
        seq: The event's ``seq`` (the SSE id), None if the server sent none.
        type: The event type (the SSE event name).
        raw: The event's JSON text exactly as the daemon serialised it.
        body: The parsed JSON object.
    """

    seq: int | None
    type: str
    raw: str
    body: dict[str, Any]


def events_url(url: str) -> URL:
    """The ``/v1/events`` URL for a base URL (``http://host:port``) or the events URL itself.

    Raises:
        EventsClientError: Not an http(s) URL with a host.
    """
    parsed = URL(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise EventsClientError(f"not an http(s) URL: {url!r}")
    path = parsed.path.rstrip("/")
    if not path.endswith("/v1/events"):
        path = path + "/v1/events"
    return parsed.with_path(path).with_query(None).with_fragment(None)


def _base(url: URL) -> str:
    return str(url.origin())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        return os.strerror(errno) if errno else str(exc.os_error) or type(exc.os_error).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


async def follow_events(
    url: str,
    *,
    types: Sequence[str] = (),
    streams: Sequence[str] = (),
    on_event: Callable[[FollowedEvent], None],
    on_notice: Callable[[str], None] | None = None,
    last_event_id: int | None = None,
    reconnect_attempts: int = 10,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
    read_timeout_s: float = 45.0,
) -> None:
    """Follow the daemon's events until cancelled.

    Args:
        url: Base URL (``http://127.0.0.1:8750``) or the ``/v1/events`` URL.
        types: Type filter entries (``sync.offset``, ``sync.``); empty = all.
        streams: Stream names; empty = all.
        on_event: Called for each event, in order.
        on_notice: Called with one-line notices (a gap, the server closing the stream,
            reconnecting); None ignores them.
        last_event_id: Resume after this ``seq``.
        reconnect_attempts: Consecutive failed reconnects before giving up.
        backoff_s: First reconnect delay; it doubles per failure up to ``max_backoff_s``.
        max_backoff_s: Longest reconnect delay.
        read_timeout_s: Reconnect when nothing (not even a keep-alive) arrives for this long.

    Raises:
        EventsClientError: The first connection fails, the server rejects the request
            (bad filter), or reconnecting failed ``reconnect_attempts`` times in a row.
    """
    target = events_url(url)
    try:
        EventFilter.from_lists(types, streams)
    except ValueError as exc:
        raise EventsClientError(str(exc)) from None
    params = {}
    if types:
        params["type"] = ",".join(types)
    if streams:
        params["stream"] = ",".join(streams)
    notice = on_notice or (lambda _text: None)
    timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=read_timeout_s)
    failures = 0
    connected_once = False
    last_id = last_event_id
    async with aiohttp.ClientSession(timeout=timeout, read_bufsize=MAX_LINE_BYTES) as session:
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = str(last_id)
            try:
                async with session.get(target, params=params, headers=headers) as response:
                    await _check_status(response, target)
                    connected_once = True
                    failures = 0
                    last_id = await _read_stream(response, last_id, on_event, notice)
                reason = "the server ended the stream"
            except aiohttp.ClientConnectorError as exc:
                if not connected_once:
                    raise EventsClientError(
                        f"cannot connect to {_base(target)}: {_reason(exc)}"
                    ) from None
                reason = _reason(exc)
            except _Retryable as exc:
                reason = str(exc)
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = _reason(exc)
            failures += 1
            if failures > reconnect_attempts:
                raise EventsClientError(
                    f"lost connection to {_base(target)}: {reason} "
                    f"(gave up after {reconnect_attempts} reconnect attempts)"
                )
            delay_s = min(max_backoff_s, backoff_s * 2 ** (failures - 1))
            notice(f"{reason}; reconnecting in {delay_s:.1f} s")
            await asyncio.sleep(delay_s)


class _Retryable(Exception):
    """The server answered but is busy or restarting (429/502/503/504): try again later."""


async def _check_status(response: aiohttp.ClientResponse, target: URL) -> None:
    if response.status == 200:
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            raise EventsClientError(
                f"{target}: not an event stream (Content-Type {content_type!r})"
            )
        return
    try:
        body = await response.json(content_type=None)
        detail = body.get("error") if isinstance(body, dict) else None
    except (ValueError, aiohttp.ClientError):
        detail = None
    message = f"{target}: HTTP {response.status}" + (f": {detail}" if detail else "")
    if response.status in (429, 502, 503, 504):
        raise _Retryable(message)
    raise EventsClientError(message)


async def _read_stream(
    response: aiohttp.ClientResponse,
    last_id: int | None,
    on_event: Callable[[FollowedEvent], None],
    notice: Callable[[str], None],
) -> int | None:
    """Parse the SSE stream (WHATWG rules, the subset the daemon sends); returns the last id."""
    event_name = ""
    data_lines: list[str] = []
    event_id: str | None = None
    async for raw_line in response.content:
        line = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data_lines:
                data = "\n".join(data_lines)
                last_id = _dispatch(
                    event_name or "message", data, event_id, last_id, on_event, notice
                )
            event_name, data_lines, event_id = "", [], None
            continue
        if line.startswith(":"):
            continue  # a keep-alive comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event_name = value
        elif name == "data":
            data_lines.append(value)
        elif name == "id":
            event_id = value
    return last_id


def _dispatch(
    name: str,
    data: str,
    event_id: str | None,
    last_id: int | None,
    on_event: Callable[[FollowedEvent], None],
    notice: Callable[[str], None],
) -> int | None:
    if name == "gap":
        notice(f"missed events: {_detail(data, 'message')}")
        return last_id
    if name == "close":
        notice(f"server closed the stream: {_detail(data, 'reason')}")
        return last_id
    try:
        body = json.loads(data)
    except ValueError:
        notice(f"ignored an event that is not JSON: {data[:60]!r}")
        return last_id
    seq = int(event_id) if event_id is not None and event_id.isdigit() else None
    if isinstance(body, dict):
        on_event(FollowedEvent(seq, name, data, body))
    return seq if seq is not None else last_id


def _detail(data: str, key: str) -> str:
    with contextlib.suppress(ValueError):
        body = json.loads(data)
        if isinstance(body, dict) and key in body:
            return str(body[key])
    return data


# -- the CLI command --------------------------------------------------------------------------


def format_table_line(event: dict[str, Any]) -> str:
    """One readable line, e.g. ``12:00:01.234 testcard sync.offset audio_lead_ms=+40.0 ...``."""
    return format_event_line(event, time="wall")


async def events_command(
    url: str,
    types: list[str],
    streams: list[str],
    format: str,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    reconnect_attempts: int = 10,
    backoff_s: float = 0.5,
) -> int:
    """``crossmodald events URL [--type T] [--stream S] [--format jsonl|table]``.

    Prints one line per event to ``out`` (stdout): the event's JSON (``jsonl``) or a readable
    summary (``table``); notices and errors go to ``err`` (stderr). Ctrl-C (SIGINT) stops it.

    Returns:
        0 after Ctrl-C (or when the output pipe closes), 1 when the stream cannot be opened or
        was lost for good (one-line error on ``err``), 2 for a bad format or filter.
    """
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    if format not in FORMATS:
        print(f"unknown format {format!r} (choose from {', '.join(FORMATS)})", file=stderr)
        return 2
    try:
        events_url(url)
        EventFilter.from_lists(types, streams)
    except (EventsClientError, ValueError) as exc:
        print(str(exc), file=stderr)
        return 2

    def on_event(event: FollowedEvent) -> None:
        line = event.raw if format == "jsonl" else format_table_line(event.body)
        stdout.write(line + "\n")
        stdout.flush()

    def on_notice(text: str) -> None:
        print(f"# {text}", file=stderr, flush=True)

    follower = asyncio.create_task(
        follow_events(
            url,
            types=types,
            streams=streams,
            on_event=on_event,
            on_notice=on_notice,
            reconnect_attempts=reconnect_attempts,
            backoff_s=backoff_s,
        ),
        name="events:follow",
    )
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        follower.cancel()

    handled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        # Only possible in the main thread; elsewhere Ctrl-C is the caller's business.
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        handled = True
    try:
        await follower
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return 0
    except EventsClientError as exc:
        print(str(exc), file=stderr)
        return 1
    except BrokenPipeError:
        return 0
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
    return 0


def run_events(url: str, types: list[str], streams: list[str], format: str) -> int:
    """Synchronous entry for the CLI: runs :func:`events_command`; Ctrl-C exits 0."""
    try:
        return asyncio.run(events_command(url, types, streams, format))
    except KeyboardInterrupt:
        return 0
