"""Lip landmarks from MediaPipe Face Mesh, normalised so they carry motion, not identity.

Face Mesh (``mediapipe==0.10.14``, the ``lipsync`` extra) ships its TFLite models inside the
wheel: nothing is downloaded. It gives 468 points per face; this module keeps the 40 lip points
(20 outer, 20 inner contour), the four eye corners and the nose tip, and turns them into one
feature vector per frame:

* lips relative to the mouth centre (mean of the 40 lip points),
* rotated so the line through the two eye centres is horizontal (head roll removed),
* divided by the inter-ocular distance (face size removed),
* x and y only (Face Mesh's z is a weak guess from one picture).

:func:`lip_features` then appends the frame-to-frame deltas: ``(T, 160)`` per track.

The same code serves training (whole frames of a clip) and the daemon (a crop around each face
track's box, see :class:`LipLandmarker`), so the model sees the same features in both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from crossmodald.media import U8Image

log = logging.getLogger(__name__)

#: Outer lip contour (Face Mesh indices), clockwise from the left corner.
OUTER_LIPS = (
    61,
    146,
    91,
    181,
    84,
    17,
    314,
    405,
    321,
    375,
    291,
    409,
    270,
    269,
    267,
    0,
    37,
    39,
    40,
    185,
)
#: Inner lip contour.
INNER_LIPS = (
    78,
    95,
    88,
    178,
    87,
    14,
    317,
    402,
    318,
    324,
    308,
    415,
    310,
    311,
    312,
    13,
    82,
    81,
    80,
    191,
)
LIPS = OUTER_LIPS + INNER_LIPS
#: Eye corners: right eye (outer, inner), left eye (inner, outer) in the picture's left-to-right.
EYE_CORNERS = (33, 133, 362, 263)
NOSE_TIP = 1
#: Points kept per frame: lips, eye corners, nose.
KEPT = LIPS + EYE_CORNERS + (NOSE_TIP,)
N_LIPS = len(LIPS)
#: Values per frame from :func:`normalise` (x, y of each lip point).
POSE_DIM = 2 * N_LIPS
#: Values per frame from :func:`lip_features` (positions and deltas).
FEATURE_DIM = 2 * POSE_DIM
#: Crops given to Face Mesh are resized to this side (it works on 192 x 192 internally).
CROP_SIDE = 256
#: A face box is grown by this factor for the crop (Face Mesh wants the whole head).
CROP_GROW = 1.7


#: What Face Mesh's native libraries print to stderr (not through Python's logging, so no
#: setting reaches them) when a new instance runs its first picture: every new face track, every
#: training clip. Nothing in them is for the user.
_STARTUP_NOISE = re.compile(
    rb"^(INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|W\d{4} [\d:. ]+\d+ inference_feedback_manager\.cc:\d+\] Feedback manager requires a model "
    rb"with a single signature inference\. Disabling support for feedback tensors\.)\s*$"
)
_STDERR_LOCK = threading.Lock()

# mediapipe 0.10.14 calls a protobuf API that protobuf 4.25 marks deprecated: a notice for
# mediapipe's developers, printed on our users' terminal on the first picture.
warnings.filterwarnings("ignore", r"SymbolDatabase\.GetPrototype\(\) is deprecated", UserWarning)


@contextlib.contextmanager
def _without_startup_noise() -> Iterator[None]:
    """Holds what is written to file descriptor 2 while the block runs, then writes it back
    without Face Mesh's start-up lines. Other threads' output in the meantime is written back
    too, in order, only later (the block is one picture, a few ms)."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as held:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to hold (closed): nothing to keep clean either
            yield
            return
        try:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        held.seek(0)
        kept = b"".join(
            line for line in held.read().splitlines(keepends=True) if not _STARTUP_NOISE.match(line)
        )
        if kept:
            os.write(2, kept)


class LandmarksUnavailable(RuntimeError):
    """mediapipe is not installed (``pip install crossmodald[lipsync]``, see the README)."""


def _face_mesh_module() -> Any:
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LandmarksUnavailable(
            "lip landmarks need mediapipe 0.10.14 (install crossmodald's `lipsync` extra: "
            "pip install --no-deps mediapipe==0.10.14 && pip install 'crossmodald[lipsync]')"
        ) from exc
    return face_mesh


def normalise(points: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Lip shape of one face on one frame, normalised (see the module docstring).

    Args:
        points: ``(len(KEPT), 2)`` pixel coordinates of the kept points (in :data:`KEPT` order).

    Returns:
        ``(POSE_DIM,)`` float32: x, y of each lip point in inter-ocular distances.
    """
    lips = points[:N_LIPS].astype(np.float64)
    eyes = points[N_LIPS : N_LIPS + 4].astype(np.float64)
    right = (eyes[0] + eyes[1]) / 2.0
    left = (eyes[2] + eyes[3]) / 2.0
    axis = left - right
    iod = float(np.hypot(axis[0], axis[1]))
    if iod < 1e-6:
        return np.zeros(POSE_DIM, np.float32)
    cos, sin = axis / iod
    rot = np.array([[cos, sin], [-sin, cos]])  # rotates the eye line onto +x
    centred = lips - lips.mean(axis=0)
    out: npt.NDArray[np.float32] = ((centred @ rot.T) / iod).astype(np.float32).reshape(-1)
    return out


def lip_features(
    poses: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float32]:
    """Per-frame features ``(T, FEATURE_DIM)``: the poses and their deltas.

    Frames without landmarks (``valid`` False) are filled from the nearest valid frame first
    (a short dropout then reads as "no movement", not as a jump to zero).
    """
    poses = np.asarray(poses, np.float32)
    n = len(poses)
    if n == 0:
        return np.zeros((0, FEATURE_DIM), np.float32)
    if valid is not None and not bool(np.all(valid)) and bool(np.any(valid)):
        idx = np.flatnonzero(valid)
        nearest = idx[np.clip(np.searchsorted(idx, np.arange(n)), 0, len(idx) - 1)]
        before = idx[np.clip(np.searchsorted(idx, np.arange(n)) - 1, 0, len(idx) - 1)]
        pick = np.where(
            np.abs(before - np.arange(n)) <= np.abs(nearest - np.arange(n)), before, nearest
        )
        poses = poses[pick]
    deltas = np.diff(poses, axis=0, prepend=poses[:1])
    return np.concatenate([poses, deltas], axis=1).astype(np.float32)


@dataclass(frozen=True, slots=True)
class CropRect:
    """A square crop of the picture: left, top and side in pixels."""

    x: float
    y: float
    side: float


def crop_rect(cx: float, cy: float, w: float, h: float, grow: float = CROP_GROW) -> CropRect:
    """The square crop around a face box (centre ``cx, cy``, size ``w x h``), grown."""
    side = max(w, h) * grow
    return CropRect(cx - side / 2.0, cy - side / 2.0, side)


def _crop(luma: U8Image, rect: CropRect) -> npt.NDArray[np.uint8]:
    """The crop as a ``CROP_SIDE`` square RGB picture (grey replicated; edges padded)."""
    scale = CROP_SIDE / rect.side
    m = np.array([[scale, 0.0, -rect.x * scale], [0.0, scale, -rect.y * scale]], np.float64)
    grey = cv2.warpAffine(
        luma, m, (CROP_SIDE, CROP_SIDE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )
    out: npt.NDArray[np.uint8] = np.repeat(grey[:, :, None], 3, axis=2)
    return out


class LipLandmarker:
    """Face Mesh on one face's consecutive pictures (tracking mode: cheap frame to frame).

    One instance per face (per track, or per training clip): Face Mesh keeps the previous
    frame's face to find the next. Pictures are grey (the daemon's frames are luma only),
    replicated to RGB, so training and serving see the same input.
    """

    def __init__(self) -> None:
        face_mesh = _face_mesh_module()
        # The graph starts on threads of its own, which print their start-up lines while it is
        # built and until its first picture is through: both happen here, with those lines
        # held back (a blank picture: no face, so tracking starts from nothing as before).
        with _without_startup_noise():
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=False,
                max_num_faces=1,
                refine_landmarks=False,
                min_detection_confidence=0.5,
                min_tracking_confidence=0.5,
            )
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> LipLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _points(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32] | None:
        result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks
        if not faces:
            return None
        marks = faces[0].landmark
        h, w = rgb.shape[:2]
        return np.array([(marks[i].x * w, marks[i].y * h) for i in KEPT], np.float32)

    def pose_frame(self, luma: U8Image) -> npt.NDArray[np.float32] | None:
        """Normalised lip pose on a whole grey picture (one face in it), None when not found."""
        rgb = np.ascontiguousarray(np.repeat(luma[:, :, None], 3, axis=2))
        pts = self._points(rgb)
        return None if pts is None else normalise(pts)

    def pose_crop(self, luma: U8Image, rect: CropRect) -> npt.NDArray[np.float32] | None:
        """Normalised lip pose of the face inside ``rect`` of a grey picture."""
        pts = self._points(_crop(luma, rect))
        # The normalisation removes position and scale, so crop pixels are as good as frame
        # pixels (the crop is square and unscaled in aspect).
        return None if pts is None else normalise(pts)


def poses_of_frames(
    lumas: Sequence[U8Image],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Lip poses of consecutive whole pictures of one face: ``(T, POSE_DIM)`` and validity."""
    poses = np.zeros((len(lumas), POSE_DIM), np.float32)
    valid = np.zeros(len(lumas), np.bool_)
    with LipLandmarker() as marker:
        for i, luma in enumerate(lumas):
            pose = marker.pose_frame(luma)
            if pose is not None:
                poses[i] = pose
                valid[i] = True
    return poses, valid
