"""Every ``crossmodald ...`` command line in README.md and docs/*.md parses with the real CLI.

Command lines in code blocks (``$ crossmodald ...``, ``ExecStart=.../crossmodald ...``, a line
that starts with ``crossmodald``) and in inline code are parsed by :func:`build_parser` without
running anything. A synopsis (``crossmodald analyze MEDIA [--plugin P] [--format table|jsonl]``)
is checked for its subcommand and that every option it names exists there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from crossmodald.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Shell words that end a command line.
_ENDS = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "&"}


def _code_lines(text: str) -> list[tuple[str, bool]]:
    """(line, inline) for lines of fenced code blocks (continuations joined) and inline code."""
    out: list[tuple[str, bool]] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL):
        out += [(line, False) for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    out += [(span.replace("\\|", "|"), True) for span in re.findall(r"`([^`\n]+)`", prose)]
    return out


def _command(line: str) -> list[str] | None:
    """The arguments after ``crossmodald`` on a line, or None when it runs no crossmodald."""
    line = line.split(" #", 1)[0].strip().removeprefix("$ ").removeprefix("sudo ")
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]) and "/" not in words[0]:
        words = words[1:]  # VAR=value before the command
    for i, word in enumerate(words[:1]):
        program = word.rsplit("=", 1)[-1]  # ExecStart=/opt/.../crossmodald
        if Path(program).name == "crossmodald":
            args: list[str] = []
            for rest in words[i + 1 :]:
                if rest in _ENDS:
                    break
                args.append(rest)
            return args or None
    return None


def documented_commands() -> list[tuple[str, list[str], bool]]:
    """(where, arguments, inline) of every documented command line."""
    found: list[tuple[str, list[str], bool]] = []
    for doc in DOCS:
        for line, inline in _code_lines(doc.read_text(encoding="utf-8")):
            args = _command(line)
            if args is not None:
                found.append((f"{doc.relative_to(REPO)}: {line.strip()}", args, inline))
    return found


COMMANDS = documented_commands()


def _is_synopsis(args: list[str]) -> bool:
    return any("[" in a or "|" in a or a.isupper() or a in ("...", "FILE") for a in args)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_the_docs_name_commands() -> None:
    assert len(COMMANDS) >= 30, len(COMMANDS)
    assert {args[0] for _, args, _ in COMMANDS} >= {"run", "analyze", "events", "calibrate"}
    assert len([c for c in COMMANDS if not c[2]]) >= 15  # full lines in code blocks


@pytest.mark.parametrize(("where", "args", "inline"), COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_line_parses(where: str, args: list[str], inline: bool) -> None:
    # Inline code in prose names a command (`crossmodald calibrate`) or gives its synopsis;
    # a line in a code block is a command to run and must parse whole.
    parser = build_parser()
    if inline or _is_synopsis(args):
        sub = _subparsers(parser)
        assert args[0] in sub, f"{where}: no command {args[0]!r}"
        target = sub[args[0]]
        # Commands with actions of their own (`models fetch`, `train lipsync`).
        if len(args) > 1 and args[1] in _subparsers(target):
            target = _subparsers(target)[args[1]]
        known = set(target._option_string_actions)
        named = {m for a in args for m in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", a)}
        assert named <= known, f"{where}: unknown options {sorted(named - known)}"
        return
    err = io.StringIO()
    code: int | str | None = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parsed = parser.parse_args(args)
    except SystemExit as exc:  # --help and --version exit 0 after printing
        code = exc.code
    else:
        assert callable(parsed.func)
    assert code in (None, 0), f"{where}: {err.getvalue().strip()}"


def test_a_wrong_line_would_fail() -> None:
    # The check itself: the lines the issue found wrong are refused by the parser.
    for wrong in (["devices", "--json"], ["calibrate", "--source", "studio"], ["run", "--bogus"]):
        with (
            pytest.raises(SystemExit) as exc,
            contextlib.redirect_stderr(io.StringIO()),
        ):
            build_parser().parse_args(wrong)
        assert exc.value.code == 2
    assert _command("ExecStart=/opt/crossmodald/bin/crossmodald run --config /x.toml") == [
        "run",
        "--config",
        "/x.toml",
    ]
    assert _command("curl http://127.0.0.1:8750/crossmodald.toml") is None
