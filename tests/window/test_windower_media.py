"""Real media: PyAV timestamps through TrackTimeline into the Windower, checked sample by sample."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from windowkit import MS, TINY, S, make, run

from crossmodald.clock import TrackTimeline
from crossmodald.ingest.frames import to_mono_f32
from crossmodald.media import AudioChunk, ClockKind, VideoFrame

av = pytest.importorskip("av")

MEDIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "media"
CLIP = MEDIA / "talkinghead_hdtf_aoc_25fps.mp4"

pytestmark = [
    pytest.mark.media,
    pytest.mark.skipif(not CLIP.is_file(), reason=f"shared test media not found: {CLIP}"),
]


def _decode(path: Path) -> tuple[list[VideoFrame | AudioChunk], np.ndarray, int]:
    """Frames and chunks in demux order, the whole mono track, and the sample rate."""
    items: list[VideoFrame | AudioChunk] = []
    pieces: list[np.ndarray] = []
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        rate = int(audio.codec_context.sample_rate)
        video_tl = TrackTimeline(Fraction(video.time_base))
        audio_tl = TrackTimeline(Fraction(audio.time_base))
        for f in container.decode(video, audio):
            if isinstance(f, av.AudioFrame):
                mono = to_mono_f32(f.to_ndarray(), channels_first=True)
                pts = audio_tl.map(f.pts, duration_ns=f.samples * S // rate).pts_ns
                items.append(AudioChunk("s", pts, 0, mono, rate, ClockKind.PTS))
                pieces.append(mono)
            else:
                pts = video_tl.map(f.pts).pts_ns
                items.append(VideoFrame("s", pts, 0, TINY, TINY, ClockKind.PTS))
        assert video_tl.stats.jumps == audio_tl.stats.jumps == 0
    return items, np.concatenate(pieces), rate


def test_decoded_clip_windows_hold_every_frame_and_sample() -> None:
    items, track, rate = _decode(CLIP)
    w = make(rate=rate, fps=25.0, lateness_ns=200 * MS)
    windows = run(w, items)
    frames = sorted(i.pts_ns for i in items if isinstance(i, VideoFrame))
    assert frames[1] - frames[0] == 40 * MS  # 512 ticks of 1/12800 s
    assert [win.index for win in windows] == list(range(16))  # 8 s clip, 0.5 s hop
    n = 2 * rate
    for win in windows:
        first = win.index * rate // 2
        assert [f.pts_ns for f in win.video] == [
            p for p in frames if win.start_ns <= p < win.end_ns
        ]
        held = min(n, len(track) - first)
        assert np.array_equal(win.audio[:held], track[first : first + held])
        assert win.audio_valid[:held].all()
        assert not win.audio_valid[held:].any()
    assert all(len(win.video) == 50 for win in windows[:13])
    stats = w.stats
    assert stats.video_late == stats.video_duplicates == stats.video_gaps == 0
    assert stats.audio_late_samples == stats.audio_duplicate_samples == 0
    assert stats.audio_gap_samples == 0
    assert stats.stalls == 0
