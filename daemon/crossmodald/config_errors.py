"""Config errors with precise messages: one line per problem, each with its key path.

A neutral module (it imports nothing of the daemon), so that every part that validates a piece
of the config (sources, sinks, plugins, the API) reports problems the same way, and
:mod:`crossmodald.service.config`, which composes those pieces, raises the same error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from pydantic import ValidationError

from crossmodald.redact import redact_text

__all__ = ["ConfigError", "format_validation_error"]


class ConfigError(Exception):
    """An invalid configuration; ``errors`` holds one line per problem, each with its key path.

    Args:
        source: Where the config came from (a path, ``<config>``), for the message.
        errors: One line per problem, e.g. ``sources.0.fps: expected a frame rate (got 'x')``.
    """

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        # Messages quote bad values, which may be URLs with credentials (check-config prints them).
        self.errors = [redact_text(line) for line in errors]
        super().__init__(f"{source}: " + "; ".join(self.errors))


def _describe(value: object) -> str:
    # Redacted before it is cut short: a cut URL may no longer look like one.
    text = redact_text(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    """One line per error: ``key.path: message (got value)``, URL credentials hidden.

    Args:
        exc: What pydantic raised.
        prefix: Key path of the validated table inside the whole config (e.g.
            ``("plugins", 2)``).

    Returns:
        Every error, in pydantic's order.
    """
    lines: list[str] = []
    for err in exc.errors():
        loc = [*prefix, *err["loc"]]
        path = ".".join(_key_text(part) for part in loc) or "(top level)"
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            lines.append(f"{path}: unknown key")
            continue
        if kind == "missing":
            lines.append(f"{path}: required key is missing")
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if "got " in msg or not err["loc"]:  # model-level checks describe themselves
            lines.append(f"{path}: {msg}")
        else:
            lines.append(f"{path}: {msg} (got {_describe(err.get('input'))})")
    return [redact_text(line) for line in lines]


def _key_text(part: str | int) -> str:
    # A TOML key may hold any character (even a newline); quote odd ones so that every error
    # stays one readable line.
    text = str(part)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)[:60]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
