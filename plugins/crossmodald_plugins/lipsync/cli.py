"""``crossmodald train lipsync``: argument parsing (torch is imported only when it runs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossmodald.cli import finite_float

from .settings import TrainSettings

DESCRIPTION = (
    "Train the lip-sync model on talking-face clips whose audio is in sync with the picture; "
    "negatives come from shifting each clip's own audio. Running the same command again resumes "
    "from --out."
)


def _non_negative(text: str) -> float:
    value = finite_float(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_parser(sub: Any) -> None:
    """The ``train lipsync`` subcommand (``sub``: the ``train`` command's subparsers)."""
    p = sub.add_parser(
        "lipsync",
        help="train the lip-sync model on in-sync talking-face clips",
        description=DESCRIPTION,
    )
    p.add_argument("data", type=Path, nargs="+", help="clips or folders of clips (in sync)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (or resume)")
    p.add_argument("--val", type=Path, nargs="*", default=[], help="validation clips/folders")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--cache", type=Path, help="folder for extracted features (reused)")
    d = TrainSettings()
    p.add_argument("--epochs", type=int, default=d.epochs, help="per member (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--members",
        type=_positive_int,
        default=d.members,
        help="models trained one after another (seeds SEED, SEED+1, ...) and served as one "
        "(their mean cosine; default %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--steps-per-epoch", type=int, default=0, help="default: one pass")
    p.add_argument(
        "--warp",
        type=_non_negative,
        default=d.warp,
        help="audio frequency warp, up to exp(+/-WARP) (other voices; 0: none; default "
        "%(default)s)",
    )
    p.add_argument(
        "--aspect",
        type=_non_negative,
        default=d.aspect,
        help="lip width against height, up to exp(+/-ASPECT) (turned faces; 0: none; default "
        "%(default)s)",
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    settings = TrainSettings(
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        steps_per_epoch=args.steps_per_epoch,
        warp=args.warp,
        aspect=args.aspect,
        members=args.members,
    )
    import torch

    from .data import ClipError
    from .model import CheckpointError
    from .train import train

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"train: device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    try:
        result = train(
            args.data,
            args.out,
            val=args.val,
            settings=settings,
            device=args.device,
            cache=args.cache,
        )
    except (ClipError, CheckpointError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    last = result["history"][-1] if result["history"] else {}
    print(summary(args.out, int(result["epoch"]), last))
    return 0


def summary(out: Path, epoch: int, record: Mapping[str, float]) -> str:
    """The command's last line: what it wrote and the last epoch's figures, in words."""
    line = f"wrote {out} after epoch {epoch}"
    if "loss" in record:
        line += f": loss {record['loss']:.3f}"
    if record.get("val_windows"):
        line += (
            f"; validation ({int(record['val_windows'])} windows, audio shifted by -200, 0 and "
            f"+200 ms): {record['val_within_40ms']:.1%} within 40 ms, median error "
            f"{record['val_median_abs_error_ms']:.1f} ms; in-sync clips read "
            f"{record['val_bias_ms']:+.1f} ms, which the plugin subtracts "
            f"({record['val_within_40ms_calibrated']:.1%} within 40 ms after it)"
        )
        if "val_bias_ms_5s" in record:
            line += f", and {record['val_bias_ms_5s']:+.1f} ms in 5 s windows"
    elif "loss" in record:
        line += "; no validation clips (--val)"
    if "val_speaker_threshold" in record:
        line += (
            f"; a face speaks from an agreement of {record['val_speaker_threshold']:.3f} "
            f"(until {record['val_speaker_release_threshold']:.3f}), and with its own voice it "
            f"agrees better than with another's in {record['val_speaker_separation']:.1%} of "
            "windows"
        )
    return line
