"""``crossmodald calibrate``: measure a stream's A/V offset and print the config correction.

Record ``seconds`` of a configured source while a clap, or the pattern page's flash and beep,
happens in front of the camera and microphone, through the daemon's own pipeline
(:func:`crossmodald.harness.run_daemon`: the source, the configured windows, the avsync plugin
in its host, its ``sync.offset`` events), and take the median of the confident per-window
offsets of the calibration methods (flash/beep, clap; never motion). The verdict needs
:data:`MIN_WINDOWS` such windows whose spread (median absolute deviation) is at most
:data:`MAX_SPREAD_MS`; otherwise the measurement is "unstable, try again" and no correction is
printed. The web page's calibration mode applies the same rule (``static/app.js``). A verdict is
printed with the TOML line that cancels it:

* a ``device`` source: ``camera.latency_ms`` when audio leads (the camera stamps late), else
  ``microphone.latency_ms`` (the microphone stamps late), each the current value plus the
  measured offset;
* a ``media`` or ``rtsp`` source: ``audio_shift_ms`` (the current value minus the measured
  offset; for a camera over RTSP, the offset its own encoder puts between audio and video);
* a ``pattern`` source: the offset only (its ``audio_lead_ms`` is the truth it injects).

Offsets use the one sign of the project: ``audio_lead_ms`` > 0 when audio is ahead of video.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from crossmodald.harness import (
    REFERENCE_METHODS,
    estimate_offset,
    harness_config,
    run_daemon,
)
from crossmodald.ingest.base import SourceError
from crossmodald.ingest.rtsp import RtspSourceConfig
from crossmodald.media import MAX_MEDIA_S
from crossmodald.runtime.device import DeviceError
from crossmodald.runtime.registry import PluginLoadError, PluginRegistry
from crossmodald.service.config import (
    ConfigError,
    DaemonConfig,
    DeviceSourceConfig,
    MediaSourceConfig,
    PatternSourceConfig,
    SourceConfig,
    load_config,
)

#: avsync methods whose offsets rest on one known instant, the only ones calibration trusts
#: (the same as ``crossmodald fix --measure``'s).
CALIBRATION_METHODS = REFERENCE_METHODS
#: Largest spread (median absolute deviation of the windows' offsets, ms) that still gives a
#: verdict: half a 30 fps frame. Wider means the measurement moved (a busy machine, a drifting
#: clock, something else flashing or clapping) and the median says nothing; measured on the
#: browser calibration pattern: 1-5 ms; a pattern drifting 1 % over 10 s: 24 ms.
MAX_SPREAD_MS = 15.0
#: Fewest calibration windows behind a verdict.
MIN_WINDOWS = 3


class UnstableCalibration(Exception):
    """Calibration windows were found but disagree (or are too few) for a verdict."""


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
    if isinstance(config, MediaSourceConfig | RtspSourceConfig):
        return [f"audio_shift_ms = {config.audio_shift_ms - audio_lead_ms:.1f}"]
    return []


def recording_source(config: SourceConfig) -> SourceConfig:
    """The source to record from; files and patterns are read as fast as they decode, live
    sources (devices, cameras over RTSP) as they come.

    Raises:
        SourceError: The source type cannot be calibrated.
    """
    if isinstance(config, DeviceSourceConfig | RtspSourceConfig):
        return config
    if isinstance(config, MediaSourceConfig | PatternSourceConfig):
        return config.model_copy(update={"realtime": False})
    raise SourceError(f"{config.name}: cannot calibrate a {config.type!r} source")


def _plugin_table(config: DaemonConfig) -> dict[str, Any]:
    for table in config.plugins:
        if table.get("type") == "avsync":
            # The configured analysis settings, but enabled whatever the daemon does with it.
            return {**table, "enabled": True}
    return {"type": "avsync"}


async def calibrate(
    config: DaemonConfig,
    source_name: str,
    seconds: float,
    *,
    config_source: str = "<config>",
    registry: PluginRegistry | None = None,
) -> Calibration:
    """Record a configured source and measure its offset with the avsync plugin.

    The recording runs through the daemon (:func:`crossmodald.harness.run_daemon`) with the
    config's ``[window]``, logging and runtime settings and its ``avsync`` table.

    Raises:
        CalibrationError: Unknown source, no audio or video, or no confident estimate.
        UnstableCalibration: Fewer than :data:`MIN_WINDOWS` calibration windows, or their
            spread is over :data:`MAX_SPREAD_MS`.
        SourceError: The source cannot open or failed.
        ConfigError, PluginLoadError, DeviceError: The avsync plugin cannot be set up.
    """
    by_name = {s.name: s for s in config.sources}
    source_config = by_name.get(source_name)
    if source_config is None:
        known = ", ".join(sorted(by_name)) or "none configured"
        raise CalibrationError(f"no source named {source_name!r} (sources: {known})")
    if not 0 < seconds <= MAX_MEDIA_S:  # also refuses NaN
        raise CalibrationError(
            f"seconds must be above 0 and at most {MAX_MEDIA_S:g}, got {seconds:g}"
        )
    registry = registry if registry is not None else PluginRegistry.discover()
    table = _plugin_table(config)
    (loaded,) = registry.validate([table], config_source)
    min_confidence = float(getattr(loaded.config, "min_confidence", 0.0))
    run_config = harness_config([recording_source(source_config)], [table], base=config)
    result = await run_daemon(
        run_config, registry=registry, max_seconds=seconds, config_source=config_source
    )
    record = result.streams[source_name]
    info = record.info
    if info is None:  # the source did not open: the daemon says why
        raise SourceError(result.errors.get(source_name, f"{source_name}: cannot open"))
    if not (info.has_audio and info.has_video):
        missing = "audio" if not info.has_audio else "video"
        raise CalibrationError(f"{source_name}: has no {missing}; calibration needs both")
    failures = result.failures()
    if failures:
        raise SourceError(failures[0])
    recorded_s = record.recorded_s()
    estimate = estimate_offset(result.events(source_name), min_confidence=min_confidence)
    if estimate.audio_lead_ms is None:
        why = f" ({'; '.join(estimate.reasons)})" if estimate.reasons else ""
        raise CalibrationError(
            f"{source_name}: no clap or flash/beep found in {recorded_s:.1f} s of "
            f"{estimate.windows_total} window(s){why}; make one in front of the camera and "
            "microphone"
        )
    median = estimate.audio_lead_ms
    spread = estimate.spread_ms
    if estimate.windows < MIN_WINDOWS or spread > MAX_SPREAD_MS:
        why = (
            f"only {estimate.windows} calibration window(s), {MIN_WINDOWS} needed"
            if estimate.windows < MIN_WINDOWS
            else f"spread {spread:.1f} ms over {estimate.windows} windows, "
            f"limit {MAX_SPREAD_MS:g} ms"
        )
        raise UnstableCalibration(
            f"{source_name}: unstable, try again ({why}); clap or show the flash/beep "
            f"steadily in front of the camera and microphone, on a machine that is not busy"
        )
    return Calibration(
        source=source_name,
        audio_lead_ms=median,
        spread_ms=spread,
        windows=estimate.windows,
        windows_total=estimate.windows_total,
        method=estimate.method,
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
        0 when measured, 1 when nothing could be measured or the measurement was unstable
        (no verdict), 2 on a config or setup error.
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
    except (CalibrationError, UnstableCalibration, SourceError) as exc:
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
