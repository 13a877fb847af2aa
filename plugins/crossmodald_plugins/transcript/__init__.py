"""Live transcripts: who said what, with Whisper (faster-whisper, CTranslate2).

The ``transcript`` plugin segments each stream's speech from the shared VAD probabilities
(the ``speech`` plugin's), transcribes each segment with Whisper (partials while it lasts, a
final at its end), places every word on the stream's media time and attributes it to the face
track that spoke it (or "off-screen") when the ``speaker`` plugin runs. :mod:`.subtitles` turns
final transcripts into SubRip / WebVTT (``crossmodald analyze FILE --plugin transcript --format
srt``).
"""

from __future__ import annotations

from .model import Clip, Decoded, ModelError, WhisperEngine, Word, default_model_dir
from .plugin import (
    EVENT_TYPE,
    AudioRing,
    Transcript,
    TranscriptConfig,
    TranscriptFactory,
    TranscriptPlugin,
    TranscriptResult,
    TranscriptSession,
    TranscriptState,
    TranscriptWord,
)

__all__ = [
    "EVENT_TYPE",
    "AudioRing",
    "Clip",
    "Decoded",
    "ModelError",
    "Transcript",
    "TranscriptConfig",
    "TranscriptFactory",
    "TranscriptPlugin",
    "TranscriptResult",
    "TranscriptSession",
    "TranscriptState",
    "TranscriptWord",
    "WhisperEngine",
    "Word",
    "default_model_dir",
]
