"""Listing the cameras and microphones of this machine (``crossmodald devices``).

Cameras come from V4L2 (Linux): every ``/dev/video*`` node that can capture video, with its
name and the modes its driver lists (pixel format, frame size, frame rates), read with the V4L2
enumeration ioctls. Microphones come from PortAudio (sounddevice): every device with input
channels, with the sample rates it accepts.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

from crossmodald.ingest.base import SourceError
from crossmodald.ingest.device import import_sounddevice

# V4L2 ioctl numbers (linux/videodev2.h): _IOR/_IOWR('V', nr, struct) on every Linux ABI that
# has these struct sizes (they hold only 32-bit fields).
VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
VIDIOC_ENUM_FMT = 0xC0405602  # _IOWR('V', 2, struct v4l2_fmtdesc), 64 bytes
VIDIOC_ENUM_FRAMESIZES = 0xC02C564A  # _IOWR('V', 74, struct v4l2_frmsizeenum), 44 bytes
VIDIOC_ENUM_FRAMEINTERVALS = 0xC034564B  # _IOWR('V', 75, struct v4l2_frmivalenum), 52 bytes

V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_DEVICE_CAPS = 0x80000000
V4L2_BUF_TYPE_VIDEO_CAPTURE = 1
V4L2_FRMSIZE_TYPE_DISCRETE = 1
V4L2_FRMIVAL_TYPE_DISCRETE = 1

_CAPABILITY = struct.Struct("=16s32s32sIII12x")
_FMTDESC = struct.Struct("=III32sII12x")
_FRMSIZE = struct.Struct("=IIIIIIIII8x")  # index, pixel_format, type, then 6 union words
_FRMIVAL = struct.Struct("=IIIIIIIIIII8x")  # index, fmt, w, h, type, then 6 union words

#: Sample rates probed for each microphone.
COMMON_SAMPLE_RATES = (8000, 16000, 22050, 32000, 44100, 48000, 88200, 96000)

Ioctl = Callable[[int, int, bytearray], None]


def _ioctl(fd: int, request: int, buffer: bytearray) -> None:
    fcntl.ioctl(fd, request, buffer, True)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def fourcc_text(code: int) -> str:
    """A V4L2 pixel format code as its four characters, e.g. 0x47504A4D -> "MJPG"."""
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).rstrip()


@dataclass(frozen=True, slots=True)
class CameraFormat:
    """One pixel format and the frame sizes (with frame rates) a camera offers in it."""

    fourcc: str
    description: str
    #: "WxH" -> frame rates (frames per second); a stepwise range shows as "min-max" sizes.
    sizes: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CameraInfo:
    """A V4L2 capture device."""

    index: int
    path: str
    name: str
    driver: str
    bus: str
    formats: list[CameraFormat] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MicrophoneInfo:
    """A PortAudio input device."""

    index: int
    name: str
    host_api: str
    channels: int
    default_sample_rate: float
    sample_rates: list[int] = field(default_factory=list)
    default: bool = False


def _enumerate(
    fd: int, request: int, layout: struct.Struct, head: tuple[int, ...], ioctl: Ioctl
) -> list[tuple[Any, ...]]:
    """Call an ENUM ioctl with index 0, 1, ... until the driver says there are no more."""
    out: list[tuple[Any, ...]] = []
    for index in range(1024):
        buffer = bytearray(layout.size)
        struct.pack_into("=I" + "I" * len(head), buffer, 0, index, *head)
        try:
            ioctl(fd, request, buffer)
        except OSError:
            break  # EINVAL: past the last entry
        out.append(layout.unpack(bytes(buffer)))
    return out


def camera_formats(fd: int, ioctl: Ioctl = _ioctl) -> list[CameraFormat]:
    """The capture formats, frame sizes and frame rates a V4L2 device lists."""
    formats: list[CameraFormat] = []
    for _, _, _, description, pixel_format, _ in _enumerate(
        fd, VIDIOC_ENUM_FMT, _FMTDESC, (V4L2_BUF_TYPE_VIDEO_CAPTURE,), ioctl
    ):
        sizes: dict[str, list[float]] = {}
        for entry in _enumerate(fd, VIDIOC_ENUM_FRAMESIZES, _FRMSIZE, (pixel_format,), ioctl):
            kind, words = entry[2], entry[3:]
            if kind != V4L2_FRMSIZE_TYPE_DISCRETE:
                # Stepwise/continuous: min_w, max_w, step_w, min_h, max_h, step_h.
                sizes[f"{words[0]}x{words[3]}-{words[1]}x{words[4]}"] = []
                break
            width, height = words[0], words[1]
            rates: list[float] = []
            for ival in _enumerate(
                fd, VIDIOC_ENUM_FRAMEINTERVALS, _FRMIVAL, (pixel_format, width, height), ioctl
            ):
                if ival[4] != V4L2_FRMIVAL_TYPE_DISCRETE:
                    break
                numerator, denominator = ival[5], ival[6]
                if numerator:  # an interval of num/den seconds is den/num frames per second
                    rates.append(round(float(Fraction(denominator, numerator)), 3))
            sizes[f"{width}x{height}"] = sorted(set(rates), reverse=True)
        formats.append(CameraFormat(fourcc_text(pixel_format), _text(description), sizes))
    return formats


def query_camera(
    path: str, ioctl: Ioctl = _ioctl, opener: Callable[[str], int] | None = None
) -> CameraInfo | None:
    """Describe one V4L2 node, or None when it cannot capture video (e.g. a metadata node)."""
    fd = (opener or (lambda p: os.open(p, os.O_RDWR | os.O_NONBLOCK)))(path)
    try:
        buffer = bytearray(_CAPABILITY.size)
        ioctl(fd, VIDIOC_QUERYCAP, buffer)
        driver, card, bus, _, capabilities, device_caps = _CAPABILITY.unpack(bytes(buffer))
        caps = device_caps if capabilities & V4L2_CAP_DEVICE_CAPS else capabilities
        if not caps & V4L2_CAP_VIDEO_CAPTURE:
            return None
        digits = "".join(ch for ch in Path(path).name if ch.isdigit())
        return CameraInfo(
            index=int(digits) if digits else -1,
            path=path,
            name=_text(card),
            driver=_text(driver),
            bus=_text(bus),
            formats=camera_formats(fd, ioctl),
        )
    finally:
        os.close(fd)


def list_cameras(dev: Path = Path("/dev")) -> tuple[list[CameraInfo], list[str]]:
    """V4L2 capture devices under ``dev``, and one line per node that could not be read."""
    cameras: list[CameraInfo] = []
    problems: list[str] = []
    nodes = sorted(dev.glob("video*"), key=lambda p: (len(p.name), p.name))
    for node in nodes:
        try:
            info = query_camera(str(node))
        except PermissionError:
            problems.append(f"{node}: permission denied (join the 'video' group)")
            continue
        except OSError as exc:
            problems.append(f"{node}: {exc.strerror or exc}")
            continue
        if info is not None:
            cameras.append(info)
    return cameras, problems


def list_microphones(probe_rates: bool = True) -> list[MicrophoneInfo]:
    """PortAudio input devices; raises SourceError when PortAudio is not installed."""
    sd = import_sounddevice()
    host_apis = [api["name"] for api in sd.query_hostapis()]
    try:
        default_input = int(sd.default.device[0])
    except (TypeError, ValueError):
        default_input = -1
    microphones: list[MicrophoneInfo] = []
    for device in sd.query_devices():
        channels = int(device["max_input_channels"])
        if channels <= 0:
            continue
        rates: list[int] = []
        if probe_rates:
            for rate in COMMON_SAMPLE_RATES:
                try:
                    sd.check_input_settings(device=device["index"], samplerate=rate, channels=1)
                except Exception:  # PortAudio says no in several ways; each means "not this rate"
                    continue
                rates.append(rate)
        microphones.append(
            MicrophoneInfo(
                index=int(device["index"]),
                name=str(device["name"]),
                host_api=host_apis[device["hostapi"]],
                channels=channels,
                default_sample_rate=float(device["default_samplerate"]),
                sample_rates=rates,
                default=int(device["index"]) == default_input,
            )
        )
    return microphones


def _camera_lines(camera: CameraInfo) -> list[str]:
    lines = [f"  {camera.index:>3}  {camera.path}  {camera.name} ({camera.driver}, {camera.bus})"]
    for fmt in camera.formats:
        modes = ", ".join(
            f"{size}@{'/'.join(f'{r:g}' for r in rates)}" if rates else size
            for size, rates in fmt.sizes.items()
        )
        lines.append(f"         {fmt.fourcc:<4} {fmt.description}: {modes or '(no sizes listed)'}")
    return lines


def devices_command(format: str = "table", out: TextIO | None = None) -> int:
    """Print the cameras and microphones (``crossmodald devices``); returns the exit status.

    Args:
        format: "table" for people, "json" for programs.
        out: Where to print (stdout by default).
    """
    stream = out if out is not None else sys.stdout
    if format not in ("table", "json"):
        print(f"devices: unknown format {format!r} (expected 'table' or 'json')", file=sys.stderr)
        return 2
    cameras, problems = list_cameras()
    microphones: list[MicrophoneInfo] = []
    mic_error: str | None = None
    try:
        microphones = list_microphones()
    except SourceError as exc:
        mic_error = str(exc)
    if format == "json":
        document = {
            "cameras": [asdict(c) for c in cameras],
            "camera_problems": problems,
            "microphones": [asdict(m) for m in microphones],
            "microphone_error": mic_error,
        }
        print(json.dumps(document, indent=2), file=stream)
        return 0
    print("Cameras (use the index or path as camera.device):", file=stream)
    for camera in cameras:
        for line in _camera_lines(camera):
            print(line, file=stream)
    if not cameras:
        print("  none found (no V4L2 capture device under /dev)", file=stream)
    for problem in problems:
        print(f"  ! {problem}", file=stream)
    print("Microphones (use the index or a part of the name as microphone.device):", file=stream)
    if mic_error is not None:
        print(f"  ! {mic_error}", file=stream)
    for mic in microphones:
        mark = "*" if mic.default else " "
        rates = ", ".join(str(r) for r in mic.sample_rates) or "none of the common rates"
        print(
            f" {mark}{mic.index:>3}  {mic.name} [{mic.host_api}] {mic.channels} ch, "
            f"default {mic.default_sample_rate:g} Hz; rates: {rates}",
            file=stream,
        )
    if not microphones and mic_error is None:
        print("  none found", file=stream)
    return 0
