"""Fuzzing config values: check-config refuses a config clearly, or the daemon really runs it.

Hypothesis draws the numbers of a config (a pattern source, ``[window]``, an ``avsync`` plugin,
``[service]`` and ``[api]``): plausible values around each key's range, and for up to two keys
hostile ones (``inf``, ``nan``, zero, negative, tiny, huge, wrong types), writes them as a TOML file, and runs ``crossmodald
check-config`` on it in-process. Then, per example, exactly one of:

- check-config exits 2 and every line it prints is one clear line naming the file (no
  traceback: nothing but a ConfigError may leave validation);
- check-config says OK, and the daemon runs that config: it starts in-process (the API on a
  loopback port, the plugin loaded), the stream opens and gets its windower, media flows, and
  it stops cleanly; the stream did not fail and nothing was logged at ERROR.

A fixed seed and a bounded number of examples (200) keep the run's time fixed (about 30 s on the
project machine) and every failure replayable.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossmodald.cli import main as cli_main
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.config import load_config
from crossmodald.service.daemon import Daemon

EXAMPLES = 200
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a run's time is bounded below, by hand
    derandomize=True,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: How long an accepted config may take to start its stream, run a little and stop.
MAX_RUN_S = 20.0

#: What a careless operator or an attacker writes: non-finite, zero, negative, tiny, huge, wrong
#: types (drawn for one or two keys of a config whose other keys are plausible or left out).
_HOSTILE = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, 0, -1, 1e-12, 1e-5, 1e308, 2**70]),
    st.sampled_from([math.inf, math.nan, -(2**70), True, "x", "30000/1001", "1/0", ""]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)


def _in(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=low, max_value=high)


# Plausible values: the key's documented range, some a little beyond it; the picture stays
# small (the run renders it in real time). Rules between keys (flash vs period, hop vs length,
# the window vs the frame rate, avsync's lag vs its rate) refuse many combinations by themselves.
PLAUSIBLE: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "sources": {
        "width": st.sampled_from([16, 32, 48]),
        "height": st.sampled_from([16, 32, 48]),
        "fps": st.one_of(_in(1, 240), st.sampled_from(["30000/1001", "25", 29.97, 0.5, 241])),
        "sample_rate": st.sampled_from([8000, 16000, 44100, 48000, 192000, 7999]),
        "period_s": _in(0.1, 60),
        "flash_ms": _in(0, 1000),
        "beep_ms": _in(0, 1000),
        "tone_hz": _in(20, 20000),
        "audio_lead_ms": _in(-5000, 5000),
        "drift_ppm": _in(-10000, 10000),
        "jitter_ms": _in(0, 300),
        "drop_frames": _in(0, 0.99),
        "lose_audio": _in(0, 0.99),
        "audio_packet_ms": _in(0.5, 1000),
        "duration_s": _in(0, 5),
        "seed": st.integers(0, 2**63),
    },
    "window": {
        "length_s": _in(0.005, 3),
        "hop_s": _in(0.005, 3),
        "lateness_s": _in(0, 30),
        "max_gap_s": _in(0, 60),
    },
    "plugins": {
        "max_lag_ms": _in(0, 2000),
        "min_confidence": _in(0, 1),
        "motion_rate_hz": _in(20, 1000),
        "smoothing_windows": st.integers(1, 1000),
        "alarm_audio_lead_ms": _in(0, 10000),
    },
    "service": {
        "stop_ingest_s": _in(0, 5),
        "status_interval_s": _in(0, 3600),
    },
    "api": {
        "slow_subscriber_s": _in(0, 3600),
        "replay_size": st.integers(0, 1_000_000),
        "subscriber_queue": st.integers(1, 1_000_000),
    },
}
#: Each table's fixed keys: one pattern stream, avsync on the CPU, the API on a loopback port.
FIXED: dict[str, dict[str, Any]] = {
    "sources": {"type": "pattern", "name": "fuzz", "width": 32, "height": 32},
    "window": {},
    "plugins": {"type": "avsync", "device": "cpu"},
    "service": {},
    "api": {"host": "127.0.0.1", "port": 0},
}
HEADERS = {"sources": "[[sources]]", "plugins": "[[plugins]]"}
KEYS = [(table, key) for table, keys in PLAUSIBLE.items() for key in keys]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A config file: plausible values for some keys, hostile ones for up to two."""
    values: dict[str, dict[str, Any]] = {}
    for table, keys in PLAUSIBLE.items():
        # Most keys left out (their defaults), so that one hostile value decides the outcome.
        drawn = draw(st.fixed_dictionaries({k: st.none() | st.none() | v for k, v in keys.items()}))
        values[table] = {**FIXED[table], **{k: v for k, v in drawn.items() if v is not None}}
    for table, key in draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True)):
        values[table][key] = draw(_HOSTILE)
    return "\n".join(
        HEADERS.get(table, f"[{table}]")
        + "\n"
        + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
        for table, keys in values.items()
    )


def check_config(path: Path) -> tuple[int, list[str]]:
    """``crossmodald check-config PATH`` in-process: its exit code and its stderr lines."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["check-config", str(path)])
    return code, err.getvalue().splitlines()


async def run_briefly(path: Path, registry: PluginRegistry) -> tuple[str, str | None, int]:
    """Start the daemon on ``path`` as ``crossmodald run`` does, let its stream open and media
    flow, stop it; returns the stream's state, its error and the daemon's exit code."""
    daemon = Daemon(load_config(path), registry=registry, config_source=str(path))
    await daemon.load_plugins()
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(MAX_RUN_S / 2):
            # Opened, with its windower built from [window] (or ended, or failed).
            while (state := daemon.stream_states.get("fuzz")) is None or state.state == "starting":
                assert not task.done(), "the daemon ended on its own"
                await asyncio.sleep(0.01)
        # Then media flows through it for a moment (or not at all, with drop/loss near 1).
        for _ in range(50):
            if state.state != "running" or state.video_frames + state.audio_chunks > 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not task.done(), "the daemon ended on its own"
    finally:
        stop.set()
        async with asyncio.timeout(MAX_RUN_S / 2):
            code = await task
    state = daemon.stream_states["fuzz"]
    return state.state, state.error, code


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover()


@pytest.fixture(scope="module")
def tally() -> Iterator[dict[str, int]]:
    counts = {"refused": 0, "ran": 0}
    yield counts
    # The run's size, for the record (pytest -s shows it).
    print(f"\nconfig fuzz: {counts['refused']} refused, {counts['ran']} ran")


@FUZZ
@given(text=configs())
def test_fuzz_config_values_are_refused_clearly_or_run(
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
    registry: PluginRegistry,
    tally: dict[str, int],
    text: str,
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "crossmodald.toml"
    path.write_text(text)
    code, lines = check_config(path)
    if code != 0:
        assert code == 2  # an invalid config
        assert lines, "check-config refused without saying why"
        for line in lines:
            assert line.startswith(f"{path}: "), line
            assert "Traceback" not in line
            assert len(line) < 1000, line
        tally["refused"] += 1
        return
    caplog.clear()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        state, error, exit_code = asyncio.run(run_briefly(path, registry))
    assert time.monotonic() - started < MAX_RUN_S
    assert state in ("running", "ended"), (error, text)
    assert exit_code == 0, (error, text)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], (text, [r.getMessage() for r in errors])
    tally["ran"] += 1


def test_the_fuzz_reaches_both_outcomes(tally: dict[str, int]) -> None:
    # Runs after the fuzz test in this module: a strategy that only ever made invalid (or only
    # valid) configs would test half of the property.
    if not tally["refused"] + tally["ran"]:
        pytest.skip("the fuzz test did not run in this session")
    assert tally["refused"] >= EXAMPLES // 10, tally
    assert tally["ran"] >= EXAMPLES // 10, tally
