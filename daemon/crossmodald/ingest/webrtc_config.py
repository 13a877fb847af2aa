"""The ``[webrtc]`` table: WebRTC ingest over WHIP (see docs/webrtc.md).

Kept apart from :mod:`crossmodald.ingest.webrtc` (which re-exports it) so that reading a config
does not import aiortc.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from crossmodald.config_base import ConfigModel, check_origins
from crossmodald.secrets import Secret

__all__ = ["AudioCodec", "IceServerConfig", "VideoCodec", "WebRtcConfig"]


class IceServerConfig(ConfigModel):
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


class WebRtcConfig(ConfigModel):
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
    #: Serve ``POST /v1/whep/{stream}``: a WHIP stream re-synchronised for viewers.
    whep_enabled: bool = True
    #: Most WHEP viewers at once (all streams); more get 503 with Retry-After.
    whep_max_viewers: int = Field(16, ge=1, le=1000)
    #: Fastest change of the WHEP correction, in ms per second (no audible or visible jump).
    whep_max_slew_ms_per_s: float = Field(20.0, gt=0, le=1000)
    #: Measured offsets below this confidence leave the WHEP correction where it is.
    whep_min_confidence: float = Field(0.5, ge=0, le=1)
    #: Correct every WHEP output by this fixed ``audio_lead_ms`` instead of the measured one.
    whep_audio_lead_ms: float | None = Field(None, ge=-2000, le=2000)

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
