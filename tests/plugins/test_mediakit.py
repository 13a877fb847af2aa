"""The unit-test window kit: the daemon's windower over decoded media, audio shifts included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mediakit import make_windows

from crossmodald.media import NS_PER_S
from crossmodald.service.evaluate import DecodedMedia


def _ramp_media(rate: int = 1000, seconds: int = 4) -> DecodedMedia:
    audio = np.arange(rate * seconds, dtype=np.float32)
    return DecodedMedia(Path("ramp"), (), audio, rate, 0, None)


def test_windows_grid_and_audio_shift_sign() -> None:
    media = _ramp_media()
    plain = make_windows(media, "r", length_s=1.0, hop_s=0.5)
    assert [w.start_ns for w in plain] == [i * NS_PER_S // 2 for i in range(7)]
    assert plain[2].audio[0] == 1000  # sample at 1.0 s
    # Audio leads by 100 ms: what plays at t is what the file has at t + 100 ms.
    lead = make_windows(media, "r", length_s=1.0, hop_s=0.5, audio_shift_ms=100)
    assert lead[2].audio[0] == 1100
    assert not lead[-1].audio_valid[-1]  # shifted in from past the end: flagged
    lag = make_windows(media, "r", length_s=1.0, hop_s=0.5, audio_shift_ms=-100)
    assert lag[0].audio[:100].sum() == 0
    assert not lag[0].audio_valid[:100].any()
    assert lag[0].audio_valid[100:].all()
    assert lag[0].audio[100] == 0
