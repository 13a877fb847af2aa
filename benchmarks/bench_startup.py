"""Benchmark: start-up time of the `crossmodald` command line, and whether it imports torch.

Each command runs in a fresh subprocess, interleaved with a bare ``python -c pass`` in the same
invocation, best of N; printed are the wall seconds, the difference to the bare interpreter and
whether ``torch`` got imported (read from one extra run with ``-X importtime``). Commands:

- ``python -c "import crossmodald.cli"``
- ``crossmodald --help``
- ``crossmodald check-config configs/default.toml``
- ``crossmodald analyze`` of a 1 s pattern file (default plugin avsync: needs torch)

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig

REPO = Path(__file__).resolve().parents[1]


def wall(argv: list[str]) -> float:
    """Wall seconds of one subprocess; fails loudly if it fails."""
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv}: exit {done.returncode}:\n{done.stderr.decode()}")
    return elapsed


def imports_torch(argv: list[str]) -> bool:
    """Whether the command imports torch (one run under ``-X importtime``)."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    lines = done.stderr.decode().splitlines()
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny.mp4"
        write_pattern_file(
            PatternSourceConfig(type="pattern", name="tiny", audio_lead_ms=40.0),
            tiny,
            duration_s=1.0,
        )
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "import crossmodald.cli": [py, "-c", "import crossmodald.cli"],
            "crossmodald --help": [py, "-m", "crossmodald", "--help"],
            "crossmodald check-config default": [
                py, "-m", "crossmodald", "check-config", str(REPO / "configs" / "default.toml"),
            ],
            "crossmodald analyze 1 s pattern": [
                py, "-m", "crossmodald", "analyze", str(tiny), "--format", "jsonl",
            ],
        }  # fmt: skip
        print(
            f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
            f"best of {args.repeat}"
        )
        best = {name: float("inf") for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                best[name] = min(best[name], wall(argv))
        bare = best["python -c pass"]
        print(f"{'command':<34} {'wall s':>7} {'- bare s':>9}  torch imported")
        for name, argv in commands.items():
            print(
                f"{name:<34} {best[name]:7.3f} {best[name] - bare:9.3f}  "
                f"{'yes' if imports_torch(argv) else 'no'}"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
