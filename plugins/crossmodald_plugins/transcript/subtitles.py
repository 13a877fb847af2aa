"""Subtitles from final ``transcript`` events: SubRip (``.srt``) and WebVTT (``.vtt``).

Pure (no model): :func:`cues` cuts each final transcript into cues of at most
:data:`MAX_CUE_CHARS` characters (two lines) and :data:`MAX_CUE_S` seconds, at word times;
:func:`write_srt` / :func:`write_vtt` format them. WebVTT names a known face track as the cue's
voice (``<v track 3>``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crossmodald.media import NS_PER_MS, NS_PER_S

#: Most characters in one cue (two lines of 42, the common broadcast limit).
MAX_CUE_CHARS = 84
#: Longest cue, seconds.
MAX_CUE_S = 6.0
#: Shortest cue shown, seconds (a single short word would flash).
MIN_CUE_S = 0.5
LINE_CHARS = 42


@dataclass(frozen=True, slots=True)
class Cue:
    """One subtitle: text on screen from ``start_ns`` to ``end_ns`` (media time)."""

    start_ns: int
    end_ns: int
    text: str
    speaker: int | str | None = None


def cues(events: Iterable[Mapping[str, Any]]) -> list[Cue]:
    """Cues from event JSON objects (others than final ``transcript`` ones are skipped)."""
    out: list[Cue] = []
    for event in events:
        if event.get("type") != "transcript" or event.get("phase") != "end":
            continue
        data = event.get("data") or {}
        media = event.get("media") or {}
        words = [w for w in data.get("words") or () if str(w.get("word", "")).strip()]
        if words:
            out += _split(words, data.get("speaker"))
        elif str(data.get("text", "")).strip():
            out.append(
                Cue(
                    int(media.get("start_ns", 0)),
                    int(media.get("end_ns", 0)),
                    str(data["text"]).strip(),
                    data.get("speaker"),
                )
            )
    out.sort(key=lambda c: c.start_ns)
    return _no_overlap(out)


def _split(words: Sequence[Mapping[str, Any]], speaker: int | str | None) -> list[Cue]:
    out: list[Cue] = []
    current: list[Mapping[str, Any]] = []

    def flush() -> None:
        if current:
            text = " ".join(str(w["word"]).strip() for w in current)
            out.append(Cue(int(current[0]["start_ns"]), int(current[-1]["end_ns"]), text, speaker))
            current.clear()

    for word in words:
        if current:
            text = " ".join(str(w["word"]).strip() for w in [*current, word])
            span_s = (int(word["end_ns"]) - int(current[0]["start_ns"])) / NS_PER_S
            if len(text) > MAX_CUE_CHARS or span_s > MAX_CUE_S:
                flush()
        current.append(word)
    flush()
    return out


def _no_overlap(items: list[Cue]) -> list[Cue]:
    """Lengthen very short cues, but never over the next one."""
    out: list[Cue] = []
    for i, cue in enumerate(items):
        end = max(cue.end_ns, cue.start_ns + round(MIN_CUE_S * NS_PER_S))
        if i + 1 < len(items):
            end = min(end, items[i + 1].start_ns)
        out.append(Cue(cue.start_ns, max(end, cue.start_ns + NS_PER_MS), cue.text, cue.speaker))
    return out


def _wrap(text: str) -> str:
    """Two lines at the space nearest the middle when the text is longer than one line."""
    if len(text) <= LINE_CHARS:
        return text
    middle = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c == " "]
    if not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - middle))
    return text[:cut] + "\n" + text[cut + 1 :]


def _clock(t_ns: int, separator: str) -> str:
    ms = max(0, t_ns) // NS_PER_MS
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def write_srt(items: Sequence[Cue]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""
    blocks = [
        f"{n}\n{_clock(c.start_ns, ',')} --> {_clock(c.end_ns, ',')}\n{_wrap(_plain(c.text))}\n"
        for n, c in enumerate(items, 1)
    ]
    return "\n".join(blocks)


def write_vtt(items: Sequence[Cue]) -> str:
    """WebVTT; a cue spoken by a known face track carries it as the voice."""
    blocks = ["WEBVTT\n"]
    for c in items:
        text = _wrap(_escape(c.text))
        if isinstance(c.speaker, int):
            text = f"<v track {c.speaker}>{text}"
        blocks.append(f"{_clock(c.start_ns, '.')} --> {_clock(c.end_ns, '.')}\n{text}\n")
    return "\n".join(blocks)


def _plain(text: str) -> str:
    # A blank line ends a SubRip cue; "-->" would read as a timing line.
    return " ".join(text.split()).replace("-->", "->")


def _escape(text: str) -> str:
    return _plain(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
