"""The lip-sync model: Face Mesh lip landmarks, training (tiny), the shipped weights, the plugin."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from mediakit import run_plugin

from crossmodald.bus.events import Phase
from crossmodald.harness import run_plugins_sync
from crossmodald.media import NS_PER_S, ClockKind, StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, Inputs
from crossmodald.service.evaluate import decode_media, inside, media_source

pytest.importorskip("mediapipe", reason="the lipsync extra (mediapipe) is not installed")

from crossmodald_plugins.avsync.result import AvSyncResult
from crossmodald_plugins.lipsync.agreement import Agreements, speaker_thresholds
from crossmodald_plugins.lipsync.cli import summary
from crossmodald_plugins.lipsync.data import ClipError
from crossmodald_plugins.lipsync.features import N_MELS, warp_bands
from crossmodald_plugins.lipsync.landmarks import (
    FEATURE_DIM,
    KEPT,
    N_LIPS,
    POSE_DIM,
    LipLandmarker,
    lip_features,
    normalise,
    poses_of_frames,
)
from crossmodald_plugins.lipsync.model import (
    CheckpointError,
    LagScan,
    SyncEnsemble,
    SyncNet,
    load_model,
    read_checkpoint,
    scan,
)
from crossmodald_plugins.lipsync.plugin import (
    DEFAULT_SPEAKER_RELEASE,
    DEFAULT_SPEAKER_THRESHOLD,
    LAG_HISTORY,
    METHOD,
    SHIPPED_WEIGHTS,
    LipSyncConfig,
    LipSyncFactory,
    LipSyncPlugin,
    LipSyncResult,
    _Job,
    _Prepared,
    _StreamLag,
)
from crossmodald_plugins.lipsync.settings import TrainSettings
from crossmodald_plugins.lipsync.train import add_calibration_table, train
from crossmodald_plugins.products import (
    FACE_TRACKS,
    LIP_POSES,
    FaceTracks,
    LipPoses,
    TrackLips,
)

#: ../shared next to the checkout (datasets and media; tests that need it skip without it).
SHARED = Path(__file__).resolve().parents[3] / "shared"

DATASETS = SHARED / "datasets"
CLIP = "talkinghead_hdtf_aoc_25fps.mp4"
#: How :meth:`LipSyncPlugin._result` reads a window with sound whose faces are judged, and a
#: silent one.
SOUND = _Prepared([], silent=False, judge=True)
SILENT = _Prepared([], silent=True, judge=True)


@pytest.fixture
def datasets() -> Path:
    if not (DATASETS / "SOURCES.md").is_file():
        pytest.skip(f"training data not available: {DATASETS} is absent")
    return DATASETS


def test_normalise_removes_position_scale_and_roll() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(50, 150, (len(KEPT), 2)).astype(np.float32)
    pts[N_LIPS : N_LIPS + 4] = [[60, 50], [80, 50], [120, 50], [140, 50]]  # level eye corners
    base = normalise(pts)
    angle = math.radians(25)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = (pts @ rot.T) * 2.5 + np.array([300.0, -40.0])
    assert base.shape == (POSE_DIM,)
    np.testing.assert_allclose(normalise(moved.astype(np.float32)), base, atol=1e-4)
    feats = lip_features(np.stack([base, base * 1.1]))
    np.testing.assert_allclose(feats[1, POSE_DIM:], base * 0.1, atol=1e-6)


def test_face_mesh_start_up_lines_do_not_reach_the_terminal(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Face Mesh's native libraries print a few lines to stderr on each instance's first picture
    # (every new face track, every training clip): `crossmodald eval` showed ~20 of them above
    # its table. They are held back; what anything else writes meanwhile is written back.
    import threading

    with LipLandmarker() as marker:
        other = threading.Thread(target=os.write, args=(2, b"another thread's line\n"))
        original = marker._mesh.process

        def process(rgb: np.ndarray) -> object:
            other.start()
            other.join()
            return original(rgb)

        marker._mesh.process = process
        assert marker.pose_frame(np.zeros((120, 160), np.uint8)) is None  # no face
    err = capfd.readouterr().err
    assert "inference_feedback_manager" not in err
    assert "XNNPACK" not in err
    assert "absl::InitializeLog" not in err
    assert "another thread's line\n" in err


def test_landmarks_on_a_real_clip(datasets: Path) -> None:
    media = decode_media(datasets / "grid-s1" / "bbaf2n.mp4")
    lumas = [f.luma for f in media.video[:40]]
    poses, valid = poses_of_frames(lumas)
    assert poses.shape == (40, POSE_DIM)
    assert valid.all()
    # Lip points lie within about an inter-ocular distance of the mouth centre.
    assert float(np.abs(poses).max()) < 1.0
    # The inner lips open and close while he speaks: the aperture varies.
    inner_y = poses[:, 1::2][:, 20:]
    aperture = inner_y.max(axis=1) - inner_y.min(axis=1)
    assert float(aperture.std()) > 0.005


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_tiny_model_resumes_and_records_hashes(datasets: Path, tmp_path: Path) -> None:
    data = [datasets / "grid-s1" / "bbaf2n.mp4", datasets / "grid-s1" / "bbaf3s.mp4"]
    val = [
        datasets / "crema-d" / "1001_DFA_ANG_XX.mp4",
        datasets / "crema-d" / "1001_DFA_DIS_XX.mp4",
    ]
    out = tmp_path / "tiny.pt"
    settings = TrainSettings(
        epochs=1, batch=4, steps_per_epoch=2, hidden=16, seed=3, warp=0.15, aspect=0.15, members=1
    )
    log = io.StringIO()
    train(data, out, val=val, settings=settings, cache=tmp_path / "cache", log=log)
    ckpt = read_checkpoint(out)
    assert ckpt["epoch"] == 1
    assert ckpt["settings"]["seed"] == 3
    assert ckpt["settings"]["warp"] == ckpt["settings"]["aspect"] == 0.15
    assert [d["sha256"] for d in ckpt["train_data"]] == [_sha(p) for p in data]
    assert [d["sha256"] for d in ckpt["val_data"]] == [_sha(p) for p in val]
    (first,) = ckpt["history"]
    assert first["val_windows"] > 0
    assert 0.0 <= first["val_within_40ms"] <= 1.0
    # Two validation speakers' clips: this model's own speaker thresholds (its cosines have a
    # scale of their own), which the plugin then uses.
    assert 0.0 <= ckpt["speaker_release_threshold"] <= ckpt["speaker_threshold"] < 1.0
    assert 0.0 <= first["val_speaker_separation"] <= 1.0
    plugin = LipSyncFactory.create(LipSyncConfig(weights=out), "cpu")
    assert plugin.speaker_threshold == ckpt["speaker_threshold"]
    assert plugin.speaker_release == ckpt["speaker_release_threshold"]
    # The same command with more epochs resumes after epoch 1 (and reuses the feature cache).
    log = io.StringIO()
    more = dataclasses.replace(settings, epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(data, out, val=val, settings=more, cache=tmp_path / "cache", log=log)
    assert "resuming" in log.getvalue()
    # Moving the learning-rate schedule to where the run stopped is not a misuse to warn of.
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    ckpt = read_checkpoint(out)
    assert ckpt["epoch"] == 2
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]
    load_model(out)  # the plugin can load what the command wrote
    # Other data under the same --out is another run: refused, not silently mixed.
    with pytest.raises(CheckpointError, match="other train data"):
        train(data[:1], out, val=val, settings=more, cache=tmp_path / "cache", log=log)
    # So are other augmentation settings.
    other = dataclasses.replace(more, warp=0.1)
    with pytest.raises(CheckpointError, match="other settings"):
        train(data, out, val=val, settings=other, cache=tmp_path / "cache", log=log)


def test_the_calibration_is_measured_per_window_length(datasets: Path, tmp_path: Path) -> None:
    # In-sync speakers read differently in 2 s and 5 s windows (lipsync-v2: -36 and -49 ms), so
    # training stores both and the plugin subtracts the one for the span it scans.
    data = [datasets / "grid-s1" / "bbaf2n.mp4"]
    val = [datasets / "crema-d" / "1001_DFA_ANG_XX.mp4", datasets / "pc-avs" / "00002.mp4"]
    out, cache = tmp_path / "tiny.pt", tmp_path / "cache"
    settings = TrainSettings(epochs=1, batch=4, steps_per_epoch=1, hidden=16, members=1)
    train(data, out, val=val, settings=settings, cache=cache, log=io.StringIO())
    ckpt = read_checkpoint(out)
    (record,) = ckpt["history"]
    # The 2.3 s clip gives 2 s windows only; the 5.04 s one both.
    assert ckpt["calibration_by_window_ms"] == [
        [2.0, ckpt["calibration_ms"]],
        [5.0, record["val_bias_ms_5s"]],
    ]
    plugin = LipSyncFactory.create(LipSyncConfig(weights=out), "cpu")
    assert plugin.calibration_for(5.0) == pytest.approx(record["val_bias_ms_5s"])
    # A checkpoint written before training measured the table gets it from the same clips.
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "calibration_by_window_ms"}, old)
    table = add_calibration_table(old, val, tmp_path / "new.pt", cache=cache)
    assert np.allclose(table, ckpt["calibration_by_window_ms"], atol=1e-3)
    assert read_checkpoint(tmp_path / "new.pt")["calibration_by_window_ms"] == table
    # ... and only from them, measured as its calibration_ms was.
    with pytest.raises(ClipError, match="validated on"):
        add_calibration_table(old, val[:1], tmp_path / "new.pt", cache=cache)
    torch.save({**ckpt, "calibration_ms": ckpt["calibration_ms"] + 5.0}, old)
    with pytest.raises(CheckpointError, match="measured another way"):
        add_calibration_table(old, val, tmp_path / "new.pt", cache=cache)


def test_the_offset_subtracts_the_calibration_for_the_scanned_span() -> None:
    table = ((2.0, -36.0), (5.0, -48.0))
    stored = {"calibration_ms": -36.0, "calibration_by_window_ms": table}
    plugin = LipSyncPlugin(LipSyncConfig(), model=None, device="cpu", checkpoint=stored)
    # Linear between the measured lengths, the nearest one's outside them.
    for seconds, expected in [(1.0, -36.0), (2.0, -36.0), (3.5, -42.0), (5.0, -48.0), (9, -48.0)]:
        assert plugin.calibration_for(seconds) == pytest.approx(expected)

    def offset(p: LipSyncPlugin, slots: int) -> float | None:
        # A face read at exactly 0 ms over a scan of ``slots`` slots (40 ms each).
        item = BatchItem(
            _faceless_windows(1)[0], _StreamLag(), Inputs({FACE_TRACKS: FaceTracks(())})
        )
        face = _scan({50: 0.2}, peak_at=50, slots=slots)
        return p._result(item, [(_job(1, slots), face)], SOUND).offset.audio_lead_ms

    assert offset(plugin, 50) == pytest.approx(36.0)
    assert offset(plugin, 125) == pytest.approx(48.0)
    # The config's calibration_ms is one figure for every length; without a table, so is the
    # checkpoint's.
    configured = LipSyncPlugin(
        LipSyncConfig(calibration_ms=-10.0), model=None, device="cpu", checkpoint=stored
    )
    assert offset(configured, 125) == pytest.approx(10.0)
    older = LipSyncPlugin(LipSyncConfig(), None, "cpu", checkpoint={"calibration_ms": -36.0})
    assert offset(older, 125) == pytest.approx(36.0)


class _StopAt(io.StringIO):
    """A log that interrupts the run when a line containing ``marker`` is written."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def write(self, text: str) -> int:
        if self.marker in text:
            raise KeyboardInterrupt
        return super().write(text)


def test_train_members_one_after_another_and_serve_their_mean(
    datasets: Path, tmp_path: Path
) -> None:
    data = [datasets / "grid-s1" / "bbaf2n.mp4", datasets / "grid-s1" / "bbaf3s.mp4"]
    val = [
        datasets / "crema-d" / "1001_DFA_ANG_XX.mp4",
        datasets / "crema-d" / "1001_DFA_DIS_XX.mp4",
    ]
    cache = tmp_path / "cache"
    settings = TrainSettings(epochs=2, batch=4, steps_per_epoch=2, hidden=16, seed=5, members=2)
    out = tmp_path / "two.pt"
    # Interrupted in the second member's last epoch, then resumed with the same command.
    with pytest.raises(KeyboardInterrupt):
        train(data, out, val=val, settings=settings, cache=cache, log=_StopAt("member 2  epoch 2"))
    stopped = read_checkpoint(out)
    assert (stopped["member"], stopped["epoch"], len(stopped["members"])) == (1, 1, 1)
    # Until the second member has all its epochs, the file serves the first alone.
    assert isinstance(load_model(out), SyncNet)
    log = io.StringIO()
    train(data, out, val=val, settings=settings, cache=cache, log=log)
    assert "resuming" in log.getvalue()
    ckpt = read_checkpoint(out)
    assert (ckpt["member"], ckpt["epoch"], len(ckpt["members"])) == (1, 2, 1)
    # Member k is exactly the run that seed + k gives alone.
    for k in (0, 1):
        alone = tmp_path / f"alone{k}.pt"
        single = dataclasses.replace(settings, seed=5 + k, members=1)
        train(data, alone, val=val, settings=single, cache=cache, log=io.StringIO())
        mine = ckpt["members"][0] if k == 0 else ckpt["state_dict"]
        theirs = read_checkpoint(alone)["state_dict"]
        assert all(torch.allclose(mine[name], theirs[name]) for name in theirs)
    # The file serves both, as one model whose cosine is the mean of theirs.
    ensemble = load_model(out)
    assert isinstance(ensemble, SyncEnsemble)
    members = [load_model(tmp_path / "alone0.pt"), load_model(tmp_path / "alone1.pt")]
    torch.manual_seed(0)
    lips, mel = torch.randn(1, 60, FEATURE_DIM), torch.randn(1, 240, N_MELS)
    (both,) = scan(ensemble, lips, mel, 200)
    each = [scan(m, lips, mel, 200)[0] for m in members]
    assert np.allclose(both.curve, (each[0].curve + each[1].curve) / 2, atol=1e-5)
    # Its figures are the ensemble's: the calibration and thresholds the plugin reads.
    last = ckpt["history"][-1]
    assert last["ensemble"] == 2
    assert ckpt["calibration_ms"] == last["val_bias_ms"] == ckpt["metrics"]["bias_ms"]
    assert ckpt["speaker_threshold"] == last["val_speaker_threshold"]


def test_a_checkpoint_from_before_the_augmentation_settings_resumes(
    datasets: Path, tmp_path: Path
) -> None:
    # lipsync-v1 and every checkpoint written before ``warp`` and ``aspect`` existed ran
    # without them: resumed with both at 0 they are the same run, not "other settings".
    data = [datasets / "grid-s1" / "bbaf2n.mp4"]
    out = tmp_path / "old.pt"
    settings = TrainSettings(
        epochs=1, batch=4, steps_per_epoch=1, hidden=16, warp=0.0, aspect=0.0, members=1
    )
    train(data, out, settings=settings, cache=tmp_path / "cache", log=io.StringIO())
    old = torch.load(out, map_location="cpu", weights_only=True)
    del old["settings"]["warp"], old["settings"]["aspect"]
    torch.save(old, out)
    log = io.StringIO()
    more = dataclasses.replace(settings, epochs=2)
    train(data, out, settings=more, cache=tmp_path / "cache", log=log)
    assert "resuming" in log.getvalue()
    assert read_checkpoint(out)["epoch"] == 2


def test_warping_the_bands_moves_a_formant_as_a_shorter_vocal_tract_would() -> None:
    mel = np.zeros((3, N_MELS), np.float32)
    mel[:, 10] = 5.0  # energy in one band
    assert np.array_equal(warp_bands(mel, 1.0), mel)
    up, down = warp_bands(mel, 1.2), warp_bands(mel, 1 / 1.2)
    assert int(np.argmax(up[0])) > 10 > int(np.argmax(down[0]))
    # The band's energy is moved, not made: the peak stays within the values that were there.
    assert float(up.max()) <= 5.0
    assert float(up.min()) >= 0.0


def test_speaker_thresholds_from_mismatched_agreements() -> None:
    found = Agreements(
        matched=[0.1] * 5, mismatched=[float(v) for v in np.linspace(-0.05, 0.05, 101)]
    )
    start, release = speaker_thresholds(found)  # type: ignore[misc]
    assert start == pytest.approx(0.04)  # the 90th percentile
    assert release == 0.0  # the median
    # The release is never below 0 and never above the start.
    assert speaker_thresholds(Agreements(mismatched=[-0.2, -0.1, -0.05])) == (-0.06, -0.06)
    assert speaker_thresholds(Agreements(mismatched=[0.01, 0.02, 0.03])) == (0.028, 0.02)
    assert speaker_thresholds(Agreements(matched=[0.1])) is None


def test_train_ends_with_its_figures_in_words() -> None:
    record = {
        "epoch": 2,
        "loss": 2.0626,
        "seconds": 0.04,
        "val_windows": 3.0,
        "val_within_40ms": 2 / 3,
        "val_median_abs_error_ms": 11.07,
        "val_bias_ms": -11.07,
        "val_within_40ms_calibrated": 1.0,
    }
    assert summary(Path("t.pt"), 2, record) == (
        "wrote t.pt after epoch 2: loss 2.063; validation (3 windows, audio shifted by -200, 0 "
        "and +200 ms): 66.7% within 40 ms, median error 11.1 ms; in-sync clips read -11.1 ms, "
        "which the plugin subtracts (100.0% within 40 ms after it)"
    )
    longer = {**record, "val_bias_ms_5s": -20.04}
    assert summary(Path("t.pt"), 2, longer).endswith(
        "(100.0% within 40 ms after it), and -20.0 ms in 5 s windows"
    )
    speakers = {
        **record,
        "val_speaker_threshold": 0.0461,
        "val_speaker_release_threshold": 0.0,
        "val_speaker_separation": 0.913,
    }
    assert summary(Path("t.pt"), 2, speakers).endswith(
        "after it); a face speaks from an agreement of 0.046 (until 0.000), and with its own "
        "voice it agrees better than with another's in 91.3% of windows"
    )
    assert summary(Path("t.pt"), 2, {"epoch": 2, "loss": 2.0}) == (
        "wrote t.pt after epoch 2: loss 2.000; no validation clips (--val)"
    )
    assert summary(Path("t.pt"), 0, {}) == "wrote t.pt after epoch 0"


def test_shipped_weights_load_with_their_card() -> None:
    model = load_model(SHIPPED_WEIGHTS)
    ckpt = read_checkpoint(SHIPPED_WEIGHTS)
    # The ensemble the card describes: every member trained to its last epoch, served as one.
    assert isinstance(model, SyncEnsemble)
    assert len(model.members) == ckpt["settings"]["members"] > 1
    assert ckpt["epoch"] == ckpt["settings"]["epochs"]
    assert sum(p.numel() for p in model.parameters()) > 10_000
    assert ckpt["train_data"]
    assert "within_40ms" in ckpt["metrics"]
    # Its own speaker thresholds and calibration, measured on its validation speakers.
    assert 0.0 <= ckpt["speaker_release_threshold"] <= ckpt["speaker_threshold"] < 1.0
    assert ckpt["calibration_ms"] == ckpt["metrics"]["bias_ms"]
    # ... in the daemon's 2 s windows and in 5 s ones (benchmarks/lipsync_calibration.py).
    assert ckpt["calibration_by_window_ms"] == [
        [2.0, ckpt["calibration_ms"]],
        [5.0, ckpt["metrics"]["bias_ms_5s"]],
    ]
    # Shipped without the optimiser and RNG states (weights only: a few MB).
    assert "optimizer" not in ckpt
    assert SHIPPED_WEIGHTS.stat().st_size < 5_000_000
    card = SHIPPED_WEIGHTS.parent / "MODEL_CARD.md"
    assert SHIPPED_WEIGHTS.name in card.read_text()
    hashes = json.loads(SHIPPED_WEIGHTS.with_suffix(".data.json").read_text())
    assert hashes["train_data"] == ckpt["train_data"]
    assert hashes["val_data"] == ckpt["val_data"]
    assert hashes["settings"] == ckpt["settings"]


def test_scan_scores_every_slot_a_lag_pairs_and_averages_the_common_ones() -> None:
    # The lag curve compares every lag on the same lips (the slots all lags pair); each lag's
    # per-slot cosines cover every slot that lag pairs, so a face judged at one lag is judged
    # over (nearly) the whole window, not only its middle.
    import torch

    torch.manual_seed(0)
    slots, max_lag_ms = 50, 500
    lips = torch.randn(2, slots, FEATURE_DIM)
    mel = torch.randn(2, 4 * slots, 40)
    results = scan(load_model(SHIPPED_WEIGHTS), lips, mel, max_lag_ms)
    margin = 14  # ceil(500 ms / 40 ms) + 1 slots at each end
    for res in results:
        lags = list(res.lags_ms)
        common = res.slot_by_lag[:, margin : slots - margin]
        assert np.isfinite(common).all()
        assert np.allclose(res.curve, common.mean(axis=1), atol=1e-6)
        assert np.isfinite(res.slot_by_lag[lags.index(0.0)]).all()  # lag 0 pairs every slot
        # Audio 500 ms ahead: slot t pairs audio from 12.5 slots before it, which the first 13
        # slots of the window do not have.
        ahead = res.slot_by_lag[lags.index(500.0)]
        assert np.isnan(ahead[:13]).all()
        assert np.isfinite(ahead[13:]).all()
        assert np.array_equal(res.per_slot, res.slot_by_lag[res.best], equal_nan=True)


def test_bad_weights_are_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        LipSyncFactory.create(LipSyncConfig(weights=bad), "cpu")
    with pytest.raises(CheckpointError, match="no such file"):
        LipSyncFactory.create(LipSyncConfig(weights=tmp_path / "missing.pt"), "cpu")
    # A checkpoint edited by hand: figures the plugin cannot use, a member of another shape.
    shipped = torch.load(SHIPPED_WEIGHTS, map_location="cpu", weights_only=True)
    for key, value in [("speaker_threshold", math.nan), ("calibration_ms", "late")]:
        torch.save({**shipped, key: value}, bad)
        with pytest.raises(CheckpointError, match=f"{key} is .*expected a number"):
            LipSyncFactory.create(LipSyncConfig(weights=bad), "cpu")
    for table in ([[5.0, -49.0], [2.0, -36.0]], [[2.0, "late"]], [[0.0, 1.0]], "x"):
        torch.save({**shipped, "calibration_by_window_ms": table}, bad)
        with pytest.raises(CheckpointError, match=r"calibration_by_window_ms is .*seconds > 0"):
            LipSyncFactory.create(LipSyncConfig(weights=bad), "cpu")
    small = SyncNet(hidden=8).state_dict()
    torch.save({**shipped, "members": [*shipped["members"][:-1], small]}, bad)
    with pytest.raises(CheckpointError, match="size mismatch"):
        LipSyncFactory.create(LipSyncConfig(weights=bad), "cpu")


def _plugin(**extra: object) -> LipSyncPlugin:
    return LipSyncFactory.create(LipSyncConfig.model_validate({"type": "lipsync", **extra}), "cpu")


def test_plugin_follows_a_shifted_talking_head(shared_media: Path) -> None:
    """The same clip in sync and with the audio 200 ms ahead: the offset moves by 200 ms."""
    clip = shared_media / CLIP
    result = run_plugins_sync(
        [media_source(clip, "sync"), media_source(clip, "lead", audio_shift_ms=200.0)],
        [{"type": "lipsync", "device": "cpu"}],
        window={"length_s": 5.0, "hop_s": 1.0},
    )
    medians = {}
    for name in ("sync", "lead"):
        span = result.streams[name].media_span_ns()
        events = [e for e in result.events(name) if e.type == "sync.offset" and inside(e, span)]
        assert events
        for e in events:
            assert e.data["method"] == METHOD
            assert e.data["track_id"] is not None
        leads = [float(e.data["audio_lead_ms"]) for e in events]
        print(f"\n{name}: lipsync offsets {leads}")
        medians[name] = float(np.median(leads))
        if name == "sync":
            speakers = [e for e in result.events(name) if e.type == "speaker"]
            assert any(e.phase is Phase.START for e in speakers)
            assert all(e.data["method"] == METHOD for e in speakers)
    # Absolute accuracy is what the model card reports (a per-speaker bias remains); the
    # shift itself must be followed within one frame.
    assert abs(medians["lead"] - medians["sync"] - 200.0) <= 40.0


def test_with_5_s_windows_full_prominence_4_lets_confident_readings_feed_the_smoothed_offset(
    shared_media: Path,
) -> None:
    """The configuration docs' recipe for 5 s windows: ``full_prominence = 4`` (min_confidence
    0.3 then falls at prominence 2.95, where 89 % of held-out readings are right in 5 s windows:
    benchmarks/lipsync_confidence.py). Readings of a held-out talking head then count, are right
    within one frame, and the smoothed offset follows; at the default (6, set for the daemon's
    2 s windows) none counts and the smoothed offset stays empty."""
    clip = shared_media / "talkinghead_hdtf_markey_25fps.mp4"
    result = run_plugins_sync(
        [media_source(clip, "sync"), media_source(clip, "lag", audio_shift_ms=240.0)],
        [{"type": "lipsync", "device": "cpu", "full_prominence": 4.0}],
        window={"length_s": 5.0, "hop_s": 1.0},
    )
    default = LipSyncConfig()
    min_confidence = default.min_confidence
    for name, shift in (("sync", 0.0), ("lag", 240.0)):
        span = result.streams[name].media_span_ns()
        events = [e for e in result.events(name) if e.type == "sync.offset" and inside(e, span)]
        confident = [e for e in events if e.data["confidence"] >= min_confidence]
        print(f"\n{name}: {[(e.data['audio_lead_ms'], e.data['confidence']) for e in events]}")
        assert confident
        assert all(abs(float(e.data["audio_lead_ms"]) - shift) <= 40.0 for e in confident)
        smoothed = events[-1].data["smoothed_audio_lead_ms"]
        assert smoothed is not None
        assert abs(float(smoothed) - shift) <= 40.0
        # The same readings on the default scale (prominence from min_prominence to 6 for
        # confidence 0 to 1, here to 4): none would count.
        stretch = (4.0 - default.min_prominence) / (
            default.full_prominence - default.min_prominence
        )
        assert all(float(e.data["confidence"]) * stretch < min_confidence for e in events)


def test_a_streams_face_mesh_graphs_are_closed_when_it_ends(
    shared_media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Face Mesh graph that is only dropped is never freed (~20 MB each): the lips provider
    closes every track's graph when its stream ends, whether or not the track had ended."""
    import crossmodald_plugins.lipsync.lips as lips_module

    opened: list[LipLandmarker] = []
    closed: list[LipLandmarker] = []

    class Counted(LipLandmarker):
        def __init__(self) -> None:
            super().__init__()
            opened.append(self)

        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr(lips_module, "LipLandmarker", Counted)
    clip = shared_media / CLIP
    result = run_plugins_sync(
        [media_source(clip, "a"), media_source(clip, "b")],
        [{"type": "lipsync", "device": "cpu"}],
        window={"length_s": 2.0, "hop_s": 0.5},
        max_seconds=3.0,
        streams_at_once=1,
    )
    assert [e for e in result.events("b") if e.type == "sync.offset"]
    # 3 s of stream never fill the 5 s scan span: the face is judged when the stream ends.
    spans = [e for e in result.events("b") if e.type == "speaker"]
    assert [e.phase for e in spans] == [Phase.START, Phase.END]
    # The factory's start-up check made and closed one; each stream's face track made one.
    assert len(opened) >= 3
    assert sorted(map(id, closed)) == sorted(map(id, opened))


def _faceless_windows(n: int) -> list[Window]:
    from crossmodald.ingest.frames import video_frame_from_luma

    rng = np.random.default_rng(1)
    out = []
    for w in range(n):
        start = w * 5 * NS_PER_S
        frames = tuple(
            video_frame_from_luma(
                "x", start + i * 40_000_000, 0, np.full((240, 320), 60, np.uint8), ClockKind.PTS
            )
            for i in range(125)
        )
        audio = (0.1 * rng.standard_normal(80000)).astype(np.float32)
        out.append(
            Window("x", w, start, start + 5 * NS_PER_S, frames, audio,
                   np.ones(80000, np.bool_), 16000, 25.0, ClockKind.PTS)
        )  # fmt: skip
    return out


def test_no_face_gives_no_offset_with_a_reason() -> None:
    info = StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS)
    events = run_plugin(_plugin(), {"x": (info, _faceless_windows(2))})["x"]
    offsets = [e for e in events if e.type == "sync.offset"]
    assert len(offsets) == 2
    for e in offsets:
        assert e.data["audio_lead_ms"] is None
        assert e.data["confidence"] == 0.0
        assert e.data["reason"] == "no face"
    assert not [e for e in events if e.type in ("speaker", "sync.alarm")]


def test_alarm_goes_through_the_smoothed_offset() -> None:
    plugin = LipSyncPlugin(LipSyncConfig(alarm_windows=2), model=None, device="cpu")
    info = StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS)
    session = plugin.open(info)
    windows = _faceless_windows(6)
    kinds = []
    for i, window in enumerate(windows):
        lead = 0.0 if i < 2 else 300.0
        result = LipSyncResult(AvSyncResult(lead, 0.9, METHOD, window.start_ns), (), (), 1)
        kinds.append([(e.type, e.phase) for e in session.update(window, result)])
    starts = [i for i, k in enumerate(kinds) if ("sync.alarm", Phase.START) in k]
    # Median of 0, 0, 300 is 0; of 0, 0, 300, 300 it is 150 (outside +90) for two windows.
    assert starts == [4]
    assert session.status()["alarm"] is True
    assert [e.type for e in session.close()] == ["sync.alarm"]


@pytest.mark.parametrize("release", [0.0, 0.045])
def test_a_speaking_face_outlasts_a_dip_down_to_the_release_threshold(release: float) -> None:
    # Agreement 0.1 for 20 slots (starts the face), a dip to 0.02 mid-speech for 20 (under the
    # 0.045 start threshold, above the default release 0.0), then a silent stretch (scored 0).
    from crossmodald_plugins.asd.plugin import SLOT_NS, FaceSpeaking

    config = LipSyncConfig(speaker_release_threshold=release)
    plugin = LipSyncPlugin(config, model=None, device="cpu")
    session = plugin.open(StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS))
    window = _faceless_windows(1)[0]
    scores = [0.1] * 20 + [0.02] * 20 + [0.0] * 10
    face = FaceSpeaking(
        1,
        np.arange(len(scores), dtype=np.int64) * SLOT_NS,
        ((10.0, 0.0, 5.0, 5.0),) * len(scores),
        np.array(scores, np.float32),
    )
    offset = AvSyncResult(None, 0.0, METHOD, window.start_ns)
    events = session.update(window, LipSyncResult(offset, (face,), (), 1))
    spans = [(e.phase, e.start_ns, e.end_ns) for e in events if e.type == "speaker"]
    hold = config.hold_slots
    assert spans[0] == (Phase.START, 0, (hold - 1) * SLOT_NS)
    (end,) = [s for s in spans if s[0] is Phase.END]
    # The span ends where the first of ``hold`` slots at or below the release lies.
    assert end[2] == (40 if release == 0.0 else 20) * SLOT_NS


def test_the_release_threshold_is_capped_at_the_start_threshold() -> None:
    config = LipSyncConfig(speaker_threshold=0.03, speaker_release_threshold=0.05)
    source = LipSyncPlugin(config, model=None, device="cpu")
    session = source.open(StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS))
    assert session._speakers is not None
    assert session._speakers._release == session._speakers._threshold == 0.03
    with pytest.raises(ValueError, match="speaker_release_threshold"):
        LipSyncConfig(speaker_release_threshold=-0.1)


def test_speaker_thresholds_come_from_the_checkpoint_unless_configured() -> None:
    stream = StreamInfo("x", "test", True, True, 25.0, 16000, 320, 240, ClockKind.PTS)
    stored = {"speaker_threshold": 0.12, "speaker_release_threshold": 0.03}

    def thresholds(config: LipSyncConfig, checkpoint: dict[str, float] | None) -> tuple[float, ...]:
        plugin = LipSyncPlugin(config, model=None, device="cpu", checkpoint=checkpoint)
        speakers = plugin.open(stream)._speakers
        assert speakers is not None
        return speakers._threshold, speakers._release

    # A checkpoint that measured its own (a model's cosines have a scale of their own).
    assert thresholds(LipSyncConfig(), stored) == (0.12, 0.03)
    # One written before they were measured: lipsync-v1's.
    assert thresholds(LipSyncConfig(), None) == (
        DEFAULT_SPEAKER_THRESHOLD,
        DEFAULT_SPEAKER_RELEASE,
    )
    # The config wins over the checkpoint, each key on its own; the release stays capped.
    assert thresholds(LipSyncConfig(speaker_threshold=0.05), stored) == (0.05, 0.03)
    assert thresholds(LipSyncConfig(speaker_release_threshold=0.2), stored) == (0.12, 0.12)


def _scan(rows: dict[int, float], peak_at: int, slots: int = 50, margin: int = 13) -> LagScan:
    """A face's lag scan over 101 lags (+/-500 ms): cosine ``rows[k]`` on the scored slots at
    lag k (0 elsewhere), the mean curve peaking at ``peak_at``; the edge slots unscored."""
    lags = np.arange(-500, 510, 10, dtype=np.float32)
    by_lag = np.zeros((len(lags), slots), np.float32)
    for k, value in rows.items():
        by_lag[k] = value
    by_lag[:, :margin] = np.nan
    by_lag[:, slots - margin :] = np.nan
    curve = np.zeros(len(lags), np.float32)
    curve[peak_at] = 1.0
    return LagScan(lags, curve, by_lag[peak_at], by_lag)


def _job(track_id: int, slots: int = 50) -> _Job:
    pts = 40_000_000 * np.arange(slots, dtype=np.int64)
    box = (10.0 * track_id, 0.0, 5.0, 5.0)
    empty = np.zeros((slots, 1), np.float32)
    return _Job(0, track_id, pts, (box,) * slots, empty, empty)


def test_faces_are_judged_at_the_stream_lag_on_scored_slots_only() -> None:
    # Face 1 is the voice (its lips match at lag 40, where the stream's recent windows put
    # it); this window face 2's curve happens to peak higher elsewhere (lag 70). The faces are
    # judged at lag 40, on the 24 scored slots only, each by its mean over them.
    plugin = LipSyncPlugin(LipSyncConfig(), model=None, device="cpu")
    state = _StreamLag()
    state.recent.extend([40, 41, 39, 40])
    window = _faceless_windows(1)[0]
    item = BatchItem(window, state, Inputs({FACE_TRACKS: FaceTracks(())}))
    voiced = _scan({40: 0.3, 70: 0.0}, peak_at=40)
    voiced.curve[[39, 41]] = 0.8  # a broader peak: less prominent than face 2's
    other = _scan({40: 0.01, 70: 0.5}, peak_at=70)
    assert other.prominence > voiced.prominence
    result = plugin._result(item, [(_job(1), voiced), (_job(2), other)], SOUND)
    scores = {f.track_id: f for f in result.faces}
    assert len(scores[1].pts_ns) == len(scores[1].boxes) == len(scores[1].scores) == 24
    assert scores[1].pts_ns[0] == 13 * 40_000_000
    assert np.allclose(scores[1].scores, 0.3)
    assert np.allclose(scores[2].scores, 0.01)
    # The window's own best lag joined the history (the median stays at 40).
    assert list(state.recent)[-1] == 70
    assert state.lag(0) == 40
    # Next window: each face's score is its mean over its windows with sound so far; a silent
    # window scores 0 and adds nothing; a face missing from a window starts anew.
    voiced2 = _scan({40: 0.1}, peak_at=40)
    result = plugin._result(item, [(_job(1), voiced2), (_job(2), other)], SOUND)
    assert np.allclose({f.track_id: f for f in result.faces}[1].scores, 0.2)
    result = plugin._result(item, [(_job(1), voiced2)], SILENT)
    assert np.allclose(result.faces[0].scores, 0.0)
    assert list(state.agreement) == [1]
    result = plugin._result(item, [(_job(1), voiced2)], SOUND)
    assert np.allclose(result.faces[0].scores, (0.3 + 0.1 + 0.1) / 3)


def test_before_any_confident_window_faces_are_judged_where_in_sync_content_reads() -> None:
    # No lag history and a flat curve (prominence ~1.7, confidence 0): its best lag (+500 ms)
    # is noise, so the faces are judged at the calibration's lag (-30 ms here), not there.
    plugin = LipSyncPlugin(
        LipSyncConfig(), model=None, device="cpu", checkpoint={"calibration_ms": -30.0}
    )
    state = _StreamLag()
    item = BatchItem(_faceless_windows(1)[0], state, Inputs({FACE_TRACKS: FaceTracks(())}))
    voiced = _scan({47: 0.2, 100: 0.01}, peak_at=100)
    other = _scan({47: 0.0, 100: 0.4}, peak_at=100)
    for face in (voiced, other):
        face.curve[:] = np.linspace(0.0, 1.0, len(face.curve))
    assert voiced.prominence < plugin.config.min_prominence
    result = plugin._result(item, [(_job(1), voiced), (_job(2), other)], SOUND)
    assert result.offset.confidence == 0.0
    assert not state.recent
    scores = {f.track_id: float(f.scores[0]) for f in result.faces}
    assert scores == pytest.approx({1: 0.2, 2: 0.0})


def test_with_speaker_search_each_face_is_judged_at_its_own_best_lag_near_the_streams() -> None:
    # No three confident windows yet: the stream's lag is the calibration's (-30 ms, index 47),
    # but the stream runs 120 ms out of sync, and the voiced face's lips match at +90 ms (index
    # 59), where its curve peaks. The other face's curve peaks at +500 ms (index 100); within
    # 150 ms of the stream's lag it peaks at index 62, where its lips hardly match.
    for search_ms, expected in (
        (0, {1: 0.0, 2: 0.01}),  # both at the stream's lag: the voice is missed
        (150, {1: 0.2, 2: 0.02}),  # each at its own peak within reach: the voice is found
        (100, {1: 0.0, 2: 0.0}),  # the voiced face's peak is out of reach
    ):
        plugin = LipSyncPlugin(
            LipSyncConfig(speaker_search_ms=search_ms),
            model=None,
            device="cpu",
            checkpoint={"calibration_ms": -30.0},
        )
        state = _StreamLag()
        item = BatchItem(_faceless_windows(1)[0], state, Inputs({FACE_TRACKS: FaceTracks(())}))
        voiced = _scan({47: 0.0, 59: 0.2}, peak_at=59)
        other = _scan({47: 0.01, 62: 0.02, 100: 0.4}, peak_at=100)
        other.curve[62] = 0.5
        result = plugin._result(item, [(_job(1), voiced), (_job(2), other)], SOUND)
        scores = {f.track_id: float(f.scores[0]) for f in result.faces}
        assert scores == pytest.approx(expected), search_ms


def test_a_weak_window_does_not_set_the_stream_lag() -> None:
    # A curve whose peak stands ~4 standard deviations out: confidence ~0.4. It sets the
    # stream's lag where min_confidence allows it (0.3, the default) and not above (0.6),
    # as the smoothed offset counts it or not.
    rng = np.random.default_rng(0)
    scan = _scan({80: 0.2}, peak_at=80)
    scan.curve[:] = rng.normal(0.0, 1.0, len(scan.curve)).astype(np.float32)
    scan.curve[80] = 4.0 * float(np.std(scan.curve)) + float(np.median(scan.curve))
    for min_confidence, joins in ((0.3, True), (0.6, False)):
        config = LipSyncConfig(min_confidence=min_confidence)
        plugin = LipSyncPlugin(config, model=None, device="cpu")
        state = _StreamLag()
        item = BatchItem(_faceless_windows(1)[0], state, Inputs({FACE_TRACKS: FaceTracks(())}))
        result = plugin._result(item, [(_job(1), scan)], SOUND)
        assert 0.3 < result.offset.confidence < 0.6
        assert list(state.recent) == ([80] if joins else [])


def test_the_stream_lag_needs_three_windows_that_agree() -> None:
    # One or two confident windows (on a short clip, as likely another face's noise as the
    # offset) leave the faces judged where in-sync content reads; three within 80 ms set it.
    state = _StreamLag()
    for lags, expected in (
        ([44], 5),
        ([44, 45], 5),
        ([44, 45, 90], 5),  # median 45: only two within 8 steps of it
        ([44, 45, 90, 46], 45),
        ([44, 45, 90, 46, 53], 46),  # 53 is within 8 steps of the median 46
    ):
        state.recent.clear()
        state.recent.extend(lags)
        assert state.lag(5) == expected, lags


def test_stream_lag_is_the_median_of_recent_confident_windows() -> None:
    state = _StreamLag()
    assert state.lag(7) == 7  # nothing yet: the window's own
    state.recent.extend([10] * LAG_HISTORY)
    state.recent.extend([90] * (LAG_HISTORY // 2 + 1))  # the old lags age out
    assert len(state.recent) == LAG_HISTORY
    assert state.lag(0) == 90


def test_train_command_refuses_a_folder_without_clips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crossmodald.cli import main

    code = main(["train", "lipsync", str(tmp_path), "--out", str(tmp_path / "x.pt")])
    assert code == 2
    assert "no training clips found" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--warp", "-0.1"), ("--warp", "nan"), ("--aspect", "inf"), ("--aspect", "lots"),
     ("--members", "0"), ("--members", "2.5")],
)  # fmt: skip
def test_train_command_refuses_bad_settings(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crossmodald.cli import main

    argv = ["train", "lipsync", str(tmp_path), "--out", str(tmp_path / "x.pt"), flag, value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_train_progress_on_a_terminal_says_which_member_and_epoch(
    datasets: Path, tmp_path: Path
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    data = [datasets / "grid-s1" / "bbaf2n.mp4"]
    settings = TrainSettings(epochs=1, batch=4, steps_per_epoch=2, hidden=16, members=2)
    log = Terminal()
    train(data, tmp_path / "t.pt", settings=settings, cache=tmp_path / "cache", log=log)
    shown = log.getvalue()
    assert "\rmember 1/2 epoch 1/1 [###############...............] 1/2 loss " in shown
    assert "\rmember 2/2 epoch 1/1 [##############################] 2/2 loss " in shown
    # Each epoch ends in one line of its figures, over the bar.
    assert "\rmember 2  epoch 1  loss " in shown


def test_agreement_pairs_each_clip_with_a_bounded_number_of_others() -> None:
    # Training measures the speaker thresholds after every epoch: with many validation clips
    # the work must grow with their number, not its square.
    from crossmodald_plugins.lipsync import agreement
    from crossmodald_plugins.lipsync.data import ClipFeatures

    rng = np.random.default_rng(0)
    slots = agreement.WINDOW_SLOTS + agreement.WINDOW_STEP  # two windows per clip

    def clip(k: int) -> ClipFeatures:
        poses = rng.normal(0.0, 0.05, (slots, POSE_DIM)).astype(np.float32)
        mel = rng.normal(0.0, 1.0, (4 * slots, N_MELS)).astype(np.float32)
        return ClipFeatures(f"c{k}", "0", poses, np.ones(slots, np.bool_), mel)

    torch.manual_seed(0)
    model = SyncNet(hidden=8)
    few = agreement.measure(model, [clip(k) for k in range(3)])
    assert len(few.matched) == 3 * 2
    assert len(few.mismatched) == 3 * 2 * 2  # every other clip
    many = agreement.measure(model, [clip(k) for k in range(12)], beside=True)
    assert len(many.mismatched) == 12 * agreement.MAX_OTHERS * 2
    assert all(len(pairs) == agreement.MAX_OTHERS for pairs in many.beside.values())
    assert model.training  # left as it was found


def _media(seconds: float, rate: int = 16000) -> tuple[npt.NDArray[np.float32], TrackLips]:
    """``seconds`` of noise at ``rate`` and one face's random lip poses at 25 fps (the 4th
    frame without landmarks)."""
    rng = np.random.default_rng(3)
    audio = rng.standard_normal(round(seconds * rate)).astype(np.float32)
    n = round(seconds * 25)
    pts = 40_000_000 * np.arange(n, dtype=np.int64)
    valid = np.arange(n) % 4 != 3
    return audio, TrackLips(7, pts, rng.standard_normal((n, POSE_DIM)).astype(np.float32), valid)


def _window(
    index: int, start_s: float, length_s: float, audio: npt.NDArray[np.float32], face: TrackLips
) -> BatchItem[_StreamLag]:
    """The stream's window ``[start_s, start_s + length_s)`` with its frames, audio, the face's
    poses and a track box per frame (its x the frame's number)."""
    from crossmodald.ingest.frames import video_frame_from_luma
    from crossmodald_plugins.faces.tracker import Box, FaceObservation, Track

    start, end = round(start_s * NS_PER_S), round((start_s + length_s) * NS_PER_S)
    on = (face.pts_ns >= start) & (face.pts_ns < end)
    luma = np.zeros((8, 8), np.uint8)
    frames = tuple(
        video_frame_from_luma("x", int(p), 0, luma, ClockKind.PTS) for p in face.pts_ns[on]
    )
    lo, hi = start * 16000 // NS_PER_S, end * 16000 // NS_PER_S
    window = Window("x", index, start, end, frames, audio[lo:hi], np.ones(hi - lo, np.bool_),
                    16000, 25.0, ClockKind.PTS)  # fmt: skip
    obs = tuple(
        FaceObservation(int(p), Box(float(p) / 40e6, 0.0, 9.0, 9.0), Box(0.0, 0.0, 1.0, 1.0), True)
        for p in face.pts_ns[on]
    )
    lips = TrackLips(7, face.pts_ns[on], face.poses[on], face.valid[on])
    inputs = Inputs({FACE_TRACKS: FaceTracks((Track(7, obs, 0),)), LIP_POSES: LipPoses((lips,))})
    return BatchItem(window, _StreamLag(), inputs)


def test_a_scan_covers_scan_s_seconds_of_the_streams_windows() -> None:
    """2 s windows every 0.5 s: the scan covers the stream's latest 5 s (``scan_s``) once 5 s
    are in, what there is before; its lips, audio, slot times and boxes are exactly those of
    one 5 s window over the same media."""
    audio, face = _media(8.0)
    plugin = LipSyncPlugin(LipSyncConfig(), model=None, device="cpu")
    state = _StreamLag()
    slots = []
    for k in range(13):  # windows [0, 2) ... [6, 8)
        item = dataclasses.replace(_window(k, k * 0.5, 2.0, audio, face), state=state)
        [job] = plugin._prepare(0, item).jobs
        slots.append(len(job.slot_pts))
    # 25 slots a second; a span of whole seconds loses its last slot to the log-mel's framing.
    assert slots == [49, 62, 74, 87, 99, 112, 124, 124, 124, 124, 124, 124, 124]
    [whole] = plugin._prepare(0, _window(0, 3.0, 5.0, audio, face)).jobs
    assert np.array_equal(job.slot_pts, whole.slot_pts)
    assert job.boxes == whole.boxes
    assert job.boxes[0][0] == 75.0  # the span's first frame is the stream's 75th
    assert np.array_equal(job.lips, whole.lips)
    assert np.array_equal(job.mel, whole.mel)
    # A window longer than scan_s is scanned whole; scan_s = 2 scans 2 s windows alone.
    assert len(LipSyncPlugin(LipSyncConfig(scan_s=2.0), None, "cpu")._prepare(
        0, _window(0, 0.0, 8.0, audio, face)).jobs[0].slot_pts) == 199  # fmt: skip
    short = LipSyncPlugin(LipSyncConfig(scan_s=2.0), model=None, device="cpu")
    state = _StreamLag()
    for k in range(4):
        item = dataclasses.replace(_window(k, k * 0.5, 2.0, audio, face), state=state)
        assert [len(j.slot_pts) for j in short._prepare(0, item).jobs] == [49]


def test_a_gap_in_the_windows_or_a_face_missing_from_one_starts_the_scan_anew() -> None:
    audio, face = _media(12.0)
    plugin = LipSyncPlugin(LipSyncConfig(), model=None, device="cpu")
    state = _StreamLag()

    def scan_slots(index: int, start_s: float, drop_face: bool = False) -> list[int]:
        item = dataclasses.replace(_window(index, start_s, 2.0, audio, face), state=state)
        if drop_face:
            item = dataclasses.replace(item, inputs=Inputs({
                FACE_TRACKS: FaceTracks(()), LIP_POSES: LipPoses(())}))  # fmt: skip
        return [len(j.slot_pts) for j in plugin._prepare(0, item).jobs]

    assert [scan_slots(k, k * 0.5)[0] for k in range(4)] == [49, 62, 74, 87]
    # The windows that start at 2 s to 5.5 s never came: the one at 6 s does not join on.
    assert scan_slots(12, 6.0) == [49]
    assert scan_slots(13, 6.5) == [62]
    # A window without the face: none to scan, and its lips are forgotten.
    assert scan_slots(14, 7.0, drop_face=True) == []
    assert scan_slots(15, 7.5) == [49]
    # Time going back (a restarted source) starts anew too.
    assert scan_slots(16, 1.0) == [49]


def test_faces_are_judged_once_the_span_holds_scan_s_and_a_shorter_stream_when_it_ends() -> None:
    """Judged on a span shorter than ``scan_s``, the wrong face is picked more often (and the
    speaker session keeps it): a stream's first windows serve the offset only; the first
    window whose span holds 5 s judges every slot since the start. A stream that ends sooner
    (or within 5 s of a gap) is judged over what there was by ``finish``."""
    audio, face = _media(10.0)
    plugin = _plugin()
    state = _StreamLag()
    results = []
    for k in range(9):  # windows [0, 2) ... [4, 6)
        item = dataclasses.replace(_window(k, k * 0.5, 2.0, audio, face), state=state)
        results += plugin.infer([item])
    assert all(r.offset is not None and r.offset.audio_lead_ms is not None for r in results)
    assert [len(r.faces) for r in results] == [0] * 6 + [1] * 3
    assert results[6].faces[0].pts_ns[0] < 1 * NS_PER_S  # from the span's first second on
    assert plugin.finish(state) is None  # judged already
    # After a gap in the windows the span starts anew; a stream that ends within 5 s of it
    # has that span judged when it ends.
    item = dataclasses.replace(_window(20, 8.0, 2.0, audio, face), state=state)
    assert not plugin.infer([item])[0].faces
    after_gap = plugin.finish(state)
    assert after_gap is not None
    assert after_gap.faces[0].pts_ns[0] >= 8 * NS_PER_S

    short = _StreamLag()
    for k in range(3):  # 3 s of stream
        item = dataclasses.replace(_window(k, k * 0.5, 2.0, audio, face), state=short)
        assert not plugin.infer([item])[0].faces
    last = plugin.finish(short)
    assert last is not None
    assert last.offset is None
    [judged] = last.faces
    assert judged.track_id == 7
    assert judged.pts_ns[0] < 1 * NS_PER_S
    assert judged.pts_ns[-1] > 2 * NS_PER_S
    # The session makes speaker events of it, and no offset.
    info = StreamInfo("x", "test", True, True, 25.0, 16000, 8, 8, ClockKind.PTS)
    session = plugin.open(info)
    high = dataclasses.replace(judged, scores=np.ones_like(judged.scores))
    events = session.update(item.window, dataclasses.replace(last, faces=(high,)))
    events += session.close()
    assert [(e.type, e.phase) for e in events] == [
        ("speaker", Phase.START),
        ("speaker", Phase.END),
    ]
    assert plugin.finish(_StreamLag()) is None  # a stream that brought nothing
