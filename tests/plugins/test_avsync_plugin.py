"""The avsync plugin contract: entry point, config model, factory, stream checks."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from pydantic import ValidationError

from crossmodald.media import StreamInfo
from crossmodald.runtime.plugin import Plugin, PluginConfig, Session
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory, AvSyncPlugin, AvSyncSession


def test_entry_point_names_the_factory() -> None:
    (ep,) = [e for e in entry_points(group="crossmodald.plugins") if e.name == "avsync"]
    assert ep.load() is AvSyncFactory
    assert AvSyncFactory.config_model is AvSyncConfig
    assert issubclass(AvSyncConfig, PluginConfig)


def test_config_defaults() -> None:
    config = AvSyncConfig(type="avsync")
    assert config.method == "auto"
    assert config.max_lag_ms == 500
    assert config.smoothing_windows == 8
    assert config.min_confidence == 0.3
    assert (config.alarm_audio_lead_ms, config.alarm_audio_lag_ms) == (90, 185)
    assert config.alarm_windows == 3
    assert config.motion_rate_hz == 100
    assert config.face_detection is True


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"method": "psychic"}, "method"),
        ({"max_lag_ms": 0}, "max_lag_ms"),
        ({"smoothing_windows": 0}, "smoothing_windows"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"alarm_audio_lead_ms": -5}, "alarm_audio_lead_ms"),
        ({"alarm_windows": 0}, "alarm_windows"),
        ({"motion_rate_hz": 5}, "motion_rate_hz"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_config_rejects_bad_values(extra: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        AvSyncConfig.model_validate({"type": "avsync", **extra})


def test_config_rejects_other_types() -> None:
    with pytest.raises(ValidationError, match="type"):
        AvSyncConfig.model_validate({"type": "faces"})


def test_factory_and_protocols() -> None:
    plugin = AvSyncFactory.create(AvSyncConfig(type="avsync"), "cpu")
    assert isinstance(plugin, AvSyncPlugin)
    assert isinstance(plugin, Plugin)
    assert plugin.name == "avsync"
    assert plugin.infer([]) == []
    session = plugin.open(StreamInfo("a", "pattern", True, True))
    assert isinstance(session, AvSyncSession)
    assert isinstance(session, Session)
    with pytest.raises(TypeError, match="AvSyncConfig"):
        AvSyncFactory.create(PluginConfig(type="avsync"), "cpu")


def test_check_stream() -> None:
    plugin = AvSyncFactory.create(AvSyncConfig(type="avsync"), "cpu")
    assert plugin.check_stream(StreamInfo("a", "media", True, True)) is None
    assert plugin.check_stream(StreamInfo("a", "media", True, False)) == "has no audio"
    assert plugin.check_stream(StreamInfo("a", "media", False, True)) == "has no video"
    with pytest.raises(ValueError, match="'mic' has no video"):
        plugin.open(StreamInfo("mic", "device", False, True))
