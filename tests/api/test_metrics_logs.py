"""Structured logs: JSON fields, one line per record, journald priority prefixes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from crossmodald.service.logs import (
    JsonFormatter,
    make_formatter,
    setup_logging,
    stderr_is_journal,
)


def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("crossmodald.test")
    return logger.makeRecord(logger.name, level, __file__, 42, msg, (), None, extra=extra)


def test_json_fields_extra_and_one_line() -> None:
    record = _record(logging.WARNING, "stream %s stalled\nsecond line", stream="cam1", lag_s=2.5)
    record.args = ("cam1",)
    record.msg = "stream %s stalled\nsecond line"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning"
    assert out["logger"] == "crossmodald.test"
    assert out["msg"] == "stream cam1 stalled\nsecond line"
    assert out["stream"] == "cam1"
    assert out["lag_s"] == 2.5
    assert out["pid"] == os.getpid()
    assert out["src"].endswith(":42")
    assert out["ts"].endswith("Z")


def test_json_exception_stays_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc"]


async def test_json_names_the_asyncio_task() -> None:
    formatter = JsonFormatter()

    async def work() -> str:
        return formatter.format(_record(logging.INFO, "hello"))

    line = await asyncio.create_task(work(), name="ingest:cam1")
    assert json.loads(line)["task"] == "ingest:cam1"


def test_json_odd_extra_value_does_not_lose_the_record() -> None:
    line = JsonFormatter().format(_record(logging.INFO, "x", path=Path("/tmp/a")))
    assert json.loads(line)["path"] == "/tmp/a"


def test_journal_priority_prefix_on_every_line() -> None:
    plain = make_formatter("plain", journal=True)
    text = plain.format(_record(logging.ERROR, "a\nb"))
    assert text.split("\n") == ["<3>ERROR crossmodald.test: a", "<3>b"]
    assert (
        make_formatter("json", journal=True).format(_record(logging.DEBUG, "d")).startswith("<7>{")
    )
    assert make_formatter("plain", journal=True).format(_record(logging.WARNING, "w"))[:3] == "<4>"
    assert make_formatter("plain", journal=True).format(_record(logging.INFO, "i"))[:3] == "<6>"
    assert not make_formatter("plain").format(_record(logging.INFO, "i")).startswith("<")


def test_journal_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stderr_is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not stderr_is_journal(stream)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal(io.StringIO())


def test_setup_logging_json(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("info", "json", journal=False)
        logging.getLogger("crossmodald.x").info("ready", extra={"streams": 4})
        logging.getLogger("crossmodald.x").debug("hidden")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["streams"] == 4
