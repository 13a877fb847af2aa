"""Shared by the benchmarks: what they read about a process they started (Linux /proc), and the
environment that runs another checkout's code for a same-run comparison (``--compare-tree``)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """The process's resident set size now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def tree_env(tree: Path | None) -> dict[str, str] | None:
    """The environment that imports crossmodald from checkout ``tree`` (None: as installed)."""
    if tree is None:
        return None
    env = dict(os.environ)
    paths = [str(tree / "daemon"), str(tree / "plugins")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
