"""Headless Chromium publishes camera + microphone from the page, with a token and H.264.

Chromium's fake capture devices stand in for a camera and microphone. The daemon requires a WHIP
bearer token (``[webrtc] token``): the page, driven over the DevTools protocol as a user would
(fill the fields, press Start), is refused with a wrong token and shows why, then publishes
with the right one, H.264 preferred. Daemon and browser run in a network namespace that has
only ``lo`` (:mod:`netnskit`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import netnskit  # noqa: E402

STREAM = "cam"
TOKEN = "whip-secret-0123456789"

pytestmark = [pytest.mark.browser, pytest.mark.webrtc]


def test_browser_camera_publishes_with_token_and_h264(tmp_path: Path) -> None:
    result = netnskit.run_browser_script(Path(__file__), tmp_path, timeout_s=120)

    refused = result["refused"]
    assert "answered 401" in refused["error"], refused["error"]
    assert "invalid bearer token" in refused["error"]
    assert refused["session"] is None

    page = result["page"]
    assert page["error"] is None, page["error"]
    assert page["connection"] == "connected"
    assert page["codecs"] == {"video": "H264", "audio": "opus"}
    assert page["status"] == f"publishing as {STREAM} (H264 + opus)"
    assert page["types"].get("stream.start") == 1
    assert page["types"].get("sync.transport", 0) >= 1
    assert result["log_lines"] == page["events"]  # one line per event on the page

    events = result["events"]
    assert events[0]["type"] == "stream.start"
    assert events[0]["data"]["has_video"] is True
    assert events[0]["data"]["has_audio"] is True
    transport = [e["data"] for e in events if e["type"] == "sync.transport"]
    assert any(t["timing"] == "rtcp" for t in transport), transport
    assert "stream.end" in [e["type"] for e in events]
    assert result["page_after_stop"]["status"] == "stopped"


async def _inside(out: Path) -> None:
    netnskit.only_loopback()
    config = netnskit.write_config(
        out / "crossmodald.toml", [{"type": "avsync"}], webrtc={"token": TOKEN}
    )
    result: dict[str, Any] = {}
    async with netnskit.loopback_daemon(config, out / "daemon.log") as daemon:
        url = f"{netnskit.BASE_URL}/?mode=camera&codec=H264&stream={STREAM}"
        flags = ["--use-fake-device-for-media-stream"]
        async with netnskit.chromium(url, out, daemon.http, flags) as page:
            start = "document.getElementById('start').click()"
            await page.evaluate("document.getElementById('token').value = 'wrong'")
            await page.evaluate(start)
            for _ in range(100):
                state = await page.state()
                if state["error"] is not None:
                    break
                await asyncio.sleep(0.1)
            result["refused"] = state
            await page.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
            await page.evaluate(start)

            def ready() -> bool:
                transport = daemon.of(STREAM, "sync.transport")
                return any(e["data"]["timing"] == "rtcp" for e in transport)

            await daemon.wait_until(ready, 30)
            await asyncio.sleep(0.5)
            # The page's state and its log in one evaluation: events keep arriving, and two
            # reads a moment apart differed by one (CI).
            result["page"], result["log_lines"] = json.loads(
                await page.evaluate(
                    "JSON.stringify([window.crossmodald,"
                    " document.getElementById('log').childElementCount])"
                )
            )
            result["page_after_stop"] = await page.stopped()
            await daemon.wait_until(lambda: bool(daemon.of(STREAM, "stream.end")), 15)
        result["events"] = [e for e in daemon.events if e["stream"] == STREAM]
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--inside":
        raise SystemExit("usage: test_browser_camera.py --inside OUT_DIR (run by the test)")
    asyncio.run(_inside(Path(sys.argv[2])))
