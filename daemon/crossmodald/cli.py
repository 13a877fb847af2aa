"""The ``crossmodald`` command line: only argument parsing; the work lives in the packages."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from crossmodald import __version__
from crossmodald.bus.events import Envelope
from crossmodald.bus.text import format_event_line
from crossmodald.media import MAX_MEDIA_S
from crossmodald.progress import ProgressBar, media_duration_s
from crossmodald.service.config import (
    ConfigError,
    DaemonConfig,
    WindowConfig,
    format_validation_error,
    load_config,
    validate_config,
)

log = logging.getLogger("crossmodald")

_M = TypeVar("_M", bound=BaseModel)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where help is, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """An option's number: finite (``inf``/``nan`` are refused where they are typed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An option's duration: seconds above 0, at most :data:`~crossmodald.media.MAX_MEDIA_S`."""
    value = finite_float(text)
    if not 0 < value <= MAX_MEDIA_S:
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0 and at most {MAX_MEDIA_S:g}, got {text!r}"
        )
    return value


def _fail(message: str, code: int = 1) -> int:
    print(f"crossmodald: error: {message}", file=sys.stderr)
    return code


def _config_errors(exc: ConfigError) -> int:
    for line in exc.errors:
        print(f"{exc.source}: {line}", file=sys.stderr)
    return 2


# -- run -----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT (a second one exits at once); SIGHUP reloads."""
    from crossmodald.runtime.registry import PluginLoadError
    from crossmodald.service.daemon import Daemon, StartupError
    from crossmodald.service.lifecycle import Signals
    from crossmodald.service.logs import setup_logging
    from crossmodald.service.notify import Notifier

    try:
        config = _with_api_address(load_config(args.config), args.host, args.port)
    except ConfigError as exc:
        return _config_errors(exc)
    setup_logging(args.log_level or config.logging.level, config.logging.format)
    notifier = Notifier.from_env()

    async def main() -> int:
        try:
            daemon = Daemon(
                config,
                config_source=str(args.config or "configs/default.toml"),
                config_path=args.config,
                notifier=notifier,
            )
            await daemon.load_plugins()
        except ConfigError as exc:
            return _config_errors(exc)
        except (PluginLoadError, ValueError) as exc:
            return _fail(str(exc))
        stop = asyncio.Event()
        signals = Signals(stop, reload=daemon.reload_from_file)
        signals.install()
        try:
            await daemon.run(stop)
        except OSError as exc:
            return _fail(exc.strerror or str(exc))
        except (StartupError, ValueError) as exc:  # ValueError: a sink cannot be built
            return _fail(str(exc))
        finally:
            signals.uninstall()
            notifier.close()
        return 0

    return asyncio.run(main())


def _with_api_address(config: DaemonConfig, host: str | None, port: int | None) -> DaemonConfig:
    """``config`` with ``run --host/--port`` in place of ``[api] host/port`` (checked by the
    API's own model: a port in range, tokens for a non-loopback host)."""
    if host is None and port is None:
        return config
    from crossmodald.api_config import ApiConfig

    data = config.api.model_dump()
    data.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
    api = _validated(ApiConfig, "api", data)
    return config.model_copy(update={"api": api.model_copy(update={"enabled": True})})


# -- analyze -------------------------------------------------------------------------------


def _analyze_config(args: argparse.Namespace) -> DaemonConfig:
    base = load_config(args.config) if args.config else DaemonConfig()
    window = base.window
    if args.window is not None or args.hop is not None:
        window = _validated(
            WindowConfig,
            "window",
            {
                **window.model_dump(),
                **({"length_s": args.window} if args.window is not None else {}),
                **({"hop_s": args.hop} if args.hop is not None else {}),
            },
        )
    plugins: list[dict[str, Any]] = [dict(p) for p in base.plugins]
    if args.plugin:
        by_type = {p.get("type"): p for p in plugins}
        plugins = [by_type.get(name, {"type": name}) for name in args.plugin]
    if not plugins:
        plugins = [{"type": "avsync"}]
    if args.format in SUBTITLE_FORMATS:
        if not any(p.get("type") == "transcript" for p in plugins):
            raise ConfigError("arguments", [f"--format {args.format} needs --plugin transcript"])
        # Subtitles take only finals: partials would cost Whisper calls for nothing.
        plugins = [
            {"partials": False, **p} if p.get("type") == "transcript" else p for p in plugins
        ]
    name = Path(args.media).stem if "://" not in args.media else "stream"
    source = {
        "type": "media",
        "name": _safe_name(name),
        "url": args.media,
        "realtime": False,
        "audio_shift_ms": args.audio_shift_ms,
    }
    # The daemon's own validation: what the arguments make is what `run` would accept.
    return validate_config(
        {
            "sources": [source],
            "window": window.model_dump(),
            "plugins": plugins,
            "api": {"enabled": False},
            "logging": base.logging.model_dump(),
        },
        "arguments",
    )


def _validated(model: type[_M], key: str, data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("arguments", format_validation_error(exc, (key,))) from None


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name).lstrip("_.-")
    return (cleaned or "stream")[:64]


#: Confidence from which a window's values count in the summary (the page's threshold too).
DEFAULT_MIN_CONFIDENCE = 0.5
#: Event types that describe the stream itself, not an analysis window.
_STREAM_TYPES = ("stream.", "plugin.")


class _Analysis:
    """Gathers the events of `analyze`; prints them in media-time order and summarises them.

    Windows that end more than one frame after the media (the flushed tail of a file) are left
    out of both the printout and the summary: they hold only part of a window's media.
    """

    def __init__(self, min_confidence: float, bar: ProgressBar) -> None:
        self.min_confidence = min_confidence
        self.bar = bar
        self.events: list[tuple[dict[str, Any], str]] = []

    def __call__(self, envelope: Envelope) -> None:
        event = envelope.as_dict()
        self.events.append((event, envelope.json))
        end_s = int(event["media"]["end_ns"]) / 1e9
        self.bar.advance(envelope.stream, end_s, ended=envelope.type == "stream.end")

    def _media_end_ns(self) -> dict[str, int]:
        """Per stream that ended: the end of its media (its ``stream.end`` event's end)."""
        return {
            str(event["stream"]): int(event["media"]["end_ns"])
            for event, _ in self.events
            if event["type"] == "stream.end"
        }

    def kept(self) -> tuple[list[tuple[dict[str, Any], str]], int]:
        """(events within the media in media-time order, windows left out past the end)."""
        ends = self._media_end_ns()
        kept: list[tuple[dict[str, Any], str]] = []
        past: set[tuple[str, int, int]] = set()
        for event, raw in self.events:
            media = event["media"]
            end = ends.get(str(event["stream"]))
            if _per_window(event) and end is not None and int(media["end_ns"]) > end:
                past.add((str(event["stream"]), int(media["start_ns"]), int(media["end_ns"])))
                continue
            kept.append((event, raw))
        kept.sort(key=_media_order)
        return kept, len(past)

    def summary(self, kept: list[tuple[dict[str, Any], str]], past_end: int) -> dict[str, Any]:
        """Per event type and method (each plugin has its own methods): counts, and for events
        with a confidence the median of each ``*_ms`` value and of the confidence over the
        confident ones (>= ``min_confidence``), and the last value of each ``*_ppm``."""
        windows: set[tuple[str, int, int]] = set()
        groups: dict[str, dict[str, Any]] = {}
        values: dict[str, dict[str, list[float]]] = {}
        errors: list[str] = []
        for event, _ in kept:
            data = event["data"]
            media = event["media"]
            if event["type"] in ("stream.fault", "plugin.error"):
                errors.append(str(data.get("message", "")))
            if _per_window(event):
                windows.add((str(event["stream"]), int(media["start_ns"]), int(media["end_ns"])))
            if event["type"] in ("stream.start", "stream.end"):
                continue
            method = data.get("method")
            key = f"{event['type']} method={method}" if isinstance(method, str) else event["type"]
            group = groups.setdefault(key, {"type": event["type"], "events": 0})
            if isinstance(method, str):
                group["method"] = method
            group["events"] += 1
            if event.get("phase"):
                phases = group.setdefault("phases", {})
                phases[event["phase"]] = phases.get(event["phase"], 0) + 1
            confidence = data.get("confidence")
            if isinstance(confidence, int | float) and not isinstance(confidence, bool):
                group.setdefault("confident", 0)
                if confidence >= self.min_confidence:
                    group["confident"] += 1
                    found = values.setdefault(key, {})
                    for name, value in data.items():
                        if _number(value) and _summarised(name):
                            found.setdefault(name, []).append(float(value))
            for name, value in data.items():
                if name.endswith("_ppm") and _number(value):
                    group.setdefault("last", {})[name] = round(float(value), 1)
        for key, found in values.items():
            groups[key]["median"] = {
                name: round(statistics.median(v), 3 if name == "confidence" else 2)
                for name, v in found.items()
            }
        return {
            "windows": len(windows),
            "windows_past_end": past_end,
            "min_confidence": self.min_confidence,
            "groups": groups,
            "errors": errors,
        }


def _media_order(item: tuple[dict[str, Any], str]) -> tuple[int, int]:
    """Events by media start (a stream's end at its end), then as published."""
    event = item[0]
    media = event["media"]
    at = media["end_ns"] if event["type"] == "stream.end" else media["start_ns"]
    return int(at), int(event["seq"])


def _per_window(event: dict[str, Any]) -> bool:
    """An analysis window's result (not a stream's start/end/fault, not a lasting event)."""
    return not event.get("phase") and not str(event["type"]).startswith(_STREAM_TYPES)


def _summarised(name: str) -> bool:
    """Data fields whose median the summary gives (smoothed values are medians already)."""
    return (name.endswith("_ms") or name == "confidence") and not name.startswith("smoothed_")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: ``analyze --format`` values that write subtitles from the transcript plugin's finals.
SUBTITLE_FORMATS = ("srt", "vtt")


class _Subtitles:
    """Gathers final ``transcript`` events; writes them as subtitles at the end."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def __call__(self, envelope: Envelope) -> None:
        if envelope.type == "transcript":
            self.events.append(envelope.as_dict())
        elif envelope.type in ("stream.fault", "plugin.error"):
            self.errors.append(str(envelope.as_dict()["data"].get("message", "")))

    def write(self, out: TextIO) -> int:
        from crossmodald_plugins.transcript.subtitles import cues, write_srt, write_vtt

        items = cues(self.events)
        out.write(write_srt(items) if self.fmt == "srt" else write_vtt(items))
        return len(items)


def cmd_analyze(args: argparse.Namespace) -> int:
    from crossmodald.service.logs import setup_logging

    try:
        config = _analyze_config(args)
    except ConfigError as exc:
        return _config_errors(exc)
    if not 0.0 <= args.min_confidence <= 1.0:
        return _fail(f"--min-confidence must be within 0..1, got {args.min_confidence:g}", 2)
    setup_logging(args.log_level or "warning", "plain")
    stream = config.sources[0].name
    bar = ProgressBar(
        sys.stderr,
        {stream: media_duration_s(args.media)},
        "analyze",
        enabled=False if args.quiet else None,
    )
    if args.format in SUBTITLE_FORMATS:
        return _analyze_subtitles(args, config, bar)
    analysis = _Analysis(args.min_confidence, bar)
    code = _run_analysis(args, config, bar, analysis)
    if code == 0:
        kept, past_end = analysis.kept()
        for event, raw in kept:
            line = raw if args.format == "jsonl" else format_event_line(event, time="media")
            sys.stdout.write(line + "\n")
        summary = analysis.summary(kept, past_end)
        if args.format == "jsonl":
            print(json.dumps({"summary": summary}), file=sys.stderr)
        else:
            print(format_summary(summary))
    return code


def _run_analysis(
    args: argparse.Namespace,
    config: DaemonConfig,
    bar: ProgressBar,
    on_event: Callable[[Envelope], None],
    *,
    on_media: Callable[[str, int], None] | None = None,
) -> int:
    """Run ``analyze``'s daemon over the media; 0, or the exit code of the one-line error."""
    from crossmodald.harness import run_daemon
    from crossmodald.runtime.registry import PluginLoadError

    async def main() -> int:
        # The daemon as the test harness runs it (blocking queues, no API); eval and
        # calibrate go the same way. What exists once the plugins are loaded (modules, torch,
        # models) lives until exit: frozen out of the collector's sight, full collections
        # stop rescanning it, and exit is ~0.35 s faster with torch.
        try:
            result = await run_daemon(
                config,
                on_event=on_event,
                config_source=str(args.config or "analyze"),
                freeze_gc=True,
                on_media=on_media,
            )
        except ConfigError as exc:
            return _config_errors(exc)
        except (PluginLoadError, ValueError) as exc:
            return _fail(str(exc))
        if result.code != 0:
            message = next(iter(result.errors.values()), None) or "analysis failed"
            return _fail(message)
        return 0

    try:
        return asyncio.run(main())
    finally:
        bar.close()


def _analyze_subtitles(args: argparse.Namespace, config: DaemonConfig, bar: ProgressBar) -> int:
    subtitles = _Subtitles(args.format)
    code = _run_analysis(
        args,
        config,
        bar,
        subtitles,
        on_media=lambda stream, done_ns: bar.advance(stream, done_ns / 1e9),
    )
    if code == 0:
        count = subtitles.write(sys.stdout)
        if not args.quiet:
            print(f"analyze: {count} subtitle cues", file=sys.stderr)
    return code


def format_summary(summary: dict[str, Any]) -> str:
    """The table form of an `analyze` summary: one line per event type and method."""
    past = summary["windows_past_end"]
    lines = [
        f"summary: {summary['windows']} windows"
        + (f" ({past} past the end of the media left out)" if past else "")
        + f"; values are medians over windows with confidence >= {summary['min_confidence']:g}"
    ]
    for key, group in summary["groups"].items():
        parts = [f"{group['events']} events"]
        if "phases" in group:
            parts.append(", ".join(f"{n} {phase}" for phase, n in group["phases"].items()))
        if "confident" in group:
            parts.append(f"{group['confident']} confident")
        shown = [
            f"median {name} {value:+.2f}" if name.endswith("_ms") else f"median {name} {value:.2f}"
            for name, value in group.get("median", {}).items()
        ]
        shown += [f"last {name} {value:+.1f}" for name, value in group.get("last", {}).items()]
        lines.append(f"  {key:<28} " + "; ".join(parts + shown))
    for message in summary["errors"]:
        lines.append(f"  error: {message}")
    return "\n".join(lines)


# -- events / check-config / pattern / plugins -------------------------------------------


def cmd_events(args: argparse.Namespace) -> int:
    from crossmodald.api.client import events_command

    try:
        return asyncio.run(
            events_command(args.url, args.type or [], args.stream or [], args.format)
        )
    except KeyboardInterrupt:
        return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from crossmodald.runtime.registry import PluginRegistry

    source = str(args.file)
    errors: list[str] = []
    config = None
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        errors.extend(exc.errors)
    # Plugin tables are checked by their plugins' own models, also when the rest is invalid.
    tables = _raw_plugin_tables(args.file)
    try:
        PluginRegistry.discover().validate(tables, source)
    except ConfigError as exc:
        errors.extend(e for e in exc.errors if e not in errors)
    if errors:
        for line in errors:
            print(f"{source}: {line}", file=sys.stderr)
        return 2  # an invalid config, as for `run`
    assert config is not None
    print(f"{source}: OK ({len(config.sources)} sources, {len(config.plugins)} plugins)")
    return 0


def _raw_plugin_tables(path: Path) -> list[dict[str, Any]]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # already reported by load_config
    tables = data.get("plugins", [])
    if not isinstance(tables, list):
        return []
    return [t for t in tables if isinstance(t, dict)]


def cmd_plugins(args: argparse.Namespace) -> int:
    from crossmodald.installed import print_installed

    return print_installed(args.format)


def cmd_pattern(args: argparse.Namespace) -> int:
    from crossmodald.ingest.pattern import write_pattern_file
    from crossmodald.service.config import PatternSourceConfig

    try:
        config = PatternSourceConfig.model_validate(
            {
                "type": "pattern",
                "name": "pattern",
                "width": args.width,
                "height": args.height,
                "fps": args.fps,
                "sample_rate": args.sample_rate,
                "audio_lead_ms": args.audio_lead_ms,
                "drift_ppm": args.drift_ppm,
                "period_s": args.period,
                "realtime": False,
            }
        )
    except ValidationError as exc:
        return _fail("; ".join(format_validation_error(exc)), 2)
    try:
        write_pattern_file(config, args.output, duration_s=args.duration)
    except (OSError, ValueError) as exc:
        message = str(exc)
        return _fail(message if str(args.output) in message else f"{args.output}: {message}")
    print(f"wrote {args.output} ({args.duration:g} s, audio_lead_ms={args.audio_lead_ms:+g})")
    return 0


def cmd_fix(args: argparse.Namespace) -> int:
    from crossmodald.fix import FixError, MeasureError, TerminalProgress, fix_file, measure_offset
    from crossmodald.runtime.registry import PluginLoadError
    from crossmodald.service.logs import setup_logging

    src: Path = args.input
    dst: Path = args.output
    # Refuse before a long measurement what the write would refuse anyway.
    if dst.exists() and not args.force:
        return _fail(f"{dst}: exists; pass --force to replace it")
    if not src.is_file():
        return _fail(f"{src}: no such file")
    setup_logging(args.log_level or "warning", "plain")
    if args.measure:
        bar = TerminalProgress("measuring")
        try:
            estimate = asyncio.run(
                measure_offset(src, min_confidence=args.min_confidence, progress=bar)
            )
        except MeasureError as exc:
            bar.done()
            return _fail(f"refusing to fix: {exc}")
        except (FixError, PluginLoadError, ConfigError, ValueError) as exc:
            bar.done()
            return _fail(str(exc))
        bar.done()
        assert estimate.audio_lead_ms is not None
        lead_ms = estimate.audio_lead_ms
        how = (
            f"measured: {estimate.method}, {estimate.windows} of {estimate.windows_total} "
            f"windows, confidence {estimate.confidence:.2f}, spread {estimate.spread_ms:.1f} ms"
        )
    else:
        lead_ms = args.audio_lead_ms
        how = "given"
    bar = TerminalProgress("writing  ")
    try:
        report = fix_file(src, dst, lead_ms, force=args.force, progress=bar)
    except FixError as exc:
        bar.done()
        return _fail(str(exc))
    bar.done()
    correction = report.correction
    print(f"corrected audio_lead_ms = {lead_ms:+.2f} ({how})")
    if report.moved == "audio":
        print(f"  audio moved {report.applied_ms:.3f} ms later; other streams untouched")
    elif report.moved == "video":
        print(
            f"  video, subtitles, data and chapters moved {-report.applied_ms:.3f} ms later "
            "(audio untouched, nothing cut)"
        )
    else:
        print("  nothing to move; streams copied")
    for action in report.streams:
        shift = f", shifted {action.shift_ms:+.3f} ms" if action.shift_ms else ""
        print(
            f"  #{action.index} {action.kind} {action.codec}: {action.packets} packets copied{shift}"
        )
    if report.chapters:
        print(f"  {report.chapters} chapter(s) kept")
    print("  re-encoded: none (every packet copied)")
    print("the same correction elsewhere:")
    print(f"  FFmpeg: {correction.ffmpeg_command(src, dst)}")
    print(
        f"  OBS:    audio source > Advanced Audio Properties > Sync Offset = "
        f"{correction.obs_sync_offset_ms:+.0f} ms"
    )
    print(f"wrote {dst}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from crossmodald.ingest.devices_list import devices_command

    return devices_command(args.format)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from crossmodald.service.calibrate import calibrate_command

    try:
        return asyncio.run(calibrate_command(args.config, args.source, args.seconds))
    except KeyboardInterrupt:
        return 130


def parse_set(item: str) -> tuple[str, Any]:
    """One ``--set KEY=VALUE``: the key, and the value read as JSON where it parses (else the
    text as it is).

    Raises:
        ValueError: ``item`` has no ``=``.
    """
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_eval(args: argparse.Namespace) -> int:
    from crossmodald.service.evaluate import eval_command

    also: dict[str, dict[str, Any]] = {name: {} for name in args.also or []}
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        try:
            key, value = parse_set(item)
        except ValueError as exc:
            return _fail(str(exc), 2)
        # PLUGIN.KEY=VALUE sets a key of an --also plugin; KEY=VALUE one of the evaluated one.
        name, dot, field = key.partition(".")
        target = overrides
        if dot:
            if name not in also:
                return _fail(f"--set {item!r}: {name!r} is not a plugin given with --also", 2)
            target, key = also[name], field
        target[key] = value
    return eval_command(
        args.plugin,
        args.media,
        args.labels,
        task=args.task,
        shifts_ms=args.shifts,
        overrides=overrides,
        device=args.device,
        window_s=args.window,
        hop_s=args.hop,
        second=args.second,
        max_seconds=args.max_seconds,
        progress=None if args.quiet else sys.stderr,
        also=list(also.items()),
        off_screen=args.off_screen,
    )


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from crossmodald_plugins.asd.weights import models_fetch_command

    return models_fetch_command(args.name, args.dest, args.url)


def _add_train_parsers(sub: Any) -> None:
    """``train lipsync``: the trainer lives with its plugin (torch imported only when run)."""
    from crossmodald_plugins.lipsync.cli import add_parser

    add_parser(sub)


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crossmodald",
        description="Real-time cross-modal analysis daemon: A/V sync offsets and audio-visual events.",
    )
    parser.add_argument("--version", action="version", version=f"crossmodald {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (default: the embedded configs/default.toml)")
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--host", help="API address to listen on (overrides [api] host)")
    p.add_argument("--port", type=int, help="API port (overrides [api] port; 0: any free one)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("analyze", help="analyse a media file or URL offline, as fast as possible")
    p.add_argument("media", help="file path or URL (anything FFmpeg opens)")
    p.add_argument("--plugin", action="append", help="plugin to run (repeatable; default avsync)")
    p.add_argument("--window", type=seconds, help="window length in seconds (default 2)")
    p.add_argument("--hop", type=seconds, help="window hop in seconds (default 0.5)")
    p.add_argument(
        "--format",
        choices=["jsonl", "table", *SUBTITLE_FORMATS],
        default="table",
        help="jsonl or table: events; srt or vtt: subtitles from --plugin transcript",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (and no cue count) on stderr"
    )
    p.add_argument("--config", type=Path, help="take window and plugin settings from this config")
    p.add_argument(
        "--min-confidence",
        type=finite_float,
        default=DEFAULT_MIN_CONFIDENCE,
        help="windows below this confidence do not count in the summary (default 0.5)",
    )
    p.add_argument(
        "--audio-shift-ms",
        type=finite_float,
        default=0.0,
        help="shift the audio earlier by this many ms before analysis (testing)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("events", help="subscribe to a running daemon and print its events")
    p.add_argument("url", nargs="?", default="http://127.0.0.1:8750", help="daemon base URL")
    p.add_argument("--type", action="append", help="event type or prefix like 'sync.' (repeatable)")
    p.add_argument("--stream", action="append", help="stream name (repeatable)")
    p.add_argument("--format", choices=["jsonl", "table"], default="table")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("check-config", help="validate a config file; print every error")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "plugins",
        help="list the installed plugins, source types and sink types, with their packages",
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("pattern", help="write a test-pattern file (flash + beep, known offset)")
    p.add_argument("output", type=Path, help="output file: .mp4, .mkv, .webm, .avi, .wav ...")
    p.add_argument("--duration", type=seconds, default=10.0, help="seconds (default 10)")
    p.add_argument(
        "--audio-lead-ms", type=finite_float, default=0.0, help="true A/V offset (+ = audio first)"
    )
    p.add_argument("--fps", default="30", help="frame rate, e.g. 25, 30, 29.97 or 30000/1001")
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--drift-ppm", type=finite_float, default=0.0)
    p.add_argument("--period", type=seconds, default=1.2, help="seconds between flashes")
    p.set_defaults(func=cmd_pattern)

    p = sub.add_parser(
        "fix", help="write a copy of a file with the audio moved into sync (no re-encoding)"
    )
    p.add_argument("input", type=Path, help="media file to correct")
    p.add_argument("output", type=Path, help="corrected copy (.mp4, .mov, .mkv, .webm, .ts)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--audio-lead-ms",
        type=finite_float,
        help="the input's offset to correct (+ = audio ahead of video, as analyze reports it)",
    )
    how.add_argument(
        "--measure",
        action="store_true",
        help="measure the offset first (flash/beep pattern or a clap), refuse if unsure",
    )
    p.add_argument(
        "--min-confidence",
        type=finite_float,
        default=0.5,
        help="with --measure: windows below this confidence do not count (default 0.5)",
    )
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_fix)

    p = sub.add_parser("devices", help="list local cameras and microphones with their modes")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser(
        "calibrate",
        help="measure a source's A/V latency from a clap or flash/beep and print the config fix",
    )
    p.add_argument("source", help="name of the [[sources]] entry to calibrate")
    p.add_argument("--config", type=Path, help="the daemon's config (default: embedded)")
    p.add_argument("--seconds", type=seconds, default=10.0, help="seconds to record (default 10)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="run a plugin over labelled media and print its metrics")
    p.add_argument("plugin", help="plugin name, e.g. speech, avsync, transcript")
    p.add_argument("media", type=Path, help="media file (or folder of clips for lipsync)")
    p.add_argument(
        "labels",
        type=Path,
        nargs="?",
        help="reference labels (RTTM for speech, a text file for transcript)",
    )
    p.add_argument("--task", choices=["speech", "lipsync", "speaker", "transcript"])
    p.add_argument(
        "--shifts",
        type=finite_float,
        nargs="+",
        help="audio shifts in ms, positive: audio early (lipsync: each in turn, default -400 "
        "-200 -80 0 120 240 400; speaker: one, both voices out of sync by it)",
    )
    p.add_argument("--second", type=Path, help="right-hand clip (speaker task)")
    p.add_argument(
        "--off-screen",
        type=Path,
        metavar="CLIP",
        help="speaker: play this third clip's voice with the two faces (a voice from off "
        "screen); correct is no face speaking",
    )
    p.add_argument("--window", type=seconds, help="window length in seconds")
    p.add_argument("--hop", type=seconds, help="window hop in seconds")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="plugin config override (PLUGIN.KEY=VALUE: of a plugin given with --also)",
    )
    p.add_argument(
        "--also",
        action="append",
        metavar="PLUGIN",
        help="lipsync: run this plugin too, in the same daemon over the same windows, and print "
        "its figures beside (e.g. --also avsync --set avsync.method=motion)",
    )
    p.add_argument(
        "--max-seconds",
        type=seconds,
        metavar="S",
        help="analyse only the first S seconds of each clip (a quick check)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (one per clip/shift)"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train a model on your own media")
    train = p.add_subparsers(dest="train_command", required=True, metavar="MODEL")
    _add_train_parsers(train)

    p = sub.add_parser("models", help="manage model weights")
    models = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    f = models.add_parser(
        "fetch", help="download published weights, checked against a pinned sha256"
    )
    f.add_argument("name", help="weights name, e.g. light-asd")
    f.add_argument("--dest", type=Path, help="folder to store it in (default: the models dir)")
    f.add_argument("--url", help="fetch from this address instead of the upstream one")
    f.set_defaults(func=cmd_models_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`crossmodald plugins | head`): as a Unix filter, stop quietly.
        # Python would report the pipe again when it flushes stdout at exit: point it at null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return code
