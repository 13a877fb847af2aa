"""One validation: what check-config, POST /v1/sources and the CLI accept is what the daemon runs.

Issue 16's cases, each as it was reported: a config check-config passed that then killed the
daemon at start or on SIGHUP (windows shorter than an audio sample, ``inf``/``nan``), an empty
file that a reload applied (every stream stopped), a missing media file answered 201, and the
command line printing tracebacks or an error twice. Real daemons (in-process and as a process),
real pattern and media sources, loopback only.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import typing
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import annotated_types
import pytest
from pydantic import BaseModel, ValidationError

from crossmodald.bus.bus import EventFilter
from crossmodald.bus.sinks import SinkRegistry
from crossmodald.config_base import ConfigModel
from crossmodald.ingest.base import Source
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.ingest.registry import SourceConfigBase, SourceRegistry
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.config import (
    ConfigError,
    PatternSourceConfig,
    load_config,
    load_config_text,
)
from crossmodald.service.daemon import Daemon, default_source_factory

NO_PLUGINS = PluginRegistry({})


def toml_value(value: Any) -> str:
    """A scalar as TOML writes it (``inf``/``nan`` included, which JSON spells otherwise)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return json.dumps(value)


def pattern(name: str, **extra: Any) -> str:
    fields: dict[str, Any] = {"type": "pattern", "name": name, "width": 32, "height": 32}
    fields |= {"fps": 10, "sample_rate": 8000, "period_s": 0.5, "flash_ms": 50, "beep_ms": 50}
    fields |= extra
    return "[[sources]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())


SOURCES = pattern("a") + pattern("b")
WINDOW = "[window]\nlength_s = 0.4\nhop_s = 0.2\nlateness_s = 0.05\n"
API = "[api]\nport = 0\n"


@pytest.fixture(scope="module")
def one_fps_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 fps file: its frame rate is known only once it opens, and a 0.4 s window is shorter
    than one of its frames."""
    path = tmp_path_factory.mktemp("media") / "one_fps.mkv"
    write_pattern_file(
        PatternSourceConfig(type="pattern", name="f", width=32, height=32, fps=1),
        path,
        duration_s=4.0,
    )
    return path


# -- every model, every number ------------------------------------------------------------------


def _config_models() -> list[type[BaseModel]]:
    # Every built-in table: load each installed type's model, then walk ConfigModel's family.
    for types in (SourceRegistry.discover(), SinkRegistry.discover(), PluginRegistry.discover()):
        for name in types.names():
            types.config_model(name)

    def family(cls: type[BaseModel]) -> Iterator[type[BaseModel]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from family(sub)

    built_in = ("crossmodald.", "crossmodald_plugins.")
    models = {m for m in family(ConfigModel) if m.__module__.startswith(built_in)}
    return sorted(models, key=lambda m: f"{m.__module__}.{m.__name__}")


def _float_fields(model: type[BaseModel]) -> list[str]:
    return [
        name
        for name, field in model.model_fields.items()
        if float in (typing.get_args(field.annotation) or (field.annotation,))
    ]


def test_the_walk_finds_the_models_of_every_part() -> None:
    names = {m.__name__ for m in _config_models()}
    # Sources, sinks, plugins, the API, WebRTC and the daemon's own tables.
    expected = {"PatternSourceConfig", "MediaSourceConfig", "CameraConfig", "JsonlSinkConfig"}
    expected |= {"AvSyncConfig", "SpeechConfig", "ApiConfig", "WebRtcConfig", "WindowConfig"}
    assert expected <= names
    assert sum(len(_float_fields(m)) for m in _config_models()) > 40


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, "inf", "nan"])
def test_every_float_of_every_config_model_refuses_non_finite(bad: object) -> None:
    accepted: list[str] = []
    for model in _config_models():
        for name in _float_fields(model):
            try:
                model.model_validate({name: bad})
            except ValidationError as exc:
                if any(
                    e["loc"][:1] == (name,) and e["type"] == "finite_number" for e in exc.errors()
                ):
                    continue
            accepted.append(f"{model.__name__}.{name}")
    assert accepted == []


def test_every_float_of_every_config_model_is_bounded() -> None:
    # A finite but huge value (1e308 ms) overflowed where it became nanoseconds.
    unbounded = [
        f"{model.__name__}.{name}"
        for model in _config_models()
        for name in _float_fields(model)
        if not (
            any(
                isinstance(m, annotated_types.Ge | annotated_types.Gt)
                for m in model.model_fields[name].metadata
            )
            and any(
                isinstance(m, annotated_types.Le | annotated_types.Lt)
                for m in model.model_fields[name].metadata
            )
        )
    ]
    assert unbounded == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (pattern("p", flash_ms=math.inf), "sources.0.flash_ms: Input should be a finite number"),
        (pattern("p", flash_ms=1e308), "sources.0.flash_ms: Input should be less than or equal"),
        ('[[sources]]\ntype = "pattern"\nname = "p"\nfps = inf\n', "sources.0.fps: expected a finite frame rate, got inf"),
        ('[[sources]]\ntype = "pattern"\nname = "p"\nfps = nan\n', "sources.0.fps: expected a finite frame rate"),
        (pattern("p", seed=-1), "sources.0.seed: Input should be greater than or equal to 0"),
        (pattern("p", flash_ms=600), "sources.0: flash_ms must be shorter than period_s (0.5 s), got 600 ms"),
        (pattern("p", duration_s=1e300), "sources.0.duration_s: Input should be less than or equal"),
        ('[[sources]]\ntype = "media"\nname = "m"\nurl = "x.mp4"\naudio_shift_ms = inf\n', "sources.0.audio_shift_ms: Input should be a finite number"),
        ("[window]\nlength_s = 0.00001\nhop_s = 0.00001\n", "window.hop_s: Input should be greater than or equal to 0.01"),
        ("[window]\nmax_gap_s = 1e9\n", "window.max_gap_s: Input should be less than or equal to 60"),
        ("[service]\nstop_ingest_s = nan\n", "service.stop_ingest_s: Input should be a finite number"),
        ("[api]\nslow_subscriber_s = inf\n", "api.slow_subscriber_s: Input should be a finite number"),
        ("[api]\nport = " + "9" * 5000 + "\n", "not valid TOML: Exceeds the limit"),
        ("", "no settings (the file is empty or only comments)"),
        ("# only a comment\n\n", "no settings"),
    ],
)  # fmt: skip
def test_what_the_daemon_cannot_run_is_a_config_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "t.toml")
    assert any(line.startswith(expected) for line in info.value.errors), info.value.errors
    assert all("\n" not in line for line in info.value.errors)


def test_windows_are_checked_against_the_rates_a_source_fixes() -> None:
    # 20 ms is a window of 0.6 frames at 30 fps.
    text = pattern("cam", fps=30) + "[window]\nlength_s = 0.02\nhop_s = 0.02\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "t.toml")
    assert info.value.errors == [
        "window: length_s must span at least one video frame (0.03333 s at 30 fps), "
        "got 0.02 s (source 'cam')"
    ]
    device = (
        '[[sources]]\ntype = "device"\nname = "mic"\n[sources.microphone]\nsample_rate = 8000\n'
    )
    load_config_text(device + "[window]\nlength_s = 0.02\nhop_s = 0.01\n")  # 80 samples a hop
    load_config_text(pattern("cam", fps=50) + "[window]\nlength_s = 0.02\nhop_s = 0.02\n")


def test_nothing_at_all_is_said_on_purpose() -> None:
    assert load_config_text("sources = []\n").sources == []


# -- the command line ---------------------------------------------------------------------------


def crossmodald(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossmodald", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_check_config_refuses_what_would_kill_the_daemon(tmp_path: Path) -> None:
    cases = {
        "window.toml": pattern("p") + "[window]\nlength_s = 0.00001\nhop_s = 0.00001\n",
        "fps.toml": '[[sources]]\ntype = "pattern"\nname = "p"\nfps = inf\n',
        "flash.toml": pattern("p", flash_ms=math.inf),
        "empty.toml": "",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = crossmodald("check-config", str(path))
        assert result.returncode == 2, (name, result)  # an invalid config, as for `run`
        lines = result.stderr.splitlines()
        assert lines, name
        assert "Traceback" not in result.stderr, result.stderr
        assert all(line.startswith(f"{path}: ") for line in lines), result.stderr
        assert len(lines) <= 2, result.stderr  # one line per problem


def test_analyze_says_a_bad_number_in_one_line_and_an_error_once(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mkv"
    write_pattern_file(
        PatternSourceConfig(type="pattern", name="f", width=32, height=32), clip, duration_s=1.0
    )
    result = crossmodald("analyze", str(clip), "--audio-shift-ms", "inf")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "crossmodald analyze: error: argument --audio-shift-ms: expected a finite number, "
        "got 'inf' (see crossmodald analyze --help)"
    ]
    result = crossmodald("analyze", str(clip), "--audio-shift-ms", "1e12")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "arguments: sources.0.audio_shift_ms: Input should be less than or equal to 60000 "
        "(got 1000000000000.0)"
    ]
    result = crossmodald("analyze", str(tmp_path / "missing.mp4"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"crossmodald: error: {tmp_path / 'missing.mp4'}: no such file"
    ]
    for args in (["pattern", str(tmp_path / "x.mp4"), "--duration", "inf"],
                 ["eval", "avsync", str(clip), "--task", "lipsync", "--shifts", "nan"],
                 ["calibrate", "testcard", "--seconds", "1e300"]):  # fmt: skip
        result = crossmodald(*args)
        assert result.returncode == 2, result
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


# -- a running daemon ---------------------------------------------------------------------------


class Running:
    def __init__(self, daemon: Daemon, path: Path, task: asyncio.Task[int]) -> None:
        self.daemon = daemon
        self.path = path
        self.task = task
        self.events: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.api_port}"

    async def wait(self, pred: Any, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    def state(self, name: str) -> str | None:
        state = self.daemon.stream_states.get(name)
        return state.state if state is not None else None


@asynccontextmanager
async def running(tmp_path: Path, text: str, source_factory: Any = None) -> AsyncIterator[Running]:
    path = tmp_path / "crossmodald.toml"
    path.write_text(text)
    daemon = Daemon(
        load_config(path),
        registry=NO_PLUGINS,
        config_source=str(path),
        config_path=path,
        source_factory=source_factory,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    async with asyncio.timeout(10):
        while not daemon.ready():
            assert not task.done(), task
            await asyncio.sleep(0.01)
    run = Running(daemon, path, task)
    sub = daemon.bus.subscribe(EventFilter(), 0, name="test")

    async def collect() -> None:
        async for envelope in sub:
            run.events.append(envelope.as_dict())

    collector = asyncio.create_task(collect())
    try:
        yield run
        assert not task.done(), "the daemon ended on its own"
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
        await asyncio.wait([collector], timeout=5)


def faults(run: Running, stream: str) -> list[str]:
    return [
        e["data"]["message"]
        for e in run.events
        if e["type"] == "stream.fault" and e["stream"] == stream
    ]


async def test_a_stream_that_fails_at_start_fails_alone(tmp_path: Path, one_fps_clip: Path) -> None:
    # check-config cannot know a file's frame rate: the stream fails when it opens, alone.
    media = f'[[sources]]\ntype = "media"\nname = "slow"\nurl = "{one_fps_clip}"\nloop = true\n'
    boom = '[[sources]]\ntype = "pattern"\nname = "boom"\n'
    build = default_source_factory()

    def factory(config: SourceConfigBase) -> Source:
        if config.name == "boom":  # a bug in a source type: not a config error
            raise ZeroDivisionError("division by zero in a third-party source")
        return build(config)

    text = pattern("good") + media + boom + WINDOW + API
    async with running(tmp_path, text, factory) as run:
        await run.wait(lambda: run.state("slow") == "failed" and run.state("boom") == "failed")
        await run.wait(lambda: faults(run, "slow") and faults(run, "boom"))
        slow = run.daemon.stream_states["slow"]
        assert slow.error == (
            "[window] length_s must span at least one video frame (1 s at 1 fps), got 0.4 s"
        )
        assert faults(run, "slow") == [slow.error]
        assert faults(run, "boom") == [
            "ZeroDivisionError: division by zero in a third-party source"
        ]
        assert run.state("good") == "running"
        # A reload that restarts every running stream (a new [window]) and adds another such
        # file: that one fails alone too, and the daemon goes on.
        slow2 = media.replace('name = "slow"', 'name = "slow2"')
        run.path.write_text(text.replace("hop_s = 0.2", "hop_s = 0.1") + slow2)
        result = await run.daemon.reload_from_file()
        assert result.ok, result.errors
        await run.wait(lambda: run.state("slow2") == "failed" and faults(run, "slow2"))
        await run.wait(lambda: run.state("good") == "running")
        async with aiohttp.ClientSession() as http, http.get(f"{run.url}/v1/streams") as response:
            streams = {s["name"]: s for s in (await response.json())["streams"]}
        assert streams["slow"]["state"] == "failed"
        assert streams["good"]["state"] == "running"


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda p: p.write_text(""), "no settings (the file is empty or only comments)"),
        (lambda p: p.write_text("# being rewritten\n"), "no settings"),
        (lambda p: p.write_bytes(b"\xff\xfe[api]\n"), "not UTF-8 text"),
        (lambda p: (p.unlink(), p.mkdir()), "cannot read: Is a directory"),
        (lambda p: p.write_text(API), "sources: the new config has no [[sources]]"),
        (lambda p: p.write_text(SOURCES + WINDOW.replace("0.2", "0.00001") + API), "window.hop_s"),
    ],
    ids=["empty", "comments", "not-utf8", "unreadable", "no-sources", "tiny-window"],
)
async def test_a_reload_cannot_take_everything_down_by_accident(
    tmp_path: Path, write: Any, expected: str
) -> None:
    async with running(tmp_path, SOURCES + WINDOW + API) as run:
        await run.wait(lambda: run.state("a") == run.state("b") == "running")
        before = run.daemon.config
        write(run.path)
        result = await run.daemon.reload_from_file()
        assert not result.ok
        assert result.errors[0].startswith(expected), result.errors
        assert run.daemon.config is before
        await asyncio.sleep(0.2)
        assert run.state("a") == run.state("b") == "running"
        if run.path.is_dir():
            run.path.rmdir()


async def test_removing_every_source_is_said_explicitly(tmp_path: Path) -> None:
    async with running(tmp_path, pattern("a") + pattern("b") + WINDOW + API) as run:
        await run.wait(lambda: run.state("a") == run.state("b") == "running")
        result = await run.daemon.reload_from_file()  # unchanged: fine
        assert result.ok
        run.path.write_text(API)
        result = await run.daemon.reload_from_file()
        assert not result.ok
        assert result.errors == (
            "sources: the new config has no [[sources]] and would stop every configured stream "
            "('a', 'b'); to remove them all, say so: sources = []",
        )
        run.path.write_text("sources = []\n" + API)
        result = await run.daemon.reload_from_file()
        assert result.ok, result.errors
        assert "a" not in run.daemon.stream_states
        assert "b" not in run.daemon.stream_states
        # With nothing configured, a config without the key is fine again.
        run.path.write_text(API)
        assert (await run.daemon.reload_from_file()).ok


async def test_post_sources_refuses_what_cannot_run(tmp_path: Path) -> None:
    async with (
        running(tmp_path, pattern("cfg") + WINDOW + API) as run,
        aiohttp.ClientSession() as http,
    ):
        post = f"{run.url}/v1/sources"
        # A file that is not there: 422 at once, no stream started (was 201, then "failed").
        missing = {"type": "media", "name": "m", "url": str(tmp_path / "missing.mp4")}
        async with http.post(post, json=missing) as response:
            assert response.status == 422
            body = await response.json()
        assert body["error"] == f"source 'm': {tmp_path / 'missing.mp4'}: no such file"
        assert "m" not in run.daemon.stream_states
        not_finite = "body is not JSON: {} is not a JSON number (numbers must be finite)"
        for extra, expected in [
            # Non-finite numbers are not JSON: refused by the API's strict parse ...
            ('"duration_s": Infinity', not_finite.format("Infinity")),
            ('"flash_ms": NaN', not_finite.format("NaN")),
            ('"fps": Infinity', not_finite.format("Infinity")),
            ('"duration_s": 1e999', "body is not JSON: the number 1e999 is too large to be finite"),
            # ... and what JSON can say but the daemon cannot run by the source's own model.
            ('"seed": -1', "seed: Input should be greater than or equal to 0 (got -1)"),
            ('"fps": "inf"', "fps: expected a frame rate like 30 or '30000/1001', got 'inf'"),
        ]:
            data = '{"type": "pattern", "name": "p", ' + extra + "}"
            async with http.post(
                post, data=data, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 400, (extra, await response.text())
                assert (await response.json())["error"] == expected
        # Every refusal gave its slot back: as many streams as the per-client limit still start.
        limit = run.daemon.config.api.limits.max_streams_per_client
        for n in range(limit):
            body = {"type": "pattern", "name": f"ok{n}", "width": 16, "height": 16}
            async with http.post(post, json=body) as response:
                assert response.status == 201, await response.text()


# -- the case 1, as reported: SIGHUP to a real process ---------------------------------


async def test_sighup_with_a_config_that_cannot_run_keeps_the_daemon(
    tmp_path: Path, one_fps_clip: Path
) -> None:
    config = tmp_path / "crossmodald.toml"
    config.write_text(pattern("live") + WINDOW + API)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crossmodald", "run", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    log: list[str] = []

    async def until(text: str) -> None:
        async with asyncio.timeout(30):
            while not any(text in line for line in log):
                line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
                assert line, "daemon exited:\n" + "".join(log)
                log.append(line)

    try:
        await until("API listening")
        # What check-config passed before: windows shorter than one audio sample.
        config.write_text(pattern("live") + "[window]\nlength_s = 0.00001\nhop_s = 0.00001\n" + API)
        proc.send_signal(signal.SIGHUP)
        await until("reload rejected")
        config.write_text("")  # a reload racing a non-atomic write
        proc.send_signal(signal.SIGHUP)
        await until("no settings")
        # A file whose rate does not fit the windows: that stream fails alone.
        media = f'[[sources]]\ntype = "media"\nname = "slow"\nurl = "{one_fps_clip}"\n'
        config.write_text(pattern("live") + media + WINDOW + API)
        proc.send_signal(signal.SIGHUP)
        await until("stream slow failed")
        await asyncio.sleep(0.3)
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(log) + rest
    assert "Traceback" not in text
    assert "ExceptionGroup" not in text


async def test_a_reload_whose_source_type_breaks_is_rejected(tmp_path: Path) -> None:
    build = default_source_factory()

    def factory(config: SourceConfigBase) -> Source:
        if config.name == "boom":  # a bug in a source type, met while the reload builds it
            raise ZeroDivisionError("division by zero in a third-party source")
        return build(config)

    async with running(tmp_path, SOURCES + WINDOW + API, factory) as run:
        await run.wait(lambda: run.state("a") == run.state("b") == "running")
        before = run.daemon.config
        run.path.write_text(SOURCES + pattern("boom") + WINDOW + API)
        result = await run.daemon.reload_from_file()
        assert not result.ok
        assert result.errors == ("ZeroDivisionError('division by zero in a third-party source')",)
        assert run.daemon.config is before
        assert run.state("a") == run.state("b") == "running"
        assert "boom" not in run.daemon.stream_states
