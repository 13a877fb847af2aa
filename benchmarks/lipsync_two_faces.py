"""The two-face speaker figure on clips of your choice, through ``crossmodald eval``'s own protocol.

``crossmodald eval lipsync LEFT --task speaker --second RIGHT`` composes two talking heads side by
side, plays the voice of one and then of the other, and scores every speech frame (the voiced
face alone speaks / no face / only the other face / both). Issue 11's figure uses four pairs of
the ../shared/media talking heads, which are for evaluation only; tuning the speaker decision
needs the same protocol on held-out *validation* speakers (the checkpoint's ``val_data``), which
this runs: each clip with the next one (the last with the first), every figure per pair and in
all, and ``--set KEY=VALUE`` to try a ``lipsync`` setting.

    python benchmarks/lipsync_two_faces.py CLIPS... [--set KEY=VALUE ...] [--max-seconds S]
        [--window S --hop S] [--audio-shift-ms MS] [--off-screen]

``--audio-shift-ms``: the composed streams play their audio that much earlier (an out-of-sync
stream, as ``crossmodald analyze --audio-shift-ms`` reads one). ``--off-screen``: each pair
plays the voice of the clip after them (a voice from off screen, three clips or more), and a
speech frame counts as correct when no face speaks (the price of deciding more readily).

CLIPS: files or folders (e.g. the seven PC-AVS clips named in
crossmodald_plugins/lipsync/weights/lipsync-v2.data.json under ``val_data``).

Measured on this 2-core machine (the seven ``val_data`` clips, 7 pairs, 2 min), from the
repository root::

    python3 benchmarks/lipsync_two_faces.py \\
        ../shared/datasets/pc-avs/{00015,00086,00098,00373,681100216,681600002,731200067}.mp4

speech frames where the voiced face alone speaks / the wrong face speaks:

- lipsync-v2 until 09bebde, the stream's lag (at which every face is judged) the median best
  lag of windows with any confidence: 53.6 % / **25.6 %** (00086 | 00098: 71 % wrong);
- only windows at ``min_confidence`` or more count: 80.0 % / 9.2 %;
- and until three of them agree within 80 ms, the calibration's lag (shipped since 09bebde):
  86.1 % / 5.9 %;
- each scan over a face's latest 5 s, faces judged once a stream's span holds 5 s (``scan_s``,
  since 236c32b): **98.6 % / 1.4 %**.

Out of sync, the same clips at the defaults since 236c32b: 98.6 % in sync, **15.2 %** with the
audio 120 ms early and **35.4 %** 120 ms late (the model card's limits say why, and what was
tried). With ``--set speaker_search_ms=150`` (each face judged at its own best lag within 150 ms
of the stream's): 96.3 / 79.7 / 82.3 %, at the price of faces speaking for a voice from off
screen: with ``--off-screen`` (45–49 s) no face speaks on 85.9 % of its speech frames as
shipped and on 43.5 % with the setting (the model card).

On the four evaluation pairs the same four read 83.1 / 73.5 / 77.4 / 86.6 % with the wrong face
on 0 / 4.3 / 2.5 / 0 % (the model card has them pair by pair).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from crossmodald.cli import parse_set
from crossmodald.service.evaluate import SpeakerMetrics, evaluate_speaker
from crossmodald_plugins.lipsync.data import find_clips


def row(label: str, m: SpeakerMetrics, off_screen: bool = False) -> str:
    """One line of figures; ``off_screen``: correct is no face speaking, so no column of
    ``no_face`` (always 0 there)."""
    no_face = "" if off_screen else f" {m.share(m.no_face):>8}"
    return (
        f"{label:<36} {m.speech_frames:>7} {m.share(m.correct):>8}{no_face} "
        f"{m.share(m.other_face):>8} {m.share(m.both_faces):>8}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", type=Path, nargs="+")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--window", type=float, default=2.0, help="window length, s")
    parser.add_argument("--hop", type=float, default=0.5, help="window hop, s")
    parser.add_argument(
        "--audio-shift-ms",
        type=float,
        default=0.0,
        help="play the composed streams' audio this much earlier (an out-of-sync stream)",
    )
    parser.add_argument(
        "--off-screen",
        action="store_true",
        help="play the next clip's voice with each pair: correct is no face speaking",
    )
    args = parser.parse_args()
    clips = find_clips(args.clips)
    if len(clips) < (3 if args.off_screen else 2):
        raise SystemExit(f"needs at least {3 if args.off_screen else 2} clips")
    try:
        overrides = dict(parse_set(item) for item in args.overrides)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    started = time.monotonic()
    if args.off_screen:
        print(f"{'pair (left | right) + voice':<36} {'frames':>7} {'no face':>8} "
              f"{'a face':>8} {'both':>8}")  # fmt: skip
    else:
        print(f"{'pair (left | right)':<36} {'frames':>7} {'correct':>8} {'no face':>8} "
              f"{'other':>8} {'both':>8}")  # fmt: skip
    total = SpeakerMetrics(0, 0)
    for i, left in enumerate(clips):
        right = clips[(i + 1) % len(clips)]
        if len(clips) == 2 and i == 1:
            break  # two clips: one pair (both voices are played in each)
        voice = clips[(i + 2) % len(clips)] if args.off_screen else None
        m = evaluate_speaker(
            left,
            right,
            plugin="lipsync",
            overrides=overrides,
            length_s=args.window,
            hop_s=args.hop,
            max_seconds=args.max_seconds,
            audio_shift_ms=args.audio_shift_ms,
            off_screen=voice,
        )
        total += m
        label = f"{left.stem} | {right.stem}" + (f" + {voice.stem}" if voice else "")
        print(row(label, m, args.off_screen), flush=True)
    print(row("all", total, args.off_screen))
    print(
        f"({time.monotonic() - started:.0f} s; {args.window:g} s windows every {args.hop:g} s; "
        f"audio {args.audio_shift_ms:+g} ms; settings {overrides or 'as shipped'})"
    )


if __name__ == "__main__":
    main()
