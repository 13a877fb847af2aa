"""A real RTSP server on loopback for the rtsp source tests (GStreamer's gst-rtsp-server).

The server runs as a subprocess of an interpreter that has PyGObject and the gst-rtsp-server
typelib (Debian: ``apt-get install python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
gstreamer1.0-libav``; ``.ci/run`` installs them). Without one, :func:`gi_python` skips the
test and says what is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest

from crossmodald.ingest.pattern import PatternSourceConfig, write_pattern_file

SERVER = Path(__file__).with_name("rtsp_server.py")
#: Interpreters tried for the server, first that has gi + GstRtspServer wins.
CANDIDATES = (os.environ.get("CROSSMODALD_GI_PYTHON", ""), "/usr/bin/python3")
_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
    "missing = [e for e in ('x264enc', 'rtph264pay', 'rtpmp4gpay', 'qtdemux', 'h264parse',"
    " 'aacparse') if Gst.ElementFactory.find(e) is None];"
    "print(' '.join(missing))"
)
_checked: dict[str, str | None] = {}


def gi_python() -> str:
    """An interpreter that can run the server; skips the test (saying why) when there is none."""
    reasons = []
    for python in CANDIDATES:
        if not python:
            continue
        if python not in _checked:
            try:
                done = subprocess.run(
                    [python, "-c", _PROBE], capture_output=True, text=True, timeout=30
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                _checked[python] = f"{python}: {exc}"
            else:
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["failed"])[-1]
                    _checked[python] = f"{python}: {last}"
                elif done.stdout.strip():
                    _checked[python] = f"{python}: GStreamer elements missing: {done.stdout}"
                else:
                    _checked[python] = None
        reason = _checked[python]
        if reason is None:
            return python
        reasons.append(reason)
    pytest.skip(
        "no RTSP server for the rtsp tests (needs python3-gi, gir1.2-gst-rtsp-server-1.0 and "
        "GStreamer's good/bad/ugly/libav plugins, see .ci/run): " + "; ".join(reasons)
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pattern_mp4(
    path: Path, audio_lead_ms: float, duration_s: float = 60.0, video_delay_s: float = 0.0
) -> Path:
    """A pattern file (H.264 + AAC) with a known A/V offset: flashes 1.2 s apart from 0.5 s.

    With ``video_delay_s`` (a multiple of 0.5 s) the video track starts that much after the
    audio (its earlier frames cut at a keyframe), timestamps unchanged.
    """
    if path.exists():
        return path
    full = path.with_suffix(".full.mp4") if video_delay_s else path
    config = PatternSourceConfig.model_validate(
        {
            "type": "pattern",
            "name": "pat",
            "width": 160,
            "height": 120,
            "audio_lead_ms": audio_lead_ms,
            "realtime": False,
        }
    )
    # A keyframe every 0.5 s and no B-frames, so the video can be cut at any half second.
    options = {"preset": "veryfast", "crf": "12", "g": "15", "bf": "0"}
    write_pattern_file(config, full, duration_s=duration_s, video_options=options)
    if video_delay_s:
        with av.open(str(full)) as src, av.open(str(path), "w") as dst:
            video, audio = src.streams.video[0], src.streams.audio[0]
            out = {
                video.index: dst.add_stream_from_template(video),
                audio.index: dst.add_stream_from_template(audio),
            }
            for packet in src.demux():
                if packet.dts is None or packet.pts is None or packet.time_base is None:
                    continue
                if packet.stream.index == video.index and packet.pts * packet.time_base < (
                    video_delay_s
                ):
                    continue
                packet.stream = out[packet.stream.index]
                dst.mux(packet)
    return path


@dataclass
class RtspServer:
    """gst-rtsp-server serving ``media`` at ``rtsp://127.0.0.1:port/cam`` (optionally with
    Basic auth); each client gets the file from its start, played in real time."""

    python: str
    media: Path
    user: str | None = None
    password: str | None = None
    no_rtp_info: bool = False
    no_rtcp: bool = False
    extra_audio: bool = False
    video_only: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def url_with(self, user: str, password: str) -> str:
        return f"rtsp://{user}:{password}@127.0.0.1:{self.port}/cam"

    def start(self, timeout_s: float = 15.0) -> None:
        args = [self.python, str(SERVER), str(self.media), "--port", str(self.port)]
        if self.user is not None:
            args += ["--user", self.user, "--password", self.password or ""]
        if self.no_rtp_info:
            args.append("--no-rtp-info")
        if self.no_rtcp:
            args.append("--no-rtcp")
        if self.extra_audio:
            args.append("--extra-audio")
        if self.video_only:
            args.append("--video-only")
        deadline = time.monotonic() + timeout_s
        while True:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()
            if line.startswith("READY"):
                return
            self.proc.wait()
            if time.monotonic() > deadline:  # the port may take a moment to free after stop
                raise AssertionError(f"RTSP server did not start: {line!r}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
