"""Waiting on asyncio events: the first of several to be set, or a timeout, whichever comes first."""

from __future__ import annotations

import asyncio


async def wait_first(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return once any of `events` is set, or after `timeout` seconds (None: no limit)."""
    waiters = {asyncio.create_task(event.wait()) for event in events}
    try:
        await asyncio.wait(
            waiters, timeout=None if timeout is None else max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
