"""Bounded, redacted logging of what HTTP clients get wrong.

A client can make the server log at will: a malformed request line, an over-long URL, a body
that stops half-way. Logged per request (aiohttp logs each with a traceback, quoting the request
line), a hostile client fills the journal and a token in the line lands in it. Here:

* every line is redacted by :func:`crossmodald.redact.redact_text` (tokens in query strings,
  userinfo, ``Authorization`` values) before it is logged;
* a client error is one line, no traceback; the same kind of error is logged once per
  :data:`LOG_INTERVAL_S`, and then once more with the count of those not logged;
* an unexpected exception (a bug) keeps its traceback, under the same bound.

:class:`ServerLog` takes the place of aiohttp's ``aiohttp.server`` logger for the API server
(see :func:`crossmodald.api.app.serve`); the API's own middlewares log their refusals under the
same bound (the application's :data:`SERVER_LOG`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from crossmodald.redact import redact_text

log = logging.getLogger("crossmodald.api.server")

#: Seconds between two log lines about the same kind of client error.
LOG_INTERVAL_S = 10.0
#: Longest message quoted from a client error, in characters (after redaction).
_MAX_MESSAGE_CHARS = 200
#: Most kinds tracked at once (a client cannot grow the table without bound).
_MAX_KINDS = 256


@dataclass(slots=True)
class _Kind:
    next_at: float
    suppressed: int = 0
    flush: asyncio.TimerHandle | None = None


class RateLimitedLog:
    """Logs each kind of message at most once per ``interval_s``, then how many were not logged.

    Args:
        logger: Where the lines go.
        interval_s: Seconds between two lines of one kind.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        #: Lines logged and lines held back, in all (for tests and metrics).
        self.logged = 0
        self.suppressed = 0

    def log(
        self, level: int, kind: str, message: str, *, exc_info: BaseException | None = None
    ) -> bool:
        """Log ``message`` (redacted) unless ``kind`` was logged in the last interval.

        Returns:
            Whether the line was logged now.
        """
        now = self._clock()
        entry = self._kinds.get(kind)
        if entry is not None and now < entry.next_at:
            entry.suppressed += 1
            self.suppressed += 1
            if entry.flush is None:
                entry.flush = _call_later(entry.next_at - now, self._flush, level, kind)
            return False
        if entry is None and len(self._kinds) >= _MAX_KINDS:
            self._forget_expired(now)
        held = entry.suppressed if entry is not None else 0
        if entry is not None and entry.flush is not None:
            entry.flush.cancel()
        self._kinds[kind] = _Kind(next_at=now + self.interval_s)
        if held:
            message += f" (and {held} more like it in the last {self.interval_s:g} s)"
        self.logger.log(level, redact_text(message), exc_info=exc_info)
        self.logged += 1
        return True

    def _flush(self, level: int, kind: str) -> None:
        entry = self._kinds.get(kind)
        if entry is None or not entry.suppressed:
            return
        count, entry.suppressed, entry.flush = entry.suppressed, 0, None
        self.logger.log(level, "%s: %d more in the last %g s (not logged one by one)", kind,
                        count, self.interval_s)  # fmt: skip
        self.logged += 1

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, e in self._kinds.items() if e.next_at <= now and not e.suppressed]:
            del self._kinds[key]
        if len(self._kinds) >= _MAX_KINDS:  # all still active: drop the oldest
            oldest = min(self._kinds, key=lambda k: self._kinds[k].next_at)
            dropped = self._kinds.pop(oldest)
            if dropped.flush is not None:
                dropped.flush.cancel()


def _call_later(
    delay_s: float, callback: Callable[..., None], *args: Any
) -> asyncio.TimerHandle | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None  # no loop (a synchronous caller): the count goes out with the next line
    return loop.call_later(delay_s, callback, *args)


#: Each API application's bound for its client errors and refusals (set by ``build_app``).
SERVER_LOG = web.AppKey("api_server_log", RateLimitedLog)


def one_line(exc: BaseException) -> str:
    """``ExcType: message`` on one line, redacted and cut to a bounded length."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = redact_text(text)
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}"


class ServerLog:
    """Stands in for aiohttp's server logger (``RequestHandler(logger=...)``).

    aiohttp calls ``exception(...)`` for a request it could not parse or a handler that raised,
    and ``debug(...)`` for disconnects. Client errors (:class:`HttpProcessingError`: a bad
    request line, version, header, an over-long URL) become one redacted line per kind and
    interval, without a traceback; anything else keeps its traceback, under the same bound.

    Args:
        limiter: The bound (the application's :data:`SERVER_LOG`).
    """

    def __init__(self, limiter: RateLimitedLog) -> None:
        self.limiter = limiter

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **_kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        text = msg % args if args else msg
        if isinstance(exc, HttpProcessingError):
            kind = f"api: bad request ({type(exc).__name__})"
            self.limiter.log(logging.INFO, kind, f"{kind} from {_peer(args)}: {one_line(exc)}")
            return
        if isinstance(exc, ConnectionError):
            return  # the client went away: nothing to tell anyone
        kind = (
            f"api: {text.split(' from ', 1)[0]} ({type(exc).__name__ if exc else 'no exception'})"
        )
        self.limiter.log(logging.ERROR, kind, f"api: {text}", exc_info=exc)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self.exception(msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **_kw: Any) -> None:
        text = msg % args if args else msg
        self.limiter.log(logging.WARNING, f"api: {text[:60]}", f"api: {text}")

    def debug(self, msg: str, *args: Any, **_kw: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(redact_text(msg % args if args else msg))

    def isEnabledFor(self, level: int) -> bool:  # the logging.Logger name
        return log.isEnabledFor(level)


T = TypeVar("T")


async def shield_from_client(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the client disconnects meanwhile.

    The API cancels a handler whose client went away (``handler_cancellation``); work that
    changes state (removing a stream, a reload, answering a WHIP offer) must not stop half-way.
    If it fails after its handler is gone, that is one log line, not asyncio's "Task exception
    was never retrieved".
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_orphan)
        raise


def _log_orphan(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("api: work for a client that left failed: %s", one_line(exc))


def _peer(args: tuple[Any, ...]) -> str:
    return str(args[0]) if args else "?"
