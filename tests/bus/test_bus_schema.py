"""event.schema.json: valid draft 2020-12, matches what the real bus emits, and the docs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from crossmodald.bus import Event, EventBus, Phase, event_schema
from crossmodald.media import ClockKind

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"

KNOWN: list[Event] = [
    Event(
        "sync.offset",
        "testcard",
        0,
        2_000_000_000,
        {
            "audio_lead_ms": 40.0,
            "confidence": 0.98,
            "method": "flash_beep",
            "smoothed_audio_lead_ms": 39.8,
            "drift_ppm": None,
        },
        clock=ClockKind.SYNTHETIC,
        closed_ns=123,
    ),
    Event("sync.offset", "cam1", 0, 1, {"audio_lead_ms": None, "confidence": 0, "method": "x"}),
    Event(
        "sync.alarm",
        "cam1",
        0,
        1,
        {"audio_lead_ms": -120.5, "limit_ms": 60, "direction": "audio_lags"},
        phase=Phase.START,
        clock=ClockKind.PTS,
    ),
    Event(
        "stream.start",
        "cam1",
        0,
        0,
        {
            "kind": "pattern",
            "has_video": True,
            "has_audio": True,
            "frame_rate": 30.0,
            "sample_rate": 48000,
            "clock": "synthetic",
        },
    ),
    Event("stream.end", "cam1", 0, 0, {"reason": "eof"}),
    Event(
        "stream.fault",
        "cam1",
        0,
        1,
        {"kind": "gap", "message": "no audio"},
        phase=Phase.END,
        clock=ClockKind.RTCP,
    ),
    Event("plugin.error", "", 0, 0, {"plugin": "asd", "message": "boom", "count": 1}),
    Event("face.speaking", "cam1", 0, 1, {"anything": [1, 2]}, phase=Phase.UPDATE),
    Event(
        "sink.fault",
        "",
        0,
        0,
        {
            "sink": "nats:nats://***@host:4222/crossmodald.d1",
            "kind": "dropped",
            "message": "3 events dropped",
            "dropped": 3,
            "unconfirmed": 1,
            "first_seq": 10,
            "last_seq": 12,
            "down_s": 4.5,
        },
    ),
]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = event_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def _published() -> list[dict[str, Any]]:
    bus = EventBus(replay_size=100, subscriber_queue=100, slow_subscriber_s=1.0)
    return [json.loads(bus.publish(event).json) for event in KNOWN]


def test_real_bus_events_validate(validator: jsonschema.Draft202012Validator) -> None:
    for body in _published():
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (body["type"], errors)


@pytest.mark.parametrize(
    ("index", "path", "value"),
    [
        (0, ("data", "confidence"), 1.5),
        (0, ("data", "method"), 3),
        (2, ("data", "direction"), "sideways"),
        (3, ("data", "has_video"), "yes"),
        (6, ("data", "count"), 0),
        (0, ("seq",), 0),
        (0, ("schema",), 2),
        (0, ("phase",), "middle"),
        (0, ("media", "clock"), "sundial"),
        (0, ("ts",), "2024-05-01 12:00:01"),
        (0, ("type",), "sync offset"),
    ],
)
def test_schema_rejects_bad_events(
    validator: jsonschema.Draft202012Validator, index: int, path: tuple[str, ...], value: object
) -> None:
    body = copy.deepcopy(_published()[index])
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert not validator.is_valid(body)


def test_missing_required_data_field_is_rejected(
    validator: jsonschema.Draft202012Validator,
) -> None:
    body = _published()[4]
    del body["data"]["reason"]
    assert not validator.is_valid(body)


def test_clock_enum_matches_clock_kind() -> None:
    schema = event_schema()
    assert schema["properties"]["media"]["properties"]["clock"]["enum"] == [
        kind.value for kind in ClockKind
    ]
    assert schema["$defs"]["stream.start"]["properties"]["clock"]["enum"] == [
        kind.value for kind in ClockKind
    ]


def test_every_documented_type_has_a_schema_entry_and_back() -> None:
    documented = set(re.findall(r"^### `([A-Za-z0-9_.-]+)`", DOCS.read_text("utf-8"), re.M))
    schema = event_schema()
    conditioned = {rule["if"]["properties"]["type"]["const"] for rule in schema["allOf"]}
    assert documented, "docs/events.md documents no types"
    assert documented == set(schema["$defs"]) == conditioned
