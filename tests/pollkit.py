"""Waiting in a test for state that no event announces (a sink's flags, several daemons')."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(
    check: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05
) -> None:
    """Return once ``check()`` is true; fail the test naming ``what`` after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not check():  # noqa: ASYNC110 - polling on purpose: nothing announces it
                await asyncio.sleep(poll_s)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None
