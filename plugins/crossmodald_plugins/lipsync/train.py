"""``crossmodald train lipsync DATA... --out FILE``: train the sync model on in-sync clips.

Any folder of talking-face clips whose audio is in sync with the picture will do: the negatives
come from shifting each clip's own audio (31 lags, -15..+15 slots of 40 ms). Validation runs on
``--val`` clips (other speakers, ideally) after every epoch: the share of 2 s windows whose
scanned offset lands within 40 ms of the truth, with the audio shifted by -200, 0 and +200 ms,
the reading of the unshifted windows (``calibration_ms``, which the plugin subtracts) and, with
two clips or more, the speaker thresholds for this model (:mod:`.agreement`).

``--members K`` (3 by default) trains K models one after another, each as a run of its own with
the next seed; the plugin serves them as one (the mean of their cosines, :class:`~.model.SyncEnsemble`).

The checkpoint (written atomically after every epoch) holds the finished members, the member in
training with its optimiser and RNG states, the settings, the sha256 of every training and
validation clip and the validation history; running the same command again resumes from it (the
settings and data must match).
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import torch

from . import agreement
from .data import ClipError, ClipFeatures, extract_all, find_clips
from .features import STEPS_PER_SLOT, standardise_audio, standardise_lips, warp_bands
from .landmarks import lip_features
from .model import (
    CheckpointError,
    LagScan,
    SyncEnsemble,
    SyncModel,
    SyncNet,
    load_model,
    members_from,
    read_checkpoint,
    save_checkpoint,
    scan,
)
from .settings import TrainSettings

#: Validation windows: length and step (slots), audio shifts (slots) and tolerance (ms).
VAL_SLOTS = 50
VAL_STEP = 25
VAL_SHIFTS = (-5, 0, 5)
VAL_TOLERANCE_MS = 40.0
VAL_MAX_LAG_MS = 400
#: Window lengths (slots) whose in-sync reading is measured for the calibration: the daemon's
#: 2 s windows and 5 s ones. A model reads in-sync speakers differently in longer windows
#: (lipsync-v2 on its validation speakers: -36 ms in 2 s windows, -49 ms in 5 s), so the
#: checkpoint stores each and the plugin interpolates for the span it scans.
CALIBRATION_SLOTS = (VAL_SLOTS, 125)


def _prepare(clip: ClipFeatures) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    return lip_features(clip.poses, clip.valid), clip.mel


class _Sampler:
    def __init__(
        self, clips: list[ClipFeatures], settings: TrainSettings, rng: np.random.Generator
    ):
        need = settings.span + 2 * settings.max_lag
        self.clips = [c for c in clips if len(c.poses) >= need]
        if not self.clips:
            raise ClipError(f"no training clip is long enough ({need} slots of 40 ms needed)")
        self.s = settings
        self.rng = rng
        weights = np.array([len(c.poses) - need + 1 for c in self.clips], np.float64)
        self.p = weights / weights.sum()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.s
        lips_out, mel_out = [], []
        for i in self.rng.choice(len(self.clips), size=s.batch, p=self.p):
            clip = self.clips[int(i)]
            start = int(self.rng.integers(s.max_lag, len(clip.poses) - s.span - s.max_lag + 1))
            poses = clip.poses[start : start + s.span]
            poses = poses + self.rng.normal(0.0, s.jitter, poses.shape).astype(np.float32)
            if s.aspect > 0.0:
                # A face turned or tilted away shows its mouth narrower or flatter.
                width = math.exp(float(self.rng.uniform(-s.aspect, s.aspect)))
                scale = np.array([width, 1.0], np.float32)
                poses = (poses.reshape(len(poses), -1, 2) * scale).reshape(poses.shape)
            lips = standardise_lips(lip_features(poses, clip.valid[start : start + s.span]))
            lo = (start - s.max_lag) * STEPS_PER_SLOT
            hi = (start + s.span + s.max_lag) * STEPS_PER_SLOT
            mel = clip.mel[lo:hi]
            if self.rng.random() < s.noise_prob:
                level = float(np.mean(mel)) + float(self.rng.uniform(-3.0, 1.0))
                mel = np.logaddexp(mel, level).astype(np.float32)
            if s.warp > 0.0:
                mel = warp_bands(mel, math.exp(float(self.rng.uniform(-s.warp, s.warp))))
            lips_out.append(lips)
            mel_out.append(standardise_audio(mel))
        return torch.from_numpy(np.stack(lips_out)), torch.from_numpy(np.stack(mel_out))


def validate(model: SyncModel, clips: Sequence[ClipFeatures], device: str) -> dict[str, float]:
    """Scan 2 s windows of the validation clips with the audio shifted by -200/0/+200 ms.

    Returns the share within 40 ms and the median error, raw and after removing the median
    offset the model reads on the unshifted windows (``bias_ms``: the lip-to-sound timing the
    training speakers taught it that these speakers do not share; the checkpoint stores it as
    ``calibration_ms`` and the plugin subtracts it), and the same in 5 s windows (``bias_ms_5s``,
    from clips that long: a longer scan reads in-sync speakers differently; the checkpoint's
    ``calibration_by_window_ms`` holds both). With two clips or more, also the plugin's
    speaker thresholds for this model (:mod:`.agreement`: ``speaker_threshold`` and
    ``speaker_release_threshold``, stored in the checkpoint under those names) and how often a
    face with its own audio agrees better than a face with another clip's audio at the same
    place (``speaker_separation``).
    """
    model.eval()
    errors: list[float] = []
    at_zero: list[float] = []  # the unshifted windows: the in-sync reading in 2 s windows
    for clip in clips:
        lips_all, mel_all = _prepare(clip)
        n = len(lips_all)
        for d in VAL_SHIFTS:
            for s in range(max(0, -d), n - VAL_SLOTS - max(0, d) + 1, VAL_STEP):
                res = _scan_window(model, lips_all, mel_all, s, d, VAL_SLOTS, device)
                errors.append(res.lead_ms - d * 40.0)
                if d == 0:
                    at_zero.append(res.lead_ms)
    longer = {
        _bias_key(slots): value
        for slots in CALIBRATION_SLOTS
        if slots != VAL_SLOTS
        and (value := in_sync_reading(model, clips, device, slots)) is not None
    }
    speaker: dict[str, float] = {}
    agreements = agreement.measure(model, clips, device=device)
    thresholds = agreement.speaker_thresholds(agreements)
    if thresholds is not None:
        speaker = {
            "speaker_threshold": thresholds[0],
            "speaker_release_threshold": thresholds[1],
            "speaker_separation": agreements.wins / max(1, agreements.pairs),
        }
    model.train()
    if not errors:
        return {"windows": 0.0, "within_40ms": 0.0, "median_abs_error_ms": math.nan, **speaker}
    err = np.array(errors)
    bias = float(np.median(at_zero)) if at_zero else 0.0
    return {
        "windows": float(len(err)),
        "within_40ms": float(np.mean(np.abs(err) <= VAL_TOLERANCE_MS)),
        "median_abs_error_ms": float(np.median(np.abs(err))),
        "bias_ms": bias,
        **longer,
        "within_40ms_calibrated": float(np.mean(np.abs(err - bias) <= VAL_TOLERANCE_MS)),
        **speaker,
    }


def _scan_window(
    model: SyncModel,
    lips_all: npt.NDArray[np.float32],
    mel_all: npt.NDArray[np.float32],
    start: int,
    shift: int,
    slots: int,
    device: str,
) -> LagScan:
    """The scan of ``slots`` slots of a clip's lip features from ``start`` against its audio
    ``shift`` slots later (the audio ``shift`` x 40 ms late), over +/- :data:`VAL_MAX_LAG_MS`."""
    lips = standardise_lips(lips_all[start : start + slots])
    a0 = (start + shift) * STEPS_PER_SLOT
    mel = standardise_audio(mel_all[a0 : a0 + slots * STEPS_PER_SLOT])
    (res,) = scan(
        model,
        torch.from_numpy(lips[None]).to(device),
        torch.from_numpy(mel[None]).to(device),
        VAL_MAX_LAG_MS,
    )
    return res


def in_sync_leads(
    model: SyncModel, clips: Sequence[ClipFeatures], device: str, slots: int
) -> list[float]:
    """The offset the model reads on each window of ``slots`` slots (every :data:`VAL_STEP`)
    of in-sync ``clips``, scanned over +/- :data:`VAL_MAX_LAG_MS` (none from a shorter clip)."""
    was_training = model.training
    model.eval()
    leads: list[float] = []
    for clip in clips:
        lips_all, mel_all = _prepare(clip)
        for s in range(0, len(lips_all) - slots + 1, VAL_STEP):
            leads.append(_scan_window(model, lips_all, mel_all, s, 0, slots, device).lead_ms)
    model.train(was_training)
    return leads


def in_sync_reading(
    model: SyncModel, clips: Sequence[ClipFeatures], device: str, slots: int
) -> float | None:
    """The median of :func:`in_sync_leads`: what the plugin subtracts for spans of that length
    (None: no clip is that long)."""
    leads = in_sync_leads(model, clips, device, slots)
    return float(np.median(leads)) if leads else None


def _bias_key(slots: int) -> str:
    """The figure of the in-sync reading in windows of ``slots``: ``bias_ms`` (2 s, the
    validation's windows) or ``bias_ms_5s``."""
    return "bias_ms" if slots == VAL_SLOTS else f"bias_ms_{slots * 40 // 1000}s"


def calibration_table(metrics: Mapping[str, float]) -> list[list[float]]:
    """``[[seconds, ms], ...]`` by window length from :func:`validate`'s figures (the
    checkpoint's ``calibration_by_window_ms``; empty without validation)."""
    table = []
    for slots in CALIBRATION_SLOTS:
        key = _bias_key(slots)
        if key in metrics:
            table.append([slots * 40 / 1000, float(metrics[key])])
    return table


def add_calibration_table(
    path: Path, val: Sequence[Path], out: Path, *, device: str = "cpu", cache: Path | None = None
) -> list[list[float]]:
    """Write ``out``: the checkpoint ``path`` with ``calibration_by_window_ms``, for one written
    before training measured the table. The longer windows' readings are measured on its own
    validation clips ``val`` (the same files as its ``val_data``); the 2 s entry is its stored
    ``calibration_ms``, which the same protocol must reproduce within 1 ms (a check that the
    clips and the protocol are those it was measured with). Returns the table.

    Raises:
        ClipError: ``val`` are not the checkpoint's validation clips.
        CheckpointError: ``path`` is not a checkpoint, or its 2 s reading is not reproduced.
    """
    stored = read_checkpoint(path)
    clips, skipped = extract_all(find_clips(val), cache)
    mine = sorted(c.sha256 for c in clips)
    theirs = sorted(d["sha256"] for d in stored.get("val_data", []))
    if skipped or not clips or mine != theirs:
        raise ClipError(
            f"{len(clips)} clips given ({len(skipped)} skipped), {len(theirs)} validation clips "
            f"in {path}: the table is measured on the clips the checkpoint was validated on"
        )
    model = load_model(path, device, stored)
    calibration = float(stored.get("calibration_ms", math.nan))
    metrics: dict[str, float] = {"bias_ms": calibration}
    for slots in CALIBRATION_SLOTS:
        value = in_sync_reading(model, clips, device, slots)
        if slots == VAL_SLOTS and (value is None or not abs(value - calibration) <= 1.0):
            raise CheckpointError(
                f"{path}: in-sync clips read {value} ms in 2 s windows, the checkpoint "
                f"stores {stored.get('calibration_ms')!r}: measured another way"
            )
        if slots != VAL_SLOTS and value is not None:
            metrics[_bias_key(slots)] = value
    table = calibration_table(metrics)
    stored["calibration_by_window_ms"] = table
    stored["metrics"] = {**stored.get("metrics", {}), **metrics}
    tmp = out.with_name(out.name + ".tmp")
    torch.save(stored, tmp)
    tmp.replace(out)
    return table


class _Bar:
    """A one-line progress bar on a TTY; one line per epoch otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()

    def step(self, where: str, step: int, steps: int, loss: float) -> None:
        """``where``: the epoch (and member) the step belongs to, e.g. ``epoch 3/30``."""
        if not self.tty:
            return
        done = int(30 * step / steps)
        self.out.write(
            f"\r{where} [{'#' * done}{'.' * (30 - done)}] {step}/{steps} loss {loss:.3f}"
        )
        self.out.flush()

    def epoch(self, line: str) -> None:
        self.out.write(("\r" if self.tty else "") + line + " " * 10 + "\n")
        self.out.flush()


#: Settings added after the first checkpoints were written, each with the value that those runs
#: had in effect: an older checkpoint resumes as the run it was.
_ADDED_SETTINGS: dict[str, Any] = {"warp": 0.0, "aspect": 0.0, "members": 1}


def _without_epochs(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "epochs"}
    return value


def _hashes(clips: Sequence[ClipFeatures]) -> list[dict[str, str]]:
    return [{"file": c.name, "sha256": c.sha256} for c in clips]


def train(
    data: Sequence[Path],
    out: Path,
    *,
    val: Sequence[Path] = (),
    settings: TrainSettings | None = None,
    device: str = "cpu",
    cache: Path | None = None,
    log: TextIO = sys.stderr,
) -> dict[str, Any]:
    """Train (or resume) and return the final checkpoint's dict (without tensors).

    With ``settings.members`` above 1 the members are trained one after another, member ``k``
    exactly as a run of its own with seed ``seed + k`` would be. The checkpoint holds the
    finished members (``members``) and the one in training (``state_dict``, with its optimiser
    and RNG states); the plugin averages the cosines of the finished members, the last one
    included once it has all its epochs (:func:`~.model.load_model`). The checkpoint's figures
    (``metrics``, ``calibration_ms``, the speaker thresholds) are those of what the plugin loads.
    More epochs on a resume continue the member in training; finished members keep theirs.
    """
    s = settings if settings is not None else TrainSettings()
    train_paths = find_clips(data)
    val_paths = find_clips(val)
    overlap = {p.resolve() for p in train_paths} & {p.resolve() for p in val_paths}
    if overlap:
        raise ClipError(f"{len(overlap)} clips are in both the training and validation data")
    if not train_paths:
        raise ClipError("no training clips found")
    t0 = time.monotonic()
    clips, skipped = extract_all(train_paths, cache)
    val_clips, val_skipped = extract_all(val_paths, cache)
    for why in [*skipped, *val_skipped]:
        print(f"skipped {why}", file=log)
    print(
        f"features: {len(clips)} training, {len(val_clips)} validation clips "
        f"({time.monotonic() - t0:.0f} s)",
        file=log,
    )
    meta: dict[str, Any] = {
        "settings": asdict(s),
        "train_data": _hashes(clips),
        "val_data": _hashes(val_clips),
        "history": [],
        "member": 0,  # the member in training (0-based) ...
        "epoch": 0,  # ... and its epochs done
    }
    run = _Run(out, s, meta, val_clips, device, log)
    resume: dict[str, Any] | None = None
    if out.exists():
        old = read_checkpoint(out)
        old["settings"] = {**_ADDED_SETTINGS, **old.get("settings", {})}
        for key in ("settings", "train_data", "val_data"):
            # More (or fewer) epochs continue the same run; anything else is another run.
            if _without_epochs(old.get(key)) != _without_epochs(meta[key]):
                raise CheckpointError(
                    f"{out}: exists with other {key.replace('_', ' ')}; "
                    "pass another --out, or the same data and settings to resume"
                )
        meta["history"] = list(old["history"])
        meta["member"] = int(old.get("member", 0))
        meta["epoch"] = int(old["epoch"])
        run.finished = list(old.get("members", []))
        run.metrics = run.finished_metrics = dict(old.get("metrics", {}))
        resume = old
        print(f"resuming {out} after epoch {meta['epoch']}", file=log)
    while True:
        run.train_member(clips, resume)
        resume = None
        if meta["member"] + 1 >= s.members:
            break
        run.next_member()
    return {k: v for k, v in meta.items()} | {"metrics": run.metrics}


class _Run:
    """One training run: its members, checkpoint and figures."""

    def __init__(
        self,
        out: Path,
        settings: TrainSettings,
        meta: dict[str, Any],
        val_clips: Sequence[ClipFeatures],
        device: str,
        log: TextIO,
    ) -> None:
        self.out = out
        self.s = settings
        self.meta = meta
        self.val_clips = val_clips
        self.device = device
        self.bar = _Bar(log)
        #: State dicts of the finished members.
        self.finished: list[dict[str, Any]] = []
        #: The figures of the finished members together (computed when the last one finished).
        self.finished_metrics: dict[str, float] = {}
        #: The figures of what the checkpoint serves.
        self.metrics: dict[str, float] = {}
        self.model: SyncNet | None = None

    def train_member(self, clips: Sequence[ClipFeatures], resume: dict[str, Any] | None) -> None:
        """Train member ``meta["member"]`` to the last epoch (from ``resume``'s state if given)."""
        s, meta, device = self.s, self.meta, self.device
        seed = s.seed + meta["member"]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = self.model = SyncNet(hidden=s.hidden).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=1e-4)
        if resume is not None:
            model.load_state_dict(resume["state_dict"])
            opt.load_state_dict(resume["optimizer"])
            rng.bit_generator.state = resume["rng"]["numpy"]
            torch.set_rng_state(resume["rng"]["torch"])
        sampler = _Sampler(list(clips), s, rng)
        slots = sum(len(c.poses) for c in sampler.clips)
        steps = s.steps_per_epoch or max(1, slots // (s.span * s.batch))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=s.lr, total_steps=s.epochs * steps, pct_start=0.1
        )
        with warnings.catch_warnings():
            # A resumed run moves the schedule to where it stopped before any optimiser step
            # of this process, which is what torch warns of (a fresh run's first value
            # skipped): not the case here, and a warning on every resume would say something
            # is wrong.
            warnings.filterwarnings(
                "ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning
            )
            for _ in range(min(meta["epoch"], s.epochs) * steps):
                sched.step()
        target = torch.full((s.batch * s.span,), s.max_lag, dtype=torch.long, device=device)
        where = f"member {meta['member'] + 1}/{s.members} " if s.members > 1 else ""
        model.train()
        for epoch in range(meta["epoch"] + 1, s.epochs + 1):
            t_epoch = time.monotonic()
            total = 0.0
            for step in range(1, steps + 1):
                lips, mel = sampler.batch()
                logits = model.lag_logits(lips.to(device), mel.to(device), s.max_lag)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                total += float(loss.detach())
                self.bar.step(where + f"epoch {epoch}/{s.epochs}", step, steps, total / step)
            metrics = validate(model, self.val_clips, device) if self.val_clips else {}
            record: dict[str, Any] = {"epoch": epoch}
            if s.members > 1:
                record = {"member": meta["member"] + 1, **record}
            record.update({"loss": total / steps, "seconds": time.monotonic() - t_epoch})
            record.update({f"val_{k}": v for k, v in metrics.items()})
            meta["history"].append(record)
            meta["epoch"] = epoch
            self.bar.epoch(_shown(record))
            self.metrics = self._served_metrics(metrics)
            extra = {
                "optimizer": opt.state_dict(),
                "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            }
            self._save(extra)

    def next_member(self) -> None:
        """Put the member just trained with the finished ones and start the next."""
        assert self.model is not None
        self.finished.append(self.model.state_dict())
        self.finished_metrics = self.metrics
        self.meta["member"] += 1
        self.meta["epoch"] = 0

    def _served_metrics(self, member: dict[str, float]) -> dict[str, float]:
        """The figures of what the checkpoint serves now (see :func:`~.model.load_model`):
        the member alone, the finished members, or all of them once the last is done."""
        if not self.finished:
            return member
        if self.meta["epoch"] < self.s.epochs:
            return self.finished_metrics
        assert self.model is not None
        members = [*members_from(self.finished, self.s.hidden), self.model]
        ensemble = SyncEnsemble(members).to(self.device)
        metrics = validate(ensemble, self.val_clips, self.device) if self.val_clips else {}
        record = {"ensemble": len(members), **{f"val_{k}": v for k, v in metrics.items()}}
        self.meta["history"].append(record)
        self.bar.epoch(_shown(record))
        return metrics

    def _save(self, extra: dict[str, Any]) -> None:
        assert self.model is not None
        metrics = self.metrics
        save_checkpoint(
            self.out,
            self.model,
            {
                **self.meta,
                **extra,
                "members": list(self.finished),
                "metrics": metrics,
                "calibration_ms": float(metrics.get("bias_ms", 0.0)),
                "calibration_by_window_ms": calibration_table(metrics),
                # The plugin's speaker thresholds for this model (none without two val clips).
                **{
                    key: float(metrics[key])
                    for key in ("speaker_threshold", "speaker_release_threshold")
                    if key in metrics
                },
            },
        )


def _shown(record: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
    )
