"""What a lip-sync checkpoint reads on in-sync clips, by window length: its calibration.

The ``lipsync`` plugin subtracts what the model reads on in-sync clips of held-out speakers (the
checkpoint's ``calibration_ms``). That reading depends on how long a span the model scans:
lipsync-v2 reads its seven validation speakers at -36 ms in 2 s windows and -49 ms in 5 s
ones, so one figure for every length leaves ~20 ms of bias in 5 s windows. ``crossmodald train
lipsync`` measures it at 2 s and 5 s (``calibration_by_window_ms``) and the plugin interpolates
for the span it scans; this prints the readings at every length (median over windows every 1 s,
unshifted, scanned over +/-400 ms, as training measures them; and per clip) and, with
``--write OUT``, adds the table to a checkpoint written before training measured it (the clips
must be the checkpoint's own validation clips; its 2 s reading must come out as its stored
``calibration_ms``).

    python benchmarks/lipsync_calibration.py VAL_CLIPS... [--weights W] [--cache DIR]
        [--seconds 2 3 4 5] [--write OUT]

VAL_CLIPS: e.g. the seven PC-AVS clips named in weights/lipsync-v2.data.json under ``val_data``.
lipsync-v2's table was written so, from the repository root (then copied over the shipped
file)::

    python3 benchmarks/lipsync_calibration.py \\
        ../shared/datasets/pc-avs/{00015,00086,00098,00373,681100216,681600002,731200067}.mp4 \\
        --write /tmp/lipsync-v2.pt
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from crossmodald_plugins.lipsync.data import extract_all, find_clips
from crossmodald_plugins.lipsync.model import load_model, read_checkpoint
from crossmodald_plugins.lipsync.plugin import SHIPPED_WEIGHTS
from crossmodald_plugins.lipsync.train import add_calibration_table, in_sync_leads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", type=Path, nargs="+")
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--cache", type=Path, default=None, help="features cache (reused)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 3.0, 4.0, 5.0])
    parser.add_argument("--write", type=Path, default=None, help="checkpoint with the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stored = read_checkpoint(args.weights)
    model = load_model(args.weights, "cpu", stored)
    clips, skipped = extract_all(find_clips(args.clips), args.cache)
    for why in skipped:
        print(f"skipped {why}")
    print(f"{args.weights.name}: stored calibration_ms {stored.get('calibration_ms')}, "
          f"table {stored.get('calibration_by_window_ms')}")  # fmt: skip
    print(f"{'window':>7} {'median ms':>10}  per clip (ms; - : shorter than the window)")
    for seconds in args.seconds:
        slots = round(seconds * 25)
        each = [in_sync_leads(model, [clip], "cpu", slots) for clip in clips]
        every = [lead for leads in each for lead in leads]
        shown = " ".join(f"{statistics.median(v):+.1f}" if v else "-" for v in each)
        median = f"{statistics.median(every):+.1f}" if every else "-"
        print(f"{seconds:>6.1f}s {median:>10}  {shown}", flush=True)
    if args.write is not None:
        table = add_calibration_table(args.weights, args.clips, args.write, cache=args.cache)
        rows = ", ".join(f"{s:g} s: {ms:+.1f} ms" for s, ms in table)
        print(f"wrote {args.write}: calibration_by_window_ms {rows}")


if __name__ == "__main__":
    main()
