"""Benchmark: the transcript plugin's accuracy, speed and live latency on this machine.

Prints, each with the baseline measured in the same run:

- **WER** of the final transcripts (``crossmodald eval transcript``'s path: the daemon's own
  pipeline over a file) on the JFK clip in ../shared/media (skipped when absent) and on sentences
  spoken by espeak-ng, and the **real-time factor**, with ``context = "segment"`` (the default)
  against ``context = "full"`` (Whisper's 30 s input, the baseline) as a ratio;
- **final-transcript latency** after speech ends, p50 / p99, for one and for N live streams: the
  sentences file is read by a ``media`` source with ``realtime = true`` (paced like a live
  feed), windows and plugins as ``crossmodald run`` runs them (windows dropped on overload, not
  waited for), and each final's latency is the daemon's monotonic time when it was published
  minus when the audio of the sentence's last spoken sample entered the daemon. The baseline is
  the ``speech`` plugin's own ``end`` event for the same sentences in the same run (VAD and
  windowing alone, without Whisper), reported as a ratio;
- optionally (``--speaker``), **who said what** on two talking heads side by side with the voice
  of one: the share of transcribed words given to the face whose voice plays, with the
  ``speaker`` plugin (Light-ASD weights from ../shared/models when there, else its weight-free
  fallback).

Run it under nice on the shared machine:

    nice python benchmarks/bench_transcript.py [--streams 4] [--speaker]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "plugins"))

from speechkit import LONG_SENTENCE, SENTENCES, Spoken, compose, espeak_available  # noqa: E402

from crossmodald.bus.events import Envelope  # noqa: E402
from crossmodald.harness import event_of, harness_config  # noqa: E402
from crossmodald.ingest.base import Source  # noqa: E402
from crossmodald.media import AudioChunk, StreamInfo  # noqa: E402
from crossmodald.runtime.host import Overload  # noqa: E402
from crossmodald.service.config import SourceConfig  # noqa: E402
from crossmodald.service.daemon import Daemon, default_source_factory  # noqa: E402
from crossmodald.service.evaluate import compose_side_by_side, evaluate_transcript  # noqa: E402

SHARED = REPO.parent / "shared"
JFK = SHARED / "media" / "speech_jfk_whisper.flac"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- WER and real-time factor -------------------------------------------------------------------


def accuracy(tmp: Path, sentences_wav: Path, sentences: list[Spoken]) -> None:
    reference = tmp / "sentences.txt"
    reference.write_text("\n".join(s.text for s in sentences) + "\n")
    jfk_ref = tmp / "jfk.txt"
    jfk_ref.write_text(JFK_TEXT + "\n")
    cases = [("espeak-ng sentences", sentences_wav, reference)]
    if JFK.is_file():
        cases.insert(0, ("JFK clip", JFK, jfk_ref))
    else:
        print(f"JFK clip: skipped ({JFK} is absent)")
    print("\nWER and real-time factor (offline, crossmodald eval transcript):")
    for label, media, ref in cases:
        rows = {}
        for context in ("segment", "full"):
            m = evaluate_transcript(media, ref, overrides={"context": context})
            rows[context] = m
            e = m.errors
            print(
                f"  {label:<22} context={context:<8} WER {e.wer:6.2%} "
                f"({e.errors}/{e.reference_words})  RTF {m.rtf:.3f}  "
                f"({m.media_s:.1f} s in {m.wall_s:.2f} s)"
            )
        seg, full = rows["segment"], rows["full"]
        print(
            f"  {label:<22} segment/full: RTF x{seg.rtf / full.rtf:.2f}, "
            f"WER {seg.errors.wer:.2%} vs {full.errors.wer:.2%}"
        )


# -- live latency -------------------------------------------------------------------------------


class _Tap:
    """A source passed through, noting when each audio chunk entered the daemon."""

    def __init__(self, inner: Source, arrivals: list[tuple[int, int, int]]) -> None:
        self.name = inner.name
        self._inner = inner
        self._arrivals = arrivals

    async def open(self) -> StreamInfo:
        return await self._inner.open()

    def __aiter__(self) -> Any:
        return self._items()

    async def _items(self) -> Any:
        async for item in self._inner:
            if isinstance(item, AudioChunk):
                self._arrivals.append((item.pts_ns, item.end_ns, time.monotonic_ns()))
            yield item

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Live:
    transcript_ms: list[float]
    speech_ms: list[float]
    finals: int
    missed: int
    partials: int
    dropped: int


async def live(path: Path, sentences: list[Spoken], streams: int) -> Live:
    sources = [
        {"type": "media", "name": f"live{i}", "url": str(path), "realtime": True}
        for i in range(streams)
    ]
    plugins = [
        {"type": "speech", "device": "cpu", "min_silence_ms": 300, "updates": False},
        {"type": "transcript", "device": "cpu"},
    ]
    config = harness_config(sources, plugins)
    arrivals: dict[str, list[tuple[int, int, int]]] = {s["name"]: [] for s in sources}
    published: list[tuple[int, Envelope]] = []
    build = default_source_factory()

    def make_source(source_config: SourceConfig) -> Source:
        return _Tap(build(source_config), arrivals[source_config.name])

    def listen(envelope: Envelope) -> None:
        published.append((time.monotonic_ns(), envelope))

    daemon = Daemon(
        config,
        source_factory=make_source,
        overload=Overload.DROP_OLDEST,
        serve_api=False,
        listeners=(listen,),
        config_source="bench",
    )
    await daemon.load_plugins()
    await daemon.run(asyncio.Event(), exit_when_sources_end=True)

    def entered(stream: str, t_ns: int) -> int | None:
        for start, end, mono in arrivals[stream]:
            if start <= t_ns < end:
                return mono
        return None

    out = Live([], [], 0, 0, 0, 0)
    for stream in arrivals:
        events = [(mono, event_of(e)) for mono, e in published if e.stream == stream]
        for said in sentences:
            end_ns = round(said.end_s * 1e9)
            speech_end = entered(stream, end_ns - 1_000_000)
            if speech_end is None:
                continue
            for kind, sink in (("transcript", out.transcript_ms), ("speech", out.speech_ms)):
                # The first end event whose span holds the sentence's end.
                match = next(
                    (
                        mono
                        for mono, e in events
                        if e.type == kind
                        and e.phase is not None
                        and e.phase.value == "end"
                        and e.start_ns <= end_ns <= e.end_ns + 200_000_000
                    ),
                    None,
                )
                if match is None:
                    out.missed += kind == "transcript"
                    continue
                sink.append((match - speech_end) / 1e6)
                out.finals += kind == "transcript"
        for _mono, e in events:
            if e.type == "transcript" and e.phase is not None and e.phase.value == "update":
                out.partials += 1
    return out


def report_live(label: str, m: Live) -> None:
    t, s = m.transcript_ms, m.speech_ms
    if not t or not s:
        print(f"  {label}: no finals matched ({m.missed} missed)")
        return
    print(
        f"  {label:<10} final transcript after speech ends: p50 {pct(t, 0.5):6.0f} ms  "
        f"p99 {pct(t, 0.99):6.0f} ms  max {max(t):6.0f} ms  (n={len(t)}, missed {m.missed}, "
        f"partials {m.partials})"
    )
    print(
        f"  {label:<10} baseline speech end (VAD only):   p50 {pct(s, 0.5):6.0f} ms  "
        f"p99 {pct(s, 0.99):6.0f} ms  -> transcript/speech p50 x{statistics.median(t) / statistics.median(s):.2f}"
    )


# -- who said what ------------------------------------------------------------------------------


def attribution(tmp: Path, seconds: float | None) -> None:
    from crossmodald.harness import run_plugins_sync

    media = SHARED / "media"
    left, right = (
        media / "talkinghead_hdtf_aoc_25fps.mp4",
        media / "talkinghead_hdtf_markey_25fps.mp4",
    )
    if not (left.is_file() and right.is_file()):
        print(f"\nattribution: skipped ({media} is absent)")
        return
    weights = SHARED / "models" / "light-asd" / "pretrain_AVA_CVPR.model"
    speaker: dict[str, Any] = {"type": "speaker", "device": "cpu", "single_speaker": True}
    if weights.is_file():
        speaker["weights"] = str(weights)
    print(f"\nwho said what (speaker: {'Light-ASD AVA' if weights.is_file() else 'fallback'}):")
    right_words = all_words = 0
    for side in ("left", "right"):
        path = compose_side_by_side(
            left, right, tmp / f"{side}.mp4", audio_from=side, duration_s=seconds
        )
        result = run_plugins_sync(
            [{"type": "media", "name": side, "url": str(path), "realtime": False}],
            [
                {"type": "faces", "device": "cpu"},
                speaker,
                {"type": "transcript", "device": "cpu", "partials": False},
            ],
        )
        events = result.events(side)
        width = result.streams[side].info.width if result.streams[side].info else 0
        sides: dict[int, str] = {}
        for e in events:
            box = e.data.get("box")
            if e.type == "face" and isinstance(box, list) and len(box) == 4:
                cx = float(box[0]) + float(box[2]) / 2
                sides[int(e.data["track_id"])] = "left" if cx < (width or 0) / 2 else "right"  # type: ignore[arg-type]
        words = [
            w
            for e in events
            if e.type == "transcript" and e.phase is not None and e.phase.value == "end"
            for w in e.data["words"]  # type: ignore[union-attr]
        ]
        good = sum(
            1 for w in words if isinstance(w["speaker"], int) and sides.get(w["speaker"]) == side
        )
        others = sorted({str(w["speaker"]) for w in words})
        print(
            f"  voice of the {side:<5} face: {good}/{len(words)} words to it (speakers seen: {others})"
        )
        right_words += good
        all_words += len(words)
    share = right_words / all_words if all_words else 0.0
    print(
        f"  share of words given to the face whose voice plays: {share:.1%} ({right_words}/{all_words})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4, help="streams of the multi-stream run")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--speaker", action="store_true", help="also measure who said what")
    parser.add_argument("--speaker-seconds", type=float, default=None)
    parser.add_argument(
        "--repeat", type=int, default=1, help="say the sentences this many times (more samples)"
    )
    args = parser.parse_args()
    if not espeak_available():
        print("espeak-ng is not installed (apt-get install espeak-ng)")
        return 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sentences_wav = tmp / "sentences.wav"
        said = [*SENTENCES, LONG_SENTENCE, *SENTENCES[:2]] * max(1, args.repeat)
        sentences = compose(sentences_wav, said, gap_s=1.5)
        speech_s = sum(s.end_s - s.start_s for s in sentences)
        print(f"synthesised {len(sentences)} sentences, {speech_s:.1f} s of speech")
        if not args.skip_accuracy:
            accuracy(tmp, sentences_wav, sentences)
        if not args.skip_live:
            print(
                "\nlive latency (media source realtime, windows 2 s / hop 0.5 s / lateness 0.2 s):"
            )
            for n in (1, args.streams):
                report_live(
                    f"{n} stream{'s' if n > 1 else ''}",
                    asyncio.run(live(sentences_wav, sentences, n)),
                )
        if args.speaker:
            attribution(tmp, args.speaker_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
