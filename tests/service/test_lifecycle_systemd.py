"""The shipped systemd unit, sysusers.d and tmpfiles.d files, checked by systemd's own tools."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crossmodald.cli import build_parser
from crossmodald.service.config import ServiceConfig

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "crossmodald.service"
REPO = SYSTEMD.parent
#: Where the documented install puts the command (a venv under /opt: Debian 12's own Python
#: refuses `pip install` as root, PEP 668 "externally-managed-environment").
VENV = "/opt/crossmodald"
VENV_COMMAND = f"{VENV}/bin/crossmodald"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt package 'systemd')")
    return path


def _unit_values() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def _seconds(value: str) -> float:
    found = re.fullmatch(r"(\d+)(s|min)?", value)
    assert found, value
    return float(found.group(1)) * (60 if found.group(2) == "min" else 1)


def _installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this machine's crossmodald (verify checks it)."""
    command = shutil.which("crossmodald")
    if command is None:
        pytest.skip("the crossmodald command is not installed (pip install -e .)")
    copy = tmp_path / "crossmodald.service"
    copy.write_text(UNIT.read_text().replace(VENV_COMMAND, command))
    return copy


def test_unit_settings() -> None:
    v = _unit_values()
    assert v["Service.Type"] == ["notify"]
    assert v["Service.NotifyAccess"] == ["main"]
    assert v["Service.Restart"] == ["on-failure"]
    assert v["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert set(v["Service.SupplementaryGroups"][0].split()) == {"video", "audio"}
    # The stop timeout covers every shutdown stage's budget, with room for the process exit.
    stop_s = _seconds(v["Service.TimeoutStopSec"][0])
    assert stop_s >= ServiceConfig().stop_budget_s + 10
    assert _seconds(v["Service.WatchdogSec"][0]) >= 10
    for key in (
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "RestrictAddressFamilies",
        "DeviceAllow",
        "CapabilityBoundingSet",
        "StateDirectory",
        "RuntimeDirectory",
        "ConfigurationDirectory",
        "WatchdogSec",
    ):
        assert f"Service.{key}" in v, key
    assert v["Service.ProtectSystem"] == ["strict"]
    assert v["Service.CapabilityBoundingSet"] == [""]
    assert "char-video4linux rw" in v["Service.DeviceAllow"]
    assert "char-alsa rw" in v["Service.DeviceAllow"]
    # The command line is one the CLI accepts.
    argv = v["Service.ExecStart"][0].split()
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert str(args.config) == "/etc/crossmodald/crossmodald.toml"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser.get("Install", "WantedBy") == "multi-user.target"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Warnings about our unit (unknown keys, bad values) come on stderr with its name.
    ours = [line for line in result.stderr.splitlines() if "crossmodald.service" in line]
    assert ours == []


def test_exposure_is_low(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot rate units offline: {result.stderr[:200]}")
    # systemd rates 0-10; below 2 is "OK", the best band for a service that needs devices.
    assert float(found.group(1)) < 2.0, result.stdout


def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    tmpfiles = _tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to give directories to the service user")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        [sysusers, f"--root={root}", str(SYSTEMD / "crossmodald.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    user = passwd["crossmodald"]
    assert user[5] == "/var/lib/crossmodald"
    assert user[6].endswith("nologin")
    assert "crossmodald" in groups["video"][3].split(",")
    assert "crossmodald" in groups["audio"][3].split(",")
    subprocess.run(
        [tmpfiles, "--create", f"--root={root}", str(SYSTEMD / "crossmodald.tmpfiles")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    events = root / "var/lib/crossmodald/events"
    info = events.stat()
    assert info.st_uid == int(user[2])
    assert info.st_mode & 0o777 == 0o750


def test_the_unit_runs_the_documented_venv_install(tmp_path: Path) -> None:
    # docs/service.md's install: a venv, crossmodald installed into it, the unit's ExecStart
    # at the venv's command. Done here under a scratch prefix (offline: no build isolation, the
    # dependencies come from this Python's site-packages), then systemd-analyze verify checks
    # the unit as installed, ExecStart's command included.
    analyze = _tool("systemd-analyze")
    assert _unit_values()["Service.ExecStart"][0].startswith(VENV_COMMAND + " ")
    venv = tmp_path / VENV.lstrip("/")
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "-e", str(REPO)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if installed.returncode != 0 and "No module named pip" in installed.stderr:
        pytest.skip("this Python has no pip to install into a venv with")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    command = venv / "bin" / "crossmodald"
    assert command.read_text().startswith(f"#!{venv}/bin/python")  # the venv's own Python
    version = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("crossmodald ")
    unit = tmp_path / "crossmodald.service"
    unit.write_text(UNIT.read_text().replace(VENV, str(venv)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "crossmodald.service" in line] == []
    # And a unit whose command is missing is refused: the check can fail.
    (venv / "bin" / "crossmodald").unlink()
    missing = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode != 0
    assert "crossmodald" in missing.stderr
