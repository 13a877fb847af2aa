"""Commands that run no model must not import torch (1-2 s of start-up; issue 10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs the given code, then says whether torch got imported along the way.
_PROBE = "import sys\n{code}\nprint('torch' in sys.modules)"


def _imports_torch(code: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(
    "code",
    [
        "import crossmodald.cli",
        "import crossmodald.service.daemon",
        "from crossmodald.runtime.device import resolve_device\n"
        "assert resolve_device(' CPU ') == 'cpu'",
        # --help exits through argparse: SystemExit(0) is the expected way out.
        "from crossmodald.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0",
        f"from crossmodald.cli import main\nassert main(['check-config', "
        f"{str(REPO / 'configs' / 'default.toml')!r}]) == 0",
    ],
    ids=["import-cli", "import-daemon", "resolve-cpu", "help", "check-config-default"],
)
def test_no_torch_import(code: str) -> None:
    assert not _imports_torch(code)


def test_probe_sees_a_torch_import() -> None:
    # The probe itself must be able to fail: building the avsync plugin does load torch.
    code = (
        "from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory\n"
        "AvSyncFactory.create(AvSyncConfig(type='avsync'), 'cpu')"
    )
    assert _imports_torch(code)
