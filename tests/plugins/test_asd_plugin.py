"""The ``speaker`` plugin on real talking-head clips, composed two-face clips and faceless video."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from chainkit import PluginChain, with_providers
from mediakit import make_windows, run_plugin

from crossmodald.bus.events import Event, Phase
from crossmodald.media import NS_PER_S, ClockKind, StreamInfo, Window
from crossmodald.runtime.plugin import Need
from crossmodald.service.evaluate import compose_side_by_side, decode_media
from crossmodald_plugins.asd import SpeakerConfig, SpeakerFactory, SpeakerPlugin, WeightsError
from crossmodald_plugins.asd.plugin import METHOD_FALLBACK, METHOD_MODEL, SpeakerResult
from crossmodald_plugins.products import FACE_TRACKS, SPEECH

CLIP = "talkinghead_hdtf_aoc_25fps.mp4"
OTHER = "talkinghead_hdtf_markey_25fps.mp4"


def _plugin(weights: Path | None = None, **extra: object) -> SpeakerPlugin:
    config = SpeakerConfig.model_validate({"type": "speaker", "weights": weights, **extra})
    return SpeakerFactory.create(config, "cpu")


@pytest.fixture
def ava_weights(shared_models: Path) -> Path:
    path = shared_models / "light-asd" / "pretrain_AVA_CVPR.model"
    if not path.is_file():
        pytest.skip(f"Light-ASD weights not available: {path} is absent")
    return path


def test_speaking_score_is_high_on_a_talking_head(shared_media: Path, ava_weights: Path) -> None:
    plugin = _plugin(ava_weights)
    assert plugin.method == METHOD_MODEL
    media = decode_media(shared_media / CLIP)
    windows = make_windows(media, "s", length_s=2.0, hop_s=2.0)
    chain = PluginChain(with_providers(plugin, plugin.config, "cpu"))  # faces, speech first
    chain.open(media.stream_info("s"))
    results: list[SpeakerResult] = chain.run(windows)["speaker"]  # all windows, one batch
    assert len(results) == len(windows)
    scores = np.concatenate([f.scores for r in results for f in r.faces])
    tracks = {f.track_id for r in results for f in r.faces}
    print(f"\n{CLIP}: mean speaking probability {scores.mean():.3f} over {len(scores)} frames")
    assert len(tracks) == 1
    assert len(scores) >= 0.9 * len(media.video)
    assert float(scores.mean()) > 0.6
    assert float(np.mean(scores > 0.5)) > 0.7


def test_speaker_events_carry_track_and_box(shared_media: Path, ava_weights: Path) -> None:
    media = decode_media(shared_media / CLIP)
    windows = make_windows(media, "s", length_s=2.0, hop_s=0.5)
    events = run_plugin(_plugin(ava_weights), {"s": (media.stream_info("s"), windows)})["s"]
    spans = [e for e in events if e.type == "speaker"]
    starts = [e for e in spans if e.phase is Phase.START]
    ends = [e for e in spans if e.phase is Phase.END]
    assert starts
    assert len(starts) == len(ends)  # every span closed, at the latest by close()
    for e in ends:
        assert e.data["track_id"] == 1
        assert len(e.data["box"]) == 4
        assert e.end_ns > e.start_ns
    speaking_s = sum(e.end_ns - e.start_ns for e in ends) / NS_PER_S
    assert speaking_s > 4.0  # of an 8 s clip of continuous talk with short pauses


def _speaker_accuracy(events: list[Event], media_path: Path, side: str) -> tuple[int, int]:
    """Frames (of those inside speaking spans of any face) given to the voiced side only."""
    media = decode_media(media_path)
    half = media.width / 2
    spans = [
        (e.start_ns, e.end_ns, float(e.data["box"][0]) + float(e.data["box"][2]) / 2)
        for e in events
        if e.type == "speaker" and e.phase is Phase.END
    ]
    right = total = 0
    for frame in media.video:
        sides = {"left" if cx < half else "right" for s, e, cx in spans if s <= frame.pts_ns < e}
        if sides:
            total += 1
            right += sides == {side}
    return right, total


def test_fallback_picks_the_voiced_face_of_two(shared_media: Path, tmp_path: Path) -> None:
    plugin = _plugin(None)
    assert plugin.method == METHOD_FALLBACK
    right = total = 0
    for side in ("left", "right"):
        path = compose_side_by_side(
            shared_media / CLIP, shared_media / OTHER, tmp_path / f"{side}.mp4",
            audio_from=side, side_px=256, duration_s=6.0,
        )  # fmt: skip
        media = decode_media(path)
        windows = make_windows(media, side, length_s=2.0, hop_s=0.5)
        events = run_plugin(plugin, {side: (media.stream_info(side), windows)})[side]
        r, t = _speaker_accuracy(events, path, side)
        right, total = right + r, total + t
    share = right / max(total, 1)
    print(f"\nweight-free fallback: voiced face alone on {share:.1%} of {total} speaking frames")
    assert total > 50
    assert share > 0.7


def _faceless_windows(n: int) -> list[Window]:
    rng = np.random.default_rng(1)
    frames = []
    from crossmodald.ingest.frames import video_frame_from_luma

    for i in range(n * 50):
        luma = np.full((240, 320), 60, np.uint8)
        frames.append(video_frame_from_luma("x", i * 40_000_000, 0, luma, ClockKind.PTS))
    out = []
    for w in range(n):
        start = w * 2 * NS_PER_S
        audio = (0.1 * rng.standard_normal(32000)).astype(np.float32)
        out.append(
            Window("x", w, start, start + 2 * NS_PER_S, tuple(frames[w * 50 : (w + 1) * 50]),
                   audio, np.ones(32000, np.bool_), 16000, 25.0, ClockKind.PTS)
        )  # fmt: skip
    return out


@pytest.mark.parametrize("use_model", [False, True])
def test_no_face_gives_no_speaker_and_a_zero_confidence_offset(
    use_model: bool, shared_models: Path
) -> None:
    weights = shared_models / "light-asd" / "pretrain_AVA_CVPR.model" if use_model else None
    if weights is not None and not weights.is_file():
        pytest.skip(f"Light-ASD weights not available: {weights} is absent")
    plugin = _plugin(weights)
    info = StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS)
    events = run_plugin(plugin, {"x": (info, _faceless_windows(3))})["x"]
    assert not [e for e in events if e.type == "speaker"]
    offsets = [e for e in events if e.type == "sync.offset"]
    assert len(offsets) == 3
    for e in offsets:
        assert e.data["audio_lead_ms"] is None
        assert e.data["confidence"] == 0.0
        assert e.data["reason"] == "no face"
        assert e.data["method"] == (METHOD_MODEL if use_model else METHOD_FALLBACK)


def test_bad_weights_fall_back_or_disable(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.model"
    bad.write_bytes(b"not a model")
    assert _plugin(bad).method == METHOD_FALLBACK
    with pytest.raises(WeightsError, match=r"corrupt\.model: not a readable PyTorch state dict"):
        _plugin(bad, on_weights_error="disable")
    with pytest.raises(WeightsError, match=r"missing\.model: Light-ASD weights file not found"):
        _plugin(tmp_path / "missing.model", on_weights_error="disable")


def test_check_stream() -> None:
    plugin = _plugin(None)
    assert plugin.check_stream(StreamInfo("a", "x", False, True)) == "has no video"
    assert plugin.check_stream(StreamInfo("a", "x", True, False)) == "has no audio"
    assert plugin.check_stream(StreamInfo("a", "x", True, True)) is None


# -- dialogue turns -----------------------------------------------------------------------------


def _turn_schema() -> dict[str, object]:
    import json

    from crossmodald.bus.events import __file__ as events_file

    schema = json.loads((Path(events_file).parent / "event.schema.json").read_text("utf-8"))
    turn: dict[str, object] = schema["$defs"]["dialogue.turn"]
    return turn


def test_dialogue_turns_name_the_voiced_face(shared_media: Path, tmp_path: Path) -> None:
    import jsonschema

    path = compose_side_by_side(
        shared_media / CLIP, shared_media / OTHER, tmp_path / "right.mp4",
        audio_from="right", side_px=256, duration_s=6.0,
    )  # fmt: skip
    media = decode_media(path)
    windows = make_windows(media, "r", length_s=2.0, hop_s=0.5)
    plugin = _plugin(None)
    assert Need(SPEECH) in plugin.config.requires()  # turns are on by default
    events = run_plugin(plugin, {"r": (media.stream_info("r"), windows)})["r"]
    side_of = {
        e.data["track_id"]: float(e.data["box"][0]) + float(e.data["box"][2]) / 2 > 128
        for e in events
        if e.type == "speaker"
    }
    turns = [e for e in events if e.type == "dialogue.turn"]
    assert turns, "no dialogue.turn for 6 s of talk"
    validator = jsonschema.Draft202012Validator(_turn_schema())
    for e in turns:
        validator.validate(dict(e.data))
        assert e.end_ns > e.start_ns
        assert e.data["method"] == METHOD_FALLBACK
    voiced = sum(e.end_ns - e.start_ns for e in turns if side_of.get(e.data["speaker"]) is True)
    on_screen = sum(e.end_ns - e.start_ns for e in turns if e.data["speaker"] != "off-screen")
    total = sum(e.end_ns - e.start_ns for e in turns)
    print(
        f"\ndialogue turns: {len(turns)} over {total / NS_PER_S:.2f} s; "
        f"{on_screen / NS_PER_S:.2f} s on a face, {voiced / NS_PER_S:.2f} s on the voiced one"
    )
    assert total > 3 * NS_PER_S  # most of 6 s of continuous talk is speech
    # The weight-free scores need a second or two of context before a face counts as speaking
    # (those turns are off-screen); the time given to a face must go to the voiced one.
    assert on_screen > NS_PER_S
    assert voiced / on_screen > 0.7
    # Turns never overlap: each stretch of speech is attributed once.
    spans = sorted((e.start_ns, e.end_ns) for e in turns)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_speech_without_a_face_is_off_screen(shared_media: Path) -> None:
    voice = decode_media(shared_media / "speech_jfk_whisper.flac")
    rate = voice.audio_rate
    frames = []
    from crossmodald.ingest.frames import video_frame_from_luma

    luma = np.full((240, 320), 60, np.uint8)
    for i in range(6 * 25):
        frames.append(video_frame_from_luma("x", i * 40_000_000, 0, luma, ClockKind.PTS))
    windows = []
    for w in range(3):
        start, n = w * 2 * NS_PER_S, 2 * rate
        audio = voice.audio[w * n : (w + 1) * n]
        windows.append(
            Window("x", w, start, start + 2 * NS_PER_S, tuple(frames[w * 50 : (w + 1) * 50]),
                   audio, np.ones(n, np.bool_), rate, 25.0, ClockKind.PTS)
        )  # fmt: skip
    info = StreamInfo("x", "test", True, True, 25.0, rate, 320, 240, ClockKind.PTS)
    events = run_plugin(_plugin(None), {"x": (info, windows)})["x"]
    turns = [e for e in events if e.type == "dialogue.turn"]
    assert turns  # JFK speaks from the start
    assert {e.data["speaker"] for e in turns} == {"off-screen"}
    assert all(e.data["score"] == 0.0 for e in turns)


def test_turns_can_be_switched_off() -> None:
    plugin = _plugin(None, turns=False)
    assert plugin.config.requires() == (Need(FACE_TRACKS),)
    info = StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS)
    events = run_plugin(plugin, {"x": (info, _faceless_windows(2))})["x"]
    assert not [e for e in events if e.type == "dialogue.turn"]


def _two_faces(first: list[float], second: list[float]) -> SpeakerResult:
    from crossmodald_plugins.asd.plugin import SLOT_NS, FaceSpeaking

    pts = np.arange(len(first), dtype=np.int64) * SLOT_NS
    faces = tuple(
        FaceSpeaking(
            track_id=track_id,
            pts_ns=pts,
            boxes=((x, 50.0, 80.0, 80.0),) * len(scores),
            scores=np.array(scores, np.float32),
        )
        for track_id, x, scores in ((1, 10.0, first), (2, 200.0, second))
    )
    return SpeakerResult(faces, None, METHOD_MODEL, ())


@pytest.mark.parametrize("single", [False, True])
def test_single_speaker_lets_only_the_best_face_speak(single: bool) -> None:
    plugin = _plugin(None, turns=False, lipsync=False, single_speaker=single)
    session = plugin.open(StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS))
    window = _faceless_windows(1)[0]
    # Both faces score above the threshold; face 1 higher for 20 slots, then face 2 for 20.
    result = _two_faces([0.9] * 20 + [0.6] * 20, [0.8] * 20 + [0.95] * 20)
    events = [e for e in session.update(window, result) if e.type == "speaker"]
    starts = [(e.data["track_id"], e.start_ns) for e in events if e.phase is Phase.START]
    ends = [e.data["track_id"] for e in events if e.phase is Phase.END]
    if not single:
        assert sorted(t for t, _ in starts) == [1, 2]
        assert not ends
    else:
        # Face 1 speaks first; when face 2 becomes the best, face 1 ends and face 2 starts.
        assert [t for t, _ in starts] == [1, 2]
        assert ends == [1]
        assert starts[1][1] >= 20 * 40_000_000


def test_speaker_end_carries_the_last_box_while_speaking() -> None:
    from crossmodald_plugins.asd.plugin import SLOT_NS, FaceSpeaking

    plugin = _plugin(None, turns=False, lipsync=False)
    session = plugin.open(StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS))
    n = 30
    face = FaceSpeaking(
        track_id=1,
        pts_ns=np.arange(n, dtype=np.int64) * SLOT_NS,
        boxes=tuple((10.0 + i, 50.0, 80.0, 80.0) for i in range(n)),  # the face moves right
        scores=np.array([0.9] * 20 + [0.1] * 10, np.float32),
    )
    events = session.update(_faceless_windows(1)[0], SpeakerResult((face,), None, METHOD_MODEL))
    start, end = (e for e in events if e.type == "speaker")
    assert start.phase is Phase.START
    assert end.phase is Phase.END
    assert start.data["box"][0] < end.data["box"][0] == 10.0 + 19
