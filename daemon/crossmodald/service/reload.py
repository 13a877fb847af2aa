"""Live reconfiguration: what differs between the running config and a new one.

:func:`diff_configs` compares two validated configs part by part; the daemon
(:meth:`crossmodald.service.daemon.Daemon.reload`) then starts, stops or restarts only what
changed. What can change while running:

* ``[[sources]]`` by name: added ones start, removed ones stop, changed ones restart;
* ``[[plugins]]`` by type (compared after validation, so spelling out a default is no change):
  a changed plugin is loaded anew and swapped in for every stream, the streams keep running;
* ``[window]``: every stream restarts (its windows are built from it);
* ``[[sinks]]`` by identity (a JSONL sink's is its path), ``[logging]`` and ``[service]``:
  applied in place.

``[api]`` (address, TLS, tokens, limits) and ``[runtime]`` take effect at the next restart; a reload that
changes it says so in the log and keeps serving with the running ``[api]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from crossmodald.service.config import DaemonConfig


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What changed between two configs. Names are sorted; sinks are keyed by identity.

    Attributes:
        sources_added: Source names only in the new config.
        sources_removed: Source names only in the old config.
        sources_changed: Source names in both, with different settings.
        plugins_added: Plugin types enabled only in the new config.
        plugins_removed: Plugin types enabled only in the old config.
        plugins_changed: Plugin types in both, with different settings.
        sinks_added: Sink identities only in the new config (a JSONL sink's is its path).
        sinks_removed: Sink identities only in the old config.
        sinks_changed: Sink identities in both, with different settings.
        window_changed: ``[window]`` differs (every stream restarts).
        logging_changed: ``[logging]`` differs.
        service_changed: ``[service]`` differs.
        restart_required: Keys that differ but apply only at the next restart (``api.*``).
    """

    sources_added: tuple[str, ...] = ()
    sources_removed: tuple[str, ...] = ()
    sources_changed: tuple[str, ...] = ()
    plugins_added: tuple[str, ...] = ()
    plugins_removed: tuple[str, ...] = ()
    plugins_changed: tuple[str, ...] = ()
    sinks_added: tuple[str, ...] = ()
    sinks_removed: tuple[str, ...] = ()
    sinks_changed: tuple[str, ...] = ()
    window_changed: bool = False
    logging_changed: bool = False
    service_changed: bool = False
    restart_required: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether nothing at all differs."""
        return self == ConfigDiff()

    def summary(self) -> str:
        """One line for the log and ``STATUS=``, e.g. ``sources +cam2 -cam1 ~mic; plugins ~avsync``."""
        parts: list[str] = []
        for what, added, removed, changed in (
            ("sources", self.sources_added, self.sources_removed, self.sources_changed),
            ("plugins", self.plugins_added, self.plugins_removed, self.plugins_changed),
            ("sinks", self.sinks_added, self.sinks_removed, self.sinks_changed),
        ):
            marks = [f"+{n}" for n in added] + [f"-{n}" for n in removed]
            marks += [f"~{n}" for n in changed]
            if marks:
                parts.append(f"{what} {' '.join(marks)}")
        for flag, name in (
            (self.window_changed, "window (all streams restart)"),
            (self.logging_changed, "logging"),
            (self.service_changed, "service"),
        ):
            if flag:
                parts.append(name)
        if self.restart_required:
            parts.append(f"at next restart: {', '.join(self.restart_required)}")
        return "; ".join(parts) if parts else "no changes"


def diff_configs(
    old: DaemonConfig,
    new: DaemonConfig,
    old_plugins: Mapping[str, BaseModel] | None = None,
    new_plugins: Mapping[str, BaseModel] | None = None,
) -> ConfigDiff:
    """Compare two validated configs.

    Args:
        old: The running config.
        new: The candidate config.
        old_plugins: The running plugin configs by type, as validated by each plugin's model
            (default: the raw enabled tables of ``old``).
        new_plugins: The same for ``new``.

    Returns:
        The differences.
    """
    old_sources = {s.name: s for s in old.sources}
    new_sources = {s.name: s for s in new.sources}
    old_p: Mapping[str, object] = (
        old_plugins if old_plugins is not None else _raw_plugins(old.plugins)
    )
    new_p: Mapping[str, object] = (
        new_plugins if new_plugins is not None else _raw_plugins(new.plugins)
    )
    old_sinks = {s.identity: s for s in old.sinks}
    new_sinks = {s.identity: s for s in new.sinks}
    return ConfigDiff(
        *_keyed(old_sources, new_sources),
        *_keyed(old_p, new_p),
        *_keyed(old_sinks, new_sinks),
        window_changed=old.window != new.window,
        logging_changed=old.logging != new.logging,
        service_changed=old.service != new.service,
        restart_required=(
            *(
                f"{section}.{key}"
                for section in ("api", "runtime")
                for key in _changed_keys(
                    getattr(old, section).model_dump(), getattr(new, section).model_dump()
                )
            ),
            # Fleet membership (the NATS connection, the daemon's id) is bound at start.
            *(("fleet",) if old.fleet != new.fleet else ()),
        ),
    )


def _raw_plugins(tables: list[dict[str, Any]]) -> dict[str, object]:
    return {str(t.get("type")): t for t in tables if isinstance(t, dict) and t.get("enabled", True)}


def _keyed(
    old: Mapping[str, object], new: Mapping[str, object]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    added = tuple(sorted(new.keys() - old.keys()))
    removed = tuple(sorted(old.keys() - new.keys()))
    changed = tuple(sorted(k for k in old.keys() & new.keys() if old[k] != new[k]))
    return added, removed, changed


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    # Secrets dump as SecretStr objects, which compare by value: a rotated token shows up as
    # a changed key without its value ever being printed.
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
