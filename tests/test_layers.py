"""Config flows down: nothing below ``crossmodald.service`` imports it.

``service/`` composes the parts (ingest, clock, window, runtime, bus, api); the parts take their
config as arguments and own their config models, so they import nothing of the service. Only
the entry points above it (``cli.py``, ``__main__.py``, the ``harness`` that runs a daemon over
media) and the service itself may.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "crossmodald"
PLUGINS = Path(__file__).resolve().parents[1] / "plugins" / "crossmodald_plugins"
#: Modules above the service (they run it).
ABOVE = {PACKAGE / "cli.py", PACKAGE / "__main__.py", PACKAGE / "harness.py"}


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            out.add(prefix)
            # ``from crossmodald import service`` imports the module ``crossmodald.service``.
            out.update(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def _below_service() -> list[tuple[Path, str]]:
    files = [
        (path, _module_name(path, PACKAGE, "crossmodald"))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in ABOVE and (PACKAGE / "service") not in path.parents
    ]
    files += [
        (path, _module_name(path, PLUGINS, "crossmodald_plugins"))
        for path in sorted(PLUGINS.rglob("*.py"))
    ]
    return files


def test_nothing_below_the_service_imports_it() -> None:
    offenders = [
        f"{module} imports {name}"
        for path, module in _below_service()
        for name in sorted(imported_modules(path, module))
        if name == "crossmodald.service" or name.startswith("crossmodald.service.")
    ]
    assert offenders == []


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    # The walker must catch each spelling, or the test above proves nothing.
    forms = {
        "import crossmodald.service.config": "crossmodald.service.config",
        "from crossmodald.service.config import DaemonConfig": "crossmodald.service.config",
        "from crossmodald import service": "crossmodald.service",
        "from ..service import config": "crossmodald.service.config",
        "def f():\n    from crossmodald.service.daemon import Daemon\n": "crossmodald.service.daemon",
    }
    for source, expected in forms.items():
        path = tmp_path / "mod.py"
        path.write_text(source + "\n", encoding="utf-8")
        assert expected in imported_modules(path, "crossmodald.ingest.mod"), source


def test_the_walk_covers_the_parts() -> None:
    modules = {module for _path, module in _below_service()}
    for part in ("crossmodald.ingest", "crossmodald.api.app", "crossmodald.bus.sinks"):
        assert part in modules
    assert "crossmodald.runtime.registry" in modules
    assert "crossmodald.clock.drift" in modules
    assert "crossmodald.window.windower" in modules
    assert not any(m.startswith("crossmodald.service") for m in modules)
