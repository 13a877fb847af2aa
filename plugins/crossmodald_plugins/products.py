"""Products the built-in plugins share (typed keys and their per-window values).

A provider's :meth:`~crossmodald.runtime.plugin.Plugin.infer` result for a window is its product;
a consumer names the key in its config's ``requires`` and reads ``item.inputs[KEY]``::

    from crossmodald_plugins.products import FACE_TRACKS, SPEECH

    tracks = item.inputs[FACE_TRACKS].tracks      # faces plugin: tracks on the window's frames
    probs = item.inputs[SPEECH].probs             # speech plugin: VAD probability per 32 ms chunk
    faces = item.inputs[SPEAKING].faces           # speaker plugin: speaking score per face and slot

Only numpy and the pure-OpenCV tracker types are imported here (no torch), so consumers and
providers can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from crossmodald.runtime.plugin import ProductKey

if TYPE_CHECKING:  # the faces package imports this module: no import cycle at run time
    from crossmodald_plugins.faces.tracker import Track

#: Silero VAD's chunk: 512 samples at 16 kHz (32 ms), the speech product's time grid.
SPEECH_CHUNK_NS = 512 * 1_000_000_000 // 16_000


@dataclass(frozen=True, slots=True)
class FaceTracks:
    """The face tracks on one window's frames (the ``faces`` plugin's result).

    Attributes:
        tracks: Confirmed tracks with an observation among the window's frames, by track id;
            a track that ended on these frames has ``ended_pts_ns`` set.
    """

    tracks: tuple[Track, ...]


@dataclass(frozen=True, slots=True)
class SpeechProbs:
    """Speech probabilities of one window on the stream's 32 ms chunk grid (``speech``'s result).

    Chunk ``k`` covers ``[k * SPEECH_CHUNK_NS, (k + 1) * SPEECH_CHUNK_NS)`` of the stream's
    timeline, so overlapping windows agree on which chunk is which.

    Attributes:
        first_chunk: Index of the first chunk.
        probs: Speech probability per chunk, float32.
        valid: Per chunk, False where too little audio was delivered (probability then 0).
    """

    first_chunk: int
    probs: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]

    def chunk_span_ns(self, i: int) -> tuple[int, int]:
        """The media-time span of chunk ``i`` of this result."""
        k = self.first_chunk + i
        return k * SPEECH_CHUNK_NS, (k + 1) * SPEECH_CHUNK_NS


@dataclass(frozen=True, slots=True)
class FaceSpeaking:
    """One face track's speaking scores in one window.

    Attributes:
        track_id: The face track.
        pts_ns: Slot times (25 fps grid from the window's first frame).
        boxes: Face box per slot, ``(x, y, w, h)``.
        scores: Speaking probability per slot.
        ended_pts_ns: Set when the track ended in this window.
    """

    track_id: int
    pts_ns: npt.NDArray[np.int64]
    boxes: tuple[tuple[float, float, float, float], ...]
    scores: npt.NDArray[np.float32]
    ended_pts_ns: int | None = None


@dataclass(frozen=True, slots=True)
class SpeakingFaces:
    """Who is speaking in one window: each scored face track's speaking score per slot.

    The ``speaker`` plugin's result for a window is one (its own result type extends this).

    Attributes:
        faces: The scored face tracks (tracks visible too briefly in the window are left out).
        threshold: The score at which the provider counts a face as speaking (it depends on
            how the scores were made: the learned model or the weight-free fallback).
    """

    faces: tuple[FaceSpeaking, ...]
    threshold: float = field(default=0.5, kw_only=True)


@dataclass(frozen=True, slots=True)
class TrackLips:
    """Lip poses of one face track on the window's frames (``lips`` plugin).

    Attributes:
        track_id: The face track (:data:`FACE_TRACKS`).
        pts_ns: Frame times, ascending.
        poses: ``(frames, 80)`` normalised lip poses (x, y of 40 lip points in inter-ocular
            distances, mouth-centred, eye line horizontal; see
            :mod:`crossmodald_plugins.lipsync.landmarks`).
        valid: Per frame, whether Face Mesh found the face in the track's box.
    """

    track_id: int
    pts_ns: npt.NDArray[np.int64]
    poses: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class LipPoses:
    """Lip poses of every face track on one window's frames (the ``lips`` plugin's result)."""

    tracks: tuple[TrackLips, ...]


#: Face tracks per window, provided by the ``faces`` plugin.
FACE_TRACKS: ProductKey[FaceTracks] = ProductKey("faces.tracks", FaceTracks)
#: Speech probabilities per window, provided by the ``speech`` plugin.
SPEECH: ProductKey[SpeechProbs] = ProductKey("speech.probs", SpeechProbs)
#: Speaking scores per face track and window, provided by the ``speaker`` plugin.
SPEAKING: ProductKey[SpeakingFaces] = ProductKey("speaker.faces", SpeakingFaces)
#: Lip landmarks per face track per window, provided by the ``lips`` plugin (Face Mesh).
LIP_POSES: ProductKey[LipPoses] = ProductKey("lips.poses", LipPoses)
