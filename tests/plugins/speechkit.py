"""Speech the tests make themselves: known sentences spoken by Debian's espeak-ng.

:func:`speak` returns a sentence's samples; :func:`compose` lays sentences on one timeline with
silence between them and writes a 16-bit WAV, returning where each sentence's speech lies (from
the samples, so the times are exact whatever espeak-ng's own padding). Benchmarks use it too.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Sentences with plain words (no names tiny models cannot know).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "We will meet at the station at nine o'clock tomorrow morning.",
    "A large red balloon floated slowly above the quiet village.",
    "Please bring the blue folder to the meeting room after lunch.",
)
#: A long sentence (about six seconds): partial transcripts are made while it lasts.
LONG_SENTENCE = (
    "In the early morning the farmers walked slowly to the fields, carrying baskets of bread "
    "and water for the long day of work ahead of them."
)
VOICE = "en-us"
WORDS_PER_MINUTE = 150


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(
    text: str, *, voice: str = VOICE, wpm: int = WORDS_PER_MINUTE
) -> tuple[npt.NDArray[np.float32], int]:
    """The sentence as mono float32 samples and their rate (espeak-ng's own, 22050 Hz)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return (data.astype(np.float32) / 32768.0), rate


@dataclass(frozen=True, slots=True)
class Spoken:
    """A sentence on the composed timeline: where its speech starts and ends (seconds)."""

    text: str
    start_s: float
    end_s: float


def speech_span(samples: npt.NDArray[np.float32], rate: int) -> tuple[float, float]:
    """First and last moment the samples are louder than -40 dBFS (10 ms frames)."""
    frame = rate // 100
    n = len(samples) // frame
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > 0.01)
    if loud.size == 0:
        return 0.0, 0.0
    return loud[0] * frame / rate, (loud[-1] + 1) * frame / rate


def compose(
    path: Path,
    sentences: tuple[str, ...] | list[str],
    *,
    gap_s: float = 1.2,
    lead_s: float = 1.0,
    tail_s: float = 1.0,
    cut_last_s: float | None = None,
) -> list[Spoken]:
    """Write ``sentences`` to a WAV at ``path`` with silence around them.

    Args:
        gap_s: Silence between sentences.
        lead_s: Silence before the first.
        tail_s: Silence after the last.
        cut_last_s: Keep only this much of the last sentence's speech and no silence after it
            (the file ends mid-sentence).
    """
    pieces: list[npt.NDArray[np.float32]] = []
    spoken: list[Spoken] = []
    rate = 0
    t = 0.0
    for i, text in enumerate(sentences):
        samples, rate = speak(text)
        first, last = speech_span(samples, rate)
        samples = samples[int(first * rate) : int(last * rate)]
        silence = lead_s if i == 0 else gap_s
        pieces.append(np.zeros(int(silence * rate), np.float32))
        t += silence
        if cut_last_s is not None and i == len(sentences) - 1:
            samples = samples[: int(cut_last_s * rate)]
        pieces.append(samples)
        spoken.append(Spoken(text, t, t + len(samples) / rate))
        t += len(samples) / rate
    if cut_last_s is None:
        pieces.append(np.zeros(int(tail_s * rate), np.float32))
    audio = np.concatenate(pieces)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return spoken
