"""The daemon's configuration: TOML, validated with precise errors (key path, expected, got).

This module only composes: each part owns the model of its table. ``[[sources]]`` and
``[[sinks]]`` tables are validated by the model of their ``type``, found by entry point
(:mod:`crossmodald.ingest.registry`, :mod:`crossmodald.bus.sinks`); each ``[[plugins]]`` table
by the config model its plugin brings (:mod:`crossmodald.runtime.registry`); ``[api]`` by
:mod:`crossmodald.api_config` and ``[webrtc]`` by :mod:`crossmodald.ingest.webrtc_config`.
Errors come as :class:`~crossmodald.config_errors.ConfigError`, every problem at once.

Names that used to live here are still importable from here (the source config models lazily,
so that reading a config imports only the source types it names).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crossmodald.api_config import (
    ApiConfig,
    ApiLimitsConfig,
    ApiTokenConfig,
    Scope,
    TlsConfig,
    is_loopback_host,
)
from crossmodald.bus.sinks import SinkConfigBase, SinkRegistry
from crossmodald.config_base import NAME_PATTERN, ConfigModel, check_origins, parse_frame_rate
from crossmodald.config_errors import ConfigError, format_validation_error
from crossmodald.ingest.registry import SourceConfigBase, SourceRegistry
from crossmodald.ingest.webrtc_config import IceServerConfig, WebRtcConfig
from crossmodald.service.fleet_config import FleetConfig

if TYPE_CHECKING:
    from crossmodald.bus.jsonl import JsonlSinkConfig
    from crossmodald.ingest.device import CameraConfig, DeviceSourceConfig, MicrophoneConfig
    from crossmodald.ingest.media import MediaSourceConfig
    from crossmodald.ingest.pattern import PatternSourceConfig

__all__ = [
    "EMPTY_CONFIG",
    "MIN_HOP_S",
    "MIN_HOP_SAMPLES",
    "NAME_PATTERN",
    "ApiConfig",
    "ApiLimitsConfig",
    "ApiTokenConfig",
    "CameraConfig",
    "ConfigError",
    "DaemonConfig",
    "DeviceSourceConfig",
    "FleetConfig",
    "IceServerConfig",
    "JsonlSinkConfig",
    "LoggingConfig",
    "MediaSourceConfig",
    "MicrophoneConfig",
    "PatternSourceConfig",
    "RuntimeConfig",
    "Scope",
    "ServiceConfig",
    "SinkConfig",
    "SourceConfig",
    "TlsConfig",
    "WebRtcConfig",
    "WindowConfig",
    "check_origins",
    "default_config_text",
    "format_validation_error",
    "is_loopback_host",
    "load_config",
    "load_config_text",
    "parse_frame_rate",
    "validate_config",
]

#: Why a config file that sets nothing is refused (at start, by check-config, on reload).
EMPTY_CONFIG = (
    "no settings (the file is empty or only comments); a config with nothing configured "
    "says so: sources = []"
)
#: Any ``[[sources]]`` table, validated by the model of its type.
SourceConfig = SourceConfigBase
#: Any ``[[sinks]]`` table, validated by the model of its type.
SinkConfig = SinkConfigBase

#: Validation context keys: a :class:`SourceRegistry` / :class:`SinkRegistry` to validate
#: ``[[sources]]`` / ``[[sinks]]`` with instead of the installed types.
SOURCE_TYPES = "source_types"
SINK_TYPES = "sink_types"

# Where the config models that lived here went (imported on first use: see __getattr__).
_MOVED = {
    "PatternSourceConfig": "crossmodald.ingest.pattern",
    "MediaSourceConfig": "crossmodald.ingest.media",
    "DeviceSourceConfig": "crossmodald.ingest.device",
    "CameraConfig": "crossmodald.ingest.device",
    "MicrophoneConfig": "crossmodald.ingest.device",
    "JsonlSinkConfig": "crossmodald.bus.jsonl",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


#: The shortest hop (and so the shortest window): 10 ms, 80 audio samples at 8 kHz, the lowest
#: sample rate a configured source takes.
MIN_HOP_S = 0.01
#: Audio samples a hop must hold at a stream's own sample rate (a file may have any rate).
MIN_HOP_SAMPLES = 32


class WindowConfig(ConfigModel):
    """Event-time windows: length and hop, closed by a watermark with an allowed lateness.

    What a stream's rates demand of them (a window spans at least one video frame, a hop holds
    at least :data:`MIN_HOP_SAMPLES` audio samples) is :meth:`unfit_for`: checked against the
    rates a ``[[sources]]`` table fixes when the config is read, and against the rates a
    source reports when it opens (a file's), where a stream that does not fit fails alone.
    """

    length_s: float = Field(2.0, ge=MIN_HOP_S, le=60)
    hop_s: float = Field(0.5, ge=MIN_HOP_S, le=60)
    #: How long after a window's end late media may still arrive before the window closes.
    lateness_s: float = Field(0.2, ge=0, le=30)
    #: Longest stretch of missing audio (s) filled with silence rather than treated as a jump.
    #: Bounded: the windower holds this much media per track.
    max_gap_s: float = Field(5.0, ge=0.001, le=60)

    @model_validator(mode="after")
    def _hop(self) -> WindowConfig:
        if self.hop_s > self.length_s:
            raise ValueError("window.hop_s must not exceed window.length_s")
        return self

    def unfit_for(self, frame_rate: float | None, sample_rate: int | None) -> str | None:
        """Why these windows cannot cut a stream with these rates; None when they can.

        Args:
            frame_rate: The stream's video frames per second (None: no video, or unknown).
            sample_rate: Its audio samples per second (None: no audio).
        """
        if frame_rate is not None and frame_rate > 0 and self.length_s * frame_rate < 1 - 1e-9:
            return (
                f"length_s must span at least one video frame ({1 / frame_rate:.4g} s at "
                f"{frame_rate:g} fps), got {self.length_s:g} s"
            )
        if sample_rate is not None and self.hop_s * sample_rate < MIN_HOP_SAMPLES:
            return (
                f"hop_s must hold at least {MIN_HOP_SAMPLES} audio samples "
                f"({MIN_HOP_SAMPLES / sample_rate:.4g} s at {sample_rate} Hz), got {self.hop_s:g} s"
            )
        return None


class RuntimeConfig(ConfigModel):
    """How plugins run."""

    #: Threads torch may use for one inference call; None = half the CPUs (at least 1), which
    #: leaves a core for the event loop and the decoders (on 2 cores, 2 torch threads made the
    #: live event latency p99 four times worse).
    torch_threads: int | None = Field(None, ge=1, le=256)


class LoggingConfig(ConfigModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["plain", "json"] = "plain"


class ServiceConfig(ConfigModel):
    """Running as a service: the time budget of each shutdown stage and the status refresh.

    The budgets add up to the longest a graceful stop takes; keep systemd's
    ``TimeoutStopSec=`` above their sum (the shipped unit allows 45 s for the default 30 s).
    """

    #: Stop the sources, finish their open windows and close their plugin sessions.
    stop_ingest_s: float = Field(10.0, gt=0, le=600)
    #: Let the plugins finish the windows still queued.
    drain_plugins_s: float = Field(10.0, gt=0, le=600)
    #: Write and flush what the sinks hold.
    flush_sinks_s: float = Field(5.0, gt=0, le=600)
    #: Tell event subscribers why they end and close the HTTP server.
    close_api_s: float = Field(5.0, gt=0, le=600)
    #: How often the systemd ``STATUS=`` line (streams, subscribers) is refreshed.
    status_interval_s: float = Field(5.0, gt=0, le=3600)

    @property
    def stop_budget_s(self) -> float:
        """The longest a graceful stop may take: the sum of the stage budgets."""
        return self.stop_ingest_s + self.drain_plugins_s + self.flush_sinks_s + self.close_api_s


class DaemonConfig(ConfigModel):
    """The whole config file."""

    #: Source tables; each is validated by the model of its `type` (entry point).
    sources: list[SerializeAsAny[SourceConfigBase]] = Field(default_factory=list)
    #: Checked against the rates each source fixes (validated after ``sources``).
    window: WindowConfig = Field(default_factory=WindowConfig, validate_default=True)
    #: Plugin tables; each is validated by its plugin's own model (chosen by `type`).
    plugins: list[dict[str, Any]] = Field(default_factory=list)
    api: ApiConfig = ApiConfig()
    #: Sink tables; each is validated by the model of its `type` (entry point).
    sinks: list[SerializeAsAny[SinkConfigBase]] = Field(default_factory=list)
    logging: LoggingConfig = LoggingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    service: ServiceConfig = ServiceConfig()
    webrtc: WebRtcConfig = WebRtcConfig()
    #: Fleet mode (several daemons, one source list in NATS JetStream); None: a lone daemon.
    fleet: FleetConfig | None = None

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: object, info: ValidationInfo) -> object:
        context = info.context if isinstance(info.context, Mapping) else {}
        types = context.get(SOURCE_TYPES)
        registry = types if isinstance(types, SourceRegistry) else SourceRegistry.default()
        return registry.validate_list(value)

    @field_validator("window")
    @classmethod
    def _window_fits(cls, value: WindowConfig, info: ValidationInfo) -> WindowConfig:
        # A source whose own table fixes its rates (a pattern's fps, a microphone's rate) is
        # checked here, where check-config sees it; others when they open (pipeline).
        for source in info.data.get("sources") or ():
            reason = value.unfit_for(source.declared_frame_rate(), source.declared_sample_rate())
            if reason is not None:
                raise ValueError(f"{reason} (source {source.name!r})")
        return value

    @field_validator("sinks", mode="before")
    @classmethod
    def _sinks(cls, value: object, info: ValidationInfo) -> object:
        context = info.context if isinstance(info.context, Mapping) else {}
        types = context.get(SINK_TYPES)
        registry = types if isinstance(types, SinkRegistry) else SinkRegistry.default()
        return registry.validate_list(value)

    @model_validator(mode="after")
    def _unique_names(self) -> DaemonConfig:
        if self.fleet is not None and self.sources:
            # One source list: the fleet's bucket. A file's [[sources]] would run on every
            # daemon at once.
            raise ValueError(
                "[[sources]] cannot be used with [fleet]: in fleet mode the sources live in "
                "the fleet's bucket; add them with POST /v1/sources on any daemon"
            )
        if self.fleet is not None:
            # A sink that names its daemon (nats subjects, MQTT availability and Home
            # Assistant ids) takes the fleet's daemon id unless its table says otherwise, so
            # broker subjects agree with the events' `daemon` field.
            daemon_id = self.fleet.daemon_id
            # The model is frozen: this runs while it is being built, before anyone holds it.
            object.__setattr__(
                self,
                "sinks",
                [
                    sink.model_copy(update={"daemon": daemon_id})
                    if "daemon" in type(sink).model_fields and "daemon" not in sink.model_fields_set
                    else sink
                    for sink in self.sinks
                ],
            )
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"duplicate source name {source.name!r}")
            seen.add(source.name)
        sinks: set[str] = set()
        for sink in self.sinks:
            # Reload tells sinks apart by identity: two with one identity would be one.
            if sink.identity in sinks:
                raise ValueError(f"two sinks write to the same place, got {sink.identity!r}")
            sinks.add(sink.identity)
        return self


def validate_config(
    data: Mapping[str, Any],
    source: str = "<config>",
    *,
    source_types: SourceRegistry | None = None,
    sink_types: SinkRegistry | None = None,
) -> DaemonConfig:
    """Validate a parsed TOML document; raises :class:`ConfigError` listing every problem.

    Args:
        data: The parsed document.
        source: Where it came from, for messages.
        source_types: The source types to validate ``[[sources]]`` with (default: installed).
        sink_types: The sink types to validate ``[[sinks]]`` with (default: installed).
    """
    context: dict[str, Any] = {}
    if source_types is not None:
        context[SOURCE_TYPES] = source_types
    if sink_types is not None:
        context[SINK_TYPES] = sink_types
    try:
        return DaemonConfig.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_config_text(
    text: str,
    source: str = "<config>",
    *,
    source_types: SourceRegistry | None = None,
    sink_types: SinkRegistry | None = None,
) -> DaemonConfig:
    """Parse and validate TOML text; the registries as in :func:`validate_config`."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        # ValueError: an integer longer than Python parses (4300 digits).
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    if not data:
        # A file caught while it is being rewritten reads as empty: applied, it would stop
        # every stream, plugin and sink. Nothing at all is said explicitly (``sources = []``).
        raise ConfigError(source, [EMPTY_CONFIG])
    return validate_config(data, source, source_types=source_types, sink_types=sink_types)


def load_config(
    path: Path | None,
    *,
    source_types: SourceRegistry | None = None,
    sink_types: SinkRegistry | None = None,
) -> DaemonConfig:
    """Load a config file, or the embedded default (``configs/default.toml``) when ``path`` is None.

    Args:
        path: The file.
        source_types: The source types to validate ``[[sources]]`` with (default: installed).
        sink_types: The sink types to validate ``[[sinks]]`` with (default: installed).
    """
    if path is None:
        text, source = default_config_text(), "configs/default.toml"
    else:
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
        except UnicodeDecodeError:
            raise ConfigError(str(path), ["not UTF-8 text"]) from None
    return load_config_text(text, source, source_types=source_types, sink_types=sink_types)


def default_config_text() -> str:
    """The embedded default config shipped inside the package."""
    return resources.files("crossmodald.service").joinpath("default.toml").read_text("utf-8")
