"""The page's Watch view: headless Chromium publishes the calibration pattern and watches the
daemon's re-synchronised WHEP output of it in the same page; a second daemon pulls the same
output with a ``whep`` source and measures it.

Checks that a real WebRTC stack (libwebrtc) receives and decodes what the relay forwards
(VP8 and Opus packets, never re-encoded), that the view shows the measured offset and the
correction (``sync.correction``), and that Stop sends the WHEP DELETE. Daemon and browser run
in a network namespace with only ``lo`` (:mod:`netnskit`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import netnskit  # noqa: E402

STREAM = "browser"

pytestmark = [pytest.mark.browser, pytest.mark.webrtc]


def test_watch_view_plays_the_corrected_stream(tmp_path: Path) -> None:
    result = netnskit.run_browser_script(Path(__file__), tmp_path, timeout_s=150)
    watch = result["watch"]
    assert watch["connection"] == "connected", watch
    assert watch["video"]["width"] > 0, watch
    assert watch["video"]["time_s"] > 1.0, watch  # playing, not one frame
    assert watch["offset_ms"] is not None
    assert watch["correction"] is not None
    assert watch["correction"]["viewers"] == 1
    assert watch["correction"]["state"] == "settled", watch["correction"]
    corrections = [e for e in result["events"] if e["type"] == "sync.correction"]
    assert corrections
    # Daemon B's measurement of the corrected output: the browser chain's own offset, as
    # daemon A measured it, is cancelled to within 10 ms.
    pulled = [
        e["data"]["audio_lead_ms"]
        for e in result["pulled"]
        if e["type"] == "sync.offset" and e["data"]["confidence"] >= 0.5
    ]
    assert len(pulled) >= 4, result["pulled"][-5:]
    residual = statistics.median(pulled[-6:])
    chain = statistics.median(
        e["data"]["audio_lead_ms"]
        for e in result["events"]
        if e["type"] == "sync.offset" and e["data"]["confidence"] >= 0.5
    )
    print(
        f"chromium chain {chain:+.1f} ms measured by A; B measures the corrected output {residual:+.1f} ms"
    )
    assert abs(residual) <= 10.0, pulled
    assert result["after_stop"]["connection"] == "closed"
    assert result["after_stop"]["status"] == "idle"
    print(f"watch view: {watch['video']}, correction {watch['correction']}")


async def pull_and_measure(url: str) -> list[dict[str, Any]]:
    """Daemon B (in this process, no API): pull ``url`` with a whep source, measure ~12 s."""
    from crossmodald.service.config import DaemonConfig
    from crossmodald.service.daemon import Daemon

    config = DaemonConfig.model_validate(
        {
            "sources": [
                {"type": "whep", "name": "pulled", "url": url, "ice_host_addresses": ["127.0.0.1"]}
            ],
            "plugins": [{"type": "avsync", "method": "flash"}],
            "api": {"enabled": False},
        }
    )
    events: list[dict[str, Any]] = []
    daemon = Daemon(
        config, listeners=(lambda e: events.append(json.loads(e.json)),), serve_api=False
    )
    await daemon.load_plugins()
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run(stop))
    await asyncio.sleep(14.0)  # connect, first SRs, the correction settles, windows
    stop.set()
    await run
    return events


async def _inside(out: Path) -> None:
    netnskit.only_loopback()
    config = netnskit.write_config(
        out / "crossmodald.toml", [{"type": "avsync", "method": "flash"}]
    )
    result: dict[str, Any] = {}
    async with netnskit.loopback_daemon(config, out / "daemon.log") as daemon:
        url = f"{netnskit.BASE_URL}/?mode=calibrate&stream={STREAM}&autostart=1"
        async with netnskit.chromium(url, out, daemon.http) as page:
            await daemon.wait_until(lambda: len(daemon.of(STREAM, "sync.offset")) >= 4, 60)
            await page.evaluate(
                f"document.getElementById('watch-stream').value = {json.dumps(STREAM)};"
                "document.getElementById('watch-form').requestSubmit()"
            )
            # Playing, and the correction settled (the issue's figure is "after the correction
            # settles"; on a loaded machine the slew can take seconds longer than on a quiet one).
            state: dict[str, Any] = {}
            for _ in range(400):
                state = json.loads(
                    await page.evaluate(
                        "JSON.stringify({...window.crossmodaldWatch,"
                        " video: window.crossmodaldWatch.video()})"
                    )
                )
                correction = state["correction"]
                if (
                    state["video"]["time_s"] > 1.5
                    and correction is not None
                    and correction["state"] == "settled"
                ):
                    break
                await asyncio.sleep(0.1)
            result["watch"] = state
            result["pulled"] = await pull_and_measure(f"{netnskit.BASE_URL}/v1/whep/{STREAM}")
            await page.evaluate("document.getElementById('watch-stop').click()")
            await asyncio.sleep(1.0)
            result["after_stop"] = json.loads(
                await page.evaluate("JSON.stringify(window.crossmodaldWatch)")
            )
        result["events"] = [e for e in daemon.events if e["stream"] == STREAM]
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--inside":
        raise SystemExit("usage: test_browser_watch.py --inside OUT_DIR (run by the test)")
    asyncio.run(_inside(Path(sys.argv[2])))
