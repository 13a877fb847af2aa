"""The ``speaker`` plugin: who is talking (per face track, per frame) and the lip-sync offset.

Per window, for every face track (the ``faces`` plugin's
:data:`~crossmodald_plugins.products.FACE_TRACKS`: one tracker per stream, shared with every
other consumer), on a 25 fps slot grid starting at the window's first frame:

* a speaking probability per slot from Light-ASD (face crops + MFCCs), or, without weights, from
  the weight-free mouth-motion fallback;
* a lip-sync offset: the audio shift (within +/- ``max_shift_ms``) at which the model finds the
  face speaking its audio best, from the track that is talking most.

All faces of all windows in a batch go through the visual encoder in one call per distinct
track length (normally one: tracks that span the whole window), and every (face, shift) pair
through the GRU backend in one call.

Events (per stream):

* ``speaker`` ``start``/``end``: a face track starts / stops speaking; data ``track_id``,
  ``box`` ``[x, y, w, h]`` (on ``end``: the last box while speaking), ``score`` (on ``start``:
  the confirming slot's probability; on ``end``: the mean while speaking).
* ``sync.offset``: data ``audio_lead_ms`` (None without a face), ``confidence`` (low when nobody
  visible is talking), ``method`` (``asd_scan`` or ``mouth_motion``), ``smoothed_audio_lead_ms``
  (median of recent confident values), ``drift_ppm`` (None: not estimated here), ``track_id``.
* ``dialogue.turn`` (with ``turns``, the default): at the end of each speech segment, who spoke
  it: data ``speaker`` (a track id, or "off-screen"), ``confidence``, ``score``, ``method``.
  Speech comes from the ``speech`` plugin's VAD probabilities for the same window
  (:data:`~crossmodald_plugins.products.SPEECH`, one VAD pass per stream) through its segmenter
  with default settings; the speaking face from the per-slot scores above
  (:func:`crossmodald_plugins.vad.turns.attribute_turns`).

The face tracker's settings (``detect_every``, ``min_face``, ...) belong to the ``faces`` table;
without one, the registry runs ``faces`` (and, with ``turns``, ``speech``) silently with its
defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, model_validator

from crossmodald.bus.events import Event, JsonValue, Phase
from crossmodald.media import NS_PER_MS, NS_PER_S, StreamInfo, U8Image, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, Need, PluginConfig, ProductKey
from crossmodald_plugins.faces import Box, Track
from crossmodald_plugins.products import (
    FACE_TRACKS,
    SPEAKING,
    SPEECH,
    FaceSpeaking,
    SpeakingFaces,
)
from crossmodald_plugins.vad.plugin import SpeechConfig, SpeechResult, SpeechSession
from crossmodald_plugins.vad.segments import SpeechSegment
from crossmodald_plugins.vad.turns import TrackScores, attribute_turns

from . import fallback
from .features import MODEL_RATE, CropBox, crop_face, mfcc, resample, smooth_boxes
from .model import AUDIO_STEPS_PER_FRAME, LightASD
from .scan import STEP_MS
from .weights import WeightsError, load_light_asd

log = logging.getLogger(__name__)

SPEAKER_EVENT = "speaker"
OFFSET_EVENT = "sync.offset"
METHOD_MODEL = "asd_scan"
METHOD_FALLBACK = "mouth_motion"

#: The model's frame step (25 fps).
SLOT_NS = 40 * NS_PER_MS
#: Fewest slots a track needs in a window to be scored.
MIN_SLOTS = 8
#: Scores are averaged over this many slots either side (as the reference pipeline did).
SMOOTH_SLOTS = 2


#: Keys of the speaker table that now belong to the ``faces`` table.
MOVED_TO_FACES = ("detect_every", "min_face")


class SpeakerConfig(PluginConfig):
    """``[[plugins]]`` table of the ``speaker`` plugin."""

    type: str = "speaker"
    #: Light-ASD state dict (``crossmodald models fetch light-asd``); None: weight-free fallback.
    weights: Path | None = None
    #: What to do when ``weights`` is missing, corrupt or of another architecture.
    on_weights_error: Literal["fallback", "disable"] = "fallback"
    #: Speaking probability above which a face counts as speaking (learned model).
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    #: The same for the weight-free fallback, whose scores are a squashed correlation.
    fallback_threshold: float = Field(0.3, gt=0.0, lt=1.0)
    #: Slots a face must stay above / below the threshold before start / end.
    hold_slots: int = Field(3, ge=1, le=250)
    #: At most one face speaks at a time: on each slot only the best-scoring face can count as
    #: speaking (for "who is talking" uses: kiosks, robots, call layouts). False lets faces
    #: speak over each other.
    single_speaker: bool = False
    #: Estimate the lip-sync offset (``sync.offset`` events).
    lipsync: bool = True
    #: Scan range of the lip-sync offset, ms either side.
    max_shift_ms: int = Field(500, ge=40, le=2000)
    #: Least speaking probability of the best face for a confident offset.
    min_speaking: float = Field(0.5, gt=0.0, lt=1.0)
    #: Recent confident offsets in the median ``smoothed_audio_lead_ms``.
    smoothing_windows: int = Field(5, ge=1, le=1000)
    #: Publish ``dialogue.turn`` events (needs the ``speech`` plugin's VAD probabilities).
    turns: bool = True
    #: Speaking scores kept per face for attributing turns; a longer segment is attributed
    #: on its last ``turn_history_s`` only (the bound keeps memory flat).
    turn_history_s: float = Field(120.0, ge=1.0, le=3600.0)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        # Before plugin contract v2 the speaker plugin ran its own face tracker.
        if isinstance(data, Mapping):
            moved = sorted(k for k in MOVED_TO_FACES if k in data)
            if moved:
                keys = ", ".join(moved)
                raise ValueError(
                    f"{keys}: moved to the faces plugin (the speaker uses its face tracks); "
                    f'set {keys} in a [[plugins]] table with type = "faces"'
                )
        return data

    def requires(self) -> tuple[Need, ...]:
        """Face tracks always; speech probabilities when ``turns`` is on."""
        needs = [Need(FACE_TRACKS)]
        if self.turns:
            needs.append(Need(SPEECH))
        return tuple(needs)


@dataclass(frozen=True, slots=True)
class OffsetEstimate:
    """The lip-sync offset of one window (``audio_lead_ms`` None when there is no face)."""

    audio_lead_ms: float | None
    confidence: float
    method: str
    track_id: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SpeakerResult(SpeakingFaces):
    """What :meth:`SpeakerPlugin.infer` found in one window (its ``faces`` and ``threshold``
    are the shared :data:`~crossmodald_plugins.products.SPEAKING` product)."""

    offset: OffsetEstimate | None
    method: str
    ended_tracks: tuple[int, ...] = ()
    #: Speech probabilities of the window (None when turns are off).
    speech: SpeechResult | None = None


@dataclass(slots=True)
class _Job:
    """One face track of one window, prepared for the model."""

    window_index: int
    track: Track
    slot_pts: npt.NDArray[np.int64]
    boxes: list[Box]
    lumas: list[U8Image]
    mfcc: torch.Tensor  # (4 * n_slots, 13)
    scores: npt.NDArray[np.float32] | None = None
    offset: tuple[float, float] | None = None  # (audio_lead_ms, peak strength)


@dataclass(slots=True)
class _WindowPrep:
    slot_pts: npt.NDArray[np.int64]
    mfcc: torch.Tensor | None  # (F, 13) for the whole slot grid, None without audio
    log_energy: npt.NDArray[np.float32]
    jobs: list[_Job] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)


class SpeakerPlugin:
    """Active speaker and lip-sync offset (see the module docstring)."""

    name = "speaker"

    provides: ClassVar[ProductKey[Any] | None] = SPEAKING
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "crossmodald_stream_audio_lead_seconds",
            "gauge",
            "Latest A/V offset in seconds (positive: audio ahead of video).",
            "audio_lead_ms",
            scale=0.001,
        ),
        MetricSpec("crossmodald_stream_speakers", "gauge", "Faces speaking now.", "speaking_faces"),
    )

    def __init__(self, config: SpeakerConfig, model: LightASD | None, device: str) -> None:
        self.config = config
        self.model = model
        self.device = torch.device(device)
        self.method = METHOD_MODEL if model is not None else METHOD_FALLBACK
        #: Score at which a face counts as speaking (the fallback's scores run lower).
        self.threshold = config.threshold if model is not None else config.fallback_threshold
        #: No hysteresis here: a face stops speaking where it falls below ``threshold``.
        self.release_threshold = self.threshold

    # -- Plugin protocol --------------------------------------------------------------------

    def check_stream(self, stream: StreamInfo) -> str | None:
        """Needs both video and audio."""
        if not stream.has_video:
            return "has no video"
        if not stream.has_audio:
            return "has no audio"
        return None

    def new_state(self, stream: StreamInfo) -> None:
        """No inference state of its own: tracks and speech come as inputs."""
        return None

    def open(self, stream: StreamInfo) -> SpeakerSession:
        """A session for a new stream."""
        return SpeakerSession(self, stream)

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[SpeakerResult]:
        """Score every face of every window (one model pass for all), and scan the offset."""
        preps = [self._prepare(i, item) for i, item in enumerate(batch)]
        jobs = [job for prep in preps for job in prep.jobs]
        if jobs:
            if self.model is not None:
                self._run_model(jobs)
            else:
                self._run_fallback(jobs, preps)
        results = [self._result(prep) for prep in preps]
        if self.config.turns:
            results = [
                dataclasses.replace(r, speech=item.inputs[SPEECH])
                for r, item in zip(results, batch, strict=True)
            ]
        return results

    # -- preparation (CPU, per window) ------------------------------------------------------

    def _prepare(self, index: int, item: BatchItem[None]) -> _WindowPrep:
        window = item.window
        tracks = item.inputs[FACE_TRACKS].tracks
        ended = [t.track_id for t in tracks if t.ended_pts_ns is not None]
        if not window.video:
            return _WindowPrep(np.zeros(0, np.int64), None, np.zeros(0, np.float32), [], ended)
        first = window.video[0].pts_ns
        n_slots = max(0, (window.end_ns - first) // SLOT_NS)
        slot_pts = first + SLOT_NS * np.arange(n_slots, dtype=np.int64)
        frame_pts = np.array([f.pts_ns for f in window.video], dtype=np.int64)
        # Each slot shows the frame on screen at its time (the latest with pts <= slot).
        frame_of_slot = np.clip(np.searchsorted(frame_pts, slot_pts, side="right") - 1, 0, None)
        features, log_energy = self._audio_features(window, first, n_slots)
        prep = _WindowPrep(slot_pts, features, log_energy, [], ended)
        if features is None:
            return prep
        for track in tracks:
            by_pts = {obs.pts_ns: obs.box for obs in track.observations}
            present = [frame_pts[f] in by_pts for f in frame_of_slot]
            run = longest_run(present)
            if run is None or run[1] - run[0] < MIN_SLOTS:
                continue
            lo, hi = run
            frames = [window.video[int(f)] for f in frame_of_slot[lo:hi]]
            boxes = [by_pts[fr.pts_ns] for fr in frames]
            prep.jobs.append(
                _Job(
                    window_index=index,
                    track=track,
                    slot_pts=slot_pts[lo:hi],
                    boxes=boxes,
                    lumas=[fr.luma for fr in frames],
                    mfcc=_slice_steps(
                        features, lo * AUDIO_STEPS_PER_FRAME, hi * AUDIO_STEPS_PER_FRAME
                    ),
                )
            )
        return prep

    def _audio_features(
        self, window: Window, first_pts_ns: int, n_slots: int
    ) -> tuple[torch.Tensor | None, npt.NDArray[np.float32]]:
        """MFCCs on the slot grid: step ``4 k`` starts at slot ``k``'s time."""
        if window.audio_rate <= 0 or len(window.audio) == 0 or n_slots < MIN_SLOTS:
            return None, np.zeros(0, np.float32)
        skip = (first_pts_ns - window.start_ns) * window.audio_rate // NS_PER_S
        audio = torch.from_numpy(np.ascontiguousarray(window.audio[int(skip) :]))
        audio16 = resample(audio, window.audio_rate, MODEL_RATE)
        feats = mfcc(audio16)
        feats = _slice_steps(feats, 0, n_slots * AUDIO_STEPS_PER_FRAME)
        return feats, feats[:, 0].numpy().astype(np.float32)

    # -- the learned model ------------------------------------------------------------------

    @torch.inference_mode()
    def _run_model(self, jobs: list[_Job]) -> None:
        assert self.model is not None
        model = self.model
        by_len: dict[int, list[_Job]] = {}
        for job in jobs:
            by_len.setdefault(len(job.slot_pts), []).append(job)
        for n_slots, group in by_len.items():
            crops = np.stack([_crops(job) for job in group])  # (B, T, 112, 112)
            vis = model.visual_embed(torch.from_numpy(crops).to(self.device))
            feats = torch.stack([job.mfcc for job in group]).to(self.device)
            aud = model.audio_embed(feats)
            logits = model.fuse(aud, vis)
            probs = torch.sigmoid(logits).cpu().numpy()
            for job, p in zip(group, probs, strict=True):
                job.scores = _smooth(p.astype(np.float32))
            if self.config.lipsync:
                self._scan_group(group, vis, feats, n_slots)

    def _scan_group(
        self, group: list[_Job], vis: torch.Tensor, feats: torch.Tensor, n_slots: int
    ) -> None:
        """Offset per track: circular shifts of the audio embedding against the video.

        Rolling within the window (instead of sliding audio in from outside) keeps the audio
        and video content the same for every hypothesis, so the score differs only in which
        sound is paired with which mouth movement.
        """
        assert self.model is not None
        k_max = self.config.max_shift_ms // STEP_MS
        if n_slots * AUDIO_STEPS_PER_FRAME < 4 * k_max + 8 * AUDIO_STEPS_PER_FRAME:
            return
        model = self.model
        phases = [
            model.audio_embed(torch.roll(feats, shifts=-p, dims=1))
            for p in range(AUDIO_STEPS_PER_FRAME)
        ]
        shifts = list(range(-k_max, k_max + 1))
        audio = []
        for k in shifts:
            p = (-k) % AUDIO_STEPS_PER_FRAME
            q = (k + p) // AUDIO_STEPS_PER_FRAME
            audio.append(torch.roll(phases[p], shifts=q, dims=1))  # slot t gets audio t - k
        stacked = torch.stack(audio, dim=1)  # (B, S, T, 128)
        b, s, t, c = stacked.shape
        vis_rep = vis.unsqueeze(1).expand(b, s, t, c)
        logits = model.fuse(stacked.reshape(b * s, t, c), vis_rep.reshape(b * s, t, c))
        curve = logits.reshape(b, s, t).mean(dim=2).cpu().numpy()
        for job, scores in zip(group, curve, strict=True):
            best = int(np.argmax(scores))
            spread = float(np.std(scores))
            prominence = (float(scores[best]) - float(np.median(scores))) / (spread + 1e-6)
            job.offset = (float(shifts[best] * STEP_MS), min(1.0, prominence / 3.0))

    # -- the weight-free fallback -----------------------------------------------------------

    def _run_fallback(self, jobs: list[_Job], preps: list[_WindowPrep]) -> None:
        for job in jobs:
            mouths = [b.mouth() for b in job.boxes]
            motion = fallback.mouth_motion(job.lumas, [(m.x, m.y, m.w, m.h) for m in mouths])
            energy = job.mfcc[:, 0].numpy().astype(np.float32)
            job.scores = _smooth(fallback.speaking_scores(motion, energy))
            if self.config.lipsync:
                try:
                    lead, strength = fallback.scan_offset(motion, energy, self.config.max_shift_ms)
                except ValueError:
                    continue
                job.offset = (float(lead), strength)

    # -- results ----------------------------------------------------------------------------

    def _result(self, prep: _WindowPrep) -> SpeakerResult:
        faces = tuple(
            FaceSpeaking(
                track_id=job.track.track_id,
                pts_ns=job.slot_pts,
                boxes=tuple((b.x, b.y, b.w, b.h) for b in job.boxes),
                scores=job.scores if job.scores is not None else np.zeros(0, np.float32),
                ended_pts_ns=job.track.ended_pts_ns,
            )
            for job in prep.jobs
        )
        offset: OffsetEstimate | None = None
        if self.config.lipsync:
            offset = self._offset(prep)
        return SpeakerResult(
            faces, offset, self.method, tuple(prep.ended), threshold=self.threshold
        )

    def _offset(self, prep: _WindowPrep) -> OffsetEstimate:
        scanned = [job for job in prep.jobs if job.offset is not None and job.scores is not None]
        if not scanned:
            why = "no face" if not prep.jobs else "window too short to scan"
            return OffsetEstimate(None, 0.0, self.method, None, why)
        # The face that talks most carries the offset; nobody talking -> low confidence.
        best = max(scanned, key=lambda j: float(np.mean(j.scores)))  # type: ignore[arg-type]
        assert best.offset is not None
        assert best.scores is not None
        speaking = float(np.mean(best.scores))
        lead, strength = best.offset
        least = (
            self.config.min_speaking
            if self.method == METHOD_MODEL
            else self.config.fallback_threshold
        )
        gate = min(1.0, speaking / least)
        confidence = round(strength * gate, 4)
        reason: str | None = None
        if speaking < least:
            reason = "nobody visible is talking"
        return OffsetEstimate(lead, confidence, self.method, best.track.track_id, reason)


def _best_per_slot(faces: Sequence[FaceSpeaking]) -> dict[int, float]:
    """The highest face score on each slot pts."""
    best: dict[int, float] = {}
    for face in faces:
        for pts, score in zip(face.pts_ns.tolist(), face.scores.tolist(), strict=True):
            best[pts] = max(best.get(pts, score), score)
    return best


def longest_run(flags: Sequence[bool]) -> tuple[int, int] | None:
    """``[start, end)`` of the longest run of True in ``flags`` (the first of equal ones), or
    None when there is none."""
    best: tuple[int, int] | None = None
    start: int | None = None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def _slice_steps(feats: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of (F, 13) features, repeating the last row past the end."""
    out = feats[lo:hi]
    short = (hi - lo) - out.shape[0]
    if short > 0:
        out = torch.cat([out, out[-1:].expand(short, -1)], dim=0)
    return out


def _crops(job: _Job) -> npt.NDArray[np.uint8]:
    boxes = smooth_boxes([CropBox(b.cx, b.cy, max(b.w, b.h) / 2.0) for b in job.boxes])
    return np.stack([crop_face(luma, box) for luma, box in zip(job.lumas, boxes, strict=True)])


def _smooth(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Mean over +/- SMOOTH_SLOTS slots (shrinking at the ends)."""
    n = len(scores)
    if n == 0:
        return scores
    c = np.concatenate([[0.0], np.cumsum(scores, dtype=np.float64)])
    idx = np.arange(n)
    lo = np.clip(idx - SMOOTH_SLOTS, 0, n)
    hi = np.clip(idx + SMOOTH_SLOTS + 1, 0, n)
    out: npt.NDArray[np.float32] = ((c[hi] - c[lo]) / (hi - lo)).astype(np.float32)
    return out


@dataclass(slots=True)
class _Speaking:
    start_ns: int
    box: tuple[float, float, float, float]
    scores: list[float]
    below: int = 0


class SpeakerSource(Protocol):
    """What a :class:`SpeakerSession` needs of its plugin (the ``lipsync`` plugin reuses it)."""

    @property
    def config(self) -> SpeakerConfig: ...

    @property
    def method(self) -> str: ...

    @property
    def threshold(self) -> float:
        """The score at which a face counts as speaking."""
        ...

    @property
    def release_threshold(self) -> float:
        """A face that speaks goes on speaking while its score stays above this (hysteresis;
        at most ``threshold``, which it starts at; equal to it: none)."""
        ...


class SpeakerSession:
    """Per-stream ``speaker`` lifecycle and ``sync.offset`` smoothing."""

    def __init__(self, plugin: SpeakerSource, stream: StreamInfo) -> None:
        self._plugin = plugin
        self._stream = stream
        self._config = plugin.config
        self._threshold = plugin.threshold
        self._release = min(plugin.release_threshold, plugin.threshold)
        self._done_ns = -1  # slots at or before this were already judged
        self._above: dict[int, int] = {}
        self._open: dict[int, _Speaking] = {}
        self._recent: deque[float] = deque(maxlen=self._config.smoothing_windows)
        self._recent_confidence: deque[float] = deque(maxlen=self._config.smoothing_windows)
        self._last: tuple[int, Window] | None = None
        # The speech plugin's segmenter with default settings (no updates) over its shared
        # probabilities: the turns see the same speech segments a default ``speech`` table does.
        self._speech: SpeechSession | None = (
            SpeechSession(SpeechConfig(updates=False), stream) if self._config.turns else None
        )
        self._last_offset: dict[str, JsonValue] | None = None
        # (slot pts, score) per face track, bounded, for attributing dialogue turns.
        self._history_len = max(1, round(self._config.turn_history_s * NS_PER_S / SLOT_NS))
        self._history: dict[int, deque[tuple[int, float]]] = {}

    def update(self, window: Window, result: SpeakerResult) -> list[Event]:
        """Events for one window."""
        events: list[Event] = []
        newest = self._done_ns
        best = _best_per_slot(result.faces) if self._config.single_speaker else None
        for face in result.faces:
            for pts, box, score in zip(face.pts_ns, face.boxes, face.scores, strict=True):
                if pts <= self._done_ns:
                    continue  # judged in an earlier (overlapping) window
                newest = max(newest, int(pts))
                # Under single_speaker a face that is not the best on this slot is not speaking.
                judged = 0.0 if best is not None and score < best[int(pts)] else float(score)
                events += self._step(window, face.track_id, int(pts), box, judged)
                if self._speech is not None:
                    self._remember(face.track_id, int(pts), float(score))
        seen = {face.track_id for face in result.faces}
        for track_id in [*result.ended_tracks, *(t for t in self._open if t not in seen)]:
            if track_id in self._open:
                events.append(self._end(window, track_id, newest))
        self._done_ns = newest
        if result.offset is not None:
            events.append(self._offset_event(window, result.offset))
        if self._speech is not None and result.speech is not None:
            events += self._turns(self._speech.update(window, result.speech), window)
        self._last = (newest, window)
        return events

    def status(self) -> Mapping[str, JsonValue]:
        """Faces speaking now and the latest lip-sync offset (``sync.offset`` data fields)."""
        out: dict[str, JsonValue] = {
            "method": self._plugin.method,
            "speaking_faces": len(self._open),
            "speaking_track_ids": sorted(self._open),
        }
        last = self._last_offset or {}
        keys = ("audio_lead_ms", "smoothed_audio_lead_ms", "smoothed_confidence", "confidence")
        for key in (*keys, "track_id"):
            out[key] = last.get(key)
        return out

    def close(self) -> list[Event]:
        """End every open ``speaker`` span (and attribute a speech segment still open)."""
        if self._last is None:
            return []
        newest, window = self._last
        events = [self._end(window, track_id, newest) for track_id in list(self._open)]
        if self._speech is not None:
            events += self._turns(self._speech.close(), window)
        return events

    def _remember(self, track_id: int, pts: int, score: float) -> None:
        history = self._history.get(track_id)
        if history is None:
            history = self._history[track_id] = deque(maxlen=self._history_len)
        history.append((pts, score))

    def _turns(self, speech_events: list[Event], window: Window) -> list[Event]:
        """``dialogue.turn`` events for the speech segments that ended."""
        out: list[Event] = []
        for ended in speech_events:
            if ended.phase is not Phase.END:
                continue
            segment = SpeechSegment(ended.start_ns, ended.end_ns, 0.0)
            tracks = [
                TrackScores(
                    track_id,
                    np.array([p for p, _s in history], dtype=np.int64),
                    np.array([s for _p, s in history], dtype=np.float32),
                )
                for track_id, history in self._history.items()
                if history and history[-1][0] >= segment.start_ns
            ]
            for turn in attribute_turns([segment], tracks, threshold=self._threshold):
                base = turn.event(window.stream, window.clock)
                out.append(
                    dataclasses.replace(
                        base,
                        data={**base.data, "method": self._plugin.method},
                        closed_ns=window.closed_ns,
                    )
                )
        return out

    def _step(
        self,
        window: Window,
        track_id: int,
        pts: int,
        box: tuple[float, float, float, float],
        score: float,
    ) -> list[Event]:
        hold = self._config.hold_slots
        speaking = self._open.get(track_id)
        if speaking is not None and (score >= self._threshold or score > self._release):
            speaking.scores.append(score)
            speaking.box = box  # ``end`` reports where the face was last seen speaking
            speaking.below = 0
            return []
        if score >= self._threshold:
            run = self._above.get(track_id, 0) + 1
            self._above[track_id] = run
            if run < hold:
                return []
            start = pts - (hold - 1) * SLOT_NS
            self._open[track_id] = _Speaking(start, box, [score])
            self._above.pop(track_id, None)
            return [self._event(window, track_id, start, pts, Phase.START, box, score)]
        self._above.pop(track_id, None)
        if speaking is None:
            return []
        speaking.below += 1
        if speaking.below < hold:
            return []
        return [self._end(window, track_id, pts - (hold - 1) * SLOT_NS)]

    def _end(self, window: Window, track_id: int, end_ns: int) -> Event:
        speaking = self._open.pop(track_id)
        score = float(np.mean(speaking.scores)) if speaking.scores else 0.0
        return self._event(
            window,
            track_id,
            speaking.start_ns,
            max(end_ns, speaking.start_ns),
            Phase.END,
            speaking.box,
            score,
        )

    def _event(
        self,
        window: Window,
        track_id: int,
        start: int,
        end: int,
        phase: Phase,
        box: tuple[float, float, float, float],
        score: float,
    ) -> Event:
        data: dict[str, JsonValue] = {
            "track_id": track_id,
            "box": [round(v, 1) for v in box],
            "score": round(score, 4),
            "method": self._plugin.method,
        }
        return Event(
            type=SPEAKER_EVENT,
            stream=window.stream,
            start_ns=start,
            end_ns=end,
            data=data,
            phase=phase,
            clock=window.clock,
            closed_ns=window.closed_ns,
        )

    def _offset_event(self, window: Window, offset: OffsetEstimate) -> Event:
        if offset.audio_lead_ms is not None and offset.confidence >= 0.3:
            self._recent.append(offset.audio_lead_ms)
            self._recent_confidence.append(offset.confidence)
        smoothed = statistics.median(self._recent) if self._recent else None
        data: dict[str, JsonValue] = {
            "audio_lead_ms": offset.audio_lead_ms,
            "confidence": offset.confidence,
            "method": offset.method,
            "smoothed_audio_lead_ms": smoothed,
            "smoothed_confidence": (
                round(statistics.median(self._recent_confidence), 4)
                if self._recent_confidence
                else None
            ),
            "drift_ppm": None,
            "track_id": offset.track_id,
            "reason": offset.reason,
        }
        self._last_offset = data
        return Event(
            type=OFFSET_EVENT,
            stream=window.stream,
            start_ns=window.start_ns,
            end_ns=window.end_ns,
            data=data,
            clock=window.clock,
            closed_ns=window.closed_ns,
        )


class SpeakerFactory:
    """Entry point ``speaker`` of group ``crossmodald.plugins``."""

    config_model: ClassVar[type[PluginConfig]] = SpeakerConfig
    provides: ClassVar[ProductKey[Any] | None] = SPEAKING

    @classmethod
    def create(cls, config: Any, device: str) -> SpeakerPlugin:
        """Load the weights (or fall back / refuse, as the config says).

        Raises:
            WeightsError: The weights cannot be loaded and ``on_weights_error`` is "disable".
        """
        if not isinstance(config, SpeakerConfig):
            raise TypeError(f"speaker: expected SpeakerConfig, got {type(config).__name__}")
        model: LightASD | None = None
        if config.weights is not None:
            try:
                model = load_light_asd(config.weights, device)
            except WeightsError as exc:
                if config.on_weights_error == "disable":
                    raise
                log.warning("speaker: %s; using the weight-free fallback", exc)
        return SpeakerPlugin(config, model, device)
