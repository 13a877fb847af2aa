"""Shared work: with faces, speech and speaker on, each window is face-tracked once and VAD'd
once per stream, through the real plugin hosts and the real components."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from mediakit import make_windows

from crossmodald.bus.events import Event
from crossmodald.runtime.host import Overload, PluginHost, link_hosts
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service.evaluate import decode_media
from crossmodald_plugins.asd import SpeakerPlugin
from crossmodald_plugins.faces import FaceTracker
from crossmodald_plugins.vad import SpeechPlugin


async def test_one_tracker_and_one_vad_pass_per_stream_and_window(shared_media: Path) -> None:
    media = decode_media(shared_media / "talkinghead_hdtf_aoc_25fps.mp4")
    streams = {name: make_windows(media, name, length_s=2.0, hop_s=1.0) for name in ("a", "b")}
    registry = PluginRegistry.discover()
    loaded = registry.validate([{"type": "faces"}, {"type": "speech"}, {"type": "speaker"}], "t")
    events: list[Event] = []
    hosts = [
        PluginHost(registry.create(x, "cpu"), x.config, events.append, overload=Overload.BLOCK)
        for x in loaded
    ]
    link_hosts(hosts)
    faces, speech, speaker = hosts
    assert [h.name for h in hosts] == ["faces", "speech", "speaker"]
    tasks = [asyncio.create_task(h.run()) for h in hosts]
    for name in streams:
        for host in hosts:
            assert host.open_stream(media.stream_info(name)) is None
    n = len(streams["a"])
    for index in range(n):
        for windows in streams.values():
            for host in hosts:
                await host.submit(windows[index])
    async with asyncio.timeout(300):
        while speaker.stats.windows_done < 2 * n:  # noqa: ASYNC110 - test waits on a counter
            await asyncio.sleep(0.05)

    # One tracker per stream, held by the faces host; each window went through it once.
    trackers = [o for o in gc.get_objects() if type(o) is FaceTracker]
    assert sorted(id(t) for t in trackers) == sorted(id(faces._states[s]) for s in streams)
    assert [faces._states[s].updates for s in streams] == [n, n]
    # One VAD pass per window: the speech plugin's model ran each window once; the speaker
    # plugin has no VAD and no tracker of its own.
    speech_plugin = speech.plugin
    assert isinstance(speech_plugin, SpeechPlugin)
    assert speech_plugin.vad.rows_run == 2 * n
    assert isinstance(speaker.plugin, SpeakerPlugin)
    assert not [v for v in vars(speaker.plugin).values() if isinstance(v, FaceTracker)]
    assert faces.stats.windows_done == speech.stats.windows_done == speaker.stats.windows_done
    assert speaker.stats.errors == 0

    for host in hosts:
        for name in streams:
            await host.close_stream(name)
        await host.aclose()
    await asyncio.gather(*tasks)
    kinds = {e.type for e in events}
    assert {"face", "speech", "speaker", "sync.offset", "dialogue.turn"} <= kinds
