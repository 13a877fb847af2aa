"""Source type ``whep``: pull a stream from a WHEP server (another crossmodald, a media server).

The source POSTs a receive-only offer (audio and video) to ``url``, expects ``201`` with the SDP
answer and a ``Location``, and then treats the PeerConnection exactly as a WHIP publisher's
(:class:`~crossmodald.ingest.webrtc.WebRtcSource`: tracks drained continuously, frames timed by
the server's RTCP Sender Reports, faults reported). ``aclose()`` DELETEs the session.

So one daemon can analyse another's corrected output::

    [[sources]]
    type = "whep"
    name = "cam1-corrected"
    url = "http://127.0.0.1:8750/v1/whep/cam1"
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from pydantic import Field, field_validator
from yarl import URL

from crossmodald.ingest.base import SourceError, SourceFault
from crossmodald.ingest.pacing import Pacer
from crossmodald.ingest.registry import SourceConfigBase
from crossmodald.ingest.webrtc import WebRtcSource, configure_host_addresses, ice_configuration
from crossmodald.ingest.webrtc_config import WebRtcConfig
from crossmodald.media import MediaItem, StreamInfo
from crossmodald.redact import redact_url
from crossmodald.secrets import Secret

__all__ = ["WhepSource", "WhepSourceConfig", "WhepSourceFactory"]

log = logging.getLogger(__name__)


class WhepSourceConfig(SourceConfigBase):
    """A stream pulled over WHEP (``type = "whep"``)."""

    type: Literal["whep"]
    #: The WHEP endpoint, e.g. "http://127.0.0.1:8750/v1/whep/cam1".
    url: str = Field(min_length=1)
    #: Bearer token the server wants (sent as ``Authorization: Bearer``); None: none sent.
    bearer_token: Secret | None = None
    #: Seconds to wait for the server's answer and for the media to start.
    timeout_s: float = Field(15.0, gt=0, le=600)
    #: Offer ICE host candidates only on these addresses (process-wide; e.g. ["127.0.0.1"]
    #: for a server on this machine); empty: as ``[webrtc]`` says.
    ice_host_addresses: list[str] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {redact_url(value)!r}")
        return value


class WhepSource:
    """A WHEP client as a :class:`~crossmodald.ingest.base.Source`."""

    metrics = WebRtcSource.metrics

    def __init__(self, config: WhepSourceConfig) -> None:
        self.name = config.name
        self.config = config
        self._inner: WebRtcSource | None = None
        self._http: aiohttp.ClientSession | None = None
        self._location: str | None = None

    def _headers(self) -> dict[str, str]:
        token = self.config.bearer_token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def open(self) -> StreamInfo:
        """Negotiate with the server and start receiving; raises :class:`SourceError`."""
        cfg = self.config
        if cfg.ice_host_addresses:
            configure_host_addresses(cfg.ice_host_addresses)
        webrtc = WebRtcConfig(connect_timeout_s=cfg.timeout_s)
        pc = RTCPeerConnection(ice_configuration(webrtc))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        where = redact_url(cfg.url)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s))
            headers = {"Content-Type": "application/sdp", **self._headers()}
            async with self._http.post(
                cfg.url, data=pc.localDescription.sdp, headers=headers
            ) as response:
                body = await response.text()
                if response.status != 201:
                    raise SourceError(
                        f"{self.name}: WHEP server {where} answered {response.status}: {body[:200]}"
                    )
                location = response.headers.get("Location")
                if not location:
                    raise SourceError(f"{self.name}: WHEP server {where} sent no Location")
                self._location = str(response.url.join(URL(location)))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
            self._inner = WebRtcSource(self.name, pc, webrtc)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            await pc.close()
            await self.aclose()
            raise SourceError(f"{self.name}: cannot reach WHEP server {where}: {exc}") from None
        except BaseException:
            await pc.close()
            await self.aclose()
            raise
        return await self._inner.open()

    def __aiter__(self) -> AsyncIterator[MediaItem | SourceFault]:
        if self._inner is None:
            raise SourceError(f"{self.name}: not open")
        return self._inner.__aiter__()

    def status(self) -> dict[str, Any]:
        """The WebRTC receive status (as a WHIP stream's)."""
        return dict(self._inner.status()) if self._inner is not None else {}

    async def aclose(self) -> None:
        """Stop receiving and DELETE the WHEP session (idempotent)."""
        if self._inner is not None:
            await self._inner.aclose()
        location, self._location = self._location, None
        http, self._http = self._http, None
        if http is not None:
            if location is not None:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.delete(location, headers=self._headers()):
                        pass
            await http.close()


class WhepSourceFactory:
    """Source type ``whep`` (entry point ``crossmodald.sources``)."""

    config_model: ClassVar[type[WhepSourceConfig]] = WhepSourceConfig

    @classmethod
    def create(cls, config: WhepSourceConfig, *, clock: Pacer | None = None) -> WhepSource:
        """A WHEP client source (live: it keeps the server's time, ``clock`` is unused)."""
        return WhepSource(config)
