"""The command line end to end: bad input, and the daemon as a real process on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig


def crossmodald(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossmodald", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wav(path: Path, seconds: float = 2.0, rate: int = 16000) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        samples = (np.sin(np.arange(int(seconds * rate)) * 0.1) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "missing.mp4"),
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not a media file"),
        (lambda d: wav(d / "speech.wav"), "has no video"),
        (lambda d: "http://127.0.0.1:9/clip.mp4", "127.0.0.1:9"),
    ],
    ids=["missing", "not-media", "audio-only", "unreachable-url"],
)
def test_analyze_bad_media_is_one_clear_line(tmp_path: Path, make: object, message: str) -> None:
    target = make(tmp_path)  # type: ignore[operator]
    result = crossmodald("analyze", str(target))
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("crossmodald: error: "), result.stderr
    assert message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_analyze_unknown_plugin_and_bad_window(tmp_path: Path) -> None:
    result = crossmodald("analyze", "x.mp4", "--plugin", "nope")
    assert result.returncode == 2
    assert "unknown plugin 'nope'" in result.stderr
    result = crossmodald("analyze", "x.mp4", "--window", "1", "--hop", "3")
    assert result.returncode == 2
    assert "hop_s must not exceed" in result.stderr


def test_check_config(tmp_path: Path) -> None:
    good = Path(__file__).resolve().parents[2] / "configs" / "default.toml"
    result = crossmodald("check-config", str(good))
    assert result.returncode == 0
    assert "OK" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[sources]]\ntype = "pattern"\nname = "a"\nfps = "fast"\n[[plugins]]\ntype = "avsync"\n'
        "max_lag_ms = -5\ncolour = 1\n"
    )
    result = crossmodald("check-config", str(bad))
    assert result.returncode == 2  # an invalid config, as the README says
    errors = result.stderr.splitlines()
    assert any("sources.0.fps" in e for e in errors)
    assert any("plugins.0.max_lag_ms" in e for e in errors)
    assert any("plugins.0.colour: unknown key" in e for e in errors)
    assert all(e.startswith(str(bad)) for e in errors)


def _distribution(site: Path, name: str, version: str, entry_points: str) -> None:
    """An installed distribution's metadata in ``site`` (what pip writes), with entry points."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_plugins_lists_types_with_their_package_and_unloadable_ones_with_the_error(
    tmp_path: Path,
) -> None:
    # A third party's distribution: a plugin whose module is missing, and a sink type (an alias
    # of a real factory) that is fine. Found through importlib.metadata, as pip would leave them.
    site = tmp_path / "site"
    _distribution(
        site,
        "crossmodald-thirdparty",
        "2.3",
        """
        [crossmodald.plugins]
        broken = crossmodald_thirdparty_missing.plugin:BrokenFactory

        [crossmodald.sinks]
        jsonl2 = crossmodald.bus.jsonl:JsonlSinkFactory
        """,
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}

    def listing(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crossmodald", "plugins", *args],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    table = listing()
    assert table.returncode == 1, table.stdout + table.stderr  # one type cannot be loaded
    assert "Traceback" not in table.stdout + table.stderr
    out = table.stdout
    for heading in ("Plugins (", "Source types (", "Sink types ("):
        assert re.search(rf"^{re.escape(heading)}entry-point group crossmodald\.", out, re.M), out
    version = r"crossmodald \d+\.\d+\S*"
    rows = {
        # Name, provides, needs of the default config, package, description: aligned columns.
        "faces": rf"faces +faces\.tracks +- +{version} +Face tracks per stream",
        "speaker": rf"speaker +speaker\.faces +faces\.tracks, speech\.probs +{version} +Who is talking",
        "transcript": rf"transcript +- +speech\.probs, speaker\.faces \(optional\), faces\.tracks \(optional\) +{version} +Who said what, live",
        "avsync": rf"avsync +- +faces\.tracks \(optional\) +{version} +Audio/video sync",
        "broken": r"broken +\? +\? +crossmodald-thirdparty 2\.3 +ERROR: cannot import "
        r"crossmodald_thirdparty_missing\.plugin:BrokenFactory: ModuleNotFoundError",
        "pattern": rf"pattern +{version} +A synthetic test source",
        "jsonl2": r"jsonl2 +crossmodald-thirdparty 2\.3 +One JSON line per event",
    }
    for name, row in rows.items():
        assert re.search(rf"^  {row}", out, re.MULTILINE), f"{name}:\n{out}"
    # Each column starts at the same place on every row (not a terminal: no wrapping).
    for table_text in out.split("\n\n")[:3]:
        header, *body = table_text.splitlines()[1:]
        starts = [m.start() for m in re.finditer(r"(?<=  )\S", header)]
        for line in body:
            assert all(line[i - 2 : i] == "  " and line[i] != " " for i in starts[1:]), line

    data = json.loads(listing("--format", "json").stdout)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["faces"]["provides"] == "faces.tracks"
    assert plugins["faces"]["package"]["name"] == "crossmodald"
    assert plugins["speaker"]["requires"] == [
        {"product": "faces.tracks", "optional": False},
        {"product": "speech.probs", "optional": False},
    ]
    assert plugins["broken"]["error"].startswith("cannot import")
    assert plugins["broken"]["package"] == {"name": "crossmodald-thirdparty", "version": "2.3"}
    assert {s["name"] for s in data["sources"]} >= {"pattern", "media", "device"}
    assert {s["name"] for s in data["sinks"]} >= {"jsonl", "jsonl2"}
    assert all(s["error"] is None and s["description"] for s in data["sources"])


def test_pattern_then_analyze_table(tmp_path: Path) -> None:
    out = tmp_path / "p.mkv"
    result = crossmodald(
        "pattern", str(out), "--duration", "5", "--audio-lead-ms", "-45", "--fps", "29.97",
        "--width", "320", "--height", "240",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = crossmodald("analyze", str(out))
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"sync.offset method=flash .* median audio_lead_ms ([-+0-9.]+)", result.stdout
    )
    assert match, result.stdout
    assert abs(float(match.group(1)) + 45.0) <= 2.0
    assert "sync.offset" in result.stdout


async def test_run_serves_events_and_keeps_good_streams_when_one_fails(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mkv"
    write_pattern_file(
        PatternSourceConfig(type="pattern", name="f", width=160, height=120, audio_lead_ms=-25.0),
        clip,
        duration_s=3.0,
    )
    sink = tmp_path / "events.jsonl"
    config = tmp_path / "run.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[sources]]
            type = "pattern"
            name = "live"
            width = 160
            height = 120
            audio_lead_ms = 40.0

            [[sources]]
            type = "media"
            name = "broken"
            url = "{tmp_path / "nope.mp4"}"

            [[sources]]
            type = "media"
            name = "file"
            url = "{clip}"

            [[plugins]]
            type = "avsync"

            [api]
            port = 0

            [[sinks]]
            type = "jsonl"
            path = "{sink}"
            """
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crossmodald", "run", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    port = None
    log: list[str] = []
    try:
        async with asyncio.timeout(60):
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "daemon exited early:\n" + "".join(log)
                log.append(line)
                found = re.search(r"API listening on http://127\.0\.0\.1:(\d+)", line)
                port = int(found.group(1)) if found else None
        base = f"http://127.0.0.1:{port}"
        seen: list[dict[str, object]] = []
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{base}/v1/events", params={"type": "sync.offset", "stream": "live"}
            ) as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                async with asyncio.timeout(30):
                    async for raw in response.content:
                        text = raw.decode().strip()
                        if text.startswith("data:"):
                            event = json.loads(text[5:])
                            if event["data"]["audio_lead_ms"] is not None:
                                seen.append(event)
                        if len(seen) >= 3:
                            break
            async with http.get(f"{base}/v1/streams") as response:
                streams = {s["name"]: s for s in (await response.json())["streams"]}
        assert all(abs(e["data"]["audio_lead_ms"] - 40.0) <= 2.0 for e in seen)  # type: ignore[index]
        assert streams["broken"]["state"] == "failed"
        assert "nope.mp4" in streams["broken"]["error"]
        assert streams["live"]["state"] == "running"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    written = [json.loads(line) for line in sink.read_text().splitlines()]
    types = {(e["stream"], e["type"]) for e in written}
    assert ("broken", "stream.fault") in types
    assert ("file", "stream.end") in types
    file_offsets = [
        e["data"]["audio_lead_ms"]
        for e in written
        if e["stream"] == "file" and e["type"] == "sync.offset" and e["data"]["audio_lead_ms"]
    ]
    assert file_offsets
    assert all(abs(v + 25.0) <= 2.0 for v in file_offsets)
    seqs = [e["seq"] for e in written]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


def test_run_with_the_port_taken_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "busy.toml"
        config.write_text(f"[api]\nport = {port}\n")
        result = crossmodald("run", "--config", str(config), timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("crossmodald: error: ")
    assert f"cannot listen on 127.0.0.1:{port}" in last
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_plugins_into_a_reader_that_stops_early_is_quiet(fmt: str) -> None:
    # `crossmodald plugins | head -0`: the reader closes the pipe before the output is written.
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossmodald", "plugins", "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
