"""Face detection (OpenCV Haar cascade) every N frames, optical-flow tracking in between.

Pure computer vision: no asyncio, no torch. One :class:`FaceTracker` per stream; feed it the
video frames of each window in pts order (overlapping windows are fine: frames it has already
seen are answered from its history, never processed twice).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from crossmodald.media import NS_PER_S, U8Image, VideoFrame

#: Cascade files shipped inside ``opencv-python-headless`` (``cv2.data.haarcascades``).
CASCADES = ("frontalface_default", "frontalface_alt", "frontalface_alt2")

# The Haar cascades were trained on 24x24 windows; a face this many pixels wide at the detection
# scale is found reliably, so the picture is shrunk until the smallest wanted face is this big.
_DETECT_FACE_PX = 26.0


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixels of the full-resolution picture (``VideoFrame.luma``).

    Attributes:
        x: Left edge.
        y: Top edge.
        w: Width.
        h: Height.
    """

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        """Horizontal centre."""
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        """Vertical centre."""
        return self.y + self.h / 2

    @property
    def area(self) -> float:
        return max(0.0, self.w) * max(0.0, self.h)

    def iou(self, other: Box) -> float:
        """Intersection over union with ``other`` (0 when they do not overlap)."""
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def scaled_about_centre(self, factor: float) -> Box:
        """The box grown (factor > 1) or shrunk about its centre."""
        w, h = self.w * factor, self.h * factor
        return Box(self.cx - w / 2, self.cy - h / 2, w, h)

    def mouth(self) -> Box:
        """The mouth region of a frontal face box from the Haar cascade.

        The cascade's box runs from the brows to the chin; the mouth sits in the middle half of
        the width and between about 62 % and 95 % of the height.
        """
        return Box(self.x + 0.25 * self.w, self.y + 0.62 * self.h, 0.5 * self.w, 0.33 * self.h)

    def as_list(self) -> list[float]:
        """``[x, y, w, h]`` rounded to 0.1 px, for event payloads."""
        return [round(self.x, 1), round(self.y, 1), round(self.w, 1), round(self.h, 1)]

    def lerp(self, other: Box, weight: float) -> Box:
        """Blend towards ``other`` by ``weight`` (0 keeps self, 1 gives other)."""
        keep = 1.0 - weight
        return Box(
            self.x * keep + other.x * weight,
            self.y * keep + other.y * weight,
            self.w * keep + other.w * weight,
            self.h * keep + other.h * weight,
        )


@dataclass(frozen=True, slots=True)
class FaceObservation:
    """Where one track's face is on one frame.

    Attributes:
        pts_ns: The frame's pts.
        box: The face box.
        mouth: The mouth region inside it.
        detected: True on frames where the detector confirmed the face; False where the box was
            carried by optical flow (or held still).
    """

    pts_ns: int
    box: Box
    mouth: Box
    detected: bool


@dataclass(frozen=True, slots=True)
class Track:
    """One face followed over time, as seen in the frames of one :meth:`FaceTracker.update`.

    Attributes:
        track_id: Stable id within the tracker (1, 2, ...); never reused.
        observations: One per input frame on which the track existed, in pts order.
        first_pts_ns: Pts of the first frame the track was ever seen on (it may predate the
            frames of this update).
        ended_pts_ns: Pts of the last frame of a track that has ended (lost for too long),
            None while it lives.
    """

    track_id: int
    observations: tuple[FaceObservation, ...]
    first_pts_ns: int
    ended_pts_ns: int | None = None

    @property
    def last(self) -> FaceObservation:
        """The latest observation in this update."""
        return self.observations[-1]

    def box_at(self, pts_ns: int) -> Box | None:
        """The box on the frame with this pts, or None when the track was not on it."""
        for obs in self.observations:
            if obs.pts_ns == pts_ns:
                return obs.box
        return None


@dataclass(frozen=True, slots=True)
class FaceTrackerConfig:
    """Tuning of :class:`FaceTracker`.

    Attributes:
        detect_every: Run the detector on every N-th frame; track by optical flow in between.
        min_face: Smallest face to find, as a fraction of the picture's shorter side.
        cascade: Which OpenCV cascade (see :data:`CASCADES`).
        scale_factor: Step between detector scales.
        min_neighbors: Detector hits needed to accept a face (higher: fewer false faces).
        match_iou: Least IoU between a detection and a track's box for them to be the same face.
        confirm_hits: Detections needed before a new track is reported (drops one-off false hits).
        max_missed: Detector passes a track may go unmatched before it ends.
        history_s: How long per-frame boxes are kept to answer overlapping windows.
        smoothing: Weight of a new detection against the tracked box (1: jump to the detection).
    """

    detect_every: int = 5
    min_face: float = 0.12
    cascade: str = "frontalface_default"
    scale_factor: float = 1.2
    min_neighbors: int = 4
    match_iou: float = 0.3
    confirm_hits: int = 2
    max_missed: int = 2
    history_s: float = 10.0
    smoothing: float = 0.6

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if not 0.01 <= self.min_face <= 1.0:
            raise ValueError(f"min_face must be within 0.01..1, got {self.min_face}")
        if self.cascade not in CASCADES:
            raise ValueError(f"cascade must be one of {', '.join(CASCADES)}, got {self.cascade!r}")
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {self.scale_factor}")
        if not 0.0 < self.match_iou < 1.0:
            raise ValueError(f"match_iou must be within (0, 1), got {self.match_iou}")
        if self.confirm_hits < 1 or self.max_missed < 0 or self.min_neighbors < 0:
            raise ValueError("confirm_hits must be >= 1, max_missed and min_neighbors >= 0")
        if self.history_s <= 0:
            raise ValueError(f"history_s must be positive, got {self.history_s}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be within (0, 1], got {self.smoothing}")


@dataclass(slots=True)
class _TrackState:
    track_id: int
    box: Box
    first_pts_ns: int
    hits: int = 1
    missed: int = 0
    confirmed: bool = False
    ended_pts_ns: int | None = None
    history: deque[FaceObservation] = field(default_factory=deque)


def load_cascade(name: str) -> cv2.CascadeClassifier:
    """Load an OpenCV Haar cascade shipped in the ``opencv-python-headless`` package.

    Raises:
        FileNotFoundError: The cascade file is missing or unreadable.
    """
    folder: str = cv2.data.haarcascades  # type: ignore[attr-defined]
    path = f"{folder}haarcascade_{name}.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise FileNotFoundError(f"face cascade {path}: missing or not a cascade file")
    return cascade


class FaceTracker:
    """Faces of one stream: detection every N frames, optical-flow tracking between them.

    Example:
        >>> tracker = FaceTracker()
        >>> for window in windows:  # doctest: +SKIP
        ...     for track in tracker.update(window.video):
        ...         print(track.track_id, track.last.box)
    """

    def __init__(self, config: FaceTrackerConfig | None = None) -> None:
        self.config = config or FaceTrackerConfig()
        self._cascade = load_cascade(self.config.cascade)
        self._tracks: list[_TrackState] = []
        self._finished: deque[_TrackState] = deque()
        self._next_id = 1
        self._frame_count = 0
        self._last_pts_ns: int | None = None
        self._prev_small: U8Image | None = None
        #: Calls of :meth:`update` (one per window in the daemon: shows the work is not repeated).
        self.updates = 0
        self._flow_scale = 1.0

    @property
    def last_pts_ns(self) -> int | None:
        """Pts of the newest frame processed, None before the first."""
        return self._last_pts_ns

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so they are never reused)."""
        self._tracks.clear()
        self._finished.clear()
        self._frame_count = 0
        self._last_pts_ns = None
        self._prev_small = None

    def update(self, frames: Sequence[VideoFrame]) -> list[Track]:
        """Process the frames not seen yet and report every track present in ``frames``.

        Args:
            frames: Video frames in pts order (e.g. ``Window.video``); frames at or before the
                newest one already processed are answered from history.

        Returns:
            The confirmed tracks with at least one observation among ``frames``, by track id.
            A track that ended during these frames has ``ended_pts_ns`` set.
        """
        self.updates += 1
        for frame in frames:
            if self._last_pts_ns is None or frame.pts_ns > self._last_pts_ns:
                self._process(frame)
        if not frames:
            return []
        wanted = {frame.pts_ns for frame in frames}
        lo, hi = frames[0].pts_ns, frames[-1].pts_ns
        out: list[Track] = []
        for state in sorted([*self._tracks, *self._finished], key=lambda s: s.track_id):
            if not state.confirmed:
                continue
            obs = tuple(o for o in state.history if lo <= o.pts_ns <= hi and o.pts_ns in wanted)
            if not obs:
                continue
            ended = state.ended_pts_ns
            out.append(
                Track(
                    track_id=state.track_id,
                    observations=obs,
                    first_pts_ns=state.first_pts_ns,
                    ended_pts_ns=ended if ended is not None and ended <= hi else None,
                )
            )
        return out

    # -- per-frame work ---------------------------------------------------------------------

    def _process(self, frame: VideoFrame) -> None:
        luma = frame.luma
        small = self._flow_picture(luma)
        if self._prev_small is not None and self._prev_small.shape == small.shape:
            self._track_flow(self._prev_small, small)
        if self._frame_count % self.config.detect_every == 0:
            self._detect(luma, frame.pts_ns)
        for state in self._tracks:
            state.box = _clip(state.box, frame.width, frame.height)
            detected = state.missed == 0 and self._frame_count % self.config.detect_every == 0
            state.history.append(
                FaceObservation(frame.pts_ns, state.box, state.box.mouth(), detected)
            )
        self._prev_small = small
        self._frame_count += 1
        self._last_pts_ns = frame.pts_ns
        self._forget_old(frame.pts_ns)

    def _flow_picture(self, luma: U8Image) -> U8Image:
        # Optical flow at about 320 px on the long side: plenty for a face's motion, and cheap.
        height, width = luma.shape
        self._flow_scale = min(1.0, 320.0 / max(height, width))
        if self._flow_scale >= 1.0:
            return luma
        size = (max(1, round(width * self._flow_scale)), max(1, round(height * self._flow_scale)))
        small = np.asarray(cv2.resize(luma, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        return small

    def _track_flow(self, prev: U8Image, cur: U8Image) -> None:
        """Move each live box by the median optical flow of corner points inside it."""
        k = self._flow_scale
        for state in self._tracks:
            box = state.box
            x0, y0 = max(0, int(box.x * k)), max(0, int(box.y * k))
            x1 = min(prev.shape[1], math.ceil((box.x + box.w) * k))
            y1 = min(prev.shape[0], math.ceil((box.y + box.h) * k))
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            corners = cv2.goodFeaturesToTrack(
                prev[y0:y1, x0:x1], maxCorners=40, qualityLevel=0.01, minDistance=3
            )
            if corners is None or len(corners) < 4:
                continue  # a flat patch: hold the box where it is until the next detection
            pts: npt.NDArray[np.float32] = (
                np.asarray(corners, dtype=np.float32) + np.array([x0, y0], dtype=np.float32)
            ).astype(np.float32)
            nxt, status, _err = cv2.calcOpticalFlowPyrLK(
                prev,
                cur,
                pts,
                None,  # type: ignore[call-overload]  # the stubs forbid None; OpenCV wants it
                winSize=(15, 15),
                maxLevel=2,
            )
            good = status.reshape(-1) == 1
            if int(good.sum()) < 4:
                continue
            shift = np.median((nxt - pts).reshape(-1, 2)[good], axis=0) / k
            state.box = Box(box.x + float(shift[0]), box.y + float(shift[1]), box.w, box.h)

    def _detect(self, luma: U8Image, pts_ns: int) -> None:
        detections = self._run_detector(luma)
        pairs = sorted(
            (
                (state.box.iou(det), t_index, d_index)
                for t_index, state in enumerate(self._tracks)
                for d_index, det in enumerate(detections)
            ),
            reverse=True,
        )
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for iou, t_index, d_index in pairs:
            if iou < self.config.match_iou:
                break
            if t_index in used_tracks or d_index in used_dets:
                continue
            used_tracks.add(t_index)
            used_dets.add(d_index)
            state = self._tracks[t_index]
            state.box = state.box.lerp(detections[d_index], self.config.smoothing)
            state.hits += 1
            state.missed = 0
            if state.hits >= self.config.confirm_hits:
                state.confirmed = True
        survivors: list[_TrackState] = []
        for t_index, state in enumerate(self._tracks):
            if t_index not in used_tracks:
                state.missed += 1
            if state.missed > self.config.max_missed or (not state.confirmed and state.missed > 0):
                last = state.history[-1].pts_ns if state.history else pts_ns
                state.ended_pts_ns = last
                if state.confirmed:
                    self._finished.append(state)
                continue
            survivors.append(state)
        self._tracks = survivors
        for d_index, det in enumerate(detections):
            if d_index in used_dets:
                continue
            state = _TrackState(self._next_id, det, pts_ns)
            self._next_id += 1
            state.confirmed = self.config.confirm_hits <= 1
            self._tracks.append(state)

    def _run_detector(self, luma: U8Image) -> list[Box]:
        height, width = luma.shape
        short = min(height, width)
        min_face_px = self.config.min_face * short
        scale = min(1.0, _DETECT_FACE_PX / min_face_px)
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(cv2.resize(luma, size, interpolation=cv2.INTER_AREA), np.uint8)
        else:
            small = luma
        min_px = max(20, int(min_face_px * scale))
        found = self._cascade.detectMultiScale(
            small,
            scaleFactor=self.config.scale_factor,
            minNeighbors=self.config.min_neighbors,
            minSize=(min_px, min_px),
        )
        boxes = [
            Box(float(x) / scale, float(y) / scale, float(w) / scale, float(h) / scale)
            for (x, y, w, h) in np.asarray(found, dtype=np.float64).reshape(-1, 4)
        ]
        return _suppress(boxes)

    def _forget_old(self, now_ns: int) -> None:
        horizon = now_ns - int(self.config.history_s * NS_PER_S)
        for state in self._tracks:
            while state.history and state.history[0].pts_ns < horizon:
                state.history.popleft()
        while self._finished and (
            not self._finished[0].history or self._finished[0].history[-1].pts_ns < horizon
        ):
            self._finished.popleft()


def _clip(box: Box, width: int, height: int) -> Box:
    """Keep a box's centre inside the picture (a face half out of view is still a face)."""
    cx = min(max(box.cx, 0.0), float(width))
    cy = min(max(box.cy, 0.0), float(height))
    return Box(cx - box.w / 2, cy - box.h / 2, box.w, box.h)


def _suppress(boxes: list[Box], iou: float = 0.3) -> list[Box]:
    """Drop boxes overlapping a bigger one (the cascade sometimes reports a face twice)."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: b.area, reverse=True):
        if all(box.iou(other) < iou for other in kept):
            kept.append(box)
    return kept


def crop(luma: U8Image, box: Box, size: int) -> U8Image:
    """A ``size`` x ``size`` grey crop of ``box`` (padded with black where it leaves the picture).

    Args:
        luma: The full-resolution grey picture.
        box: The region (any aspect; it is stretched to a square).
        size: Output side in pixels.
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    if box.w <= 0 or box.h <= 0:
        raise ValueError(f"crop box must have a positive size, got {box}")
    # Cut the integer bounding region (padding with black outside the picture), then resize
    # by area averaging, so a downscaled crop does not alias.
    height, width = luma.shape
    x0, y0 = math.floor(box.x), math.floor(box.y)
    x1, y1 = max(x0 + 1, math.ceil(box.x + box.w)), max(y0 + 1, math.ceil(box.y + box.h))
    region = luma[max(0, y0) : max(0, min(height, y1)), max(0, x0) : max(0, min(width, x1))]
    if region.size == 0:
        return np.zeros((size, size), dtype=np.uint8)
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        region = np.asarray(
            cv2.copyMakeBorder(
                region,
                max(0, -y0),
                max(0, y1 - height),
                max(0, -x0),
                max(0, x1 - width),
                cv2.BORDER_CONSTANT,
                value=0,
            ),
            dtype=np.uint8,
        )
    shrinking = region.shape[0] > size or region.shape[1] > size
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(region, (size, size), interpolation=method), dtype=np.uint8)
