"""How far inputs sit from what a Light-ASD checkpoint saw in training.

Every BatchNorm keeps the running mean and variance of its input over the training data. Run
the network on this project's inputs and compare: a gap of a few hundredths of a running SD at
the first layer means the features are computed as in training; tenths mean another pipeline
(another sample rate, scale or framing). The first audio layer is linear in the MFCCs, so its gap
is a direct check of the audio features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .model import LightASD

#: The first audio layer's BatchNorms (after the 3x1 and 5x1 frequency convolutions).
FIRST_AUDIO_LAYER = ("model.audioEncoder.block1.bn_m_3", "model.audioEncoder.block1.bn_m_5")
#: The first visual layer's BatchNorms (after the 3x3 and 5x5 spatial convolutions).
FIRST_VISUAL_LAYER = ("model.visualEncoder.block1.bn_s_3", "model.visualEncoder.block1.bn_s_5")


@torch.inference_mode()
def batchnorm_gap(model: LightASD, run: Callable[[], object], layers: tuple[str, ...]) -> float:
    """Mean over channels and ``layers`` of |input mean - running mean| / running SD.

    Args:
        model: The network, in eval mode.
        run: Feeds the inputs through ``model`` (its result is ignored); channel means are
            averaged over every call it makes.
        layers: Qualified names of BatchNorm modules of ``model``.

    Raises:
        ValueError: A name is not a BatchNorm of ``model``, or ``run`` never reached it.
    """
    modules = dict(model.named_modules())
    means: dict[str, list[Tensor]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        module = modules.get(name)
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"batchnorm_gap: {name!r} is not a BatchNorm of the model")

        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor, name: str = name) -> None:
            x = inputs[0]
            means[name].append(x.mean(dim=[0, *range(2, x.ndim)]))

        handles.append(module.register_forward_hook(hook))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    gaps = []
    for name in layers:
        if not means[name]:
            raise ValueError(f"batchnorm_gap: no input reached {name!r}")
        bn = modules[name]
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        assert bn.running_mean is not None
        assert bn.running_var is not None
        mean = torch.stack(means[name]).mean(dim=0)
        gaps.append(((mean - bn.running_mean) / bn.running_var.sqrt()).abs().mean())
    return float(torch.stack(gaps).mean())
