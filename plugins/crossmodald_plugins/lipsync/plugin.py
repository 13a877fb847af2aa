"""The ``lipsync`` plugin: offset, active speaker and sync alarm from one lip-sync scan per face.

Per window, for every face track with lip poses (the ``lips`` plugin's
:data:`~crossmodald_plugins.products.LIP_POSES`, on the shared face tracks), over the latest
``scan_s`` seconds up to the window's end (5 s: the window and, where it is shorter, the lips and
audio the stream's earlier windows brought, kept in the stream's state), on a 25 fps slot grid
from the span's first frame: the sync model (:mod:`.model`, shipped weights by default) scores
the face's lips against the audio at every 10 ms lag within +/- ``max_lag_ms``.

* ``sync.offset`` (``method`` "lipsync"): the best lag of the face whose lips match the sound
  best; ``confidence`` from how far the peak stands out, 0 with a ``reason`` when no face is
  visible, the audio is silent or no visible face's lips follow the sound. Smoothing and
  ``sync.alarm`` are the avsync plugin's (:class:`~crossmodald_plugins.avsync.session.AvSyncSession`).
* ``speaker`` start/end (``method`` "lipsync"): each face's lip/sound agreement (its mean
  cosine over every slot of the scan that the stream's lag pairs with audio: that lag is the
  median of the recent confident windows' best lags once three of them agree, since one
  scan's own best lag is too noisy to judge a face by), averaged over the face's last
  :data:`AGREEMENT_WINDOWS` windows with sound; the face that matches the voice is the one
  speaking (one at a time), through the speaker plugin's session
  (:class:`~crossmodald_plugins.asd.plugin.SpeakerSession`). Faces are judged once the
  stream's span holds ``scan_s``; a stream that ends sooner, when it ends (:meth:`finish`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
from pydantic import Field

from crossmodald.bus.events import Event, JsonValue
from crossmodald.media import NS_PER_MS, NS_PER_S, StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, Need, PluginConfig, ProductKey
from crossmodald_plugins.asd.plugin import (
    SpeakerConfig,
    SpeakerResult,
    SpeakerSession,
    longest_run,
)
from crossmodald_plugins.avsync.config import AvSyncConfig
from crossmodald_plugins.avsync.result import AvSyncResult
from crossmodald_plugins.avsync.session import AvSyncSession
from crossmodald_plugins.products import (
    FACE_TRACKS,
    LIP_POSES,
    FaceSpeaking,
    FaceTracks,
    LipPoses,
)

if TYPE_CHECKING:
    from crossmodald_plugins.faces.tracker import Box

    from .model import LagScan

log = logging.getLogger(__name__)

METHOD: Final = "lipsync"
#: The weights trained and shipped by the project (see weights/MODEL_CARD.md).
SHIPPED_WEIGHTS = Path(__file__).with_name("weights") / "lipsync-v2.pt"
SLOT_NS = 40 * NS_PER_MS
#: Fewest slots a face needs in a window to be scanned.
MIN_SLOTS = 25
#: The stream's lag for ``speaker`` is the median best lag of this many recent confident windows.
LAG_HISTORY = 15
#: ... once this many of them lie within this many lag steps (10 ms) of their median; until
#: then faces are judged where in-sync content reads (the calibration).
LAG_AGREEING = 3
LAG_AGREE_STEPS = 8
#: A face's ``speaker`` score is its agreement averaged over this many of its latest windows
#: with sound (on held-out speakers lipsync-v1's voiced face beat a face with other audio in
#: 87 % of single windows, 91 % over 4: ``benchmarks/lipsync_speaker_threshold.py``).
AGREEMENT_WINDOWS = 4
#: Log-mel energy (mean over bands, natural log) below which a window counts as silent.
SILENCE_LOG_ENERGY = -9.0
#: Speaker thresholds for a checkpoint that stores none (written before training measured
#: them): lipsync-v1's, measured on its validation speakers the same way (0.046 and -0.001).
DEFAULT_SPEAKER_THRESHOLD = 0.045
DEFAULT_SPEAKER_RELEASE = 0.0
#: A calibration (configured, or stored in a checkpoint) lies within +/- this many ms.
CALIBRATION_LIMIT_MS = 1000.0


class LipSyncConfig(PluginConfig):
    """``[[plugins]]`` table of the ``lipsync`` plugin."""

    type: str = "lipsync"
    #: A checkpoint of ``crossmodald train lipsync``; None: the shipped weights.
    weights: Path | None = None
    #: Subtracted from every offset the model reads (ms), whatever the scan's length; None: the
    #: checkpoint's median reading on in-sync clips of held-out speakers for a scan as long as
    #: the face's (``calibration_by_window_ms``; without that table, ``calibration_ms``).
    calibration_ms: float | None = Field(None, ge=-CALIBRATION_LIMIT_MS, le=CALIBRATION_LIMIT_MS)
    #: Offsets searched, ms either side.
    max_lag_ms: int = Field(500, ge=40, le=1500)
    #: Seconds each scan covers, ending at the window's end: a window shorter than this is
    #: scanned with the stream's audio and each face's lips from the windows before it (a
    #: stream's and a face's first windows scan what there is); a longer window, whole. Over
    #: 5 s rather than 2 s the voiced face is picked far more often and the offset reads closer
    #: (the model card), for 2.5 times the scan's model work; the events come as often.
    scan_s: float = Field(5.0, ge=1.0, le=30.0)
    #: Peak prominence ((peak - median) / std of the lag curve) that gives confidence 0 ...
    min_prominence: float = Field(2.5, ge=0.0, le=20.0)
    #: ... and the prominence that gives confidence 1.
    full_prominence: float = Field(6.0, gt=0.0, le=50.0)
    #: Smoothing and alarm, as the avsync plugin's keys of the same names.
    smoothing_windows: int = Field(8, ge=1, le=1000)
    min_confidence: float = Field(0.3, ge=0, le=1)
    alarm_audio_lead_ms: float = Field(90.0, gt=0, le=10_000)
    alarm_audio_lag_ms: float = Field(185.0, gt=0, le=10_000)
    alarm_windows: int = Field(3, ge=1, le=1000)
    #: ``speaker`` events: a face speaks where its lip/sound agreement (mean cosine over the
    #: window's slots at the stream's lag, averaged over its last 4 windows) is at least this
    #: and the best of all faces. None: the checkpoint's ``speaker_threshold`` (the 90th
    #: percentile of a face against audio that is not its own on its validation speakers,
    #: :mod:`.agreement`), or :data:`DEFAULT_SPEAKER_THRESHOLD` for a checkpoint without one.
    speaker_threshold: float | None = Field(None, gt=-1.0, lt=1.0)
    #: A face that speaks goes on speaking while its agreement stays above this (and it is the
    #: best face), so that a dip of the agreement in the middle of speech does not end its
    #: span; silent windows score 0 and end it. None: the checkpoint's
    #: ``speaker_release_threshold`` (the median of a face against audio that is not its own on
    #: its validation speakers, at least 0), or :data:`DEFAULT_SPEAKER_RELEASE`. Capped at the
    #: start threshold; equal to it: no hysteresis.
    speaker_release_threshold: float | None = Field(None, ge=0.0, lt=1.0)
    #: Each face is judged at the lag within +/- this many ms of the stream's lag where its own
    #: lag curve peaks (0: every face at the stream's lag). For scenes where every voice has a
    #: face on screen (a video call's tiles): who speaks then holds on a stream out of sync by up
    #: to this much before the stream's lag is known, and for a face whose lips run off the
    #: others' (a tile with an offset of its own); a voice from off screen is then given to a
    #: face far more often (the model card's limits: 43.5 % of such speech with no face
    #: speaking at 150, against 85.9 % at 0).
    speaker_search_ms: int = Field(0, ge=0, le=1500)
    hold_slots: int = Field(3, ge=1, le=250)
    speakers: bool = True

    def requires(self) -> tuple[Need, ...]:
        return (Need(FACE_TRACKS), Need(LIP_POSES))

    def avsync_config(self) -> AvSyncConfig:
        return AvSyncConfig(
            type="avsync",
            smoothing_windows=self.smoothing_windows,
            min_confidence=self.min_confidence,
            alarm_audio_lead_ms=self.alarm_audio_lead_ms,
            alarm_audio_lag_ms=self.alarm_audio_lag_ms,
            alarm_windows=self.alarm_windows,
        )

    def speaker_config(self, threshold: float) -> SpeakerConfig:
        """The speaker session's settings, with the start threshold in force (``threshold``)."""
        return SpeakerConfig(
            threshold=min(0.99, max(0.01, threshold)),
            fallback_threshold=min(0.99, max(0.01, threshold)),
            hold_slots=self.hold_slots,
            single_speaker=True,
            lipsync=False,
            turns=False,
        )


@dataclass(frozen=True, slots=True)
class LipSyncResult:
    """One window: the offset estimate and each face's per-slot agreement."""

    #: None for the result a stream gets when it ends (:meth:`LipSyncPlugin.finish`).
    offset: AvSyncResult | None
    faces: tuple[FaceSpeaking, ...]
    ended_tracks: tuple[int, ...]
    track_id: int | None


#: A face box as ``(x, y, w, h)`` (as :class:`~crossmodald_plugins.products.FaceSpeaking` has it).
XYWH = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class _FaceLips:
    """One face track's lip poses (frame times ascending) and boxes over a scan's span."""

    pts_ns: npt.NDArray[np.int64]
    poses: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]
    boxes: Mapping[int, XYWH]


@dataclass(frozen=True, slots=True)
class _Span:
    """What one scan covers: the stream's latest audio, video frame times and every face's lips
    up to the window's end. ``audio[origin_index]`` is the sample at ``origin_ns``."""

    end_ns: int
    audio: npt.NDArray[np.float32]
    rate: int
    origin_ns: int
    origin_index: int
    frames_ns: npt.NDArray[np.int64]
    faces: Mapping[int, _FaceLips]

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.rate

    def sample_at(self, pts_ns: int) -> int:
        """Index of the sample at ``pts_ns`` (at or after the span's first sample)."""
        return self.origin_index + (pts_ns - self.origin_ns) * self.rate // NS_PER_S


@dataclass(slots=True)
class _Recent:
    """The stream's audio, frame times and each face's lips over its latest windows, so that
    a scan may cover more than one window (``scan_s``). Where windows overlap, the newer
    window's samples and poses replace the older's; a window that does not join on (a gap,
    a new sample rate, time going back) starts the span anew."""

    span: _Span | None = None

    def add(self, window: Window, lips: LipPoses, tracks: FaceTracks, keep_ns: int) -> _Span:
        """Take in ``window`` (with audio and video) and its products; the span of the latest
        ``keep_ns`` (at least the window) up to its end."""
        rate, old = window.audio_rate, self.span
        audio = np.asarray(window.audio, np.float32)
        frames = np.fromiter((f.pts_ns for f in window.video), np.int64, len(window.video))
        before: Mapping[int, _FaceLips] = {}
        at = 0
        if old is not None and old.rate == rate and window.start_ns >= old.origin_ns:
            at = old.sample_at(window.start_ns)
            if at <= len(old.audio):
                audio = np.concatenate([old.audio[:at], audio])
                frames = np.concatenate([old.frames_ns[old.frames_ns < window.start_ns], frames])
                before = old.faces
            else:
                at = 0
        # Drop what lies before the span: samples first, then frames and poses before the
        # first sample kept.
        start_ns = window.end_ns - max(keep_ns, window.end_ns - window.start_ns)
        drop = max(0, at - (window.start_ns - start_ns) * rate // NS_PER_S)
        audio, at = audio[drop:], at - drop
        first_ns = window.start_ns - at * NS_PER_S // rate
        boxes_now = {
            t.track_id: {o.pts_ns: _xywh(o.box) for o in t.observations} for t in tracks.tracks
        }
        faces: dict[int, _FaceLips] = {}
        for track in lips.tracks:
            kept = before.get(track.track_id)
            pts, poses, valid = track.pts_ns, track.poses, track.valid
            boxes: dict[int, XYWH] = {}
            if kept is not None:
                k = (kept.pts_ns >= first_ns) & (kept.pts_ns < window.start_ns)
                pts = np.concatenate([kept.pts_ns[k], pts])
                poses = np.concatenate([kept.poses[k], poses])
                valid = np.concatenate([kept.valid[k], valid])
                boxes = {p: b for p, b in kept.boxes.items() if first_ns <= p < window.start_ns}
            boxes.update(boxes_now.get(track.track_id, {}))
            faces[track.track_id] = _FaceLips(pts, poses, valid, boxes)
        self.span = _Span(
            window.end_ns, audio, rate, window.start_ns, at, frames[frames >= first_ns], faces
        )
        return self.span


def _xywh(box: Box) -> XYWH:
    return (box.x, box.y, box.w, box.h)


@dataclass(slots=True)
class _StreamLag:
    """Per-stream state (host-owned): the best lag index of recent confident windows, each
    face track's agreement in its latest windows with sound, and the media a scan covers."""

    recent: deque[int] = field(default_factory=lambda: deque(maxlen=LAG_HISTORY))
    agreement: dict[int, deque[float]] = field(default_factory=dict)
    media: _Recent = field(default_factory=_Recent)
    #: The latest window's faces were judged (if not, the stream's end judges its span).
    judged: bool = False

    def lag(self, fallback: int) -> int:
        """The median of the recent lags, once :data:`LAG_AGREEING` of them lie within
        :data:`LAG_AGREE_STEPS` of it; ``fallback`` until then."""
        if len(self.recent) < LAG_AGREEING:
            return fallback
        median = int(np.median(self.recent))
        agreeing = sum(abs(lag - median) <= LAG_AGREE_STEPS for lag in self.recent)
        return median if agreeing >= LAG_AGREEING else fallback

    def average(self, track_id: int, value: float) -> float:
        """Add the track's agreement in a new window; its mean over the latest windows."""
        history = self.agreement.get(track_id)
        if history is None:
            history = self.agreement[track_id] = deque(maxlen=AGREEMENT_WINDOWS)
        history.append(value)
        return float(np.mean(history))

    def forget_except(self, track_ids: set[int]) -> None:
        """Drop the history of tracks not scanned now (a face that returns starts anew)."""
        for track_id in [t for t in self.agreement if t not in track_ids]:
            del self.agreement[track_id]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One window's face scans to run, and how to read them."""

    jobs: list[_Job]
    #: The audio is silent: no offset, every face scores 0.
    silent: bool
    #: Judge who speaks: the stream's span holds ``scan_s`` (until then, in a stream's first
    #: seconds or after a gap in its windows, scans serve the offset only: a face judged on a
    #: shorter span is more often the wrong one, and the speaker session keeps it).
    judge: bool


@dataclass(slots=True)
class _Job:
    window_index: int
    track_id: int
    slot_pts: npt.NDArray[np.int64]
    boxes: tuple[tuple[float, float, float, float], ...]
    lips: npt.NDArray[np.float32]
    mel: npt.NDArray[np.float32]


class LipSyncPlugin:
    """See the module docstring."""

    name = "lipsync"
    provides: ClassVar[ProductKey[Any] | None] = None
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "crossmodald_stream_audio_lead_ms",
            "gauge",
            "Latest A/V offset (positive: audio ahead of video).",
            "audio_lead_ms",
        ),
        MetricSpec("crossmodald_stream_alarm", "gauge", "1 while a sync alarm is on.", "alarm"),
        MetricSpec("crossmodald_stream_speakers", "gauge", "Faces speaking now.", "speaking_faces"),
    )

    def __init__(
        self,
        config: LipSyncConfig,
        model: Any,
        device: str,
        checkpoint: Mapping[str, Any] | None = None,
    ) -> None:
        """``checkpoint``: the weights' stored figures (``calibration_ms`` and
        ``calibration_by_window_ms``, the speaker thresholds); the config's values, where set,
        win over them."""
        import torch

        stored = checkpoint or {}

        def pick(configured: float | None, key: str, default: float) -> float:
            return configured if configured is not None else float(stored.get(key, default))

        self.config = config
        self.calibration_ms = pick(config.calibration_ms, "calibration_ms", 0.0)
        #: What in-sync content reads by scan length (seconds, ms), ascending; empty: one
        #: calibration for every length (set in the config, or a checkpoint without the table).
        table = stored.get("calibration_by_window_ms", ()) if config.calibration_ms is None else ()
        self.calibration_table: tuple[tuple[float, float], ...] = tuple(
            (float(seconds), float(ms)) for seconds, ms in table
        )
        self.speaker_threshold = pick(
            config.speaker_threshold, "speaker_threshold", DEFAULT_SPEAKER_THRESHOLD
        )
        #: Capped at the start threshold (the session caps it too).
        self.speaker_release = min(
            self.speaker_threshold,
            pick(
                config.speaker_release_threshold,
                "speaker_release_threshold",
                DEFAULT_SPEAKER_RELEASE,
            ),
        )
        self.model = model
        self.device = torch.device(device)
        self.method = METHOD
        self._speaker_config = config.speaker_config(self.speaker_threshold)

    def calibration_for(self, span_s: float) -> float:
        """What in-sync content reads in a scan of ``span_s`` seconds (subtracted from the
        offset): the checkpoint's reading at that length, linear between the lengths it was
        measured at and the nearest one's outside them; ``calibration_ms`` without a table."""
        if not self.calibration_table:
            return self.calibration_ms
        seconds, ms = zip(*self.calibration_table, strict=True)
        return float(np.interp(span_s, seconds, ms))

    def check_stream(self, stream: StreamInfo) -> str | None:
        if not stream.has_video:
            return "has no video"
        if not stream.has_audio:
            return "has no audio"
        return None

    def new_state(self, stream: StreamInfo) -> _StreamLag:
        return _StreamLag()

    def open(self, stream: StreamInfo) -> LipSyncSession:
        return LipSyncSession(self, stream)

    # -- inference --------------------------------------------------------------------------

    def infer(self, batch: Sequence[BatchItem[_StreamLag]]) -> list[LipSyncResult]:
        """Scan every face of every window; faces of equal length share one model call."""
        prepared = [self._prepare(i, item) for i, item in enumerate(batch)]
        jobs = [job for p in prepared for job in p.jobs]
        scans = self._scan(jobs)
        results = []
        for i, (item, p) in enumerate(zip(batch, prepared, strict=True)):
            mine = [(jobs[j], scans.get(j)) for j in range(len(jobs)) if jobs[j].window_index == i]
            results.append(self._result(item, mine, p))
        return results

    def finish(self, state: _StreamLag) -> LipSyncResult | None:
        """A stream that ended before its span held ``scan_s`` (a clip shorter than 5 s, or
        within 5 s of a gap in its windows): its faces judged over the span there was; None
        for any other stream."""
        span = state.media.span
        if state.judged or span is None or not self.config.speakers:
            return None
        prepared = self._jobs(0, span)
        scans = self._scan(prepared.jobs)
        scanned = [(job, scans[j]) for j, job in enumerate(prepared.jobs) if j in scans]
        if not scanned or prepared.silent:
            return None
        job, res = _best(scanned)
        at = state.lag(_nearest(res.lags_ms, self._calibration(job)))
        return LipSyncResult(None, self._judge(state, scanned, at, speaking=True), (), None)

    def _scan(self, jobs: Sequence[_Job]) -> dict[int, LagScan]:
        """Each job's lag scan, by its index in ``jobs`` (none for a job too short to scan)."""
        import torch

        from .model import scan

        scans: dict[int, LagScan] = {}
        by_len: dict[int, list[int]] = {}
        for j, job in enumerate(jobs):
            by_len.setdefault(len(job.slot_pts), []).append(j)
        for n, idx in by_len.items():
            if n < MIN_SLOTS:
                continue
            lips = torch.from_numpy(np.stack([jobs[j].lips for j in idx])).to(self.device)
            mel = torch.from_numpy(np.stack([jobs[j].mel for j in idx])).to(self.device)
            try:
                found_scans = scan(self.model, lips, mel, self.config.max_lag_ms)
            except ValueError:
                continue
            scans.update(zip(idx, found_scans, strict=True))
        return scans

    def _prepare(self, index: int, item: BatchItem[_StreamLag]) -> _Prepared:
        window = item.window
        if not window.video or window.audio_rate <= 0 or len(window.audio) == 0:
            return _Prepared([], silent=True, judge=False)
        keep_ns = round(self.config.scan_s * NS_PER_S)
        span = item.state.media.add(
            window, item.inputs[LIP_POSES], item.inputs[FACE_TRACKS], keep_ns
        )
        return self._jobs(index, span, judge=span.seconds * NS_PER_S >= keep_ns - SLOT_NS)

    def _jobs(self, index: int, span: _Span, judge: bool = True) -> _Prepared:
        """The scans of every face over ``span``."""
        from .features import STEPS_PER_SLOT, log_mel, standardise_audio, standardise_lips
        from .landmarks import lip_features

        first = int(span.frames_ns[0])
        n_slots = int((span.end_ns - first) // SLOT_NS)
        mel_all = log_mel(span.audio[span.sample_at(first) :], span.rate)
        n_slots = min(n_slots, len(mel_all) // STEPS_PER_SLOT)
        if n_slots < MIN_SLOTS:
            return _Prepared([], silent=False, judge=judge)
        mel_all = mel_all[: n_slots * STEPS_PER_SLOT]
        quiet = float(np.mean(mel_all)) < SILENCE_LOG_ENERGY
        slot_pts = first + SLOT_NS * np.arange(n_slots, dtype=np.int64)
        jobs = []
        for track_id, lips in span.faces.items():
            if len(lips.pts_ns) == 0 or not lips.valid.any():
                continue
            # The frame on screen at each slot; slots before the track's first frame or after
            # its last are outside the face's run.
            at = np.searchsorted(lips.pts_ns, slot_pts, side="right") - 1
            frame_ns = SLOT_NS * 2
            inside = (at >= 0) & (slot_pts - lips.pts_ns[np.clip(at, 0, None)] <= frame_ns)
            run = longest_run(inside.tolist())
            if run is None or run[1] - run[0] < MIN_SLOTS:
                continue
            lo, hi = run
            pick = at[lo:hi]
            feats = lip_features(lips.poses[pick], lips.valid[pick])
            no_box = (0.0, 0.0, 0.0, 0.0)
            jobs.append(
                _Job(
                    index,
                    track_id,
                    slot_pts[lo:hi],
                    tuple(lips.boxes.get(p, no_box) for p in lips.pts_ns[pick].tolist()),
                    standardise_lips(feats),
                    standardise_audio(mel_all[lo * STEPS_PER_SLOT : hi * STEPS_PER_SLOT]),
                )
            )
        return _Prepared(jobs, silent=quiet, judge=judge)

    def _result(
        self, item: BatchItem[_StreamLag], mine: list[tuple[_Job, LagScan | None]], p: _Prepared
    ) -> LipSyncResult:
        window = item.window
        ended = tuple(
            t.track_id for t in item.inputs[FACE_TRACKS].tracks if t.ended_pts_ns is not None
        )
        middle = (window.start_ns + window.end_ns) // 2
        scanned = [(job, res) for job, res in mine if res is not None]
        if not scanned:
            why = "no face" if not mine else "face not on screen long enough to scan"
            if not item.window.video:
                why = "no video"
            offset = AvSyncResult(None, 0.0, METHOD, middle, reason=why)
            return LipSyncResult(offset, (), ended, None)
        job, res = _best(scanned)
        c = self.config
        prominence = res.prominence
        confidence = (prominence - c.min_prominence) / (c.full_prominence - c.min_prominence)
        confidence = float(min(1.0, max(0.0, confidence)))
        if confidence > 0.0 and confidence >= c.min_confidence and not p.silent:
            # Only confident windows set the stream's lag (as only they count in the smoothed
            # offset): a weak window's best lag is as likely another face's noise as the
            # offset, and on short clips a few of them set the median
            # (benchmarks/lipsync_two_faces.py).
            item.state.recent.append(res.best)
        # Until three confident windows agree on a lag there is none to trust (an unconfident
        # scan's best lag is noise over +/-max_lag_ms, and one or two confident ones on a short
        # clip as likely another face's): faces are judged where in-sync content reads (the
        # calibration, for a scan as long as this one).
        calibration = self._calibration(job)
        faces: tuple[FaceSpeaking, ...] = ()
        if p.judge:
            at = item.state.lag(_nearest(res.lags_ms, calibration))
            faces = self._judge(item.state, scanned, at, speaking=not p.silent)
        else:
            item.state.judged = False
            item.state.forget_except(set())
        reason = ""
        if p.silent:
            confidence, reason = 0.0, "silent audio"
        elif confidence == 0.0:
            reason = "no visible face is talking (lips do not follow the sound)"
        lead = res.lead_ms - calibration
        offset = AvSyncResult(round(lead, 1), confidence, METHOD, middle, reason=reason)
        return LipSyncResult(offset, faces, ended, job.track_id)

    def _calibration(self, job: _Job) -> float:
        """What in-sync content reads in a scan as long as ``job``'s."""
        return self.calibration_for(len(job.slot_pts) * SLOT_NS / NS_PER_S)

    def _judge(
        self, state: _StreamLag, scanned: list[tuple[_Job, LagScan]], at: int, speaking: bool
    ) -> tuple[FaceSpeaking, ...]:
        """Every face's ``speaker`` score at lag index ``at`` (with ``speaker_search_ms``, at
        its own best lag near it); not ``speaking`` (silent audio) and with ``speakers = false``
        every face scores 0 and adds nothing to its history.

        Every face is judged at the stream's lag (or its own best one near it): there the voiced
        face's lips match the sound and a silent face's do not. Every slot that lag pairs with
        the span's audio is reported (not only the middle that every lag of the scan pairs): the
        speaker session judges each slot in the first window that reports it, so the slots at a
        window's newest edge are judged without waiting for the next window."""
        state.judged = True
        speaking = speaking and self.config.speakers
        faces = []
        for job, res in scanned:
            span = _scored_span(res.slot_by_lag[_searched(res, at, self.config.speaker_search_ms)])
            if span is None:
                continue
            lo, hi, agreement = span
            score = state.average(job.track_id, agreement) if speaking else 0.0
            faces.append(
                FaceSpeaking(
                    job.track_id,
                    job.slot_pts[lo:hi],
                    job.boxes[lo:hi],
                    np.full(hi - lo, score, dtype=np.float32),
                )
            )
        state.forget_except({f.track_id for f in faces})
        return tuple(faces)


def _best(scanned: Sequence[tuple[_Job, LagScan]]) -> tuple[_Job, LagScan]:
    """The face whose lag curve's peak stands out most: its reading is the window's offset and
    its best lag the one the stream's lag takes (the first such face on a tie)."""
    return max(scanned, key=lambda scanned_job: scanned_job[1].prominence)


def _searched(res: LagScan, at: int, within_ms: int) -> int:
    """Index of the lag within ``within_ms`` of lag ``at`` where ``res``'s curve peaks (``at``
    for 0). The curve, not each lag's own slots, decides: it averages the same lips at every
    lag."""
    if within_ms == 0:  # the default: no search, for every face and window
        return at
    near = np.flatnonzero(np.abs(res.lags_ms - res.lags_ms[at]) <= within_ms)
    return int(near[np.argmax(res.curve[near])])


def _nearest(lags_ms: npt.NDArray[np.float32], ms: float) -> int:
    """Index of the lag nearest ``ms``."""
    return int(np.argmin(np.abs(lags_ms - ms)))


def _scored_span(row: npt.NDArray[np.float32]) -> tuple[int, int, float] | None:
    """``[lo, hi)`` of the slots ``row`` scores and the face's mean cosine over them (None when
    it scores none). Per slot the cosine is too noisy to judge a face by; over the window's
    scored slots it separates the voiced face (see ``speaker_threshold``)."""
    scored = np.flatnonzero(np.isfinite(row))
    if scored.size == 0:
        return None
    lo, hi = int(scored[0]), int(scored[-1]) + 1
    return lo, hi, float(np.nanmean(row[lo:hi]))


class LipSyncSession:
    """``sync.offset``/``sync.alarm`` through avsync's session, ``speaker`` through speaker's."""

    def __init__(self, plugin: LipSyncPlugin, stream: StreamInfo) -> None:
        self._sync = AvSyncSession(stream, plugin.config.avsync_config())
        self._speakers = (
            SpeakerSession(_SpeakerSource(plugin), stream) if plugin.config.speakers else None
        )
        self._track: int | None = None

    def update(self, window: Window, result: LipSyncResult) -> list[Event]:
        events = []
        for event in self._sync.update(window, result.offset) if result.offset else ():
            if event.type == "sync.offset":
                event = _with(event, track_id=result.track_id)
            events.append(event)
        if self._speakers is not None:
            events += self._speakers.update(
                window, SpeakerResult(result.faces, None, METHOD, result.ended_tracks)
            )
        return events

    def status(self) -> Mapping[str, JsonValue]:
        out = dict(self._sync.status())
        if self._speakers is not None:
            speakers = self._speakers.status()
            out["speaking_faces"] = speakers["speaking_faces"]
            out["speaking_track_ids"] = speakers["speaking_track_ids"]
        return out

    def close(self) -> list[Event]:
        events = self._sync.close()
        if self._speakers is not None:
            events += self._speakers.close()
        return events


def _with(event: Event, **extra: JsonValue) -> Event:
    import dataclasses

    return dataclasses.replace(event, data={**event.data, **extra})


class _SpeakerSource:
    def __init__(self, plugin: LipSyncPlugin) -> None:
        self.config = plugin._speaker_config
        self.method = METHOD
        # The agreement a face needs to count as speaking (the speaker plugin's learned-model
        # and fallback thresholds are both this one here).
        self.threshold = self.config.threshold
        self.release_threshold = plugin.speaker_release


class LipSyncFactory:
    """Entry point ``lipsync`` of group ``crossmodald.plugins``."""

    config_model: ClassVar[type[PluginConfig]] = LipSyncConfig
    provides: ClassVar[ProductKey[Any] | None] = None

    @classmethod
    def create(cls, config: Any, device: str) -> LipSyncPlugin:
        """Load the weights (the shipped ones unless ``weights`` names a checkpoint).

        Raises:
            CheckpointError: The weights file is missing or not a lip-sync checkpoint.
        """
        from .model import CheckpointError, load_model, read_checkpoint

        if not isinstance(config, LipSyncConfig):
            raise TypeError(f"lipsync: expected LipSyncConfig, got {type(config).__name__}")
        path = config.weights or SHIPPED_WEIGHTS
        stored = read_checkpoint(path)
        model = load_model(path, device, stored)
        figures: dict[str, float] = {}
        # What the config would accept for the same keys (a hand-edited file says so here).
        limits = {
            "calibration_ms": (-CALIBRATION_LIMIT_MS, CALIBRATION_LIMIT_MS),
            "speaker_threshold": (-1.0, 1.0),
            "speaker_release_threshold": (-1.0, 1.0),
        }
        for key, (low, high) in limits.items():
            if key not in stored:
                continue
            value = stored[key]
            if not isinstance(value, int | float) or not low <= float(value) <= high:
                raise CheckpointError(
                    f"lipsync weights {path}: {key} is {value!r}, expected a number "
                    f"from {low:g} to {high:g}"
                )
            figures[key] = float(value)
        return LipSyncPlugin(config, model, device, {**figures, **_calibration_table(path, stored)})


def _calibration_table(path: Path, stored: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``calibration_by_window_ms`` (``[[seconds, ms], ...]``), checked: as
    :meth:`LipSyncPlugin.calibration_for` reads it, or no key when the checkpoint has none."""
    from .model import CheckpointError

    table = stored.get("calibration_by_window_ms")
    if table is None:
        return {}
    ok = isinstance(table, list | tuple) and all(
        isinstance(row, list | tuple)
        and len(row) == 2
        and all(isinstance(v, int | float) and math.isfinite(v) for v in row)
        and row[0] > 0
        and abs(row[1]) <= CALIBRATION_LIMIT_MS
        for row in table
    )
    seconds = [row[0] for row in table] if ok else []
    if not ok or seconds != sorted(set(seconds)):
        raise CheckpointError(
            f"lipsync weights {path}: calibration_by_window_ms is {table!r}, expected "
            f"[[seconds, ms], ...] with seconds > 0 ascending and ms from "
            f"{-CALIBRATION_LIMIT_MS:g} to {CALIBRATION_LIMIT_MS:g}"
        )
    return {"calibration_by_window_ms": tuple((float(s), float(ms)) for s, ms in table)}
