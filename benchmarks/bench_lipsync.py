"""Benchmark of the lipsync plugin's work: the lag scan per batch size, and Face Mesh per frame.

The scan: one 2 s window (50 slots) per face, +/-500 ms of lags, through the shipped weights
(random inputs: the cost does not depend on the values). Face Mesh: the lip landmarks of one
face per frame (a real clip from ../shared/media when present, else a grey picture, which costs
the detector pass on every frame: an upper bound).

    python benchmarks/bench_lipsync.py [--device cpu|cuda] [--repeats 5]

Prints windows per second per batch size, Face Mesh ms per frame, and for one stream with one
face (2 s windows every 0.5 s: one scan and 12.5 new frames per window) the real-time factor
(media seconds per second of compute; > 1 is faster than real time) and how many faces fit in
real time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from crossmodald_plugins.lipsync.features import N_MELS, STEPS_PER_SLOT
from crossmodald_plugins.lipsync.landmarks import FEATURE_DIM, LipLandmarker, crop_rect
from crossmodald_plugins.lipsync.model import load_model, scan
from crossmodald_plugins.lipsync.plugin import SHIPPED_WEIGHTS

CLIP = Path(__file__).resolve().parents[2] / "shared" / "media" / "talkinghead_hdtf_aoc_25fps.mp4"


def scan_rate(device: str, batch: int, repeats: int) -> float:
    model = load_model(SHIPPED_WEIGHTS, device)
    lips = torch.randn(batch, 50, FEATURE_DIM, device=device)
    mel = torch.randn(batch, 50 * STEPS_PER_SLOT, N_MELS, device=device)
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
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    one = 0.0
    for batch in (1, 8, 32, 128):
        rate = scan_rate(args.device, batch, args.repeats)
        one = rate if batch == 1 else one
        print(f"scan  batch {batch:>4}: {rate:8.1f} windows/s (2 s windows, +/-500 ms)")
    ms, what = face_mesh_ms(args.frames)
    print(f"Face Mesh: {ms:.1f} ms per frame ({what})")
    # One face, 2 s windows every 0.5 s: per window one scan and 12.5 new frames.
    per_window_s = 1.0 / one + 12.5 * ms / 1000.0
    factor = 0.5 / per_window_s
    print(
        f"one stream, one face: {per_window_s * 1000:.0f} ms of compute per 0.5 s of media "
        f"= {factor:.1f}x real time; faces in real time ~{int(factor)}"
    )


if __name__ == "__main__":
    main()
