"""Signals and shutdown stages.

* SIGTERM / SIGINT: graceful stop (the stages below); a second one exits at once.
* SIGHUP: reload the config (see :mod:`crossmodald.service.reload`); reloads never overlap,
  and a SIGHUP during a reload queues exactly one more.

Shutdown runs in stages, each with its own time budget (``[service]`` in the config): stop
ingest and finish open windows, drain the plugins, flush the sinks, close the API. A stage
that runs out of time has its remaining tasks cancelled and the next stage begins, so the
whole stop stays within the sum of the budgets (and the unit's ``TimeoutStopSec=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

log = logging.getLogger(__name__)

#: Exit status of an immediate exit on a second stop signal: 128 + the signal number, as a
#: shell reports a process killed by it.
SECOND_SIGNAL_BASE = 128


class Signals:
    """Installs the daemon's signal handlers on the running loop.

    Args:
        stop: Set on the first SIGTERM/SIGINT.
        reload: Called (as a task) on SIGHUP; None ignores SIGHUP with a log line.
        on_stop: Called once on the first stop signal, before ``stop`` is set (e.g. to send
            ``STOPPING=1``).
        exit_now: Called with the exit status on a second stop signal (default
            :func:`os._exit` after flushing stdio: a stuck shutdown must not outlive it).
    """

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        reload: Callable[[], Awaitable[object]] | None = None,
        on_stop: Callable[[], object] | None = None,
        exit_now: Callable[[int], object] | None = None,
    ) -> None:
        self._stop = stop
        self._reload = reload
        self._on_stop = on_stop
        self._exit_now = exit_now or _exit_now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        self.stop_signals = 0
        self.reloads = 0

    def install(self) -> None:
        """Install the handlers on the running loop (call from a coroutine)."""
        self._loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self.on_stop_signal, signum)
        self._loop.add_signal_handler(signal.SIGHUP, self.on_reload_signal)

    def uninstall(self) -> None:
        """Restore the default handlers."""
        if self._loop is None:
            return
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._loop.remove_signal_handler(signum)
        self._loop = None

    def on_stop_signal(self, signum: int) -> None:
        """First stop signal: begin the graceful stop; a later one: exit at once."""
        self.stop_signals += 1
        name = signal.Signals(signum).name
        if self.stop_signals > 1:
            log.warning("%s again: exiting at once", name)
            self._exit_now(SECOND_SIGNAL_BASE + signum)
            return
        log.info("%s: stopping (send it again to exit at once)", name)
        if self._on_stop is not None:
            self._on_stop()
        self._stop.set()

    def on_reload_signal(self) -> None:
        """SIGHUP: start a reload, or queue one more if a reload is running."""
        if self._reload is None:
            log.info("SIGHUP: nothing to reload")
            return
        if self._stop.is_set():
            log.info("SIGHUP during shutdown: ignored")
            return
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_task = asyncio.get_running_loop().create_task(
            self._reload_loop(), name="daemon:reload"
        )

    async def _reload_loop(self) -> None:
        assert self._reload is not None
        while True:
            self._reload_again = False
            self.reloads += 1
            try:
                await self._reload()
            except Exception:  # a failed reload keeps the old config running
                log.exception("reload failed")
            if not self._reload_again or self._stop.is_set():
                return

    async def wait_reload(self) -> None:
        """Wait for a running reload (if any) to end."""
        if self._reload_task is not None:
            await asyncio.wait([self._reload_task])


def _exit_now(code: int) -> None:
    # Everything the sinks took is already written (they flush per batch); what is queued in
    # Python is given up on purpose: the operator asked twice.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


async def run_stage(
    name: str,
    tasks: Collection[asyncio.Task[object]] | Collection[asyncio.Task[None]],
    budget_s: float,
) -> bool:
    """Wait up to ``budget_s`` for ``tasks``; cancel what is left. True when all finished.

    Args:
        name: The stage, for the log ("stop ingest").
        tasks: The tasks that make up the stage (already started).
        budget_s: The stage's time budget in seconds.
    """
    pending = [task for task in tasks if not task.done()]
    if not pending:
        return True
    started = time.monotonic()
    _done, late = await asyncio.wait(pending, timeout=budget_s)
    if not late:
        log.debug("shutdown stage %r done in %.3f s", name, time.monotonic() - started)
        return True
    log.warning(
        "shutdown stage %r over its %.1f s budget: cancelling %s",
        name,
        budget_s,
        ", ".join(sorted(task.get_name() for task in late)),
    )
    for task in late:
        task.cancel()
    # Cancelled tasks get a moment to unwind; one that ignores cancellation is left behind.
    await asyncio.wait(late, timeout=min(1.0, budget_s))
    return False


async def run_stage_call(name: str, call: Coroutine[Any, Any, object], budget_s: float) -> bool:
    """Run one coroutine as a stage with a budget; True when it finished in time."""
    task = asyncio.create_task(call, name=f"stage:{name}")
    return await run_stage(name, [task], budget_s)
