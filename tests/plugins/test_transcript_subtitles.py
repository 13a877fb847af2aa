"""Subtitles from final transcript events: cue splitting, SubRip and WebVTT that PyAV parses."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import av

from crossmodald_plugins.transcript.subtitles import (
    MAX_CUE_CHARS,
    MAX_CUE_S,
    Cue,
    cues,
    write_srt,
    write_vtt,
)

S = 1_000_000_000


def _final(
    start_s: float, words: list[str], speaker: Any = None, step_s: float = 0.4
) -> dict[str, Any]:
    items = [
        {
            "word": w,
            "start_ns": round((start_s + i * step_s) * S),
            "end_ns": round((start_s + (i + 1) * step_s - 0.05) * S),
            "probability": 0.9,
            "speaker": speaker,
        }
        for i, w in enumerate(words)
    ]
    return {
        "type": "transcript",
        "phase": "end",
        "media": {"start_ns": items[0]["start_ns"], "end_ns": items[-1]["end_ns"]},
        "data": {"text": " ".join(words), "words": items, "speaker": speaker, "final": True},
    }


def test_partials_and_other_events_are_not_subtitles() -> None:
    partial = {**_final(0.0, ["hello"]), "phase": "update"}
    other = {"type": "speech", "phase": "end", "media": {}, "data": {}}
    assert cues([partial, other]) == []
    assert [c.text for c in cues([_final(1.0, ["hello", "there"])])] == ["hello there"]


def test_long_transcripts_are_split_at_words() -> None:
    words = [f"word{i:02d}" for i in range(40)]
    items = cues([_final(0.0, words)])
    assert len(items) > 1
    assert " ".join(c.text for c in items) == " ".join(words)
    for cue in items:
        assert len(cue.text) <= MAX_CUE_CHARS
        assert (cue.end_ns - cue.start_ns) / S <= MAX_CUE_S
    assert all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(items))


def test_srt_and_vtt_text() -> None:
    items = [Cue(1_500_000_000, 3_250_000_000, "ask not <what> --> you", 3)]
    srt = write_srt(items)
    assert srt.startswith("1\n00:00:01,500 --> 00:00:03,250\n")
    assert "-->" not in srt.splitlines()[2]
    vtt = write_vtt(items)
    assert vtt.startswith("WEBVTT\n\n00:00:01.500 --> 00:00:03.250\n<v track 3>")
    assert "&lt;what&gt;" in vtt


def test_players_parse_the_files(tmp_path: Path) -> None:
    events = [
        _final(0.5, ["and", "so", "my", "fellow", "Americans"], speaker=1),
        _final(3.0, ["ask", "not"], speaker="off-screen"),
        _final(3661.0, ["an", "hour", "later"]),
    ]
    items = cues(events)
    for suffix, text, codec in (
        ("srt", write_srt(items), "srt"),
        ("vtt", write_vtt(items), "webvtt"),
    ):
        path = tmp_path / f"subs.{suffix}"
        path.write_text(text, encoding="utf-8")
        with av.open(str(path)) as container:
            stream = container.streams.subtitles[0]
            assert stream.codec_context.name == codec
            packets = [p for p in container.demux(stream) if p.size]
        assert len(packets) == len(items)
        starts = [float(p.pts * p.time_base) for p in packets]
        assert starts == [c.start_ns / S for c in items]
