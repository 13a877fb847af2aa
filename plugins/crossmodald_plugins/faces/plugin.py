"""The ``faces`` plugin: face tracks per stream as ``face`` start/update/end events."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from crossmodald.bus.events import Event, Phase
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import PluginConfig
from crossmodald_plugins.faces.tracker import FaceObservation, FaceTracker, FaceTrackerConfig, Track

EVENT_TYPE = "face"


class FacesConfig(PluginConfig):
    """``[[plugins]]`` table of the ``faces`` plugin (see :class:`FaceTrackerConfig`)."""

    type: str = "faces"
    detect_every: int = Field(5, ge=1, le=250)
    min_face: float = Field(0.12, ge=0.01, le=1.0)
    cascade: Literal["frontalface_default", "frontalface_alt", "frontalface_alt2"] = (
        "frontalface_default"
    )
    min_neighbors: int = Field(4, ge=0, le=50)
    confirm_hits: int = Field(2, ge=1, le=50)
    max_missed: int = Field(2, ge=0, le=1000)
    #: Emit one ``update`` per window per face (with its latest box), besides start and end.
    updates: bool = True

    def tracker_config(self) -> FaceTrackerConfig:
        return FaceTrackerConfig(
            detect_every=self.detect_every,
            min_face=self.min_face,
            cascade=self.cascade,
            min_neighbors=self.min_neighbors,
            confirm_hits=self.confirm_hits,
            max_missed=self.max_missed,
        )


@dataclass(frozen=True, slots=True)
class FacesResult:
    """What :meth:`FacesPlugin.infer` found in one window: the tracks on its frames."""

    tracks: tuple[Track, ...]


def _payload(track_id: int, obs: FaceObservation) -> dict[str, Any]:
    return {"track_id": track_id, "box": obs.box.as_list(), "mouth": obs.mouth.as_list()}


class FacesSession:
    """Per-stream lifecycle of face tracks (start, update, end)."""

    def __init__(self, plugin: FacesPlugin, stream: StreamInfo) -> None:
        self._plugin = plugin
        self._stream = stream
        # track id -> (first pts, latest observation) of tracks that have started
        self._open: dict[int, tuple[int, FaceObservation]] = {}
        self._last_window: Window | None = None

    def update(self, window: Window, result: FacesResult) -> list[Event]:
        """Events for the tracks in one window's result."""
        events: list[Event] = []
        frame_ns = _frame_ns(window)
        self._last_window = window
        for track in result.tracks:
            last = track.last
            if track.track_id not in self._open:
                first = track.observations[0]
                events.append(
                    self._event(
                        track.track_id, first, first.pts_ns, first.pts_ns, Phase.START, window
                    )
                )
            self._open[track.track_id] = (track.first_pts_ns, last)
            if track.ended_pts_ns is not None:
                events.append(
                    self._event(
                        track.track_id,
                        last,
                        track.first_pts_ns,
                        last.pts_ns + frame_ns,
                        Phase.END,
                        window,
                    )
                )
                del self._open[track.track_id]
            elif self._plugin.config.updates:
                events.append(
                    self._event(
                        track.track_id, last, window.start_ns, window.end_ns, Phase.UPDATE, window
                    )
                )
        return events

    def close(self) -> list[Event]:
        """End every open track; forget this stream's tracker."""
        self._plugin.drop_stream(self._stream.name)
        window = self._last_window
        if window is None:
            return []  # no window ever came: no track started
        # As a track that ends mid-stream: the end is one frame after its last sighting.
        events = [
            self._event(track_id, obs, first_ns, obs.pts_ns + _frame_ns(window), Phase.END, window)
            for track_id, (first_ns, obs) in sorted(self._open.items())
        ]
        self._open.clear()
        return events

    def _event(
        self,
        track_id: int,
        obs: FaceObservation,
        start_ns: int,
        end_ns: int,
        phase: Phase,
        window: Window,
    ) -> Event:
        return Event(
            type=EVENT_TYPE,
            stream=window.stream,
            start_ns=start_ns,
            end_ns=end_ns,
            data=_payload(track_id, obs),
            phase=phase,
            clock=window.clock,
            closed_ns=window.closed_ns,
        )


def _frame_ns(window: Window) -> int:
    if window.frame_rate:
        return round(1e9 / window.frame_rate)
    return 0


class FacesPlugin:
    """One tracker per stream; detection and tracking run in :meth:`infer` (worker thread)."""

    name = "faces"

    def __init__(self, config: FacesConfig) -> None:
        self.config = config
        self._tracker_config = config.tracker_config()
        self._trackers: dict[str, FaceTracker] = {}
        # open()/close() run on the event loop, infer() on a worker thread.
        self._lock = threading.Lock()

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_video else "has no video"

    def open(self, stream: StreamInfo) -> FacesSession:
        with self._lock:
            self._trackers[stream.name] = FaceTracker(self._tracker_config)
        return FacesSession(self, stream)

    def drop_stream(self, name: str) -> None:
        """Forget a stream's tracker (its session closed)."""
        with self._lock:
            self._trackers.pop(name, None)

    def tracker(self, stream: str) -> FaceTracker:
        """The tracker of a stream (created on first use)."""
        with self._lock:
            tracker = self._trackers.get(stream)
            if tracker is None:
                tracker = self._trackers[stream] = FaceTracker(self._tracker_config)
            return tracker

    def infer(self, batch: Sequence[Window]) -> list[FacesResult]:
        """Track faces through each window's frames (each stream's windows in order).

        Haar detection does not batch; the work per window is one detector pass every
        ``detect_every`` new frames plus optical flow on the rest.
        """
        return [FacesResult(tuple(self.tracker(w.stream).update(w.video))) for w in batch]


class FacesFactory:
    """Entry point ``faces`` of group ``crossmodald.plugins``."""

    config_model: ClassVar[type[PluginConfig]] = FacesConfig

    @classmethod
    def create(cls, config: Any, device: str) -> FacesPlugin:
        """Build the plugin (``device`` is unused: the detector runs on the CPU)."""
        if not isinstance(config, FacesConfig):
            raise TypeError(f"faces: expected FacesConfig, got {type(config).__name__}")
        # Fail at load time, with the file named, if the cascade is missing.
        FaceTracker(config.tracker_config())
        return FacesPlugin(config)
