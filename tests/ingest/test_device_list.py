"""Camera enumeration (``crossmodald devices``) against a fake V4L2 driver at the ioctl seam:
the structs are packed as linux/videodev2.h lays them out, and unknown requests fail as the
kernel does (EINVAL)."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
from pathlib import Path

import pytest

from crossmodald.ingest import devices_list as dl


def _fourcc(text: str) -> int:
    return int.from_bytes(text.encode("ascii"), "little")


class FakeV4L2:
    """A webcam: MJPG in two discrete sizes with two rates each, YUYV in a stepwise range."""

    def __init__(self, capture: bool = True) -> None:
        self.capture = capture
        self.formats = [(_fourcc("MJPG"), b"Motion-JPEG"), (_fourcc("YUYV"), b"YUYV 4:2:2")]
        self.sizes = {_fourcc("MJPG"): [(1280, 720), (640, 480)]}
        self.intervals = [(1, 30), (1, 15)]

    def __call__(self, fd: int, request: int, buffer: bytearray) -> None:
        if request == dl.VIDIOC_QUERYCAP:
            caps = dl.V4L2_CAP_DEVICE_CAPS | 0x04000000  # streaming
            device_caps = dl.V4L2_CAP_VIDEO_CAPTURE if self.capture else 0x00800000  # meta
            struct.pack_into(
                "=16s32s32sIII",
                buffer,
                0,
                b"uvcvideo",
                b"HD Pro Webcam C920",
                b"usb-0000:00:14.0-1",
                0x60000,
                caps | dl.V4L2_CAP_VIDEO_CAPTURE,
                device_caps,
            )
            return
        index = struct.unpack_from("=I", buffer, 0)[0]
        if request == dl.VIDIOC_ENUM_FMT:
            assert struct.unpack_from("=I", buffer, 4)[0] == dl.V4L2_BUF_TYPE_VIDEO_CAPTURE
            if index >= len(self.formats):
                raise OSError(errno.EINVAL, "Invalid argument")
            code, description = self.formats[index]
            struct.pack_into("=III32sI", buffer, 0, index, 1, 0, description, code)
            return
        if request == dl.VIDIOC_ENUM_FRAMESIZES:
            code = struct.unpack_from("=I", buffer, 4)[0]
            if code not in self.sizes:  # stepwise: one entry
                if index > 0:
                    raise OSError(errno.EINVAL, "Invalid argument")
                struct.pack_into("=IIIIIIIII", buffer, 0, 0, code, 3, 160, 1920, 8, 120, 1080, 8)
                return
            if index >= len(self.sizes[code]):
                raise OSError(errno.EINVAL, "Invalid argument")
            width, height = self.sizes[code][index]
            struct.pack_into("=IIIII", buffer, 0, index, code, 1, width, height)
            return
        if request == dl.VIDIOC_ENUM_FRAMEINTERVALS:
            if index >= len(self.intervals):
                raise OSError(errno.EINVAL, "Invalid argument")
            num, den = self.intervals[index]
            struct.pack_into("=IIII", buffer, 16, 1, num, den, 0)
            return
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


def _open_null(path: str) -> int:
    return os.open(os.devnull, os.O_RDONLY)


def test_ioctl_numbers_match_the_struct_sizes() -> None:
    # _IOC(dir, 'V', nr, size): size sits in bits 16..29.
    for request, layout in (
        (dl.VIDIOC_QUERYCAP, dl._CAPABILITY),
        (dl.VIDIOC_ENUM_FMT, dl._FMTDESC),
        (dl.VIDIOC_ENUM_FRAMESIZES, dl._FRMSIZE),
        (dl.VIDIOC_ENUM_FRAMEINTERVALS, dl._FRMIVAL),
    ):
        assert (request >> 16) & 0x3FFF == layout.size
        assert (request >> 8) & 0xFF == ord("V")


def test_a_webcam_is_described_with_its_modes() -> None:
    info = dl.query_camera("/dev/video2", ioctl=FakeV4L2(), opener=_open_null)
    assert info is not None
    assert (info.index, info.path, info.name, info.driver) == (
        2,
        "/dev/video2",
        "HD Pro Webcam C920",
        "uvcvideo",
    )
    assert [f.fourcc for f in info.formats] == ["MJPG", "YUYV"]
    assert info.formats[0].description == "Motion-JPEG"
    assert info.formats[0].sizes == {"1280x720": [30.0, 15.0], "640x480": [30.0, 15.0]}
    assert info.formats[1].sizes == {"160x120-1920x1080": []}
    table = "\n".join(dl._camera_lines(info))
    assert "MJPG Motion-JPEG: 1280x720@30/15, 640x480@30/15" in table


def test_a_node_that_cannot_capture_is_skipped() -> None:
    assert dl.query_camera("/dev/video1", ioctl=FakeV4L2(capture=False), opener=_open_null) is None


def test_unreadable_nodes_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "video0").write_bytes(b"")  # a plain file: the ioctls fail with ENOTTY
    cameras, problems = dl.list_cameras(tmp_path)
    assert cameras == []
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'video0'}: ")
    assert dl.list_cameras(tmp_path / "empty") == ([], [])


def test_fourcc_text() -> None:
    assert dl.fourcc_text(_fourcc("MJPG")) == "MJPG"
    assert dl.fourcc_text(_fourcc("Y16 ")) == "Y16"


def test_devices_command_formats(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert dl.devices_command("json", out=out) == 0
    document = json.loads(out.getvalue())
    assert set(document) == {"cameras", "camera_problems", "microphones", "microphone_error"}
    table = io.StringIO()
    assert dl.devices_command("table", out=table) == 0
    assert table.getvalue().startswith("Cameras (use the index or path as camera.device):\n")
    assert "Microphones (" in table.getvalue()
    assert dl.devices_command("yaml") == 2
    assert "unknown format 'yaml'" in capsys.readouterr().err
