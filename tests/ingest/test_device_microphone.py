"""The microphone path through a real PortAudio device on a machine without a sound card.

The tests start their own PulseAudio server (in a temporary folder, unix socket only, no
network) whose default source is a ``module-pipe-source`` named ``mic``: a feeder thread writes
16-bit samples into its FIFO at real time (silence, or a known signal on demand), and the
source is captured through sounddevice via ALSA's ``pulse`` device (libasound2-plugins), as a
USB microphone would be. (A null sink's monitor fed by ``paplay`` also works, but PulseAudio
re-times a monitor whenever a player starts, so its ADC times jump by hundreds of ms.)
"""

from __future__ import annotations

import asyncio
import collections
import io
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.device import DeviceSource
from crossmodald.ingest.devices_list import devices_command, list_microphones
from crossmodald.media import NS_PER_MS, NS_PER_S, AudioChunk, ClockKind, MediaItem, VideoFrame
from crossmodald.service.config import DeviceSourceConfig

SR = 48_000
BLOCK = 960
SIGNAL_S = 1.0


@dataclass
class Pulse:
    """A running private PulseAudio server, its microphone fed by :attr:`feeder`."""

    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    feeder: Feeder

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def add_mic(self) -> None:
        fifo = self.folder / "mic.fifo"
        self.ctl(
            "load-module",
            "module-pipe-source",
            "source_name=mic",
            f"file={fifo}",
            "format=s16le",
            f"rate={SR}",
            "channels=1",
        )
        self.ctl("set-default-source", "mic")

    def remove_mic(self) -> None:
        self.ctl("unload-module", "module-pipe-source")


class Feeder(threading.Thread):
    """Writes mono s16 samples into the pipe source's FIFO at real time, one block per 20 ms:
    silence, or a signal handed to :meth:`play`. Reopens the FIFO when the source is reloaded."""

    def __init__(self, fifo: Path) -> None:
        super().__init__(name="test:pulse-feeder", daemon=True)
        self.fifo = fifo
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None
        self._started = threading.Event()
        self.started_ns = 0

    def play(self, samples: np.ndarray) -> int:
        """Queue samples; returns the monotonic time their first sample was written."""
        with self._lock:
            self._started.clear()
            self._pending = samples
        assert self._started.wait(5), "the feeder did not start the signal"
        return self.started_ns

    def _next_block(self) -> bytes:
        with self._lock:
            if self._pending is None or len(self._pending) == 0:
                block = np.zeros(BLOCK, np.float32)
            else:
                if not self._started.is_set():
                    self.started_ns = time.monotonic_ns()
                    self._started.set()
                block = self._pending[:BLOCK]
                self._pending = self._pending[BLOCK:]
                block = np.pad(block, (0, BLOCK - len(block)))
        return np.round(np.clip(block, -1, 1) * 32767).astype("<i2").tobytes()

    def run(self) -> None:
        fd: int | None = None
        period_ns = BLOCK * NS_PER_S // SR
        due_ns = time.monotonic_ns()
        while not self.stop.is_set():
            due_ns += period_ns
            delay_ns = due_ns - time.monotonic_ns()
            if delay_ns > 0:
                time.sleep(delay_ns / NS_PER_S)
            else:
                due_ns = time.monotonic_ns()
            if fd is None:
                try:
                    fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                    os.set_blocking(fd, True)
                except OSError:
                    continue  # no source reading the FIFO (yet, or any more)
            try:
                os.write(fd, self._next_block())
            except OSError:
                os.close(fd)
                fd = None
        if fd is not None:
            os.close(fd)


def _missing_tools() -> str | None:
    for tool, package in (
        ("pulseaudio", "pulseaudio"),
        ("pactl", "pulseaudio-utils"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} not found (install {package})"
    if not Path("/usr/share/alsa/alsa.conf.d/pulse.conf").exists():
        return "ALSA's pulse plugin is missing (install libasound2-plugins)"
    return None


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pulse]:
    if (why := _missing_tools()) is not None:
        pytest.skip(f"no virtual sound server: {why}")
    folder = tmp_path_factory.mktemp("pulse")
    runtime = folder / "run"
    runtime.mkdir()
    socket = runtime / "native"
    (folder / "default.pa").write_text(
        f"load-module module-native-protocol-unix socket={socket} auth-anonymous=1\n"
        f"load-module module-pipe-source source_name=mic file={folder / 'mic.fifo'} "
        f"format=s16le rate={SR} channels=1\n"
        "set-default-source mic\n"
    )
    (folder / "client.conf").write_text("autospawn = no\n")
    env = {
        "PULSE_SERVER": f"unix:{socket}",
        "PULSE_RUNTIME_PATH": str(runtime),
        "PULSE_CLIENTCONFIG": str(folder / "client.conf"),
        "PULSE_COOKIE": str(folder / "cookie"),
        "HOME": str(folder),  # pulseaudio keeps its state under $HOME
    }
    full_env = {**os.environ, **env}
    process = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--system=false",
            "--use-pid-file=false",
            "--log-target=stderr",
            "-F",
            str(folder / "default.pa"),
        ],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "pulseaudio.log").open("wb"),
    )
    feeder = Feeder(folder / "mic.fifo")
    server = Pulse(folder, full_env, process, feeder)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                server.ctl("info")
                break
            except subprocess.CalledProcessError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "pulseaudio.log").read_text(errors="replace")[-500:]
                    pytest.skip(f"PulseAudio did not start: {log}")
                time.sleep(0.1)
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)  # libpulse inside ALSA's pulse plugin reads them at open
        try:
            try:
                import sounddevice as sd
            except OSError as exc:
                pytest.skip(f"PortAudio not available: {exc} (install libportaudio2)")
            if "sounddevice" in sys.modules:
                # PortAudio lists devices once, when it starts: restart it to see the server.
                sd._terminate()
                sd._initialize()
            names = [d["name"] for d in sd.query_devices()]
            if "pulse" not in names:
                pytest.skip(f"PortAudio lists no 'pulse' device (got {names})")
            feeder.start()
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        feeder.stop.set()
        if feeder.is_alive():
            feeder.join(timeout=5)
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _signal() -> np.ndarray:
    """A reproducible noise burst: it correlates with itself at one lag only."""
    rng = np.random.default_rng(1234)
    return (rng.uniform(-0.5, 0.5, round(SR * SIGNAL_S))).astype(np.float32)


def _mic_config(**extra: object) -> DeviceSourceConfig:
    microphone = {"device": "pulse", "sample_rate": SR, "blocksize": BLOCK}
    microphone.update(extra.pop("microphone", {}))  # type: ignore[call-overload]
    return DeviceSourceConfig.model_validate(
        {"type": "device", "name": "mic1", "microphone": microphone, **extra}
    )


def _segments(items: list[MediaItem | SourceFault]) -> list[list[AudioChunk]]:
    """Audio chunks split where the source reported a timestamp jump."""
    segments: list[list[AudioChunk]] = [[]]
    for item in items:
        if isinstance(item, SourceFault) and item.kind == "timestamp_jump":
            segments.append([])
        elif isinstance(item, AudioChunk):
            segments[-1].append(item)
    return segments


async def test_microphone_captures_the_fed_signal_on_adc_time(pulse: Pulse) -> None:
    signal = _signal()
    source = DeviceSource(_mic_config())
    info = await source.open()
    assert (info.has_audio, info.has_video, info.sample_rate) == (True, False, SR)
    items: list[MediaItem | SourceFault] = []
    played_ns = 0
    chunks_since_play = 0
    try:
        async with asyncio.timeout(20):
            async for item in source:
                items.append(item)
                if not isinstance(item, AudioChunk):
                    continue
                if not played_ns and sum(isinstance(i, AudioChunk) for i in items) >= 50:
                    played_ns = await asyncio.to_thread(pulse.feeder.play, signal)
                chunks_since_play += played_ns > 0
                if chunks_since_play * BLOCK >= (SIGNAL_S + 0.8) * SR:
                    break
    finally:
        await source.aclose()
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert all(c.clock is ClockKind.ADC and c.sample_rate == SR for c in chunks)

    # Timestamps advance at the sample rate: each chunk starts where the last one ended, except
    # where the source said it re-anchored the timeline (a sound server that lost samples).
    segments = _segments(items)
    assert len(segments) <= 3, f"{len(segments) - 1} timestamp jumps in 3 s"
    for segment in segments:
        for a, b in itertools.pairwise(segment):
            assert b.pts_ns == pytest.approx(a.end_ns, abs=2)
    # ... and stay locked to the monotonic clock (no drift): a block arrives after it was
    # captured, and the capture-to-arrival delay does not trend over the run.
    longest = max(segments, key=len)
    # Blocks held while the clock settled are released together, with one arrival time.
    arrivals = collections.Counter(c.arrival_ns for c in longest)
    steady = [c for c in longest if arrivals[c.arrival_ns] == 1]
    assert len(steady) >= 40
    pts = np.array([c.pts_ns for c in steady], dtype=np.float64)
    delay_ms = (np.array([c.arrival_ns for c in steady], dtype=np.float64) - pts) / NS_PER_MS
    assert delay_ms.min() >= BLOCK / SR * 1000 - 1
    assert delay_ms.max() < 1000
    slope = np.polyfit((pts - pts[0]) / NS_PER_S, delay_ms, 1)[0]  # ms of drift per second
    assert abs(slope) < 10, f"capture-to-arrival delay drifts by {slope:.2f} ms/s"

    # The captured audio is the fed signal, every sample of it ...
    audio = np.concatenate([c.samples for c in chunks])
    n = 2 * len(audio)
    corr = np.fft.irfft(np.fft.rfft(audio, n) * np.conj(np.fft.rfft(signal, n)), n)
    lag = int(np.argmax(corr[: len(audio) - len(signal) + 1]))
    got = audio[lag : lag + len(signal)]
    similarity = float(np.dot(got, signal) / (np.linalg.norm(got) * np.linalg.norm(signal)))
    assert similarity > 0.99, f"captured audio does not match the fed signal ({similarity:.3f})"
    # ... stamped on the ADC clock at about the time it was played.
    starts = np.cumsum([0] + [len(c.samples) for c in chunks])
    k = int(np.searchsorted(starts, lag, side="right")) - 1
    signal_pts_ns = chunks[k].pts_ns + (lag - int(starts[k])) * NS_PER_S // SR
    after_feed_ms = (signal_pts_ns - played_ns) / NS_PER_MS
    assert -30 < after_feed_ms < 300, f"signal stamped {after_feed_ms:.0f} ms after it was fed"


async def test_microphone_that_vanishes_is_reported_retried_and_comes_back(pulse: Pulse) -> None:
    source = DeviceSource(_mic_config(retry_initial_s=0.1, retry_max_s=0.3))
    await source.open()
    items: list[MediaItem | SourceFault] = []
    removed = restored = False
    chunks_after_back = 0
    try:
        async with asyncio.timeout(20):
            async for item in source:
                items.append(item)
                if isinstance(item, AudioChunk) and not removed:
                    await asyncio.to_thread(pulse.remove_mic)  # the microphone is unplugged
                    removed = True
                if isinstance(item, SourceFault) and item.kind == "device_retry" and not restored:
                    await asyncio.to_thread(pulse.add_mic)  # and plugged back in
                    restored = True
                back = any(isinstance(i, SourceFault) and i.kind == "device_back" for i in items)
                chunks_after_back += back and isinstance(item, AudioChunk)
                if chunks_after_back >= 5:
                    break
    finally:
        await source.aclose()
        if removed and not restored:
            pulse.add_mic()
    faults = [i for i in items if isinstance(i, SourceFault) and i.kind != "timestamp_jump"]
    kinds = [f.kind for f in faults]
    assert kinds[0] == "device_lost"
    assert faults[0].message.startswith("microphone 'pulse': its stream stopped")
    assert "device_retry" in kinds
    assert kinds[-1] == "device_back"
    assert not any(w.is_alive() for w in source.workers)


@pytest.mark.parametrize("device", ["no-such-microphone", 999])
async def test_a_microphone_that_is_not_there_is_a_clear_error(
    pulse: Pulse, device: object
) -> None:
    source = DeviceSource(_mic_config(microphone={"device": device}))
    with pytest.raises(SourceError, match=rf"^mic1: microphone {device!r}: ") as err:
        await source.open()
    assert "\n" not in str(err.value)
    await source.aclose()


async def test_unsupported_settings_are_a_clear_error(pulse: Pulse) -> None:
    source = DeviceSource(_mic_config(microphone={"channels": 64}))
    with pytest.raises(SourceError, match=r"^mic1: microphone 'pulse': .*64 asked"):
        await source.open()


async def test_camera_and_microphone_pair_is_one_stream_on_one_clock(
    pulse: Pulse, tmp_path: Path
) -> None:
    clip = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 25, (32, 24))
    for i in range(50):
        writer.write(np.full((24, 32, 3), i * 5, np.uint8))
    writer.release()
    config = DeviceSourceConfig.model_validate(
        {
            "type": "device",
            "name": "desk",
            "camera": {"device": str(clip), "latency_ms": 40.0},
            "microphone": {"device": "pulse", "sample_rate": SR, "latency_ms": 70.0},
        }
    )
    source = DeviceSource(config)
    info = await source.open()
    assert (info.has_video, info.has_audio, info.frame_rate, info.sample_rate) == (
        True,
        True,
        25,
        SR,
    )
    items: list[MediaItem | SourceFault] = []
    try:
        iterator: AsyncIterator[MediaItem | SourceFault] = aiter(source)
        async with asyncio.timeout(20):
            async for item in iterator:
                items.append(item)
                frames = sum(isinstance(i, VideoFrame) for i in items)
                chunks = sum(isinstance(i, AudioChunk) for i in items)
                if frames >= 10 and chunks >= 10:
                    break
    finally:
        await source.aclose()
    frames_ = [i for i in items if isinstance(i, VideoFrame)]
    chunks_ = [i for i in items if isinstance(i, AudioChunk)]
    assert {f.source_id for f in frames_} | {c.source_id for c in chunks_} == {"desk"}
    # The corrections are subtracted from each device's own capture clock.
    assert min(f.arrival_ns - f.pts_ns for f in frames_) >= 40 * NS_PER_MS
    assert min(c.arrival_ns - c.end_ns for c in chunks_) >= 70 * NS_PER_MS - 1 * NS_PER_MS
    # Both ride the monotonic clock: their media times overlap.
    assert abs(frames_[-1].pts_ns - chunks_[-1].pts_ns) < 2 * NS_PER_S


def test_devices_lists_the_microphone_with_its_rates(pulse: Pulse) -> None:
    microphones = {m.name: m for m in list_microphones()}
    assert "pulse" in microphones
    mic = microphones["pulse"]
    assert mic.host_api == "ALSA"
    assert mic.channels >= 1
    assert SR in mic.sample_rates
    out = io.StringIO()
    assert devices_command("table", out=out) == 0
    assert f"{mic.index:>3}  pulse [ALSA] " in out.getvalue()
