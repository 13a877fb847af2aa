"""The one human-readable line of an event (``crossmodald events`` and ``analyze`` tables).

Generic over event types: every scalar ``data`` field as ``key=value`` in the event's own order,
offsets (``*_ms``) signed, nested values (``pairs``, ``peak``) and nulls left out. Only the time
column differs: the wall clock (``events``, a live daemon) or the media span (``analyze``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

#: Longest line printed; longer ones end in "...".
MAX_LINE = 200


def format_value(key: str, value: Any) -> str | None:
    """``value`` as printed after ``key=`` (None: not printed)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        if key.endswith("_ms"):
            return f"{value:+.1f}"
        if key == "confidence":
            return f"{value:.2f}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if text and " " not in text else json.dumps(text)


def format_event_line(event: dict[str, Any], *, time: Literal["wall", "media"] = "wall") -> str:
    """One line, e.g. ``12:00:01.234 testcard sync.offset audio_lead_ms=+40.0 confidence=0.98``.

    Args:
        event: The event's JSON object.
        time: ``wall`` (the ``ts`` clock time) or ``media`` (the span in media seconds).
    """
    if time == "media":
        media = event.get("media") if isinstance(event.get("media"), dict) else {}
        assert isinstance(media, dict)
        start_s = int(media.get("start_ns", 0)) / 1e9
        end_s = int(media.get("end_ns", 0)) / 1e9
        when = f"{start_s:9.3f}-{end_s:<9.3f}"
    else:
        ts = str(event.get("ts", ""))
        when = ts[11:23] if len(ts) >= 23 else ts
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    parts = [f"[{event['phase']}]"] if event.get("phase") else []
    for key, value in data.items():
        shown = format_value(str(key), value)
        if shown is not None:
            parts.append(f"{key}={shown}")
    stream = event.get("stream") or "-"
    line = f"{when} {stream} {event.get('type', '?')} {' '.join(parts)}".rstrip()
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."
