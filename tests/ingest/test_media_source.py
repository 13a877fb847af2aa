"""MediaSource: what PyAV opens, its timestamps, pacing, looping, errors and damaged input."""

from __future__ import annotations

import asyncio
import io
import itertools
import socket
import struct
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import web
from ingestkit import NS, collect, media_config, pattern_config, read_media

from crossmodald.ingest import MediaSource, SourceError, create_source
from crossmodald.ingest.media import redact_url
from crossmodald.ingest.pacing import MonotonicPacer, VirtualPacer
from crossmodald.ingest.pattern import PatternSource, PatternTimeline, write_pattern_file
from crossmodald.media import ClockKind

CONFIG = pattern_config(period_s=0.9, flash_ms=60.0, beep_ms=80.0)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pattern files shared by the tests of this module (written once)."""
    folder = tmp_path_factory.mktemp("media")
    write_pattern_file(CONFIG, folder / "clip.mp4", duration_s=4.0)
    write_pattern_file(CONFIG, folder / "clip.mkv", duration_s=4.0)
    write_pattern_file(CONFIG, folder / "tone.wav", duration_s=1.0)
    return folder


# -- opening errors --------------------------------------------------------------------------


async def test_text_file_is_not_media(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a video\n" * 50)
    with pytest.raises(SourceError) as err:
        await MediaSource(media_config(str(path))).open()
    assert str(err.value) == f"{path}: not a media file (Invalid data found when processing input)"


async def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.mp4"
    with pytest.raises(SourceError) as err:
        await MediaSource(media_config(str(path))).open()
    assert str(err.value) == f"{path}: no such file"


def test_a_missing_file_is_refused_when_the_source_is_built(tmp_path: Path) -> None:
    # So POST /v1/sources answers 422 and a reload is rejected, instead of a stream that
    # starts and then fails.
    with pytest.raises(SourceError) as err:
        create_source(media_config(str(tmp_path / "gone.mp4")))
    assert str(err.value) == f"{tmp_path / 'gone.mp4'}: no such file"
    with pytest.raises(SourceError, match="is a directory"):
        create_source(media_config(str(tmp_path)))
    # FFmpeg protocols are not file names: they are only checked when they open.
    for url in ("pipe:0", "concat:a.mp4|b.mp4", "rtsp://127.0.0.1:9/x", "file:gone.mp4"):
        assert isinstance(create_source(media_config(url)), MediaSource)


async def test_directory_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a directory"):
        await MediaSource(media_config(str(tmp_path))).open()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.mp4: not a media file"):
        await MediaSource(media_config(str(empty))).open()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_nothing_listening() -> None:
    url = f"http://127.0.0.1:{free_port()}/clip.mp4"
    with pytest.raises(SourceError) as err:
        await MediaSource(media_config(url)).open()
    assert str(err.value) == f"{url}: cannot open (Connection refused)"


async def test_silent_server_times_out() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # take the request, never answer
        await asyncio.sleep(3)
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"http://127.0.0.1:{port}/clip.mp4"
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(SourceError, match=r"timed out after 0\.4 s opening it"):
            await MediaSource(media_config(url, timeout_s=0.4)).open()
        assert loop.time() - began < 2.5
    finally:
        server.close()


@pytest.fixture
async def http_server(media_dir: Path) -> AsyncIterator[str]:
    """A loopback aiohttp server: /media/<file> serves a real file (with ranges), else 404."""
    app = web.Application()
    app.router.add_static("/media/", media_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_http_404(http_server: str) -> None:
    url = f"{http_server}/media/missing.mp4"
    with pytest.raises(SourceError) as err:
        await MediaSource(media_config(url)).open()
    assert str(err.value).startswith(f"{url}: cannot open (")
    assert "404" in str(err.value)


async def test_http_serves_a_real_file(http_server: str, media_dir: Path) -> None:
    over_http = await read_media(f"{http_server}/media/clip.mp4")
    local = await read_media(str(media_dir / "clip.mp4"))
    assert over_http.info.has_video
    assert over_http.info.has_audio
    assert [f.pts_ns for f in over_http.frames] == [f.pts_ns for f in local.frames]
    assert [c.pts_ns for c in over_http.chunks] == [c.pts_ns for c in local.chunks]
    np.testing.assert_array_equal(over_http.frames[20].luma, local.frames[20].luma)


def test_credentials_never_appear_in_messages() -> None:
    assert redact_url("rtsp://user:secret@cam.local:554/s1") == "rtsp://***@cam.local:554/s1"
    assert redact_url("http://127.0.0.1/a.mp4") == "http://127.0.0.1/a.mp4"
    assert redact_url("/tmp/a b.mp4") == "/tmp/a b.mp4"
    source = MediaSource(media_config("rtsp://admin:hunter2@127.0.0.1:1/x"))
    assert "hunter2" not in source.display


# -- streams and timestamps ------------------------------------------------------------------


async def test_mp4_frames_and_chunks(media_dir: Path) -> None:
    read = await read_media(str(media_dir / "clip.mp4"))
    info = read.info
    assert info.kind == "media"
    assert info.clock is ClockKind.PTS
    assert (info.width, info.height, info.frame_rate, info.sample_rate) == (160, 120, 30.0, 48000)
    assert len(read.frames) == 120
    assert all(f.clock is ClockKind.PTS and f.source_id == "file" for f in read.frames)
    assert [f.pts_ns for f in read.frames] == [i * NS // 30 for i in range(120)]
    assert read.frames[0].thumb.shape == (60, 80)
    # Audio is contiguous from 0 with exact sample-count pts.
    total = 0
    for chunk in read.chunks:
        assert chunk.pts_ns == total * NS // 48000
        assert chunk.samples.dtype == np.float32
        total += len(chunk.samples)
    # AAC pads its last frame; the mp4 edit list trims the start, not the end.
    assert 4 * 48000 <= total < 4 * 48000 + 1024
    # Items come out merged by pts (each kind in order, the two interleaved).
    pts = [item.pts_ns for item in read.order]
    assert pts == sorted(pts)


async def test_audio_only_file(media_dir: Path) -> None:
    read = await read_media(str(media_dir / "tone.wav"))
    assert read.info.has_video is False
    assert read.info.frame_rate is None
    assert read.frames == []
    assert sum(len(c.samples) for c in read.chunks) == 48000


async def test_cover_art_does_not_count_as_video(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    with av.open(jpeg, "w", format="mjpeg") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        picture = av.VideoFrame.from_ndarray(np.full((48, 32), 128, np.uint8), format="yuvj420p")
        for packet in [*stream.encode(picture), *stream.encode(None)]:
            out.mux(packet)
    path = tmp_path / "song.flac"
    with av.open(str(path), "w") as out:
        audio = out.add_stream("flac", rate=44100)
        audio.layout = "mono"
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        cover.time_base = Fraction(1, 90000)
        packet = av.Packet(jpeg.getvalue())
        packet.stream = cover
        packet.pts = packet.dts = 0
        out.mux(packet)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 4410), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 44100, i * 4410
            for p in audio.encode(frame):
                out.mux(p)
        for p in audio.encode(None):
            out.mux(p)
    with av.open(str(path)) as check:
        assert len(check.streams.video) == 1  # the cover is really there
    read = await read_media(str(path))
    assert read.info.has_video is False
    assert read.info.has_audio
    assert read.frames == []
    assert sum(len(c.samples) for c in read.chunks) == 44100


async def test_audio_shift_moves_audio_only(media_dir: Path) -> None:
    plain = await read_media(str(media_dir / "clip.mkv"))
    shifted = await read_media(str(media_dir / "clip.mkv"), audio_shift_ms=40.0)
    assert [f.pts_ns for f in shifted.frames] == [f.pts_ns for f in plain.frames]
    assert [c.pts_ns for c in shifted.chunks] == [c.pts_ns - 40_000_000 for c in plain.chunks]


async def test_realtime_paces_media_time_on_the_pacer(media_dir: Path) -> None:
    pacer = VirtualPacer(start_ns=7 * NS)
    read = await read_media(str(media_dir / "clip.mp4"), pacer, realtime=True)
    first = read.order[0]
    assert first.arrival_ns == 7 * NS
    for item in read.order:
        assert item.arrival_ns - 7 * NS == item.pts_ns - first.pts_ns
    assert pacer.now_ns() - 7 * NS == read.order[-1].pts_ns - first.pts_ns


async def test_realtime_on_the_real_clock(media_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    read = await read_media(str(media_dir / "tone.wav"), MonotonicPacer(), realtime=True)
    elapsed = loop.time() - began
    span_s = (read.chunks[-1].pts_ns - read.chunks[0].pts_ns) / NS
    assert span_s > 0.9
    assert elapsed >= span_s - 0.005  # paced, not as fast as possible
    assert elapsed < span_s + 5.0  # only guards against a hang on a loaded machine
    arrivals = [c.arrival_ns for c in read.chunks]
    for chunk in read.chunks:
        assert chunk.arrival_ns - arrivals[0] >= chunk.pts_ns - read.chunks[0].pts_ns


async def test_realtime_pacing_steps_over_a_timestamp_jump(tmp_path: Path) -> None:
    # One second of audio at 0 s and another at 60 s: pacing must not sleep through the hole.
    path = tmp_path / "jump.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        stream.layout = "mono"
        for start in (0, 60 * 8000):
            for i in range(10):
                frame = av.AudioFrame.from_ndarray(
                    np.zeros((1, 800), np.int16), format="s16", layout="mono"
                )
                frame.sample_rate, frame.pts = 8000, start + i * 800
                frame.time_base = Fraction(1, 8000)
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    pacer = VirtualPacer()
    source = MediaSource(media_config(str(path), realtime=True), pacer)
    read = await collect(source)
    assert [c.pts_ns for c in read.chunks][9:11] == [900_000_000, 60 * NS]
    assert source.stats.audio_resyncs == 1
    assert source.stats.pacing_resets == 1
    assert pacer.now_ns() == 2 * 900_000_000  # 0.9 s of pacing on each side of the jump
    assert read.chunks[10].arrival_ns == read.chunks[9].arrival_ns


def test_create_source_picks_the_class() -> None:
    assert isinstance(create_source(pattern_config()), PatternSource)
    assert isinstance(create_source(media_config("rtsp://127.0.0.1:9/nowhere")), MediaSource)


async def test_loop_continues_the_timeline(media_dir: Path) -> None:
    source = create_source(
        media_config(str(media_dir / "tone.wav"), loop=True), clock=VirtualPacer()
    )
    assert isinstance(source, MediaSource)
    read = await collect(source, limit=150)  # ~3.5 passes of 1 s
    assert source.stats.loops >= 3
    total = 0
    for chunk in read.chunks:
        assert chunk.pts_ns == total * NS // 48000  # each pass exactly 48000 samples on
        total += len(chunk.samples)
    timeline = PatternTimeline(CONFIG)
    audio = np.concatenate([c.samples for c in read.chunks])
    first_beep = timeline.beep_samples(0)[0]
    # Each pass replays the same second: the beep recurs exactly 48000 samples later.
    assert np.abs(audio[first_beep + 48000 + 10]) == pytest.approx(
        np.abs(audio[first_beep + 10]), abs=1e-4
    )


async def test_loop_of_video_file_keeps_pts_increasing(media_dir: Path) -> None:
    source = MediaSource(media_config(str(media_dir / "clip.mp4"), loop=True), VirtualPacer())
    read = await collect(source, limit=600)
    pts = [f.pts_ns for f in read.frames]
    assert len(pts) > 130
    assert all(b > a for a, b in itertools.pairwise(pts))
    # Pass 2 starts right where pass 1's longer stream ended (AAC's padded end, here).
    first_pass_chunks = [c for c in read.chunks if c.pts_ns < 4 * NS]
    end_ns = max(pts[119] + NS // 30, max(c.end_ns for c in first_pass_chunks))
    assert 4 * NS <= end_ns < 4 * NS + 25_000_000
    assert pts[120] == end_ns
    assert pts[121] - pts[120] == NS // 30
    assert source.stats.loops >= 1


async def test_shared_media_real_clip(shared_media: Path) -> None:
    path = shared_media / "mouthroi_usr_lrs3style_96px_noaudio.avi"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in {shared_media}")
    read = await read_media(str(path))
    assert read.info.has_video
    assert not read.info.has_audio
    assert (read.info.width, read.info.height) == (96, 96)
    assert read.info.frame_rate == 25.0
    assert len(read.frames) == 150
    assert [f.pts_ns for f in read.frames] == [i * 40_000_000 for i in range(150)]
    assert read.frames[0].thumb.shape == (80, 80)


# -- damaged input ---------------------------------------------------------------------------


def mdat_span(data: bytes) -> tuple[int, int]:
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"mdat":
            return offset + 8, offset + size
        offset += size
    raise AssertionError("no mdat atom")


async def test_zeroed_bytes_mid_file_skip_and_count(media_dir: Path, tmp_path: Path) -> None:
    data = bytearray((media_dir / "clip.mp4").read_bytes())
    start, end = mdat_span(bytes(data))
    cut_from = start + (end - start) * 4 // 10
    cut_to = start + (end - start) * 6 // 10
    data[cut_from:cut_to] = bytes(cut_to - cut_from)
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(bytes(data))
    source = MediaSource(media_config(str(path)), VirtualPacer())
    read = await collect(source)
    assert source.stats.decode_errors > 0
    assert 0 < len(read.frames) < 120
    assert read.frames[-1].pts_ns > 3 * NS  # decoding went on after the damage
    assert read.faults
    assert read.faults[0].kind == "decode_error"
    assert "zeroed.mp4: skipped" in read.faults[0].message


async def test_bytes_cut_from_the_middle(media_dir: Path, tmp_path: Path) -> None:
    data = (media_dir / "clip.mkv").read_bytes()
    n = len(data)
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[: n * 4 // 10] + data[n * 6 // 10 :])
    source = MediaSource(media_config(str(path)), VirtualPacer())
    read = await collect(source)
    assert 0 < len(read.frames) < 120
    assert read.frames[-1].pts_ns > 3 * NS
    # The hole is a gap in the timeline, counted, never stretched.
    assert source.stats.video_jumps >= 1
    assert source.stats.audio_resyncs >= 1
    # /v1/streams' source_status: the counters and their sum, the declared jump metric's key.
    status = source.status()
    assert status["video_jumps"] == source.stats.video_jumps
    assert status["timestamp_jumps"] == source.stats.video_jumps + source.stats.audio_resyncs
    assert {m.key for m in source.metrics} <= set(status)
    steps = [b.pts_ns - a.pts_ns for a, b in itertools.pairwise(read.chunks)]
    assert max(steps) > 100_000_000


async def test_truncated_file_yields_what_is_there(media_dir: Path, tmp_path: Path) -> None:
    data = (media_dir / "clip.mkv").read_bytes()
    path = tmp_path / "short.mkv"
    path.write_bytes(data[: len(data) // 2])
    read = await read_media(str(path))
    assert 10 < len(read.frames) < 120
    assert [f.pts_ns for f in read.frames] == sorted(f.pts_ns for f in read.frames)


async def test_nothing_decodable_is_an_error(media_dir: Path, tmp_path: Path) -> None:
    data = bytearray((media_dir / "clip.mp4").read_bytes())
    start, end = mdat_span(bytes(data))
    data[start:end] = bytes(end - start)
    path = tmp_path / "blank.mp4"
    path.write_bytes(bytes(data))
    source = MediaSource(media_config(str(path)), VirtualPacer())
    with pytest.raises(SourceError, match=r"blank\.mp4: nothing could be decoded \(\d+ errors"):
        await collect(source)
    assert source.stats.decode_errors > 0


async def test_aclose_during_iteration_is_safe(media_dir: Path) -> None:
    source = MediaSource(media_config(str(media_dir / "clip.mp4")), VirtualPacer())
    await source.open()
    seen = 0
    async for _ in source:
        seen += 1
        if seen == 5:
            break
    await source.aclose()
    await source.aclose()  # idempotent
    with pytest.raises(SourceError, match="closed"):
        await source.open()


async def test_a_closed_source_frees_its_decoders_without_the_garbage_collector(
    media_dir: Path,
) -> None:
    """The decoders' codec contexts hold a pool of decoded pictures (~75 MB at 512x512): once
    the source is closed and dropped they must go at once, not when the cyclic collector next
    runs (a process that read stream after stream grew by that much for every stream ended)."""
    import gc

    def decoders() -> int:
        return sum(
            type(o).__name__ in ("VideoCodecContext", "AudioCodecContext") for o in gc.get_objects()
        )

    gc.collect()
    before = decoders()
    gc.disable()
    try:
        source = MediaSource(media_config(str(media_dir / "clip.mp4")), VirtualPacer())
        await source.open()
        items = [item async for item in source]
        assert items
        assert decoders() > before
        await source.aclose()
        del source, items
        assert decoders() == before
    finally:
        gc.enable()


async def test_offline_batches_give_the_same_items_as_live_ones(media_dir: Path) -> None:
    # Offline reads decode bigger batches, several ahead, and finish them (thumbnails, mono
    # audio) on a second thread; the pictures must be exactly those of the small live batches.
    offline = await read_media(str(media_dir / "clip.mp4"))
    live = await read_media(str(media_dir / "clip.mp4"), realtime=True)
    assert [f.pts_ns for f in offline.frames] == [f.pts_ns for f in live.frames]
    for a, b in zip(offline.frames, live.frames, strict=True):
        assert np.array_equal(a.luma, b.luma)
        assert np.array_equal(a.thumb, b.thumb)
    # Audio: offline, consecutive frames are joined into chunks of at most 200 ms (fewer items
    # through the pipeline): the same samples at the same times.
    assert all(c.samples.dtype == np.float32 for c in offline.chunks)
    assert np.array_equal(
        np.concatenate([c.samples for c in offline.chunks]),
        np.concatenate([d.samples for d in live.chunks]),
    )
    starts = {d.pts_ns for d in live.chunks}
    assert all(c.pts_ns in starts for c in offline.chunks)
    assert all(len(c.samples) <= c.sample_rate // 5 for c in offline.chunks)
    assert len(offline.chunks) * 4 < len(live.chunks)
    # Each kind in time order, and the merge by time holds across them.
    times = [i.pts_ns for i in offline.order]
    assert times == sorted(times)


async def test_closing_with_batches_decoded_ahead(media_dir: Path) -> None:
    # Stop after a few items while batches are still queued on the worker threads: aclose
    # waits for them and closes the input; nothing leaks or raises.
    source = MediaSource(media_config(str(media_dir / "clip.mp4")), VirtualPacer())
    read = await collect(source, limit=5)
    assert len(read.order) == 5
    assert source._inflight is None
    assert source._reader.container is None


@pytest.mark.parametrize(
    ("cpus", "offline", "threads"),
    [(16, True, 8), (64, True, 16), (3, True, 1), (2, True, 1), (16, False, 1)],
)
def test_pictures_up_to_1080p_decode_in_slice_threads_on_half_the_cpus_offline(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, offline: bool, threads: int
) -> None:
    # Frame threads cost ~30% more CPU for the same pictures: never below 1080p. Slices cost
    # next to nothing: an offline read spreads them over half the CPUs it may use (a plain
    # decode uses all of them); live and real-time reads, and small machines, keep one thread.
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    source = MediaSource(media_config(str(media_dir / "clip.mp4"), realtime=not offline))
    reader = source._reader
    reader.open()
    try:
        assert reader.video is not None
        ctx = reader.video.codec_context
        assert ctx.thread_type == av.codec.context.ThreadType.SLICE
        assert ctx.thread_count == threads
    finally:
        reader.close()


async def test_slice_threads_decode_the_same_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A picture cut into 4 slices, decoded on 4 slice threads and on one: the same frames.
    # (PyAV's libx264 cuts one slice per encoder thread; 240 pixels high allows only 3.)
    path = tmp_path / "slices.mp4"
    options = {"preset": "veryfast", "crf": "12", "threads": "4"}
    config = pattern_config(width=320, height=480)
    write_pattern_file(config, path, duration_s=2.0, video_options=options)
    with av.open(str(path)) as container:
        assert b"slices=4" in bytes(next(container.demux(video=0)))
    read: dict[int, list[tuple[int, bytes]]] = {}
    for cpus in (8, 2):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, cpus=cpus: set(range(cpus)))
        source = MediaSource(media_config(str(path)), VirtualPacer())
        assert source._reader._slice_threads == cpus // 2
        got = await collect(source)
        read[cpus] = [(f.pts_ns, f.luma.tobytes()) for f in got.frames]
    assert len(read[8]) == 60
    assert read[8] == read[2]


def test_offline_batches_are_bounded_by_pixels(tmp_path: Path) -> None:
    # Batches decoded ahead hold their pictures: large pictures make smaller batches.
    from crossmodald.ingest.media import _BATCH_PIXELS_OFFLINE

    path = tmp_path / "big.mp4"
    write_pattern_file(pattern_config(width=1280, height=720), path, duration_s=1.0)
    source = MediaSource(media_config(str(path)))
    reader = source._reader
    reader.open()
    try:
        items, _, _ = reader.read_batch()
    finally:
        reader.close()
    frames = [i for i in items if i.__class__.__name__ == "_Video"]
    per_frame = 1280 * 720
    assert len(frames) == -(-_BATCH_PIXELS_OFFLINE // per_frame)
