"""Light-ASD: architecture vs the published weights, weight loading errors, input features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodald_plugins.asd.features import (
    PAD_GREY,
    CropBox,
    crop_face,
    mfcc,
    mfcc_frame_count,
    resample,
    smooth_boxes,
)
from crossmodald_plugins.asd.model import LightASD
from crossmodald_plugins.asd.weights import PUBLISHED, WeightsError, load_light_asd, sha256_file

WEIGHT_FILES = ("pretrain_AVA_CVPR.model", "finetuning_TalkSet.model")


@pytest.fixture
def light_asd_dir(shared_models: Path) -> Path:
    folder = shared_models / "light-asd"
    if not folder.is_dir():
        pytest.skip(f"Light-ASD weights not available: {folder} is absent")
    return folder


@pytest.mark.parametrize("filename", WEIGHT_FILES)
def test_published_weights_load_strictly(light_asd_dir: Path, filename: str) -> None:
    path = light_asd_dir / filename
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = LightASD()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    # NOTES.md: 1,026,146 numbers in the state dict (parameters and BatchNorm buffers).
    assert sum(v.numel() for v in model.state_dict().values()) == 1_026_146
    loaded = load_light_asd(path)
    assert not loaded.training
    with torch.inference_mode():
        logits = loaded(torch.randn(2, 40, 13), torch.rand(2, 10, 112, 112) * 255)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_pinned_sha256_matches_the_published_files(light_asd_dir: Path) -> None:
    for entry in PUBLISHED.values():
        assert sha256_file(light_asd_dir / entry.filename) == entry.sha256


def test_shapes_follow_the_4_to_1_audio_video_steps() -> None:
    model = LightASD().eval()
    with torch.inference_mode():
        assert model.audio_embed(torch.randn(3, 4 * 25, 13)).shape == (3, 25, 128)
        assert model.visual_embed(torch.rand(3, 25, 112, 112) * 255).shape == (3, 25, 128)


def test_missing_weights_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.model"
    with pytest.raises(WeightsError, match=r"nope\.model: Light-ASD weights file not found"):
        load_light_asd(path)


def test_corrupt_weights_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.model"
    path.write_bytes(b"\x80\x02 this is not a torch file" * 10)
    with pytest.raises(WeightsError, match=r"broken\.model: not a readable PyTorch state dict"):
        load_light_asd(path)


def test_other_architecture_lists_the_mismatching_keys(tmp_path: Path) -> None:
    state = LightASD().state_dict()
    state["model.extra.weight"] = torch.zeros(3)
    del state["lossAV.FC.bias"]
    state["model.GRU.gru_forward.bias_ih_l0"] = torch.zeros(12)
    path = tmp_path / "other.model"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_light_asd(path)
    message = str(info.value)
    assert "other.model: not a Light-ASD state dict" in message
    assert "missing keys: lossAV.FC.bias" in message
    assert "unexpected keys: model.extra.weight" in message
    assert "model.GRU.gru_forward.bias_ih_l0 (12,) != (384,)" in message
    assert "\n" not in message


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.model"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match=r"list\.model: not a state dict"):
        load_light_asd(path)


# -- MFCC ---------------------------------------------------------------------------------------


def _chirp_int16() -> np.ndarray:
    t = np.arange(16000) / 16000
    x = 0.25 * np.sin(2 * np.pi * (150 + 900 * t) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.round(x * 32767).astype(np.int16)


# python_speech_features 0.6: mfcc(x_int16, 16000, numcep=13, winlen=0.025, winstep=0.010) of
# the chirp above, rows 0, 37 and 98 (computed once with that package, which the reference
# Light-ASD / TalkNet pipelines used).
PSF_ROWS = {
    0: [17.65798, 27.13412, 20.35675, 16.23596, 11.57358, 5.51868, -0.17212, -6.53749,
        -12.10359, -16.57541, -19.27768, -20.29947, -19.7122],
    37: [21.04492, 16.56231, -14.4537, -31.83746, -22.52327, 5.03275, 27.50038, 24.60386,
         1.73196, -20.433, -22.29699, -6.43067, 11.38484],
    98: [21.57926, 0.27467, -35.8367, 7.87864, 29.12555, -15.21063, -25.9668, 17.9868,
         18.50476, -21.91945, -13.42138, 19.08538, 5.55392],
}  # fmt: skip


def test_mfcc_matches_python_speech_features() -> None:
    samples = torch.from_numpy(_chirp_int16().astype(np.float32) / 32768.0)
    feats = mfcc(samples)
    assert feats.shape == (99, 13)
    for row, expected in PSF_ROWS.items():
        np.testing.assert_allclose(feats[row].numpy(), expected, atol=2e-3)


def test_mfcc_framing_and_batch() -> None:
    assert mfcc_frame_count(400) == 1
    assert mfcc_frame_count(401) == 2
    assert mfcc_frame_count(80000) == 499
    audio = torch.randn(2, 3200) * 0.1
    batched = mfcc(audio)
    assert batched.shape == (2, 19, 13)
    torch.testing.assert_close(batched[1], mfcc(audio[1]))
    with pytest.raises(ValueError, match="mfcc"):
        mfcc(torch.zeros(1, 1, 10))


def test_resample_keeps_a_tone_and_removes_what_is_above_nyquist() -> None:
    rate = 44100
    t = np.arange(rate) / rate
    tone = torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    out = resample(tone, rate).numpy()
    assert len(out) == 16000
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(out[200:-200], np.sin(2 * np.pi * 1000 * t16[200:-200]), atol=1e-3)
    alias = torch.from_numpy(np.sin(2 * np.pi * 12000 * t).astype(np.float32))
    assert float(np.abs(resample(alias, rate).numpy()[200:-200]).max()) < 1e-2


# -- face crops ---------------------------------------------------------------------------------


def test_crop_follows_the_reference_geometry() -> None:
    # A face box of side 200 centred at (300, 250). The reference crop keeps, of the box
    # widened by 40 %, the centre half: rows cy - 0.3 bs .. cy + 1.1 bs, columns cx +/- 0.7 bs
    # (bs = 100). Mark the pixel at (cx, cy + 0.4 bs), the crop's centre.
    luma = np.full((600, 600), 16, np.uint8)
    luma[286:295, 296:305] = 235
    crop = crop_face(luma, CropBox(cx=300.0, cy=250.0, half=100.0))
    assert crop.shape == (112, 112)
    ys, xs = np.nonzero(crop > 128)
    assert abs(float(ys.mean()) - 56) <= 2
    assert abs(float(xs.mean()) - 56) <= 2
    # limited-range luma is stretched to full range: 16 -> 0, 235 -> 255
    assert int(crop.min()) == 0
    assert int(crop.max()) == 255


def test_crop_pads_outside_the_picture_with_grey() -> None:
    luma = np.full((100, 100), 128, np.uint8)
    crop = crop_face(luma, CropBox(cx=95.0, cy=95.0, half=60.0), limited_range=False)
    assert int(crop[-1, -1]) == PAD_GREY
    assert int(crop[0, 0]) == 128


def test_smooth_boxes_is_a_13_frame_median() -> None:
    boxes = [CropBox(100.0, 100.0, 50.0)] * 20
    boxes[10] = CropBox(400.0, 100.0, 50.0)  # one wild detection
    smoothed = smooth_boxes(boxes)
    assert smoothed[10].cx == 100.0
    assert len(smoothed) == 20


def _clip_audio_16k(path: Path) -> torch.Tensor:
    from crossmodald.service.evaluate import decode_media

    media = decode_media(path)
    return resample(torch.from_numpy(media.audio), media.audio_rate, 16_000)


def test_mfccs_sit_where_the_ava_checkpoint_was_trained(
    light_asd_dir: Path, shared_media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first audio layer's BatchNorm statistics are the training MFCCs' fingerprint: ours must
    match the AVA checkpoint's within a few hundredths of a running SD (a wrong sample scale,
    pre-emphasis or framing moves it by tenths)."""
    from crossmodald_plugins.asd import features
    from crossmodald_plugins.asd.diagnostics import FIRST_AUDIO_LAYER, batchnorm_gap

    audio = [
        _clip_audio_16k(shared_media / name)
        for name in ("talkinghead_hdtf_aoc_25fps.mp4", "talkinghead_hdtf_markey_25fps.mp4")
    ]
    ava = load_light_asd(light_asd_dir / "pretrain_AVA_CVPR.model")

    def feed(model: LightASD, rate: int = 16_000) -> float:
        return batchnorm_gap(
            model,
            lambda: [model.audio_embed(mfcc(resample(a, 16_000, rate))[None]) for a in audio],
            FIRST_AUDIO_LAYER,
        )

    assert feed(ava) < 0.08
    # The same check tells features without the reference's pre-emphasis apart.
    monkeypatch.setattr(features, "PREEMPHASIS", 0.0)
    assert feed(ava) > 0.12
    monkeypatch.undo()
    # The TalkSet fine-tune's statistics are those of 44.1/48 kHz audio framed as if it were
    # 16 kHz, not of 16 kHz audio: that checkpoint cannot be fed like the reference pipeline.
    talkset = load_light_asd(light_asd_dir / "finetuning_TalkSet.model")
    assert feed(talkset, 48_000) < 0.08 < 0.2 < feed(talkset)


def test_batchnorm_gap_rejects_a_name_that_is_no_batchnorm() -> None:
    from crossmodald_plugins.asd.diagnostics import batchnorm_gap

    model = LightASD().eval()
    with pytest.raises(ValueError, match="not a BatchNorm"):
        batchnorm_gap(model, lambda: None, ("model.audioEncoder.block1.m_3",))
    with pytest.raises(ValueError, match="no input reached"):
        batchnorm_gap(model, lambda: None, ("model.audioEncoder.block1.bn_m_3",))
