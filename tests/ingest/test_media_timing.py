"""MediaSource timestamps through clock/: MPEG-TS wrap-around, jumps, and ordinary files unchanged."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import pytest
from ingestkit import NS, Collected, pattern_config, read_media, write_ts

from crossmodald.clock import ticks_to_ns
from crossmodald.ingest.pattern import PatternTimeline, write_pattern_file

TOP = 2**33  # MPEG-TS PTS counter range
TB = Fraction(1, 90000)
FRAME_NS = NS // 25


def raw_pts(path: Path, kind: str, options: dict[str, str] | None = None) -> list[int]:
    """The PTS PyAV's own decode gives, in stream ticks."""
    with av.open(str(path), options=options or {}) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return [f.pts for f in container.decode(stream) if f.pts is not None]


def assert_continuous(read: Collected) -> None:
    steps = [b.pts_ns - a.pts_ns for a, b in itertools.pairwise(read.frames)]
    assert steps
    assert set(steps) == {FRAME_NS}
    for a, b in itertools.pairwise(read.chunks):
        assert b.pts_ns == a.end_ns


@pytest.mark.parametrize(
    "options",
    [{}, {"correct_ts_overflow": "0"}],
    ids=["ffmpeg-corrects-one-wrap", "raw-33-bit-pts"],
)
async def test_mpegts_pts_wrap_gives_continuous_media_time(
    tmp_path: Path, options: dict[str, str]
) -> None:
    path = tmp_path / "wrap.ts"
    write_ts(path, TOP - 2 * 90000, 4.0)  # 2 s before the wrap, 2 s after
    raw_video = raw_pts(path, "video", options)
    if options:
        # The file really wraps: its raw PTS fall back by 2**33 ticks (26.5 hours) mid-file.
        assert any(b < a - TOP // 2 for a, b in itertools.pairwise(raw_video))
    read = await read_media(str(path), options=options)
    assert len(read.frames) == 100
    assert not read.faults
    assert_continuous(read)
    # Audio and video keep the offset they have in the file.
    raw_audio = raw_pts(path, "audio", options)
    offset_ns = read.frames[0].pts_ns - read.chunks[0].pts_ns
    assert offset_ns == ticks_to_ns(raw_video[0], TB, "floor") - ticks_to_ns(
        raw_audio[0], TB, "floor"
    )


def concat(tmp_path: Path, *parts: tuple[int, float]) -> Path:
    """MPEG-TS segments joined byte by byte (``cat a.ts b.ts``): a spliced stream."""
    data = b""
    for i, (start, seconds) in enumerate(parts):
        part = tmp_path / f"part{i}.ts"
        write_ts(part, start, seconds)
        data += part.read_bytes()
    path = tmp_path / "spliced.ts"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("first_s", "second_s"), [(100, 10), (10, 200)], ids=["backward", "forward"]
)
async def test_mpegts_timestamp_jump_is_a_fault_and_media_time_stays_monotonic(
    tmp_path: Path, first_s: int, second_s: int
) -> None:
    path = concat(tmp_path, (first_s * 90000, 2.0), (second_s * 90000, 2.0))
    # Real-time reading (on the virtual clock) keeps one chunk per decoded frame, to compare
    # with the raw PTS frame by frame (offline reads join frames that tile).
    read = await read_media(str(path), realtime=True)
    assert len(read.frames) == 100
    jumps = [f for f in read.faults if f.kind == "timestamp_jump"]
    assert {f.message.split(": ")[1].split()[0] for f in jumps} == {"video", "audio"}
    assert all("spliced.ts" in f.message for f in jumps)
    # Media time never goes back (TrackTimeline: a jump lands one step after the head).
    video = [f.pts_ns for f in read.frames]
    assert all(b > a for a, b in itertools.pairwise(video))
    audio = [c.pts_ns for c in read.chunks]
    assert all(b > a for a, b in itertools.pairwise(audio))
    # The splice is closed up: the second segment follows on from the first, where the track
    # that reached the splice first put it (one step after its head), each segment unchanged.
    assert 0 < video[50] - video[49] < NS // 10
    steps = [b - a for a, b in itertools.pairwise(video)]
    assert set(steps[:49] + steps[50:]) == {FRAME_NS}
    # One move for both tracks: the second segment's A/V offset is the file's.
    raw_video = raw_pts(path, "video")
    raw_audio = raw_pts(path, "audio")
    assert len(raw_audio) == len(audio)
    unwrapped = [p % TOP for p in raw_audio]
    # The first chunk of the second segment: its raw PTS are more than a second off.
    split = next(
        i for i in range(1, len(unwrapped)) if abs(unwrapped[i] - unwrapped[i - 1]) > 90000
    )
    want = ticks_to_ns(raw_video[50] % TOP, TB, "floor") - ticks_to_ns(
        raw_audio[split] % TOP, TB, "floor"
    )
    assert video[50] - audio[split] == want
    assert next(f.pts_ns for f in jumps if " video " in f.message) == video[50]


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
async def test_ordinary_files_keep_the_exact_pattern_timeline(tmp_path: Path, ext: str) -> None:
    """Every frame and chunk of a pattern file where the container's PTS put it, unchanged.

    Video: the container PTS floored to ns (MP4's 1/15360 clock gives the pattern's exact
    ``i / fps`` floored; Matroska stores ms). Audio: contiguous from the first stamp, by sample
    count. Nothing may count as a jump or a resync.
    """
    config = pattern_config(period_s=0.9, flash_ms=60.0, beep_ms=80.0)
    timeline = PatternTimeline(config)
    path = tmp_path / f"clip{ext}"
    write_pattern_file(config, path, duration_s=4.0)
    with av.open(str(path)) as container:
        vtb = container.streams.video[0].time_base
        atb = container.streams.audio[0].time_base
        assert vtb is not None
        assert atb is not None
        want_video = [ticks_to_ns(p, Fraction(vtb), "floor") for p in raw_pts(path, "video")]
        first_audio_ns = ticks_to_ns(raw_pts(path, "audio")[0], Fraction(atb), "floor")
    read = await read_media(str(path))
    assert not read.faults
    assert [f.pts_ns for f in read.frames] == want_video
    if ext == ".mp4":
        assert want_video == [timeline.frame_pts_ns(i) for i in range(120)]
    else:
        assert all(abs(w - timeline.frame_pts_ns(i)) <= 500_000 for i, w in enumerate(want_video))
    total = 0
    for chunk in read.chunks:
        assert chunk.pts_ns == first_audio_ns + total * NS // 48000
        total += len(chunk.samples)
    assert first_audio_ns == timeline.sample_pts_ns(0)
