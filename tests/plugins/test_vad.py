"""The ``speech`` plugin: Silero VAD from the package, batched, resampled in torch, segmented."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from mediakit import make_windows, run_plugin

from crossmodald.bus.events import Phase
from crossmodald.media import NS_PER_S, ClockKind, StreamInfo, Window
from crossmodald.service.evaluate import decode_media
from crossmodald_plugins.vad import (
    SileroVad,
    SpeechConfig,
    SpeechFactory,
    SpeechSegmenter,
    VadLoadError,
    resample,
)
from crossmodald_plugins.vad.model import CHUNK, CHUNK_NS, packaged_model_path
from crossmodald_plugins.vad.plugin import SpeechResult, SpeechSession

MEDIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "media"
needs_media = pytest.mark.skipif(
    not MEDIA.is_dir(), reason=f"shared test media not found at {MEDIA} (../shared/media)"
)
JFK = MEDIA / "speech_jfk_whisper.flac"


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad("cpu")


@pytest.fixture(scope="module")
def plugin() -> object:
    return SpeechFactory.create(SpeechConfig(), "cpu")


def _window(
    stream: str,
    index: int,
    audio: np.ndarray,
    rate: int,
    *,
    start_ns: int | None = None,
    valid: np.ndarray | None = None,
) -> Window:
    start = index * NS_PER_S // 2 if start_ns is None else start_ns
    return Window(
        stream=stream,
        index=index,
        start_ns=start,
        end_ns=start + (len(audio) * NS_PER_S // rate if rate else 2 * NS_PER_S),
        video=(),
        audio=audio.astype(np.float32),
        audio_valid=np.ones(len(audio), np.bool_) if valid is None else valid,
        audio_rate=rate,
        frame_rate=None,
        clock=ClockKind.PTS,
    )


def _info(name: str = "s") -> StreamInfo:
    return StreamInfo(name=name, kind="test", has_video=False, has_audio=True, clock=ClockKind.PTS)


# -- loading ------------------------------------------------------------------------------------


def test_loads_from_the_package_without_network_or_thread_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the VAD tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    threads = torch.get_num_threads()
    model = SileroVad("cpu")
    assert model.path == packaged_model_path()
    assert "silero_vad" in model.path
    assert model.path.endswith("silero_vad.jit")
    # silero_vad's __init__ would set torch to one thread for the whole process.
    assert torch.get_num_threads() == threads


def test_missing_or_corrupt_model_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(VadLoadError, match=r"nope\.jit"):
        SileroVad("cpu", path=str(tmp_path / "nope.jit"))
    bad = tmp_path / "corrupt.jit"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(VadLoadError, match=r"corrupt\.jit: cannot load"):
        SileroVad("cpu", path=str(bad))


# -- the model ----------------------------------------------------------------------------------


def test_batched_model_matches_the_packaged_streaming_model(vad: SileroVad) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(40 * CHUNK) / 16000
    # A voiced-like harmonic signal switching on and off, plus noise: exercises the LSTM state.
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    gate = (np.sin(2 * np.pi * 1.5 * t) > 0).astype(np.float64)
    rows = [
        0.3 * tone * gate + 0.01 * rng.standard_normal(t.size),
        0.05 * rng.standard_normal(t.size),
    ]
    audio = torch.tensor(np.stack(rows), dtype=torch.float32)
    batched = vad.chunk_probs(audio)
    reference = vad.stream_reference(audio)
    assert batched.shape == (2, 40)
    assert torch.allclose(batched, reference, atol=1e-4)


def test_model_rejects_ragged_audio(vad: SileroVad) -> None:
    with pytest.raises(ValueError, match="expected"):
        vad.chunk_probs(torch.zeros(1, CHUNK + 3))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_keeps_a_tone(rate: int) -> None:
    n = rate
    x = np.sin(2 * np.pi * 1000 * np.arange(n) / rate).astype(np.float32)
    y = resample(torch.from_numpy(x)[None], rate, 16000)[0].numpy()
    assert y.shape == (16000,)
    expected = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(y[200:-200] - expected[200:-200]).max() < 5e-3


def test_resample_removes_what_16k_cannot_hold() -> None:
    rate = 48000
    x = np.sin(2 * np.pi * 12000 * np.arange(rate) / rate).astype(np.float32)
    y = resample(torch.from_numpy(x)[None], rate, 16000)[0].numpy()
    assert np.abs(y[200:-200]).max() < 0.02  # 12 kHz is above the 8 kHz Nyquist: filtered out


# -- segmenter ----------------------------------------------------------------------------------


def _feed(seg: SpeechSegmenter, probs: list[float]) -> list[tuple[bool, int, int]]:
    out = []
    for k, p in enumerate(probs):
        for change in seg.push(k * CHUNK_NS, (k + 1) * CHUNK_NS, p):
            out.append((change.ended, change.segment.start_ns, change.segment.end_ns))
    for change in seg.flush():
        out.append((change.ended, change.segment.start_ns, change.segment.end_ns))
    return out


def test_segmenter_hysteresis_and_minimum_lengths() -> None:
    seg = SpeechSegmenter(min_speech_ms=250, min_silence_ms=100, speech_pad_ms=0)
    # 5 chunks (160 ms) of speech: too short, dropped.
    assert _feed(seg, [0.0] * 3 + [0.9] * 5 + [0.0] * 10) == []
    seg = SpeechSegmenter(min_speech_ms=250, min_silence_ms=100, speech_pad_ms=0)
    # 10 chunks of speech with a 2-chunk dip between the thresholds (kept: hysteresis) and a
    # 2-chunk (64 ms) drop below neg_threshold (shorter than min_silence: bridged).
    probs = [0.0] * 2 + [0.9] * 4 + [0.4] * 2 + [0.9] * 2 + [0.1] * 2 + [0.9] * 4 + [0.0] * 6
    changes = _feed(seg, probs)
    assert changes == [
        (False, 2 * CHUNK_NS, 10 * CHUNK_NS),
        (True, 2 * CHUNK_NS, 16 * CHUNK_NS),
    ]


def test_segmenter_gap_counts_as_silence_and_flush_closes() -> None:
    seg = SpeechSegmenter(min_speech_ms=64, min_silence_ms=100, speech_pad_ms=0)
    out = []
    for k in range(5):
        out += seg.push(k * CHUNK_NS, (k + 1) * CHUNK_NS, 0.9)
    # Chunks 5..19 never arrive (dropped windows): the segment ends where the data stopped.
    out += seg.push(20 * CHUNK_NS, 21 * CHUNK_NS, 0.9)
    assert [(c.ended, c.segment.start_ns, c.segment.end_ns) for c in out] == [
        (False, 0, 2 * CHUNK_NS),
        (True, 0, 5 * CHUNK_NS),
    ]
    (_start, end) = seg.push(21 * CHUNK_NS, 22 * CHUNK_NS, 0.9) + seg.flush()
    assert end.ended
    assert end.segment.start_ns == 20 * CHUNK_NS


def test_segmenter_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="threshold"):
        SpeechSegmenter(threshold=1.5)
    with pytest.raises(ValueError, match="neg_threshold"):
        SpeechSegmenter(threshold=0.5, neg_threshold=0.7)


# -- plugin -------------------------------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="neg_threshold"):
        SpeechConfig(threshold=0.4, neg_threshold=0.6)
    with pytest.raises(ValueError, match="extra"):
        SpeechConfig.model_validate({"type": "speech", "thresold": 0.4})


def _speechy(seconds: float, rate: int) -> np.ndarray:
    """The first seconds of the JFK clip (speech from 0.3 s), resampled to ``rate``."""
    src = decode_media(JFK)
    x = torch.from_numpy(src.audio[: int(seconds * src.audio_rate)])[None]
    return resample(x, src.audio_rate, rate)[0].numpy()


def test_batch_across_streams_and_rates_equals_one_by_one(plugin: object) -> None:
    rng = np.random.default_rng(3)
    windows = [
        _window("a", 3, (0.2 * rng.standard_normal(32000)).astype(np.float32), 16000),
        _window("b", 3, (0.2 * rng.standard_normal(96000)).astype(np.float32), 48000),
        _window("c", 0, (0.2 * rng.standard_normal(88200)).astype(np.float32), 44100),
        _window("d", 1, np.zeros(0, np.float32), 0),
    ]
    together = plugin.probabilities(windows)  # type: ignore[attr-defined]
    for window, result in zip(windows, together, strict=True):
        (alone,) = plugin.probabilities([window])  # type: ignore[attr-defined]
        assert result.first_chunk == alone.first_chunk
        np.testing.assert_allclose(result.probs, alone.probs, atol=1e-5)
    # Chunks lie on the stream's 32 ms grid inside the window.
    first_ns = together[0].first_chunk * CHUNK_NS
    assert windows[0].start_ns <= first_ns < windows[0].start_ns + CHUNK_NS
    assert (together[0].first_chunk + len(together[0].probs)) * CHUNK_NS <= windows[0].end_ns
    assert len(together[3].probs) == 0


@needs_media
def test_missing_audio_is_silence(plugin: object) -> None:
    audio = _speechy(2.0, 16000)
    full = plugin.probabilities([_window("s", 0, audio, 16000)])[0]  # type: ignore[attr-defined]
    assert full.probs.max() > 0.9
    valid = np.ones(len(audio), np.bool_)
    valid[: len(audio) // 2] = False
    half = plugin.probabilities([_window("s", 0, audio, 16000, valid=valid)])[0]  # type: ignore[attr-defined]
    n = len(half.probs)
    assert not half.valid[: n // 2 - 1].any()
    assert half.valid[n // 2 + 1 :].all()
    assert (half.probs[~half.valid] == 0).all()


def test_session_skips_chunks_already_seen() -> None:
    config = SpeechConfig(min_speech_ms=0, min_silence_ms=0, speech_pad_ms=0)
    session = SpeechSession(config, _info())
    win = _window("s", 0, np.zeros(32000, np.float32), 16000)
    probs = np.array([0.0] * 10 + [0.9] * 20 + [0.0] * 32, np.float32)
    first = session.update(win, SpeechResult(0, probs, np.ones(62, np.bool_)))
    assert [e.phase for e in first] == [Phase.START, Phase.END]
    # The next window repeats chunks 15..61 (still the same speech): nothing new from them.
    again = session.update(win, SpeechResult(15, probs[15:], np.ones(47, np.bool_)))
    assert again == []
    assert session.close() == []


@needs_media
def test_jfk_americans_at_1_8_s_is_inside_speech(plugin: object) -> None:
    media = decode_media(JFK)
    windows = make_windows(media, "jfk", length_s=2.0, hop_s=0.5)
    events = run_plugin(plugin, {"jfk": (media.stream_info("jfk"), windows)})["jfk"]
    ends = [e for e in events if e.phase is Phase.END]
    starts = [e for e in events if e.phase is Phase.START]
    assert len(starts) == len(ends) >= 2
    assert all(e.type == "speech" and 0.5 <= e.data["probability"] <= 1.0 for e in ends)
    t = int(1.8 * NS_PER_S)
    assert any(e.start_ns <= t < e.end_ns for e in ends)
    # Starts come before their ends, updates stay inside an open segment.
    phases = [e.phase for e in events]
    assert phases[0] is Phase.START
    assert phases[-1] is Phase.END
    # The clip opens with ~0.3 s of silence.
    assert min(e.start_ns for e in ends) > int(0.1 * NS_PER_S)
