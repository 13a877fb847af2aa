"""Plugin discovery and per-plugin config validation."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field

from crossmodald.runtime.device import DeviceError, resolve_device
from crossmodald.runtime.plugin import PluginConfig
from crossmodald.runtime.registry import PluginLoadError, PluginRegistry
from crossmodald.service.config import ConfigError


class DemoConfig(PluginConfig):
    type: Literal["demo"] = "demo"
    threshold: float = Field(0.5, ge=0, le=1)


class DemoFactory:
    """A demo plugin."""

    config_model: ClassVar[type[PluginConfig]] = DemoConfig

    @classmethod
    def create(cls, config: Any, device: str) -> Any:
        if config.threshold == 1:
            raise FileNotFoundError("weights.bin: no such file")
        return ("demo", device)


def registry() -> PluginRegistry:
    broken = EntryPoint(
        name="broken", value="no_such_module_xyz:Factory", group="crossmodald.plugins"
    )
    return PluginRegistry({"demo": DemoFactory, "broken": broken})


def test_entry_point_group_lists_builtin_avsync() -> None:
    assert "avsync" in PluginRegistry.discover().names()


def test_validate_uses_the_plugins_own_model() -> None:
    loaded = registry().validate([{"type": "demo", "threshold": 0.7}], "cfg.toml")
    assert loaded[0].config == DemoConfig(threshold=0.7)


def test_errors_name_the_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        registry().validate(
            [
                {"type": "demo", "threshold": 2, "colour": "red"},
                {"type": "nope"},
                {"threshold": 1},
            ],
            "cfg.toml",
        )
    errors = info.value.errors
    assert any(e.startswith("plugins.0.threshold:") for e in errors)
    assert "plugins.0.colour: unknown key" in errors
    assert any(e.startswith("plugins.1.type: unknown plugin 'nope'") for e in errors)
    assert any(e.startswith("plugins.2.type: required key is missing") for e in errors)


def test_broken_plugin_fails_when_enabled_and_warns_when_disabled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ConfigError) as info:
        registry().validate([{"type": "broken"}], "cfg.toml")
    assert "cannot import no_such_module_xyz:Factory" in info.value.errors[0]
    assert registry().validate([{"type": "broken", "enabled": False}], "cfg.toml") == []
    assert "disabled plugin not loadable" in caplog.text


def test_disabled_plugins_are_not_loaded_and_duplicates_rejected() -> None:
    assert registry().validate([{"type": "demo", "enabled": False}], "c") == []
    with pytest.raises(ConfigError, match="configured twice"):
        registry().validate([{"type": "demo"}, {"type": "demo"}], "c")


def test_create_wraps_load_failures_in_one_line() -> None:
    reg = registry()
    [loaded] = reg.validate([{"type": "demo", "threshold": 1}], "c")
    with pytest.raises(PluginLoadError, match=r"plugin .demo.: failed to load: weights\.bin"):
        reg.create(loaded, "cpu")


def test_device_resolution() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_torch_threads_default_leaves_a_core_for_the_event_loop() -> None:
    import os

    import torch

    from crossmodald.runtime.device import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads(3) == 3
        assert torch.get_num_threads() == 3
        expected = max(1, len(os.sched_getaffinity(0)) // 2)
        assert configure_threads(None) == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
