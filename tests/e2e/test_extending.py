"""A package of one's own (docs/extending.md): the example under tests/extpkg, in the real daemon.

The example package (a ``loudness`` plugin, a ``tone`` source type and a ``csv`` sink type, all
through entry points) is built and installed offline into a temporary folder, as a user would
``pip install`` it, and put on the daemon's ``PYTHONPATH``: nothing of it is imported into this
test process. Then the CLI finds it, ``crossmodald run`` runs it with a built-in plugin, and its
events, status, metrics and file are checked over loopback.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from servicekit import SseSubscriber, start_daemon

REPO = Path(__file__).resolve().parents[2]
EXTPKG = REPO / "tests" / "extpkg"
#: A dead loopback port: any attempt of pip to reach an index fails at once instead of going out.
NO_NETWORK = "http://127.0.0.1:9"

SERVICE = """
[service]
stop_ingest_s = 5
drain_plugins_s = 5
flush_sinks_s = 3
close_api_s = 3
"""


def _wheel_builder_problem() -> str | None:
    """Why this environment cannot build the example without fetching a build backend."""
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    if (major, minor) >= (70, 1):
        return None  # bdist_wheel is part of setuptools from 70.1 on
    try:
        import wheel  # noqa: F401 -- older setuptools build wheels through it
    except ImportError:
        return (
            f"setuptools {setuptools.__version__} cannot build a wheel offline (needs >= 70.1, "
            "as `pip install -e '.[test]'` installs)"
        )
    return None


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package, installed offline into ``site`` (its sources copied beside it)."""
    problem = _wheel_builder_problem()
    if problem is not None:
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("extpkg")
    # Built from a copy: a setuptools build leaves build/ and *.egg-info beside its sources.
    source = root / "src"
    shutil.copytree(EXTPKG, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))  # fmt: skip
    site = root / "site"
    env = {**os.environ, "HTTP_PROXY": NO_NETWORK, "HTTPS_PROXY": NO_NETWORK, "PIP_NO_INDEX": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "crossmodald_example" / "loudness.py").is_file()
    return site


def _env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _cli(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossmodald", *args],
        env=_env(site), capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def _config(sink: Path, extra_source: str = "") -> str:
    return f"""
[[sources]]
type = "tone"
name = "tone1"
frequency_hz = 440
{extra_source}
[window]
length_s = 1.0
hop_s = 0.5
lateness_s = 0.1

[[plugins]]
type = "loudness"
device = "cpu"

[[plugins]]
type = "faces"

[[sinks]]
type = "csv"
path = "{sink}"

[api]
port = 0
{SERVICE}"""


def test_the_cli_finds_and_checks_the_example(example_site: Path, tmp_path: Path) -> None:
    listed = _cli(example_site, "plugins")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    # Each type on its row, with the package that installed it.
    for pattern in (
        r"^  loudness +- +faces\.tracks \(optional\) +crossmodald-example 0\.1\.0 +Audio level per window",
        r"^  tone +crossmodald-example 0\.1\.0 +A steady sine",
        r"^  csv +crossmodald-example 0\.1\.0 +One CSV row",
    ):
        assert re.search(pattern, listed.stdout, re.MULTILINE), listed.stdout
    good = tmp_path / "good.toml"
    good.write_text(_config(tmp_path / "events.csv"))
    checked = _cli(example_site, "check-config", str(good))
    assert checked.returncode == 0, checked.stderr
    assert "OK (1 sources, 2 plugins)" in checked.stdout
    # The example's own config models say what is wrong, under the table's key path.
    bad = tmp_path / "bad.toml"
    bad.write_text(_config(tmp_path / "events.csv").replace("frequency_hz = 440", "frequency_hz = 9000"))  # fmt: skip
    refused = _cli(example_site, "check-config", str(bad))
    assert refused.returncode == 2
    assert "sources.0" in refused.stderr
    assert "below half the sample rate" in refused.stderr


def test_the_example_package_passes_its_own_tests(example_site: Path) -> None:
    # What the package's CI would run: its plugin through crossmodald.harness (from the copy,
    # so that nothing is written into the repository).
    tests = example_site.parent / "src" / "tests"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests),
         str(tests)],
        env=_env(example_site), capture_output=True, text=True, timeout=120, cwd=tests,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


async def test_the_daemon_runs_the_example_source_plugin_and_sink(
    example_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "out" / "events.csv"
    config = tmp_path / "crossmodald.toml"
    config.write_text(_config(sink))
    monkeypatch.setenv("PYTHONPATH", _env(example_site)["PYTHONPATH"])
    daemon = await start_daemon(config, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            sub = SseSubscriber(daemon.url)
            sub.task = asyncio.create_task(sub.run(http))
            async with asyncio.timeout(20):
                while sum(e["type"] == "audio.level" for e in sub.events) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            levels = [e for e in sub.events if e["type"] == "audio.level"]
            for event in levels:
                assert event["stream"] == "tone1"
                assert event["media"]["clock"] == "synthetic"
                assert event["data"]["rms_dbfs"] == pytest.approx(-9.03, abs=0.02)
                # The built-in `faces` runs too, so the optional face tracks come with each
                # window (a moving bar: none).
                assert event["data"]["faces"] == 0
            async with http.get(f"{daemon.url}/v1/streams/tone1") as response:
                assert response.status == 200
                stream = await response.json()
            status = stream["plugin_status"]["loudness"]
            assert status["level_dbfs"] == pytest.approx(-9.03, abs=0.02)
            assert status["windows"] >= 3
            assert "faces" in stream["plugin_status"]
            assert stream["source_status"]["frames"] > 0  # the source's own status
            async with http.get(f"{daemon.url}/metrics") as response:
                assert response.status == 200
                metrics = await response.text()
            level = re.search(
                r'^crossmodald_stream_example_audio_level_dbfs\{[^}]*stream="tone1"[^}]*\} (\S+)$',
                metrics,
                re.MULTILINE,
            )
            assert level is not None, metrics
            assert float(level.group(1)) == pytest.approx(-9.03, abs=0.02)
            assert "# TYPE crossmodald_stream_example_windows_total counter" in metrics
            frames = re.search(
                r'^crossmodald_stream_example_tone_frames_total\{[^}]*source="tone"[^}]*\} (\S+)$',
                metrics,
                re.MULTILINE,
            )
            assert frames is not None, metrics
            assert float(frames.group(1)) > 0
            assert f'crossmodald_sink_events_written_total{{sink="csv:{sink}"}}' in metrics
            seen = max(e["seq"] for e in sub.events)
            daemon.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                code = await daemon.proc.wait()
            assert sub.task is not None
            await asyncio.wait([sub.task], timeout=5)
        assert code == 0, daemon.log_text()
        with sink.open(newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
        assert rows[0] == ["seq", "ts", "stream", "type", "phase", "start_ns", "end_ns", "data"]
        seqs = [int(row[0]) for row in rows[1:]]
        # Everything, in order, without a gap, up to the end of the stream after SIGTERM.
        assert seqs == list(range(1, len(seqs) + 1))
        assert seqs[-1] >= seen
        types = [row[3] for row in rows[1:]]
        assert types.count("audio.level") >= len(levels)
        assert ("tone1", "stream.end") in {(row[2], row[3]) for row in rows[1:]}
        first = next(row for row in rows[1:] if row[3] == "audio.level")
        assert json.loads(first[7])["rms_dbfs"] == pytest.approx(-9.03, abs=0.02)
    finally:
        await daemon.stop()
