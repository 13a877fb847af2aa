"""Benchmark of the Light-ASD inference: per-batch time for 1, 8 and 32 faces, real-time factor.

One batch = one 2 s window (50 frames at 25 fps) per face: visual encoder, audio encoder and the
GRU backend in one call, as the ``speaker`` plugin runs them. Random weights and inputs (the
cost does not depend on the values), so it runs anywhere; ``--device cuda`` on a GPU.

    python benchmarks/bench_asd.py [--device cpu|cuda] [--window-s 2.0] [--repeats 3]

Prints, per face count: the median time of one batch, and the real-time factor (media seconds
analysed per second of compute, over all faces; > 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crossmodald_plugins.asd.model import AUDIO_STEPS_PER_FRAME, CROP_SIDE, N_MFCC, LightASD


def bench(device: str, window_s: float, repeats: int, faces: list[int]) -> None:
    torch.set_grad_enabled(False)
    model = LightASD().to(device).eval()
    frames = round(window_s * 25)
    print(f"device {device}, torch threads {torch.get_num_threads()}, window {window_s} s")
    for n in faces:
        crops = torch.rand(n, frames, CROP_SIDE, CROP_SIDE, device=device) * 255
        feats = torch.randn(n, frames * AUDIO_STEPS_PER_FRAME, N_MFCC, device=device)
        times = []
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(feats, crops)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first run warms up
                times.append(time.perf_counter() - t0)
        batch_s = statistics.median(times)
        rtf = n * window_s / batch_s
        print(f"faces {n:3d}: batch {batch_s * 1000:8.1f} ms   real-time factor {rtf:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    bench(args.device, args.window_s, args.repeats, args.faces)


if __name__ == "__main__":
    main()
