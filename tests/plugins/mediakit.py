"""Windows for plugin unit tests: media cut by the daemon's own windower, fed to one plugin.

Unit tests of a plugin need exact windows in hand (a clip's first six, a hop that skips,
windows made by hand) and the plugin's events for them. The daemon itself, as
``crossmodald eval`` and ``crossmodald analyze`` run it, is :mod:`crossmodald.harness`; these
helpers only drive the real :class:`~crossmodald.window.Windower` and a plugin's sessions for
tests that look at single windows. (Moved here from service/evaluate.py and
service/calibrate.py, which now go through the harness.)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from chainkit import PluginChain, with_providers

from crossmodald.bus.events import Event
from crossmodald.ingest import create_source
from crossmodald.ingest.base import Source
from crossmodald.ingest.frames import audio_chunk
from crossmodald.media import (
    NS_PER_MS,
    NS_PER_S,
    AudioChunk,
    ClockKind,
    StreamInfo,
    VideoFrame,
    Window,
)
from crossmodald.runtime.plugin import PluginConfig
from crossmodald.service.config import MediaSourceConfig, PatternSourceConfig, WindowConfig
from crossmodald.service.evaluate import DecodedMedia
from crossmodald.service.pipeline import windower_for
from crossmodald.window import Windower

#: Audio chunk length when pushing decoded audio through the windower.
CHUNK_SAMPLES = 1024


def make_windows(
    media: DecodedMedia,
    stream: str,
    *,
    length_s: float = 2.0,
    hop_s: float = 0.5,
    audio_shift_ms: float = 0.0,
) -> list[Window]:
    """Windows of decoded media wholly inside it, cut by the daemon's :class:`Windower`.

    Frames and audio (in 1024-sample chunks, moved earlier by ``audio_shift_ms``; positive:
    audio leads) are pushed in pts order, as a source delivers them.
    """
    info = media.stream_info(stream)
    windower = Windower(
        stream,
        length_ns=round(length_s * NS_PER_S),
        hop_ns=round(hop_s * NS_PER_S),
        lateness_ns=0,
        has_video=info.has_video,
        has_audio=info.has_audio,
        sample_rate=info.sample_rate,
        frame_rate=info.frame_rate,
        clock=info.clock,
    )
    shift_ns = round(audio_shift_ms * NS_PER_MS)
    items: list[VideoFrame | AudioChunk] = list(media.video)
    rate = media.audio_rate
    for pos in range(0, len(media.audio), CHUNK_SAMPLES):
        pts = media.audio_start_ns + pos * NS_PER_S // rate - shift_ns
        samples = media.audio[pos : pos + CHUNK_SAMPLES]
        items.append(audio_chunk(stream, pts, 0, samples, rate, ClockKind.PTS))
    items.sort(key=lambda item: item.pts_ns)
    windows: list[Window] = []
    for item in items:
        windows += windower.push(item, 0)
    windows += windower.flush(0)
    first = media.video[0].pts_ns if media.video else media.audio_start_ns
    end = media.duration_ns
    return [w for w in windows if w.start_ns >= first and w.end_ns <= end]


def run_plugin(
    plugin: Any, streams: Mapping[str, tuple[StreamInfo, Sequence[Window]]]
) -> dict[str, list[Event]]:
    """Feed a loaded plugin the windows of several streams; its events per stream.

    Window ``i`` of every stream goes into one ``infer`` call; the plugin runs behind the
    providers its config requires (:mod:`chainkit`), as the daemon's host runs it.
    """
    config = getattr(plugin, "config", None)
    device = str(getattr(plugin, "device", "cpu"))
    chain = PluginChain(
        with_providers(plugin, config, device)
        if isinstance(config, PluginConfig)
        else [(plugin, ())]
    )
    for info, _w in streams.values():
        chain.open(info)
    depth = max((len(w) for _i, w in streams.values()), default=0)
    for index in range(depth):
        chain.run([w[index] for _n, (_i, w) in streams.items() if index < len(w)])
    for name in streams:
        chain.close(name)
    return {name: chain.events[plugin.name].get(name, []) for name in streams}


def build_source(config: MediaSourceConfig | PatternSourceConfig) -> Source:
    """The source of a config, read as fast as it decodes."""
    return create_source(config.model_copy(update={"realtime": False}))


async def record_windows(
    source: Source, seconds: float, window: WindowConfig
) -> tuple[list[Window], float]:
    """Open ``source``, record ``seconds`` of media time and cut it into the daemon's windows.

    Returns:
        The windows, and the media seconds recorded (both tracks).
    """
    info = await source.open()
    try:
        windower = windower_for(source.name, info, window)
        windows: list[Window] = []
        first_ns: int | None = None
        heads = {"video": -1 if info.has_video else None, "audio": -1 if info.has_audio else None}
        span_ns = round(seconds * NS_PER_S)
        async for item in source:
            if not isinstance(item, VideoFrame | AudioChunk):
                continue  # faults: the windows show any gap
            first_ns = item.pts_ns if first_ns is None else min(first_ns, item.pts_ns)
            kind = "video" if isinstance(item, VideoFrame) else "audio"
            end_ns = item.end_ns if isinstance(item, AudioChunk) else item.pts_ns
            heads[kind] = max(heads[kind] or 0, end_ns - first_ns)
            windows.extend(windower.push(item, time.monotonic_ns()))
            if min(h for h in heads.values() if h is not None) >= span_ns:
                break
        windows.extend(windower.flush(time.monotonic_ns()))
        return windows, max(0, min(h for h in heads.values() if h is not None)) / NS_PER_S
    finally:
        await source.aclose()
