"""Plugin discovery through the entry-point group ``crossmodald.plugins``.

Built-in plugins are found the same way as third-party ones: nothing registers itself by being
imported. Each ``[[plugins]]`` table is validated by the config model its plugin brings.

Dependencies: a config's :meth:`PluginConfig.requires` names the products its plugin needs. When
an enabled consumer needs a product no enabled table provides, :meth:`PluginRegistry.validate`
adds the installed plugin that provides it, with its default config and ``silent`` (it runs
for the consumer and publishes no events of its own); enable the provider's own table to see its
events or tune it. A product nothing installed provides, or a cycle, is a config error. The
validated list is in dependency order (providers first).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from crossmodald.config_errors import ConfigError, format_validation_error
from crossmodald.entrypoints import TypeLoadError, TypeRegistry
from crossmodald.runtime.compat import as_v2, is_v1
from crossmodald.runtime.plugin import MetricSpec, Plugin, PluginConfig, PluginFactory, ProductKey

ENTRY_POINT_GROUP = "crossmodald.plugins"

log = logging.getLogger(__name__)


class PluginLoadError(TypeLoadError):
    """A plugin that cannot be loaded (import error, bad entry point, weights missing, ...)."""


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated plugin table and the factory that will build it."""

    config: PluginConfig
    factory: type[PluginFactory]
    #: Added by the registry for a consumer (no table of its own): publishes no events.
    silent: bool = False


class PluginRegistry(TypeRegistry[PluginFactory, PluginConfig]):
    """The plugins installed on this machine, by name (entry-point group ``crossmodald.plugins``).

    Args:
        entries: Plugin name -> entry point (imported on first use) or the factory class.
    """

    kind = "plugin"
    noun = "plugin"
    group = ENTRY_POINT_GROUP
    base = PluginConfig
    error = PluginLoadError

    def check_factory(self, name: str, factory: Any) -> None:
        """A factory's ``provides`` is a :class:`ProductKey` or None."""
        provides = getattr(factory, "provides", None)
        if provides is not None and not isinstance(provides, ProductKey):
            raise PluginLoadError(
                f"plugin {name!r}: `provides` must be a ProductKey or None, got {provides!r}"
            )

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
        if not errors:
            out = self._resolve(out, errors)
        if errors:
            raise ConfigError(source, errors)
        return out

    def provider_of(self, key: ProductKey[Any]) -> str | None:
        """The installed plugin providing ``key`` (imports factories as needed), or None."""
        for name in self.names():
            try:
                factory = self.factory(name)
            except PluginLoadError as exc:
                log.debug("while looking for a provider of %s: %s", key.name, exc)
                continue
            if getattr(factory, "provides", None) == key:
                return name
        return None

    def _resolve(self, configs: list[LoadedConfig], errors: list[str]) -> list[LoadedConfig]:
        """Add the providers consumers need (silent, default config); order providers first."""
        out = list(configs)
        by_key: dict[ProductKey[Any], LoadedConfig] = {}
        for loaded in out:
            provides = getattr(loaded.factory, "provides", None)
            if provides is not None:
                by_key[provides] = loaded
        pending = list(out)
        while pending:
            loaded = pending.pop(0)
            for need in loaded.config.requires():
                if need.key in by_key or need.optional:
                    continue
                name = self.provider_of(need.key)
                if name is None:
                    errors.append(
                        f"plugins: {loaded.config.type!r} needs {need.key.name}, "
                        "which no installed plugin provides"
                    )
                    continue
                factory = self.factory(name)
                try:
                    config = factory.config_model.model_validate({"type": name})
                except ValidationError as exc:
                    errors.append(f"plugins: {name!r} (needed by {loaded.config.type!r}): {exc}")
                    continue
                added = LoadedConfig(config, factory, silent=True)
                log.info(
                    "plugin %s added with its default config: %s needs %s",
                    name,
                    loaded.config.type,
                    need.key.name,
                )
                by_key[need.key] = added
                out.append(added)
                pending.append(added)
        # Dependency order (a depth-first topological sort); a cycle is a config error.
        ordered: list[LoadedConfig] = []
        marks: dict[str, str] = {}

        def visit(item: LoadedConfig, path: tuple[str, ...]) -> None:
            name = item.config.type
            if marks.get(name) == "done":
                return
            if marks.get(name) == "active":
                cycle = " -> ".join((*path[path.index(name) :], name))
                errors.append(f"plugins: dependency cycle: {cycle}")
                return
            marks[name] = "active"
            for need in item.config.requires():
                provider = by_key.get(need.key)
                if provider is not None:
                    visit(provider, (*path, name))
            marks[name] = "done"
            ordered.append(item)

        for item in out:
            visit(item, ())
        return ordered

    @staticmethod
    def create(loaded: LoadedConfig, device: str) -> Plugin[Any, Any]:
        """Build the plugin and check what the factory returned.

        Raises:
            PluginLoadError: One line: the factory failed, or returned something that is not a
                :class:`Plugin` of this name whose ``provides`` matches the factory's.
        """
        name = loaded.config.type
        try:
            plugin: object = loaded.factory.create(loaded.config, device)
        except PluginLoadError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PluginLoadError(f"plugin {name!r}: failed to load: {first}") from exc
        if is_v1(plugin):
            log.warning(
                "plugin %s keeps plugin contract version 1 (infer on windows); adapted: it gets "
                "no per-stream state, products or metrics",
                name,
            )
            plugin = as_v2(plugin)
        problem = _plugin_problem(plugin, name, getattr(loaded.factory, "provides", None))
        if problem is not None:
            raise PluginLoadError(f"plugin {name!r}: create() returned {problem}")
        return plugin  # type: ignore[return-value]


_METHODS = ("check_stream", "new_state", "open", "infer")


def _plugin_problem(plugin: object, name: str, provides: object) -> str | None:
    """Why ``plugin`` does not keep the contract, or None."""
    what = type(plugin).__name__
    for method in _METHODS:
        if not callable(getattr(plugin, method, None)):
            return f"a {what} without a callable `{method}` (not a Plugin)"
    if getattr(plugin, "name", None) != name:
        return f"a plugin named {getattr(plugin, 'name', None)!r}, not {name!r}"
    got = getattr(plugin, "provides", None)
    if got != provides:
        return f"a plugin providing {got!r}, but its factory declares {provides!r}"
    metrics = getattr(plugin, "metrics", None)
    if not isinstance(metrics, list | tuple) or not all(isinstance(m, MetricSpec) for m in metrics):
        return f"a plugin whose `metrics` is not a sequence of MetricSpec ({metrics!r})"
    return None
