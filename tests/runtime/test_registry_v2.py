"""Plugin contract v2 in the registry: checked factories, providers added, cycles refused."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pytest

from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.compat import V1Plugin
from crossmodald.runtime.plugin import (
    BatchItem,
    MetricSpec,
    Need,
    PluginConfig,
    ProductKey,
)
from crossmodald.runtime.registry import LoadedConfig, PluginLoadError, PluginRegistry
from crossmodald.service.config import ConfigError


class Blob:
    """A product value."""


class Other:
    """Another product value."""


BLOB: ProductKey[Blob] = ProductKey("test.blob", Blob)
OTHER: ProductKey[Other] = ProductKey("test.other", Other)


class _Session:
    def update(self, window: Window, result: Any) -> list[Any]:
        return []

    def close(self) -> list[Any]:
        return []

    def status(self) -> dict[str, Any]:
        return {}


class GoodPlugin:
    provides: ProductKey[Any] | None = None
    metrics: Sequence[MetricSpec] = ()

    def __init__(self, name: str, provides: ProductKey[Any] | None = None) -> None:
        self.name = name
        self.provides = provides

    def check_stream(self, stream: StreamInfo) -> str | None:
        return None

    def new_state(self, stream: StreamInfo) -> None:
        return None

    def open(self, stream: StreamInfo) -> _Session:
        return _Session()

    def infer(self, batch: Sequence[BatchItem[None]]) -> list[Any]:
        return [Blob() for _ in batch]


def factory(
    name: str,
    *,
    provides: ProductKey[Any] | None = None,
    needs: tuple[Need, ...] = (),
    make: Any = None,
) -> type:
    class Config(PluginConfig):
        type: Literal[name] = name  # type: ignore[valid-type]
        optional: bool = False

        def requires(self) -> tuple[Need, ...]:
            if self.optional:
                return tuple(Need(n.key, optional=True) for n in needs)
            return needs

    class Factory:
        config_model: ClassVar[type[PluginConfig]] = Config

        @classmethod
        def create(cls, config: Any, device: str) -> Any:
            return make(config) if make is not None else GoodPlugin(name, provides)

    Factory.provides = provides  # type: ignore[attr-defined]
    return Factory


def test_validate_adds_a_missing_provider_silently_and_orders_providers_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = PluginRegistry(
        {
            "maker": factory("maker", provides=BLOB),
            "user": factory("user", needs=(Need(BLOB),)),
        }
    )
    with caplog.at_level(logging.INFO):
        loaded = reg.validate([{"type": "user"}], "test")
    assert [(x.config.type, x.silent) for x in loaded] == [("maker", True), ("user", False)]
    assert "maker added with its default config: user needs test.blob" in caplog.text
    # Configured by the user: not silent, still first.
    loaded = reg.validate([{"type": "user"}, {"type": "maker"}], "test")
    assert [(x.config.type, x.silent) for x in loaded] == [("maker", False), ("user", False)]


def test_optional_need_adds_nothing() -> None:
    reg = PluginRegistry(
        {
            "maker": factory("maker", provides=BLOB),
            "user": factory("user", needs=(Need(BLOB),)),
        }
    )
    loaded = reg.validate([{"type": "user", "optional": True}], "test")
    assert [x.config.type for x in loaded] == ["user"]


def test_missing_provider_and_cycle_are_config_errors() -> None:
    reg = PluginRegistry({"user": factory("user", needs=(Need(BLOB),))})
    with pytest.raises(
        ConfigError, match=re.escape("'user' needs test.blob, which no installed plugin")
    ):
        reg.validate([{"type": "user"}], "test")
    cyclic = PluginRegistry(
        {
            "a": factory("a", provides=BLOB, needs=(Need(OTHER),)),
            "b": factory("b", provides=OTHER, needs=(Need(BLOB),)),
        }
    )
    with pytest.raises(ConfigError, match="dependency cycle: a -> b -> a"):
        cyclic.validate([{"type": "a"}, {"type": "b"}], "test")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c: ("demo", "cpu"), "create() returned a tuple without a callable `check_stream`"),
        (lambda c: GoodPlugin("other"), "create() returned a plugin named 'other', not 'p'"),
        (lambda c: GoodPlugin("p", BLOB), "a plugin providing ProductKey('test.blob', Blob), but"),
    ],
)
def test_create_checks_what_the_factory_returns(make: Any, message: str) -> None:
    reg = PluginRegistry({"p": factory("p", make=make)})
    (loaded,) = reg.validate([{"type": "p"}], "test")
    with pytest.raises(PluginLoadError, match=re.escape(message)) as info:
        reg.create(loaded, "cpu")
    assert "\n" not in str(info.value)


def test_create_rejects_metrics_that_are_not_metric_specs() -> None:
    def make(config: Any) -> GoodPlugin:
        plugin = GoodPlugin("p")
        plugin.metrics = ["crossmodald_x"]  # type: ignore[list-item]
        return plugin

    reg = PluginRegistry({"p": factory("p", make=make)})
    (loaded,) = reg.validate([{"type": "p"}], "test")
    with pytest.raises(PluginLoadError, match="not a sequence of MetricSpec"):
        reg.create(loaded, "cpu")


def test_factory_provides_must_be_a_product_key() -> None:
    bad = factory("p")
    bad.provides = "test.blob"  # type: ignore[attr-defined]
    with pytest.raises(PluginLoadError, match="`provides` must be a ProductKey"):
        PluginRegistry({"p": bad}).factory("p")


def test_version_1_plugin_is_adapted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Old:
        name = "p"

        def check_stream(self, stream: StreamInfo) -> str | None:
            return None

        def open(self, stream: StreamInfo) -> Any:
            return None

        def infer(self, batch: Sequence[Window]) -> list[int]:
            return [len(batch)]

    reg = PluginRegistry({"p": factory("p", make=lambda c: Old())})
    (loaded,) = reg.validate([{"type": "p"}], "test")
    with caplog.at_level(logging.WARNING):
        plugin = reg.create(loaded, "cpu")
    assert isinstance(plugin, V1Plugin)
    assert "contract version 1" in caplog.text


def test_builtin_speaker_needs_faces_and_speech_and_moved_keys_say_where() -> None:
    reg = PluginRegistry.discover()
    loaded = reg.validate([{"type": "speaker"}], "test")
    assert [(x.config.type, x.silent) for x in loaded] == [
        ("faces", True),
        ("speech", True),
        ("speaker", False),
    ]
    loaded = reg.validate([{"type": "speaker", "turns": False}, {"type": "faces"}], "test")
    assert [(x.config.type, x.silent) for x in loaded] == [("faces", False), ("speaker", False)]
    with pytest.raises(ConfigError) as info:
        reg.validate([{"type": "speaker", "detect_every": 3}], "test")
    text = str(info.value)
    assert "detect_every: moved to the faces plugin" in text
    assert 'type = "faces"' in text


def test_builtin_avsync_uses_faces_only_when_configured() -> None:
    reg = PluginRegistry.discover()
    assert [x.config.type for x in reg.validate([{"type": "avsync"}], "t")] == ["avsync"]
    both = reg.validate([{"type": "avsync"}, {"type": "faces"}], "t")
    assert [x.config.type for x in both] == ["faces", "avsync"]
    assert isinstance(both[0], LoadedConfig)
