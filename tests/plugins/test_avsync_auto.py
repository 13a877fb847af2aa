"""avsync ``method = "auto"``: each window's audio onsets are found once, and the answers are the
ones each method gives on its own (pattern windows: flash, clap windows: clap, natural: motion)."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from clapkit import write_clap_clip
from mediakit import build_source, record_windows
from test_avsync_motion import mouth_window

from crossmodald.ingest.pattern import write_pattern_file
from crossmodald.media import Window
from crossmodald.service.config import MediaSourceConfig, PatternSourceConfig, WindowConfig
from crossmodald_plugins.avsync import AvSyncConfig, AvSyncFactory, AvSyncPlugin, flash

if TYPE_CHECKING:
    from crossmodald_plugins.avsync.flash import AudioOnsets


async def _clip_windows(path: Path, seconds: float) -> list[Window]:
    """The clip read by the real media source and cut by the real windower (2 s, hop 0.5 s)."""
    config = MediaSourceConfig.model_validate(
        {"type": "media", "name": path.stem, "url": str(path)}
    )
    windows, _ = await record_windows(build_source(config), seconds, WindowConfig())
    return windows


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Window]]:
    """Pattern windows (48 kHz), clap-clip windows (48 kHz) and natural mouth windows (16 kHz)."""
    folder = tmp_path_factory.mktemp("auto")
    pattern = PatternSourceConfig.model_validate(
        {"type": "pattern", "name": "p", "width": 160, "height": 120, "fps": 25}
        | {"audio_lead_ms": 60.0}
    )
    write_pattern_file(pattern, folder / "pattern.mp4", duration_s=3.0)
    clap = write_clap_clip(
        folder / "clap.mkv", fps=25, audio_lead_ms=40.0, contacts_s=(1.3,), seconds=3.0
    )
    return {
        "pattern": asyncio.run(_clip_windows(folder / "pattern.mp4", 3.0)),
        "clap": asyncio.run(_clip_windows(clap, 3.0)),
        "natural": [mouth_window(lead, seed=seed) for seed, lead in enumerate((-80.0, 120.0))],
    }


def _plugin(method: str) -> AvSyncPlugin:
    return AvSyncFactory.create(
        AvSyncConfig.model_validate({"type": "avsync", "method": method}), "cpu"
    )


def test_auto_finds_each_windows_audio_onsets_once(
    kinds: dict[str, list[Window]], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [w for windows in kinds.values() for w in windows]
    real = flash.audio_onsets
    analysed: Counter[int] = Counter()

    def counting(windows: Sequence[Window], device: torch.device) -> AudioOnsets:
        analysed.update(id(w) for w in windows)
        return real(windows, device)

    # Wherever the avsync modules hold the function (the real one still runs).
    for name, module in list(sys.modules.items()):
        if name.startswith("crossmodald_plugins.avsync"):
            for attr, value in vars(module).items():
                if value is real:
                    monkeypatch.setattr(module, attr, counting)
    results = _plugin("auto").analyze(batch)
    methods = Counter(r.method for r in results)
    # Every method had windows to look at, so the shared onsets reached all of them.
    assert set(methods) == {"flash", "clap", "motion"}, methods
    # Once per window: flash's analysis is what clap gets for the windows flash hands on.
    assert [analysed[id(w)] for w in batch] == [1] * len(batch)


def test_auto_answers_what_each_method_answers(kinds: dict[str, list[Window]]) -> None:
    batch = [w for windows in kinds.values() for w in windows]
    auto = _plugin("auto").analyze(batch)
    kind_of = [kind for kind, windows in kinds.items() for _ in windows]
    by_kind = {
        k: Counter(r.method for r, kk in zip(auto, kind_of, strict=True) if kk == k) for k in kinds
    }
    # (A pattern window whose flash or beep is cut off by its edges may fall back to motion.)
    assert by_kind["pattern"]["flash"] >= by_kind["pattern"]["motion"] + 1, by_kind
    assert by_kind["clap"]["clap"] >= 1
    assert set(by_kind["natural"]) == {"motion"}

    # Flash looks at the whole batch; exactly the same answers on the pattern-like windows.
    forced_flash = _plugin("flash").analyze(batch)
    for mine, theirs in zip(auto, forced_flash, strict=True):
        if mine.method == "flash":
            assert mine == theirs
    # Clap looks at the rest, as auto hands them over: the same answers where it finds a clap.
    rest = [i for i, r in enumerate(auto) if r.method != "flash"]
    forced_clap = _plugin("clap").analyze([batch[i] for i in rest])
    for i, theirs in zip(rest, forced_clap, strict=True):
        assert (auto[i].method == "clap") == (theirs.audio_lead_ms is not None)
        if auto[i].method == "clap":
            assert auto[i] == theirs
    # Motion gets what neither claimed.
    motion_rows = [i for i, r in enumerate(auto) if r.method == "motion"]
    forced_motion = _plugin("motion").analyze([batch[i] for i in motion_rows])
    assert [auto[i] for i in motion_rows] == forced_motion
    assert any(r.audio_lead_ms is not None for r in forced_motion)
