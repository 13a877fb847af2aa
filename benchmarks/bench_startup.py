"""Benchmark: start-up time of the `crossmodald` command line, and whether it imports torch.

Each command runs in a fresh subprocess, interleaved with a bare ``python -c pass`` in the same
invocation, best of N; printed are the wall seconds, the difference to the bare interpreter and
whether ``torch`` got imported (read from one extra run with ``-X importtime``). Commands:

- ``python -c "import crossmodald.cli"``
- ``crossmodald --help``
- ``crossmodald check-config configs/default.toml``
- ``crossmodald analyze`` of a 1 s pattern file (default plugin avsync: needs torch)

With ``--compare-tree PATH`` (another checkout, e.g. ../main) every command also runs with that
tree's ``daemon/`` and ``plugins/`` first on ``PYTHONPATH``, interleaved with this one, and the
ratio this tree / that tree is printed: a before/after measured in one run.

    python benchmarks/bench_startup.py [--repeat 5] [--compare-tree ../../main]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import tree_env

from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.service.config import PatternSourceConfig

REPO = Path(__file__).resolve().parents[1]


def wall(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one subprocess; fails loudly if it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, env=env
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv}: exit {done.returncode}:\n{done.stderr.decode()}")
    return elapsed


def imports_torch(argv: list[str], env: dict[str, str] | None = None) -> bool:
    """Whether the command imports torch (one run under ``-X importtime``)."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        env=env,
    )
    lines = done.stderr.decode().splitlines()
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compare-tree", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    other = args.compare_tree.resolve() if args.compare_tree else None
    if other is not None and not (other / "daemon" / "crossmodald").is_dir():
        raise SystemExit(f"{other}: not a crossmodald checkout (no daemon/crossmodald)")
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
        this_env = tree_env(REPO)
        other_env = tree_env(other)
        best = {name: float("inf") for name in commands}
        best_other = {name: float("inf") for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                best[name] = min(best[name], wall(argv, this_env))
                if other_env is not None:
                    best_other[name] = min(best_other[name], wall(argv, other_env))
        bare = best["python -c pass"]
        header = f"{'command':<34} {'wall s':>7} {'- bare s':>9}  torch"
        if other_env is not None:
            header += f"  | {'other s':>7} {'- bare s':>9}  torch  {'this/other':>10}"
        print(f"this tree: {REPO}" + (f"; other tree: {other}" if other else ""))
        print(header)
        for name, argv in commands.items():
            line = (
                f"{name:<34} {best[name]:7.3f} {best[name] - bare:9.3f}  "
                f"{'yes' if imports_torch(argv, this_env) else 'no ':<5}"
            )
            if other_env is not None:
                bare_other = best_other["python -c pass"]
                line += (
                    f"  | {best_other[name]:7.3f} {best_other[name] - bare_other:9.3f}  "
                    f"{'yes' if imports_torch(argv, other_env) else 'no ':<5}  "
                    f"{best[name] / best_other[name]:10.2f}"
                )
            print(line)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
