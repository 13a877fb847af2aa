"""What the published Light-ASD weights can and cannot tell, measured through this project's inputs.

The lip-sync scan and the two-face active-speaker test stay below their targets with the
published weights. This script prints the evidence that the limit is in the weights, not in the
preprocessing, so anyone can re-check it:

1. **Input statistics.** Every BatchNorm keeps the running mean and variance of what it saw in
   training. The first audio layer is linear in the MFCCs, so its running means say what the
   training MFCCs looked like. Printed: the mean gap (in running SDs) between those statistics and
   the same layer fed this project's MFCCs, for each checkpoint and three audio pipelines: 16 kHz
   audio (the reference pipeline), and 44.1 / 48 kHz audio framed as if it were 16 kHz. The first
   visual layer is printed the same way for this project's face crops.
2. **Does the score listen?** Mean speaking log-odds of each face with its own audio, another
   person's speech, its own audio 1 s late (circularly), and its own audio 40 dB quieter. A model
   that tells *which* sound a face makes scores its own audio clearly highest.
3. **Shift curves.** The whole clip's mean log-odds with the audio shifted by -400..+400 ms
   (40 ms steps): where the peak lands (the clips are taken as in sync) and how much the curve
   moves at all.

Needs ``../shared/media`` (talking-head clips) and ``../shared/models/light-asd`` (weights)::

    python benchmarks/diag_light_asd.py [--media DIR] [--weights-dir DIR]

About five minutes on the 2-core project machine.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from crossmodald.media import NS_PER_S
from crossmodald.service.evaluate import DecodedMedia, decode_media
from crossmodald_plugins.asd.diagnostics import (
    FIRST_AUDIO_LAYER,
    FIRST_VISUAL_LAYER,
    batchnorm_gap,
)
from crossmodald_plugins.asd.features import (
    HOP_SAMPLES,
    MODEL_RATE,
    WIN_SAMPLES,
    CropBox,
    crop_face,
    mfcc,
    resample,
    smooth_boxes,
)
from crossmodald_plugins.asd.model import AUDIO_STEPS_PER_FRAME, LightASD
from crossmodald_plugins.asd.weights import load_light_asd
from crossmodald_plugins.faces.tracker import FaceTracker

ROOT = Path(__file__).resolve().parents[1]
CLIPS = (
    "talkinghead_hdtf_aoc_25fps.mp4",
    "talkinghead_hdtf_markey_25fps.mp4",
    "talkinghead_hdtf_WDA_BobMenendez_000.mp4",
    "talkinghead_hdtf_RD_Radio2_000.mp4",
    "talkinghead_hdtf_RD_Radio34_000.mp4",
    "talkinghead_retalking2_25fps.mp4",
)
CHECKPOINTS = ("pretrain_AVA_CVPR.model", "finetuning_TalkSet.model")
SHIFTS_MS = tuple(range(-400, 401, 40))


class Clip:
    """One talking head as the network sees it: face crops and 16 kHz audio from its first frame."""

    def __init__(self, media: DecodedMedia) -> None:
        self.name = media.path.name
        tracks = FaceTracker().update(media.video)
        if not tracks:
            raise SystemExit(f"{self.name}: no face found")
        track = max(tracks, key=lambda t: len(t.observations))
        by_pts = {o.pts_ns: o.box for o in track.observations}
        frames = [f for f in media.video if f.pts_ns in by_pts]
        boxes = smooth_boxes(
            [CropBox(b.cx, b.cy, max(b.w, b.h) / 2.0) for b in (by_pts[f.pts_ns] for f in frames)]
        )
        self.crops = torch.from_numpy(
            np.stack([crop_face(f.luma, b) for f, b in zip(frames, boxes, strict=True)])
        ).float()
        skip = max(0, (frames[0].pts_ns - media.audio_start_ns) * media.audio_rate // NS_PER_S)
        audio = torch.from_numpy(np.ascontiguousarray(media.audio[skip:]))
        self.audio = resample(audio, media.audio_rate, MODEL_RATE)

    @property
    def frames(self) -> int:
        return len(self.crops)

    def features(self, audio: Tensor | None = None) -> Tensor:
        """(1, 4T, 13) MFCCs of ``audio`` (default: the clip's own), zero-padded to the video."""
        a = self.audio if audio is None else audio
        need = (self.frames * AUDIO_STEPS_PER_FRAME - 1) * HOP_SAMPLES + WIN_SAMPLES
        a = torch.nn.functional.pad(a, (0, max(0, need - len(a))))[:need]
        return mfcc(a)[: self.frames * AUDIO_STEPS_PER_FRAME].unsqueeze(0)


def mean_log_odds(model: LightASD, visual: Tensor, feats: Tensor) -> float:
    return float(model.fuse(model.audio_embed(feats), visual).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=ROOT / ".." / "shared" / "media")
    parser.add_argument(
        "--weights-dir", type=Path, default=ROOT / ".." / "shared" / "models" / "light-asd"
    )
    args = parser.parse_args()
    missing = [p for p in (args.media, args.weights_dir) if not p.is_dir()]
    if missing:
        print(f"diag_light_asd: not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    clips = [Clip(decode_media(args.media / name)) for name in CLIPS]
    models = {name: load_light_asd(args.weights_dir / name) for name in CHECKPOINTS}
    short = {name: name.split("_")[0] for name in CHECKPOINTS}  # pretrain / finetuning

    print("1. BatchNorm input statistics: mean gap to the training statistics, in running SDs")
    pipelines: dict[str, Callable[[Tensor], Tensor]] = {
        "16 kHz (reference)": lambda a: a,
        "44.1 kHz framed as 16 kHz": lambda a: resample(a, MODEL_RATE, 44_100),
        "48 kHz framed as 16 kHz": lambda a: resample(a, MODEL_RATE, 48_000),
    }
    for label, pipe in pipelines.items():
        cells = []
        for ckpt, model in models.items():
            gap = batchnorm_gap(
                model,
                lambda model=model, pipe=pipe: [
                    model.audio_embed(c.features(pipe(c.audio))) for c in clips
                ],
                FIRST_AUDIO_LAYER,
            )
            cells.append(f"{short[ckpt]} {gap:.2f}")
        print(f"   audio, first layer, {label:<26} " + "   ".join(cells))
    for ckpt, model in models.items():
        gap = batchnorm_gap(
            model,
            lambda model=model: [model.visual_embed(c.crops[None]) for c in clips],
            FIRST_VISUAL_LAYER,
        )
        print(f"   visual, first layer, face crops: {short[ckpt]} {gap:.2f}")

    print(
        "\n2. Mean speaking log-odds of each face with: own audio | another's speech | own 1 s late"
        " | own -40 dB"
    )
    for ckpt, model in models.items():
        print(f"   {ckpt}")
        for i, clip in enumerate(clips):
            other = clips[(i + 1) % len(clips)]
            visual = model.visual_embed(clip.crops[None])
            own = clip.features()
            cols = [
                mean_log_odds(model, visual, own),
                mean_log_odds(model, visual, clip.features(other.audio)),
                mean_log_odds(model, visual, clip.features(torch.roll(clip.audio, MODEL_RATE))),
                mean_log_odds(model, visual, clip.features(clip.audio * 0.01)),
            ]
            print(f"     {clip.name:<42} " + " | ".join(f"{v:+6.2f}" for v in cols))

    print("\n3. Shift curves, -400..+400 ms: peak (clips taken as in sync) and the curve's range")
    for ckpt, model in models.items():
        print(f"   {ckpt}")
        for clip in clips:
            visual = model.visual_embed(clip.crops[None])
            curve = np.array(
                [
                    mean_log_odds(
                        model,
                        visual,
                        clip.features(torch.roll(clip.audio, -s * MODEL_RATE // 1000)),
                    )
                    for s in SHIFTS_MS
                ]
            )
            peak = SHIFTS_MS[int(curve.argmax())]
            print(
                f"     {clip.name:<42} peak {peak:+4d} ms   range {curve.max() - curve.min():.2f}"
                f"   at 0: {curve[SHIFTS_MS.index(0)]:+.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
