"""Choosing the torch device a plugin runs on.

torch is imported inside the functions, not here: importing it takes ~1-2 s, and the daemon
module (which imports this one) is also loaded by commands that never run a model.
"""

from __future__ import annotations

import os


class DeviceError(ValueError):
    """A device that cannot be used here (e.g. CUDA asked for on a machine without it)."""


def resolve_device(spec: str) -> str:
    """Resolve a device spec to a concrete torch device string.

    ``auto`` picks ``cuda:0`` when CUDA is present, else ``cpu``; ``cpu``, ``cuda`` and
    ``cuda:N`` are checked against what this machine has.
    """
    spec = spec.strip().lower()
    if spec == "cpu":
        return "cpu"  # no need to load torch to say so
    import torch

    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} requested but CUDA is not available on this machine"
            )
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"device {spec!r}: expected cuda:N with an integer N") from None
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise DeviceError(f"device {spec!r}: this machine has {count} CUDA device(s)")
        return f"cuda:{index}"
    raise DeviceError(f"unknown device {spec!r} (expected auto, cpu, cuda or cuda:N)")


def half_the_cpus() -> int:
    """Half the CPUs this process may use (its affinity), at least one: the share of the cores
    a pool of worker threads takes (torch's, a decoder's slices), the rest left to the event
    loop, the sources and the plugins."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return max(1, (available or os.cpu_count() or 1) // 2)


def configure_threads(torch_threads: int | None) -> int:
    """Set torch's intra-op thread count for this process; returns the count used.

    ``None`` means half the CPUs this process may use, at least one: the event loop, the
    decoders and the sources need a core too, and on small machines oversubscribing torch
    makes event latency several times worse.
    """
    import torch

    if torch_threads is None:
        torch_threads = half_the_cpus()
    torch.set_num_threads(torch_threads)
    return torch_threads
