"""The evaluation framework: the three tasks through the daemon's pipeline, and their metrics."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossmodald.bus.events import Event, Phase
from crossmodald.ingest.media import MediaSourceConfig
from crossmodald.media import NS_PER_MS, NS_PER_S, ClockKind, StreamInfo, Window
from crossmodald.runtime.plugin import PluginConfig
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.evaluate import (
    DecodedMedia,
    EvalError,
    SpeakerMetrics,
    compose_side_by_side,
    decode_media,
    eval_command,
    evaluate_lipsync,
    evaluate_speaker,
    frame_scores,
    media_source,
    read_rttm,
    speaker_accuracy,
)
from crossmodald_plugins.faces import FaceTracker
from crossmodald_plugins.vad import SpeechFactory

MEDIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "media"
needs_media = pytest.mark.skipif(
    not MEDIA.is_dir(), reason=f"shared test media not found at {MEDIA} (../shared/media)"
)
AOC = MEDIA / "talkinghead_hdtf_aoc_25fps.mp4"
MARKEY = MEDIA / "talkinghead_hdtf_markey_25fps.mp4"


# -- labels and metrics -------------------------------------------------------------------------


def test_read_rttm(tmp_path: Path) -> None:
    good = tmp_path / "a.rttm"
    good.write_text(
        "SPEAKER f 1 1.50 2.00 <NA> <NA> s1 <NA> <NA>\n\nSPEAKER f 1 4.0 0.5 <NA> <NA> s2 <NA> <NA>\n"
    )
    assert read_rttm(good) == [(1.5, 3.5), (4.0, 4.5)]
    bad = tmp_path / "b.rttm"
    bad.write_text("SPEAKER f 1 x 2.0\n")
    with pytest.raises(EvalError, match=r"b\.rttm:1: not an RTTM SPEAKER line"):
        read_rttm(bad)
    empty = tmp_path / "c.rttm"
    empty.write_text("# nothing\n")
    with pytest.raises(EvalError, match="no SPEAKER lines"):
        read_rttm(empty)
    with pytest.raises(EvalError, match="cannot read"):
        read_rttm(tmp_path / "missing.rttm")


def test_frame_scores() -> None:
    s = NS_PER_S
    ref = [(1 * s, 3 * s)]
    perfect = frame_scores(ref, [(1 * s, 3 * s)], 5 * s)
    assert (perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0)
    half = frame_scores(ref, [(2 * s, 4 * s)], 5 * s)
    assert half.precision == pytest.approx(0.5)
    assert half.recall == pytest.approx(0.5)
    assert half.f1 == pytest.approx(0.5)
    none = frame_scores(ref, [], 5 * s)
    assert none.f1 == 0.0
    assert none.recall == 0.0


def test_speaker_accuracy_counts_only_speech_frames() -> None:
    pts = [i * 40 * NS_PER_MS for i in range(50)]  # 2 s of frames
    speech = [(0, NS_PER_S)]  # frames 0..24
    spans = [(0, NS_PER_S // 2, 100.0), (NS_PER_S // 2, 2 * NS_PER_S, 600.0)]
    m = speaker_accuracy(pts, speech, spans, width=800, speaking_side="left")
    assert m.speech_frames == 25
    assert m.correct == 13  # frames 0..12 are before 0.5 s
    # The 12 other speech frames: only the right-hand face (the one not voiced) speaks.
    assert (m.no_face, m.other_face, m.both_faces) == (0, 12, 0)
    both = [(0, 2 * NS_PER_S, 100.0), (0, 2 * NS_PER_S, 600.0)]
    m = speaker_accuracy(pts, speech, both, width=800, speaking_side="left")
    assert (m.correct, m.both_faces) == (0, 25)
    gap = [(0, NS_PER_S // 4, 100.0)]  # frames 0..6, then nobody
    m = speaker_accuracy(pts, speech, gap, width=800, speaking_side="left")
    assert (m.correct, m.no_face, m.other_face) == (7, 18, 0)
    total = m + SpeakerMetrics(3, 5, 1, 1, 0)
    assert (total.correct, total.speech_frames, total.no_face, total.other_face) == (10, 30, 19, 1)
    # A voice from off screen: a frame is right when no face speaks.
    m = speaker_accuracy(pts, speech, gap + both, width=800, speaking_side=None)
    assert (m.correct, m.no_face, m.other_face, m.both_faces) == (0, 0, 0, 25)
    m = speaker_accuracy(pts, speech, gap, width=800, speaking_side=None)
    assert (m.correct, m.no_face, m.other_face, m.both_faces) == (18, 0, 7, 0)


# -- media ------------------------------------------------------------------------------------


def test_bad_media_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="no such file"):
        decode_media(tmp_path / "none.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(EvalError, match=r"junk\.mp4: (cannot open|not a media file)"):
        decode_media(junk)
    err = io.StringIO()
    assert eval_command("speech", tmp_path / "none.wav", tmp_path / "x.rttm", out=err) == 2
    assert eval_command("speech", tmp_path / "none.wav", None, out=err) == 2
    assert eval_command("no-such-plugin", junk, None, task="lipsync", out=err) == 2
    assert eval_command("speech", junk, junk, task="speech", max_seconds=0, out=err) == 2


def test_unknown_plugin_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "quiet.wav"
    _silence(wav)
    rttm = tmp_path / "a.rttm"
    rttm.write_text("SPEAKER f 1 0.5 1.0 <NA> <NA> s1 <NA> <NA>\n")
    assert eval_command("no-such-plugin", wav, rttm, out=io.StringIO()) == 2
    assert "unknown plugin 'no-such-plugin'" in capsys.readouterr().err


def _silence(path: Path, seconds: float = 3.0, rate: int = 16000) -> None:
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * round(seconds * rate))


# -- speech -------------------------------------------------------------------------------------


@needs_media
def test_speech_f1_on_the_two_speaker_sample() -> None:
    out = io.StringIO()
    code = eval_command(
        "speech",
        MEDIA / "speech_2speakers_pyannote_sample.wav",
        MEDIA / "speech_2speakers_pyannote_sample.rttm",
        out=out,
    )
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.getvalue().splitlines()[1:] if line.strip())
    f1 = float(lines["F1"])
    assert f1 >= 0.9, out.getvalue()
    assert float(lines["precision"]) >= 0.9
    assert float(lines["recall"]) >= 0.9


@needs_media
def test_speech_progress_and_max_seconds() -> None:
    out, progress = io.StringIO(), io.StringIO()
    code = eval_command(
        "speech",
        MEDIA / "speech_2speakers_pyannote_sample.wav",
        MEDIA / "speech_2speakers_pyannote_sample.rttm",
        max_seconds=10.0,
        out=out,
        progress=progress,
    )
    assert code == 0, out.getvalue()
    lines = dict(line.split(None, 1) for line in out.getvalue().splitlines()[1:] if line.strip())
    assert lines["frames"].split()[-1] == "1000"  # "frames (10 ms)": the first 10 s only
    assert progress.getvalue().startswith("eval: speech_2speakers_pyannote_sample.wav done (1/1")


# -- lip sync plumbing --------------------------------------------------------------------------


class XcorrOffset:
    """A test plugin that knows the clip's true audio and finds how far each window's audio moved.

    Real cross-correlation, so it recovers exactly the shift the evaluator applied (sign
    included) if, and only if, the windows carry the shifted audio the evaluator claims.
    """

    name = "xcorr"
    # Plugin contract v2 (branch wip-plugins) asks for these; v1 ignores them.
    provides = None
    metrics = ()

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def __init__(self, media: DecodedMedia, method: str = "xcorr", bias_ms: float = 0.0) -> None:
        self.media = media
        self.name = self.method = method  # registered under its method's name
        self.bias_ms = bias_ms
        # Silence on both sides: the daemon's windows reach up to a hop (1 s) and a shift beyond
        # the media, and the search adds half a second more.
        self.pad = 2 * media.audio_rate
        self.padded = np.pad(media.audio, self.pad)

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None

    def open(self, stream: StreamInfo) -> XcorrSession:
        return XcorrSession(self.method)

    def infer(self, batch: Sequence[Any]) -> list[float]:
        batch = [getattr(item, "window", item) for item in batch]  # v2 items carry the window
        out = []
        rate = self.media.audio_rate
        for w in batch:
            first = w.start_ns * rate // NS_PER_S
            best, best_lag = -np.inf, 0
            for lag_ms in range(-500, 501, 10):
                lag = lag_ms * rate // 1000
                lo = first + lag + self.pad
                ref = self.padded[lo : lo + len(w.audio)]
                ref = np.pad(ref, (0, len(w.audio) - len(ref)))  # past the padded end
                score = float(np.dot(ref * w.audio_valid, w.audio))
                if score > best:
                    best, best_lag = score, lag_ms
            out.append(float(best_lag) + self.bias_ms)
        return out


class XcorrConfig(PluginConfig):
    """The clip whose true audio the plugin correlates against."""

    clip: str
    #: The ``method`` its estimates carry, and a bias added to each.
    method: str = "xcorr"
    bias_ms: float = 0.0


class XcorrFactory:
    config_model = XcorrConfig
    provides = None

    @classmethod
    def create(cls, config: XcorrConfig, device: str) -> XcorrOffset:
        return XcorrOffset(decode_media(Path(config.clip)), config.method, config.bias_ms)


class XcorrSession:
    def __init__(self, method: str) -> None:
        self.method = method

    def update(self, window: Window, result: float) -> list[Event]:
        data = {"audio_lead_ms": result, "confidence": 1.0, "method": self.method}
        return [Event("sync.offset", window.stream, window.start_ns, window.end_ns, data)]

    def close(self) -> list[Event]:
        return []

    def status(self) -> dict[str, Any]:
        return {}


@needs_media
def test_lipsync_evaluation_follows_applied_shifts() -> None:
    registry = PluginRegistry({"xcorr": XcorrFactory})
    clip = {"clip": str(AOC)}
    metrics = evaluate_lipsync(
        [AOC], plugin="xcorr", overrides=clip, registry=registry, shifts_ms=(-200.0, 0.0, 120.0)
    )
    assert metrics.tolerance_ms == pytest.approx(40.0)
    assert len(metrics.estimates) == 3 * 4  # 8 s clip, 5 s windows, 1 s hop
    assert metrics.hit_rate("xcorr") == 1.0
    assert metrics.median_unshifted_ms("xcorr") == 0.0
    assert sorted({e.audio_lead_ms for e in metrics.estimates}) == [-200.0, 0.0, 120.0]
    out = io.StringIO()
    progress = io.StringIO()
    code = eval_command(
        "xcorr",
        AOC,
        None,
        task="lipsync",
        shifts_ms=(80.0, -40.0),
        overrides=clip,
        registry=registry,
        max_seconds=6.5,
        out=out,
        progress=progress,
    )
    assert code == 0
    assert "xcorr" in out.getvalue()
    assert "estimates       4" in out.getvalue()  # 6.5 s: two whole 5 s windows per shift
    assert progress.getvalue().count(" done (") == 2
    assert "shift +80 ms done" in progress.getvalue()
    assert "100.0%" in out.getvalue()
    # The per-clip table: the clip's 4 windows, all within, no error, no spread.
    row = next(line for line in out.getvalue().splitlines() if line.strip().startswith(AOC.name))
    assert row.split()[1:] == ["4", "100.0%", "+0.0", "n/a", "0.0"]


@needs_media
def test_other_plugins_run_beside_in_the_same_daemon_and_print_beside() -> None:
    # `--also`: a second offset plugin (here the same correlator, 60 ms off and named "biased")
    # runs over the same streams and windows; each method gets its line and its table.
    registry = PluginRegistry({"xcorr": XcorrFactory, "biased": XcorrFactory})
    clip = {"clip": str(AOC)}
    out = io.StringIO()
    code = eval_command(
        "xcorr",
        AOC,
        task="lipsync",
        shifts_ms=(0.0,),
        overrides=clip,
        registry=registry,
        max_seconds=6.5,
        out=out,
        also=[("biased", {**clip, "method": "biased", "bias_ms": 60.0})],
    )
    assert code == 0, out.getvalue()
    text = out.getvalue()
    assert text.splitlines()[0].startswith("lipsync  xcorr + biased  shifts +0 ms")
    assert "estimates       4" in text  # two windows, two plugins
    assert (
        "xcorr           within 40 ms: 100.0%   median at 0 shift: +0.0 ms (|offset| 0.0 ms)"
        in text
    )
    assert (
        "biased          within 40 ms: 0.0%   median at 0 shift: +60.0 ms (|offset| 60.0 ms)"
        in text
    )
    rows = [line.split() for line in text.splitlines() if line.strip().startswith(AOC.name)]
    assert [row[1:] for row in rows] == [  # by method: biased, xcorr
        ["2", "0.0%", "+60.0", "+60.0", "0.0"],
        ["2", "100.0%", "+0.0", "+0.0", "0.0"],
    ]


def test_also_is_refused_outside_lipsync_and_twice(capsys: pytest.CaptureFixture[str]) -> None:
    rttm = MEDIA / "speech_2speakers_pyannote_sample.rttm"
    code = eval_command("speech", AOC, rttm, also=[("avsync", {})])
    assert code == 2
    assert "--also is for --task lipsync, not speech" in capsys.readouterr().err
    code = eval_command("avsync", AOC, task="lipsync", also=[("avsync", {})])
    assert code == 2
    assert "each plugin once: avsync, avsync" in capsys.readouterr().err


def test_cli_set_reaches_the_also_plugin_named(capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodald.cli import main

    # A dotted key must name a plugin given with --also (checked before anything runs).
    code = main(["eval", "avsync", str(AOC), "--task", "lipsync", "--set", "speaker.turns=false"])
    assert code == 2
    assert "'speaker' is not a plugin given with --also" in capsys.readouterr().err


def test_a_set_value_is_json_where_it_parses_and_text_otherwise() -> None:
    from crossmodald.cli import parse_set

    assert parse_set("speaker.turns=false") == ("speaker.turns", False)
    assert parse_set('method="motion"') == ("method", "motion")
    assert parse_set("method=motion") == ("method", "motion")
    assert parse_set("max_lag_ms=300") == ("max_lag_ms", 300)
    assert parse_set("weights=a=b.pt") == ("weights", "a=b.pt")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_set("max_lag_ms")


# -- active speaker plumbing --------------------------------------------------------------------


class SideOracle:
    """A test plugin that calls the face on the side named by the stream the speaker.

    It tracks faces for real (so boxes come from the composed picture); with ``lie`` it names
    the other side, which the metric must score as wrong.
    """

    name = "oracle"
    provides = None
    metrics = ()

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def __init__(self, lie: bool = False) -> None:
        self.lie = lie
        self.trackers: dict[str, FaceTracker] = {}

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None

    def open(self, stream: StreamInfo) -> OracleSession:
        self.trackers[stream.name] = FaceTracker()
        side = stream.name if not self.lie else {"left": "right", "right": "left"}[stream.name]
        return OracleSession(stream.name, side, stream.width or 0)

    def infer(self, batch: Sequence[Any]) -> list[Any]:
        windows = [getattr(item, "window", item) for item in batch]  # v2 items carry the window
        return [self.trackers[w.stream].update(w.video) for w in windows]


class OracleConfig(PluginConfig):
    lie: bool = False


class OracleFactory:
    config_model = OracleConfig
    provides = None

    @classmethod
    def create(cls, config: OracleConfig, device: str) -> SideOracle:
        return SideOracle(config.lie)


ORACLE = PluginRegistry({"oracle": OracleFactory, "speech": SpeechFactory})


class OracleSession:
    def __init__(self, stream: str, side: str, width: int) -> None:
        self.stream, self.side, self.width = stream, side, width
        self.open: dict[int, tuple[int, int, list[float]]] = {}

    def update(self, window: Window, tracks: Any) -> list[Event]:
        for track in tracks:
            on_side = (track.last.box.cx < self.width / 2) == (self.side == "left")
            if on_side:
                start = self.open.get(track.track_id, (track.observations[0].pts_ns, 0, []))[0]
                end = track.last.pts_ns + 40 * NS_PER_MS
                self.open[track.track_id] = (start, end, track.last.box.as_list())
        return []

    def close(self) -> list[Event]:
        return [
            Event(
                "speaker",
                self.stream,
                s,
                e,
                {"track_id": tid, "box": box},
                Phase.END,
                ClockKind.PTS,
            )
            for tid, (s, e, box) in self.open.items()
        ]

    def status(self) -> dict[str, Any]:
        return {}


@needs_media
async def test_decode_and_evaluate_work_inside_a_running_loop() -> None:
    media = decode_media(AOC)  # reads on its own thread and loop
    assert len(media.video) == 200
    assert media.audio_rate == 16000
    registry = PluginRegistry({"xcorr": XcorrFactory})
    metrics = evaluate_lipsync(
        [AOC], plugin="xcorr", overrides={"clip": str(AOC)}, registry=registry, shifts_ms=(40.0,)
    )
    assert metrics.hit_rate() == 1.0


@needs_media
def test_compose_side_by_side(tmp_path: Path) -> None:
    out = compose_side_by_side(AOC, MARKEY, tmp_path / "two.mp4", audio_from="right", side_px=256)
    composed = decode_media(out)
    assert (composed.width, composed.height) == (512, 256)
    assert len(composed.video) == min(len(decode_media(c).video) for c in (AOC, MARKEY))
    assert composed.frame_rate == pytest.approx(25.0)
    tracks = FaceTracker().update(composed.video[:30])
    assert sorted(t.last.box.cx < 256 for t in tracks) == [False, True]
    # The audio is the right-hand clip's (AAC is lossy: compare envelopes).
    voice = decode_media(MARKEY)
    n = min(len(voice.audio), len(composed.audio)) - 4000
    lag = len(composed.audio) - len(voice.audio)
    env_a = np.abs(composed.audio[:n]).reshape(-1, 400).mean(axis=1)
    env_b = np.abs(voice.audio[:n]).reshape(-1, 400).mean(axis=1)
    assert np.corrcoef(env_a, env_b)[0, 1] > 0.9, lag
    other = decode_media(AOC)
    env_c = np.abs(other.audio[:n]).reshape(-1, 400).mean(axis=1)
    assert np.corrcoef(env_a, env_c)[0, 1] < 0.5


def _oracle_pair(out: io.StringIO | None, **options: Any) -> int:
    """``crossmodald eval oracle AOC --second MARKEY --task speaker`` with ``options``."""
    return eval_command(
        "oracle",
        AOC,
        **{"task": "speaker", "second": MARKEY, "registry": ORACLE, "out": out, **options},
    )


@needs_media
def test_speaker_evaluation_plays_both_voices_out_of_sync_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--shifts MS`` (one) for ``speaker``: both composed streams are read with their audio
    that much earlier (an out-of-sync stream, as ``crossmodald analyze --audio-shift-ms``
    reads it); two shifts, or a shift for a task without any, are refused."""
    import crossmodald.service.evaluate as evaluate

    read: list[MediaSourceConfig] = []

    def recorded(path: Path, name: str, audio_shift_ms: float = 0.0) -> MediaSourceConfig:
        config = media_source(path, name, audio_shift_ms)
        read.append(config)
        return config

    monkeypatch.setattr(evaluate, "media_source", recorded)
    out = io.StringIO()
    assert _oracle_pair(out, max_seconds=3.0, shifts_ms=[200.0]) == 0
    assert [(c.name, c.audio_shift_ms) for c in read] == [("left", 200.0), ("right", 200.0)]
    assert out.getvalue().splitlines()[0].endswith("audio +200 ms")
    for task, shifts in (("speaker", [100.0, 200.0]), ("speech", [100.0])):
        assert _oracle_pair(None, task=task, shifts_ms=shifts) == 2
        assert "--shifts is for --task lipsync (any number) and speaker (one)" in (
            capsys.readouterr().err
        )
    assert len(read) == 2  # nothing ran for the refused ones


@needs_media
def test_a_voice_from_off_screen_is_one_arrangement_where_no_face_should_speak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The oracle always names a face (here the right-hand one: the stream is neither side), so
    # with a third clip's voice its every speech frame is a miss of one face speaking.
    m = evaluate_speaker(
        AOC,
        MARKEY,
        plugin="oracle",
        registry=ORACLE,
        side_px=256,
        workdir=tmp_path,
        max_seconds=4.0,
        off_screen=AOC,
    )
    assert [name for name, _ in m.by_voice] == ["off-screen"]
    assert m.speech_frames > 50
    assert m.other_face > 0.9 * m.speech_frames
    assert m.correct + m.other_face + m.both_faces == m.speech_frames
    assert m.no_face == 0
    # ``crossmodald eval oracle AOC --second MARKEY --task speaker --off-screen AOC``.
    out = io.StringIO()
    assert _oracle_pair(out, off_screen=AOC, max_seconds=4.0) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(f"voice of {AOC.name}")
    assert lines[4].split() == [m.share(m.correct), m.share(m.other_face), m.share(m.both_faces)]
    assert _oracle_pair(None, task="lipsync", off_screen=AOC) == 2
    assert "--off-screen is for --task speaker, not lipsync" in capsys.readouterr().err


@needs_media
def test_speaker_evaluation_scores_the_side_that_speaks(tmp_path: Path) -> None:
    right = evaluate_speaker(
        AOC, MARKEY, plugin="oracle", registry=ORACLE, side_px=256, workdir=tmp_path
    )
    assert right.speech_frames > 200  # both arrangements, most of 8 s each
    assert right.accuracy > 0.9
    # Per arrangement, summing to the whole; every miss has a kind.
    assert [side for side, _ in right.by_voice] == ["left", "right"]
    assert sum(m.speech_frames for _, m in right.by_voice) == right.speech_frames
    assert sum(m.correct for _, m in right.by_voice) == right.correct
    for _, m in right.by_voice:
        assert m.correct + m.no_face + m.other_face + m.both_faces == m.speech_frames
    wrong = evaluate_speaker(
        AOC,
        MARKEY,
        plugin="oracle",
        overrides={"lie": True},
        registry=ORACLE,
        side_px=256,
        workdir=tmp_path,
        max_seconds=4.0,
    )
    assert 50 < wrong.speech_frames < right.speech_frames
    assert wrong.accuracy < 0.1
    assert wrong.other_face > 0.9 * wrong.speech_frames  # wrong picks, not a decision let go
    out = io.StringIO()
    assert _oracle_pair(out, overrides={"lie": True}, max_seconds=4.0) == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.getvalue().splitlines()[4:7]}
    assert list(rows) == ["left", "right", "all"]
    assert rows["all"][0] == str(wrong.speech_frames)
    assert rows["all"][3] == f"{wrong.other_face / wrong.speech_frames:.1%}"
    with pytest.raises(EvalError, match="no audio"):
        compose_side_by_side(
            AOC,
            MEDIA / "mouthroi_usr_lrs3style_96px_noaudio.avi",
            tmp_path / "x.mp4",
            audio_from="right",
        )


def test_windows_without_an_estimate_count_as_misses() -> None:
    from crossmodald.service.evaluate import LipSyncMetrics, OffsetEstimate

    metrics = LipSyncMetrics(
        40.0,
        [
            OffsetEstimate("a.mp4", 0.0, 10.0, 0.9, "motion"),
            OffsetEstimate("a.mp4", 0.0, None, 0.0, "motion"),
        ],
    )
    assert metrics.hit_rate() == 0.5
    assert metrics.median_unshifted_ms() == 10.0


def test_the_median_offset_in_sync_is_given_signed_and_by_its_size() -> None:
    from crossmodald.service.evaluate import LipSyncMetrics, OffsetEstimate

    # Clips read in sync at -20, +5 and +30 ms (and one shifted window, not counted): the
    # signed median (+5) hides how far they read from 0; the median |offset| is 20.
    readings = [(0.0, -20.0), (0.0, 5.0), (0.0, 30.0), (200.0, 200.0)]
    metrics = LipSyncMetrics(40.0, [OffsetEstimate("a.mp4", s, x, 0.9, "m") for s, x in readings])
    assert metrics.median_unshifted_ms() == 5.0
    assert metrics.median_abs_unshifted_ms() == 20.0
    assert LipSyncMetrics(40.0, []).median_abs_unshifted_ms() is None


def test_per_clip_summary_separates_a_stable_bias_from_scatter() -> None:
    from crossmodald.service.evaluate import LipSyncMetrics, OffsetEstimate

    biased = [OffsetEstimate("biased.mp4", s, s - 95.0 + d, 0.9, "m") for s, d in
              [(0.0, 0.0), (0.0, 1.0), (200.0, -1.0), (-200.0, 0.5)]]  # fmt: skip
    scattered = [OffsetEstimate("scattered.mp4", 0.0, x, 0.9, "m") for x in (-150.0, 5.0, 170.0)]
    missed = [OffsetEstimate("scattered.mp4", 120.0, None, 0.0, "m")]
    metrics = LipSyncMetrics(40.0, biased + scattered + missed)
    first, second = metrics.per_clip("m")
    assert (first.clip, first.windows, first.hit_rate) == ("biased.mp4", 4, 0.0)
    assert first.median_error_ms == pytest.approx(-94.75)
    assert first.median_unshifted_ms == pytest.approx(-94.5)
    assert first.spread_ms == pytest.approx(0.5)
    # The window without an estimate counts as a miss, not in the medians.
    assert (second.clip, second.windows, second.hit_rate) == ("scattered.mp4", 4, 0.25)
    assert second.median_error_ms == 5.0
    assert second.spread_ms == 155.0
    assert metrics.per_clip("other") == []
    # Relative to each clip's own reading at 0 shift, over the shifted windows: the biased clip
    # follows both of its shifts; the scattered clip's one shifted window gave no estimate.
    assert metrics.relative_hit_rate("m") == pytest.approx(2 / 3)
    assert metrics.relative_hit_rate("other") is None


def test_the_relative_figure_needs_the_clips_own_reading_at_zero() -> None:
    from crossmodald.service.evaluate import LipSyncMetrics, OffsetEstimate

    # No window at 0 shift for this clip: nothing to be relative to, so its windows are misses.
    metrics = LipSyncMetrics(40.0, [OffsetEstimate("c.mp4", 200.0, 200.0, 0.9, "m")])
    assert metrics.hit_rate("m") == 1.0
    assert metrics.relative_hit_rate("m") == 0.0


@needs_media
def test_cli_progress_goes_to_stderr_unless_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodald.cli import main

    args = [
        "eval",
        "speech",
        str(MEDIA / "speech_2speakers_pyannote_sample.wav"),
        str(MEDIA / "speech_2speakers_pyannote_sample.rttm"),
        "--max-seconds",
        "8",
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "frames (10 ms)  800" in out
    assert err.startswith("eval: speech_2speakers_pyannote_sample.wav done (1/1, ")
    assert main([*args, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "frames (10 ms)  800" in out
    assert err == ""
