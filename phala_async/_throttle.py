"""Client-wide pacing: the shared pause a rate-limited answer puts on every worker."""

from __future__ import annotations

import asyncio
import time

__all__ = ["PauseGate"]


class PauseGate:
    """Holds new requests until a moment the server named has passed.

    One gate per client: when any answer carries ``Retry-After``, :meth:`pause_for` moves the
    moment forward, and every request, whichever worker sends it, waits in :meth:`wait` first.
    """

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until = 0.0

    def pause_for(self, seconds: float) -> None:
        """Hold new requests for ``seconds`` from now (never shortens a longer pause)."""
        until = time.monotonic() + seconds
        if until > self._until:
            self._until = until

    @property
    def remaining(self) -> float:
        """Seconds until requests may go again; 0 when they may go now."""
        return max(0.0, self._until - time.monotonic())

    async def wait(self) -> None:
        """Return once no pause is in force; at once (without yielding) when none is."""
        # A loop, since another answer may extend the pause while this one sleeps.
        # An Event would need a timer task to set it; a pause is rare and short, so sleep.
        while (delay := self._until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)
