"""A fake clock for the agent's time rules (agent/clock.py's `Clock`): time moves only when the test moves it.

`sleep` parks the caller until `advance()` moves time past its deadline; `sleeping(n)` waits (on an event, not
on time) until n callers are parked, so a test knows a follower has reached its wait before it moves time on.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.start = start
        self.seconds = 0.0  # since `start`: the monotonic reading
        self.slept: list[float] = []  # every wait asked for, in order
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed: asyncio.Event | None = None

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return self.seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        entry = (self.seconds + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        self._wake_watchers()
        try:
            await entry[1]
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        """Move time on, waking the sleepers whose deadline it passes (they run at the caller's next await)."""
        self.seconds += seconds
        for entry in [e for e in self._sleepers if e[0] <= self.seconds]:
            self._sleepers.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)

    async def elapse(self, seconds: float) -> None:
        """Move time on and let what it woke run as far as it can without real time (I/O still takes its own)."""
        self.advance(seconds)
        await settle()

    @property
    def parked(self) -> int:
        return len(self._sleepers)

    async def sleeping(self, count: int = 1, within: float = 10.0) -> None:
        """Wait until `count` callers are parked in `sleep` (`within`: real seconds, a guard against a hang)."""

        async def parked() -> None:
            while len(self._sleepers) < count:
                if self._changed is None:
                    self._changed = asyncio.Event()  # shared by every waiter until the next sleeper parks
                await self._changed.wait()

        await asyncio.wait_for(parked(), within)

    def _wake_watchers(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


async def settle() -> None:
    """Let every task that can run without I/O do so."""
    for _ in range(50):
        await asyncio.sleep(0)
