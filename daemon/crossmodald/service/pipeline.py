"""The per-stream pipeline: source -> windower -> every plugin host.

:class:`StreamPipeline` (a part of :class:`~crossmodald.service.daemon.Daemon`) runs one
stream's task: open the source, build its windower from ``[window]``, attach the plugin hosts,
pump media into windows and windows into the hosts, and at the end finish the open windows and
close the plugin sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from crossmodald.bus.events import Envelope, Event
from crossmodald.clock.drift import RateEstimator
from crossmodald.ingest.base import Source, SourceError, SourceFault
from crossmodald.media import NS_PER_S, ClockKind, StreamInfo, VideoFrame
from crossmodald.redact import redact_text
from crossmodald.runtime.host import Overload, PluginHost
from crossmodald.service.config import DaemonConfig, WindowConfig
from crossmodald.service.streams import StreamState
from crossmodald.window import Windower

log = logging.getLogger(__name__)


class StreamPipeline:
    """Runs each stream's task (a part of the daemon; the attributes below are the daemon's)."""

    config: DaemonConfig
    hosts: list[PluginHost]
    failed_streams: list[str]
    _overload: Overload
    _clock_ns: Callable[[], int]

    if TYPE_CHECKING:

        def publish(self, event: Event) -> Envelope: ...

    def _attach_host(self, state: StreamState, info: StreamInfo, host: PluginHost) -> None:
        if host in state.hosts:
            return
        reason = host.open_stream(info)
        if reason is None:
            state.hosts.append(host)
            state.plugins.append(host.name)
            state.refused.pop(host.name, None)
            return
        state.refused[host.name] = reason
        self.publish(_fault(info, "plugin_refused", f"{host.name}: {state.name} {reason}"))
        if self._overload is Overload.BLOCK:
            self.failed_streams.append(state.name)
            state.error = f"{state.name}: {host.name} cannot analyse it: {reason}"

    async def _run_stream(self, state: StreamState, make_source: Callable[[], Source]) -> None:
        name = state.name
        source: Source | None = None
        try:
            source = make_source()
            info = await source.open()
            # [window] against the rates the source reports (a file's are known only now).
            windower = windower_for(name, info, self.config.window)
        except Exception as exc:
            # Whatever one stream's config or media does at start, that stream fails alone:
            # this task is in the daemon's TaskGroup, and an exception leaving it would stop
            # every stream (and the daemon) with it.
            if not isinstance(exc, _EXPECTED):
                log.error("stream %s: unexpected error at start", name, exc_info=exc)
            self._fail_stream(state, _one_line(exc))
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()
            return
        state.info = info
        state.state = "running"
        if self._overload is Overload.DROP_OLDEST:  # live: arrival times mean something
            state.video_rate = RateEstimator() if info.has_video else None
            state.audio_rate = RateEstimator() if info.has_audio else None
        state.windower = windower
        for host in list(self.hosts):
            self._attach_host(state, info, host)
        self.publish(
            Event(
                type="stream.start",
                stream=name,
                start_ns=0,
                end_ns=0,
                data={
                    "source": state.kind,
                    # The key event.schema.json and docs/events.md name (was missing).
                    "kind": state.kind,
                    "has_video": info.has_video,
                    "has_audio": info.has_audio,
                    "frame_rate": info.frame_rate,
                    "sample_rate": info.sample_rate,
                    "width": info.width,
                    "height": info.height,
                    "clock": info.clock.value,
                },
                clock=info.clock,
            )
        )
        pump = asyncio.create_task(self._pump(source, state, windower), name=f"ingest:{name}")
        stopping = asyncio.create_task(state.stop_requested.wait(), name=f"ingest:{name}:stop")
        await asyncio.wait([pump, stopping], return_when=asyncio.FIRST_COMPLETED)
        reason = "end of stream"
        if not pump.done():
            pump.cancel()
            reason = state.stop_reason
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            failure = await _exception_of(pump)
            if failure is not None:
                reason = "error"
                self._fail_stream(state, _one_line(failure))
        # Finish open windows, let the plugins see them, then close the sessions.
        for window in windower.flush(self._clock_ns()):
            for host in tuple(state.hosts):
                await host.submit(window)
        for host in tuple(state.hosts):
            await host.close_stream(name)
        with contextlib.suppress(Exception):
            await source.aclose()
        if state.state != "failed":
            state.state = "ended"
        # The media span the stream delivered (an empty one at 0 when nothing came).
        end = state.media_end_ns or 0
        self.publish(
            Event(
                type="stream.end",
                stream=name,
                start_ns=min(state.media_start_ns or 0, end),
                end_ns=end,
                data={"reason": reason},
                clock=info.clock,
            )
        )

    async def _pump(self, source: Source, state: StreamState, windower: Windower) -> None:
        # A source may move to a better clock while running (WebRTC: arrival until RTCP sender
        # reports come); once the latest item of every track says the same clock, the windows
        # closed from then on say it too.
        clocks: dict[type, ClockKind] = {}
        tracks = int(windower.has_video) + int(windower.has_audio)
        rate = state.info.frame_rate if state.info is not None else None
        frame_ns = round(NS_PER_S / rate) if rate else 0
        async for item in source:
            if isinstance(item, SourceFault):
                self.publish(_fault(state.info, item.kind, item.message, item.pts_ns, state.name))
                continue
            if isinstance(item, VideoFrame):
                state.video_frames += 1
                if state.video_rate is not None:
                    state.video_rate.add(item.pts_ns, item.arrival_ns)
                end_ns = item.pts_ns + frame_ns
            else:
                state.audio_chunks += 1
                state.audio_samples += len(item.samples)
                if state.audio_rate is not None:
                    state.audio_rate.add(item.end_ns, item.arrival_ns)
                end_ns = item.end_ns
            if state.media_start_ns is None or item.pts_ns < state.media_start_ns:
                state.media_start_ns = item.pts_ns
            if state.media_end_ns is None or end_ns > state.media_end_ns:
                state.media_end_ns = end_ns
            clocks[type(item)] = item.clock
            if len(clocks) == tracks and len(set(clocks.values())) == 1:
                windower.clock = item.clock
            windows = windower.push(item, self._clock_ns())
            for window in windows:
                # A snapshot: a reload may swap hosts while a submit waits.
                for host in tuple(state.hosts):
                    await host.submit(window)

    def _fail_stream(self, state: StreamState, message: str) -> None:
        message = redact_text(message)  # a source's error may quote its URL
        # Offline (analyze, eval, the harness) the caller reports the failure itself, as its
        # own error: logging it too would print it twice.
        level = logging.ERROR if self._overload is Overload.DROP_OLDEST else logging.INFO
        log.log(level, "stream %s failed: %s", state.name, message)
        state.state = "failed"
        state.error = message
        self.failed_streams.append(state.name)
        self.publish(_fault(state.info, "error", message, None, state.name))


def _fault(
    info: StreamInfo | None,
    kind: str,
    message: str,
    pts_ns: int | None = None,
    stream: str | None = None,
) -> Event:
    at = pts_ns or 0
    return Event(
        type="stream.fault",
        stream=stream if stream is not None else (info.name if info else ""),
        start_ns=at,
        end_ns=at,
        # Every stream.fault message leaves the process: no URL credentials in it.
        data={"kind": kind, "message": redact_text(message)},
        clock=info.clock if info else ClockKind.UNKNOWN,
    )


async def _exception_of(task: asyncio.Task[None]) -> BaseException | None:
    try:
        await task
    except asyncio.CancelledError:
        return None
    except Exception as exc:
        return exc
    return None


#: What a stream's start may raise for its config or media (anything else is a bug, logged
#: with its traceback; the stream fails alone all the same).
_EXPECTED = (SourceError, OSError, ValueError)


def _one_line(exc: BaseException) -> str:
    """A failure's reason as one line: a source's own message, else the exception named."""
    text = " ".join(str(exc).split())
    if isinstance(exc, _EXPECTED) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def windower_for(stream: str, info: StreamInfo, window: WindowConfig) -> Windower:
    """The windower of a stream as the daemon makes it: ``[window]`` applied to what the source
    says of its tracks when it opens.

    Raises:
        ValueError: The windows do not fit the stream's rates (shorter than a video frame,
            a hop of too few audio samples; see :meth:`WindowConfig.unfit_for`).
    """
    reason = window.unfit_for(
        info.frame_rate if info.has_video else None,
        info.sample_rate if info.has_audio else None,
    )
    if reason is not None:
        raise ValueError(f"[window] {reason}")
    return Windower(
        stream,
        length_ns=round(window.length_s * NS_PER_S),
        hop_ns=round(window.hop_s * NS_PER_S),
        lateness_ns=round(window.lateness_s * NS_PER_S),
        has_video=info.has_video,
        has_audio=info.has_audio,
        sample_rate=info.sample_rate,
        frame_rate=info.frame_rate,
        clock=info.clock,
        max_gap_ns=round(window.max_gap_s * NS_PER_S),
    )
