"""The daemon's configuration: TOML, validated with precise errors (key path, expected, got).

Sources are chosen by their ``type`` key; each plugin table is validated by the config model the
plugin itself brings (see :mod:`crossmodald.runtime.registry`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from crossmodald.service.secrets import Secret

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or host name stays on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ConfigError(Exception):
    """An invalid configuration; ``errors`` holds one line per problem, each with its key path."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: " + "; ".join(self.errors))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_frame_rate(value: object) -> Fraction:
    """Frame rate from a number or "num/den"; 29.97, 59.94 and 23.976 mean the NTSC rates."""
    if isinstance(value, bool):
        raise ValueError("expected a frame rate, got a boolean")
    if isinstance(value, str):
        try:
            rate = Fraction(value.strip())
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(
                f"expected a frame rate like 30 or '30000/1001', got {value!r}"
            ) from exc
    elif isinstance(value, int | float):
        rate = Fraction(value).limit_denominator(1001)
        for ntsc in (24, 30, 60, 120):
            if abs(float(value) - ntsc * 1000 / 1001) < 0.006:
                rate = Fraction(ntsc * 1000, 1001)
    else:
        raise ValueError(f"expected a frame rate, got {type(value).__name__}")
    if not 1 <= rate <= 240:
        raise ValueError(f"frame rate must be within 1..240, got {float(rate):g}")
    return rate


class PatternSourceConfig(_Model):
    """A synthetic test source: white flashes and tone bursts, with known faults injected."""

    type: Literal["pattern"]
    name: str = Field(pattern=NAME_PATTERN)
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: Fraction = Fraction(30)
    sample_rate: int = Field(48000, ge=8000, le=192000)
    #: Seconds between flash/beep pairs; above 2 * max lag so a pair never matches the wrong one.
    period_s: float = Field(1.2, gt=0.1, le=60)
    flash_ms: float = Field(100.0, gt=0)
    beep_ms: float = Field(100.0, gt=0)
    tone_hz: float = Field(1000.0, gt=20, le=20000)
    #: The true A/V offset: positive = audio ahead of video (ITU-R BT.1359 sign).
    audio_lead_ms: float = Field(0.0, ge=-5000, le=5000)
    #: Audio clock error: the sound card runs this many ppm fast against the video clock.
    drift_ppm: float = Field(0.0, ge=-10000, le=10000)
    #: Delivery jitter (ms): each item is delivered up to this late, possibly out of order.
    jitter_ms: float = Field(0.0, ge=0, le=5000)
    #: Probability that a video frame is dropped.
    drop_frames: float = Field(0.0, ge=0, lt=1)
    #: Probability that an audio packet is lost.
    lose_audio: float = Field(0.0, ge=0, lt=1)
    audio_packet_ms: float = Field(20.0, gt=0, le=1000)
    #: Stop after this many seconds (None: run until stopped).
    duration_s: float | None = Field(None, gt=0)
    seed: int = 0
    #: Pace output at real time (True for `run`; `analyze` goes as fast as it can).
    realtime: bool = True

    @field_validator("fps", mode="before")
    @classmethod
    def _fps(cls, value: object) -> Fraction:
        return parse_frame_rate(value)


class MediaSourceConfig(_Model):
    """Any file or URL that PyAV (FFmpeg) opens: mp4, mkv, webm, avi, wav, flac, RTSP, HTTP, ..."""

    type: Literal["media"]
    name: str = Field(pattern=NAME_PATTERN)
    url: str = Field(min_length=1)
    #: Start again from the beginning at the end (files only).
    loop: bool = False
    #: Pace output at real time (True for `run`; `analyze` goes as fast as it can).
    realtime: bool = True
    #: FFmpeg options passed to the demuxer/protocol, e.g. {rtsp_transport = "tcp"}.
    options: dict[str, str] = Field(default_factory=dict)
    #: Seconds to wait for a network stream to open or deliver data.
    timeout_s: float = Field(10.0, gt=0)
    #: Shift the audio timeline by this many ms (positive = audio earlier, i.e. audio leads).
    audio_shift_ms: float = 0.0


class CameraConfig(_Model):
    """A local camera opened through OpenCV ``VideoCapture``."""

    #: V4L2 index (0 = /dev/video0), a device path, or any capture string OpenCV accepts
    #: (a file or an image sequence like "frames/%04d.png" behaves as a camera at its own rate).
    device: int | str
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


class MicrophoneConfig(_Model):
    """A local microphone opened through sounddevice (PortAudio)."""

    #: Device index or (part of) its name as `crossmodald devices` lists it; None: the default.
    device: int | str | None = None
    sample_rate: int = Field(48000, ge=8000, le=192000)
    channels: int = Field(1, ge=1, le=64)
    #: Samples per PortAudio callback block (per channel).
    blocksize: int = Field(960, ge=16, le=65536)
    #: How late this microphone stamps a sample after the sound reached it (ms); subtracted
    #: from every block's ADC time. Measure it with `crossmodald calibrate`.
    latency_ms: float = Field(0.0, ge=-5000, le=5000)


class DeviceSourceConfig(_Model):
    """A camera and/or microphone on this machine, as one stream on the monotonic clock."""

    type: Literal["device"]
    name: str = Field(pattern=NAME_PATTERN)
    camera: CameraConfig | None = None
    microphone: MicrophoneConfig | None = None
    #: First wait before reopening a device that vanished; doubles up to retry_max_s.
    retry_initial_s: float = Field(0.5, gt=0, le=3600)
    retry_max_s: float = Field(30.0, gt=0, le=3600)
    #: Reopen attempts in a row before the stream fails (0: retry for ever).
    retry_limit: int = Field(0, ge=0)
    #: A device that delivers nothing for this long counts as vanished.
    stall_s: float = Field(3.0, gt=0, le=600)

    @model_validator(mode="after")
    def _devices(self) -> DeviceSourceConfig:
        if self.camera is None and self.microphone is None:
            raise ValueError("a device source needs a camera, a microphone or both")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must not be below retry_initial_s")
        return self


SourceConfig = Annotated[
    PatternSourceConfig | MediaSourceConfig | DeviceSourceConfig, Field(discriminator="type")
]


class WindowConfig(_Model):
    """Event-time windows: length and hop, closed by a watermark with an allowed lateness."""

    length_s: float = Field(2.0, gt=0, le=60)
    hop_s: float = Field(0.5, gt=0, le=60)
    #: How long after a window's end late media may still arrive before the window closes.
    lateness_s: float = Field(0.2, ge=0, le=30)
    #: Longest stretch of missing audio (s) filled with silence rather than treated as a jump.
    max_gap_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _hop(self) -> WindowConfig:
        if self.hop_s > self.length_s:
            raise ValueError("window.hop_s must not exceed window.length_s")
        return self


#: What an API token may do: ``subscribe`` (read events, streams, sources, metrics), ``publish``
#: (send media, e.g. WHIP), ``admin`` (change sources, reload; implies the other two).
Scope = Literal["publish", "subscribe", "admin"]


class ApiTokenConfig(_Model):
    """One bearer token for the API (``[[api.tokens]]``)."""

    #: A label for logs and metrics (never the token itself).
    name: str = Field(pattern=NAME_PATTERN)
    #: The token value. Kept as a secret: never shown in logs, reprs or error messages.
    #: Inline, or {env = NAME}, {file = PATH} or {credential = NAME} (see service/secrets.py).
    token: Secret
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("token")
    @classmethod
    def _strong(cls, value: SecretStr) -> SecretStr:
        # Why 16: short tokens are guessable; the message never echoes the value.
        secret = value.get_secret_value()
        if len(secret) < 16:
            raise ValueError(f"token must be at least 16 characters, got {len(secret)}")
        if not secret.isprintable() or secret != secret.strip():
            raise ValueError("token must be printable with no surrounding whitespace")
        return value


class TlsConfig(_Model):
    """TLS for the HTTP server (``[api.tls]``): PEM certificate chain and private key."""

    cert: Path
    key: Path


class ApiLimitsConfig(_Model):
    """Request size and per-client limits (``[api.limits]``)."""

    #: Largest request body accepted (bytes); larger ones get 413.
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=1024**3)
    #: Longest request line / URL (bytes); longer ones get 414/400.
    max_line_bytes: int = Field(8190, ge=256, le=1024 * 1024)
    #: Longest single header field (bytes); longer ones get 431/400.
    max_field_bytes: int = Field(8190, ge=256, le=1024 * 1024)
    #: Most header fields in one request.
    max_headers: int = Field(64, ge=8, le=1024)
    #: Requests in progress at once from one client address (long-lived event streams count).
    max_connections_per_client: int = Field(64, ge=1, le=100_000)
    #: SSE + WebSocket event subscribers at once from one client address.
    max_subscribers_per_client: int = Field(32, ge=1, le=100_000)
    #: Streams started through the API (REST sources, WHIP) at once, in all.
    max_streams: int = Field(64, ge=1, le=100_000)
    #: Streams started through the API at once from one client address.
    max_streams_per_client: int = Field(8, ge=1, le=100_000)


def check_origins(value: list[str]) -> list[str]:
    """CORS origins: ``*`` or ``scheme://host[:port]`` with no path."""
    for origin in value:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"expected an origin like 'https://host[:port]' (no path) or '*', got {origin!r}"
            )
    return value


class ApiConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8750, ge=0, le=65535)
    #: Events kept for `Last-Event-ID` resume.
    replay_size: int = Field(4096, ge=0, le=1_000_000)
    #: Events queued per subscriber before it counts as slow.
    subscriber_queue: int = Field(1024, ge=1, le=1_000_000)
    #: A subscriber whose queue stays full this long is closed with a reason.
    slow_subscriber_s: float = Field(5.0, gt=0)
    #: Most SSE + WebSocket event subscribers at once; more get 503.
    max_subscribers: int = Field(default=256, ge=1, le=100_000)
    #: Bearer tokens; none configured means the API is open (allowed on loopback only).
    tokens: list[ApiTokenConfig] = Field(default_factory=list)
    #: Serve HTTPS with this certificate and key (None: plain HTTP).
    tls: TlsConfig | None = None
    #: Browser origins allowed to call the API (CORS), e.g. "https://dash.example.org"; "*" = any.
    cors_origins: list[str] = Field(default_factory=list)
    limits: ApiLimitsConfig = ApiLimitsConfig()
    #: Serve without tokens on a non-loopback address (anyone who can reach it has admin).
    allow_unauthenticated: bool = False

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return check_origins(value)

    @model_validator(mode="after")
    def _exposure(self) -> ApiConfig:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            # Messages here say "got" so the error formatter never echoes the input (secrets).
            raise ValueError(f"tokens: each token needs a unique name, got {sorted(names)}")
        values = [t.token.get_secret_value() for t in self.tokens]
        if len(set(values)) != len(values):
            raise ValueError("tokens: two tokens have the same value (got a duplicate)")
        if not self.tokens and not self.allow_unauthenticated and not is_loopback_host(self.host):
            raise ValueError(
                f"no [[api.tokens]] are configured and host is not a loopback address (got "
                f"{self.host!r}); add tokens, or set allow_unauthenticated = true to serve it open"
            )
        return self


class JsonlSinkConfig(_Model):
    type: Literal["jsonl"]
    path: Path
    #: Only these event types (exact or prefix ending in '.', e.g. "sync."); empty = all.
    types: list[str] = Field(default_factory=list)
    streams: list[str] = Field(default_factory=list)
    #: fsync after each batch of writes.
    fsync: bool = False


SinkConfig = Annotated[JsonlSinkConfig, Field(discriminator="type")]


class RuntimeConfig(_Model):
    """How plugins run."""

    #: Threads torch may use for one inference call; None = half the CPUs (at least 1), which
    #: leaves a core for the event loop and the decoders (on 2 cores, 2 torch threads made the
    #: live event latency p99 four times worse).
    torch_threads: int | None = Field(None, ge=1, le=256)


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["plain", "json"] = "plain"


class ServiceConfig(_Model):
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


class IceServerConfig(_Model):
    """One STUN or TURN server (``[[webrtc.ice_servers]]``), given to aiortc as-is."""

    #: One or more URLs: "stun:host:port", "turn:host:port?transport=udp", "turns:...".
    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: Secret | None = None

    @field_validator("urls")
    @classmethod
    def _schemes(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"(stun|stuns|turn|turns):[^\s]+", url):
                raise ValueError(f"expected a stun:, stuns:, turn: or turns: URL, got {url!r}")
        return value


VideoCodec = Literal["VP8", "H264"]
AudioCodec = Literal["opus", "PCMU", "PCMA"]
_VIDEO_CODECS: tuple[VideoCodec, ...] = ("VP8", "H264")
_AUDIO_CODECS: tuple[AudioCodec, ...] = ("opus", "PCMU", "PCMA")


class WebRtcConfig(_Model):
    """WebRTC ingest over WHIP (``[webrtc]``); see docs/webrtc.md."""

    #: Serve ``POST /v1/whip/{stream}`` on the API server.
    enabled: bool = True
    #: STUN/TURN servers for ICE; none by default (host candidates only, no outside traffic).
    ice_servers: list[IceServerConfig] = Field(default_factory=list)
    #: Offer ICE host candidates on exactly these addresses (e.g. ["127.0.0.1"] for loopback
    #: tests); empty: every address aioice finds (all interfaces except loopback).
    host_addresses: list[str] = Field(default_factory=list)
    #: Or offer the addresses of these network interfaces (e.g. ["eth0"]).
    interfaces: list[str] = Field(default_factory=list)
    #: Most WHIP publishers at once; more get 503 with Retry-After.
    max_streams: int = Field(8, ge=1, le=1000)
    #: Seconds a refused publisher is told to wait (Retry-After).
    retry_after_s: int = Field(10, ge=1, le=3600)
    #: Bearer token WHIP publishers must send, when the API has no [[api.tokens]] (with API
    #: tokens, WHIP needs one with scope "publish" instead). None: no token needed.
    token: Secret | None = None
    #: Browser origins allowed to publish (CORS on WHIP responses); "*" = any (WHIP default).
    allowed_origins: list[str] = Field(default_factory=lambda: ["*"])
    #: Video codecs accepted, in order of preference (H264: constrained baseline 42e01f/42001f
    #: with packetization-mode=1, what aiortc decodes; OBS sends it).
    video_codecs: list[VideoCodec] = Field(default_factory=lambda: list(_VIDEO_CODECS))
    #: Audio codecs accepted, in order of preference.
    audio_codecs: list[AudioCodec] = Field(default_factory=lambda: list(_AUDIO_CODECS))
    #: Decoded media buffered between the WebRTC receiver and analysis (seconds per track);
    #: beyond it the oldest is dropped and counted.
    queue_s: float = Field(2.0, gt=0, le=60)
    #: No video frame for this long (while audio flows or the peer is connected): a freeze.
    freeze_s: float = Field(2.0, gt=0, le=600)
    #: No media at all for this long: the peer has vanished and its stream ends.
    vanish_s: float = Field(5.0, gt=0, le=600)
    #: Seconds to wait for ICE and DTLS to connect after the answer.
    connect_timeout_s: float = Field(15.0, gt=0, le=600)
    #: Seconds between ``sync.transport`` events of a stream.
    transport_interval_s: float = Field(2.0, gt=0, le=3600)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return check_origins(value)

    @field_validator("host_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"expected an IP address, got {address!r}") from None
        return value

    @model_validator(mode="after")
    def _codecs(self) -> WebRtcConfig:
        if not self.video_codecs and not self.audio_codecs:
            raise ValueError("webrtc needs at least one video or audio codec")
        if self.host_addresses and self.interfaces:
            raise ValueError("give host_addresses or interfaces, not both")
        return self


class DaemonConfig(_Model):
    sources: list[SourceConfig] = Field(default_factory=list)
    window: WindowConfig = WindowConfig()
    #: Plugin tables; each is validated by its plugin's own model (chosen by `type`).
    plugins: list[dict[str, Any]] = Field(default_factory=list)
    api: ApiConfig = ApiConfig()
    sinks: list[SinkConfig] = Field(default_factory=list)
    logging: LoggingConfig = LoggingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    service: ServiceConfig = ServiceConfig()
    webrtc: WebRtcConfig = WebRtcConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> DaemonConfig:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"duplicate source name {source.name!r}")
            seen.add(source.name)
        return self


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    """One line per error: ``key.path: message (got value)``."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [*prefix, *(part for part in err["loc"] if not _is_union_tag(part))]
        path = ".".join(_key_text(part) for part in loc) or "(top level)"
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            lines.append(f"{path}: unknown key")
            continue
        if kind == "missing":
            lines.append(f"{path}: required key is missing")
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if "got " in msg or not err["loc"]:  # model-level checks describe themselves
            lines.append(f"{path}: {msg}")
        else:
            lines.append(f"{path}: {msg} (got {_describe(err.get('input'))})")
    return lines


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the discriminator's value ("pattern") or a type name into loc paths.
    return isinstance(part, str) and part in {"pattern", "media", "device", "jsonl"}


def _key_text(part: str | int) -> str:
    # A TOML key may hold any character (even a newline); quote odd ones so that every error
    # stays one readable line.
    text = str(part)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)[:60]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def validate_config(data: Mapping[str, Any], source: str = "<config>") -> DaemonConfig:
    """Validate a parsed TOML document; raises :class:`ConfigError` listing every problem."""
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_config_text(text: str, source: str = "<config>") -> DaemonConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    return validate_config(data, source)


def load_config(path: Path | None) -> DaemonConfig:
    """Load a config file, or the embedded default (``configs/default.toml``) when ``path`` is None."""
    if path is None:
        return load_config_text(default_config_text(), "configs/default.toml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    return load_config_text(text, str(path))


def default_config_text() -> str:
    """The embedded default config shipped inside the package."""
    return resources.files("crossmodald.service").joinpath("default.toml").read_text("utf-8")
