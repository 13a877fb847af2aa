"""``crossmodald calibrate``: measure a stream's A/V offset and print the config correction.

Record ``seconds`` of a configured source while a clap, or the pattern page's flash and beep,
happens in front of the camera and microphone; cut the recording into the configured windows;
run the avsync plugin's own analysis (:meth:`Plugin.infer`, the same code the daemon runs) on
them, and take the median of the confident per-window offsets. The result is printed with the
TOML line that cancels it:

* a ``device`` source: ``camera.latency_ms`` when audio leads (the camera stamps late), else
  ``microphone.latency_ms`` (the microphone stamps late), each the current value plus the
  measured offset;
* a ``media`` source: ``audio_shift_ms`` (the current value minus the measured offset);
* a ``pattern`` source: the offset only (its ``audio_lead_ms`` is the truth it injects).

Offsets use the one sign of the project: ``audio_lead_ms`` > 0 when audio is ahead of video.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from crossmodald.ingest import create_source
from crossmodald.ingest.base import Source, SourceError
from crossmodald.ingest.device import DeviceSource
from crossmodald.media import NS_PER_S, AudioChunk, VideoFrame, Window
from crossmodald.runtime.device import DeviceError, resolve_device
from crossmodald.runtime.plugin import BatchItem
from crossmodald.runtime.registry import PluginLoadError, PluginRegistry
from crossmodald.service.config import (
    ConfigError,
    DaemonConfig,
    DeviceSourceConfig,
    MediaSourceConfig,
    PatternSourceConfig,
    SourceConfig,
    WindowConfig,
    load_config,
)
from crossmodald.window import Windower

#: Windows handed to the plugin per inference call.
_BATCH = 32


#: avsync methods whose offsets rest on one known instant, the only ones calibration trusts.
CALIBRATION_METHODS = frozenset({"flash", "clap"})


class CalibrationError(Exception):
    """Calibration could not measure anything; the message is one line saying why."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """A measured offset.

    Attributes:
        source: The source name.
        audio_lead_ms: Median offset over the confident windows (> 0: audio ahead of video).
        spread_ms: Median absolute deviation of those windows' offsets.
        windows: Confident windows used.
        windows_total: Windows analysed.
        method: The avsync method that measured most of them ("flash" or "clap").
        recorded_s: Media seconds recorded.
    """

    source: str
    audio_lead_ms: float
    spread_ms: float
    windows: int
    windows_total: int
    method: str
    recorded_s: float


def correction_lines(config: SourceConfig, audio_lead_ms: float) -> list[str]:
    """The TOML lines (keys within the source's ``[[sources]]`` table) that cancel an offset.

    Args:
        config: The source as configured when the offset was measured.
        audio_lead_ms: The measured offset (> 0: audio ahead of video).
    """
    if isinstance(config, DeviceSourceConfig):
        camera, microphone = config.camera, config.microphone
        if camera is not None and (audio_lead_ms >= 0 or microphone is None):
            # Audio ahead: the camera stamps its frames too late; count that as its latency.
            return [f"camera.latency_ms = {camera.latency_ms + audio_lead_ms:.1f}"]
        if microphone is not None:
            return [f"microphone.latency_ms = {microphone.latency_ms - audio_lead_ms:.1f}"]
        return []
    if isinstance(config, MediaSourceConfig):
        return [f"audio_shift_ms = {config.audio_shift_ms - audio_lead_ms:.1f}"]
    return []


def build_source(config: SourceConfig) -> Source:
    """The source to record from; files and patterns are read as fast as they decode."""
    if isinstance(config, DeviceSourceConfig):
        return DeviceSource(config)
    if isinstance(config, MediaSourceConfig | PatternSourceConfig):
        return create_source(config.model_copy(update={"realtime": False}))
    raise SourceError(f"{config.name}: cannot calibrate a {config.type!r} source")


async def record_windows(
    source: Source, seconds: float, window: WindowConfig
) -> tuple[list[Window], float]:
    """Open ``source``, record ``seconds`` of media time and cut it into event-time windows.

    Returns:
        The windows, and the media seconds recorded (both tracks).
    """
    info = await source.open()
    try:
        if not (info.has_audio and info.has_video):
            missing = "audio" if not info.has_audio else "video"
            raise CalibrationError(f"{source.name}: has no {missing}; calibration needs both")
        windower = Windower(
            source.name,
            length_ns=round(window.length_s * NS_PER_S),
            hop_ns=round(window.hop_s * NS_PER_S),
            lateness_ns=round(window.lateness_s * NS_PER_S),
            has_video=True,
            has_audio=True,
            sample_rate=info.sample_rate,
            frame_rate=info.frame_rate,
            clock=info.clock,
            max_gap_ns=round(window.max_gap_s * NS_PER_S),
        )
        windows: list[Window] = []
        first_ns: int | None = None
        heads = {"video": -1, "audio": -1}
        span_ns = round(seconds * NS_PER_S)
        async for item in source:
            if not isinstance(item, VideoFrame | AudioChunk):
                continue  # faults: the recording goes on; the windows show any gap
            first_ns = item.pts_ns if first_ns is None else min(first_ns, item.pts_ns)
            kind = "video" if isinstance(item, VideoFrame) else "audio"
            end_ns = item.end_ns if isinstance(item, AudioChunk) else item.pts_ns
            heads[kind] = max(heads[kind], end_ns - first_ns)
            windows.extend(windower.push(item, time.monotonic_ns()))
            if min(heads.values()) >= span_ns:
                break
        windows.extend(windower.flush(time.monotonic_ns()))
        return windows, max(0, min(heads.values())) / NS_PER_S
    finally:
        await source.aclose()


def _plugin_table(config: DaemonConfig) -> dict[str, Any]:
    for table in config.plugins:
        if table.get("type") == "avsync":
            # The configured analysis settings, but enabled whatever the daemon does with it.
            return {**table, "enabled": True}
    return {"type": "avsync"}


async def calibrate(
    config: DaemonConfig, source_name: str, seconds: float, *, config_source: str = "<config>"
) -> Calibration:
    """Record a configured source and measure its offset with the avsync plugin.

    Raises:
        CalibrationError: Unknown source, no audio or video, or no confident estimate.
        SourceError: The source cannot open or failed.
        ConfigError, PluginLoadError, DeviceError: The avsync plugin cannot be set up.
    """
    by_name = {s.name: s for s in config.sources}
    source_config = by_name.get(source_name)
    if source_config is None:
        known = ", ".join(sorted(by_name)) or "none configured"
        raise CalibrationError(f"no source named {source_name!r} (sources: {known})")
    if seconds <= 0:
        raise CalibrationError(f"seconds must be positive, got {seconds:g}")
    registry = PluginRegistry.discover()
    (loaded,) = registry.validate([_plugin_table(config)], config_source)
    plugin = registry.create(loaded, resolve_device(loaded.config.device))

    windows, recorded_s = await record_windows(build_source(source_config), seconds, config.window)
    results: list[Any] = []
    for start in range(0, len(windows), _BATCH):
        batch = windows[start : start + _BATCH]
        # avsync keeps no per-stream inference state (plugin contract v2: state None).
        items = [BatchItem(w, None) for w in batch]
        results.extend(await asyncio.to_thread(plugin.infer, items))
    min_confidence = float(getattr(loaded.config, "min_confidence", 0.0))
    # Only events with a known instant (a flash/beep, a clap) calibrate; the motion method's
    # correlation on whatever else was in view is no reference and would skew the median.
    confident = [
        r
        for r in results
        if getattr(r, "audio_lead_ms", None) is not None
        and r.confidence >= min_confidence
        and str(getattr(r, "method", "")) in CALIBRATION_METHODS
    ]
    if not confident:
        reasons = sorted({str(getattr(r, "reason", "")) for r in results} - {""})
        why = f" ({'; '.join(reasons)})" if reasons else ""
        raise CalibrationError(
            f"{source_name}: no clap or flash/beep found in {recorded_s:.1f} s of "
            f"{len(windows)} window(s){why}; make one in front of the camera and microphone"
        )
    leads = [float(r.audio_lead_ms) for r in confident]
    median = statistics.median(leads)
    methods = [str(r.method) for r in confident]
    return Calibration(
        source=source_name,
        audio_lead_ms=median,
        spread_ms=statistics.median(abs(x - median) for x in leads),
        windows=len(confident),
        windows_total=len(results),
        method=max(set(methods), key=methods.count),
        recorded_s=recorded_s,
    )


async def calibrate_command(
    config_path: Path | None,
    source: str,
    seconds: float = 10.0,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``crossmodald calibrate``: print the measured offset and the config line to apply.

    Args:
        config_path: The daemon's config file (None: the embedded default).
        source: Name of the ``[[sources]]`` entry to calibrate.
        seconds: Media seconds to record (clap or show the pattern page during them).
        out: Where the result goes (stdout by default).
        err: Where errors go (stderr by default).

    Returns:
        0 when measured, 1 when nothing could be measured, 2 on a config or setup error.
    """
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    try:
        config = load_config(config_path)
        result = await calibrate(
            config, source, seconds, config_source=str(config_path or "configs/default.toml")
        )
    except ConfigError as exc:
        print(f"calibrate: {exc}", file=stderr)
        return 2
    except (PluginLoadError, DeviceError) as exc:
        print(f"calibrate: {exc}", file=stderr)
        return 2
    except (CalibrationError, SourceError) as exc:
        print(f"calibrate: {exc}", file=stderr)
        return 1
    side = "ahead of" if result.audio_lead_ms >= 0 else "behind"
    print(
        f"{result.source}: audio is {abs(result.audio_lead_ms):.1f} ms {side} video "
        f"(audio_lead_ms = {result.audio_lead_ms:+.1f}, spread {result.spread_ms:.1f} ms, "
        f"{result.windows} of {result.windows_total} windows, {result.method} method, "
        f"{result.recorded_s:.1f} s)",
        file=stdout,
    )
    source_config = next(s for s in config.sources if s.name == source)
    lines = correction_lines(source_config, result.audio_lead_ms)
    if lines:
        print(f'To correct it, set in the [[sources]] table named "{source}":', file=stdout)
        for line in lines:
            print(f"  {line}", file=stdout)
    return 0
