"""Training data: a talking-face clip as lip features and log-mel on the 25 fps slot grid.

Each clip (one face, audio and video in sync) is decoded with PyAV, Face Mesh runs on every
picture, and the lip poses are put on the 40 ms slot grid from the first frame's time (the frame
on screen at each slot; 30 fps footage is resampled by this). The audio's log-mel is cut to start
at the first frame's time. Results are cached per clip by content hash (``.npz``) so a resumed or
repeated training run does not extract twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from .features import STEPS_PER_SLOT, log_mel, slot_index
from .landmarks import poses_of_frames

#: Bump when the extracted features change meaning (old cache entries are then ignored).
FEATURE_VERSION = 1
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".flv", ".mpg")


class ClipError(ValueError):
    """A clip cannot be used for training (no audio, no video, no face, too short)."""


@dataclass(frozen=True, slots=True)
class ClipFeatures:
    """One clip on the slot grid.

    Attributes:
        name: File name.
        sha256: Hash of the file's bytes.
        poses: ``(slots, 80)`` normalised lip poses.
        valid: Per slot, whether Face Mesh found the face.
        mel: ``(4 * slots, 40)`` log-mel, step ``4 k`` at slot ``k``'s time.
    """

    name: str
    sha256: str
    poses: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]
    mel: npt.NDArray[np.float32]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_clips(paths: Iterable[Path]) -> list[Path]:
    """Video files named directly or found (recursively) in the folders given, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ClipError(f"{path}: no such file or folder")
    return found


def decode(
    path: Path,
) -> tuple[list[npt.NDArray[np.uint8]], npt.NDArray[np.float64], npt.NDArray[np.float32], int]:
    """Grey pictures, their times (s), mono audio and its rate, each on the file's timeline."""
    lumas: list[npt.NDArray[np.uint8]] = []
    times: list[float] = []
    chunks: list[npt.NDArray[np.float32]] = []
    audio_start: float | None = None
    rate = 0
    with av.open(str(path)) as container:
        if not container.streams.video or not container.streams.audio:
            raise ClipError(f"{path.name}: needs both video and audio")
        vstream = container.streams.video[0]
        astream = container.streams.audio[0]
        for frame in container.decode(vstream, astream):
            if isinstance(frame, av.VideoFrame):
                if frame.pts is None or frame.time_base is None:
                    continue
                lumas.append(np.asarray(frame.to_ndarray(format="gray"), np.uint8))
                times.append(float(frame.pts * frame.time_base))
            elif isinstance(frame, av.AudioFrame):
                if audio_start is None and frame.pts is not None and frame.time_base is not None:
                    audio_start = float(frame.pts * frame.time_base)
                rate = frame.sample_rate
                samples = frame.to_ndarray().astype(np.float32)
                if samples.ndim == 2 and samples.shape[0] > 1 and not frame.format.is_planar:
                    samples = samples.reshape(-1, len(frame.layout.channels)).T
                if np.issubdtype(frame.to_ndarray().dtype, np.integer):
                    samples = samples / 32768.0
                chunks.append(samples.mean(axis=0) if samples.ndim == 2 else samples)
    if not lumas or not chunks:
        raise ClipError(f"{path.name}: no decodable video or audio")
    audio = np.concatenate(chunks).astype(np.float32)
    # Put the audio on the same timeline as the pictures (pad or cut its start).
    lead = round((audio_start or 0.0) * rate)
    if lead > 0:
        audio = np.concatenate([np.zeros(lead, np.float32), audio])
    elif lead < 0:
        audio = audio[-lead:]
    order = np.argsort(times)
    return [lumas[i] for i in order], np.asarray(times)[order], audio, rate


def extract(path: Path, sha: str | None = None) -> ClipFeatures:
    """Decode one clip and compute its features on the slot grid."""
    lumas, times, audio, rate = decode(path)
    first = float(times[0])
    duration = min(times[-1] - first + 1.0 / 25.0, len(audio) / rate - first)
    n_slots = int(duration * 1000.0 // 40)
    if n_slots < 10:
        raise ClipError(f"{path.name}: too short ({duration:.2f} s)")
    idx = slot_index(times, first, n_slots)
    used = sorted(set(idx.tolist()))
    poses_u, valid_u = poses_of_frames([lumas[i] for i in used])
    where = {f: k for k, f in enumerate(used)}
    pick = np.array([where[f] for f in idx.tolist()])
    poses, valid = poses_u[pick], valid_u[pick]
    if not valid.any():
        raise ClipError(f"{path.name}: Face Mesh found no face")
    start = round(first * rate)
    mel = log_mel(audio[start:], rate)[: n_slots * STEPS_PER_SLOT]
    if len(mel) < n_slots * STEPS_PER_SLOT:
        mel = np.concatenate([mel, np.repeat(mel[-1:], n_slots * STEPS_PER_SLOT - len(mel), 0)])
    return ClipFeatures(path.name, sha or sha256_file(path), poses, valid, mel)


def load_or_extract(path: Path, cache: Path | None) -> ClipFeatures:
    """:func:`extract`, cached under ``cache`` by the file's sha256 (None: no cache)."""
    sha = sha256_file(path)
    if cache is not None:
        entry = cache / f"v{FEATURE_VERSION}-{sha}.npz"
        if entry.exists():
            with np.load(entry) as z:
                return ClipFeatures(path.name, sha, z["poses"], z["valid"], z["mel"])
    feats = extract(path, sha)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{sha}.tmp.npz"
        np.savez(tmp, poses=feats.poses, valid=feats.valid, mel=feats.mel)
        tmp.replace(cache / f"v{FEATURE_VERSION}-{sha}.npz")
    return feats


def extract_all(paths: Sequence[Path], cache: Path | None) -> tuple[list[ClipFeatures], list[str]]:
    """Features of every clip; clips that cannot be used are skipped with a reason."""
    out: list[ClipFeatures] = []
    skipped: list[str] = []
    for path in paths:
        try:
            out.append(load_or_extract(path, cache))
        except (ClipError, av.error.FFmpegError) as exc:
            skipped.append(f"{path}: {exc}")
    return out, skipped
