"""The ``lips`` plugin: Face Mesh lip landmarks for every face track (product ``lips.poses``).

It consumes the shared face tracks (:data:`~crossmodald_plugins.products.FACE_TRACKS`) and
provides :data:`~crossmodald_plugins.products.LIP_POSES`, so every plugin that wants lips reads
the same landmarks and Face Mesh runs once per face per frame, however many windows overlap a
frame and however many consumers there are. Per stream it keeps one Face Mesh tracker per face
track and a bounded history of poses by frame time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from crossmodald.bus.events import Event, JsonValue
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, Need, PluginConfig, ProductKey
from crossmodald_plugins.products import FACE_TRACKS, LIP_POSES, LipPoses, TrackLips

from .landmarks import POSE_DIM, LipLandmarker, crop_rect


class LipsConfig(PluginConfig):
    """``[[plugins]]`` table of the ``lips`` plugin (it emits no events of its own)."""

    type: str = "lips"
    #: Frames of lip poses kept per face track (answers for overlapping windows).
    history_frames: int = Field(500, ge=10, le=100_000)

    def requires(self) -> tuple[Need, ...]:
        return (Need(FACE_TRACKS),)


class _TrackState:
    def __init__(self, limit: int) -> None:
        self.marker = LipLandmarker()
        self.poses: OrderedDict[int, npt.NDArray[np.float32] | None] = OrderedDict()
        self.limit = limit

    def add(self, pts: int, pose: npt.NDArray[np.float32] | None) -> None:
        self.poses[pts] = pose
        while len(self.poses) > self.limit:
            self.poses.popitem(last=False)


class LipsState:
    """Per stream: a Face Mesh tracker and pose history per face track."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tracks: dict[int, _TrackState] = {}

    def close(self, track_id: int) -> None:
        state = self.tracks.pop(track_id, None)
        if state is not None:
            state.marker.close()

    def close_all(self) -> None:
        for track_id in list(self.tracks):
            self.close(track_id)


class LipsSession:
    """No events: the product is for other plugins."""

    def update(self, window: Window, result: LipPoses) -> list[Event]:
        return []

    def status(self) -> Mapping[str, JsonValue]:
        return {}

    def close(self) -> list[Event]:
        return []


class LipsPlugin:
    """Lip poses per face track (see the module docstring)."""

    name = "lips"
    provides: ClassVar[ProductKey[Any]] = LIP_POSES
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, config: LipsConfig) -> None:
        self.config = config

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_video else "has no video"

    def new_state(self, stream: StreamInfo) -> LipsState:
        return LipsState(self.config.history_frames)

    def open(self, stream: StreamInfo) -> LipsSession:
        return LipsSession()

    def infer(self, batch: Sequence[BatchItem[LipsState]]) -> list[LipPoses]:
        """Face Mesh on each track's new frames (crop around its box); older ones from history."""
        return [self._window(item) for item in batch]

    def finish(self, state: LipsState) -> None:
        """The stream ended: close the Face Mesh graphs of the face tracks it still had. A
        graph that is only dropped is never freed (about 20 MB each, kept for the life of the
        process: a daemon whose publishers come and go would grow with every stream)."""
        state.close_all()

    def _window(self, item: BatchItem[LipsState]) -> LipPoses:
        state = item.state
        lumas = {f.pts_ns: f.luma for f in item.window.video}
        out: list[TrackLips] = []
        for track in item.inputs[FACE_TRACKS].tracks:
            ts = state.tracks.get(track.track_id)
            if ts is None:
                ts = state.tracks[track.track_id] = _TrackState(state.limit)
            pts_list: list[int] = []
            poses = np.zeros((len(track.observations), POSE_DIM), np.float32)
            valid = np.zeros(len(track.observations), np.bool_)
            for i, obs in enumerate(track.observations):
                pts_list.append(obs.pts_ns)
                if obs.pts_ns in ts.poses:
                    pose = ts.poses[obs.pts_ns]
                elif obs.pts_ns in lumas:
                    b = obs.box
                    pose = ts.marker.pose_crop(lumas[obs.pts_ns], crop_rect(b.cx, b.cy, b.w, b.h))
                    ts.add(obs.pts_ns, pose)
                else:
                    pose = None
                if pose is not None:
                    poses[i] = pose
                    valid[i] = True
            out.append(TrackLips(track.track_id, np.array(pts_list, np.int64), poses, valid))
            if track.ended_pts_ns is not None:
                state.close(track.track_id)
        return LipPoses(tuple(out))


class LipsFactory:
    """Entry point ``lips`` of group ``crossmodald.plugins``."""

    config_model: ClassVar[type[PluginConfig]] = LipsConfig
    provides: ClassVar[ProductKey[Any] | None] = LIP_POSES

    @classmethod
    def create(cls, config: Any, device: str) -> LipsPlugin:
        """Build the plugin; fails at load time when mediapipe is missing."""
        if not isinstance(config, LipsConfig):
            raise TypeError(f"lips: expected LipsConfig, got {type(config).__name__}")
        LipLandmarker().close()
        return LipsPlugin(config)
