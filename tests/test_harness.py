"""The public test harness: plugins over media through the daemon's own pipeline."""

from __future__ import annotations

import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossmodald.bus.events import Envelope, Event
from crossmodald.harness import event_of, harness_config, run_plugins, run_plugins_sync
from crossmodald.media import NS_PER_S, StreamInfo, Window
from crossmodald.runtime.plugin import PluginConfig
from crossmodald.runtime.registry import PluginLoadError, PluginRegistry
from crossmodald.service.config import ConfigError

RATE = 8000
#: Sample values of the ramp are their index over this, exact in float32 and in 16-bit PCM.
SCALE = 32768


def _ramp(path: Path, seconds: int = 4) -> Path:
    """A mono 16-bit WAV whose sample i has the value i (so each window shows where it is)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(np.arange(RATE * seconds, dtype=np.int16).tobytes())
    return path


class ProbeConfig(PluginConfig):
    """The probe's table: nothing beyond the common keys."""


class Probe:
    """A real plugin that reports, per window, which sample it starts with and who shared its call."""

    name = "probe"
    # Plugin contract v2 (branch wip-plugins) asks for these; v1 ignores them.
    provides = None
    metrics = ()

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_audio else "has no audio"

    def open(self, stream: StreamInfo) -> ProbeSession:
        return ProbeSession()

    def infer(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        # v1 passes windows, v2 items carrying one.
        batch = [getattr(item, "window", item) for item in batch]
        streams = sorted({w.stream for w in batch})
        return [
            {
                "first": round(float(w.audio[0]) * SCALE),
                "first_valid": bool(w.audio_valid[0]),
                "batch_streams": streams,
            }
            for w in batch
        ]


class ProbeSession:
    def update(self, window: Window, result: dict[str, Any]) -> list[Event]:
        return [Event("probe", window.stream, window.start_ns, window.end_ns, result)]

    def close(self) -> list[Event]:
        return []

    def status(self) -> dict[str, Any]:
        return {}


class ProbeFactory:
    config_model = ProbeConfig
    provides = None

    @classmethod
    def create(cls, config: ProbeConfig, device: str) -> Probe:
        return Probe()


REGISTRY = PluginRegistry({"probe": ProbeFactory})
PROBE = [{"type": "probe", "device": "cpu"}]
WINDOW = {"length_s": 1.0, "hop_s": 0.5, "lateness_s": 0.0}


def _media(path: Path, name: str, shift_ms: float = 0.0) -> dict[str, Any]:
    return {
        "type": "media",
        "name": name,
        "url": str(path),
        "realtime": False,
        "audio_shift_ms": shift_ms,
    }


def _probes(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if e.type == "probe"]


def test_windows_grid_audio_shift_and_shared_batches(tmp_path: Path) -> None:
    ramp = _ramp(tmp_path / "ramp.wav")
    seen: list[Envelope] = []
    result = run_plugins_sync(
        [_media(ramp, "plain"), _media(ramp, "lead", 100.0), _media(ramp, "lag", -100.0)],
        PROBE,
        window=WINDOW,
        registry=REGISTRY,
        on_event=seen.append,
    )
    assert result.code == 0, result.failures()
    assert result.failures() == []
    assert list(result.envelopes) == seen  # on_event saw every envelope, in order
    plain = _probes(result.events("plain"))
    # The daemon's grid: 1 s windows every 0.5 s from 0; the last ones hold the end of the file.
    assert [e.start_ns for e in plain][:7] == [i * NS_PER_S // 2 for i in range(7)]
    assert plain[2].data["first"] == RATE  # the sample at 1.0 s
    # Audio leads by 100 ms: what plays at t is what the file has at t + 100 ms.
    lead = _probes(result.events("lead"))
    by_start = {e.start_ns: e for e in lead}
    assert by_start[NS_PER_S].data["first"] == RATE + RATE // 10
    # Audio lags by 100 ms: the first 100 ms of the first window are missing and flagged.
    lag = _probes(result.events("lag"))
    assert lag[0].start_ns == 0
    assert lag[0].data["first_valid"] is False
    assert {e.start_ns: e for e in lag}[NS_PER_S].data["first"] == RATE - RATE // 10
    # The plugin host batches the windows of the three streams into shared calls.
    assert any(len(e.data["batch_streams"]) > 1 for e in plain + lead + lag)
    # Every stream starts and ends, and the record saw what the source delivered.
    for name in ("plain", "lead", "lag"):
        types = [e.type for e in result.events(name)]
        assert types[0] == "stream.start"
        assert types[-1] == "stream.end"
        record = result.streams[name]
        assert record.info is not None
        assert record.info.sample_rate == RATE
        assert record.truncated is False
    assert result.streams["plain"].audio_span_ns == (0, 4 * NS_PER_S)
    assert result.streams["plain"].recorded_s() == pytest.approx(4.0)


def test_event_of_round_trips_the_envelope(tmp_path: Path) -> None:
    result = run_plugins_sync(
        [_media(_ramp(tmp_path / "r.wav", 2), "r")], PROBE, window=WINDOW, registry=REGISTRY
    )
    first = next(e for e in result.envelopes if e.type == "probe")
    event = event_of(first)
    body = first.as_dict()
    assert (event.type, event.stream) == ("probe", "r")
    assert event.start_ns == body["media"]["start_ns"]
    assert dict(event.data) == body["data"]


def test_max_seconds_ends_every_stream_early(tmp_path: Path) -> None:
    ramp = _ramp(tmp_path / "ramp.wav")
    result = run_plugins_sync(
        [_media(ramp, "a")], PROBE, window=WINDOW, registry=REGISTRY, max_seconds=1.5
    )
    record = result.streams["a"]
    assert record.truncated
    assert record.audio_span_ns is not None
    assert 1.5 * NS_PER_S <= record.audio_span_ns[1] < 2 * NS_PER_S
    assert max(e.start_ns for e in _probes(result.events("a"))) < 2 * NS_PER_S
    with pytest.raises(ValueError, match="max_seconds must be above 0"):
        run_plugins_sync([_media(ramp, "a")], PROBE, registry=REGISTRY, max_seconds=0)


def test_streams_at_once_bounds_the_open_sources(tmp_path: Path) -> None:
    """With ``streams_at_once`` 2, five sources (one of them missing: a failed open gives its
    place back) run two at a time, in order, and every one that exists runs to its end."""
    ramp = _ramp(tmp_path / "ramp.wav", seconds=2)
    names = ["a", "b", "gone", "c", "d"]
    sources = [_media(tmp_path / "missing.wav" if n == "gone" else ramp, n) for n in names]
    result = run_plugins_sync(sources, PROBE, window=WINDOW, registry=REGISTRY, streams_at_once=2)
    assert "no such file" in result.errors["gone"]
    running: set[str] = set()
    most = 0
    started = []
    for envelope in result.envelopes:
        if envelope.type == "stream.start":
            running.add(envelope.stream)
            started.append(envelope.stream)
            most = max(most, len(running))
        elif envelope.type == "stream.end":
            running.discard(envelope.stream)
    assert most == 2
    assert set(started[:2]) == {"a", "b"}  # the first two in the config's order
    assert sorted(started) == ["a", "b", "c", "d"]
    # Each of the four ran to its end: the same windows (the same 2 s file) for each.
    assert len({len(_probes(result.events(n))) for n in ("a", "b", "c", "d")}) == 1
    assert _probes(result.events("d"))
    assert all(len(e.data["batch_streams"]) <= 2 for e in _probes(result.events()))
    with pytest.raises(ValueError, match="streams_at_once must be at least 1"):
        run_plugins_sync(sources, PROBE, registry=REGISTRY, streams_at_once=0)


def test_failures_are_reported_not_raised(tmp_path: Path) -> None:
    ramp = _ramp(tmp_path / "ramp.wav")
    result = run_plugins_sync(
        [_media(tmp_path / "missing.wav", "gone"), _media(ramp, "ok")],
        PROBE,
        window=WINDOW,
        registry=REGISTRY,
    )
    assert result.code == 1
    assert result.streams["gone"].info is None
    assert "no such file" in result.errors["gone"]
    assert result.failures()[0].startswith("gone: ")
    assert _probes(result.events("ok"))  # the other stream still ran to its end


def test_bad_tables_raise_clear_errors(tmp_path: Path) -> None:
    ramp = _ramp(tmp_path / "ramp.wav")
    with pytest.raises(ConfigError) as unknown:
        run_plugins_sync([_media(ramp, "a")], [{"type": "nope"}], registry=REGISTRY)
    assert "unknown plugin 'nope'" in unknown.value.errors[0]
    with pytest.raises(ConfigError) as bad_source:
        harness_config([{"type": "media", "name": "bad name!", "url": "x"}], PROBE)
    assert bad_source.value.errors[0].startswith("sources.0.name")
    with pytest.raises(ConfigError, match="harness"):
        harness_config([_media(ramp, "a")], PROBE, window={"length_s": 1.0, "hop_s": 2.0})


class BrokenFactory:
    config_model = ProbeConfig
    provides = None

    @classmethod
    def create(cls, config: ProbeConfig, device: str) -> Probe:
        raise RuntimeError("weights missing")


async def test_runs_inside_a_running_loop_and_load_errors_raise(tmp_path: Path) -> None:
    ramp = _ramp(tmp_path / "ramp.wav", 2)
    result = await run_plugins([_media(ramp, "a")], PROBE, window=WINDOW, registry=REGISTRY)
    assert result.code == 0
    broken = PluginRegistry({"broken": BrokenFactory})
    with pytest.raises(PluginLoadError, match="weights missing"):
        await run_plugins([_media(ramp, "a")], [{"type": "broken"}], registry=broken)
