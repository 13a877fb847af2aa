"""Dialogue turns: speech segments attributed to face tracks (or off-screen)."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodald.media import NS_PER_MS, NS_PER_S
from crossmodald_plugins.vad import OFF_SCREEN, SpeechSegment, TrackScores, attribute_turns

FRAME_NS = 40 * NS_PER_MS


def _track(track_id: int, start_s: float, end_s: float, score_of: object) -> TrackScores:
    pts = np.arange(round(start_s * NS_PER_S), round(end_s * NS_PER_S), FRAME_NS, dtype=np.int64)
    scores = np.array([score_of(p / NS_PER_S) for p in pts], dtype=np.float32)  # type: ignore[operator]
    return TrackScores(track_id, pts, scores)


def _seg(start_s: float, end_s: float) -> SpeechSegment:
    return SpeechSegment(round(start_s * NS_PER_S), round(end_s * NS_PER_S), 0.9)


def test_each_segment_goes_to_the_face_speaking_in_it() -> None:
    a = _track(1, 0, 10, lambda t: 0.9 if t < 4 else 0.1)
    b = _track(2, 0, 10, lambda t: 0.8 if t >= 5 else 0.2)
    turns = attribute_turns([_seg(5.2, 8.0), _seg(0.5, 3.5)], [a, b])
    assert [(t.speaker, t.start_ns, t.end_ns) for t in turns] == [
        (1, round(0.5 * NS_PER_S), round(3.5 * NS_PER_S)),
        (2, round(5.2 * NS_PER_S), 8 * NS_PER_S),
    ]
    assert turns[0].confidence == pytest.approx(1.0)
    assert turns[0].score == pytest.approx(0.9, abs=1e-6)


def test_nobody_speaking_or_no_faces_is_off_screen() -> None:
    quiet = _track(3, 0, 10, lambda t: 0.1)
    (turn,) = attribute_turns([_seg(1, 3)], [quiet])
    assert turn.speaker is None
    assert turn.event("cam").data["speaker"] == OFF_SCREEN
    (alone,) = attribute_turns([_seg(1, 3)], [])
    assert alone.speaker is None
    # A face that left the picture before the segment cannot be its speaker.
    gone = _track(4, 0, 0.8, lambda t: 0.99)
    (later,) = attribute_turns([_seg(2, 4)], [gone])
    assert later.speaker is None


def test_a_speaker_change_without_a_pause_splits_the_segment() -> None:
    a = _track(1, 0, 10, lambda t: 0.9 if t < 3 else 0.05)
    b = _track(2, 0, 10, lambda t: 0.9 if t >= 3 else 0.05)
    turns = attribute_turns([_seg(1, 6)], [a, b])
    assert [t.speaker for t in turns] == [1, 2]
    assert turns[0].start_ns == NS_PER_S
    assert turns[-1].end_ns == 6 * NS_PER_S
    assert turns[0].end_ns == turns[1].start_ns
    assert abs(turns[0].end_ns - 3 * NS_PER_S) <= 2 * FRAME_NS


def test_flicker_is_smoothed_into_one_turn() -> None:
    # Face 1 speaks, with single-frame dropouts to face 2 every 0.2 s.
    a = _track(1, 0, 10, lambda t: 0.1 if round(t * 25) % 5 == 0 else 0.9)
    b = _track(2, 0, 10, lambda t: 0.6 if round(t * 25) % 5 == 0 else 0.1)
    turns = attribute_turns([_seg(1, 4)], [a, b])
    assert [t.speaker for t in turns] == [1]
    assert 0.7 < turns[0].confidence < 0.9


def test_event_shape() -> None:
    a = _track(7, 0, 5, lambda t: 0.95)
    (turn,) = attribute_turns([_seg(1, 2)], [a])
    event = turn.event("cam")
    assert event.type == "dialogue.turn"
    assert event.stream == "cam"
    assert event.data["speaker"] == 7
    assert (event.start_ns, event.end_ns) == (NS_PER_S, 2 * NS_PER_S)


def test_mismatched_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="track 5"):
        TrackScores(5, np.zeros(3, np.int64), np.zeros(4, np.float32))
