"""The built-in plugins' real events match event.schema.json and docs/events.md.

One in-process daemon run (about 5 s on two cores) puts a real talking-head clip and a short test
pattern through ``speech``, ``faces``, ``speaker`` (weight-free) and ``avsync``. Every event it
publishes must validate against the schema, declare no data field the schema does not name, and
have a ``### `type` `` section in docs/events.md whose text names each of its data fields (and,
for ``sync.offset``, its ``method``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator as Validator

from crossmodald.bus import Envelope, event_schema
from crossmodald.runtime.host import Overload
from crossmodald.service.config import DaemonConfig
from crossmodald.service.daemon import Daemon

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "events.md"
MEDIA = REPO / ".." / "shared" / "media"
CLIP = MEDIA / "talkinghead_hdtf_aoc_25fps.mp4"


def _run_daemon() -> list[dict[str, Any]]:
    """Every event the daemon publishes for the clip and a 4 s pattern, parsed from the wire."""
    config = DaemonConfig.model_validate(
        {
            "sources": [
                {"type": "media", "name": "aoc", "url": str(CLIP), "realtime": False},
                {
                    "type": "pattern",
                    "name": "testcard",
                    "audio_lead_ms": 40,
                    "duration_s": 4,
                    "width": 160,
                    "height": 120,
                    "realtime": False,
                },
            ],
            # The speaker plugin without weights: its weight-free fallback, as shipped.
            "plugins": [
                {"type": "speech"},
                {"type": "faces"},
                {"type": "speaker"},
                {"type": "avsync"},
            ],
            "api": {"enabled": False},
        }
    )
    published: list[str] = []

    def collect(envelope: Envelope) -> None:
        published.append(envelope.json)

    async def main() -> None:
        daemon = Daemon(config, overload=Overload.BLOCK, serve_api=False, listeners=(collect,))
        await daemon.load_plugins()
        await asyncio.wait_for(daemon.run(asyncio.Event(), exit_when_sources_end=True), 120)

    asyncio.run(main())
    return [json.loads(line) for line in published]


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    if not CLIP.is_file():
        pytest.skip(f"real media not available: {CLIP} is absent")
    return _run_daemon()


@pytest.fixture(scope="module")
def validator() -> Validator:
    schema = event_schema()
    Validator.check_schema(schema)
    return Validator(schema, format_checker=Validator.FORMAT_CHECKER)


def _closed(node: Any) -> Iterator[dict[str, Any]]:
    """Every object schema below ``node`` that lists its properties."""
    if isinstance(node, dict):
        if "properties" in node:
            yield node
        for value in node.values():
            yield from _closed(value)
    elif isinstance(node, list):
        for value in node:
            yield from _closed(value)


@pytest.fixture(scope="module")
def strict_validator() -> Validator:
    """The schema with every data object closed: a field it does not name is an error.

    The published schema leaves ``data`` open so that consumers with an older copy accept new
    optional fields; the built-in plugins must still name every field they send in it.
    """
    schema = copy.deepcopy(event_schema())
    for node in _closed(schema["$defs"]):
        node.setdefault("additionalProperties", False)
    return Validator(schema, format_checker=Validator.FORMAT_CHECKER)


def _errors(validator: Validator, event: dict[str, Any]) -> list[str]:
    return [
        f"{event['type']}/{event['phase']}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(event)
    ]


def _sections(text: str) -> dict[str, str]:
    """docs/events.md's ``### `type` `` sections: type -> the section's text."""
    heads = list(re.finditer(r"^### `([A-Za-z0-9_.-]+)`\n", text, re.M))
    out: dict[str, str] = {}
    for head, after in zip(heads, [*heads[1:], None], strict=True):
        end = after.start() if after is not None else len(text)
        out[head.group(1)] = text[head.end() : end].split("\n## ", 1)[0]
    return out


def _undocumented(events: list[dict[str, Any]], text: str) -> list[str]:
    """What the events carry that the docs do not name: types, data fields, offset methods."""
    sections = _sections(text)
    missing: set[str] = set()
    for event in events:
        section = sections.get(event["type"])
        if section is None:
            missing.add(f"type {event['type']}")
            continue
        for key in event["data"]:
            if f"`{key}`" not in section:
                missing.add(f"{event['type']}.data.{key}")
        if event["type"] == "sync.offset" and f"`{event['data']['method']}`" not in section:
            missing.add(f"sync.offset method {event['data']['method']}")
    return sorted(missing)


def _first(events: list[dict[str, Any]], kind: str, phase: str | None) -> dict[str, Any]:
    found = next(e for e in events if e["type"] == kind and e["phase"] == phase)
    return copy.deepcopy(found)


def test_the_run_publishes_every_builtin_type(events: list[dict[str, Any]]) -> None:
    seen = {(e["type"], e["phase"]) for e in events}
    expected = {
        ("speech", "start"),
        ("speech", "update"),
        ("speech", "end"),
        ("face", "start"),
        ("face", "update"),
        ("face", "end"),
        ("speaker", "start"),
        ("speaker", "end"),
        ("dialogue.turn", None),
        ("sync.offset", None),
        ("stream.start", None),
        ("stream.end", None),
    }
    assert expected <= seen, f"not published: {sorted(expected - seen, key=str)}"
    methods = {e["data"]["method"] for e in events if e["type"] == "sync.offset"}
    assert {"flash", "motion", "mouth_motion"} <= methods, methods


def test_every_published_event_validates(
    events: list[dict[str, Any]], validator: Validator
) -> None:
    errors = [error for event in events for error in _errors(validator, event)]
    assert not errors, errors[:10]


def test_no_published_data_field_is_missing_from_the_schema(
    events: list[dict[str, Any]], strict_validator: Validator
) -> None:
    errors = [error for event in events for error in _errors(strict_validator, event)]
    assert not errors, errors[:10]


def test_every_published_type_field_and_method_is_documented(
    events: list[dict[str, Any]],
) -> None:
    assert _undocumented(events, DOCS.read_text("utf-8")) == []


@pytest.mark.parametrize(
    ("kind", "phase", "change"),
    [
        ("speech", "end", lambda d: d.update(probability=1.5)),
        ("speech", "end", lambda d: d.pop("duration_ms")),
        ("speech", "start", lambda d: d.pop("probability")),
        ("face", "update", lambda d: d.update(box=[1.0, 2.0, 3.0])),
        ("face", "update", lambda d: d.update(track_id=0)),
        ("face", "start", lambda d: d.pop("mouth")),
        ("speaker", "start", lambda d: d.update(score=-0.1)),
        ("speaker", "end", lambda d: d.update(method="guess")),
        ("speaker", "end", lambda d: d.update(box=[1.0, 2.0, -3.0, 4.0])),
        ("sync.offset", None, lambda d: d.update(track_id="one")),
        ("sync.offset", None, lambda d: d.update(reason=3)),
    ],
)
def test_the_schema_rejects_a_broken_plugin_event(
    events: list[dict[str, Any]],
    validator: Validator,
    kind: str,
    phase: str | None,
    change: Any,
) -> None:
    event = _first(events, kind, phase)
    assert validator.is_valid(event)
    change(event["data"])
    assert not validator.is_valid(event), event


def test_the_schema_rejects_a_phase_the_type_does_not_have(
    events: list[dict[str, Any]], validator: Validator
) -> None:
    event = _first(events, "speaker", "start")
    event["phase"] = "update"
    assert not validator.is_valid(event)
    event = _first(events, "face", "update")
    event["phase"] = None
    assert not validator.is_valid(event)


def test_an_undeclared_field_is_caught(
    events: list[dict[str, Any]], strict_validator: Validator
) -> None:
    for kind, phase in [("speech", "end"), ("face", "start"), ("speaker", "end")]:
        event = _first(events, kind, phase)
        event["data"]["confidence_pct"] = 50
        assert any("confidence_pct" in error for error in _errors(strict_validator, event))
    offset = next(
        copy.deepcopy(e) for e in events if e["type"] == "sync.offset" and e["data"].get("pairs")
    )
    offset["data"]["pairs"][0]["jitter_ms"] = 1.0
    assert any("jitter_ms" in error for error in _errors(strict_validator, offset))


def test_an_undocumented_type_field_or_method_is_caught(events: list[dict[str, Any]]) -> None:
    text = DOCS.read_text("utf-8")
    speaker = _first(events, "speaker", "end")
    extra = _first(events, "speaker", "end")
    extra["data"]["pitch_hz"] = 120.0
    renamed = _first(events, "face", "start")
    renamed["type"] = "face.box"
    offset = _first(events, "sync.offset", None)
    offset["data"]["method"] = "syncnet"
    assert _undocumented([speaker], text) == []
    assert _undocumented([extra, renamed, offset], text) == [
        "speaker.data.pitch_hz",
        "sync.offset method syncnet",
        "type face.box",
    ]
    cut = text.replace("### `speech`", "### speech (not a heading the check reads)")
    assert _undocumented([_first(events, "speech", "start")], cut) == ["type speech"]
