"""Logging: plain lines or one JSON object per line (both keep well in journald).

JSON records carry ``ts``, ``level``, ``logger``, ``msg``, the source location, the process id,
the asyncio task (``ingest:cam1``, ``plugin:avsync``, ...) or thread the record came from,
``exc`` for exceptions, and every field passed as ``extra={...}``. One record is always one line
(newlines in messages and tracebacks are escaped inside the JSON string), so journald keeps a
traceback as one entry.

Under systemd (``JOURNAL_STREAM`` names our stderr), each line starts with an ``sd-daemon(3)``
priority prefix such as ``<4>``: journald strips it and stores the level as ``PRIORITY``, so
``journalctl -p warning`` works; plain lines then leave out the timestamp journald adds itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

from crossmodald.redact import redact_text

#: sd-daemon(3) priorities by logging level.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
#: LogRecord attributes that are not ``extra`` fields.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def _task_name() -> str | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None
    return task.get_name() if task is not None else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "src": f"{record.module}:{record.lineno}",
            "pid": record.process,
        }
        task = _task_name() if record.thread == threading.get_ident() else None
        if task is not None:
            out["task"] = task
        elif record.threadName and record.threadName != "MainThread":
            out["thread"] = record.threadName
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: an odd extra value must not lose the record.
        return json.dumps(out, ensure_ascii=False, default=str)


class JournalPrefix(logging.Formatter):
    """Prefix every line of another formatter's output with its sd-daemon priority (``<4>``)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        level = max((lvl for lvl in _PRIORITY if lvl <= record.levelno), default=logging.DEBUG)
        prefix = f"<{_PRIORITY[level]}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class RedactUrls(logging.Formatter):
    """Hide URL credentials in another formatter's output (:func:`crossmodald.redact.redact_text`).

    The last line of defence: a library's exception text or a third party's log line may quote
    a URL with a password or token in it.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record))


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is connected to journald (systemd sets ``JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def make_formatter(fmt: str = "plain", *, journal: bool = False) -> logging.Formatter:
    """The formatter for ``fmt`` ("plain" or "json"), with priority prefixes for journald."""
    if fmt == "json":
        inner: logging.Formatter = JsonFormatter()
    elif journal:
        inner = logging.Formatter("%(levelname)s %(name)s: %(message)s")  # journald stamps time
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    inner = RedactUrls(inner)
    return JournalPrefix(inner) if journal else inner


def setup_logging(level: str = "info", fmt: str = "plain", *, journal: bool | None = None) -> None:
    """Configure the root logger to write to stderr (journald captures it under systemd).

    Args:
        level: "debug", "info", "warning" or "error".
        fmt: "plain" or "json".
        journal: Add sd-daemon priority prefixes; None detects journald from ``JOURNAL_STREAM``.
    """
    handler = logging.StreamHandler(sys.stderr)
    use_journal = stderr_is_journal(sys.stderr) if journal is None else journal
    handler.setFormatter(make_formatter(fmt, journal=use_journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
