"""A loopback RTSP server for the rtsp source tests (GStreamer's gst-rtsp-server through PyGObject).

Run with an interpreter that has ``gi`` (Debian's /usr/bin/python3 with python3-gi and
gir1.2-gst-rtsp-server-1.0), not the daemon's: the tests start it as a subprocess. It serves an
MP4 file (H.264 + AAC, e.g. a pattern file) at ``rtsp://127.0.0.1:PORT/PATH``, each client
getting its own pipeline from the file's start (RTP timestamps and SRs from the pipeline clock,
the way a camera's encoder sends them). With --user/--password the mount needs Basic auth;
with --no-rtp-info PLAY replies carry no RTP-Info header; with --no-rtcp it sends no RTCP (no
sender reports); with --extra-audio the audio goes out twice (a second audio track); with --video-only
the audio is left out.
Prints ``READY <port>`` on stdout once it listens; runs until killed.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def _drop_rtp_info(client: GstRtspServer.RTSPClient, context: object, message: object) -> None:
    """Take RTP-Info out of PLAY replies: the client then knows the tracks' RTP timestamps
    only from their first packets and RTCP, as with cameras that send none."""
    if message is not None:
        message.remove_header(GstRtsp.RTSPHeaderField.RTP_INFO, -1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--no-rtp-info", action="store_true")
    parser.add_argument("--no-rtcp", action="store_true")
    parser.add_argument("--extra-audio", action="store_true")
    parser.add_argument("--video-only", action="store_true")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = args.file.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux name=d '
        "d.video_0 ! queue ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 "
        + (
            ")"
            if args.video_only
            else "d.audio_0 ! queue ! aacparse ! tee name=t t. ! queue ! rtpmp4gpay name=pay1 "
            "pt=97 t. ! queue ! rtpmp4gpay name=pay2 pt=98 )"
            if args.extra_audio
            else "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"
        )
    )
    factory.set_shared(False)
    factory.set_enable_rtcp(not args.no_rtcp)
    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        basic = GstRtspServer.RTSPAuth.make_basic(args.user, args.password or "")
        auth.add_basic(basic, token)
        server.set_auth(auth)
        factory.add_role_from_structure(
            Gst.Structure.from_string(
                "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )[0]
        )
    if args.no_rtp_info:
        server.connect(
            "client-connected",
            lambda _server, client: client.connect("send-message", _drop_rtp_info),
        )
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print("ERROR cannot listen", flush=True)
        sys.exit(1)
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
