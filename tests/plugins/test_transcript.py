"""The transcript plugin: Whisper (the packaged tiny.en) on the shared VAD, through the daemon.

Speech comes from espeak-ng (known sentences, made here) and from the JFK clip in
../shared/media; each test skips with a reason when what it needs is absent.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import numpy as np
import pytest
from chainkit import PluginChain
from mediakit import make_windows
from speechkit import LONG_SENTENCE, SENTENCES, Spoken, compose, espeak_available

from crossmodald.bus import EventBus, event_schema
from crossmodald.bus.events import Event, Phase
from crossmodald.harness import run_plugins_sync
from crossmodald.media import NS_PER_S, StreamInfo, VideoFrame, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, PluginConfig, ProductKey
from crossmodald.service.evaluate import decode_media
from crossmodald.service.wer import wer

pytest.importorskip("faster_whisper", reason="faster-whisper is not installed (extra: transcript)")

from crossmodald_plugins.faces.tracker import Box, FaceObservation, Track
from crossmodald_plugins.products import (
    FACE_TRACKS,
    SPEAKING,
    FaceSpeaking,
    FaceTracks,
    SpeakingFaces,
)
from crossmodald_plugins.transcript import (
    ModelError,
    TranscriptConfig,
    TranscriptFactory,
    TranscriptPlugin,
    default_model_dir,
)
from crossmodald_plugins.transcript.model import Clip, Decoded, WhisperEngine
from crossmodald_plugins.vad import SpeechConfig, SpeechFactory

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)

try:
    default_model_dir()
except ModelError as exc:  # pragma: no cover - the CI installs it
    pytest.skip(str(exc), allow_module_level=True)


@pytest.fixture(scope="module")
def plugin() -> TranscriptPlugin:
    return TranscriptFactory.create(TranscriptConfig(), "cpu")


@pytest.fixture(scope="module")
def sentences(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Spoken]]:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "sentences.wav"
    return path, compose(path, SENTENCES[:3])


def _run(path: Path, **table: Any) -> list[Event]:
    result = run_plugins_sync(
        [{"type": "media", "name": "s", "url": str(path), "realtime": False}],
        [{"type": "transcript", "device": "cpu", **table}],
    )
    assert result.failures() == []
    return result.events("s")


def _finals(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if e.type == "transcript" and e.phase is Phase.END]


@needs_espeak
def test_sentences_are_transcribed_with_words_on_media_time(
    sentences: tuple[Path, list[Spoken]],
) -> None:
    path, spoken = sentences
    events = _run(path, partials=False)
    finals = _finals(events)
    assert len(finals) == len(spoken), [f.data["text"] for f in finals]
    total = wer(" ".join(s.text for s in spoken), " ".join(str(f.data["text"]) for f in finals))
    assert total.wer <= 0.35, [f.data["text"] for f in finals]
    for final, said in zip(finals, spoken, strict=True):
        data = final.data
        assert data["final"] is True
        assert data["language"] == "en"
        assert data["speaker"] is None
        assert data["speaker_method"] == "none"
        assert data["incomplete"] is False
        assert data["error"] is None
        words = data["words"]
        assert isinstance(words, list)
        assert words
        starts = [int(w["start_ns"]) for w in words]
        assert starts == sorted(starts)
        # Words lie on the stream's media time, where the sentence was spoken.
        assert abs(starts[0] / NS_PER_S - said.start_s) < 0.35
        assert abs(int(words[-1]["end_ns"]) / NS_PER_S - said.end_s) < 0.5
        assert final.start_ns <= starts[0]
        assert int(words[-1]["end_ns"]) <= final.end_ns


@needs_espeak
def test_transcript_events_match_the_schema(sentences: tuple[Path, list[Spoken]]) -> None:
    path, _spoken = sentences
    events = [e for e in _run(path, partials=False) if e.type == "transcript"]
    bus = EventBus(replay_size=100, subscriber_queue=100, slow_subscriber_s=1.0)
    validator = jsonschema.Draft202012Validator(event_schema())
    assert events
    for event in events:
        validator.validate(json.loads(bus.publish(event).json))
    bad = bus.publish(dataclasses.replace(events[0], data={**events[0].data, "words": "x"}))
    assert list(validator.iter_errors(json.loads(bad.json)))


def test_jfk_clip_word_error_rate_and_word_times(shared_media: Path) -> None:
    reference = (
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country."
    )
    events = _run(shared_media / "speech_jfk_whisper.flac", partials=False)
    finals = _finals(events)
    hypothesis = " ".join(str(f.data["text"]) for f in finals)
    assert wer(reference, hypothesis).wer <= 0.05, hypothesis
    words = [w for f in finals for w in f.data["words"]]  # type: ignore[union-attr]
    americans = [w for w in words if "american" in str(w["word"]).lower()]
    assert americans, hypothesis
    # SOURCES.md: the word "Americans" spans t = 1.8 s.
    assert int(americans[0]["start_ns"]) <= 1.8 * NS_PER_S <= int(americans[0]["end_ns"])


@needs_espeak
def test_a_stream_that_ends_mid_sentence_still_gets_its_final(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    spoken = compose(path, [SENTENCES[0], SENTENCES[3]], cut_last_s=1.6)
    finals = _finals(_run(path, partials=False))
    assert len(finals) == 2
    last = finals[-1]
    assert last.data["text"], "the open segment was transcribed when the stream ended"
    assert abs(last.end_ns / NS_PER_S - spoken[-1].end_s) < 0.3


# -- partials and overload (the plugin behind the real speech plugin, window by window) --------


@pytest.fixture(scope="module")
def long_windows(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Window], list[Spoken]]:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "long.wav"
    spoken = compose(path, [LONG_SENTENCE], lead_s=0.5, tail_s=1.0)
    return make_windows(decode_media(path), "s"), spoken


def _chain(plugin: TranscriptPlugin, *extra: tuple[Any, PluginConfig]) -> PluginChain:
    speech_config = SpeechConfig()
    speech = SpeechFactory.create(speech_config, "cpu")
    return PluginChain([(speech, speech_config), *extra, (plugin, plugin.config)])


def _feed(chain: PluginChain, windows: Sequence[Window]) -> list[Event]:
    info = StreamInfo("s", "media", has_video=False, has_audio=True, sample_rate=22050)
    chain.open(info)
    for window in windows:
        chain.run([window])
    status = chain.status("s")["transcript"]
    chain.close("s")
    events = chain.events["transcript"]["s"]
    return [*events, Event("test.status", "s", 0, 0, dict(status))]


def test_partials_about_every_two_seconds_then_the_final(
    plugin: TranscriptPlugin, long_windows: tuple[list[Window], list[Spoken]]
) -> None:
    windows, spoken = long_windows
    assert spoken[0].end_s - spoken[0].start_s > 5.0
    # Fed as fast as it decodes: the load rule must not drop partials here.
    config = plugin.config.model_copy(update={"max_partial_load": 1.0})
    *events, status = _feed(_chain(TranscriptPlugin(config, plugin.engine)), windows)
    partials = [e for e in events if e.phase is Phase.UPDATE]
    finals = [e for e in events if e.phase is Phase.END]
    assert len(finals) == 1
    assert finals[0].data["final"] is True
    assert len(partials) >= 2
    ends = [p.end_ns / NS_PER_S for p in partials]
    assert all(1.4 <= b - a <= 2.6 for a, b in itertools.pairwise(ends)), ends
    # Each partial is the same segment so far: its text grows towards the final's.
    assert all(p.data["segment"] == finals[0].data["segment"] for p in partials)
    assert len(str(partials[-1].data["text"])) > len(str(partials[0].data["text"]))
    assert wer(LONG_SENTENCE, str(finals[0].data["text"])).wer <= 0.35
    assert status.data["partials"] == len(partials)
    assert status.data["partials_dropped"] == 0


@needs_espeak
def test_a_final_after_a_pause_reuses_the_speculative_partial(
    plugin: TranscriptPlugin, sentences: tuple[Path, list[Spoken]]
) -> None:
    path, spoken = sentences
    config = plugin.config.model_copy(update={"max_partial_load": 1.0})
    windows = make_windows(decode_media(path), "s")
    *events, _status = _feed(_chain(TranscriptPlugin(config, plugin.engine)), windows)
    finals = [e for e in events if e.phase is Phase.END]
    assert len(finals) == len(spoken)
    reused = [
        f
        for f in finals
        if any(
            p.phase is Phase.UPDATE
            and (p.start_ns, p.end_ns, p.data["text"], p.data["decode_ms"])
            == (f.start_ns, f.end_ns, f.data["text"], f.data["decode_ms"])
            for p in events
        )
    ]
    # When the pause that ends a segment began in an earlier window than the one that
    # confirmed it, the final took the words transcribed then (no second Whisper call).
    assert reused, [(f.start_ns, f.end_ns) for f in finals]


def test_late_partials_are_dropped_and_counted_but_the_final_is_not(
    plugin: TranscriptPlugin, long_windows: tuple[list[Window], list[Spoken]]
) -> None:
    windows, _spoken = long_windows
    # Every window closed 10 s ago: the plugin is far behind, as under overload.
    stale = time.monotonic_ns() - 10 * NS_PER_S
    late = [dataclasses.replace(w, closed_ns=stale) for w in windows]
    *events, status = _feed(_chain(plugin), late)
    assert [e.phase for e in events] == [Phase.END]
    assert events[0].data["text"]
    assert status.data["partials"] == 0
    assert int(status.data["partials_dropped"]) >= 2  # type: ignore[call-overload]
    assert status.data["finals"] == 1


def test_partials_are_dropped_while_whisper_is_busy(
    plugin: TranscriptPlugin, long_windows: tuple[list[Window], list[Spoken]]
) -> None:
    windows, _spoken = long_windows
    busy = TranscriptPlugin(plugin.config, plugin.engine)
    # Whisper busy for 3 of the last 4 s (other streams' finals, say) all through the test
    # (the call is dated in the future so that it stays in the span): over max_partial_load.
    now = time.monotonic_ns()
    busy._calls.append((now + 600 * NS_PER_S, 3 * NS_PER_S))
    *events, status = _feed(_chain(busy), windows)
    assert [e.phase for e in events] == [Phase.END]
    assert status.data["partials"] == 0
    assert int(status.data["partials_dropped"]) >= 2  # type: ignore[call-overload]


def test_a_segment_longer_than_max_segment_s_is_finalised_in_pieces(
    plugin: TranscriptPlugin, long_windows: tuple[list[Window], list[Spoken]]
) -> None:
    windows, _spoken = long_windows
    config = plugin.config.model_copy(update={"max_segment_s": 4.0, "partials": False})
    *events, _status = _feed(_chain(TranscriptPlugin(config, plugin.engine)), windows)
    finals = [e for e in events if e.phase is Phase.END]
    assert len(finals) >= 2
    assert [f.data["cut"] for f in finals][:-1] == [True] * (len(finals) - 1)
    assert finals[-1].data["cut"] is False
    for a, b in itertools.pairwise(finals):
        assert a.end_ns == b.start_ns  # the pieces follow each other without a gap
        assert a.end_ns - a.start_ns <= 4 * NS_PER_S + 600_000_000
    text = " ".join(str(f.data["text"]) for f in finals)
    assert wer(LONG_SENTENCE, text).wer <= 0.45, text


# -- who said what ----------------------------------------------------------------------------


class ScriptedSpeakingConfig(PluginConfig):
    type: str = "scripted"


class ScriptedSpeaking:
    """Provides SPEAKING like the speaker plugin: track 7 talks in the first span, 9 after."""

    name = "scripted"
    provides: ClassVar[ProductKey[Any]] = SPEAKING
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, switch_s: float) -> None:
        self.switch_ns = round(switch_s * NS_PER_S)

    def check_stream(self, stream: StreamInfo) -> None:
        return None

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> Any:
        return _NoEvents()

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[SpeakingFaces]:
        out = []
        for item in batch:
            w = item.window
            pts = np.arange(w.start_ns, w.end_ns, 40_000_000, dtype=np.int64)
            first = pts < self.switch_ns
            faces = tuple(
                FaceSpeaking(
                    track,
                    pts,
                    tuple((0.0, 0.0, 10.0, 10.0) for _ in pts),
                    np.where(first == (track == 7), 0.9, 0.1).astype(np.float32),
                )
                for track in (7, 9)
            )
            out.append(SpeakingFaces(faces, threshold=0.5))
        return out


class _NoEvents:
    def update(self, window: Window, result: Any) -> list[Event]:
        return []

    def close(self) -> list[Event]:
        return []

    def status(self) -> dict[str, Any]:
        return {}


@needs_espeak
def test_words_go_to_the_face_that_was_speaking(plugin: TranscriptPlugin, tmp_path: Path) -> None:
    path = tmp_path / "two.wav"
    spoken = compose(path, [SENTENCES[0], SENTENCES[2]], gap_s=1.5)
    switch_s = (spoken[0].end_s + spoken[1].start_s) / 2
    scripted = (ScriptedSpeaking(switch_s), ScriptedSpeakingConfig())
    *events, _status = _feed(_chain(plugin, scripted), make_windows(decode_media(path), "s"))
    finals = [e for e in events if e.phase is Phase.END]
    assert [f.data["speaker"] for f in finals] == [7, 9]
    assert all(f.data["speaker_method"] == "speaking_scores" for f in finals)
    for final, track in zip(finals, (7, 9), strict=True):
        assert {w["speaker"] for w in final.data["words"]} == {track}  # type: ignore[union-attr]


class ScriptedFacesConfig(PluginConfig):
    type: str = "scripted_faces"


class ScriptedFaces:
    """Provides FACE_TRACKS like the faces plugin: no face before ``appear_s``, one after."""

    name = "scripted_faces"
    provides: ClassVar[ProductKey[Any]] = FACE_TRACKS
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, appear_s: float) -> None:
        self.appear_ns = round(appear_s * NS_PER_S)

    def check_stream(self, stream: StreamInfo) -> None:
        return None

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> Any:
        return _NoEvents()

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[FaceTracks]:
        out = []
        for item in batch:
            box = Box(10.0, 10.0, 40.0, 40.0)
            seen = tuple(
                FaceObservation(f.pts_ns, box, box, True)
                for f in item.window.video
                if f.pts_ns >= self.appear_ns
            )
            out.append(FaceTracks((Track(5, seen, seen[0].pts_ns),) if seen else ()))
        return out


def _with_frames(window: Window) -> Window:
    """The window with a small grey frame every 40 ms (an audio file has no picture)."""
    luma = np.zeros((8, 8), np.uint8)
    frames = tuple(
        VideoFrame("s", pts, 0, luma, luma)
        for pts in range(-(-window.start_ns // 40_000_000) * 40_000_000, window.end_ns, 40_000_000)
    )
    return dataclasses.replace(window, video=frames, frame_rate=25.0)


@needs_espeak
def test_with_face_tracks_alone_words_said_with_no_face_on_screen_are_off_screen(
    plugin: TranscriptPlugin, tmp_path: Path
) -> None:
    path = tmp_path / "two.wav"
    spoken = compose(path, [SENTENCES[0], SENTENCES[2]], gap_s=1.5)
    appear_s = (spoken[0].end_s + spoken[1].start_s) / 2
    faces = (ScriptedFaces(appear_s), ScriptedFacesConfig())
    windows = [_with_frames(w) for w in make_windows(decode_media(path), "s")]
    *events, _status = _feed(_chain(plugin, faces), windows)
    finals = [e for e in events if e.phase is Phase.END]
    assert [f.data["speaker_method"] for f in finals] == ["face_tracks"] * 2
    # Nobody on screen: off-screen. A face on screen, but no speaking scores: unknown.
    assert [f.data["speaker"] for f in finals] == ["off-screen", None]


# -- failures -------------------------------------------------------------------------------


class BrokenEngine(WhisperEngine):
    """The real engine whose decoding fails (a CUDA out-of-memory, say)."""

    def decode(self, clips: Sequence[Clip]) -> list[Decoded]:
        raise RuntimeError("out of memory")


@needs_espeak
def test_a_final_whisper_failed_on_is_published_with_the_error(
    plugin: TranscriptPlugin, long_windows: tuple[list[Window], list[Spoken]]
) -> None:
    windows, _spoken = long_windows
    engine = plugin.engine
    broken = BrokenEngine(engine.path, engine.choice)
    *events, status = _feed(_chain(TranscriptPlugin(plugin.config, broken)), windows)
    finals = [e for e in events if e.phase is Phase.END]
    assert len(finals) == 1
    assert finals[0].data["text"] == ""
    assert "out of memory" in str(finals[0].data["error"])
    assert int(status.data["errors"]) >= 1  # type: ignore[call-overload]


def test_device_choice_follows_what_ctranslate2_sees() -> None:
    import ctranslate2

    from crossmodald_plugins.transcript.model import choose_device

    cpu = choose_device("cpu", "auto", strict=False)
    assert (cpu.device, cpu.compute_type) == ("cpu", "int8")
    assert choose_device("cpu", "float32", strict=False).compute_type == "float32"
    if ctranslate2.get_cuda_device_count() > 0:
        gpu = choose_device("cuda:0", "auto", strict=True)
        assert (gpu.device, gpu.index, gpu.compute_type) == ("cuda", 0, "float16")
    else:
        # device = "auto" resolved to CUDA for torch, but CTranslate2 cannot use it: the CPU.
        assert choose_device("cuda:0", "auto", strict=False).device == "cpu"
        with pytest.raises(ModelError, match="no CUDA device"):
            choose_device("cuda:0", "auto", strict=True)


@pytest.mark.gpu
def test_whisper_on_cuda_in_float16(tmp_path: Path) -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:
        pytest.skip("no CUDA device that CTranslate2 can use")
    plugin = TranscriptFactory.create(TranscriptConfig(device="cuda"), "cuda:0")
    assert plugin.engine.choice.compute_type == "float16"
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path / "s.wav"
    spoken = compose(path, SENTENCES[1:3])
    finals = _finals(_run(path, partials=False, device="cuda"))
    text = " ".join(str(f.data["text"]) for f in finals)
    assert wer(" ".join(s.text for s in spoken), text).wer <= 0.35, text


def test_bad_model_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        TranscriptConfig(model=tmp_path / "nowhere")
    with pytest.raises(ModelError, match=r"no CTranslate2 model\.bin"):
        TranscriptFactory.create(TranscriptConfig(model=tmp_path), "cpu")
    config = TranscriptConfig()
    assert [(n.key.name, n.optional) for n in config.requires()] == [
        ("speech.probs", False),
        ("speaker.faces", True),
        ("faces.tracks", True),
    ]
