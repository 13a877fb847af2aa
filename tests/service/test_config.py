"""Config loading and validation: every error with its key path, expected and got."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from crossmodald.service.config import (
    ConfigError,
    load_config,
    load_config_text,
    parse_frame_rate,
)

REPO = Path(__file__).resolve().parents[2]


def test_embedded_default_is_the_repo_file_and_valid() -> None:
    config = load_config(None)
    assert config.sources[0].type == "pattern"
    assert config.plugins == [{"type": "avsync"}]
    assert config.api.host == "127.0.0.1"
    assert config.api.port == 8750
    assert load_config(REPO / "configs" / "default.toml") == config


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (25, Fraction(25)),
        (30, Fraction(30)),
        (29.97, Fraction(30000, 1001)),
        ("30000/1001", Fraction(30000, 1001)),
        (59.94, Fraction(60000, 1001)),
        (23.976, Fraction(24000, 1001)),
        (12.5, Fraction(25, 2)),
    ],
)
def test_frame_rates(value: object, expected: Fraction) -> None:
    assert parse_frame_rate(value) == expected


def test_every_error_is_reported_with_its_path() -> None:
    text = """
[[sources]]
type = "pattern"
name = "a"
fps = "fast"
colour = "red"

[[sources]]
type = "media"
name = "b"

[[sources]]
type = "webcam"
name = "c"

[window]
hop_s = "x"

[api]
port = 70000
"""
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "bad.toml")
    errors = info.value.errors
    assert any(e.startswith("sources.0.fps: expected a frame rate") for e in errors)
    assert "sources.0.colour: unknown key" in errors
    assert "sources.1.url: required key is missing" in errors
    # An unknown type names the installed ones.
    assert (
        "sources.2.type: unknown source type (installed: device, media, pattern, rtsp, whep) (got 'webcam')"
        in errors
    )
    assert any(e.startswith("window.hop_s:") and "'x'" in e for e in errors)
    assert any(e.startswith("api.port:") and "70000" in e for e in errors)
    assert str(info.value).startswith("bad.toml: ")


def test_not_toml_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_text("[[sources]\n", "x.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_duplicate_names_and_hop_longer_than_window() -> None:
    with pytest.raises(ConfigError, match="duplicate source name 'a'"):
        load_config_text(
            '[[sources]]\ntype="pattern"\nname="a"\n[[sources]]\ntype="pattern"\nname="a"\n'
        )
    with pytest.raises(ConfigError, match="hop_s must not exceed"):
        load_config_text("[window]\nlength_s = 1\nhop_s = 2\n")
