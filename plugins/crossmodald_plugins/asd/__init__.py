"""Active speaker detection (Light-ASD) and lip-sync offsets from talking faces.

Public API::

    from crossmodald_plugins.asd import (
        LightASD,                 # the network; loads the published state dicts strictly
        load_light_asd,           # path -> LightASD in eval mode, WeightsError on bad files
        fetch_weights,            # download a published file with its pinned sha256
        models_fetch_command,     # `crossmodald models fetch NAME [--dest DIR] [--url URL]`
        SpeakerFactory,           # entry point `speaker` (config: SpeakerConfig)
    )
"""

from __future__ import annotations

from crossmodald_plugins.products import FaceSpeaking

from .model import LightASD
from .plugin import (
    OffsetEstimate,
    SpeakerConfig,
    SpeakerFactory,
    SpeakerPlugin,
    SpeakerResult,
    SpeakerSession,
)
from .weights import (
    PUBLISHED,
    WeightsError,
    default_models_dir,
    fetch_weights,
    load_light_asd,
    models_fetch_command,
)

__all__ = [
    "PUBLISHED",
    "FaceSpeaking",
    "LightASD",
    "OffsetEstimate",
    "SpeakerConfig",
    "SpeakerFactory",
    "SpeakerPlugin",
    "SpeakerResult",
    "SpeakerSession",
    "WeightsError",
    "default_models_dir",
    "fetch_weights",
    "load_light_asd",
    "models_fetch_command",
]
