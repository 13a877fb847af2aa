"""What is installed: the plugins, source types and sink types the daemon finds by entry point.

Behind ``crossmodald plugins``: one :class:`InstalledType` per entry point of the groups
``crossmodald.plugins``, ``crossmodald.sources`` and ``crossmodald.sinks``, with the package
(distribution) that installed it, so that a user sees what a third-party package added. Every
entry point is imported; one that cannot be is listed with its error instead of a description.

The description is the first docstring line of, in this order, the type's config model, its
factory, the factory's module and the module its entry point names, skipping lines that only
say what the class is for the machinery ("Entry point ``x`` of group ...", "A ``[[sinks]]``
table of type ``x``."); reStructuredText markup and a leading "The x plugin: " (the row
names it) are removed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TextIO

from crossmodald.entrypoints import TypeLoadError, TypeRegistry

__all__ = ["InstalledType", "NeedInfo", "Package", "format_json", "format_table", "list_installed"]

#: Kinds in the order they are listed, with the heading of each.
KINDS = ("plugin", "source", "sink")
_HEADINGS = {"plugin": "Plugins", "source": "Source types", "sink": "Sink types"}

# Docstring first lines that describe the class's role in the machinery, not what it does.
_BOILERPLATE = re.compile(
    r"entry[ -]point|\[\[(plugins|sources|sinks)\]\]\s+table|^what every\b", re.IGNORECASE
)
# Narrowest description column worth wrapping into; narrower, it goes under its row.
_MIN_COLUMN = 40
_NEEDS_NOTE = (
    "NEEDS: what a plugin with its default settings uses from other plugins (their PROVIDES); "
    "a provider that is not configured is added for it, unless the need is optional."
)
# :class:`~a.b.C` -> C, :func:`f` -> f, ``x`` -> x.
_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]*\.)?([^`]+)`")
# "The faces plugin: face tracks ..." says what the code is; the row already names it.
_SELF_NAMING = re.compile(r"^the [\w.-]+ (?:plugin|source|sink)(?: type)?: ", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Package:
    """The distribution an entry point comes from."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True, slots=True)
class NeedInfo:
    """A product a plugin's default config needs."""

    product: str
    optional: bool = False

    def __str__(self) -> str:
        return self.product + (" (optional)" if self.optional else "")


@dataclass(frozen=True, slots=True)
class InstalledType:
    """One installed plugin, source type or sink type.

    Attributes:
        kind: ``"plugin"``, ``"source"`` or ``"sink"``.
        name: The name a config's ``type`` key gives.
        group: The entry-point group it was found in.
        description: One line saying what it does ("" when nothing says).
        package: The distribution that installed it (None: not from an installed distribution).
        provides: Plugins: the product key name it provides to other plugins, or None.
        requires: Plugins: the products its default config needs; None when its default
            config is not valid on its own (it needs settings) or it cannot be loaded.
        error: Why it cannot be loaded (one line), or None.
    """

    kind: str
    name: str
    group: str
    description: str = ""
    package: Package | None = None
    provides: str | None = None
    requires: tuple[NeedInfo, ...] | None = field(default=())
    error: str | None = None


def _registries() -> dict[str, TypeRegistry[Any, Any]]:
    # Imported here: each registry module imports its kind's base classes.
    from crossmodald.bus.sinks import SinkRegistry
    from crossmodald.ingest.registry import SourceRegistry
    from crossmodald.runtime.registry import PluginRegistry

    return {
        "plugin": PluginRegistry.discover(),
        "source": SourceRegistry.discover(),
        "sink": SinkRegistry.discover(),
    }


def list_installed(
    registries: dict[str, TypeRegistry[Any, Any]] | None = None,
) -> list[InstalledType]:
    """Every installed plugin, source type and sink type, by kind then name.

    Args:
        registries: Kind (``"plugin"``, ``"source"``, ``"sink"``) -> registry (default: the
            installed ones, discovered now).
    """
    found = registries if registries is not None else _registries()
    out: list[InstalledType] = []
    for kind in KINDS:
        registry = found.get(kind)
        if registry is not None:
            out.extend(_describe(kind, registry, name) for name in registry.names())
    return out


def _describe(kind: str, registry: TypeRegistry[Any, Any], name: str) -> InstalledType:
    entry = registry.entry_point(name)
    dist = getattr(entry, "dist", None) if entry is not None else None
    package = Package(dist.name, dist.version) if dist is not None else None
    base = InstalledType(kind, name, registry.group, package=package)
    try:
        factory: Any = registry.factory(name)
    except TypeLoadError as exc:
        return _failed(base, str(exc))
    try:
        model = factory.config_model
        modules = [factory.__module__, entry.module if entry is not None else None]
        description = _first_line(model, factory, *(sys.modules.get(m or "") for m in modules))
        if kind != "plugin":
            return replace(base, description=description)
        provides = getattr(factory, "provides", None)
        return replace(
            base,
            description=description,
            provides=provides.name if provides is not None else None,
            requires=_default_needs(model, name),
        )
    except Exception as exc:  # a third party's model or requires() failing: list, go on
        return _failed(base, f"{type(exc).__name__}: {exc}")


def _failed(base: InstalledType, message: str) -> InstalledType:
    # The registry's messages start with "plugin 'x': "; the row already names it.
    message = message.strip().splitlines()[0] if message.strip() else "cannot be loaded"
    for prefix in (f"{base.kind} {base.name!r}: ", f"{base.kind} type {base.name!r}: "):
        message = message.removeprefix(prefix)
    return replace(base, requires=None, error=message)


def _default_needs(model: Any, name: str) -> tuple[NeedInfo, ...] | None:
    from pydantic import ValidationError

    try:
        config = model.model_validate({"type": name})
    except ValidationError:
        return None
    return tuple(NeedInfo(need.key.name, need.optional) for need in config.requires())


def _first_line(*objects: object) -> str:
    for obj in objects:
        doc = getattr(obj, "__doc__", None) if obj is not None else None
        if not isinstance(doc, str) or not doc.strip():
            continue
        line = _ROLE.sub(r"\1", doc.strip().splitlines()[0].strip()).replace("``", "")
        if line and not _BOILERPLATE.search(line):
            line = _SELF_NAMING.sub("", line)
            return line[:1].upper() + line[1:]
    return ""


def format_json(items: Sequence[InstalledType]) -> str:
    """The listing as one JSON object: ``{"plugins": [...], "sources": [...], "sinks": [...]}``.

    Each item has ``name``, ``group``, ``description``, ``package`` (``{"name", "version"}`` or
    null) and ``error`` (null when it loads); plugins also ``provides`` (a product name or null)
    and ``requires`` (``[{"product", "optional"}]``, or null when the default config is not
    valid on its own).
    """
    out: dict[str, list[dict[str, Any]]] = {f"{kind}s": [] for kind in KINDS}
    for item in items:
        row = asdict(item)
        row.pop("kind")
        if item.kind != "plugin":
            row.pop("provides")
            row.pop("requires")
        out[f"{item.kind}s"].append(row)
    return json.dumps(out, indent=2)


def format_table(items: Sequence[InstalledType], width: int | None = None) -> str:
    """The listing as aligned tables under a heading per kind.

    Args:
        items: What :func:`list_installed` returned.
        width: The terminal's width: the description (or error) column is wrapped to it, or,
            where that column would be narrower than 40 characters, goes on its own line under
            each row. None: one line per row, however long.
    """
    lines: list[str] = []
    for kind in KINDS:
        rows = [item for item in items if item.kind == kind]
        group = rows[0].group if rows else f"crossmodald.{kind}s"
        if lines:
            lines.append("")
        lines.append(f"{_HEADINGS[kind]} (entry-point group {group}):")
        if not rows:
            lines.append("  (none installed)")
            continue
        header = ["NAME"]
        if kind == "plugin":
            header += ["PROVIDES", "NEEDS"]
        header += ["PACKAGE", "DESCRIPTION"]
        table = [header]
        for item in rows:
            cells = [item.name]
            if kind == "plugin":
                provides = "?" if item.error is not None else item.provides or "-"
                cells += [provides, _needs_cell(item)]
            text = f"ERROR: {item.error}" if item.error is not None else item.description
            cells += [str(item.package) if item.package else "-", text]
            table.append(cells)
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        indent = 2 + sum(w + 2 for w in widths)
        below = width is not None and width - indent < _MIN_COLUMN
        for number, row in enumerate(table):
            left = "  " + "".join(c.ljust(w + 2) for c, w in zip(row, widths, strict=False))
            if not below:
                parts = _wrap(row[-1], width, indent)
                lines.append((left + parts[0]).rstrip())
                lines.extend(" " * indent + part for part in parts[1:])
            else:
                lines.append(left.rstrip())
                if number and row[-1]:
                    lines.extend(" " * 6 + part for part in _wrap(row[-1], width, 6))
    if any(item.kind == "plugin" for item in items):
        lines.append("")
        lines += _wrap(_NEEDS_NOTE, width, 0)
    return "\n".join(lines)


def _needs_cell(item: InstalledType) -> str:
    if item.error is not None:
        return "?"
    if item.requires is None:
        return "(needs settings)"
    return ", ".join(map(str, item.requires)) or "-"


def _wrap(text: str, width: int | None, indent: int) -> list[str]:
    room = (width or 0) - indent
    if width is None or room < 1 or len(text) <= room:
        return [text]
    return textwrap.wrap(text, room, break_on_hyphens=False) or [text]


def print_installed(fmt: str = "table", out: TextIO | None = None) -> int:
    """Print the listing (``fmt``: ``"table"`` or ``"json"``); 1 if any type cannot be loaded.

    On a terminal the last column is wrapped to its width, so that the other columns stay
    readable.
    """
    stream = out if out is not None else sys.stdout
    items = list_installed()
    if fmt == "json":
        print(format_json(items), file=stream)
    else:
        width = shutil.get_terminal_size().columns if stream.isatty() else None
        print(format_table(items, width), file=stream)
    return 1 if any(item.error is not None for item in items) else 0
