"""A second WebRTC stack as WHIP publisher: Node.js on werift (not aiortc) into the real daemon.

The test encodes the flash/beep pattern with a known content offset (PyAV: VP8 + Opus), and a
werift publisher (tests/e2e/node_whip/publish.mjs) sends it as RTP paced on one clock, with a
data channel ``events``. Daemon and publisher run in a network namespace that has only ``lo``
(:mod:`netnskit`), ICE on 127.0.0.1 only, no STUN/TURN. Checked: the stream appears in
``/v1/streams``, its timing moves onto werift's Sender Reports, ``avsync`` measures the
injected offset, the transport offset is near zero (both tracks sent on time), the events come
back over the data channel, and DELETE ends the stream.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "ingest"))
import netnskit  # noqa: E402

NODE_DIR = HERE / "node_whip"
STREAM = "node"
#: The content offset put into the media (audio ahead of video, ms).
TRUTH_AUDIO_LEAD_MS = 60.0
DURATION_S = 10.0

pytestmark = [pytest.mark.webrtc]


def _skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (.ci/run installs nodejs)"
    if not (NODE_DIR / "node_modules" / "werift").is_dir():
        return f"werift is not installed: run `npm ci` in {NODE_DIR} (.ci/run does)"
    return netnskit.namespace_skip_reason()


def _write_media(out: Path) -> None:
    """The pattern as VP8 + Opus packets for publish.mjs (media.json + media.bin)."""
    from whipkit import encode_pattern

    media = encode_pattern(
        duration_s=DURATION_S, audio_lead_ms=TRUTH_AUDIO_LEAD_MS, video_codec="vp8"
    )
    blob = bytearray()
    index: dict[str, Any] = {"duration_s": DURATION_S, "video": [], "audio": []}
    for kind, packets in (("video", media.video), ("audio", media.audio)):
        for packet in packets:
            data = bytes(packet)
            index[kind].append([int(packet.pts or 0), len(blob), len(data), packet.is_keyframe])
            blob += data
    (out / "media.bin").write_bytes(bytes(blob))
    (out / "media.json").write_text(json.dumps(index), encoding="utf-8")


def test_werift_publisher_is_analysed(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    _write_media(tmp_path)
    done = netnskit.run_isolated(Path(__file__), ["--inside", str(tmp_path)], timeout_s=150)
    result_path = tmp_path / "result.json"
    logs = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, logs
    assert result_path.is_file(), logs
    result = json.loads(result_path.read_text())
    daemon_log = (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
    node = result["node"]
    assert result["node_exit"] == 0, f"{node}\n{result['node_stderr']}\n{daemon_log}"

    # The WHIP session: answered with a Location, media sent, DELETE answered 200.
    statuses = [line for line in node if "status" in line]
    assert statuses[0]["status"] == "answered"
    assert "/v1/whip/session/" in statuses[0]["location"]
    assert {"status": "connected"} in statuses
    assert statuses[-1]["status"] == "deleted"
    assert statuses[-1]["code"] == 200
    sent = next(line["sent"] for line in node if "sent" in line)
    assert sent["video_frames"] == round(DURATION_S * 30)
    assert sent["audio_packets"] >= DURATION_S * 50 - 1

    # The stream appeared in /v1/streams while publishing.
    listed = {s["name"]: s for s in result["streams"]}
    assert STREAM in listed, result["streams"]
    assert listed[STREAM]["source"] == "webrtc"
    assert listed[STREAM]["origin"] == "publisher"

    events = result["events"]
    types = [e["type"] for e in events]
    assert types[0] == "stream.start"
    assert events[0]["data"]["kind"] == "webrtc"
    assert "stream.end" in types, "DELETE did not end the stream"

    # Transport offset from werift's Sender Reports: both tracks left on time.
    transport = [
        e["data"] for e in events if e["type"] == "sync.transport" and e["data"]["timing"] == "rtcp"
    ]
    assert transport, "no RTCP-timed sync.transport: werift's Sender Reports were not used"
    assert transport[-1]["audio_lead_ms"] == pytest.approx(0.0, abs=10.0), transport[-1]

    # Content offset: avsync on the SR capture timeline measures the injected offset.
    offsets = [
        e["data"]["audio_lead_ms"]
        for e in events
        if e["type"] == "sync.offset"
        and e["media"]["clock"] == "rtcp"
        and e["data"]["audio_lead_ms"] is not None
        and e["data"]["confidence"] >= 0.5
    ]
    assert len(offsets) >= 6, f"{len(offsets)} confident RTCP-timed offsets"
    measured = statistics.median(offsets)
    print(
        f"werift publisher: content offset {measured:+.1f} ms (truth {TRUTH_AUDIO_LEAD_MS:+.1f}), "
        f"transport offset {transport[-1]['audio_lead_ms']:+.1f} ms"
    )
    assert measured == pytest.approx(TRUTH_AUDIO_LEAD_MS, abs=6.0), offsets

    # Events back over the data channel: this stream's, in order, the same JSON as SSE.
    received = [line["event"] for line in node if "event" in line]
    assert received
    assert received[0]["type"] == "stream.start"
    assert {e["stream"] for e in received} == {STREAM}
    assert sum(e["type"] == "sync.offset" for e in received) >= 6
    by_seq = {e["seq"]: e for e in events}
    assert all(by_seq[e["seq"]] == e for e in received)


# -- inside the namespace -------------------------------------------------------------------------


async def _inside(out: Path) -> None:
    netnskit.only_loopback()
    config = netnskit.write_config(
        out / "crossmodald.toml", [{"type": "avsync", "method": "flash"}]
    )
    result: dict[str, Any] = {"node": [], "streams": []}
    async with netnskit.loopback_daemon(config, out / "daemon.log") as daemon:
        node = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_DIR / "publish.mjs"),
            "--url",
            f"{netnskit.BASE_URL}/v1/whip/{STREAM}",
            "--media",
            str(out),
            cwd=NODE_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert node.stdout is not None
        assert node.stderr is not None

        async def read_stdout() -> None:
            assert node.stdout is not None
            while line := await node.stdout.readline():
                item = json.loads(line)
                result["node"].append(item)
                if item.get("status") == "connected":
                    await daemon.wait_until(lambda: bool(daemon.of(STREAM, "stream.start")), 10)
                    result["streams"] = (await daemon.get("/v1/streams"))["streams"]

        reader = asyncio.create_task(read_stdout())
        stderr = await node.stderr.read()
        await asyncio.wait_for(reader, DURATION_S + 60)
        result["node_exit"] = await node.wait()
        result["node_stderr"] = stderr.decode(errors="replace")[-3000:]
        await daemon.wait_until(lambda: bool(daemon.of(STREAM, "stream.end")), 15)
        result["events"] = [e for e in daemon.events if e["stream"] == STREAM]
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--inside":
        raise SystemExit("usage: test_node_whip.py --inside OUT_DIR (run by the test)")
    asyncio.run(_inside(Path(sys.argv[2])))
