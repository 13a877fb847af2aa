"""Signals (real ones, sent to this process) and shutdown stages with budgets."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from crossmodald.service.lifecycle import SECOND_SIGNAL_BASE, Signals, run_stage, run_stage_call
from pollkit import until


async def test_stop_then_second_signal_exits_at_once() -> None:
    stop = asyncio.Event()
    exits: list[int] = []
    stopping: list[bool] = []
    signals = Signals(stop, on_stop=lambda: stopping.append(True), exit_now=exits.append)
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 2)
        assert stopping == [True]
        assert exits == []
        os.kill(os.getpid(), signal.SIGINT)
        await until(lambda: exits, 2.0, "the exit", poll_s=0.005)
        assert exits == [SECOND_SIGNAL_BASE + signal.SIGINT]
        assert stopping == [True]  # on_stop only once
    finally:
        signals.uninstall()


async def test_sighup_reloads_and_never_overlaps() -> None:
    stop = asyncio.Event()
    gate = asyncio.Event()
    calls: list[float] = []
    running = 0
    most_at_once = 0

    async def reload() -> None:
        nonlocal running, most_at_once
        running += 1
        most_at_once = max(most_at_once, running)
        calls.append(time.monotonic())
        await gate.wait()
        running -= 1

    signals = Signals(stop, reload=reload, exit_now=lambda code: None)
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: len(calls) == 1, 2.0, "the first reload", poll_s=0.005)
        # Three more while the first runs: they fold into exactly one more reload.
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.05)
        assert len(calls) == 1
        gate.set()
        await until(lambda: len(calls) == 2, 2.0, "the second reload", poll_s=0.005)
        await signals.wait_reload()
        assert len(calls) == 2
        assert most_at_once == 1
        assert signals.reloads == 2
    finally:
        signals.uninstall()


async def test_a_failing_reload_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    outcomes = iter([RuntimeError("broken"), None])

    async def reload() -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    signals = Signals(stop, reload=reload, exit_now=lambda code: None)
    signals.install()
    try:
        signals.on_reload_signal()
        await signals.wait_reload()
        assert "reload failed" in caplog.text
        signals.on_reload_signal()
        await signals.wait_reload()
        assert signals.reloads == 2
    finally:
        signals.uninstall()


async def test_sighup_during_shutdown_is_ignored() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def reload() -> None:
        calls.append(1)

    signals = Signals(stop, reload=reload, exit_now=lambda code: None)
    stop.set()
    signals.on_reload_signal()
    await asyncio.sleep(0.01)
    assert calls == []


async def test_run_stage_waits_then_cancels_what_is_late(caplog: pytest.LogCaptureFixture) -> None:
    quick = asyncio.create_task(asyncio.sleep(0.01), name="quick")
    assert await run_stage("fast", [quick], 1.0)
    slow = asyncio.create_task(asyncio.sleep(30), name="ingest:slow")
    other = asyncio.create_task(asyncio.sleep(0.01), name="ingest:ok")
    started = time.monotonic()
    assert not await run_stage("stop ingest", [slow, other], 0.2)
    assert time.monotonic() - started < 1.0
    assert slow.cancelled()
    assert other.done()
    assert not other.cancelled()
    assert "shutdown stage 'stop ingest' over its 0.2 s budget: cancelling ingest:slow" in (
        caplog.text
    )
    assert await run_stage("nothing", [], 0.1)


async def test_run_stage_call() -> None:
    assert await run_stage_call("close api", asyncio.sleep(0.01), 1.0)
    assert not await run_stage_call("close api", asyncio.sleep(10), 0.05)
