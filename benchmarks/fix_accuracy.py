"""Figures for ``crossmodald fix``: offset in, offset measured in the output, video identical.

Writes pattern files (the project's flash + beep, H.264 + AAC in MP4 and H.264 + PCM in
Matroska) at several offsets and frame rates, fixes each with ``crossmodald fix`` (given offset,
and ``--measure`` for a few), measures the output with the daemon's pipeline (as ``analyze``
does) and compares the video packets byte for byte. Accuracy, not speed: no baseline ratio.

    python benchmarks/fix_accuracy.py [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import av

from crossmodald.cli import main
from crossmodald.harness import estimate_offset, run_plugins_sync
from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig

CASES = [
    (".mp4", "30000/1001", 80.0, True),
    (".mp4", "30000/1001", -120.0, False),
    (".mp4", "25", 333.0, False),
    (".mp4", "25", -45.5, True),
    (".mkv", "25", -33.3, True),
    (".mkv", "25", 120.0, False),
    (".mkv", "30000/1001", 41.7, False),
    (".mkv", "30000/1001", -250.0, False),
]


def measured(path: Path) -> float | None:
    source = {"type": "media", "name": "m", "url": str(path), "realtime": False}
    result = run_plugins_sync([source], [{"type": "avsync"}])
    return estimate_offset(result.events("m"), min_confidence=0.3).audio_lead_ms


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def run(out: Path) -> None:
    print(f"{'file':<10} {'fps':>9} {'offset in':>10} {'how':>8} {'out':>8} {'video':>9}")
    for suffix, fps, lead, measure in CASES:
        config = PatternSourceConfig.model_validate(
            {
                "type": "pattern",
                "name": "p",
                "width": 320,
                "height": 240,
                "fps": fps,
                "audio_lead_ms": lead,
                "realtime": False,
            }
        )
        src = out / f"in{lead:+g}{suffix}"
        dst = out / f"out{lead:+g}{suffix}"
        write_pattern_file(config, src, duration_s=6.0)
        how = ["--measure"] if measure else ["--audio-lead-ms", str(lead)]
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
            code = main(["fix", str(src), str(dst), "--force", *how])
        if code != 0:
            print(f"{suffix:<10} {fps:>9} {lead:>+10.1f} failed: {err.getvalue().strip()}")
            continue
        after = measured(dst)
        same = video_packets(dst) == video_packets(src)
        kind = "H264/AAC" if suffix == ".mp4" else "H264/PCM"
        print(
            f"{suffix + ' ' + kind:<10} {fps:>9} {lead:>+10.1f} "
            f"{'measure' if measure else 'given':>8} {after:>+8.2f} "
            f"{'identical' if same else 'DIFFERS':>9}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp))
