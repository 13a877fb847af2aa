"""A progress bar on a terminal for the offline commands (``analyze``, ``eval``).

Progress is media time: the furthest media end of any event per stream, against each stream's
duration. The bar is drawn on ``out`` (stderr) only when it is a terminal, at most 10 times a
second, and cleared at the end; piped or redirected output gets nothing from it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

#: Redraws per second at most.
_RATE_HZ = 10.0
_WIDTH = 30


def media_duration_s(target: str | Path) -> float | None:
    """Duration of a local media file in seconds, from its container (None: unknown, a URL)."""
    path = Path(target)
    if "://" in str(target) or not path.is_file():
        return None
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration is not None and container.duration > 0:
                return float(container.duration) / 1e6  # av.time_base: microseconds
            stream = next(iter(container.streams), None)
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (OSError, ValueError, av.FFmpegError):
        return None
    return None


class ProgressBar:
    """``label [#####.....]  42% 12.6/30.0 s media, 4.1 s`` on a terminal, else nothing.

    Args:
        out: Where to draw (a terminal; anything else disables the bar).
        durations_s: Media seconds expected per stream name (None: unknown).
        label: Printed before the bar.
        enabled: Force on or off (default: ``out.isatty()``).
    """

    def __init__(
        self,
        out: TextIO | None,
        durations_s: Mapping[str, float | None],
        label: str,
        *,
        enabled: bool | None = None,
    ) -> None:
        self.out = out
        self.label = label
        self.durations = dict(durations_s)
        self.done_s: dict[str, float] = {}
        self.enabled = out is not None and (_isatty(out) if enabled is None else enabled)
        self.started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def advance(self, stream: str, media_end_s: float, *, ended: bool = False) -> None:
        """The stream's events reached ``media_end_s`` (``ended``: the stream is done)."""
        if not self.enabled:
            return
        total = self.durations.get(stream)
        if ended and total is not None:
            media_end_s = total
        if media_end_s > self.done_s.get(stream, 0.0):
            self.done_s[stream] = media_end_s if total is None else min(media_end_s, total)
        now = time.monotonic()
        if ended or now - self._drawn >= 1 / _RATE_HZ:
            self._drawn = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The bar's text now."""
        elapsed = (now if now is not None else time.monotonic()) - self.started
        done = sum(self.done_s.values())
        totals = [d for d in self.durations.values()]
        if totals and all(d is not None and d > 0 for d in totals):
            total = float(sum(d for d in totals if d is not None))
            fraction = min(1.0, done / total)
            filled = round(fraction * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            return (
                f"{self.label} [{bar}] {fraction * 100:3.0f}% "
                f"{done:.1f}/{total:.1f} s media, {elapsed:.0f} s"
            )
        return f"{self.label} {done:.1f} s media, {elapsed:.0f} s"

    def _draw(self, now: float) -> None:
        assert self.out is not None
        text = self.line(now)
        pad = " " * max(0, self._width - len(text))
        self._width = len(text)
        self.out.write(f"\r{text}{pad}")
        self.out.flush()

    def close(self) -> None:
        """Clear the bar's line (so what follows starts on a clean line)."""
        if self.enabled and self._width and self.out is not None:
            self.out.write("\r" + " " * self._width + "\r")
            self.out.flush()
            self._width = 0


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False
