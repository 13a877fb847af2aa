"""Plugin discovery through the entry-point group ``crossmodald.plugins``.

Built-in plugins are found the same way as third-party ones: nothing registers itself by being
imported. Each ``[[plugins]]`` table is validated by the config model its plugin brings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import ValidationError

from crossmodald.config_errors import ConfigError, format_validation_error
from crossmodald.runtime.plugin import Plugin, PluginConfig, PluginFactory

ENTRY_POINT_GROUP = "crossmodald.plugins"

log = logging.getLogger(__name__)


class PluginLoadError(Exception):
    """A plugin that cannot be loaded (import error, bad entry point, weights missing, ...)."""


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated plugin table and the factory that will build it."""

    config: PluginConfig
    factory: type[PluginFactory]


class PluginRegistry:
    """The plugins installed on this machine, by name."""

    def __init__(self, entries: Mapping[str, EntryPoint | type[PluginFactory]]) -> None:
        self._entries = dict(entries)
        self._factories: dict[str, type[PluginFactory]] = {}

    @classmethod
    def discover(cls, group: str = ENTRY_POINT_GROUP) -> PluginRegistry:
        return cls({ep.name: ep for ep in entry_points(group=group)})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def factory(self, name: str) -> type[PluginFactory]:
        """The factory of plugin ``name``, importing it on first use."""
        if name in self._factories:
            return self._factories[name]
        entry = self._entries.get(name)
        if entry is None:
            raise PluginLoadError(f"unknown plugin {name!r} (installed: {', '.join(self.names())})")
        if isinstance(entry, EntryPoint):
            try:
                loaded: Any = entry.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"plugin {name!r}: cannot import {entry.value}: {type(exc).__name__}: {exc}"
                ) from exc
        else:
            loaded = entry
        model = getattr(loaded, "config_model", None)
        if not (isinstance(model, type) and issubclass(model, PluginConfig)):
            raise PluginLoadError(f"plugin {name!r}: {loaded!r} has no PluginConfig `config_model`")
        if not callable(getattr(loaded, "create", None)):
            raise PluginLoadError(f"plugin {name!r}: {loaded!r} has no `create`")
        factory: type[PluginFactory] = loaded
        self._factories[name] = factory
        return factory

    def validate(self, tables: Sequence[Mapping[str, Any]], source: str) -> list[LoadedConfig]:
        """Validate every ``[[plugins]]`` table; raises :class:`ConfigError` listing all problems.

        A plugin that cannot be imported is an error when the table enables it, and only a
        warning (the table is skipped) when it is disabled.
        """
        errors: list[str] = []
        out: list[LoadedConfig] = []
        seen: set[str] = set()
        for index, table in enumerate(tables):
            name = table.get("type")
            enabled = table.get("enabled", True) is not False
            if not isinstance(name, str):
                errors.append(f"plugins.{index}.type: required key is missing (a plugin name)")
                continue
            if name in seen:
                errors.append(f"plugins.{index}.type: plugin {name!r} is configured twice")
                continue
            seen.add(name)
            try:
                factory = self.factory(name)
            except PluginLoadError as exc:
                if enabled:
                    errors.append(f"plugins.{index}.type: {exc}")
                else:
                    log.warning("disabled plugin not loadable: %s", exc)
                continue
            try:
                config = factory.config_model.model_validate(dict(table))
            except ValidationError as exc:
                errors.extend(format_validation_error(exc, ("plugins", index)))
                continue
            if config.enabled:
                out.append(LoadedConfig(config, factory))
        if errors:
            raise ConfigError(source, errors)
        return out

    @staticmethod
    def create(loaded: LoadedConfig, device: str) -> Plugin:
        """Build the plugin; any failure becomes a one-line :class:`PluginLoadError`."""
        name = loaded.config.type
        try:
            return loaded.factory.create(loaded.config, device)
        except PluginLoadError:
            raise
        except Exception as exc:
            raise PluginLoadError(f"plugin {name!r}: failed to load: {exc}") from exc
