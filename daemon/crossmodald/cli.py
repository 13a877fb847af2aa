"""The ``crossmodald`` command line: only argument parsing; the work lives in the packages."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from crossmodald import __version__
from crossmodald.bus.events import Envelope
from crossmodald.service.config import (
    ConfigError,
    DaemonConfig,
    MediaSourceConfig,
    WindowConfig,
    format_validation_error,
    load_config,
)

log = logging.getLogger("crossmodald")

_M = TypeVar("_M", bound=BaseModel)


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
        config = load_config(args.config)
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
        except StartupError as exc:
            return _fail(str(exc))
        finally:
            signals.uninstall()
            notifier.close()
        return 0

    return asyncio.run(main())


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
    name = Path(args.media).stem if "://" not in args.media else "stream"
    source = MediaSourceConfig(
        type="media",
        name=_safe_name(name),
        url=args.media,
        realtime=False,
        audio_shift_ms=args.audio_shift_ms,
    )
    return DaemonConfig.model_validate(
        {
            "sources": [source.model_dump()],
            "window": window.model_dump(),
            "plugins": plugins,
            "api": {"enabled": False},
            "logging": base.logging.model_dump(),
        }
    )


def _validated(model: type[_M], key: str, data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("arguments", format_validation_error(exc, (key,))) from None


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name).lstrip("_.-")
    return (cleaned or "stream")[:64]


class _Printer:
    """Prints events as they are published and gathers the summary of `analyze`."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self.offsets: list[float] = []
        self.confidences: list[float] = []
        self.windows = 0
        self.methods: dict[str, int] = {}
        self.drift_ppm: float | None = None
        self.errors: list[str] = []

    def __call__(self, envelope: Envelope) -> None:
        event = (
            envelope.as_dict() if self.fmt == "table" or envelope.type.startswith("sync.") else None
        )
        if envelope.type == "sync.offset" and event is not None:
            data = event["data"]
            self.windows += 1
            if data.get("audio_lead_ms") is not None:
                self.offsets.append(float(data["audio_lead_ms"]))
                self.confidences.append(float(data.get("confidence", 0.0)))
                method = str(data.get("method", "?"))
                self.methods[method] = self.methods.get(method, 0) + 1
            if data.get("drift_ppm") is not None:
                self.drift_ppm = float(data["drift_ppm"])
        if envelope.type in ("stream.fault", "plugin.error"):
            data = envelope.as_dict()["data"]
            self.errors.append(str(data.get("message", "")))
        if self.fmt == "jsonl":
            self.out.write(envelope.json + "\n")
        else:
            assert event is not None
            self.out.write(format_event_line(event) + "\n")

    def summary(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "windows_with_offset": len(self.offsets),
            "median_audio_lead_ms": round(statistics.median(self.offsets), 2)
            if self.offsets
            else None,
            "median_confidence": round(statistics.median(self.confidences), 3)
            if self.confidences
            else None,
            "methods": self.methods,
            "drift_ppm": round(self.drift_ppm, 1) if self.drift_ppm is not None else None,
        }


def format_event_line(event: dict[str, Any]) -> str:
    """A one-line human summary of an event JSON object."""
    media = event.get("media", {})
    start_s = media.get("start_ns", 0) / 1e9
    end_s = media.get("end_ns", 0) / 1e9
    data = event.get("data", {})
    phase = f" {event['phase']}" if event.get("phase") else ""
    parts: list[str] = []
    for key, value in data.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:+.2f}" if key.endswith("_ms") else f"{key}={value:.3g}")
        elif value is None or isinstance(value, dict | list):
            continue
        else:
            parts.append(f"{key}={value}")
    return (
        f"{start_s:9.3f}-{end_s:<9.3f} {event.get('stream', ''):<12} {event['type']}{phase} "
        + " ".join(parts)
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    from crossmodald.harness import run_daemon
    from crossmodald.runtime.registry import PluginLoadError
    from crossmodald.service.logs import setup_logging

    try:
        config = _analyze_config(args)
    except ConfigError as exc:
        return _config_errors(exc)
    except ValidationError as exc:
        return _fail("; ".join(format_validation_error(exc)), 2)
    setup_logging(args.log_level or "warning", "plain")
    printer = _Printer(args.format, sys.stdout)

    async def main() -> int:
        # The daemon as the test harness runs it (blocking queues, no API); eval and
        # calibrate go the same way. What exists once the plugins are loaded (modules, torch,
        # models) lives until exit: frozen out of the collector's sight, full collections
        # stop rescanning it, and exit is ~0.35 s faster with torch.
        try:
            result = await run_daemon(
                config,
                on_event=printer,
                config_source=str(args.config or "analyze"),
                freeze_gc=True,
            )
        except ConfigError as exc:
            return _config_errors(exc)
        except (PluginLoadError, ValueError) as exc:
            return _fail(str(exc))
        if result.code != 0:
            message = next(iter(result.errors.values()), None) or "analysis failed"
            return _fail(message)
        return 0

    code = asyncio.run(main())
    if code == 0:
        summary = printer.summary()
        if args.format == "jsonl":
            print(json.dumps({"summary": summary}), file=sys.stderr)
        else:
            print(_format_summary(summary))
    return code


def _format_summary(summary: dict[str, Any]) -> str:
    lead = summary["median_audio_lead_ms"]
    conf = summary["median_confidence"]
    drift = summary["drift_ppm"]
    lines = [
        "summary:",
        f"  windows analysed      {summary['windows']}",
        f"  windows with offset   {summary['windows_with_offset']}",
        f"  median audio_lead_ms  {lead:+.2f}" if lead is not None else "  median audio_lead_ms  -",
        f"  median confidence     {conf:.3f}" if conf is not None else "  median confidence     -",
        f"  methods               {summary['methods']}",
        f"  drift_ppm             {drift:+.1f}"
        if drift is not None
        else "  drift_ppm             -",
    ]
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
        return 1
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
    except ValueError as exc:
        return _fail(str(exc).splitlines()[-1], 2)
    try:
        write_pattern_file(config, args.output, duration_s=args.duration)
    except (OSError, ValueError) as exc:
        message = str(exc)
        return _fail(message if str(args.output) in message else f"{args.output}: {message}")
    print(f"wrote {args.output} ({args.duration:g} s, audio_lead_ms={args.audio_lead_ms:+g})")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from crossmodald.ingest.devices_list import devices_command

    return devices_command("json" if args.json else "table")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from crossmodald.service.calibrate import calibrate_command

    try:
        return asyncio.run(calibrate_command(args.config, args.source, args.seconds))
    except KeyboardInterrupt:
        return 130


def cmd_eval(args: argparse.Namespace) -> int:
    from crossmodald.service.evaluate import DEFAULT_SHIFTS_MS, eval_command

    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            return _fail(f"--set {item!r}: expected KEY=VALUE", 2)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return eval_command(
        args.plugin,
        args.media,
        args.labels,
        task=args.task,
        shifts_ms=args.shifts or DEFAULT_SHIFTS_MS,
        overrides=overrides,
        device=args.device,
        window_s=args.window,
        hop_s=args.hop,
        second=args.second,
        max_seconds=args.max_seconds,
        progress=None if args.quiet else sys.stderr,
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
    parser = argparse.ArgumentParser(
        prog="crossmodald",
        description="Real-time cross-modal analysis daemon: A/V sync offsets and audio-visual events.",
    )
    parser.add_argument("--version", action="version", version=f"crossmodald {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (default: the embedded configs/default.toml)")
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("analyze", help="analyse a media file or URL offline, as fast as possible")
    p.add_argument("media", help="file path or URL (anything FFmpeg opens)")
    p.add_argument("--plugin", action="append", help="plugin to run (repeatable; default avsync)")
    p.add_argument("--window", type=float, help="window length in seconds (default 2)")
    p.add_argument("--hop", type=float, help="window hop in seconds (default 0.5)")
    p.add_argument("--format", choices=["jsonl", "table"], default="table")
    p.add_argument("--config", type=Path, help="take window and plugin settings from this config")
    p.add_argument(
        "--audio-shift-ms",
        type=float,
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
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument(
        "--audio-lead-ms", type=float, default=0.0, help="true A/V offset (+ = audio first)"
    )
    p.add_argument("--fps", default="30", help="frame rate, e.g. 25, 30, 29.97 or 30000/1001")
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--drift-ppm", type=float, default=0.0)
    p.add_argument("--period", type=float, default=1.2, help="seconds between flashes")
    p.set_defaults(func=cmd_pattern)

    p = sub.add_parser("devices", help="list local cameras and microphones with their modes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser(
        "calibrate",
        help="measure a source's A/V latency from a clap or flash/beep and print the config fix",
    )
    p.add_argument("source", help="name of the [[sources]] entry to calibrate")
    p.add_argument("--config", type=Path, help="the daemon's config (default: embedded)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds to record (default 10)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="run a plugin over labelled media and print its metrics")
    p.add_argument("plugin", help="plugin name, e.g. speech, avsync")
    p.add_argument("media", type=Path, help="media file (or folder of clips for lipsync)")
    p.add_argument("labels", type=Path, nargs="?", help="reference labels (RTTM for speech)")
    p.add_argument("--task", choices=["speech", "lipsync", "speaker"])
    p.add_argument("--shifts", type=float, nargs="+", help="audio shifts in ms (lipsync)")
    p.add_argument("--second", type=Path, help="right-hand clip (speaker task)")
    p.add_argument("--window", type=float, help="window length in seconds")
    p.add_argument("--hop", type=float, help="window hop in seconds")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="plugin config override")
    p.add_argument(
        "--max-seconds",
        type=float,
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
