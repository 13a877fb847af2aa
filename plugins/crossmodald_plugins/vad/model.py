"""Silero VAD, loaded from the ``silero-vad`` package's own files, run batched.

The packaged TorchScript model is built for streaming one 32 ms chunk per call with hidden state
kept inside the module. Its parts are stateless except the LSTM, so :class:`SileroVad` runs the
feature extractor and encoder on every chunk of every window in one call, and the LSTM over all
windows at once as a batched ``torch.nn.LSTM`` with the packaged cell's weights. The outputs match
the packaged streaming model fed chunk by chunk (checked in the tests).
"""

from __future__ import annotations

import importlib.util
import math
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: The model's sample rate (it has an 8 kHz branch too; one rate keeps batches uniform).
VAD_RATE = 16_000
#: Samples per chunk at 16 kHz: one probability per 32 ms.
CHUNK = 512
#: Samples of the previous chunk the model sees before each chunk.
CONTEXT = 64
CHUNK_NS = CHUNK * 1_000_000_000 // VAD_RATE

_PACKAGE = "silero_vad"
_JIT_FILE = "silero_vad.jit"


class VadLoadError(RuntimeError):
    """The Silero VAD model could not be loaded from the installed package."""


def packaged_model_path() -> str:
    """Path of the TorchScript model inside the installed ``silero-vad`` package.

    The package is located without being imported: its ``__init__`` calls
    ``torch.set_num_threads(1)`` for the whole process, which would slow every other model.

    Raises:
        VadLoadError: silero-vad is not installed or its model file is missing.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VadLoadError("silero-vad is not installed (pip install silero-vad)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / _JIT_FILE
        if path.is_file():
            return str(path)
    raise VadLoadError(
        f"silero-vad model file data/{_JIT_FILE}: missing from the installed package"
    )


class SileroVad:
    """Speech probability per 32 ms chunk for many audio signals in one call.

    Args:
        device: torch device string ("cpu", "cuda:0", ...).
        path: TorchScript model file; defaults to the one inside the ``silero-vad`` package.
    """

    def __init__(self, device: str = "cpu", path: str | None = None) -> None:
        model_path = path or packaged_model_path()
        try:
            with warnings.catch_warnings():
                # The package ships TorchScript; torch >= 2.10 flags jit.load as deprecated.
                warnings.simplefilter("ignore", DeprecationWarning)
                jit: Any = torch.jit.load(model_path, map_location="cpu")  # type: ignore[no-untyped-call]
        except (RuntimeError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VadLoadError(f"silero-vad model {model_path}: cannot load: {first}") from exc
        try:
            inner = jit._model
            self._stft = inner.stft
            self._encoder = inner.encoder
            head = inner.decoder.decoder
            cell = inner.decoder.rnn
            lstm = torch.nn.LSTM(128, 128, batch_first=True)
            params = dict(lstm.named_parameters())
            with torch.no_grad():
                params["weight_ih_l0"].copy_(cell.weight_ih)
                params["weight_hh_l0"].copy_(cell.weight_hh)
                params["bias_ih_l0"].copy_(cell.bias_ih)
                params["bias_hh_l0"].copy_(cell.bias_hh)
            conv = getattr(head, "2")
            self._head_w = conv.weight.detach().reshape(1, 128).clone()
            self._head_b = conv.bias.detach().reshape(1).clone()
        except (AttributeError, RuntimeError) as exc:
            raise VadLoadError(
                f"silero-vad model {model_path}: not the expected Silero VAD v5+ layout: {exc}"
            ) from exc
        self.device = torch.device(device)
        self._jit = jit.to(self.device).eval()
        self._lstm = lstm.to(self.device).eval()
        self._head_w = self._head_w.to(self.device)
        self._head_b = self._head_b.to(self.device)
        self.path = model_path
        # One model instance, possibly called from several worker threads.
        self._lock = threading.Lock()
        #: Signals (rows) run through :meth:`chunk_probs` so far: one per window in the daemon,
        #: however many plugins use speech.
        self.rows_run = 0

    @torch.inference_mode()
    def chunk_probs(self, audio: torch.Tensor) -> torch.Tensor:
        """Speech probability of each 512-sample chunk of each row.

        Args:
            audio: (B, T * 512) float32 signals at 16 kHz; each row starts from a fresh state
                (no speech context), as the packaged model after ``reset_states``.

        Returns:
            (B, T) probabilities in [0, 1].
        """
        if audio.ndim != 2 or audio.shape[1] % CHUNK:
            raise ValueError(f"expected (B, T*{CHUNK}) audio, got shape {tuple(audio.shape)}")
        batch, total = audio.shape
        steps = total // CHUNK
        if steps == 0 or batch == 0:
            return torch.zeros((batch, steps), device=self.device)
        self.rows_run += batch
        audio = audio.to(self.device, torch.float32)
        # Each chunk with the 64 samples before it (zeros before the start), as the model expects.
        padded = F.pad(audio, (CONTEXT, 0))
        frames = padded.unfold(1, CHUNK + CONTEXT, CHUNK)  # (B, T, 576)
        with self._lock:
            feats = self._stft(frames.reshape(batch * steps, CHUNK + CONTEXT))
            encoded = self._encoder(feats).reshape(batch, steps, 128)
            hidden, _ = self._lstm(encoded)  # (B, T, 128)
            logits = torch.relu(hidden) @ self._head_w.T + self._head_b
        return torch.sigmoid(logits).reshape(batch, steps)

    @torch.inference_mode()
    def stream_reference(self, audio: torch.Tensor) -> torch.Tensor:
        """The packaged model fed chunk by chunk (its own streaming path): for tests only."""
        self._jit.reset_states()
        out = [
            self._jit(audio[:, i : i + CHUNK].to(self.device), VAD_RATE)
            for i in range(0, audio.shape[1] - CHUNK + 1, CHUNK)
        ]
        self._jit.reset_states()
        return torch.cat(out, dim=1)


# -- resampling ---------------------------------------------------------------------------------

_kernels: dict[tuple[int, int, str], tuple[torch.Tensor, int]] = {}
_kernels_lock = threading.Lock()


def _sinc_kernel(orig: int, new: int, device: torch.device) -> tuple[torch.Tensor, int]:
    # Hann-windowed sinc low-pass, one phase per output sample of a period (as torchaudio's
    # "sinc_interp_hann", width 6, rolloff 0.99).
    width_zc = 6
    base = min(orig, new) * 0.99
    width = math.ceil(width_zc * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-width_zc, width_zc)
    window = torch.cos(t * math.pi / width_zc / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    kernel = (sinc * window * (base / orig)).to(torch.float32).to(device)
    return kernel, width


def resample(audio: torch.Tensor, orig_hz: int, new_hz: int = VAD_RATE) -> torch.Tensor:
    """Band-limited resampling of (B, n) signals from ``orig_hz`` to ``new_hz``, in torch.

    Returns:
        (B, ceil(n * new_hz / orig_hz)) signals on the input's device.
    """
    if orig_hz <= 0 or new_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_hz} -> {new_hz}")
    if orig_hz == new_hz:
        return audio
    g = math.gcd(orig_hz, new_hz)
    orig, new = orig_hz // g, new_hz // g
    key = (orig, new, str(audio.device))
    with _kernels_lock:
        cached = _kernels.get(key)
        if cached is None:
            cached = _kernels[key] = _sinc_kernel(orig, new, audio.device)
    kernel, width = cached
    batch, length = audio.shape
    padded = F.pad(audio[:, None, :], (width, width + orig))
    out = F.conv1d(padded, kernel, stride=orig)  # (B, new, frames)
    out = out.transpose(1, 2).reshape(batch, -1)
    return out[:, : math.ceil(new * length / orig)]
