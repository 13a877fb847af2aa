"""WHIP publishers with injected A/V skews: transport offset, content offset, data channel.

Five aiortc publishers (pre-encoded VP8 + Opus, SRs exact to ~1 ms) publish at once into one
daemon running avsync (one session for the module: publishing costs seconds of real time).
Three kinds of skew are injected (signs: positive = audio ahead, ITU-R BT.1359):

* a *content* skew (the capture chain: the beep is earlier or later than the flash in the
  media itself);
* a *transport* skew (one track's packets leave late while its SRs keep the capture time, as a
  network delay would look);
* a *timestamp* skew (media in sync and sent in sync, but the audio track's RTP timestamps and
  SRs say it was captured earlier or later than it was, as a sender with a mis-set capture clock
  would stamp it).

The daemon must keep the first two apart: ``sync.transport`` (and the WebRTC source's
``source_status`` in ``/v1/streams``) reports the transport skew as
``audio_lead_ms``, ``sync.offset`` (measured on the SR capture timeline) the content skew. The
third shows in both: ``transport_offset_ms`` (what the SR-mapped timestamps say against arrival)
equals it, and avsync, measuring pictures and sound on those same timestamps, sees it too. All
traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import jsonschema
import pytest
import pytest_asyncio
from whipkit import Publisher, WhipDaemon, encode_pattern, publish, whip_daemon

from crossmodald.bus import event_schema
from crossmodald.clock.rtcp import TRANSPORT_WINDOW_NS

pytestmark = pytest.mark.webrtc

# (stream, content audio lead ms, transport audio lead ms)
CASES = [("sync0", 0.0, 0.0), ("lead80", 80.0, -120.0), ("lag120", -120.0, 80.0)]
# (stream, timestamp audio lead ms): the audio stamped that much earlier than captured. The
# 0 ms case is sync0 above (a publisher with nothing injected), not a second copy of it.
STAMP_CASES = [("sync0", 0.0), ("stamp80", 80.0), ("stamp-120", -120.0)]
DURATION_S = 8.0


@dataclass
class Session:
    """What one run of all the publishers left behind."""

    daemon: WhipDaemon
    listed: dict[str, dict[str, Any]]
    #: When ``listed`` was asked for (Unix s).
    listed_at_s: float
    #: ``/metrics`` taken with ``listed``.
    metrics: str
    messages: dict[str, list[tuple[int, str]]]
    statuses: list[int | None]
    publishers: dict[str, Publisher]

    def sr_lateness_ms(self, name: str) -> float:
        """How late the stream's packets went out at most (ms, both tracks): what aiortc's
        send-time SRs would have carried, and the publisher's capture-time SRs leave out."""
        tracks = self.publishers[name].tracks
        return max(late * 1e3 for t in tracks for _, late in t.send_lateness_s)

    def send_skew_ms(self, name: str, until_s: float) -> float:
        """How much later the audio went out than the video, beyond the injected transport skew.

        Median send lateness of the audio frames less that of the video frames (ms), over the
        frames sent in the span the daemon takes its latency medians over
        (``TRANSPORT_WINDOW_NS``) before ``until_s`` (Unix s: when it reported). The
        publisher's event loop, shared with the daemon and four other publishers, is a real
        transport delay, which a loaded machine (CI) makes a few ms uneven between the
        tracks: the transport offset includes it.
        """
        since = until_s - TRANSPORT_WINDOW_NS / 1e9
        median = {
            t.kind: statistics.median(
                late for sent, late in t.send_lateness_s if since <= sent <= until_s
            )
            for t in self.publishers[name].tracks
        }
        return float(median["audio"] - median["video"]) * 1e3


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[Session]:
    in_sync = encode_pattern(duration_s=DURATION_S)
    media = {
        name: encode_pattern(duration_s=DURATION_S, audio_lead_ms=content) if content else in_sync
        for name, content, _ in CASES
    }
    # (stream, media, transport skew, timestamp skew) of every publisher.
    plan = [(name, media[name], transport, 0.0) for name, _, transport in CASES]
    plan += [(name, in_sync, 0.0, stamp) for name, stamp in STAMP_CASES if name != "sync0"]
    names = [name for name, *_ in plan]
    async with whip_daemon() as d:
        publishers = {
            name: await publish(
                d.base_url,
                name,
                encoded,
                network_audio_lead_ms=transport,
                timestamp_audio_lead_ms=stamp,
            )
            for name, encoded, transport, stamp in plan
        }
        try:
            # Until the media runs out: stream.end follows once the peers go quiet (vanish).
            await d.wait_until(lambda: all(len(d.of(n, "sync.offset")) >= 10 for n in names), 30)
            async with aiohttp.ClientSession() as http:
                listed_at = time.time()
                async with http.get(f"{d.base_url}/v1/streams") as response:
                    listed = {s["name"]: s for s in (await response.json())["streams"]}
                async with http.get(f"{d.base_url}/metrics") as response:
                    metrics = await response.text()
        finally:
            statuses = [await p.close() for p in publishers.values()]
        await d.wait_until(lambda: all(d.of(n, "stream.end") for n in names), 10)
    messages = {n: p.messages for n, p in publishers.items()}
    yield Session(d, listed, listed_at, metrics, messages, statuses, publishers)


def rtcp_transport(session: Session, name: str) -> tuple[dict[str, Any], float]:
    """The stream's last RTCP-timed ``sync.transport`` data, and what the sending added to it
    (:meth:`Session.send_skew_ms` before that report)."""
    reports = [
        e for e in session.daemon.of(name, "sync.transport") if e["data"]["timing"] == "rtcp"
    ]
    assert reports, f"{name}: no RTCP-timed transport report"
    assert reports[-1]["media"]["clock"] == "rtcp"
    until_s = datetime.fromisoformat(reports[-1]["ts"]).timestamp()
    data: dict[str, Any] = reports[-1]["data"]
    return data, session.send_skew_ms(name, until_s)


def content_offset(d: WhipDaemon, name: str) -> float:
    """The median of the stream's confident RTCP-timed ``sync.offset`` values (ms)."""
    offsets = [
        e["data"]["audio_lead_ms"]
        for e in d.of(name, "sync.offset")
        if e["media"]["clock"] == "rtcp" and e["data"]["confidence"] >= 0.5
    ]
    assert len(offsets) >= 4, f"{name}: {len(offsets)} confident RTCP-timed offsets"
    return float(statistics.median(offsets))


def test_transport_and_content_offsets_are_measured_apart(session: Session) -> None:
    d = session.daemon
    for name, content, injected in CASES:
        # Transport offset: SR-mapped capture times against packet arrival, within 2 ms of
        # what was injected and what the publisher's sending added.
        data, sent = rtcp_transport(session, name)
        assert data["audio_lead_ms"] == pytest.approx(injected - sent, abs=2.0), name
        # The same measurement from the timestamps' side: a late video track means the
        # timestamps put the audio behind where its arrival does.
        assert data["transport_offset_ms"] == -data["audio_lead_ms"], name
        # Content offset: avsync on the SR capture timeline, flashes against beeps.
        assert content_offset(d, name) == pytest.approx(content, abs=3.0), name
        # /v1/streams shows both, for the publisher's stream name.
        entry = session.listed[name]
        assert entry["source"] == "webrtc"
        assert entry["origin"] == "publisher"
        # One reading at an instant (the reports' figures are the precise check): 3 ms, as a
        # loaded machine moves the send skew by a few ms from second to second.
        transport = injected - session.send_skew_ms(name, session.listed_at_s)

        assert entry["source_status"]["transport"]["audio_lead_ms"] == pytest.approx(
            transport, abs=3.0
        )
        assert entry["plugin_status"]["avsync"]["audio_lead_ms"] == pytest.approx(content, abs=5.0)
        # /metrics exports the source's declared transport offset the way it does plugins'.
        sample = f'crossmodald_stream_transport_offset_seconds{{stream="{name}",source="webrtc"}} '
        lines = [line for line in session.metrics.splitlines() if line.startswith(sample)]
        assert len(lines) == 1, name
        assert float(lines[0].split()[-1]) * 1000 == pytest.approx(-transport, abs=3.0), name


def test_whip_streams_report_what_they_negotiated(session: Session) -> None:
    for name, _, _ in CASES:
        entry = session.listed[name]
        # What the stream turned out to be: the negotiated picture, the sender's frame rate and
        # the Sender-Report timing (not the null/"arrival" it opened with).
        assert (entry["width"], entry["height"]) == (320, 240), name
        assert entry["frame_rate"] == pytest.approx(30.0, abs=0.5), name
        assert entry["clock"] == "rtcp", name
        assert entry["sample_rate"] == 48000, name
        # One A/V drift figure (avsync's, with its uncertainty); the transport view gives each
        # track's clock rate with its own.
        assert "av_drift_ppm" not in entry["clock_rates"]
        assert set(entry["clock_rates"]) == {
            "video_ppm", "video_uncertainty_ppm", "audio_ppm", "audio_uncertainty_ppm"
        }  # fmt: skip
        assert "drift_uncertainty_ppm" in entry["plugin_status"]["avsync"]


def test_timestamp_skew_shows_in_transport_and_content_offsets(session: Session) -> None:
    d = session.daemon
    for name, stamp in STAMP_CASES:
        data, sent = rtcp_transport(session, name)
        transport = data["transport_offset_ms"]
        content = content_offset(d, name)
        print(
            f"{name}: timestamp skew {stamp:+.0f} ms, transport offset {transport:+.2f} ms, "
            f"content offset {content:+.2f} ms, arrival lead {data['audio_lead_ms']:+.2f} ms "
            f"(packets sent up to {session.sr_lateness_ms(name):.1f} ms late, audio "
            f"{sent:+.2f} ms later than video)"
        )
        # What the SR-mapped timestamps say against arrival: the injected skew and what the
        # sending added, within 2 ms.
        assert transport == pytest.approx(stamp + sent, abs=2.0), name
        # avsync measures pictures and sound on those same timestamps: it sees the same skew
        # (the timestamps', without what the sending added).
        assert content == pytest.approx(transport - sent, abs=3.0), name
        assert content == pytest.approx(stamp, abs=3.0), name
        # Sent in sync: by arrival the offset is only what the sending added
        # (sync.offset + audio_lead_ms).
        assert data["audio_lead_ms"] == -transport, name
        assert content + data["audio_lead_ms"] == pytest.approx(-sent, abs=3.0), name
        entry = session.listed[name]  # one reading at an instant: 3 ms, as above
        assert entry["source_status"]["transport"]["transport_offset_ms"] == pytest.approx(
            stamp + session.send_skew_ms(name, session.listed_at_s), abs=3.0
        )
        assert entry["plugin_status"]["avsync"]["audio_lead_ms"] == pytest.approx(stamp, abs=5.0)


def test_events_come_back_over_the_data_channel(session: Session) -> None:
    assert session.statuses == [200] * len(session.messages)  # every DELETE ended its session
    schema = event_schema()
    d = session.daemon
    by_seq = {e["seq"]: e for e in d.events}
    for name, messages in session.messages.items():
        # Events back over the data channel: this stream's only, the same JSON as SSE.
        received = [json.loads(text) for _, text in messages]
        assert received, f"{name}: nothing on the events data channel"
        assert {e["stream"] for e in received} == {name}
        assert received[0]["type"] == "stream.start"
        assert sum(e["type"] == "sync.offset" for e in received) >= 10
        for event in received:
            jsonschema.validate(event, schema)
        seqs = [e["seq"] for e in received]
        assert seqs == sorted(seqs)
        # The SSE-side copy of each event is byte-for-byte what the channel carried.
        assert all(by_seq[e["seq"]] == e for e in received)
