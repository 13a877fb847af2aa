"""Building VideoFrame and AudioChunk values from decoded pictures and sample buffers.

Every source goes through these helpers so that frames look the same whatever their origin: a
full-resolution grey picture (the Y plane) plus a small area-averaged thumbnail for cheap
per-frame features.
"""

from __future__ import annotations

from typing import Any, cast

import av
import cv2
import numpy as np
import numpy.typing as npt

from crossmodald.clock.timeline import TimestampJump
from crossmodald.ingest.base import SourceFault
from crossmodald.media import NS_PER_S, THUMB_MAX_SIDE, AudioChunk, ClockKind, U8Image, VideoFrame

#: Pixel formats whose first plane is the 8-bit luma (Y) plane, read in place without swscale.
Y_PLANE_FORMATS = frozenset(
    {
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "yuva420p",
        "nv12",
        "nv21",
        "gray",
    }
)

#: Sample formats :func:`mono_from_av_audio` reads directly (anything else goes through swresample).
_SAMPLE_DTYPES: dict[str, type[np.generic]] = {
    "flt": np.float32,
    "dbl": np.float64,
    "s16": np.int16,
    "s32": np.int32,
}


def make_thumb(luma: U8Image) -> U8Image:
    """Shrink a grey picture by area averaging so its longest side is <= THUMB_MAX_SIDE.

    OpenCV's INTER_AREA has a fast path only for an exact 2x reduction; other factors take a
    generic path about 8x slower (0.28 ms for 640x480 -> 80x60, 1.1 ms from 1080p). When the
    reduction is by whole even factors, the picture is first halved (exact 2x2 box averages) so
    only a small last step takes the generic path: the same area averages, within one grey level
    (rounding at each halving). Other sizes get a single INTER_AREA resize.
    """
    height, width = luma.shape
    scale = THUMB_MAX_SIDE / max(height, width)
    if scale >= 1.0:
        return luma
    size_w, size_h = max(1, round(width * scale)), max(1, round(height * scale))
    picture: npt.NDArray[np.integer[Any] | np.floating[Any]] = luma
    while (
        width % (2 * size_w) == 0
        and height % (2 * size_h) == 0
        and (width > 2 * size_w or height > 2 * size_h)
    ):
        height, width = height // 2, width // 2
        picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    if (width, height) != (size_w, size_h):
        picture = cv2.resize(picture, (size_w, size_h), interpolation=cv2.INTER_AREA)
    return cast(U8Image, picture)


def video_frame_from_luma(
    source_id: str,
    pts_ns: int,
    arrival_ns: int,
    luma: U8Image,
    clock: ClockKind,
) -> VideoFrame:
    """A VideoFrame from a grey picture the caller owns (it must not be modified afterwards)."""
    if luma.ndim != 2 or luma.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey picture, got {luma.dtype} {luma.shape}")
    if not luma.flags.c_contiguous:
        luma = np.ascontiguousarray(luma)
    return VideoFrame(
        source_id=source_id,
        pts_ns=pts_ns,
        arrival_ns=arrival_ns,
        luma=luma,
        thumb=make_thumb(luma),
        clock=clock,
    )


def to_mono_f32(
    samples: npt.NDArray[np.generic], *, channels_first: bool
) -> npt.NDArray[np.float32]:
    """Downmix interleaved (n, ch) or planar (ch, n) samples of any numeric type to mono float32.

    Integer samples are scaled to [-1, 1] by their type's full scale.
    """
    data = np.asarray(samples)
    if np.issubdtype(data.dtype, np.integer):
        full_scale = float(np.iinfo(data.dtype).max) + 1.0
        scaled = data.astype(np.float32) / full_scale
    else:
        scaled = data.astype(np.float32, copy=False)
    if scaled.ndim == 2:
        mono = scaled.mean(axis=0 if channels_first else 1, dtype=np.float32)
    elif scaled.ndim == 1:
        mono = scaled
    else:
        raise ValueError(f"expected 1-D or 2-D samples, got shape {data.shape}")
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_chunk(
    source_id: str,
    pts_ns: int,
    arrival_ns: int,
    mono: npt.NDArray[np.float32],
    sample_rate: int,
    clock: ClockKind,
    counted_end_ns: int | None = None,
) -> AudioChunk:
    """An AudioChunk from mono float32 samples the caller owns (``counted_end_ns``: see
    :class:`AudioChunk`)."""
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    return AudioChunk(
        source_id=source_id,
        pts_ns=pts_ns,
        arrival_ns=arrival_ns,
        samples=mono,
        sample_rate=sample_rate,
        clock=clock,
        counted_end_ns=counted_end_ns,
    )


def luma_from_av_frame(frame: av.VideoFrame) -> U8Image:
    """The full-resolution Y plane of a decoded picture as a C-contiguous uint8 array.

    For the common YUV and grey formats (:data:`Y_PLANE_FORMATS`) the plane is read in place,
    honouring its ``line_size``. When rows are not padded (``line_size == width``, as FFmpeg's
    decoders give for widths that are a multiple of 64, 640 among them) the array is a view of
    the decoded picture, no copy: decoded frames are reference-counted, so the decoder never
    writes into a picture that is still referenced (the array keeps the frame alive), and the
    copy was ~80 us of a ~300 us VGA frame budget. Padded rows are copied once into a compact
    array. ``frame.reformat``/``to_ndarray`` would run swscale on every frame (3.4x slower on a
    640x480 H.264 decode). Other formats (rgb24, pal8, 10-bit YUV, ...) are converted to grey by
    swscale.
    """
    if frame.format.name not in Y_PLANE_FORMATS:
        frame = frame.reformat(format="gray")
    plane = frame.planes[0]
    height, width, line_size = plane.height, plane.width, plane.line_size
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8, count=line_size * height).reshape(
        height, line_size
    )
    luma: U8Image = np.ascontiguousarray(rows[:, :width]) if line_size != width else rows
    return luma


def video_frame_from_av(
    source_id: str,
    frame: av.VideoFrame,
    pts_ns: int,
    arrival_ns: int,
    clock: ClockKind,
) -> VideoFrame:
    """A VideoFrame (luma + thumbnail) from a decoded PyAV picture; see :func:`luma_from_av_frame`."""
    return video_frame_from_luma(source_id, pts_ns, arrival_ns, luma_from_av_frame(frame), clock)


class AudioMonoConverter:
    """Decoded PyAV audio frames to mono float32 at their own sample rate.

    The downmix is the plain mean of the channels (as :func:`to_mono_f32` does for every other
    source). swresample's own stereo-to-mono matrix would instead weight each channel by 1/sqrt(2),
    so a centred full-scale stereo signal would come out at 1.41, outside [-1, 1].
    Float and signed integer formats (packed or planar) are read in place; the rest (u8, s64) are
    first converted to planar float by swresample, keeping layout and rate.
    """

    def __init__(self) -> None:
        self._fallback: av.AudioResampler | None = None
        self._fallback_key: tuple[str, int] = ("", 0)

    @staticmethod
    def reads_directly(frame: av.AudioFrame) -> bool:
        """Whether :meth:`convert` reads ``frame`` in place: no converter state, any thread,
        and ``frame.samples`` samples out."""
        return frame.format.packed.name in _SAMPLE_DTYPES

    def convert(self, frame: av.AudioFrame) -> npt.NDArray[np.float32]:
        """Mono float32 samples of ``frame`` (shape ``(frame.samples,)``)."""
        fmt = frame.format
        name = fmt.packed.name
        if name not in _SAMPLE_DTYPES:
            if self._fallback is None or self._fallback_key != (
                frame.layout.name,
                frame.sample_rate,
            ):
                self._fallback_key = (frame.layout.name, frame.sample_rate)
                self._fallback = av.AudioResampler(
                    format="fltp", layout=frame.layout, rate=frame.sample_rate
                )
            out = np.zeros(0, dtype=np.float32)
            for converted in self._fallback.resample(frame):
                out = np.concatenate([out, self.convert(converted)])
            return out
        return AudioMonoConverter.convert_direct(frame)

    @staticmethod
    def convert_direct(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
        """:meth:`convert` for a frame it :meth:`reads_directly` (stateless, any thread)."""
        fmt = frame.format
        name = fmt.packed.name
        dtype = np.dtype(_SAMPLE_DTYPES[name])
        channels = frame.layout.nb_channels
        samples = frame.samples
        if name == "flt" and fmt.is_planar:
            # What AAC, Opus, MP3 and Vorbis decoders give: sum the planes, no temporaries.
            mono = np.frombuffer(memoryview(frame.planes[0]), dtype=np.float32, count=samples)
            if channels == 1:
                return mono.copy()
            mono = mono.copy()
            for plane in frame.planes[1:channels]:
                mono += np.frombuffer(memoryview(plane), dtype=np.float32, count=samples)
            mono *= np.float32(1.0 / channels)
            return mono
        if fmt.is_planar:
            planes = [
                np.frombuffer(memoryview(plane), dtype=dtype, count=samples)
                for plane in frame.planes[:channels]
            ]
            data = planes[0] if channels == 1 else np.stack(planes)
            mono = to_mono_f32(data, channels_first=True)
        else:
            packed = np.frombuffer(
                memoryview(frame.planes[0]), dtype=dtype, count=samples * channels
            )
            mono = to_mono_f32(packed.reshape(samples, channels), channels_first=False)
        # Mono float32 comes back as a view of the decoder's buffer, which it reuses: copy it.
        return mono.copy() if mono.base is not None else mono


def jump_fault(who: str, track: str, jump: TimestampJump) -> SourceFault:
    """The ``timestamp_jump`` fault for a jump a :class:`~crossmodald.clock.TrackTimeline` rebased.

    clock/ returns the jump as plain data; the source reports it (at the media time where the
    item landed), so the stream's consumers learn that its raw timestamps were discontinuous.

    Args:
        who: The source as messages name it (its name or redacted URL).
        track: Which track jumped ("video", "audio").
        jump: The jump, from :meth:`~crossmodald.clock.TrackTimeline.take_jump`.

    Returns:
        The fault, placed where the jumped item landed.
    """
    return SourceFault(
        "timestamp_jump",
        f"{who}: {track} timestamp jump of {jump.jump_ns / NS_PER_S:+.3f} s rebased "
        f"(media time kept continuous at {jump.landed_ns / NS_PER_S:.3f} s)",
        jump.landed_ns,
    )
