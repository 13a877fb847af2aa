"""benchmarks/compare_events.py: event-by-event comparison that ignores per-run fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scriptkit import load_benchmark


def _event(seq: int, start_ns: int, lead: float, **extra: Any) -> dict[str, Any]:
    return {
        "schema": 1,
        "id": f"id{seq}-{extra.pop('run', 'a')}",
        "seq": seq,
        "ts": f"2026-12-04T05:00:0{seq}.000Z",
        "stream": "s",
        "type": "sync.offset",
        "phase": None,
        "media": {"start_ns": start_ns, "end_ns": start_ns + 2_000_000_000, "clock": "pts"},
        "data": {"audio_lead_ms": lead, "pairs": [{"audio_lead_ms": lead}], **extra},
        "closed_mono_ns": 1000 + seq,
    }


def _write(path: Path, events: list[dict[str, Any]], summary: bool = False) -> Path:
    lines = [json.dumps(e) for e in events]
    if summary:
        lines.append(json.dumps({"summary": {"windows": len(events)}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_per_run_fields_are_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ce = load_benchmark("compare_events")
    before = _write(tmp_path / "a.jsonl", [_event(1, 0, 40.0), _event(2, 500_000_000, 39.9)])
    after = _write(
        tmp_path / "b.jsonl",
        [
            _event(5, 0, 40.0, run="b", wall_latency_ms=3.0),
            _event(6, 500_000_000, 39.9, run="b"),
        ],
        summary=True,
    )
    assert ce.main([str(before), str(after)]) == 0
    assert "SAME" in capsys.readouterr().out


def test_a_changed_value_is_reported_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ce = load_benchmark("compare_events")
    before = _write(tmp_path / "a.jsonl", [_event(1, 0, 40.0), _event(2, 500_000_000, 39.9)])
    after = _write(tmp_path / "b.jsonl", [_event(1, 0, 40.0), _event(2, 500_000_000, 41.0)])
    assert ce.main([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert ".data.audio_lead_ms: 39.9 -> 41.0" in out
    assert ".data.pairs[0].audio_lead_ms" in out
    # Within a tolerance they match.
    assert ce.main([str(before), str(after), "--atol", "2"]) == 0


def test_missing_events_and_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ce = load_benchmark("compare_events")
    one, two = _event(1, 0, 40.0), _event(2, 500_000_000, 39.9)
    before = _write(tmp_path / "a.jsonl", [one, two])
    assert ce.main([str(before), str(_write(tmp_path / "b.jsonl", [one]))]) == 1
    assert "<missing>" in capsys.readouterr().out
    swapped = _write(tmp_path / "c.jsonl", [two, one])
    assert ce.main([str(before), str(swapped)]) == 1
    assert ce.main([str(before), str(swapped), "--sort"]) == 0


def test_unreadable_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ce = load_benchmark("compare_events")
    good = _write(tmp_path / "a.jsonl", [_event(1, 0, 40.0)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "x", "media": {}}\nnot json\n')
    assert ce.main([str(good), str(bad)]) == 2
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
    assert ce.main([str(good), str(tmp_path / "absent.jsonl")]) == 2
