"""benchmarks/lipsync_closures.py: a lip release and the sound's onset, read without a model."""

from __future__ import annotations

import numpy as np
import pytest

from scriptkit import load_benchmark

pytest.importorskip("mediapipe", reason="the lipsync extra (mediapipe) is not installed")

RATE = 16_000
FPS = 25.0


def _talk(opens_at: list[float], sound_after: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 s of lips that close for 0.2 s and part at each time of ``opens_at`` (aperture 0 ->
    0.2 over two frames), and noise that is quiet while they are closed and starts
    ``sound_after`` seconds after they part."""
    times = np.arange(0, 4.0, 1 / FPS)
    gap = np.full(len(times), 0.2)
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.2, int(4.0 * RATE)).astype(np.float32)
    for t in opens_at:
        gap[(times > t - 0.2) & (times <= t)] = 0.0
        gap[(times > t) & (times < t + 1 / FPS)] = 0.1  # half-way one frame after
        quiet = slice(int((t - 0.2 + sound_after) * RATE), int((t + sound_after) * RATE))
        audio[quiet] *= 0.001
    gap += rng.normal(0, 0.002, len(gap))
    return times, gap, audio


@pytest.mark.parametrize("sound_after", [-0.08, 0.0, 0.1])
def test_the_delay_between_lips_parting_and_the_sound_is_read(sound_after: float) -> None:
    closures = load_benchmark("lipsync_closures")
    opens = [0.6, 1.5, 2.3, 3.2]
    times, gap, audio = _talk(opens, sound_after)
    released = closures.releases(times, gap, np.ones(len(gap), bool))
    # Released half-way through the opening: the frame after the last closed one, +/- a frame.
    assert len(released) == len(opens)
    assert np.allclose(released, np.asarray(opens) + 0.5 / FPS, atol=0.5 / FPS)
    t, energy = closures.log_energy(audio, RATE)
    delays = np.asarray(closures.onset_delays(released, t, energy))
    assert len(delays) == len(opens)
    # The onset is found at the applied delay (less the release's place inside its frame).
    assert np.allclose(delays + (np.asarray(released) - opens), sound_after, atol=0.01)
