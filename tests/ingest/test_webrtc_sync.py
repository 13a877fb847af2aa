"""WHIP publishers with injected A/V skews: transport offset, content offset, data channel.

Three aiortc publishers (pre-encoded VP8 + Opus, SRs exact to ~1 ms) publish at once into one
daemon running avsync. Each injects a *content* skew (the capture chain: the beep is earlier
or later than the flash in the media itself) and a *transport* skew (one track's packets leave
late while its SRs keep the capture time, as a network delay would look). The daemon must keep
them apart: ``sync.transport`` reports the transport skew, ``sync.offset`` (measured on the SR
capture timeline) the content skew. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import statistics

import aiohttp
import jsonschema
import pytest
from whipkit import encode_pattern, publish, whip_daemon

from crossmodald.bus import event_schema

pytestmark = pytest.mark.webrtc

# (stream, content audio lead ms, transport audio lead ms)
CASES = [("sync0", 0.0, 0.0), ("lead80", 80.0, -120.0), ("lag120", -120.0, 80.0)]
DURATION_S = 8.0


async def test_transport_and_content_offsets_are_measured_apart() -> None:
    media = {
        name: encode_pattern(duration_s=DURATION_S, audio_lead_ms=content)
        for name, content, _ in CASES
    }
    async with whip_daemon() as d:
        publishers = {
            name: await publish(d.base_url, name, media[name], network_audio_lead_ms=transport)
            for name, _, transport in CASES
        }
        try:
            # Until the media runs out: stream.end follows once the peers go quiet (vanish).
            await d.wait_until(
                lambda: all(len(d.of(n, "sync.offset")) >= 10 for n, _, _ in CASES), 30
            )
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{d.base_url}/v1/streams") as response,
            ):
                listed = {s["name"]: s for s in (await response.json())["streams"]}
        finally:
            statuses = [await p.close() for p in publishers.values()]
        assert statuses == [200, 200, 200]
        await d.wait_until(lambda: all(d.of(n, "stream.end") for n, _, _ in CASES), 10)

    schema = event_schema()
    for name, content, transport in CASES:
        # Transport offset: SR-mapped capture times against packet arrival, within 2 ms.
        reports = [e for e in d.of(name, "sync.transport") if e["data"]["timing"] == "rtcp"]
        assert reports, f"{name}: no RTCP-timed transport report"
        measured = reports[-1]["data"]["audio_lead_ms"]
        assert measured == pytest.approx(transport, abs=2.0), name
        assert reports[-1]["media"]["clock"] == "rtcp"
        # Content offset: avsync on the SR capture timeline, flashes against beeps.
        offsets = [
            e["data"]["audio_lead_ms"]
            for e in d.of(name, "sync.offset")
            if e["media"]["clock"] == "rtcp" and e["data"]["confidence"] >= 0.5
        ]
        assert len(offsets) >= 4, f"{name}: {len(offsets)} confident RTCP-timed offsets"
        assert statistics.median(offsets) == pytest.approx(content, abs=3.0), name
        # /v1/streams shows both, for the publisher's stream name.
        entry = listed[name]
        assert entry["source"] == "webrtc"
        assert entry["origin"] == "publisher"
        assert entry["transport"]["audio_lead_ms"] == pytest.approx(transport, abs=2.0)
        assert entry["sync"]["audio_lead_ms"] == pytest.approx(content, abs=5.0)
        # Events back over the data channel: this stream's only, the same JSON as SSE.
        received = [json.loads(text) for _, text in publishers[name].messages]
        assert received, f"{name}: nothing on the events data channel"
        assert {e["stream"] for e in received} == {name}
        assert received[0]["type"] == "stream.start"
        assert sum(e["type"] == "sync.offset" for e in received) >= 10
        for event in received:
            jsonschema.validate(event, schema)
        seqs = [e["seq"] for e in received]
        assert seqs == sorted(seqs)
        # The SSE-side copy of each event is byte-for-byte what the channel carried.
        by_seq = {e["seq"]: e for e in d.events}
        assert all(by_seq[e["seq"]] == e for e in received)
