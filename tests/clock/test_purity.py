"""clock/ stays pure: plain synchronous code that imports no I/O, event, model or source layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import crossmodald.clock

CLOCK_DIR = Path(crossmodald.clock.__file__).parent
FORBIDDEN = (
    "asyncio",
    "torch",
    "aiortc",
    "av",
    "aiohttp",
    "crossmodald.bus",
    "crossmodald.ingest",
    "crossmodald.service",
    "crossmodald.runtime",
    "crossmodald.api",
)


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, relative imports resolved against crossmodald.clock."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["crossmodald", "clock"][: 3 - node.level]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append(module)
            found.extend(f"{module}.{alias.name}" for alias in node.names)
    return found


def is_forbidden(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN)


@pytest.mark.parametrize("path", sorted(CLOCK_DIR.glob("*.py")), ids=lambda p: p.name)
def test_clock_module_imports_nothing_forbidden(path: Path) -> None:
    bad = [m for m in imported_modules(path) if is_forbidden(m)]
    assert not bad, f"{path.name} imports {bad}"


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    # The check itself must catch the forms an import can take (plain, from, relative).
    path = tmp_path / "probe.py"
    path.write_text(
        "import asyncio\nfrom crossmodald.bus.events import Event\nfrom ..ingest import base\n"
    )
    assert [m for m in imported_modules(path) if is_forbidden(m)] == [
        "asyncio",
        "crossmodald.bus.events",
        "crossmodald.bus.events.Event",
        "crossmodald.ingest",
        "crossmodald.ingest.base",
    ]


def test_importing_clock_loads_no_forbidden_module() -> None:
    """At run time too (a fresh interpreter: nothing imported by other tests)."""
    code = (
        "import sys\n"
        "import crossmodald.clock, crossmodald.clock.rtcp, crossmodald.clock.drift\n"
        "import crossmodald.clock.samples, crossmodald.clock.timeline\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert [m for m in out if is_forbidden(m)] == []
