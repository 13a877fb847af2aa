"""The avsync plugin: factory, the per-daemon plugin (batched inference) and its entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from crossmodald.media import StreamInfo, Window
from crossmodald.runtime.plugin import PluginConfig
from crossmodald_plugins.avsync.config import AvSyncConfig
from crossmodald_plugins.avsync.result import AvSyncResult, FlashPair
from crossmodald_plugins.avsync.session import AvSyncSession

if TYPE_CHECKING:
    from crossmodald_plugins.avsync.clap import ClapOutcome

# torch and the analysis modules (which import torch) load when a plugin is built, not with the
# entry point: `check-config` and `plugins` only need the factory and its config model (~2 s).


class AvSyncPlugin:
    """Estimates the audio/video offset of every window; one instance per daemon.

    Args:
        config: The validated config.
        device: A resolved torch device string ("cpu", "cuda:0", ...).
    """

    name = "avsync"

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

    def open(self, stream: StreamInfo) -> AvSyncSession:
        """A session for a new stream.

        Raises:
            ValueError: If the stream lacks audio or video.
        """
        problem = self.check_stream(stream)
        if problem is not None:
            raise ValueError(f"avsync: stream {stream.name!r} {problem}")
        return AvSyncSession(stream, self.config)

    def infer(self, batch: Sequence[Window]) -> list[AvSyncResult]:
        """One result per window, computed for the whole batch at once (on a worker thread)."""
        import torch

        from crossmodald_plugins.avsync.clap import analyze_clap
        from crossmodald_plugins.avsync.flash import analyze_flash, audio_onsets
        from crossmodald_plugins.avsync.motion import analyze_motion

        if not batch:
            return []
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

    @classmethod
    def create(cls, config: PluginConfig, device: str) -> AvSyncPlugin:
        """Build the plugin for a validated config on a resolved torch device.

        Raises:
            TypeError: If ``config`` is not an :class:`AvSyncConfig`.
        """
        if not isinstance(config, AvSyncConfig):
            raise TypeError(f"avsync: expected an AvSyncConfig, got {type(config).__name__}")
        return AvSyncPlugin(config, device)
