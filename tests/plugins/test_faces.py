"""Faces: Haar detection every N frames, optical-flow tracking, stable ids, face events."""

from __future__ import annotations

import itertools
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from mediakit import make_windows, run_plugin

from crossmodald.bus.events import Phase
from crossmodald.ingest.frames import video_frame_from_luma
from crossmodald.media import NS_PER_S, ClockKind, StreamInfo, VideoFrame, Window
from crossmodald.service.evaluate import decode_media
from crossmodald_plugins.faces import (
    Box,
    FacesConfig,
    FacesFactory,
    FaceTracker,
    FaceTrackerConfig,
    crop,
    load_cascade,
)

MEDIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "media"
needs_media = pytest.mark.skipif(
    not MEDIA.is_dir(), reason=f"shared test media not found at {MEDIA} (../shared/media)"
)
HDTF = [
    "talkinghead_hdtf_aoc_25fps.mp4",
    "talkinghead_hdtf_markey_25fps.mp4",
    "talkinghead_hdtf_WDA_BobMenendez_000.mp4",
    "talkinghead_hdtf_RD_Radio2_000.mp4",
    "talkinghead_hdtf_RD_Radio34_000.mp4",
]
FRAME_NS = NS_PER_S // 25


@cache
def _frames(name: str) -> tuple[VideoFrame, ...]:
    return decode_media(MEDIA / name).video


def _blank(count: int, shape: tuple[int, int] = (360, 640), first: int = 0) -> list[VideoFrame]:
    rng = np.random.default_rng(0)
    return [
        video_frame_from_luma(
            "s",
            (first + i) * FRAME_NS,
            0,
            rng.integers(0, 40, shape, dtype=np.uint8),
            ClockKind.PTS,
        )
        for i in range(count)
    ]


def _side_by_side(left: str, right: str, count: int) -> list[VideoFrame]:
    a, b = _frames(left), _frames(right)
    return [
        video_frame_from_luma(
            "two", a[i].pts_ns, 0, np.hstack([a[i].luma, b[i].luma]), ClockKind.PTS
        )
        for i in range(count)
    ]


# -- geometry -----------------------------------------------------------------------------------


def test_box_geometry() -> None:
    a = Box(0, 0, 10, 10)
    assert a.iou(Box(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert a.iou(Box(20, 20, 5, 5)) == 0.0
    grown = a.scaled_about_centre(1.4)
    assert (grown.cx, grown.cy, grown.w) == pytest.approx((5, 5, 14))
    mouth = Box(100, 100, 200, 200).mouth()
    assert mouth.x >= 150
    assert mouth.x + mouth.w <= 250
    assert mouth.y >= 200
    assert mouth.y + mouth.h <= 300


def test_crop_pads_outside_the_picture() -> None:
    luma = np.full((100, 100), 200, np.uint8)
    inside = crop(luma, Box(10, 10, 50, 50), 20)
    assert inside.shape == (20, 20)
    assert (inside == 200).all()
    edge = crop(luma, Box(-50, 0, 100, 100), 10)
    assert (edge[:, :4] == 0).all()
    assert (edge[:, 6:] == 200).all()
    with pytest.raises(ValueError, match="positive size"):
        crop(luma, Box(0, 0, 0, 5), 10)


def test_bad_config_and_missing_cascade_are_named() -> None:
    with pytest.raises(ValueError, match="detect_every"):
        FaceTrackerConfig(detect_every=0)
    with pytest.raises(ValueError, match="cascade"):
        FaceTrackerConfig(cascade="eyes")
    with pytest.raises(FileNotFoundError, match=r"haarcascade_nonexistent\.xml"):
        load_cascade("nonexistent")
    with pytest.raises(ValueError, match="extra"):
        FacesConfig.model_validate({"type": "faces", "detect_evry": 3})


# -- no face ------------------------------------------------------------------------------------


def test_no_face_no_tracks_no_events() -> None:
    plugin = FacesFactory.create(FacesConfig(), "cpu")
    frames = tuple(_blank(60))
    info = StreamInfo(name="s", kind="test", has_video=True, has_audio=False, frame_rate=25.0)
    windows = [
        Window(
            "s",
            i,
            i * NS_PER_S // 2,
            i * NS_PER_S // 2 + 2 * NS_PER_S,
            tuple(f for f in frames if i * NS_PER_S // 2 <= f.pts_ns < (i + 4) * NS_PER_S // 2),
            np.zeros(0, np.float32),
            np.zeros(0, np.bool_),
            0,
            25.0,
            ClockKind.PTS,
        )
        for i in range(2)
    ]
    assert run_plugin(plugin, {"s": (info, windows)}) == {"s": []}
    assert plugin.check_stream(info) is None
    assert (
        plugin.check_stream(StreamInfo("a", "t", has_video=False, has_audio=True)) == "has no video"
    )
    assert FaceTracker().update([]) == []


# -- real faces ---------------------------------------------------------------------------------


@needs_media
@pytest.mark.parametrize("name", HDTF)
def test_one_stable_track_for_a_whole_talking_head_clip(name: str) -> None:
    frames = _frames(name)
    tracker = FaceTracker()
    ids: set[int] = set()
    seen: dict[int, Box] = {}
    # Overlapping 2 s windows with a 0.5 s hop, as the windower delivers them.
    for start in range(0, len(frames), 12):
        window = frames[max(0, start - 38) : start + 12]
        tracks = tracker.update(window)
        assert len(tracks) <= 1
        for track in tracks:
            ids.add(track.track_id)
            for obs in track.observations:
                if obs.pts_ns in seen:  # answered from history: the same box as before
                    assert obs.box == seen[obs.pts_ns]
                seen[obs.pts_ns] = obs.box
    assert ids == {1}
    # Every frame after confirmation (2nd detection, frame 5) has a box on the face.
    assert len(seen) >= len(frames) - 5
    height, width = frames[0].height, frames[0].width
    for box in seen.values():
        assert 0.25 * height < box.h < 0.95 * height
        assert 0 < box.cx < width
    # Tracked boxes move smoothly: no jump larger than a tenth of the face per frame.
    boxes = [seen[p] for p in sorted(seen)]
    steps = [abs(b.cx - a.cx) + abs(b.cy - a.cy) for a, b in itertools.pairwise(boxes)]
    assert max(steps) < 0.1 * boxes[0].w


@needs_media
def test_two_faces_side_by_side_get_two_tracks_with_the_right_boxes() -> None:
    left, right = HDTF[0], HDTF[1]
    frames = _side_by_side(left, right, 50)
    tracks = FaceTracker().update(frames)
    assert len(tracks) == 2
    by_side = sorted(tracks, key=lambda t: t.last.box.cx)
    width = frames[0].width
    assert by_side[0].last.box.cx < width / 2 < by_side[1].last.box.cx
    # Each box matches the one found on the clip alone (shifted for the right-hand clip).
    alone_left = FaceTracker().update(_frames(left)[:50])[0].last.box
    alone_right = FaceTracker().update(_frames(right)[:50])[0].last.box
    shifted = Box(alone_right.x + width / 2, alone_right.y, alone_right.w, alone_right.h)
    assert by_side[0].last.box.iou(alone_left) > 0.8
    assert by_side[1].last.box.iou(shifted) > 0.8
    assert len({t.track_id for t in tracks}) == 2


@needs_media
def test_a_face_that_leaves_ends_and_a_returning_face_gets_a_new_id() -> None:
    face = list(_frames(HDTF[0])[:30])
    gone = _blank(30, face[0].luma.shape, first=30)
    back = [
        video_frame_from_luma("s", (60 + i) * FRAME_NS, 0, f.luma, ClockKind.PTS)
        for i, f in enumerate(face)
    ]
    tracker = FaceTracker(FaceTrackerConfig(detect_every=5, max_missed=2))
    first = tracker.update(face)
    assert [t.track_id for t in first] == [1]
    assert first[0].ended_pts_ns is None
    lost = tracker.update(gone)
    assert [t.track_id for t in lost] == [1]
    assert lost[0].ended_pts_ns is not None
    assert lost[0].ended_pts_ns < 45 * FRAME_NS
    again = tracker.update(back)
    assert [t.track_id for t in again] == [2]


@needs_media
def test_plugin_events_start_update_end_with_boxes() -> None:
    assert "faces" in {ep.name for ep in entry_points(group="crossmodald.plugins")}
    media = decode_media(MEDIA / HDTF[0])
    plugin = FacesFactory.create(FacesConfig(), "cpu")
    windows = make_windows(media, "cam", length_s=2.0, hop_s=0.5)[:6]
    events = run_plugin(plugin, {"cam": (media.stream_info("cam"), windows)})["cam"]
    assert all(e.type == "face" for e in events)
    phases = [e.phase for e in events]
    assert phases[0] is Phase.START
    assert phases[-1] is Phase.END
    assert phases.count(Phase.START) == phases.count(Phase.END) == 1
    assert phases.count(Phase.UPDATE) == len(windows)
    for event in events:
        assert event.data["track_id"] == 1
        x, y, w, h = event.data["box"]
        assert w > 100
        assert 0 <= x + w / 2 <= media.width
        _mx, my, _mw, _mh = event.data["mouth"]
        assert y < my < y + h
    end = events[-1]
    assert end.start_ns == events[0].start_ns < end.end_ns
    # The stream ended with the face in view: closing ends the track one frame after its last
    # sighting, as a track that leaves mid-stream ends, stamped with the last window's close.
    last_frame_ns = windows[-1].video[-1].pts_ns
    assert end.end_ns == last_frame_ns + FRAME_NS
    assert end.closed_ns == windows[-1].closed_ns
