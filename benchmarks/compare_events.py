"""Compare two JSONL event files event by event, ignoring the fields that differ run to run.

Issue 10 asks for "the same events on a pattern file, event by event" before and after. Events
as ``crossmodald analyze --format jsonl`` prints them (or as a JSONL sink writes them) are read
from both files; lines that are not events (e.g. a ``{"summary": ...}`` line) are skipped. Per-run
fields are dropped before comparing: ``id``, ``seq``, ``ts`` (wall clock), ``closed_mono_ns``,
and any key, at any depth, named in ``--ignore`` or ending in ``_mono_ns``, ``latency_ms`` or
``arrival_ns``. Numbers compare equal within ``--rtol`` / ``--atol``.

By default events are compared in file order. ``--sort`` first orders each file by (stream,
media start, media end, type, phase, data), for outputs where several plugins' events for one
window may come in another order without meaning anything.

    python benchmarks/compare_events.py BEFORE.jsonl AFTER.jsonl [--sort] [--rtol 1e-9]
        [--atol 0] [--ignore KEY ...] [--limit 50]

Prints one line per difference (event index, type, media span, field path, before -> after),
then a summary with the event counts by type on each side. Exit status 0 when they match, 1
when they differ, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PER_RUN_KEYS = frozenset({"id", "seq", "ts", "closed_mono_ns"})
PER_RUN_SUFFIXES = ("_mono_ns", "latency_ms", "arrival_ns")


def load_events(path: Path) -> list[dict[str, Any]]:
    """The event objects in a JSONL file, in order (non-event lines skipped)."""
    events: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
        if isinstance(obj, dict) and "type" in obj and "media" in obj:
            events.append(obj)
    return events


def strip_per_run(value: Any, ignore: frozenset[str]) -> Any:
    """`value` without the per-run keys, at any depth."""
    if isinstance(value, dict):
        return {
            k: strip_per_run(v, ignore)
            for k, v in value.items()
            if k not in PER_RUN_KEYS and k not in ignore and not k.endswith(PER_RUN_SUFFIXES)
        }
    if isinstance(value, list):
        return [strip_per_run(v, ignore) for v in value]
    return value


def differences(
    before: Any, after: Any, path: str, rtol: float, atol: float
) -> list[tuple[str, Any, Any]]:
    """(field path, before, after) for every leaf that differs."""
    both_numbers = all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in (before, after)
    )
    if both_numbers:
        if math.isclose(float(before), float(after), rel_tol=rtol, abs_tol=atol):
            return []
        return [(path, before, after)]
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[tuple[str, Any, Any]] = []
        for key in sorted(set(before) | set(after)):
            if key not in after:
                found.append((f"{path}.{key}", before[key], "<missing>"))
            elif key not in before:
                found.append((f"{path}.{key}", "<missing>", after[key]))
            else:
                found += differences(before[key], after[key], f"{path}.{key}", rtol, atol)
        return found
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [(f"{path}[len]", len(before), len(after))]
        found = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            found += differences(b, a, f"{path}[{i}]", rtol, atol)
        return found
    return [] if before == after else [(path, before, after)]


def sort_key(event: dict[str, Any]) -> tuple[Any, ...]:
    """Order by stream, media span, type, phase, then the data itself."""
    media = event.get("media", {})
    return (
        str(event.get("stream")),
        media.get("start_ns", 0),
        media.get("end_ns", 0),
        str(event.get("type")),
        str(event.get("phase")),
        json.dumps(event.get("data"), sort_keys=True),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--sort", action="store_true", help="order both files before comparing")
    parser.add_argument("--rtol", type=float, default=1e-9, help="relative tolerance for numbers")
    parser.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numbers")
    parser.add_argument("--ignore", action="append", default=[], help="another key to ignore")
    parser.add_argument("--limit", type=int, default=50, help="differences printed at most")
    args = parser.parse_args(argv)
    try:
        before, after = load_events(args.before), load_events(args.after)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"compare_events: {exc}", file=sys.stderr)
        return 2
    ignore = frozenset(args.ignore)
    before = [strip_per_run(e, ignore) for e in before]
    after = [strip_per_run(e, ignore) for e in after]
    if args.sort:
        before.sort(key=sort_key)
        after.sort(key=sort_key)
    found = 0
    for index in range(max(len(before), len(after))):
        b = before[index] if index < len(before) else None
        a = after[index] if index < len(after) else None
        event = b or a
        assert event is not None
        media = event.get("media", {})
        where = (
            f"#{index} {event.get('type')}{'/' + str(event['phase']) if event.get('phase') else ''}"
            f" [{media.get('start_ns', 0) / 1e9:.3f}-{media.get('end_ns', 0) / 1e9:.3f} s]"
        )
        diffs = (
            [("<event>", "<missing>" if b is None else "present", "<missing>" if a is None else "present")]
            if a is None or b is None
            else differences(b, a, "", args.rtol, args.atol)
        )  # fmt: skip
        for field, old, new in diffs:
            found += 1
            if found <= args.limit:
                print(f"{where} {field or '<root>'}: {old!r} -> {new!r}")
    if found > args.limit:
        print(f"... {found - args.limit} more differences")
    counts_b = Counter(str(e.get("type")) for e in before)
    counts_a = Counter(str(e.get("type")) for e in after)
    print(f"before: {len(before)} events {dict(sorted(counts_b.items()))}")
    print(f"after:  {len(after)} events {dict(sorted(counts_a.items()))}")
    print("SAME" if not found else f"DIFFERENT: {found} field differences")
    return 0 if not found else 1


if __name__ == "__main__":
    raise SystemExit(main())
