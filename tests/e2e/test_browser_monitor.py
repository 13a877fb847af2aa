"""Headless Chromium shows the monitoring page: every stream the daemon runs, with its readings.

The daemon runs real streams (``crossmodald run``): a test pattern in sync (+40 ms), one far out
of the acceptable band (+160 ms: a ``sync.alarm``), a media source whose file is missing (a
``stream.fault``, then failed) and, when ``../shared/media`` has its talking-head clip, that clip
with the speech, faces and speaker plugins. Debian's ``chromium`` loads ``GET /`` (the monitor
view) inside a network namespace that has only ``lo`` (:mod:`netnskit`), and the test reads the
page's state (``window.crossmodaldMonitor``) and its drawing over the DevTools protocol: a card
per stream, the gauge's needle and end labels inside the picture with their unit, the offset plot
with its points, the alarm and the fault on the timeline, speech and the active speaker. The
publish view stays one click away. Screenshots of both views are saved in the test's tmp folder
(``monitor.png``, ``publish.png``) for a person to look at.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import netnskit  # noqa: E402

SHARED_CLIP = HERE.parents[1].parent / "shared" / "media" / "talkinghead_hdtf_aoc_25fps.mp4"
IN_SYNC_MS = 40.0
OUT_OF_BAND_MS = 160.0

pytestmark = [pytest.mark.browser]


def test_monitor_page_shows_every_stream(tmp_path: Path) -> None:
    result = netnskit.run_browser_script(Path(__file__), tmp_path, timeout_s=240)
    page = result["page"]
    drawn = result["drawn"]
    print(f"screenshots: {tmp_path / 'monitor.png'} {tmp_path / 'publish.png'}")
    streams = page["streams"]
    expected = {"testcard", "late", "broken"} | ({"talk"} if result["talk"] else set())
    assert set(page["order"]) == expected, page["order"]
    assert page["connected"] is True
    assert page["error"] is None

    # In sync: the smoothed offset the page plots is the daemon's (+40 ms), within the band.
    testcard = streams["testcard"]
    points = [o for o in testcard["offsets"]["avsync"] if o["smoothed"] is not None]
    assert len(points) >= 5
    assert points[-1]["smoothed"] == pytest.approx(IN_SYNC_MS, abs=3.0)
    assert testcard["info"]["state"] == "running"
    assert testcard["alarms"] == []
    # Out of the band: an alarm that is still open, drawn on the timeline.
    late = streams["late"]
    assert late["alarms"], "no sync.alarm for the +160 ms stream"
    assert late["alarms"][-1]["end"] is None
    assert late["alarms"][-1]["direction"] == "audio_leads"
    # The missing file: a fault, and the stream failed.
    broken = streams["broken"]
    assert broken["faults"], "no stream.fault for the missing file"
    assert broken["info"]["state"] == "failed"

    # What is drawn: a card per stream, the gauge's labels inside it with their unit.
    assert drawn["cards"] == sorted(expected)
    for name in ("testcard", "late"):
        card = drawn["by_stream"][name]
        assert card["needles"] >= 1, name
        assert card["dots"] >= 3, name
        for label in card["gauge_labels"]:
            assert label["x"] >= -0.5, (name, label)
            assert label["x"] + label["width"] <= 500.5, (name, label)
        texts = [label["text"] for label in card["gauge_labels"]]
        assert "−250 ms" in texts
        assert "+250 ms" in texts
    assert drawn["by_stream"]["late"]["alarm_bars"] >= 1
    assert drawn["by_stream"]["late"]["alarm_banner"]
    assert drawn["by_stream"]["broken"]["fault_marks"] >= 1
    # The needle of the in-sync stream sits at +40 on the -250..+250 scale.
    needle_x = drawn["by_stream"]["testcard"]["needle_x"]
    assert needle_x == pytest.approx(250 + IN_SYNC_MS, abs=4)

    if result["talk"]:
        talk = streams["talk"]
        assert talk["speech"], "no speech segment on the talking head"
        assert drawn["by_stream"]["talk"]["speech_bars"] >= 1
        assert "active speaker" in drawn["by_stream"]["talk"]["text"]

    # The publish view is one click away, and comes back.
    assert result["publish_view"] == {"monitor_hidden": True, "publish_hidden": False}
    assert (tmp_path / "monitor.png").stat().st_size > 10_000
    assert (tmp_path / "publish.png").stat().st_size > 5_000


# -- inside the namespace -------------------------------------------------------------------------

_DRAWN = """
(() => {
  const out = {cards: [], by_stream: {}};
  for (const card of document.querySelectorAll("article.stream")) {
    const name = card.dataset.stream;
    out.cards.push(name);
    const gauge = card.querySelector("svg.gauge");
    const needle = gauge.querySelector("polygon.needle");
    out.by_stream[name] = {
      needles: gauge.querySelectorAll("polygon.needle").length,
      needle_x: needle ? Number(needle.getAttribute("points").split(",")[0]) : null,
      gauge_labels: [...gauge.querySelectorAll(".ticks text")].map((t) => {
        const box = t.getBBox();
        return {text: t.textContent, x: box.x, width: box.width};
      }),
      dots: card.querySelectorAll("svg.plot circle").length,
      alarm_bars: card.querySelectorAll("svg.timeline rect.alarm").length,
      fault_marks: card.querySelectorAll("svg.timeline polygon.fault").length,
      speech_bars: card.querySelectorAll("svg.timeline rect.speech").length,
      alarm_banner: card.querySelector(".alarm") !== null,
      text: card.innerText,
    };
  }
  out.cards.sort();
  return JSON.stringify(out);
})()
"""


def _config(out: Path, talk: bool) -> Path:
    plugins: list[dict[str, Any]] = [{"type": "avsync"}]
    if talk:
        plugins += [{"type": "speech"}, {"type": "faces"}, {"type": "speaker"}]
    path = netnskit.write_config(out / "crossmodald.toml", plugins)
    sources = [
        {"type": "pattern", "name": "testcard", "width": 160, "height": 120,
         "audio_lead_ms": IN_SYNC_MS},
        {"type": "pattern", "name": "late", "width": 160, "height": 120,
         "audio_lead_ms": OUT_OF_BAND_MS},
        {"type": "media", "name": "broken", "url": str(out / "missing.mp4")},
    ]  # fmt: skip
    if talk:
        sources.append({"type": "media", "name": "talk", "url": str(SHARED_CLIP), "loop": True})
    lines = [path.read_text(encoding="utf-8")]
    for source in sources:
        lines.append("[[sources]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in source.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


async def _screenshot(page: netnskit.DevTools, path: Path) -> None:
    shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


async def _inside(out: Path) -> None:
    netnskit.only_loopback()
    talk = SHARED_CLIP.is_file()
    config = _config(out, talk)
    result: dict[str, Any] = {"talk": talk}
    async with netnskit.loopback_daemon(config, out / "daemon.log") as daemon:

        def ready() -> bool:
            smoothed = [
                e
                for e in daemon.of("testcard", "sync.offset")
                if e["data"]["smoothed_audio_lead_ms"] is not None
            ]
            done = len(smoothed) >= 8 and bool(daemon.of("late", "sync.alarm"))
            if talk:
                done = done and bool(daemon.of("talk", "speech"))
            return done

        await daemon.wait_until(ready, 120)
        async with netnskit.chromium(f"{netnskit.BASE_URL}/", out, daemon.http) as page:
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=1400,
                height=1000,
                deviceScaleFactor=1,
                mobile=False,
            )
            monitor = "window.crossmodaldMonitor"
            for _ in range(100):  # the replayed events and a /v1/streams poll, drawn
                state = json.loads(await page.evaluate(f"JSON.stringify({monitor})"))
                names = set(state["order"])
                infos = all(state["streams"][n]["info"] for n in names)
                if state["connected"] and len(names) >= 3 and infos and state["draws"] >= 2:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.5)  # two more redraws with the latest events
            result["page"] = json.loads(await page.evaluate(f"JSON.stringify({monitor})"))
            result["drawn"] = json.loads(await page.evaluate(_DRAWN))
            await _screenshot(page, out / "monitor.png")
            await page.evaluate("document.getElementById('tab-publish').click()")
            await asyncio.sleep(0.3)
            # Hidden as drawn (the computed style), not only as classed.
            hidden = "getComputedStyle(document.getElementById('view-{}')).display === 'none'"
            result["publish_view"] = {
                "monitor_hidden": await page.evaluate(hidden.format("monitor")),
                "publish_hidden": await page.evaluate(hidden.format("publish")),
            }
            await _screenshot(page, out / "publish.png")
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--inside":
        raise SystemExit("usage: test_browser_monitor.py --inside OUT_DIR (run by the test)")
    asyncio.run(_inside(Path(sys.argv[2])))
