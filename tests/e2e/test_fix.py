"""``crossmodald fix``: corrected copies of pattern files, measured by the daemon's own pipeline.

Issue 14's targets: at several offsets of both signs and at 29.97 and 25 fps, H.264/AAC in MP4
and H.264/PCM in Matroska, the corrected file measures within 2 ms of zero; its video packets
are byte-for-byte the input's; subtitles, chapters and metadata are kept; an existing output is
not replaced without ``--force``; an offset measured without confidence is refused with the
reason.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from crossmodald.cli import main
from crossmodald.fix import Correction, TerminalProgress
from crossmodald.harness import estimate_offset, run_plugins_sync
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig


def write_pattern(path: Path, *, fps: str, lead_ms: float, rate: int = 48000) -> Path:
    config = PatternSourceConfig.model_validate(
        {
            "type": "pattern",
            "name": "p",
            "width": 320,
            "height": 240,
            "fps": fps,
            "sample_rate": rate,
            "audio_lead_ms": lead_ms,
            "realtime": False,
        }
    )
    write_pattern_file(config, path, duration_s=6.0)
    return path


def fix(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["fix", *(str(a) for a in args)])
    return code, out.getvalue(), err.getvalue()


def measured(path: Path) -> tuple[float, list[float]]:
    """The file's offset as ``analyze`` measures it: the median and every flash window."""
    source = {"type": "media", "name": "m", "url": str(path), "realtime": False}
    result = run_plugins_sync([source], [{"type": "avsync"}])
    assert result.code == 0, result.failures()
    events = result.events("m")
    windows = [
        float(e.data["audio_lead_ms"])
        for e in events
        if e.type == "sync.offset" and e.data.get("method") == "flash"
    ]
    estimate = estimate_offset(events, min_confidence=0.3)
    assert estimate.audio_lead_ms is not None, estimate.reasons
    return estimate.audio_lead_ms, windows


def packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        return [bytes(p) for p in container.demux(stream) if p.size]


@pytest.mark.parametrize(
    ("suffix", "fps", "lead_ms", "measure"),
    [
        (".mp4", "30000/1001", 80.0, True),  # H.264 + AAC, measured
        (".mp4", "30000/1001", -120.0, False),
        (".mp4", "25", 333.0, False),
        (".mp4", "25", -45.5, True),
        (".mkv", "25", -33.3, True),  # H.264 + PCM
        (".mkv", "30000/1001", 41.7, False),
        (".mkv", "30000/1001", -250.0, False),
    ],
)
def test_fixed_file_measures_zero_and_keeps_the_video(
    tmp_path: Path, suffix: str, fps: str, lead_ms: float, measure: bool
) -> None:
    src = write_pattern(tmp_path / f"in{suffix}", fps=fps, lead_ms=lead_ms)
    dst = tmp_path / f"out{suffix}"
    how = ["--measure"] if measure else ["--audio-lead-ms", str(lead_ms)]
    code, out, err = fix(src, dst, *how)
    assert code == 0, err
    assert "re-encoded: none" in out
    before, _ = measured(src)
    assert abs(before - lead_ms) <= 2.0
    after, windows = measured(dst)
    assert abs(after) <= 2.0, (after, out)
    assert len(windows) >= 6
    assert max(abs(w) for w in windows) <= 2.0, windows
    assert packets(dst, "video") == packets(src, "video")
    assert packets(dst, "audio") == packets(src, "audio")


def test_prints_the_ffmpeg_and_obs_equivalents(tmp_path: Path) -> None:
    # The input made as a user would: `crossmodald pattern`.
    src = tmp_path / "in.mp4"
    with redirect_stdout(io.StringIO()):
        assert main(["pattern", str(src), "--audio-lead-ms", "80", "--duration", "4"]) == 0
    code, out, err = fix(src, tmp_path / "out.mp4", "--audio-lead-ms", "80")
    assert code == 0, err
    assert "-itsoffset 0.08 " in out
    assert "Sync Offset = +80 ms" in out
    assert "audio moved 80.000 ms later" in out


def test_correction_signs() -> None:
    # Audio ahead by 80 ms: delay the audio input by 0.08 s, or the OBS source by +80 ms.
    ahead = Correction(80.0)
    assert ahead.ffmpeg_itsoffset_s == pytest.approx(0.08)
    assert ahead.obs_sync_offset_ms == pytest.approx(80.0)
    behind = Correction(-120.0)
    assert behind.ffmpeg_itsoffset_s == pytest.approx(-0.12)
    assert behind.obs_sync_offset_ms == pytest.approx(-120.0)
    assert "-itsoffset -0.12 -i a.mp4 -map 0 -map -0:a -map 1:a -c copy b.mp4" in (
        behind.ffmpeg_command(Path("a.mp4"), Path("b.mp4"))
    )


def with_subtitles_and_chapters(src: Path, dst: Path) -> None:
    """``src`` plus a subtitle stream, two chapters and a title, all into Matroska."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        out.metadata["title"] = "pattern with extras"
        targets = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        subs = out.add_mux_stream("subrip")
        subs.metadata["language"] = "fra"
        tb = Fraction(1, 1000)
        out.set_chapters(
            [
                {"id": 1, "start": 0, "end": 2000, "time_base": tb, "metadata": {"title": "a"}},
                {"id": 2, "start": 2000, "end": 6000, "time_base": tb, "metadata": {"title": "b"}},
            ]
        )
        for packet in inp.demux():
            if not packet.size:
                continue  # the demuxer's flush packet
            packet.stream = targets[packet.stream.index]
            out.mux(packet)
        for k in range(3):
            line = av.Packet(f"line {k}".encode())
            line.pts = line.dts = k * 1000
            line.duration = 500
            line.time_base = tb
            line.stream = subs
            out.mux(line)


def timeline(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as c:
        firsts: dict[str, float] = {}
        for p in c.demux():
            if p.pts is not None and p.time_base is not None and p.stream.type not in firsts:
                firsts[p.stream.type] = float(p.pts * p.time_base)
        return {
            "title": c.metadata.get("title"),
            "streams": [
                (s.type, s.codec_context.name, s.metadata.get("language")) for s in c.streams
            ],
            "chapters": [
                (ch["metadata"].get("title"), float(ch["start"] * ch["time_base"]))
                for ch in c.chapters()
            ],
            "subtitle_s": firsts["subtitle"],
        }


@pytest.mark.parametrize("lead_ms", [-60.0, 60.0])
def test_other_streams_chapters_and_metadata_kept(tmp_path: Path, lead_ms: float) -> None:
    src = tmp_path / "extras.mkv"
    with_subtitles_and_chapters(write_pattern(tmp_path / "p.mkv", fps="25", lead_ms=0.0), src)
    dst = tmp_path / "fixed.mkv"
    code, out, err = fix(src, dst, "--audio-lead-ms", str(lead_ms))
    assert code == 0, err
    before, after = timeline(src), timeline(dst)
    assert after["title"] == "pattern with extras"
    assert after["streams"] == before["streams"]
    assert packets(dst, "subtitle") == packets(src, "subtitle")
    # Subtitles and chapters follow the picture: they move only when the video does.
    moved_s = -lead_ms / 1000 if lead_ms < 0 else 0.0
    assert after["subtitle_s"] == pytest.approx(before["subtitle_s"] + moved_s, abs=1e-3)
    assert [t for t, _ in after["chapters"]] == ["a", "b"]
    for (_, start_after), (_, start_before) in zip(
        after["chapters"], before["chapters"], strict=True
    ):
        assert start_after == pytest.approx(start_before + moved_s, abs=1e-3)
    assert "2 chapter(s) kept" in out


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    src = write_pattern(tmp_path / "in.mkv", fps="25", lead_ms=40.0)
    dst = tmp_path / "out.mkv"
    dst.write_bytes(b"precious")
    code, _, err = fix(src, dst, "--audio-lead-ms", "40")
    assert code == 1
    assert "exists; pass --force" in err
    assert dst.read_bytes() == b"precious"
    code, _, err = fix(src, dst, "--audio-lead-ms", "40", "--force")
    assert code == 0, err
    assert packets(dst, "video") == packets(src, "video")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial file
    code, _, err = fix(src, src, "--audio-lead-ms", "40", "--force")
    assert code == 1
    assert "is the input" in err


def test_refuses_a_container_without_timestamps(tmp_path: Path) -> None:
    src = write_pattern(tmp_path / "in.mkv", fps="25", lead_ms=40.0)
    code, _, err = fix(src, tmp_path / "out.avi", "--audio-lead-ms", "40")
    assert code == 1
    assert "no per-packet timestamps" in err
    assert not (tmp_path / "out.avi").exists()


def plain_file(path: Path) -> Path:
    """Grey pictures and a quiet hum: nothing the flash or clap methods can measure."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=48000)
        audio.layout = "mono"
        t = np.arange(48000 * 6) / 48000
        hum = (np.sin(2 * np.pi * 50 * t) * 300).astype(np.int16)
        for i in range(150):
            frame = av.VideoFrame.from_ndarray(np.full((180, 160), 100, np.uint8), format="yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for i in range(0, len(hum), 960):
            chunk = av.AudioFrame.from_ndarray(hum[None, i : i + 960], format="s16", layout="mono")
            chunk.sample_rate = 48000
            chunk.pts = i
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))
    return path


def test_refuses_to_correct_an_unsure_measurement(tmp_path: Path) -> None:
    src = plain_file(tmp_path / "plain.mkv")
    dst = tmp_path / "out.mkv"
    code, _, err = fix(src, dst, "--measure")
    assert code == 1
    assert "refusing to fix" in err
    assert "no flash/beep or clap" in err
    assert "--audio-lead-ms" in err
    assert not dst.exists()
    # A pattern measured, but below the confidence asked for: refused, saying so.
    pattern = write_pattern(tmp_path / "p.mkv", fps="25", lead_ms=50.0)
    code, _, err = fix(pattern, dst, "--measure", "--min-confidence", "0.99")
    assert code == 1
    assert "confidence >= 0.99" in err
    assert not dst.exists()


def test_progress_bar_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for out in (tty, pipe):
        bar = TerminalProgress("writing", out)
        for f in (0.0, 0.5, 1.0):
            bar(f)
        bar.done()
    assert "\rwriting [" in tty.getvalue()
    assert "100%" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_matroska_packets_without_decode_times(tmp_path: Path) -> None:
    # A cut Matroska file (its first two pictures dropped) whose demuxer leaves the decode time
    # of a later B-frame unset: FFmpeg's muxer would guess one that runs backwards and refuse it.
    whole = write_pattern(tmp_path / "whole.mkv", fps="25", lead_ms=30.0)
    src = tmp_path / "cut.mkv"
    with av.open(str(whole)) as inp, av.open(str(src), "w") as out:
        targets = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = targets[packet.stream.index]
            out.mux(packet)
    with av.open(str(src)) as c:
        dts = [p.dts for p in c.demux(video=0) if p.size]
    assert any(d is None for d in dts[dts.index(next(d for d in dts if d is not None)) :])
    dst = tmp_path / "out.mkv"
    code, _, err = fix(src, dst, "--audio-lead-ms", "30")
    assert code == 0, err
    assert packets(dst, "video") == packets(src, "video")


def test_measures_a_clap(tmp_path: Path) -> None:
    # A clap recording (no test pattern): --measure uses avsync's clap method, as analyze does.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    from clapkit import write_clap_clip

    src = write_clap_clip(
        tmp_path / "clap.mkv", fps=25, audio_lead_ms=60.0, contacts_s=(1.3, 4.1, 6.9), seconds=8.5
    )
    dst = tmp_path / "fixed.mkv"
    code, out, err = fix(src, dst, "--measure")
    assert code == 0, err
    assert "measured: clap" in out
    source = {"type": "media", "name": "m", "url": str(dst), "realtime": False}
    result = run_plugins_sync([source], [{"type": "avsync", "method": "clap"}])
    after = estimate_offset(result.events("m"), min_confidence=0.3)
    assert after.audio_lead_ms is not None, after.reasons
    assert abs(after.audio_lead_ms) < 40.0  # the clap method's precision: one frame
    assert packets(dst, "video") == packets(src, "video")
