"""What every config model shares: the base model, the name pattern and small value parsers.

A neutral module (it imports nothing of the daemon): each part owns its config model in its
own module (sources in :mod:`crossmodald.ingest`, sinks in :mod:`crossmodald.bus`, the API in
:mod:`crossmodald.api_config`) and builds it from these; :mod:`crossmodald.service.config`
only composes them.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from pydantic import BaseModel, ConfigDict

__all__ = ["NAME_PATTERN", "ConfigModel", "check_origins", "parse_frame_rate"]

#: Stream, source and token names: what may appear in a URL path and a metric label.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


class ConfigModel(BaseModel):
    """Base of every config table: unknown keys are errors, validated values are frozen.

    Every float of every table that derives from it (sources, sinks, plugins, the API, the
    daemon's own tables, third-party types alike) must be finite: TOML's ``inf``/``nan`` and
    JSON's ``Infinity``/``NaN`` are refused as ``Input should be a finite number``, where they
    are read, instead of overflowing where the value is first turned into nanoseconds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def parse_frame_rate(value: object) -> Fraction:
    """Frame rate from a number or "num/den"; 29.97, 59.94 and 23.976 mean the NTSC rates."""
    if isinstance(value, bool):
        raise ValueError("expected a frame rate, got a boolean")
    if isinstance(value, str):
        try:
            rate = Fraction(value.strip())
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(
                f"expected a frame rate like 30 or '30000/1001', got {value!r}"
            ) from exc
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite frame rate, got {value!r}")
        exact = Fraction(value)
        rate = exact.limit_denominator(1001)
        for ntsc in (24, 30, 60, 120):
            if abs(exact - Fraction(ntsc * 1000, 1001)) < Fraction(6, 1000):
                rate = Fraction(ntsc * 1000, 1001)
    else:
        raise ValueError(f"expected a frame rate, got {type(value).__name__}")
    if not 1 <= rate <= 240:
        # Exact arithmetic: a 400-digit rate must not overflow a float in the message.
        got = f"{float(rate):g}" if -(10**9) < rate < 10**9 else repr(value)[:40]
        raise ValueError(f"frame rate must be within 1..240, got {got}")
    return rate


def check_origins(value: list[str]) -> list[str]:
    """CORS origins: ``*`` or ``scheme://host[:port]`` with no path."""
    for origin in value:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"expected an origin like 'https://host[:port]' (no path) or '*', got {origin!r}"
            )
    return value
