"""Windower: exact event-time windows, watermark, lateness, duplicates, gaps, bounds."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from windowkit import (
    MS,
    STREAM,
    S,
    assert_window,
    av_items,
    chunk,
    frame,
    frame_pts,
    grid_start,
    make,
    run,
    signature,
    tone,
)

from crossmodald.media import AudioChunk, ClockKind, VideoFrame, Window

FPS = {"25": Fraction(25), "30": Fraction(30), "29.97": Fraction(30000, 1001)}
RATES = [16000, 44100, 48000]


# -- exact boundaries and contents --------------------------------------------------------------


@pytest.mark.parametrize("fps_name", list(FPS))
def test_video_windows_exact_boundaries_and_close_time(fps_name: str) -> None:
    fps = FPS[fps_name]
    w = make(audio=False, fps=float(fps))
    pts = [frame_pts(i, fps) for i in range(int(10 * fps))]
    closed_by: dict[int, int] = {}
    windows: list[Window] = []
    for i, p in enumerate(pts):
        got = w.push(frame(p), i)
        for win in got:
            closed_by[win.index] = i
        windows += got
    windows += w.flush(-1)
    assert [win.index for win in windows] == list(range(20))  # last start 9.5 s <= last pts
    for win in windows:
        assert_window(win, win.index, frames_pts=pts)
        assert win.audio_rate == 0
        assert win.audio.shape == (0,)
        assert win.frame_rate == float(fps)
        assert win.clock is ClockKind.PTS
        if win.index in closed_by:
            # Lateness 0: the window closes on the first frame at or after its end.
            first_after = next(i for i, p in enumerate(pts) if p >= win.end_ns)
            assert closed_by[win.index] == first_after
            assert win.closed_ns == first_after
        else:
            assert win.closed_ns == -1  # closed by flush
    counts = [len(win.video) for win in windows[:16]]  # the full windows
    if fps_name == "29.97":
        assert set(counts) <= {59, 60}
    else:
        assert set(counts) == {int(2 * fps)}
    assert w.stats.windows == 20
    assert w.stats.video_frames == len(pts)


@pytest.mark.parametrize("rate", RATES)
def test_audio_windows_exact_samples(rate: int) -> None:
    w = make(video=False, rate=rate)
    step = rate // 50  # 20 ms
    closed_at: dict[int, int] = {}
    windows: list[Window] = []
    total = 6 * rate
    for i, index in enumerate(range(0, total, step)):
        got = w.push(chunk(index, step, rate), i)
        for win in got:
            closed_at[win.index] = index + step  # grid end after this chunk
        windows += got
    assert w.audio_buffer_bytes > 0
    windows += w.flush(-1)
    # An ended stream's windower (kept with its state, for the status) holds no buffer.
    assert w.audio_buffer_bytes == 0
    assert w.buffered_audio_samples == 0
    assert [win.index for win in windows] == list(range(12))
    n = 2 * rate
    for win in windows[:9]:  # full windows (starts up to 4 s)
        assert_window(win, win.index, rate=rate)
        assert len(win.audio) == n
        assert win.video == ()
        assert win.frame_rate is None
        # Closed by the very chunk that delivered its last sample (lateness 0).
        assert closed_at[win.index] == grid_start(win.index, S // 2, rate) + n
    # The flushed tail windows hold what exists and flag the rest.
    have = np.ones(total, np.bool_)
    for win in windows[9:]:
        assert_window(win, win.index, rate=rate, have=have)
    assert w.stats.audio_gap_samples == 0


@pytest.mark.parametrize("fps_name", list(FPS))
@pytest.mark.parametrize("rate", RATES)
def test_av_windows_match_reference(fps_name: str, rate: int) -> None:
    fps = FPS[fps_name]
    items = av_items(5, fps, rate)
    pts = [i.pts_ns for i in items if isinstance(i, VideoFrame)]
    w = make(rate=rate, fps=float(fps), lateness_ns=200 * MS)
    windows = run(w, items)
    have = np.ones(5 * rate, np.bool_)
    assert [win.index for win in windows] == list(range(10))
    for win in windows:
        assert_window(win, win.index, frames_pts=pts, rate=rate, have=have)
    assert w.stats.video_late == w.stats.audio_late_samples == 0
    assert w.stats.stalls == 0


def test_window_frames_are_shared_not_copied() -> None:
    w = make(audio=False)
    frames = [frame(i * 100 * MS) for i in range(30)]
    windows = run(w, frames)
    assert windows[0].video[5] is frames[5]
    assert windows[1].video[0] is frames[5]  # the same object in two overlapping windows


def test_origin_is_first_pts_rounded_down_to_hop() -> None:
    w = make(audio=False)
    out = run(w, [frame(1_700 * MS + i * 100 * MS) for i in range(40)])
    assert w.origin_ns == 1_500 * MS
    assert out[0].start_ns == 1_500 * MS
    assert out[0].index == 0
    assert next(f.pts_ns for f in out[0].video) == 1_700 * MS


def test_media_before_origin_is_late() -> None:
    w = make(lateness_ns=500 * MS)
    w.push(frame(S), 0)  # origin = 1 s
    w.push(frame(900 * MS), 1)
    w.push(chunk(47040, 960, 48000), 2)  # 0.98 .. 1.00 s: all before the origin
    w.push(chunk(47520, 960, 48000), 3)  # 0.99 .. 1.01 s: half before
    assert w.stats.video_late == 1
    assert w.stats.audio_late_chunks == 1
    assert w.stats.audio_late_samples == 960 + 480


def test_misaligned_grid_is_exact_and_never_a_sample_short() -> None:
    # 44.1 kHz with a 1/3 s hop: window starts fall between samples; lateness 0.
    rate, hop, length = 44100, 333_333_333, 999_999_999
    w = make(video=False, rate=rate, hop_ns=hop, length_ns=length)
    total = 5 * rate
    windows: list[Window] = []
    for index in range(0, total, 441):
        windows += w.push(chunk(index, 441, rate), 0)
    n = round(Fraction(length * rate, S))
    assert n == 44100
    assert w.origin_ns == 0
    for win in windows:
        first = grid_start(win.index, hop, rate)
        # Window start and its first sample differ by at most half a sample.
        error_ns = abs(Fraction(first * S, rate) - win.start_ns)
        assert error_ns <= Fraction(S, 2 * rate)
        assert np.array_equal(win.audio, tone(first, n))
        assert win.audio_valid.all()
    assert len(windows) >= 12


# -- arrival order, lateness, duplicates ----------------------------------------------------------


def test_out_of_order_within_lateness_gives_in_order_windows() -> None:
    items = av_items(4, Fraction(30), 16000)
    reference = run(make(rate=16000, lateness_ns=100 * MS), items)
    shuffled = list(items)
    for i in range(0, len(shuffled) - 3, 4):  # reverse each run of four (at most ~60 ms late)
        shuffled[i : i + 4] = shuffled[i : i + 4][::-1]
    w = make(rate=16000, lateness_ns=100 * MS)
    got = run(w, shuffled)
    assert signature(got) == signature(reference)
    assert w.stats.video_late == w.stats.audio_late_samples == 0
    assert w.stats.audio_gap_samples == 0


def test_late_frame_dropped_counted_never_merged() -> None:
    w = make(audio=False, lateness_ns=100 * MS)
    pts = [i * 100 * MS for i in range(22)]  # up to 2.1 s: window 0 closes at head 2.1 s
    out: list[Window] = []
    for p in pts:
        out += w.push(frame(p), 0)
    assert [win.index for win in out] == [0]
    assert w.next_window_start_ns == 500 * MS
    assert w.push(frame(250 * MS), 1) == []  # belongs only to the closed window 0: late
    assert w.stats.video_late == 1
    w.push(frame(650 * MS), 2)  # in window 0 too, but window 1 [0.5, 2.5) is still open
    assert w.stats.video_late == 1
    rest = w.flush(3)
    win1 = next(win for win in rest if win.index == 1)
    assert 650 * MS in [f.pts_ns for f in win1.video]
    assert all(f.pts_ns != 250 * MS for win in out + rest for f in win.video)


def test_duplicate_frame_dropped_and_counted() -> None:
    w = make(audio=False, lateness_ns=100 * MS)
    w.push(frame(0), 0)
    w.push(frame(40 * MS), 0)
    w.push(frame(40 * MS), 0)
    w.push(frame(0), 0)
    out = w.flush(0)
    assert w.stats.video_duplicates == 2
    assert w.stats.video_frames == 2
    assert [f.pts_ns for f in out[0].video] == [0, 40 * MS]


def test_audio_duplicates_and_overlaps_ignored_and_counted() -> None:
    rate = 16000
    w = make(video=False, rate=rate, lateness_ns=500 * MS)
    w.push(chunk(0, 320, rate), 0)
    w.push(chunk(320, 320, rate), 0)
    w.push(chunk(320, 320, rate), 0)  # the same again
    overlap = AudioChunk(STREAM, chunk(480, 1, rate).pts_ns, 0, np.full(320, 9, np.float32), rate)
    w.push(overlap, 0)  # 160 held samples (ignored), 160 new ones
    out = w.flush(0)
    assert w.stats.audio_duplicate_samples == 320 + 160
    assert np.array_equal(out[0].audio[:640], tone(0, 640))  # never overwritten
    assert np.all(out[0].audio[640:800] == 9)
    assert out[0].audio_valid[:800].all()
    assert not out[0].audio_valid[800:].any()


def test_audio_partly_late_chunk_cut_and_counted() -> None:
    rate = 48000
    w = make(video=False, rate=rate)
    step = 960
    for index in range(0, 2 * rate + step, step):
        if index in (23040, 24000):  # 0.48 .. 0.52 s missing
            continue
        w.push(chunk(index, step, rate), 0)
    assert w.next_window_start_ns == 500 * MS  # window 0 closed with the hole flagged
    w.push(chunk(23040, 2 * step, rate), 1)  # 0.48 .. 0.52 s: the first half is late
    assert w.stats.audio_late_samples == 960
    assert w.stats.audio_late_chunks == 0
    w.push(chunk(4800, step, rate), 2)  # 0.1 s: entirely late
    assert w.stats.audio_late_chunks == 1
    assert w.stats.audio_late_samples == 2 * 960
    out = w.flush(3)
    win1 = out[0]
    assert win1.index == 1
    # The late chunk's second half filled the hole; audio ends at 2.02 s (sample 96960).
    assert win1.audio_valid[:72960].all()
    assert not win1.audio_valid[72960:].any()
    assert np.array_equal(win1.audio[:72960], tone(24000, 72960))
    # Only the 960 samples dropped as late are still missing from the stream.
    assert w.stats.audio_gap_samples == 960


# -- gaps --------------------------------------------------------------------------------------


def test_video_gap_counted_with_missing_frames() -> None:
    fps = Fraction(30)
    w = make(audio=False, lateness_ns=100 * MS)
    pts = [frame_pts(i, fps) for i in range(200) if not 40 <= i < 45]
    run(w, [frame(p) for p in pts])
    assert w.stats.video_gaps == 1
    assert w.stats.video_missing_frames == 5


def test_video_jitter_and_29_97_are_not_gaps() -> None:
    fps = Fraction(30000, 1001)
    w = make(audio=False, fps=float(fps), lateness_ns=100 * MS)
    rng = np.random.default_rng(1)
    jitter = rng.integers(-5 * MS, 5 * MS, 300)
    run(w, [frame(frame_pts(i, fps) + int(jitter[i])) for i in range(300)])
    assert w.stats.video_gaps == 0


def test_video_gaps_not_counted_without_frame_rate() -> None:
    w = make(audio=False, fps=None)
    run(w, [frame(i * 100 * MS) for i in range(10)] + [frame(5 * S)])
    assert w.stats.video_gaps == 0


def test_audio_gap_filled_with_zeros_and_flagged() -> None:
    rate = 48000
    w = make(video=False, rate=rate, lateness_ns=200 * MS)
    have = np.ones(3 * rate, np.bool_)
    have[57600:62400] = False  # 1.2 .. 1.3 s never delivered
    out: list[Window] = []
    for index in range(0, 3 * rate, 960):
        if have[index]:
            out += w.push(chunk(index, 960, rate), 0)
    out += w.flush(0)
    for win in out:
        assert_window(win, win.index, rate=rate, have=have)
    assert out[0].info["missing_audio_samples"] == 4800
    assert w.stats.audio_gap_samples == 4800
    assert w.stats.audio_late_samples == 0


def test_audio_only_and_video_only_streams() -> None:
    audio_only = run(make(video=False, rate=16000), av_items(3, Fraction(30), 16000, video=False))
    assert audio_only
    assert all(win.video == () and win.audio_rate == 16000 for win in audio_only)
    video_only = run(make(audio=False), av_items(3, Fraction(30), 16000, audio=False))
    assert video_only
    assert all(win.audio.size == 0 and win.audio_rate == 0 for win in video_only)


# -- watermark: stalls ----------------------------------------------------------------------------


def test_stalled_audio_holds_windows_until_max_gap_then_video_goes_on() -> None:
    rate, fps = 16000, Fraction(30)
    w = make(rate=rate, lateness_ns=200 * MS, max_gap_ns=5 * S)
    items = [
        i
        for i in av_items(20, fps, rate)
        if isinstance(i, VideoFrame) or i.pts_ns < 3 * S  # audio stops at 3 s
    ]
    out: list[Window] = []
    closed_at_video_head: dict[int, int] = {}
    for item in items:
        for win in w.push(item, 0):
            closed_at_video_head[win.index] = item.pts_ns
            out.append(win)
        if isinstance(item, VideoFrame) and item.pts_ns < 8 * S:
            # Audio head 3 s - lateness 0.2 s: only windows ending by 2.8 s may close.
            assert all(win.end_ns <= 2_800 * MS for win in out)
    assert w.stats.stalls == 1
    assert w.stalled == frozenset({"audio"})
    # After the stall, windows close on video alone (lateness still applies).
    last = max(out, key=lambda win: win.index)
    assert last.end_ns <= items[-1].pts_ns - 200 * MS
    assert last.index == (items[-1].pts_ns - 200 * MS - 2 * S) // (S // 2)
    assert w.stats.stalled_windows == sum(1 for win in out if win.end_ns > 2_800 * MS)
    assert w.stats.stalled_windows > 20
    silent = [win for win in out if win.start_ns >= 3 * S]
    assert silent
    assert all(not win.audio_valid.any() for win in silent)
    assert all(win.info["missing_audio_samples"] == 2 * rate for win in silent)
    # Audio coming back clears the stall; what it brings for closed windows is late.
    assert w.next_window_start_ns == 18 * S
    w.push(chunk(19 * rate, 320, rate), 0)
    assert w.stalled == frozenset()
    assert w.stats.audio_late_chunks == 0
    w.push(chunk(10 * rate, 320, rate), 0)
    assert w.stats.audio_late_chunks == 1


def test_track_that_never_starts_is_stalled_after_max_gap() -> None:
    w = make(rate=48000, lateness_ns=0, max_gap_ns=3 * S)
    out: list[Window] = []
    for p in range(0, 10 * S, 100 * MS):
        got = w.push(frame(p), 0)
        if p <= 3 * S:
            assert got == []
        out += got
    assert w.stats.stalls == 1
    assert out[0].index == 0
    assert not out[0].audio_valid.any()
    assert len(out[0].audio) == 96000


def test_watermark_never_moves_back() -> None:
    w = make(rate=16000, lateness_ns=0, max_gap_ns=1 * S)
    for p in range(0, 5 * S, 100 * MS):
        w.push(frame(p), 0)  # audio never started: stalled, windows close on video
    closed = w.next_window_start_ns
    assert closed is not None
    assert closed > 0
    w.push(chunk(0, 320, 16000), 0)  # audio starts late, at the origin: the lowest head
    assert w.next_window_start_ns == closed
    assert w.stats.audio_late_chunks == 1


# -- flush ---------------------------------------------------------------------------------------


def test_flush_emits_remaining_windows_with_media_only() -> None:
    w = make(audio=False, lateness_ns=30 * S, max_buffer_ns=60 * S)
    pts = [p for p in range(0, 12 * S, 100 * MS) if p < S or p >= 10 * S]
    for p in pts:
        assert w.push(frame(p), 0) == []  # lateness 30 s: nothing closes before the end
    out = w.flush(7)
    # Windows with media: starts -> [0, 0.5], and [8.5 .. 11.5] (frames 10 .. 11.9 s).
    assert [win.index for win in out] == [0, 1, 17, 18, 19, 20, 21, 22, 23]
    for win in out:
        assert_window(win, win.index, frames_pts=pts)
        assert win.closed_ns == 7
    assert w.stats.windows_skipped == 17 - 2
    assert w.flush(8) == []
    with pytest.raises(RuntimeError, match="push after flush"):
        w.push(frame(13 * S), 9)
    assert w.buffered_frames == 0


def test_flush_before_any_media_is_empty() -> None:
    assert make().flush(0) == []


def test_each_window_returned_once_in_index_order() -> None:
    items = av_items(10, Fraction(25), 44100)
    rng = np.random.default_rng(7)
    extra = [items[int(j)] for j in rng.integers(0, len(items), 50)]  # stray repeats
    w = make(rate=44100, fps=25.0, lateness_ns=300 * MS)
    windows = run(w, items + extra)
    indices = [win.index for win in windows]
    assert indices == sorted(set(indices))
    assert indices == list(range(20))


# -- long timelines and jumps -------------------------------------------------------------------


def test_pts_from_1e13_stay_exact() -> None:
    base = 10**13  # 2.8 hours, a multiple of the hop
    fps, rate = Fraction(30000, 1001), 44100
    items = av_items(4, fps, rate, base_ns=base)
    pts = [i.pts_ns for i in items if isinstance(i, VideoFrame)]
    w = make(rate=rate, fps=float(fps), lateness_ns=100 * MS)
    windows = run(w, items)
    assert w.origin_ns == base
    have = np.ones(4 * rate, np.bool_)
    assert len(windows) == 8
    for win in windows:
        assert_window(win, win.index, origin_ns=base, frames_pts=pts, rate=rate, have=have)


def test_hours_apart_bursts_stay_on_the_grid_without_big_buffers() -> None:
    # One second of audio every hour, for five hours, on a 44.1 kHz grid with a 1/3 s hop:
    # the windows hours later still hold exactly the samples of their grid position.
    rate, hop, length = 44100, 333_333_333, 666_666_666
    w = make(video=False, rate=rate, hop_ns=hop, length_ns=length, lateness_ns=0)
    n = round(Fraction(length * rate, S))
    windows: list[Window] = []
    peak = 0
    for hour in range(5):
        first = hour * 3600 * rate
        for index in range(first, first + rate, 4410):
            windows += w.push(chunk(index, 4410, rate), 0)
            peak = max(peak, w.buffered_audio_samples)
    windows += w.flush(0)
    bursts = [(h * 3600 * rate, h * 3600 * rate + rate) for h in range(5)]
    full = 0
    for win in windows:
        first = grid_start(win.index, hop, rate)
        idx = np.arange(first, first + n)
        valid = np.zeros(n, np.bool_)
        for lo, hi in bursts:
            valid |= (idx >= lo) & (idx < hi)
        assert np.array_equal(win.audio_valid, valid)
        assert np.array_equal(win.audio, np.where(valid, tone(first, n), np.float32(0)))
        full += bool(valid.all())
    # A hop of 333_333_333 ns is a little under 1/3 s: hours later the window that "starts
    # with" a burst starts one sample before it, within half a sample of its exact start.
    assert full >= 5
    assert max(win.index for win in windows) >= 4 * 3600 * 3
    assert w.stats.windows_skipped + w.stats.windows == max(win.index for win in windows) + 1
    assert w.stats.audio_gap_samples == 4 * (3600 - 1) * rate
    assert peak <= w.max_buffer_ns * rate // S + 1


def test_forward_jump_skips_empty_windows_and_allocates_nothing() -> None:
    fps, rate = Fraction(30), 48000
    before = av_items(3, fps, rate)
    after = av_items(3, fps, rate, base_ns=3600 * S)
    w = make(rate=rate, lateness_ns=200 * MS)
    peak_audio = peak_frames = 0
    windows: list[Window] = []
    for item in before + after:
        windows += w.push(item, 0)
        peak_audio = max(peak_audio, w.buffered_audio_samples)
        peak_frames = max(peak_frames, w.buffered_frames)
    windows += w.flush(0)
    indices = [win.index for win in windows]
    # Windows holding media: starts 0 .. 2.5 s, then 3598.5 .. 3602.5 s.
    assert indices == list(range(6)) + list(range(7197, 7206))
    assert all(win.video or win.audio_valid.any() for win in windows)
    assert w.stats.windows_skipped == 7197 - 6
    assert peak_frames <= 3 * 30
    assert peak_audio <= 3 * rate
    assert w.stats.video_late == w.stats.audio_late_samples == 0


def test_backward_jump_is_late_and_counted() -> None:
    w = make(audio=False, lateness_ns=0)
    for p in range(0, 6 * S, 100 * MS):
        w.push(frame(p), 0)
    before = w.stats.windows
    for p in range(0, S, 100 * MS):  # the timestamps went back 6 s
        assert w.push(frame(p), 0) == []
    assert w.stats.video_late == 10
    assert w.stats.windows == before


# -- memory bounds ------------------------------------------------------------------------------


def test_buffers_stay_bounded_over_five_minutes() -> None:
    rate, fps = 48000, Fraction(30)
    w = make(rate=rate, fps=30.0, lateness_ns=200 * MS)
    peak_frames = peak_audio = 0
    count = 0
    for item in av_items(300, fps, rate):
        count += len(w.push(item, 0))
        peak_frames = max(peak_frames, w.buffered_frames)
        peak_audio = max(peak_audio, w.buffered_audio_samples)
    count += len(w.flush(0))
    assert count == 600
    # What open windows need: length + hop + lateness, plus one chunk.
    assert peak_frames <= math.ceil(2.7 * 30) + 1
    assert peak_audio <= 2.7 * rate + 960
    assert w.buffered_frames == 0


def test_video_only_source_on_av_stream_stays_bounded() -> None:
    w = make(rate=48000, lateness_ns=200 * MS)
    peak = 0
    for i in range(3000):  # 100 s of video, audio never comes
        w.push(frame(frame_pts(i, Fraction(30))), 0)
        peak = max(peak, w.buffered_frames)
    assert peak <= math.ceil((2 + 0.5 + 0.2 + 5 + 1) * 30) + 2
    assert w.buffered_frames <= math.ceil(2.7 * 30) + 1
    assert w.buffered_audio_samples == 0


def test_hard_bound_drops_oldest_frames_and_counts() -> None:
    # Audio lags video by 3 s (within max_gap): the video ring would need 5+ s; bound is 2.5 s.
    w = make(rate=16000, lateness_ns=0, max_buffer_ns=2_500 * MS)
    w.push(chunk(0, 320, 16000), 0)
    for p in range(0, 3 * S, 100 * MS):
        w.push(frame(p), 0)
    # 0 .. 2.9 s, at most 2.5 s span held: 0 .. 0.3 s dropped, 0.4 .. 2.9 s kept.
    assert w.stats.video_overflow == 4
    assert w.buffered_frames == 26


def test_hard_bound_drops_oldest_audio_and_counts() -> None:
    rate = 16000
    w = make(rate=rate, lateness_ns=0, max_buffer_ns=2_500 * MS)
    w.push(frame(0), 0)
    for index in range(0, 3 * rate, 320):  # video lags by 3 s (within max_gap)
        w.push(chunk(index, 320, rate), 0)
    assert w.stats.audio_overflow_samples == rate // 2
    assert w.buffered_audio_samples <= 2_500 * rate // 1000
    out = w.flush(0)
    assert not out[0].audio_valid[: rate // 2].any()  # the dropped oldest half second
    assert out[0].audio_valid[rate // 2 :].all()


def test_frame_count_bound() -> None:
    w = make(audio=False, lateness_ns=S, max_buffer_frames=10)
    for p in range(0, 100 * MS, MS):  # 1 kHz "video"
        w.push(frame(p), 0)
    assert w.buffered_frames == 10
    assert w.stats.video_overflow == 90


# -- chunk sizes -------------------------------------------------------------------------------


def test_any_chunk_size_gives_the_same_windows() -> None:
    rate = 16000
    total = 3 * rate

    def windows_for(step: int) -> list[tuple[int, list[int], bytes, bytes]]:
        w = make(video=False, rate=rate, lateness_ns=100 * MS)
        return signature(
            run(w, [chunk(i, min(step, total - i), rate) for i in range(0, total, step)])
        )

    reference = windows_for(320)
    assert windows_for(1) == reference
    assert windows_for(777) == reference
    assert windows_for(total) == reference


def test_one_minute_chunk_on_audio_only_stream_loses_nothing() -> None:
    rate = 48000
    w = make(video=False, rate=rate)  # default buffer ~8.7 s, far below the chunk
    windows = run(w, [chunk(0, 60 * rate, rate)])
    assert [win.index for win in windows] == list(range(120))
    assert w.stats.audio_overflow_samples == 0
    assert all(win.audio_valid.all() for win in windows[:117])
    assert np.array_equal(windows[100].audio, tone(50 * rate, 2 * rate))


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"length_ns": 0}, "length_ns"),
        ({"hop_ns": 0}, "hop_ns"),
        ({"hop_ns": 3 * S}, "hop_ns"),
        ({"lateness_ns": -1}, "lateness_ns"),
        ({"max_gap_ns": 0}, "max_gap_ns"),
        ({"video": False, "audio": False}, "video or audio"),
        ({"rate": None}, "sample_rate"),
        ({"rate": 0}, "sample_rate"),
        ({"fps": 0.0}, "frame_rate"),
        ({"fps": math.nan}, "frame_rate"),
        ({"max_buffer_ns": S}, "max_buffer_ns"),
        ({"max_buffer_frames": 0}, "max_buffer_frames"),
        ({"rate": 1000, "hop_ns": 999_999, "length_ns": S}, "one audio sample"),
    ],
)
def test_bad_settings_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        make(**kwargs)  # type: ignore[arg-type]
    assert "stream 's'" in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_items_rejected() -> None:
    with pytest.raises(ValueError, match="without video"):
        make(video=False).push(frame(0), 0)
    with pytest.raises(ValueError, match="without audio"):
        make(audio=False).push(chunk(0, 10, 48000), 0)
    with pytest.raises(ValueError, match="44100 Hz, stream is 48000 Hz"):
        make().push(chunk(0, 10, 44100), 0)
    stereo = AudioChunk(STREAM, 0, 0, np.zeros((10, 2), np.float32), 48000)
    with pytest.raises(ValueError, match="mono"):
        make().push(stereo, 0)
    with pytest.raises(TypeError, match="VideoFrame or AudioChunk"):
        make().push("frame", 0)  # type: ignore[arg-type]


def test_empty_chunk_is_ignored() -> None:
    w = make(video=False)
    assert w.push(AudioChunk(STREAM, 0, 0, np.zeros(0, np.float32), 48000), 0) == []
    assert w.origin_ns is None
    assert w.stats.audio_chunks == 1


def test_stats_as_dict() -> None:
    w = make(audio=False)
    run(w, [frame(0), frame(0)])
    d = w.stats.as_dict()
    assert d["video_duplicates"] == 1
    assert d["windows"] == 1
    assert all(isinstance(v, int) for v in d.values())
