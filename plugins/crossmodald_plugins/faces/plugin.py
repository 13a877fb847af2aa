"""The ``faces`` plugin: face tracks per stream as ``face`` start/update/end events.

It provides :data:`~crossmodald_plugins.products.FACE_TRACKS`: its result for a window (the tracks
on the window's frames) goes to every consumer, so a stream has one tracker however many
plugins use faces. The tracker is the host-owned per-stream state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from crossmodald.bus.events import Event, JsonValue, Phase
from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, PluginConfig, ProductKey
from crossmodald_plugins.faces.tracker import FaceObservation, FaceTracker, FaceTrackerConfig
from crossmodald_plugins.products import FACE_TRACKS, FaceTracks

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


#: What :meth:`FacesPlugin.infer` finds in one window (the shared product's type).
FacesResult = FaceTracks


def _payload(track_id: int, obs: FaceObservation) -> dict[str, Any]:
    return {"track_id": track_id, "box": obs.box.as_list(), "mouth": obs.mouth.as_list()}


class FacesSession:
    """Per-stream lifecycle of face tracks (start, update, end)."""

    def __init__(self, plugin: FacesPlugin, stream: StreamInfo) -> None:
        self._plugin = plugin
        self._stream = stream
        self._faces_seen = 0
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
                self._faces_seen += 1
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

    def status(self) -> Mapping[str, JsonValue]:
        """Faces on screen now and tracks started so far."""
        return {"faces": len(self._open), "tracks_started": self._faces_seen}

    def close(self) -> list[Event]:
        """End every open track."""
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
    """Face detection and tracking; the per-stream :class:`FaceTracker` is host-owned state."""

    name = "faces"
    provides: ClassVar[ProductKey[Any]] = FACE_TRACKS
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("crossmodald_stream_faces", "gauge", "Face tracks on screen.", "faces"),
    )

    def __init__(self, config: FacesConfig) -> None:
        self.config = config
        self._tracker_config = config.tracker_config()

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_video else "has no video"

    def new_state(self, stream: StreamInfo) -> FaceTracker:
        """The stream's tracker."""
        return FaceTracker(self._tracker_config)

    def open(self, stream: StreamInfo) -> FacesSession:
        return FacesSession(self, stream)

    def infer(self, batch: Sequence[BatchItem[FaceTracker]]) -> list[FaceTracks]:
        """Track faces through each window's frames (each stream's windows in order).

        Haar detection does not batch; the work per window is one detector pass every
        ``detect_every`` new frames plus optical flow on the rest.
        """
        return [FaceTracks(tuple(item.state.update(item.window.video))) for item in batch]


class FacesFactory:
    """Entry point ``faces`` of group ``crossmodald.plugins``."""

    config_model: ClassVar[type[PluginConfig]] = FacesConfig
    provides: ClassVar[ProductKey[Any] | None] = FACE_TRACKS

    @classmethod
    def create(cls, config: Any, device: str) -> FacesPlugin:
        """Build the plugin (``device`` is unused: the detector runs on the CPU)."""
        if not isinstance(config, FacesConfig):
            raise TypeError(f"faces: expected FacesConfig, got {type(config).__name__}")
        # Fail at load time, with the file named, if the cascade is missing.
        FaceTracker(config.tracker_config())
        return FacesPlugin(config)
