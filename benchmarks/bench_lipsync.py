"""Benchmark of the lipsync plugin's work: the lag scan per batch size, and Face Mesh per frame.

The scan: one face over 2 s (50 slots) and over the plugin's default span (``scan_s``, 5 s: 125
slots), +/-500 ms of lags, through the shipped weights (random inputs: the cost does not depend
on the values). Face Mesh: the lip landmarks of one face per frame (a real clip from
../shared/media when present, else a grey picture, which costs the detector pass on every
frame: an upper bound).

    python benchmarks/bench_lipsync.py [--device cpu|cuda] [--repeats 5] [--batches 1 8 32 128]
        [--train-steps N]

Where mediapipe is not installed (a GPU machine with only torch, say) the scan figures are
printed and Face Mesh is reported as skipped.

Prints scans per second per batch size and span, Face Mesh ms per frame, and for one stream with
one face (windows every 0.5 s: one scan, over 2 s and over the default span, and 12.5 new
frames per window) the real-time factor (media seconds per second of compute; > 1 is faster than
real time) and how many faces fit in real time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from crossmodald_plugins.lipsync.features import N_MELS, STEPS_PER_SLOT
from crossmodald_plugins.lipsync.landmarks import (
    FEATURE_DIM,
    LandmarksUnavailable,
    LipLandmarker,
    crop_rect,
)
from crossmodald_plugins.lipsync.model import SyncNet, load_model, scan
from crossmodald_plugins.lipsync.plugin import SHIPPED_WEIGHTS, LipSyncConfig
from crossmodald_plugins.lipsync.settings import TrainSettings

CLIP = Path(__file__).resolve().parents[2] / "shared" / "media" / "talkinghead_hdtf_aoc_25fps.mp4"


def scan_rate(device: str, batch: int, repeats: int, slots: int) -> float:
    model = load_model(SHIPPED_WEIGHTS, device)
    lips = torch.randn(batch, slots, FEATURE_DIM, device=device)
    mel = torch.randn(batch, slots * STEPS_PER_SLOT, N_MELS, device=device)
    scan(model, lips, mel, 500)  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        scan(model, lips, mel, 500)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def train_rate(device: str, steps: int) -> float:
    """Training steps per second of `crossmodald train lipsync`'s step (default settings: model,
    batch, span, lags, AdamW), on random features; data sampling is not counted."""
    s = TrainSettings()
    torch.manual_seed(0)
    model = SyncNet(hidden=s.hidden).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=1e-4)
    lips = torch.randn(s.batch, s.span, FEATURE_DIM, device=device)
    mel = torch.randn(s.batch, (s.span + 2 * s.max_lag) * STEPS_PER_SLOT, N_MELS, device=device)
    target = torch.full((s.batch * s.span,), s.max_lag, dtype=torch.long, device=device)
    model.train()

    def step() -> None:
        logits = model.lag_logits(lips, mel, s.max_lag)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    with torch.enable_grad():
        for _ in range(3):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def face_mesh_ms(frames: int) -> tuple[float, str]:
    if CLIP.is_file():
        from crossmodald.service.evaluate import decode_media

        media = decode_media(CLIP)
        lumas = [f.luma for f in media.video[:frames]]
        what = CLIP.name
    else:
        lumas = [np.full((512, 512), 90, np.uint8)] * frames
        what = "grey picture (no face: detector on every frame)"
    h, w = lumas[0].shape
    rect = crop_rect(w / 2, h / 2, w * 0.6, h * 0.6)
    with LipLandmarker() as marker:
        marker.pose_crop(lumas[0], rect)
        t = time.perf_counter()
        for luma in lumas:
            marker.pose_crop(luma, rect)
        return 1000 * (time.perf_counter() - t) / len(lumas), what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument(
        "--train-steps", type=int, default=0, help="also time this many training steps"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"device {args.device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    span_s = LipSyncConfig().scan_s
    one: dict[float, float] = {}
    for batch in args.batches:
        rates = {
            s: scan_rate(args.device, batch, args.repeats, round(s * 25)) for s in (2.0, span_s)
        }
        if batch == 1:
            one = rates
        print(
            f"scan  batch {batch:>4}: {rates[2.0]:8.1f} scans/s over 2 s, {rates[span_s]:8.1f} "
            f"over {span_s:g} s (+/-500 ms)"
        )
    if args.train_steps:
        rate = train_rate(args.device, args.train_steps)
        batch = TrainSettings().batch
        print(f"train step (batch {batch}): {rate:.1f} steps/s = {rate * batch:.0f} examples/s")
    try:
        ms, what = face_mesh_ms(args.frames)
    except LandmarksUnavailable as exc:
        print(f"Face Mesh: skipped ({exc})")
        return
    print(f"Face Mesh: {ms:.1f} ms per frame ({what})")
    if not one:
        return
    # One face, windows every 0.5 s: per window one scan and 12.5 new frames.
    for seconds, rate in one.items():
        per_window_s = 1.0 / rate + 12.5 * ms / 1000.0
        factor = 0.5 / per_window_s
        print(
            f"one stream, one face ({seconds:g} s scans every 0.5 s): {per_window_s * 1000:.0f} "
            f"ms of compute per 0.5 s of media = {factor:.1f}x real time; faces in real time "
            f"~{int(factor)}"
        )


if __name__ == "__main__":
    main()
