"""The same answers on CUDA as on the CPU (runs only where a GPU is present)."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from crossmodald.ingest import create_source
from crossmodald.ingest.pacing import VirtualPacer
from crossmodald.media import NS_PER_S, AudioChunk, VideoFrame, Window
from crossmodald.service.config import PatternSourceConfig
from crossmodald.window import Windower

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def pattern_windows(count: int, lead_ms: float) -> list[Window]:
    async def collect() -> list[Window]:
        config = PatternSourceConfig(
            type="pattern", name="g", audio_lead_ms=lead_ms, duration_s=10.0, realtime=False
        )
        source = create_source(config, clock=VirtualPacer())
        info = await source.open()
        windower = Windower(
            "g",
            length_ns=2 * NS_PER_S,
            hop_ns=NS_PER_S // 2,
            lateness_ns=0,
            has_video=True,
            has_audio=True,
            sample_rate=info.sample_rate,
            frame_rate=info.frame_rate,
            clock=info.clock,
        )
        out: list[Window] = []
        async for item in source:
            if isinstance(item, VideoFrame | AudioChunk):
                out.extend(windower.push(item, 0))
        await source.aclose()
        return out[:count]

    return asyncio.run(collect())


def test_avsync_on_cuda_matches_cpu() -> None:
    from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory

    windows = pattern_windows(12, -70.0)
    config = AvSyncConfig(type="avsync", method="flash", face_detection=False)
    cpu = AvSyncFactory.create(config, "cpu").analyze(windows)
    gpu = AvSyncFactory.create(config, "cuda:0").analyze(windows)
    for a, b in zip(cpu, gpu, strict=True):
        assert (a.audio_lead_ms is None) == (b.audio_lead_ms is None)
        if a.audio_lead_ms is not None and b.audio_lead_ms is not None:
            assert math.isclose(a.audio_lead_ms, b.audio_lead_ms, abs_tol=0.05)
            assert abs(b.audio_lead_ms + 70.0) <= 2.0


def test_light_asd_on_cuda_matches_cpu() -> None:
    from crossmodald_plugins.asd.model import AUDIO_STEPS_PER_FRAME, CROP_SIDE, N_MFCC, LightASD

    torch.manual_seed(0)
    model = LightASD().eval()
    frames = 25
    crops = torch.rand(3, frames, CROP_SIDE, CROP_SIDE)
    mfcc = torch.randn(3, frames * AUDIO_STEPS_PER_FRAME, N_MFCC)
    with torch.inference_mode():
        cpu = model(mfcc, crops)
        gpu = model.to("cuda:0")(mfcc.to("cuda:0"), crops.to("cuda:0")).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)


def test_lipsync_scan_and_training_step_on_cuda_match_cpu() -> None:
    # The shipped sync model scores the same lag curves on CUDA, and one training step of
    # `crossmodald train lipsync` (model, loss, AdamW) runs there with the same losses.
    from crossmodald_plugins.lipsync.features import N_MELS, STEPS_PER_SLOT
    from crossmodald_plugins.lipsync.landmarks import FEATURE_DIM
    from crossmodald_plugins.lipsync.model import load_model, scan
    from crossmodald_plugins.lipsync.plugin import SHIPPED_WEIGHTS

    torch.manual_seed(0)
    lips = torch.randn(4, 50, FEATURE_DIM)
    mel = torch.randn(4, 50 * STEPS_PER_SLOT, N_MELS)
    with torch.inference_mode():
        cpu = scan(load_model(SHIPPED_WEIGHTS, "cpu"), lips, mel, 500)
        gpu = scan(load_model(SHIPPED_WEIGHTS, "cuda:0"), lips.cuda(), mel.cuda(), 500)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.best == b.best
        assert torch.allclose(torch.from_numpy(a.curve), torch.from_numpy(b.curve), atol=1e-4)

    cpu_before, cpu_after = _training_step_losses("cpu")
    gpu_before, gpu_after = _training_step_losses("cuda:0")
    assert math.isclose(cpu_before, gpu_before, rel_tol=1e-3)
    assert math.isclose(cpu_after, gpu_after, rel_tol=1e-3)
    assert gpu_after < gpu_before  # the step learned something


def _training_step_losses(device: str) -> tuple[float, float]:
    """The loss of `crossmodald train lipsync`'s model on fixed features before and after one
    AdamW step on ``device``."""
    from crossmodald_plugins.lipsync.features import N_MELS, STEPS_PER_SLOT
    from crossmodald_plugins.lipsync.landmarks import FEATURE_DIM
    from crossmodald_plugins.lipsync.model import SyncNet

    torch.manual_seed(1)
    model = SyncNet().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # Drawn on the CPU (CUDA has its own generator), then moved.
    lips = torch.randn(8, 24, FEATURE_DIM).to(device)
    mel = torch.randn(8, (24 + 30) * STEPS_PER_SLOT, N_MELS).to(device)
    target = torch.full((8 * 24,), 15, dtype=torch.long, device=device)

    def loss_now() -> torch.Tensor:
        logits = model.lag_logits(lips, mel, 15)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target)

    loss = loss_now()
    opt.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    with torch.no_grad():
        return float(loss.detach()), float(loss_now())
