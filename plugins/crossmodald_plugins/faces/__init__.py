"""Faces: detection (OpenCV Haar cascade, shipped in ``opencv-python-headless``) and tracking.

The ``faces`` plugin emits ``face`` events per stream: ``start`` when a new face track is
confirmed, ``update`` once per window while it lasts, ``end`` when it is lost (or the stream
ends). Every event's ``data`` holds ``track_id`` (int, stable per stream) and ``box``
(``[x, y, w, h]`` in pixels of the full-resolution picture) and ``mouth`` (the same for the mouth
region).

Importable API (used by other plugins, e.g. active speaker), pure OpenCV/numpy, no torch::

    from crossmodald_plugins.faces import FaceTracker, FaceTrackerConfig, Track, Box, crop

    tracker = FaceTracker(FaceTrackerConfig(detect_every=5))   # one per stream
    tracks: list[Track] = tracker.update(window.video)          # frames in pts order
    for track in tracks:
        track.track_id                   # stable int id, never reused in this tracker
        for obs in track.observations:   # one per input frame the face is on, pts order
            obs.pts_ns, obs.box, obs.mouth, obs.detected   # Box(x, y, w, h) in luma pixels
        track.ended_pts_ns               # set once the track was lost (last frame's pts)
    face = crop(frame.luma, obs.box.scaled_about_centre(1.4), 112)   # uint8 (112, 112)

``update`` processes only frames newer than any it has seen, so overlapping windows cost
nothing twice, and answers older frames of the input from a bounded history (``history_s``).
Detection runs every ``detect_every`` frames; between detections boxes follow the median
Lucas-Kanade optical flow of corner points inside them. A detection is matched to a track by
IoU; a new face becomes a reported track after ``confirm_hits`` detections, and a track ends
after ``max_missed`` detector passes without a match.
"""

from __future__ import annotations

from crossmodald_plugins.faces.plugin import FacesConfig, FacesFactory, FacesPlugin, FacesResult
from crossmodald_plugins.faces.tracker import (
    CASCADES,
    Box,
    FaceObservation,
    FaceTracker,
    FaceTrackerConfig,
    Track,
    crop,
    load_cascade,
)

__all__ = [
    "CASCADES",
    "Box",
    "FaceObservation",
    "FaceTracker",
    "FaceTrackerConfig",
    "FacesConfig",
    "FacesFactory",
    "FacesPlugin",
    "FacesResult",
    "Track",
    "crop",
    "load_cascade",
]
