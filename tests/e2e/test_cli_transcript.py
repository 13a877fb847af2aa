"""`crossmodald analyze --plugin transcript --format srt|vtt` and `crossmodald eval transcript`."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import av
import pytest
from test_cli import crossmodald

pytest.importorskip("faster_whisper", reason="faster-whisper is not installed (extra: transcript)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from speechkit import SENTENCES, compose, espeak_available

from crossmodald.cli import _Progress
from crossmodald.service.wer import wer

pytestmark = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("cli") / "speech.wav"
    said = list(SENTENCES[1:3])
    compose(path, said)
    return path, said


@pytest.mark.parametrize(("fmt", "codec"), [("srt", "srt"), ("vtt", "webvtt")])
def test_analyze_writes_subtitles_players_load(
    tmp_path: Path, speech: tuple[Path, list[str]], fmt: str, codec: str
) -> None:
    path, said = speech
    result = crossmodald("analyze", str(path), "--plugin", "transcript", "--format", fmt)
    assert result.returncode == 0, result.stderr
    out = tmp_path / f"speech.{fmt}"
    out.write_text(result.stdout, encoding="utf-8")
    with av.open(str(out)) as container:
        stream = container.streams.subtitles[0]
        assert stream.codec_context.name == codec
        packets = [p for p in container.demux(stream) if p.size]
    assert len(packets) >= len(said)
    assert f"analyze: {len(packets)} subtitle cues" in result.stderr
    text = " ".join(
        line
        for line in result.stdout.splitlines()
        if line and "-->" not in line and not line.isdigit() and line != "WEBVTT"
    )
    assert wer(" ".join(said), text).wer <= 0.35, text


def test_subtitles_need_the_transcript_plugin(speech: tuple[Path, list[str]]) -> None:
    result = crossmodald("analyze", str(speech[0]), "--format", "srt")
    assert result.returncode == 2
    assert "--format srt needs --plugin transcript" in result.stderr


def test_progress_lines_say_how_far_and_how_fast(speech: tuple[Path, list[str]]) -> None:
    out = io.StringIO()
    progress = _Progress(str(speech[0]), out)
    assert progress.total_s is not None
    progress.EVERY_S = 0.0
    progress("s", 3_000_000_000)
    line = out.getvalue().strip()
    assert line.startswith(f"analyze: 3 s of {progress.total_s:.0f} s (")
    assert line.endswith("x real time")


def test_eval_transcript_prints_wer_and_real_time_factor(
    tmp_path: Path, speech: tuple[Path, list[str]]
) -> None:
    path, said = speech
    reference = tmp_path / "reference.txt"
    reference.write_text("# what espeak-ng was asked to say\n" + "\n".join(said) + "\n")
    result = crossmodald("eval", "transcript", str(path), str(reference), "--quiet")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert float(lines["WER"].split()[-1].rstrip("%")) <= 35.0
    assert 0.0 < float(lines["RTF"].split()[-1]) < 5.0
    assert lines["reference"].split()[-1] == str(sum(len(s.split()) for s in said))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    result = crossmodald("eval", "transcript", str(path), str(empty), "--quiet")
    assert result.returncode == 2
    assert "no text" in result.stderr
