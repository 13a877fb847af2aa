"""The host's optional ``finish(state)``: run on the worker thread when a stream ends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from test_host import CountPlugin, info, start, window

from crossmodald.bus.events import Event
from crossmodald.media import StreamInfo


class FinishingPlugin(CountPlugin):
    """Keeps a per-stream tally in its state; ``finish`` returns it (or fails on request)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.finish_threads: list[str] = []

    def new_state(self, stream: StreamInfo) -> Any:
        return {"stream": stream.name}

    def finish(self, state: dict[str, str]) -> str | None:
        self.finish_threads.append(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("cannot finish")
        return f"finished {state['stream']}"


async def _run(plugin: CountPlugin) -> list[Event]:
    host, events, task = await start(plugin)
    assert host.open_stream(info("a")) is None
    await host.submit(window("a", 0))
    await host.submit(window("a", 1))
    await host.close_stream("a")
    await host.aclose()
    await asyncio.wait_for(task, 5)
    return events


async def test_finish_result_reaches_the_session_before_close() -> None:
    plugin = FinishingPlugin()
    events = await _run(plugin)
    assert [e.type for e in events] == ["test.window"] * 3 + ["test.closed"]
    last = events[2]
    assert last.data == {"r": "finished a"}
    # Reported on the span of the stream's last window.
    assert (last.start_ns, last.end_ns) == (window("a", 1).start_ns, window("a", 1).end_ns)
    assert all(name.startswith("plugin:count") for name in plugin.finish_threads)


async def test_a_failing_finish_is_reported_and_the_session_still_closes() -> None:
    events = await _run(FinishingPlugin(fail=True))
    types = [e.type for e in events]
    assert types == ["test.window", "test.window", "plugin.error", "test.closed"]
    assert "cannot finish" in str(events[2].data["message"])


async def test_plugins_without_finish_close_as_before() -> None:
    events = await _run(CountPlugin())
    assert [e.type for e in events] == ["test.window", "test.window", "test.closed"]
