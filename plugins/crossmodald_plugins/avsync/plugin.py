"""The avsync plugin: factory, the per-daemon plugin (batched inference) and its entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import BatchItem, MetricSpec, PluginConfig, ProductKey
from crossmodald_plugins.avsync.config import AvSyncConfig
from crossmodald_plugins.avsync.result import AvSyncResult, FlashPair
from crossmodald_plugins.avsync.session import AvSyncSession
from crossmodald_plugins.products import FACE_TRACKS, FaceTracks

if TYPE_CHECKING:
    from crossmodald_plugins.avsync.clap import ClapOutcome
    from crossmodald_plugins.avsync.motion import MouthBox

# torch and the analysis modules (which import torch) load when a plugin is built, not with the
# entry point: `check-config` and `plugins` only need the factory and its config model (~2 s).

#: The per-stream metrics (names and meanings kept from before plugins declared them).
METRICS = (
    MetricSpec(
        "crossmodald_stream_audio_lead_seconds",
        "gauge",
        "Latest A/V offset in seconds (positive: audio ahead of video).",
        "audio_lead_ms",
        scale=0.001,
    ),
    MetricSpec(
        "crossmodald_stream_sync_drift_ppm",
        "gauge",
        "A/V drift the sync analysis estimates (ppm).",
        "drift_ppm",
    ),
    MetricSpec(
        "crossmodald_stream_sync_drift_uncertainty_ppm",
        "gauge",
        "One standard error of the A/V drift estimate (ppm).",
        "drift_uncertainty_ppm",
    ),
    MetricSpec("crossmodald_stream_alarm", "gauge", "1 while a sync alarm is on.", "alarm"),
)


class AvSyncPlugin:
    """Estimates the audio/video offset of every window; one instance per daemon.

    Args:
        config: The validated config.
        device: A resolved torch device string ("cpu", "cuda:0", ...).
    """

    name = "avsync"
    provides: ClassVar[ProductKey[Any] | None] = None
    metrics: ClassVar[tuple[MetricSpec, ...]] = METRICS

    def __init__(self, config: AvSyncConfig, device: str) -> None:
        import torch

        from crossmodald_plugins.avsync.motion import FaceFinder

        self.config = config
        self.device = torch.device(device)
        self._faces = (
            FaceFinder() if config.face_detection and config.method in ("auto", "motion") else None
        )

    def check_stream(self, stream: StreamInfo) -> str | None:
        """Why this plugin cannot analyse ``stream`` ("has no audio" / "has no video"), or None."""
        if not stream.has_audio:
            return "has no audio"
        if not stream.has_video:
            return "has no video"
        return None

    def new_state(self, stream: StreamInfo) -> None:
        """No per-stream inference state (smoothing and alarm live in the session)."""
        return None

    def open(self, stream: StreamInfo) -> AvSyncSession:
        """A session for a new stream.

        Raises:
            ValueError: If the stream lacks audio or video.
        """
        problem = self.check_stream(stream)
        if problem is not None:
            raise ValueError(f"avsync: stream {stream.name!r} {problem}")
        return AvSyncSession(stream, self.config)

    def infer(self, items: Sequence[BatchItem[None]]) -> list[AvSyncResult]:
        """One result per window, computed for the whole batch at once (on a worker thread).

        The motion method takes each window's mouth region from the ``faces`` plugin's tracks
        when they come as input, else from this plugin's own face finder.
        """
        batch = [item.window for item in items]
        shared = [item.inputs.get(FACE_TRACKS) for item in items]
        return self.analyze(batch, shared)

    def analyze(
        self, batch: Sequence[Window], tracks: Sequence[FaceTracks | None] | None = None
    ) -> list[AvSyncResult]:
        """:meth:`infer` on plain windows (``tracks``: the shared face tracks per window)."""
        import torch

        from crossmodald_plugins.avsync.clap import analyze_clap
        from crossmodald_plugins.avsync.flash import analyze_flash, audio_onsets
        from crossmodald_plugins.avsync.motion import analyze_motion

        if not batch:
            return []
        shared = list(tracks) if tracks is not None else [None] * len(batch)
        method = self.config.method
        with torch.inference_mode():
            # The beep/transient onsets of each window's audio, found once for the batch: flash
            # pairs them with flashes, clap (in auto, on the windows flash finds no pattern in)
            # checks the one dominant onset on them.
            onsets = audio_onsets(batch, self.device) if method != "motion" else None
            flash = (
                analyze_flash(batch, self.device, self.config.max_lag_ms, onsets)
                if method not in ("motion", "clap")
                else None
            )
            if method == "flash":
                motion_rows: list[int] = []
            elif flash is None:
                motion_rows = list(range(len(batch)))
            else:
                motion_rows = [i for i, f in enumerate(flash) if not f.pattern_like]
            # Clap: forced, or (auto) where a window has one impulsive sound and hands meeting.
            claps: dict[int, ClapOutcome] = {}
            if method in ("clap", "auto"):
                assert onsets is not None
                found = analyze_clap(
                    [batch[i] for i in motion_rows],
                    self.device,
                    self.config.max_lag_ms,
                    onsets.rows(motion_rows),
                )
                claps = {
                    i: c
                    for i, c in zip(motion_rows, found, strict=True)
                    if method == "clap" or c.clap_like
                }
                motion_rows = [i for i in motion_rows if i not in claps]
            motion = analyze_motion(
                [batch[i] for i in motion_rows],
                self.device,
                max_lag_ms=self.config.max_lag_ms,
                rate_hz=self.config.motion_rate_hz,
                faces=self._faces,
                mouths=[_mouth_from_tracks(batch[i], shared[i]) for i in motion_rows],
            )
        by_row = dict(zip(motion_rows, motion, strict=True))
        results: list[AvSyncResult] = []
        for i, window in enumerate(batch):
            middle_ns = (window.start_ns + window.end_ns) // 2
            c = claps.get(i)
            if c is not None:
                results.append(_clap_result(c, middle_ns))
                continue
            m = by_row.get(i)
            if m is not None:
                results.append(
                    AvSyncResult(
                        audio_lead_ms=m.audio_lead_ms,
                        confidence=m.confidence,
                        method="motion",
                        measured_at_ns=middle_ns,
                        peak=m.peak,
                        reason=m.reason,
                    )
                )
                continue
            assert flash is not None  # rows not sent to motion were analysed by flash
            f = flash[i]
            at_ns = (
                round(sum(p.video_onset_ns for p in f.pairs) / len(f.pairs))
                if f.pairs
                else middle_ns
            )
            results.append(
                AvSyncResult(
                    audio_lead_ms=f.audio_lead_ms,
                    confidence=f.confidence,
                    method="flash",
                    measured_at_ns=at_ns,
                    pairs=f.pairs,
                    reason=f.reason,
                )
            )
        return results


def _mouth_from_tracks(window: Window, tracks: FaceTracks | None) -> MouthBox | None:
    """The shared tracks' answer for the motion method: the largest face's mouth on the middle
    frame as (x0, y0, x1, y1), ``"none"`` when the tracker sees no face there, None when no
    tracks came (the plugin's own finder looks)."""
    if tracks is None:
        return None
    if not window.video:
        return "none"
    middle = window.video[len(window.video) // 2]
    boxes = [
        obs.box for t in tracks.tracks for obs in t.observations if obs.pts_ns == middle.pts_ns
    ]
    if not boxes:
        return "none"
    mouth = max(boxes, key=lambda b: b.w * b.h).mouth()
    height, width = middle.luma.shape
    x0, y0 = max(0, int(mouth.x)), max(0, int(mouth.y))
    x1, y1 = min(width, int(mouth.x + mouth.w + 0.999)), min(height, int(mouth.y + mouth.h + 0.999))
    if x1 - x0 < 8 or y1 - y0 < 4:
        return "none"
    return (x0, y0, x1, y1)


def _clap_result(c: ClapOutcome, middle_ns: int) -> AvSyncResult:
    # The contact and the sound onset are reported as the one pair they form.
    pairs: tuple[FlashPair, ...] = ()
    if c.contact_ns is not None and c.audio_onset_ns is not None and c.audio_lead_ms is not None:
        pairs = (FlashPair(c.contact_ns, c.audio_onset_ns, c.audio_lead_ms),)
    return AvSyncResult(
        audio_lead_ms=c.audio_lead_ms,
        confidence=c.confidence,
        method="clap",
        measured_at_ns=c.contact_ns if c.contact_ns is not None else middle_ns,
        pairs=pairs,
        reason=c.reason,
    )


class AvSyncFactory:
    """Entry point of the ``avsync`` plugin (group ``crossmodald.plugins``)."""

    config_model: ClassVar[type[PluginConfig]] = AvSyncConfig
    provides: ClassVar[ProductKey[Any] | None] = None

    @classmethod
    def create(cls, config: PluginConfig, device: str) -> AvSyncPlugin:
        """Build the plugin for a validated config on a resolved torch device.

        Raises:
            TypeError: If ``config`` is not an :class:`AvSyncConfig`.
        """
        if not isinstance(config, AvSyncConfig):
            raise TypeError(f"avsync: expected an AvSyncConfig, got {type(config).__name__}")
        return AvSyncPlugin(config, device)
