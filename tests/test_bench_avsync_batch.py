"""benchmarks/bench_avsync_batch.py runs the avsync plugin as the plugin contract stands."""

from __future__ import annotations

import asyncio

import pytest

from crossmodald.service.config import PatternSourceConfig
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory
from scriptkit import load_benchmark


def test_batches_of_distinct_streams_are_timed_through_the_plugin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The script called `infer` with plain windows after `infer` came to take batch items (plugin
    # contract v2) and failed on its first batch; it times `analyze`, what `infer` runs.
    bench = load_benchmark("bench_avsync_batch")
    pattern = PatternSourceConfig(
        type="pattern", name="p", audio_lead_ms=40.0, duration_s=4.0, realtime=False
    )
    pool = asyncio.run(bench.windows_of(pattern, 2))
    assert len(pool) == 2
    plugin = AvSyncFactory.create(
        AvSyncConfig(type="avsync", method="flash", face_detection=False), "cpu"
    )
    medians = bench.time_batches(plugin, pool, [1, 3], 1, "cpu")
    assert len(medians) == 2
    assert all(m > 0 for m in medians)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["batch    1", "batch    3"]
