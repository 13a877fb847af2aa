"""The Light-ASD network (Liao et al., CVPR 2023), written to load the published state dicts.

Module and parameter names follow the published checkpoints exactly (``model.visualEncoder.*``,
``model.audioEncoder.*``, ``model.GRU.*``, ``lossAV.FC.*``, ``lossV.FC.*``) so that
``load_state_dict(..., strict=True)`` proves the architecture matches, key by key and shape by
shape.

Shapes:
    visual input: (B, T, 112, 112) grey face crops, uint8-valued floats in [0, 255], 25 fps.
    audio input: (B, 4T, 13) MFCCs, 100 per second.
    output: (B, T) speaking log-odds (of the 128->2 audio-visual head's softmax).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Normalisation of the grey face crops the network was trained with.
VISUAL_MEAN = 0.4161
VISUAL_STD = 0.1688
#: Face crop side, pixels.
CROP_SIDE = 112
#: MFCC coefficients per audio step.
N_MFCC = 13
#: Audio steps (10 ms MFCC frames) per video frame (40 ms at 25 fps).
AUDIO_STEPS_PER_FRAME = 4
#: Embedding width shared by both encoders and the GRUs.
EMBED_DIM = 128

# Every BatchNorm of the published model uses these (eps matters at inference).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _bn3d(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class VisualBlock(nn.Module):
    """Two (spatial k x k, then temporal k) branches for k = 3 and 5, summed, then a 1x1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, *, downsample: bool) -> None:
        super().__init__()
        stride = (1, 2, 2) if downsample else (1, 1, 1)
        self.s_3 = nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride, (0, 1, 1), bias=False)
        self.bn_s_3 = _bn3d(out_channels)
        self.t_3 = nn.Conv3d(out_channels, out_channels, (3, 1, 1), 1, (1, 0, 0), bias=False)
        self.bn_t_3 = _bn3d(out_channels)
        self.s_5 = nn.Conv3d(in_channels, out_channels, (1, 5, 5), stride, (0, 2, 2), bias=False)
        self.bn_s_5 = _bn3d(out_channels)
        self.t_5 = nn.Conv3d(out_channels, out_channels, (5, 1, 1), 1, (2, 0, 0), bias=False)
        self.bn_t_5 = _bn3d(out_channels)
        self.last = nn.Conv3d(out_channels, out_channels, 1, bias=False)
        self.bn_last = _bn3d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn_s_3(self.s_3(x)))
        a = self.relu(self.bn_t_3(self.t_3(a)))
        b = self.relu(self.bn_s_5(self.s_5(x)))
        b = self.relu(self.bn_t_5(self.t_5(b)))
        out: Tensor = self.relu(self.bn_last(self.last(a + b)))
        return out


class AudioBlock(nn.Module):
    """The 2-D twin of :class:`VisualBlock`: frequency k x 1 then time 1 x k, k = 3 and 5."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.m_3 = nn.Conv2d(in_channels, out_channels, (3, 1), padding=(1, 0), bias=False)
        self.bn_m_3 = _bn2d(out_channels)
        self.t_3 = nn.Conv2d(out_channels, out_channels, (1, 3), padding=(0, 1), bias=False)
        self.bn_t_3 = _bn2d(out_channels)
        self.m_5 = nn.Conv2d(in_channels, out_channels, (5, 1), padding=(2, 0), bias=False)
        self.bn_m_5 = _bn2d(out_channels)
        self.t_5 = nn.Conv2d(out_channels, out_channels, (1, 5), padding=(0, 2), bias=False)
        self.bn_t_5 = _bn2d(out_channels)
        self.last = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_last = _bn2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn_m_3(self.m_3(x)))
        a = self.relu(self.bn_t_3(self.t_3(a)))
        b = self.relu(self.bn_m_5(self.m_5(x)))
        b = self.relu(self.bn_t_5(self.t_5(b)))
        out: Tensor = self.relu(self.bn_last(self.last(a + b)))
        return out


class VisualEncoder(nn.Module):
    """(B, 1, T, 112, 112) normalised crops -> (B, T, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = VisualBlock(1, 32, downsample=True)
        self.pool1 = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.block2 = VisualBlock(32, 64, downsample=False)
        self.pool2 = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.block3 = VisualBlock(64, 128, downsample=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)  # (B, C, T, H, W)
        # Global spatial max-pool per frame.
        return x.amax(dim=(3, 4)).transpose(1, 2)


class AudioEncoder(nn.Module):
    """(B, 1, 13, 4T) MFCCs -> (B, T, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = AudioBlock(1, 32)
        self.pool1 = nn.MaxPool2d((1, 3), (1, 2), (0, 1))
        self.block2 = AudioBlock(32, 64)
        self.pool2 = nn.MaxPool2d((1, 3), (1, 2), (0, 1))
        self.block3 = AudioBlock(64, 128)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)  # (B, C, 13, T)
        return x.mean(dim=2).transpose(1, 2)


class BGRU(nn.Module):
    """A forward GRU, then a second GRU over the time-reversed result, each followed by GELU.

    The two run in sequence (not side by side as in ``nn.GRU(bidirectional=True)``): the second
    GRU reads the first one's output backwards in time.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru_forward = nn.GRU(channels, channels, num_layers=1, batch_first=True)
        self.gru_backward = nn.GRU(channels, channels, num_layers=1, batch_first=True)
        self.gelu = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x, _ = self.gru_forward(x)
        x = self.gelu(x)
        x, _ = self.gru_backward(torch.flip(x, dims=[1]))
        out: Tensor = self.gelu(torch.flip(x, dims=[1]))
        return out


class ASDModel(nn.Module):
    """Encoders and the audio-visual backend (the published ``model.`` prefix)."""

    def __init__(self) -> None:
        super().__init__()
        self.visualEncoder = VisualEncoder()
        self.audioEncoder = AudioEncoder()
        self.GRU = BGRU(EMBED_DIM)

    def forward_visual_frontend(self, crops: Tensor) -> Tensor:
        """(B, T, 112, 112) grey crops in [0, 255] -> (B, T, 128) visual embeddings."""
        x = crops.unsqueeze(1).float()
        x = (x / 255.0 - VISUAL_MEAN) / VISUAL_STD
        out: Tensor = self.visualEncoder(x)
        return out

    def forward_audio_frontend(self, mfcc: Tensor) -> Tensor:
        """(B, 4T, 13) MFCCs -> (B, T, 128) audio embeddings."""
        out: Tensor = self.audioEncoder(mfcc.float().unsqueeze(1).transpose(2, 3))
        return out

    def forward_audio_visual_backend(self, audio_embed: Tensor, visual_embed: Tensor) -> Tensor:
        """Fuse by summing, then the two GRUs: (B, T, 128)."""
        out: Tensor = self.GRU(audio_embed + visual_embed)
        return out


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.FC = nn.Linear(EMBED_DIM, 2)


class LightASD(nn.Module):
    """The whole published checkpoint: network, audio-visual head and visual-only head."""

    def __init__(self) -> None:
        super().__init__()
        self.model = ASDModel()
        self.lossAV = _Head()
        # Trained as an auxiliary visual-only head; kept so that strict loading checks every key.
        self.lossV = _Head()

    def visual_embed(self, crops: Tensor) -> Tensor:
        """(B, T, 112, 112) grey crops -> (B, T, 128)."""
        return self.model.forward_visual_frontend(crops)

    def audio_embed(self, mfcc: Tensor) -> Tensor:
        """(B, 4T, 13) MFCCs -> (B, T, 128)."""
        return self.model.forward_audio_frontend(mfcc)

    def fuse(self, audio_embed: Tensor, visual_embed: Tensor) -> Tensor:
        """(B, T, 128) embeddings of both -> (B, T) speaking log-odds.

        The head was trained through a two-way softmax, so the speaking probability is
        ``softmax(logits)[1] = sigmoid(logit_1 - logit_0)``; the difference is returned. (The
        second logit alone, which the reference demo thresholds at 0, carries a common-mode
        part that moves with the input and is no probability under ``sigmoid``.)
        """
        fused = self.model.forward_audio_visual_backend(audio_embed, visual_embed)
        logits: Tensor = self.lossAV.FC(fused)
        return logits[..., 1] - logits[..., 0]

    def forward(self, mfcc: Tensor, crops: Tensor) -> Tensor:
        """Speaking log-odds (B, T) for MFCCs (B, 4T, 13) and grey crops (B, T, 112, 112)."""
        return self.fuse(self.audio_embed(mfcc), self.visual_embed(crops))
