"""Light-ASD weights: the published files, fetching them, and loading them with clear errors.

The project ships no weights. ``crossmodald models fetch light-asd`` downloads the published file
from its upstream address, checks its pinned sha256 and renames it into place atomically; the
plugin's config names the file. Loading is strict: a file that is missing, unreadable, or holds
another architecture raises :class:`WeightsError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import LightASD

#: Bytes per read while downloading.
_CHUNK_BYTES = 1 << 16
#: Seconds a download may stall before it fails.
_TIMEOUT_S = 60.0
#: How many mismatching keys an error message lists.
_MAX_KEYS_SHOWN = 6


class WeightsError(Exception):
    """Weights that cannot be fetched or loaded; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class PublishedWeights:
    """A published weights file."""

    name: str
    filename: str
    sha256: str
    url: str
    about: str


_UPSTREAM = "https://github.com/Junhua-Liao/Light-ASD/raw/main/weight/"

#: Published Light-ASD state dicts (MIT licence), by the name ``models fetch`` takes.
PUBLISHED: dict[str, PublishedWeights] = {
    # The AVA model is the default: it is the one trained on the features the reference pipeline
    # computes (16 kHz MFCCs; its first-layer BatchNorm statistics match ours, see
    # diagnostics.py). The TalkSet fine-tune's statistics are those of 44.1/48 kHz audio framed
    # as if it were 16 kHz, and its score hardly depends on the sound (silence and another
    # person's speech score as high as the face's own), so it cannot tell which of two faces
    # talks, nor scan an offset; it is listed for visual-only use.
    "light-asd": PublishedWeights(
        name="light-asd",
        filename="pretrain_AVA_CVPR.model",
        sha256="d44bc3ea7baa8e0946fa3921311714a630ed8b90a1928fab0dbe30d918909317",
        url=_UPSTREAM + "pretrain_AVA_CVPR.model",
        about="Light-ASD trained on AVA-ActiveSpeaker; val mAP 94.06 %",
    ),
    "light-asd-talkset": PublishedWeights(
        name="light-asd-talkset",
        filename="finetuning_TalkSet.model",
        sha256="efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5",
        url=_UPSTREAM + "finetuning_TalkSet.model",
        about=(
            "Light-ASD fine-tuned on TalkSet; Columbia ASD F1 95.5 %; trained on audio at "
            "another rate: its score ignores the sound (no lip sync, no two-face choice)"
        ),
    ),
}


def default_models_dir() -> Path:
    """Where fetched models go by default: ``$XDG_DATA_HOME/crossmodald/models``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "crossmodald" / "models"


def _published(name: str) -> PublishedWeights:
    for entry in PUBLISHED.values():
        if name in (entry.name, entry.filename):
            return entry
    known = ", ".join(sorted(PUBLISHED))
    raise WeightsError(f"unknown model {name!r}: known models are {known}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(name: str, dest: Path, url: str | None = None) -> Path:
    """Download a published weights file into the folder ``dest`` and check its sha256.

    The download streams into a temporary file beside the target and is renamed into place
    only once its sha256 matches the pinned one, so the target is never half-written. A file
    already in place with the right sha256 is kept without downloading.

    Args:
        name: ``light-asd`` (AVA), ``light-asd-talkset``, or a published file name.
        dest: Folder to put the file in (created if missing).
        url: Download from here instead of the upstream address (a mirror, or a test server).

    Returns:
        The path of the verified file.

    Raises:
        WeightsError: Unknown name, download failure, or sha256 mismatch (the download is
            removed).
    """
    entry = _published(name)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / entry.filename
    if target.is_file() and sha256_file(target) == entry.sha256:
        return target
    source = url or entry.url
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(source, timeout=_TIMEOUT_S) as resp:
                    while chunk := resp.read(_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise WeightsError(
                    f"{entry.filename}: download from {source} failed: {exc}"
                ) from exc
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != entry.sha256:
            raise WeightsError(
                f"{entry.filename}: sha256 mismatch for the download from {source}: "
                f"got {got}, expected {entry.sha256}; the file was removed"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def models_fetch_command(name: str, dest: Path | None, url: str | None) -> int:
    """``crossmodald models fetch NAME [--dest DIR] [--url URL]``: 0 on success, 1 on error.

    Prints the fetched file's path on stdout, or a one-line error on stderr.
    """
    folder = dest if dest is not None else default_models_dir()
    try:
        path = fetch_weights(name, folder, url)
    except WeightsError as exc:
        print(f"crossmodald models fetch: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _describe_mismatch(
    path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> str | None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
            more = f" (+{len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else ""
            parts.append(f"{len(keys)} {label}: {shown}{more}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {', '.join(shapes[:_MAX_KEYS_SHOWN])}")
    if not parts:
        return None
    return f"{path}: not a Light-ASD state dict: " + "; ".join(parts)


def load_light_asd(path: Path, device: str | torch.device = "cpu") -> LightASD:
    """Build :class:`LightASD` from a weights file, strictly, in eval mode on ``device``.

    Raises:
        WeightsError: The file is missing, cannot be read as a PyTorch state dict, or its keys
            or shapes do not match the architecture (the message lists them).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: Light-ASD weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; all mean "unreadable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable PyTorch state dict ({reason})") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    model = LightASD()
    problem = _describe_mismatch(path, state, model.state_dict())
    if problem is not None:
        raise WeightsError(problem)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
