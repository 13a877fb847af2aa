"""The short soak: benchmarks/soak.py for 60 s (4 streams, 20 churning subscribers).

The real daemon runs as a subprocess on a loopback port; the check is what the benchmark
checks: memory flat after warm-up, tasks and fds back to their baseline once every subscriber
left, every stream at real time, SIGTERM exits 0.
"""

from __future__ import annotations

import asyncio

import pytest

from scriptkit import load_benchmark


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_soak_one_minute() -> None:
    soak = load_benchmark("soak")
    args = soak.parse_args(["--duration-s", "60", "--sample-s", "3", "--settle-s", "4"])
    result = asyncio.run(soak.soak(args))
    figures = {k: v for k, v in result.items() if k != "daemon_stderr_tail"}
    assert result["ok"], f"{figures}\n{result['daemon_stderr_tail']}"
    assert result["connects"] >= 20
    assert result["events_received"] > 0


def test_soak_config_and_metrics_parsing() -> None:
    soak = load_benchmark("soak")
    text = soak.config_text(4, 8750, "avsync", 320, 240)
    from crossmodald.service.config import load_config_text

    config = load_config_text(text)
    assert [s.name for s in config.sources] == ["soak0", "soak1", "soak2", "soak3"]
    plain, media = soak.parse_metrics(
        "# TYPE process_open_fds gauge\nprocess_open_fds 12\n"
        'crossmodald_stream_audio_seconds_total{stream="soak0"} 3.5\n'
    )
    assert plain == {"process_open_fds": 12.0}
    assert media == {"soak0": 3.5}
