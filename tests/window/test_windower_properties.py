"""Property tests: arrival order within the lateness, repeats and chunking never change windows."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from windowkit import MS, av_items, chunk, make, run, signature

from crossmodald.media import AudioChunk, VideoFrame

LATENESS = 300 * MS
CHUNK_NS = 20 * MS
FPS = [Fraction(25), Fraction(30), Fraction(30000, 1001)]
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.data_too_large]
)


def _arrival_key(item: VideoFrame | AudioChunk, delay: int) -> int:
    # Delivered in order of (media time + delay). A frame may be up to the lateness behind the
    # newest item; a chunk one chunk less, because the audio head is a chunk's end.
    if isinstance(item, AudioChunk):
        return item.pts_ns + delay * (LATENESS - CHUNK_NS) // LATENESS
    return item.pts_ns + delay


@SETTINGS
@given(
    data=st.data(),
    fps=st.sampled_from(FPS),
    rate=st.sampled_from([16000, 44100]),
)
def test_any_interleaving_within_lateness_gives_in_order_windows(
    data: st.DataObject, fps: Fraction, rate: int
) -> None:
    items = av_items(3, fps, rate)
    reference = run(make(rate=rate, fps=float(fps), lateness_ns=LATENESS), items)
    delay = st.integers(min_value=0, max_value=LATENESS - 1)
    delays = data.draw(st.lists(delay, min_size=len(items), max_size=len(items)))
    # Some items arrive twice (a retransmission), also within the lateness.
    repeats = data.draw(st.lists(st.tuples(st.integers(0, len(items) - 1), delay), max_size=20))
    arrivals = [
        (_arrival_key(item, d), n, item)
        for n, (item, d) in enumerate(zip(items, delays, strict=False))
    ]
    arrivals += [
        (_arrival_key(items[i], d), len(items) + n, items[i]) for n, (i, d) in enumerate(repeats)
    ]
    arrivals.sort(key=lambda t: (t[0], t[1]))
    w = make(rate=rate, fps=float(fps), lateness_ns=LATENESS)
    got = run(w, [item for _, _, item in arrivals])
    assert signature(got) == signature(reference)
    assert w.stats.video_late == 0
    assert w.stats.audio_late_samples == 0
    assert w.stats.audio_gap_samples == 0
    repeated = [items[i] for i, _ in repeats]
    assert w.stats.video_duplicates == sum(isinstance(i, VideoFrame) for i in repeated)
    assert w.stats.audio_duplicate_samples == sum(
        len(i.samples) for i in repeated if isinstance(i, AudioChunk)
    )


@SETTINGS
@given(sizes=st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=40))
def test_any_chunking_gives_the_same_windows(sizes: list[int]) -> None:
    rate = 16000
    total = 3 * rate
    reference = run(
        make(video=False, rate=rate), [chunk(i, 320, rate) for i in range(0, total, 320)]
    )
    chunks: list[AudioChunk] = []
    index = 0
    while index < total:
        n = min(sizes[len(chunks) % len(sizes)], total - index)
        chunks.append(chunk(index, n, rate))
        index += n
    w = make(video=False, rate=rate)
    assert signature(run(w, chunks)) == signature(reference)
    assert w.stats.audio_gap_samples == 0
