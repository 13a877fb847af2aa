"""Dialogue turns: which face track (or "off-screen") speaks in each speech segment.

Pure function of two inputs the daemon already has: speech segments (from the ``speech``
plugin) and per-track, per-frame speaking scores (from the active-speaker plugin). Within a
segment every frame is given to the track whose score is highest and at least ``threshold``,
or to nobody (off-screen); the labels are smoothed with a majority vote over ``smooth_ms`` and
runs shorter than ``min_turn_ms`` are merged into their neighbour, so one segment may hold
several turns when the speaker changes without a pause.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from crossmodald.bus.events import Event
from crossmodald.media import NS_PER_MS, ClockKind
from crossmodald_plugins.vad.segments import SpeechSegment

EVENT_TYPE = "dialogue.turn"
OFF_SCREEN = "off-screen"


@dataclass(frozen=True, slots=True)
class TrackScores:
    """Speaking scores of one face track.

    Attributes:
        track_id: The face track.
        pts_ns: Frame times, ascending.
        scores: Speaking score per frame (a probability unless ``threshold`` is changed).
    """

    track_id: int
    pts_ns: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.pts_ns.shape != self.scores.shape or self.pts_ns.ndim != 1:
            raise ValueError(
                f"track {self.track_id}: pts_ns {self.pts_ns.shape} and scores "
                f"{self.scores.shape} must be 1-D and the same length"
            )


@dataclass(frozen=True, slots=True)
class DialogueTurn:
    """A stretch of speech attributed to one speaker.

    Attributes:
        start_ns: Start on the stream's timeline.
        end_ns: End (exclusive).
        speaker: The face track id, or None when nobody visible speaks (off-screen).
        confidence: Share of the turn's frames whose own label agreed with the turn's speaker.
        score: Mean speaking score of the speaker over the turn (0 for off-screen).
    """

    start_ns: int
    end_ns: int
    speaker: int | None
    confidence: float
    score: float

    def event(self, stream: str, clock: ClockKind = ClockKind.UNKNOWN) -> Event:
        """The ``dialogue.turn`` event (``data.speaker``: track id or "off-screen")."""
        return Event(
            type=EVENT_TYPE,
            stream=stream,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            data={
                "speaker": self.speaker if self.speaker is not None else OFF_SCREEN,
                "confidence": round(self.confidence, 3),
                "score": round(self.score, 4),
            },
            clock=clock,
        )


def _score_at(
    track: TrackScores, times: npt.NDArray[np.int64], tol_ns: int
) -> npt.NDArray[np.float64]:
    """Each time's nearest frame score, or NaN where the track has no frame within tol_ns."""
    out = np.full(times.shape, np.nan)
    if track.pts_ns.size == 0:
        return out
    idx = np.clip(np.searchsorted(track.pts_ns, times), 1, track.pts_ns.size) - 1
    right = np.clip(idx + 1, 0, track.pts_ns.size - 1)
    pick = np.where(
        np.abs(track.pts_ns[right] - times) < np.abs(track.pts_ns[idx] - times), right, idx
    )
    near = np.abs(track.pts_ns[pick] - times) <= tol_ns
    out[near] = track.scores[pick][near]
    return out


def attribute_turns(
    segments: Sequence[SpeechSegment],
    tracks: Sequence[TrackScores],
    *,
    threshold: float = 0.5,
    step_ms: float = 40.0,
    smooth_ms: float = 400.0,
    min_turn_ms: float = 500.0,
) -> list[DialogueTurn]:
    """Split speech segments into turns attributed to face tracks or off-screen.

    Args:
        segments: Speech segments, in any order.
        tracks: Speaking scores per face track.
        threshold: Least score for a track to count as speaking on a frame.
        step_ms: Time step of the labelling (one video frame at 25 fps).
        smooth_ms: Majority-vote window over the per-step labels.
        min_turn_ms: Shorter runs are merged into the previous (or next) turn.

    Returns:
        Turns in time order; every segment's span is covered exactly once.
    """
    if step_ms <= 0 or smooth_ms < 0 or min_turn_ms < 0:
        raise ValueError("step_ms must be positive; smooth_ms and min_turn_ms >= 0")
    step_ns = round(step_ms * NS_PER_MS)
    half = max(0, round(smooth_ms / step_ms / 2))
    min_steps = max(1, round(min_turn_ms / step_ms))
    turns: list[DialogueTurn] = []
    for seg in sorted(segments, key=lambda s: s.start_ns):
        if seg.end_ns <= seg.start_ns:
            continue
        times = np.arange(seg.start_ns + step_ns // 2, seg.end_ns, step_ns, dtype=np.int64)
        if times.size == 0:
            times = np.array([(seg.start_ns + seg.end_ns) // 2], dtype=np.int64)
        if tracks:
            table = np.stack([_score_at(t, times, step_ns) for t in tracks])  # (tracks, steps)
            filled = np.where(np.isnan(table), -np.inf, table)
            best = filled.argmax(axis=0)
            best_score = filled[best, np.arange(times.size)]
            raw = np.where(best_score >= threshold, best, -1)
        else:
            table = np.zeros((0, times.size))
            raw = np.full(times.size, -1)
        # Majority vote over a sliding window: a speaking score flickers frame to frame.
        labels = np.array(
            [
                Counter(raw[max(0, i - half) : i + half + 1].tolist()).most_common(1)[0][0]
                for i in range(times.size)
            ]
        )
        runs = _runs(labels)
        runs = _merge_short(runs, min_steps)
        for lo, hi, label in runs:
            start = seg.start_ns if lo == 0 else int(times[lo] - step_ns // 2)
            end = seg.end_ns if hi == times.size else int(times[hi] - step_ns // 2)
            agree = float(np.mean(raw[lo:hi] == label))
            if label >= 0:
                track = tracks[label]
                vals = table[label, lo:hi]
                score = float(np.nanmean(vals)) if np.isfinite(vals).any() else 0.0
                turns.append(DialogueTurn(start, end, track.track_id, agree, score))
            else:
                turns.append(DialogueTurn(start, end, None, agree, 0.0))
    return turns


def _runs(labels: npt.NDArray[np.int64]) -> list[tuple[int, int, int]]:
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, labels.size + 1):
        if i == labels.size or labels[i] != labels[start]:
            runs.append((start, i, int(labels[start])))
            start = i
    return runs


def _merge_short(runs: list[tuple[int, int, int]], min_steps: int) -> list[tuple[int, int, int]]:
    merged = list(runs)
    changed = True
    while changed and len(merged) > 1:
        changed = False
        for i, (lo, hi, _label) in enumerate(merged):
            if hi - lo >= min_steps:
                continue
            # Give the short run to the longer neighbour.
            if i == 0:
                _nlo, nhi, nlabel = merged[1]
                merged[0:2] = [(lo, nhi, nlabel)]
            elif i == len(merged) - 1 or (
                merged[i - 1][1] - merged[i - 1][0] >= merged[i + 1][1] - merged[i + 1][0]
            ):
                plo, _phi, plabel = merged[i - 1]
                merged[i - 1 : i + 1] = [(plo, hi, plabel)]
            else:
                _nlo, nhi, nlabel = merged[i + 1]
                merged[i : i + 2] = [(lo, nhi, nlabel)]
            changed = True
            break
    # Neighbours that now carry the same label become one run.
    out: list[tuple[int, int, int]] = []
    for run in merged:
        if out and out[-1][2] == run[2]:
            out[-1] = (out[-1][0], run[1], run[2])
        else:
            out.append(run)
    return out
