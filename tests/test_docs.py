"""User docs stay current: every config key is documented, and the README's commands exist."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from pydantic import BaseModel

from crossmodald import api_config
from crossmodald.bus.sinks import SinkRegistry
from crossmodald.cli import build_parser
from crossmodald.ingest import webrtc_config
from crossmodald.ingest.registry import SourceRegistry
from crossmodald.runtime.registry import PluginRegistry
from crossmodald.service import config as cfg
from crossmodald.service import fleet_config

REPO = Path(__file__).resolve().parents[1]


def _models() -> list[type[BaseModel]]:
    # The service composes models that each part owns (the API's, WebRTC's, every source and
    # sink type's): all of them, and every model nested in them, are checked.
    models = [
        obj
        for module in (cfg, api_config, webrtc_config, fleet_config)
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == module.__name__
        and not obj.__name__.startswith("_")
    ]
    for types in (SourceRegistry.discover(), SinkRegistry.discover()):
        for name in types.names():
            model = types.config_model(name)
            models.append(model)
            # Nested tables (a device's `camera`: `CameraConfig | None`).
            models += [
                arg
                for field in model.model_fields.values()
                for arg in (field.annotation, *getattr(field.annotation, "__args__", ()))
                if isinstance(arg, type) and issubclass(arg, BaseModel)
            ]
    registry = PluginRegistry.discover()
    models += [registry.factory(name).config_model for name in registry.names()]
    return models


def test_every_config_key_is_in_the_configuration_reference() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z_][a-z0-9_]*)`", text))
    # Sections: `[window]`, `[[sources]]`, `[api.limits]`.
    for section in re.findall(r"`\[\[?([a-z_.]+)\]\]?`", text):
        documented.update(section.split("."))
    missing = sorted(
        f"{model.__name__}.{key}"
        for model in _models()
        for key in model.model_fields
        if key not in documented and key != "type"
    )
    assert not missing, f"undocumented config keys: {missing}"


def test_the_configuration_reference_has_each_section_once() -> None:
    # A merge once left the transcript, lips and lipsync sections in twice, the second copy
    # stale (other defaults), and the speaker table's last rows inside the lipsync table.
    text = (REPO / "docs" / "configuration.md").read_text()
    headings = re.findall(r"^#+ .*$", text, flags=re.MULTILINE)
    twice = sorted({h for h in headings if headings.count(h) > 1})
    assert not twice, f"sections in twice: {twice}"


def test_readme_commands_are_real_subcommands() -> None:
    readme = (REPO / "README.md").read_text()
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    used = set(re.findall(r"^crossmodald ([a-z-]+)", readme, flags=re.MULTILINE))
    used |= set(re.findall(r"`crossmodald ([a-z-]+)", readme))
    assert used, "README names no crossmodald command"
    assert used <= subcommands, f"README names unknown commands: {used - subcommands}"


def test_extending_guide_code_is_the_example_package() -> None:
    # docs/extending.md quotes the example package (tests/extpkg) block by block; each block
    # marked with a file must still be in that file word for word, so the guide cannot drift.
    text = (REPO / "docs" / "extending.md").read_text()
    blocks = re.findall(r"<!-- from: (\S+) -->\n```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 8
    # A method is quoted dedented (the formatter dedents Markdown code blocks).
    stale = [
        f"{path}: {code.splitlines()[0]}"
        for path, code in blocks
        if not (REPO / path).is_file()
        or not any(
            textwrap.indent(code, " " * indent) in (REPO / path).read_text() for indent in (0, 4, 8)
        )
    ]
    assert not stale, f"docs/extending.md quotes code that is not in its file: {stale}"
    for name in ("LoudnessFactory", "ToneSourceFactory", "CsvSinkFactory"):
        assert name in text
