"""``crossmodald calibrate`` on recordings with a known offset, through the real avsync plugin."""

from __future__ import annotations

import io
import re
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from crossmodald.harness import spread_ms
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.calibrate import (
    CALIBRATION_METHODS,
    MAX_SPREAD_MS,
    MIN_WINDOWS,
    calibrate_command,
    correction_lines,
)
from crossmodald.service.config import (
    DeviceSourceConfig,
    MediaSourceConfig,
    PatternSourceConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
from clapkit import write_clap_clip  # the clap recording of the avsync tests
from rtspkit import RtspServer, gi_python, pattern_mp4  # the rtsp source's loopback server

FPS = 30
FRAME_MS = 1000 / FPS


def _recording(path: Path, audio_lead_ms: float) -> Path:
    pattern = PatternSourceConfig.model_validate(
        {
            "type": "pattern",
            "name": "rec",
            "width": 160,
            "height": 120,
            "fps": FPS,
            "audio_lead_ms": audio_lead_ms,
        }
    )
    write_pattern_file(pattern, path, duration_s=6.0)
    return path


def _still(path: Path, seconds: float = 4.0) -> Path:
    """A recording in which nothing happens: a grey picture and a faint hiss."""
    rate = 48_000
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=rate)
        audio.layout = "mono"
        for i in range(round(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 90, np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(video.encode(frame))
        hiss = np.random.default_rng(7).normal(0, 0.002, round(seconds * rate))
        chunk = av.AudioFrame.from_ndarray(hiss.astype(np.float32)[None, :], "flt", "mono")
        chunk.sample_rate, chunk.pts, chunk.time_base = rate, 0, Fraction(1, rate)
        out.mux(audio.encode(chunk))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "crossmodald.toml"
    path.write_text(body, encoding="utf-8")
    return path


async def _run(config: Path, source: str, seconds: float = 5.0) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await calibrate_command(config, source, seconds, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("true_lead_ms", "shift_ms"), [(80.0, 0.0), (-120.0, 15.0)])
async def test_finds_a_known_flash_beep_offset_within_a_frame(
    tmp_path: Path, true_lead_ms: float, shift_ms: float
) -> None:
    clip = _recording(tmp_path / "flash_beep.mp4", true_lead_ms)
    config = _config(
        tmp_path,
        f'[[sources]]\ntype = "media"\nname = "rec"\nurl = "{clip}"\naudio_shift_ms = {shift_ms}\n',
    )
    code, out, err = await _run(config, "rec")
    assert (code, err) == (0, "")
    measured = float(re.search(r"audio_lead_ms = ([-+0-9.]+)", out).group(1))  # type: ignore[union-attr]
    expected = true_lead_ms + shift_ms  # the configured shift moves audio earlier
    assert abs(measured - expected) < FRAME_MS
    assert "flash method" in out
    fix = float(re.search(r"audio_shift_ms = ([-0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert abs((shift_ms - fix) - expected) < 0.11  # applying it cancels the offset


async def test_calibrates_a_camera_over_rtsp(tmp_path: Path) -> None:
    server = RtspServer(gi_python(), pattern_mp4(tmp_path / "camera.mp4", 45.0))
    server.start()
    try:
        config = _config(
            tmp_path, f'[[sources]]\ntype = "rtsp"\nname = "door"\nurl = "{server.url}"\n'
        )
        code, out, err = await _run(config, "door", seconds=8.0)
    finally:
        server.stop()
    assert (code, err) == (0, "")
    measured = float(re.search(r"audio_lead_ms = ([-+0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert abs(measured - 45.0) < 3.0
    fix = float(re.search(r"audio_shift_ms = ([-0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert fix == pytest.approx(-measured, abs=0.06)


@pytest.mark.parametrize(("fps", "true_lead_ms"), [(25, -120.0), (30, 80.0)])
async def test_finds_a_known_clap_offset_within_a_frame(
    tmp_path: Path, fps: int, true_lead_ms: float
) -> None:
    # Two claps three seconds apart, each hands-meet-then-sound with the same known offset.
    clip = write_clap_clip(
        tmp_path / "clap.mkv",
        fps=fps,
        audio_lead_ms=true_lead_ms,
        contacts_s=(1.37, 4.41),
        seconds=6.0,
    )
    config = _config(tmp_path, f'[[sources]]\ntype = "media"\nname = "rec"\nurl = "{clip}"\n')
    code, out, err = await _run(config, "rec")
    assert (code, err) == (0, "")
    assert "clap method" in out
    measured = float(re.search(r"audio_lead_ms = ([-+0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert abs(measured - true_lead_ms) < 1000 / fps
    fix = float(re.search(r"audio_shift_ms = ([-0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert abs(fix + true_lead_ms) < 1000 / fps  # applying it cancels the offset


async def test_nothing_to_measure_is_a_clear_failure(tmp_path: Path) -> None:
    clip = _still(tmp_path / "still.mkv")
    config = _config(tmp_path, f'[[sources]]\ntype = "media"\nname = "rec"\nurl = "{clip}"\n')
    code, out, err = await _run(config, "rec", 3.0)
    assert code == 1
    assert out == ""
    assert err.startswith("calibrate: rec: no clap or flash/beep found in 3.0 s")
    assert err.count("\n") == 1


async def test_talking_without_a_clap_or_flash_does_not_calibrate(
    tmp_path: Path, shared_media: Path
) -> None:
    # The motion method gives offsets on a talking head, but none rests on a known instant.
    clip = shared_media / "talkinghead_hdtf_aoc_25fps.mp4"
    config = _config(tmp_path, f'[[sources]]\ntype = "media"\nname = "rec"\nurl = "{clip}"\n')
    code, out, err = await _run(config, "rec", 6.0)
    assert code == 1
    assert out == ""
    assert err.startswith("calibrate: rec: no clap or flash/beep found")


async def test_unknown_source_and_bad_config(tmp_path: Path) -> None:
    config = _config(tmp_path, '[[sources]]\ntype = "pattern"\nname = "bars"\n')
    code, _, err = await _run(config, "studio")
    assert code == 1
    assert err == "calibrate: no source named 'studio' (sources: bars)\n"
    broken = _config(tmp_path, '[[sources]]\ntype = "device"\nname = "cam"\n')
    code, _, err = await _run(broken, "cam")
    assert code == 2
    assert "a device source needs a camera, a microphone or both" in err


async def test_a_source_without_video_cannot_be_calibrated(tmp_path: Path) -> None:
    import wave

    wav = tmp_path / "voice.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * 16000)
    config = _config(tmp_path, f'[[sources]]\ntype = "media"\nname = "voice"\nurl = "{wav}"\n')
    code, _, err = await _run(config, "voice", 1.0)
    assert code == 1
    assert err == "calibrate: voice: has no video; calibration needs both\n"


def _device(camera_ms: float | None, mic_ms: float | None) -> DeviceSourceConfig:
    table: dict[str, object] = {"type": "device", "name": "desk"}
    if camera_ms is not None:
        table["camera"] = {"device": 0, "latency_ms": camera_ms}
    if mic_ms is not None:
        table["microphone"] = {"latency_ms": mic_ms}
    return DeviceSourceConfig.model_validate(table)


def test_device_corrections_go_to_the_late_device() -> None:
    # Audio ahead: frames are stamped too late, the camera's latency grows.
    assert correction_lines(_device(10.0, 5.0), 42.0) == ["camera.latency_ms = 52.0"]
    # Audio behind: samples are stamped too late, the microphone's latency grows.
    assert correction_lines(_device(10.0, 5.0), -30.0) == ["microphone.latency_ms = 35.0"]
    # Only one device known to the config: it takes either sign.
    assert correction_lines(_device(None, 5.0), 20.0) == ["microphone.latency_ms = -15.0"]
    media = MediaSourceConfig.model_validate({"type": "media", "name": "m", "url": "x.mp4"})
    assert correction_lines(media, 25.0) == ["audio_shift_ms = -25.0"]
    pattern = PatternSourceConfig.model_validate({"type": "pattern", "name": "p"})
    assert correction_lines(pattern, 25.0) == []


async def test_a_wide_spread_is_unstable_not_a_verdict(tmp_path: Path) -> None:
    # The audio clock runs 1 % fast: the flash/beep offset moves ~100 ms over the recording,
    # so its median is no measurement of anything.
    pattern = PatternSourceConfig.model_validate(
        {"type": "pattern", "name": "rec", "width": 160, "height": 120, "fps": FPS}
        | {"drift_ppm": 10_000.0}
    )
    clip = tmp_path / "drifting.mp4"
    write_pattern_file(pattern, clip, duration_s=10.0)
    config = _config(tmp_path, f'[[sources]]\ntype = "media"\nname = "rec"\nurl = "{clip}"\n')
    code, out, err = await _run(config, "rec", 10.0)
    assert code == 1
    assert out == ""  # no offset, no correction line
    assert err.startswith("calibrate: rec: unstable, try again (spread ")
    assert f"limit {MAX_SPREAD_MS:g} ms" in err


def test_spread_rule_is_the_median_absolute_deviation() -> None:
    assert spread_ms([10.0, 11.0, 9.0, 200.0]) == pytest.approx(1.0)  # one outlier: stable
    assert spread_ms([-4.0, -4.0, 85.0, 92.0]) > MAX_SPREAD_MS  # the mixed methods


def test_the_page_applies_the_same_calibration_rule() -> None:
    # The web page's calibration mode (static/app.js) judges with the same methods and limits.
    import crossmodald.api

    js = (Path(crossmodald.api.__file__).parent / "static" / "app.js").read_text(encoding="utf-8")
    limit = re.search(r"CALIBRATION_MAX_SPREAD_MS = ([0-9.]+);", js)
    windows = re.search(r"CALIBRATION_MIN_WINDOWS = ([0-9]+);", js)
    methods = re.search(r"CALIBRATION_METHODS = new Set\(\[([^\]]*)\]\);", js)
    assert limit
    assert windows
    assert methods
    assert float(limit.group(1)) == MAX_SPREAD_MS
    assert int(windows.group(1)) == MIN_WINDOWS
    assert {m.strip(' "') for m in methods.group(1).split(",")} == CALIBRATION_METHODS
    assert "function spreadMs" in js  # median absolute deviation, like spread_ms
