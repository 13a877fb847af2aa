"""Local capture devices: a camera (OpenCV), a microphone (sounddevice/PortAudio), or both as one
stream.

Every item is stamped on the daemon's monotonic clock (``time.monotonic_ns``), so a camera and a
microphone on the same machine share one media timeline:

* camera frames carry the driver's capture timestamp when the V4L2 backend offers one (V4L2
  buffers are stamped on CLOCK_MONOTONIC), else the time ``grab()`` returned;
* microphone blocks carry PortAudio's ``inputBufferAdcTime`` mapped onto the monotonic clock,
  laid on a sample-count timeline (:class:`~crossmodald.clock.samples.SampleClock`) so that
  consecutive blocks are contiguous and audio is never stretched; the timeline is re-anchored when
  the ADC times drift away from it by more than a few ms (reported as a ``timestamp_jump`` fault).

The timing itself (driver stamps, the PortAudio clock mapping, the sample clock) is pure and lives
in :mod:`crossmodald.clock.samples`; this module runs the devices and builds the faults.

Each device's configured ``latency_ms`` is subtracted from its stamps.

Blocking work never runs on the event loop: a camera is read by its own thread, a microphone's
PortAudio callback runs on PortAudio's thread, and both hand items over through bounded queues
that drop the oldest item and count it (reported as ``overflow`` faults). A device that vanishes
(unplugged, busy, its stream stopped, nothing delivered for ``stall_s``) is reported as a
``device_lost`` fault and reopened with exponential backoff (``device_retry`` on each failed try,
``device_back`` once it delivers again); the stream fails with :class:`SourceError` only after
``retry_limit`` failed tries in a row. A device missing at start is a :class:`SourceError` from
:meth:`DeviceSource.open`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from crossmodald.clock.samples import SampleClock, StreamTimeMapper, camera_capture_ns
from crossmodald.config_base import ConfigModel
from crossmodald.ingest.base import Backoff, SourceError, SourceFault
from crossmodald.ingest.frames import audio_chunk, to_mono_f32, video_frame_from_luma
from crossmodald.ingest.pacing import Pacer
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.media import (
    NS_PER_MS,
    NS_PER_S,
    ClockKind,
    MediaItem,
    StreamInfo,
    U8Image,
)

log = logging.getLogger(__name__)


#: A device index as the OS numbers them (OpenCV and PortAudio take a C int).
DeviceIndex = Annotated[int, Field(ge=0, le=2**31 - 1)]


class CameraConfig(ConfigModel):
    """A local camera opened through OpenCV ``VideoCapture``."""

    #: V4L2 index (0 = /dev/video0), a device path, or any capture string OpenCV accepts
    #: (a file or an image sequence like "frames/%04d.png" behaves as a camera at its own rate).
    device: DeviceIndex | str
    #: OpenCV capture backend; "auto" lets OpenCV choose (V4L2 for indices on Linux).
    backend: Literal["auto", "v4l2", "ffmpeg", "gstreamer"] = "auto"
    #: Requested resolution (the driver may pick the nearest mode; None: the device's default).
    width: int | None = Field(None, ge=16, le=7680)
    height: int | None = Field(None, ge=16, le=4320)
    #: Requested frame rate (None: the device's default).
    fps: float | None = Field(None, gt=0, le=240)
    #: Pixel format as a FOURCC, e.g. "MJPG" or "YUYV" (None: the device's default).
    fourcc: str | None = Field(None, pattern=r"^[ -~]{4}$")
    #: How late this camera stamps a frame after the light hit the sensor (ms); subtracted
    #: from every frame's capture time. Measure it with `crossmodald calibrate`.
    latency_ms: float = Field(0.0, ge=-5000, le=5000)


class MicrophoneConfig(ConfigModel):
    """A local microphone opened through sounddevice (PortAudio)."""

    #: Device index or (part of) its name as `crossmodald devices` lists it; None: the default.
    device: DeviceIndex | str | None = None
    sample_rate: int = Field(48000, ge=8000, le=192000)
    channels: int = Field(1, ge=1, le=64)
    #: Samples per PortAudio callback block (per channel).
    blocksize: int = Field(960, ge=16, le=65536)
    #: How late this microphone stamps a sample after the sound reached it (ms); subtracted
    #: from every block's ADC time. Measure it with `crossmodald calibrate`.
    latency_ms: float = Field(0.0, ge=-5000, le=5000)


class DeviceSourceConfig(SourceConfigBase):
    """A camera and/or microphone on this machine, as one stream on the monotonic clock."""

    type: Literal["device"]
    camera: CameraConfig | None = None
    microphone: MicrophoneConfig | None = None
    #: First wait before reopening a device that vanished; doubles up to retry_max_s.
    retry_initial_s: float = Field(0.5, gt=0, le=3600)
    retry_max_s: float = Field(30.0, gt=0, le=3600)
    #: Reopen attempts in a row before the stream fails (0: retry for ever).
    retry_limit: int = Field(0, ge=0, le=10**9)
    #: A device that delivers nothing for this long counts as vanished.
    stall_s: float = Field(3.0, gt=0, le=600)

    @model_validator(mode="after")
    def _devices(self) -> DeviceSourceConfig:
        if self.camera is None and self.microphone is None:
            raise ValueError("a device source needs a camera, a microphone or both")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must not be below retry_initial_s")
        return self

    def declared_frame_rate(self) -> float | None:
        """The camera's requested frame rate, when the table asks for one."""
        return self.camera.fps if self.camera is not None else None

    def declared_sample_rate(self) -> int | None:
        """The microphone's sample rate."""
        return self.microphone.sample_rate if self.microphone is not None else None


#: Faults of one kind (overflow) are reported at most this often; counts are summed meanwhile.
_FAULT_INTERVAL_NS = 1 * NS_PER_S


# --------------------------------------------------------------------------------------------
# Thread -> event loop handoff.


class _Handoff:
    """Items from device threads to the event loop.

    Media goes into one bounded deque per device (the oldest is dropped and counted when the
    loop falls behind: a live device cannot be paused); faults go into their own bounded deque.
    Every put wakes the source's iterator through ``loop.call_soon_threadsafe``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        self._loop = loop
        self._wake = wake
        self._lock = threading.Lock()
        self._media: dict[str, deque[MediaItem]] = {}
        self._bounds: dict[str, int] = {}
        self._faults: deque[SourceFault] = deque(maxlen=256)
        self.dropped: dict[str, int] = {}
        self.fatal: str | None = None

    def add_lane(self, lane: str, max_items: int) -> None:
        self._media[lane] = deque()
        self._bounds[lane] = max(1, max_items)
        self.dropped[lane] = 0

    def _notify(self) -> None:
        # A closed loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    def put(self, lane: str, item: MediaItem) -> bool:
        """Queue an item; returns False when the oldest item had to be dropped for it."""
        with self._lock:
            queue = self._media[lane]
            dropped = len(queue) >= self._bounds[lane]
            if dropped:
                queue.popleft()
                self.dropped[lane] += 1
            queue.append(item)
        self._notify()
        return not dropped

    def fault(self, fault: SourceFault) -> None:
        with self._lock:
            self._faults.append(fault)
        self._notify()

    def fail(self, message: str) -> None:
        with self._lock:
            self.fatal = message
        self._notify()

    def take(self) -> MediaItem | SourceFault | None:
        """Next item: faults first, then the media item that arrived earliest."""
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            best: deque[MediaItem] | None = None
            for queue in self._media.values():
                if queue and (best is None or queue[0].arrival_ns < best[0].arrival_ns):
                    best = queue
            return best.popleft() if best is not None else None


class _RateLimited:
    """Sums events (overflows) and reports them at most once per interval."""

    def __init__(self, interval_ns: int = _FAULT_INTERVAL_NS) -> None:
        self.total = 0
        self._pending = 0
        self._last_ns = -interval_ns
        self._interval_ns = interval_ns

    def add(self, now_ns: int, count: int = 1) -> int:
        """Count; returns how many to report now (0 while within the interval)."""
        self.total += count
        self._pending += count
        if now_ns - self._last_ns < self._interval_ns:
            return 0
        self._last_ns = now_ns
        pending, self._pending = self._pending, 0
        return pending


# --------------------------------------------------------------------------------------------
# Devices: each runs in its own supervising thread.


class _DeviceWorker(threading.Thread, abc.ABC):
    """Runs one device: deliver until it vanishes, then reopen with backoff."""

    label: str

    def __init__(
        self, source_name: str, handoff: _Handoff, config: DeviceSourceConfig, label: str
    ) -> None:
        super().__init__(name=f"ingest:{source_name}:{label}", daemon=True)
        self.source_name = source_name
        self.label = label
        self.handoff = handoff
        self.stop_event = threading.Event()
        self.backoff = Backoff(config.retry_initial_s, config.retry_max_s, config.retry_limit)
        self.stall_ns = round(config.stall_s * NS_PER_S)
        self.drops = _RateLimited()

    @abc.abstractmethod
    def describe(self) -> str:
        """The device in words, for messages."""

    @abc.abstractmethod
    def open_device(self) -> None:
        """Open the device (blocking); raises SourceError with a one-line reason."""

    @abc.abstractmethod
    def deliver_until_lost(self) -> str | None:
        """Deliver items until the device is lost (returns why) or stop is asked (None)."""

    @abc.abstractmethod
    def close_device(self) -> None:
        """Release the device (idempotent)."""

    def _fault(self, kind: str, message: str, pts_ns: int | None = None) -> None:
        self.handoff.fault(SourceFault(kind, f"{self.describe()}: {message}", pts_ns))

    def _put(self, lane: str, item: MediaItem) -> None:
        if not self.handoff.put(lane, item):
            count = self.drops.add(time.monotonic_ns())
            if count:
                self._fault(
                    "overflow",
                    f"{count} {lane} item(s) dropped, the daemon fell behind "
                    f"({self.drops.total} so far)",
                    item.pts_ns,
                )

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                reason = self.deliver_until_lost()
                self.close_device()
                if reason is None:
                    return
                self._fault("device_lost", f"{reason}; reopening")
                if not self._reopen():
                    return
        except Exception as exc:  # a bug must end the stream loudly, not kill a thread quietly
            log.exception("%s failed", self.name)
            self.handoff.fail(f"{self.describe()}: {type(exc).__name__}: {exc}")
        finally:
            self.close_device()

    def _reopen(self) -> bool:
        while True:
            delay = self.backoff.next_delay_s()
            if delay is None:
                self.handoff.fail(
                    f"{self.describe()}: gone, {self.backoff.tries} reopen attempts failed"
                )
                return False
            if self.stop_event.wait(delay):
                return False
            try:
                self.open_device()
            except SourceError as exc:
                self._fault("device_retry", f"reopen attempt {self.backoff.tries} failed: {exc}")
                continue
            self.backoff.reset()
            self._fault("device_back", "reopened")
            return True


def _fourcc_text(code: float) -> str:
    value = int(code)
    if value <= 0:
        return ""
    return "".join(chr((value >> (8 * i)) & 0xFF) for i in range(4))


_BACKENDS = {
    "auto": cv2.CAP_ANY,
    "v4l2": cv2.CAP_V4L2,
    "ffmpeg": cv2.CAP_FFMPEG,
    "gstreamer": cv2.CAP_GSTREAMER,
}


@dataclass(frozen=True, slots=True)
class CameraMode:
    """What a camera actually delivers after open (the driver may not grant what was asked)."""

    width: int
    height: int
    fps: float | None
    fourcc: str
    backend: str
    is_file: bool


class CameraDevice:
    """One OpenCV ``VideoCapture``: open with the configured mode, read grey frames with their
    capture time. Blocking; used from one thread at a time.

    A capture that reports a frame count (a file, an image sequence) behaves as a camera: it is
    read at its own frame rate, stamped with the grab time, and its end counts as the device
    vanishing (so it is reopened, like a camera plugged back in).
    """

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self._cap: Any = None
        self.mode: CameraMode | None = None
        self._next_due_ns = 0

    def describe(self) -> str:
        return f"camera {self.config.device!r}"

    def open(self, stall_s: float) -> CameraMode:
        """Open the capture and apply the mode; raises SourceError."""
        config = self.config
        cap = cv2.VideoCapture(config.device, _BACKENDS[config.backend])
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.describe()}: cannot open (no such device, or no permission)")
        # FOURCC first: V4L2 picks the frame size within the pixel format.
        if config.fourcc is not None:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*config.fourcc))
        if config.width is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        if config.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        if config.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, config.fps)
        # A vanished V4L2 camera then fails a grab after stall_s instead of OpenCV's 10 s.
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, stall_s * 1000.0)
        reported_fps = float(cap.get(cv2.CAP_PROP_FPS))
        fps = reported_fps if math.isfinite(reported_fps) and reported_fps > 0 else None
        is_file = float(cap.get(cv2.CAP_PROP_FRAME_COUNT)) > 0
        if is_file:
            # A recording plays at the configured rate, else its own (30 if it has none).
            fps = config.fps or fps or 30.0
        mode = CameraMode(
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=fps,
            fourcc=_fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)),
            backend=str(cap.getBackendName()),
            is_file=is_file,
        )
        for key, asked, got in (
            ("width", config.width, mode.width),
            ("height", config.height, mode.height),
            ("fourcc", config.fourcc, mode.fourcc),
        ):
            if asked is not None and asked != got and not mode.is_file:
                log.warning(
                    "%s: asked for %s %s, the driver gave %s", self.describe(), key, asked, got
                )
        if not mode.is_file and not cap.grab():
            # A busy V4L2 camera opens but cannot stream; say so now rather than later.
            cap.release()
            raise SourceError(
                f"{self.describe()}: opened but delivers no frames (busy, or mode unsupported)"
            )
        self._cap = cap
        self.mode = mode
        self._next_due_ns = 0  # the first read is due at once
        return mode

    def read(self, stop: threading.Event) -> tuple[U8Image, int] | None:
        """Grab the next frame: (grey picture, capture time in ns), or None if the device failed
        or stop was asked while pacing a file."""
        cap, mode = self._cap, self.mode
        if cap is None or mode is None:
            return None
        if mode.is_file and mode.fps:
            # A recording plays as a live camera would: one frame per period, never faster.
            period_ns = round(NS_PER_S / mode.fps)
            due_ns = self._next_due_ns or time.monotonic_ns()
            wait_ns = due_ns - time.monotonic_ns()
            if wait_ns > 0 and stop.wait(wait_ns / NS_PER_S):
                return None
            now_ns = time.monotonic_ns()
            if now_ns - due_ns > period_ns:
                # Late by more than a frame: restart the schedule rather than burst to catch up
                # (a camera drops frames, it never delivers them early).
                due_ns = now_ns
            self._next_due_ns = due_ns + period_ns
        if not cap.grab():
            return None
        grab_ns = time.monotonic_ns()
        capture_ns, _ = camera_capture_ns(
            mode.backend, float(cap.get(cv2.CAP_PROP_POS_MSEC)), grab_ns
        )
        ok, picture = cap.retrieve()
        if not ok or picture is None:
            return None
        if picture.ndim == 3:
            luma: U8Image = cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
        else:
            luma = np.ascontiguousarray(picture, dtype=np.uint8)
        return luma, capture_ns

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class _CameraWorker(_DeviceWorker):
    def __init__(
        self, source_name: str, handoff: _Handoff, config: DeviceSourceConfig, device: CameraDevice
    ) -> None:
        super().__init__(source_name, handoff, config, "camera")
        self.device = device
        self.stall_s = config.stall_s
        self.latency_ns = round((config.camera.latency_ms if config.camera else 0.0) * NS_PER_MS)
        self.frames = 0

    def describe(self) -> str:
        return self.device.describe()

    def open_device(self) -> None:
        self.device.open(self.stall_s)

    def close_device(self) -> None:
        self.device.close()

    def deliver_until_lost(self) -> str | None:
        while not self.stop_event.is_set():
            got = self.device.read(self.stop_event)
            if self.stop_event.is_set():
                return None
            if got is None:
                return "stopped delivering frames (unplugged, or the recording ended)"
            luma, capture_ns = got
            frame = video_frame_from_luma(
                self.source_name,
                capture_ns - self.latency_ns,
                time.monotonic_ns(),
                luma,
                ClockKind.CAPTURE,
            )
            self.frames += 1
            self._put("video", frame)
        return None


class MicrophoneDevice:
    """One sounddevice ``InputStream`` with a callback that stamps and hands over each block.

    PortAudio is imported on first use, so that a machine without it can run every other source.
    """

    def __init__(self, config: MicrophoneConfig) -> None:
        self.config = config
        self._stream: Any = None
        self.lost = threading.Event()
        self.last_block_ns = 0
        self.on_block: Callable[[Any, int, Any, Any, int], None] | None = None

    def describe(self) -> str:
        return (
            f"microphone {self.config.device!r}"
            if self.config.device is not None
            else ("default microphone")
        )

    def open(self) -> dict[str, Any]:
        """Resolve the device, check the settings and start the stream; raises SourceError.

        Returns:
            PortAudio's description of the device (``sounddevice.query_devices``).
        """
        sd = import_sounddevice()
        config = self.config
        try:
            info: dict[str, Any] = dict(sd.query_devices(config.device, kind="input"))
        except (ValueError, sd.PortAudioError) as exc:
            raise SourceError(f"{self.describe()}: {_one_line(exc)}") from None
        if int(info.get("max_input_channels", 0)) < config.channels:
            raise SourceError(
                f"{self.describe()}: {info.get('name')!r} has "
                f"{info.get('max_input_channels', 0)} input channel(s), {config.channels} asked"
            )
        self.lost.clear()
        self.last_block_ns = time.monotonic_ns()
        try:
            stream = sd.InputStream(
                device=info["index"],
                samplerate=config.sample_rate,
                channels=config.channels,
                blocksize=config.blocksize,
                dtype="float32",
                callback=self._callback,
                finished_callback=self.lost.set,
            )
            stream.start()
        except (ValueError, sd.PortAudioError) as exc:
            raise SourceError(
                f"{self.describe()}: cannot open {info.get('name')!r} at "
                f"{config.sample_rate} Hz x {config.channels} ch: {_one_line(exc)}"
            ) from None
        self._stream = stream
        return info

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        now_ns = time.monotonic_ns()
        self.last_block_ns = now_ns
        if self.on_block is not None:
            self.on_block(indata, frames, time_info, status, now_ns)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)
            except Exception as exc:  # a vanished device may fail to close; it is gone anyway
                log.debug("%s: close failed: %s", self.describe(), exc)


def import_sounddevice() -> Any:
    """The sounddevice module, or SourceError when PortAudio is not installed."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise SourceError(
            f"microphone: sounddevice/PortAudio unavailable ({_one_line(exc)}); "
            "install the libportaudio2 package"
        ) from None
    return sounddevice


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _MicWorker(_DeviceWorker):
    def __init__(
        self,
        source_name: str,
        handoff: _Handoff,
        config: DeviceSourceConfig,
        device: MicrophoneDevice,
    ) -> None:
        super().__init__(source_name, handoff, config, "microphone")
        self.device = device
        mic = device.config
        self.sample_rate = mic.sample_rate
        self.latency_ns = round(mic.latency_ms * NS_PER_MS)
        self.overflows = _RateLimited()
        self.clock_kind = ClockKind.ADC
        self.blocks = 0
        self._reset_clock()
        device.on_block = self._on_block

    def _reset_clock(self) -> None:
        block_s = self.device.config.blocksize / self.sample_rate
        self.mapper = StreamTimeMapper()
        self.clock: SampleClock[np.ndarray[Any, np.dtype[np.float32]]] = SampleClock(
            self.sample_rate,
            warmup_blocks=max(5, math.ceil(0.5 / block_s)),
            window_blocks=max(10, math.ceil(2.0 / block_s)),
            max_hold_blocks=max(10, math.ceil(2.5 / block_s)),
        )

    def describe(self) -> str:
        return self.device.describe()

    def open_device(self) -> None:
        self._reset_clock()
        self.device.open()

    def close_device(self) -> None:
        self.device.close()

    def _on_block(self, indata: Any, frames: int, time_info: Any, status: Any, now_ns: int) -> None:
        # PortAudio's thread: keep it short (no allocation beyond the mono copy, no blocking).
        discontinuity = bool(status.input_overflow)
        if discontinuity:
            count = self.overflows.add(now_ns)
            if count:
                self._fault(
                    "overflow",
                    f"input overflow, samples lost ({self.overflows.total} so far)",
                )
        adc_ns = self.mapper.adc_ns(
            float(time_info.currentTime), float(time_info.inputBufferAdcTime), now_ns
        )
        # A block cannot end after it was handed to us; some host APIs (ALSA's PulseAudio
        # plugin) report the ADC time of the block's end instead of its start.
        latest_ns = now_ns - frames * NS_PER_S // self.sample_rate
        if adc_ns is None:
            # No ADC time from this host API: the block ended about now.
            self.clock_kind = ClockKind.ARRIVAL
            adc_ns = latest_ns
        adc_ns = min(adc_ns, latest_ns)
        mono = to_mono_f32(indata, channels_first=False)
        for block, stamp in self.clock.feed(mono, adc_ns, frames, discontinuity=discontinuity):
            if stamp.jump_ns:
                self._fault(
                    "timestamp_jump",
                    f"audio timeline re-anchored to the ADC clock by {stamp.jump_ns / NS_PER_MS:+.2f} ms",
                    stamp.pts_ns,
                )
            kept = block[stamp.trim :] if stamp.trim else block
            if kept.size == 0:
                continue
            self.blocks += 1
            self._put(
                "audio",
                audio_chunk(
                    self.source_name,
                    stamp.pts_ns - self.latency_ns,
                    now_ns,
                    kept,
                    self.sample_rate,
                    self.clock_kind,
                ),
            )

    def deliver_until_lost(self) -> str | None:
        poll_s = min(0.25, self.stall_ns / NS_PER_S / 4)
        while not self.stop_event.wait(poll_s):
            if self.device.lost.is_set():
                return "its stream stopped (unplugged, or taken by another program)"
            silent_ns = time.monotonic_ns() - self.device.last_block_ns
            if silent_ns > self.stall_ns:
                return f"delivered nothing for {silent_ns / NS_PER_S:.1f} s"
        return None


# --------------------------------------------------------------------------------------------
# The source.


class DeviceSource:
    """A camera and/or a microphone on this machine, as one stream (see the module docstring).

    Args:
        config: The validated ``type = "device"`` source table.
        video_queue_s: Seconds of frames buffered for the event loop before the oldest drop.
        audio_queue_s: Seconds of audio buffered likewise.
    """

    def __init__(
        self, config: DeviceSourceConfig, *, video_queue_s: float = 1.0, audio_queue_s: float = 2.0
    ) -> None:
        self.name = config.name
        self.config = config
        self._video_queue_s = video_queue_s
        self._audio_queue_s = audio_queue_s
        self._wake: asyncio.Event | None = None
        self._handoff: _Handoff | None = None
        self._workers: list[_DeviceWorker] = []
        self._info: StreamInfo | None = None
        self._closed = False

    @property
    def workers(self) -> tuple[Any, ...]:
        """The running device workers (for tests and stats)."""
        return tuple(self._workers)

    async def open(self) -> StreamInfo:
        """Open every configured device; raises SourceError naming the one that failed."""
        if self._info is not None:
            return self._info
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        handoff = _Handoff(loop, self._wake)
        self._handoff = handoff
        config = self.config
        camera: CameraDevice | None = None
        mode: CameraMode | None = None
        mic: MicrophoneDevice | None = None
        mic_info: dict[str, Any] | None = None
        try:
            if config.camera is not None:
                camera = CameraDevice(config.camera)
                mode = await asyncio.to_thread(camera.open, config.stall_s)
                fps = mode.fps or config.camera.fps or 30.0
                handoff.add_lane("video", math.ceil(fps * self._video_queue_s))
            if config.microphone is not None:
                mic = MicrophoneDevice(config.microphone)
                mic_config = config.microphone
                handoff.add_lane(
                    "audio",
                    math.ceil(self._audio_queue_s * mic_config.sample_rate / mic_config.blocksize),
                )
                # Workers exist before the stream starts: its first callback needs them.
                self._workers.append(_MicWorker(self.name, handoff, config, mic))
                mic_info = await asyncio.to_thread(mic.open)
        except SourceError as exc:
            if camera is not None:
                camera.close()
            if mic is not None:
                mic.close()
            self._workers.clear()
            raise SourceError(f"{self.name}: {exc}") from None
        if camera is not None:
            self._workers.insert(0, _CameraWorker(self.name, handoff, config, camera))
        for worker in self._workers:
            worker.start()
        if mic_info is not None:
            log.info("%s: microphone %r opened", self.name, mic_info.get("name"))
        if mode is not None:
            log.info(
                "%s: camera opened: %dx%d %s fps %s via %s",
                self.name,
                mode.width,
                mode.height,
                mode.fps,
                mode.fourcc,
                mode.backend,
            )
        self._info = StreamInfo(
            name=self.name,
            kind="device",
            has_video=camera is not None,
            has_audio=mic is not None,
            frame_rate=(mode.fps or config.camera.fps) if mode and config.camera else None,
            sample_rate=config.microphone.sample_rate if config.microphone else None,
            width=mode.width if mode else None,
            height=mode.height if mode else None,
            clock=ClockKind.ADC if mic is not None else ClockKind.CAPTURE,
        )
        return self._info

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[MediaItem | SourceFault]:
        if self._handoff is None or self._wake is None:
            raise SourceError(f"{self.name}: iterated before open()")
        handoff, wake = self._handoff, self._wake
        while not self._closed:
            item = handoff.take()
            if item is not None:
                yield item
                continue
            if handoff.fatal is not None:
                raise SourceError(f"{self.name}: {handoff.fatal}")
            if not any(worker.is_alive() for worker in self._workers):
                return
            wake.clear()
            # Re-check after clearing: a put between take() and clear() must not be missed.
            if handoff.fatal is None and (item := handoff.take()) is not None:
                yield item
                continue
            await wake.wait()

    async def aclose(self) -> None:
        """Stop the devices and wait (bounded) for their threads."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.stop_event.set()
        if self._wake is not None:
            self._wake.set()

        def join_all() -> None:
            deadline = time.monotonic() + 5.0
            for worker in self._workers:
                worker.join(timeout=max(0.0, deadline - time.monotonic()))

        await asyncio.to_thread(join_all)
        for worker in self._workers:
            if worker.is_alive():
                log.warning("%s: %s did not stop within 5 s", self.name, worker.name)


def create_device_source(config: DeviceSourceConfig) -> DeviceSource:
    """The source for a ``type = "device"`` table (the ingest factory calls this)."""
    return DeviceSource(config)


class DeviceSourceFactory:
    """Source type ``device`` (entry point ``crossmodald.sources``)."""

    config_model = DeviceSourceConfig

    @classmethod
    def create(cls, config: DeviceSourceConfig, *, clock: Pacer | None = None) -> DeviceSource:
        """A device source; live devices keep their own time, so ``clock`` is not used."""
        return DeviceSource(config)
