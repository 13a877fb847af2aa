"""``crossmodald analyze``: a summary per event type and method over confident windows, events
in media-time order, no windows past the end of the file, a progress bar only on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from crossmodald.bus.text import format_event_line
from crossmodald.cli import main
from crossmodald.ingest import media
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.progress import ProgressBar, media_duration_s
from crossmodald.service.config import PatternSourceConfig

LEAD_MS = 40.0
SECONDS = 10.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("analyze") / "pattern.mp4"
    config = PatternSourceConfig.model_validate(
        {"type": "pattern", "name": "p", "width": 320, "height": 240, "audio_lead_ms": LEAD_MS}
    )
    write_pattern_file(config, path, duration_s=SECONDS)
    return path


def analyze(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["analyze", *args])
    return code, out.getvalue(), err.getvalue()


def test_two_plugins_are_summarised_apart_in_time_order_within_the_file(clip: Path) -> None:
    code, out, err = analyze(str(clip), "--plugin", "avsync", "--plugin", "speaker", "--format",
                             "jsonl")  # fmt: skip
    assert code == 0, err
    events: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    summary = json.loads(err.strip().splitlines()[-1])["summary"]

    # Media-time order, not grouped by plugin: both plugins' results for a window sit together.
    starts = [e["media"]["start_ns"] for e in events if e["type"] != "stream.end"]
    assert starts == sorted(starts)
    assert events[-1]["type"] == "stream.end"
    offsets = [e for e in events if e["type"] == "sync.offset"]
    # Each window's two results (one per plugin) are next to each other.
    assert offsets[0]["media"] == offsets[1]["media"]
    assert offsets[0]["data"]["method"] != offsets[1]["data"]["method"]

    # No window runs past the end of the media (the end of the 10 s file's last audio frame).
    end_ns = events[-1]["media"]["end_ns"]
    assert end_ns <= SECONDS * 1e9 + 1024 / 48_000 * 1e9
    assert all(e["media"]["end_ns"] <= end_ns for e in events)
    assert summary["windows_past_end"] > 0  # the flushed tail windows were left out

    # Windows are counted once, however many plugins report on each.
    spans = {
        (e["media"]["start_ns"], e["media"]["end_ns"]) for e in events if e["type"] == "sync.offset"
    }
    assert summary["windows"] == len(spans)

    # One group per method; the flash method's median is the truth, the speaker's scan (no face
    # in a test pattern) is not pooled into it.
    groups = summary["groups"]
    flash = groups["sync.offset method=flash"]
    assert abs(flash["median"]["audio_lead_ms"] - LEAD_MS) <= 2.0
    speaker = [k for k in groups if k.startswith("sync.offset") and k != "sync.offset method=flash"]
    assert speaker, groups
    assert flash["events"] == len(spans)


def _without_run_fields(out: str) -> list[dict[str, Any]]:
    """The events of one run without what differs between runs (ids, wall-clock times)."""
    events = [json.loads(line) for line in out.splitlines()]
    for event in events:
        for key in ("id", "ts", "seq", "closed_mono_ns"):
            event.pop(key, None)
    return events


def test_the_output_does_not_depend_on_how_the_decoding_was_batched(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offline batches end after so many items or so much wall time, so where they end (and
    # where the audio items that tile within one batch end) depends on the machine's load.
    # The same file must give the same events and summary however it was cut: the stream's end
    # (and with it which windows lie past the end) once came from whichever item was last.
    runs = []
    for items in (128, 1, 7, 16):
        monkeypatch.setattr(media, "_BATCH_ITEMS_OFFLINE", items)
        code, out, err = analyze(str(clip), "--format", "jsonl")
        assert code == 0, err
        runs.append((_without_run_fields(out), err.strip().splitlines()[-1]))
    assert all(run == runs[0] for run in runs[1:])
    end = runs[0][0][-1]
    assert end["type"] == "stream.end"
    # The stream's media span, to the end of its last audio frame (AAC pads the last 1024).
    assert end["media"]["start_ns"] == 0
    assert SECONDS * 1e9 <= end["media"]["end_ns"] <= SECONDS * 1e9 + 1024 / 48_000 * 1e9


def test_only_confident_windows_count(clip: Path) -> None:
    code, out, err = analyze(str(clip), "--format", "jsonl")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    flash = [e["data"] for e in events if e["data"].get("method") == "flash"]
    low = [d for d in flash if d["confidence"] < 0.8]
    assert low, "the pattern gives some windows below 0.8 confidence"
    code, _, err = analyze(str(clip), "--format", "jsonl", "--min-confidence", "0.8")
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    group = summary["groups"]["sync.offset method=flash"]
    assert group["confident"] == len(flash) - len(low)
    assert group["median"]["confidence"] >= 0.8
    assert summary["min_confidence"] == 0.8
    code, _, err = analyze(str(clip), "--min-confidence", "2")
    assert code == 2
    assert "--min-confidence must be within 0..1" in err


def test_table_summary_has_a_line_per_method(clip: Path) -> None:
    code, out, err = analyze(str(clip))
    assert code == 0, err
    assert err == ""  # not a terminal: no progress bar
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("summary: "))
    assert "past the end of the media left out" in lines[head]
    (flash,) = [line for line in lines[head:] if "sync.offset method=flash" in line]
    match = re.search(r"median audio_lead_ms ([-+0-9.]+)", flash)
    assert match, flash
    assert abs(float(match.group(1)) - LEAD_MS) <= 2.0


def test_the_event_line_is_generic() -> None:
    event = {
        "ts": "2024-05-01T12:00:01.234Z",
        "stream": "cam",
        "type": "speech",
        "phase": "start",
        "media": {"start_ns": 1_500_000_000, "end_ns": 3_500_000_000, "clock": "pts"},
        "data": {"probability": 0.912345, "gap_ms": 12.0, "label": "two words", "extra": [1]},
    }
    assert format_event_line(event) == (
        '12:00:01.234 cam speech [start] probability=0.9123 gap_ms=+12.0 label="two words"'
    )
    assert format_event_line(event, time="media").startswith("    1.500-3.500     cam speech")


def test_progress_bar_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    bar = ProgressBar(quiet, {"s": 10.0}, "analyze")
    bar.advance("s", 5.0, ended=True)
    bar.close()
    assert quiet.getvalue() == ""
    tty = Tty()
    bar = ProgressBar(tty, {"a": 10.0, "b": 30.0}, "eval")
    bar.advance("a", 10.0, ended=True)
    assert "[" in tty.getvalue()
    assert " 25% 10.0/40.0 s media" in tty.getvalue()
    bar.advance("b", 99.0, ended=True)
    assert "100% 40.0/40.0 s media" in tty.getvalue()
    bar.close()
    assert tty.getvalue().endswith("\r")


def test_media_duration(clip: Path, tmp_path: Path) -> None:
    assert media_duration_s(clip) == pytest.approx(SECONDS, abs=0.1)
    assert media_duration_s("http://127.0.0.1:9/x.mp4") is None
    assert media_duration_s(tmp_path / "missing.mp4") is None


def test_analyze_shows_progress_on_a_terminal(clip: Path) -> None:
    # stderr is a pseudo-terminal: the bar is drawn there; stdout (a pipe) gets only events.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossmodald", "analyze", str(clip)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    text = seen.decode()
    assert "analyze [" in text
    assert "100% 10.0/10.0 s media" in text
    assert b"\r" not in out
    assert b"summary: " in out
