"""Periodic jobs (card pushes, the payments check, the follower sync): each runs its rounds in one process only.

Every process that runs jobs (`pos-central serve` unless `run_jobs` is off, and `pos-central worker`) starts them
all; before each round a job claims it in the database (`Leases.claim_round`): the process holding the job's lease
runs it when due, `interval` seconds after the last round in any process, and the others only look every third of
the lease whether the holder is gone. So however many processes start a job, it runs once per period, and a
holder that dies is replaced once its lease expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from central.leases import JOBS, Leases

log = logging.getLogger(__name__)


class Periodic:
    """Runs `round` every `interval` seconds, sooner after `wake()`, while this process holds the job's lease
    (always, without `leases`: one process alone)."""

    def __init__(
        self, name: str, round: Callable[[], Awaitable[Any]], interval: float, leases: Leases | None = None
    ) -> None:
        self.name = name
        self.round = round
        self.interval = interval
        self.leases = leases
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._stopping = False
        if leases is not None:
            leases.every_third(self._renew)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name=self.name)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop; a round under way is given `grace` seconds to end first."""
        self._stopping = True
        if self._task is not None and grace > 0 and self._wake is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except TimeoutError:
                log.warning("%s did not end its round within %.0f s; stopped", self.name, grace)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.leases is not None:
            await asyncio.to_thread(self.leases.release, JOBS, self.name)

    def wake(self) -> None:
        """A round soon (in this process, if it holds the job); callable from any thread."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                if await self._claim(woken):
                    self._running = True
                    try:
                        await self.round()
                    finally:
                        self._running = False
            except asyncio.CancelledError:
                raise
            except Exception:  # the database, or a bug: the job's state is durable, the next round looks again
                log.exception("%s: round failed", self.name)
            if self._stopping:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), self._pause())
            except TimeoutError:
                pass

    async def _claim(self, woken: bool) -> bool:
        if self.leases is None:
            return True
        return await asyncio.to_thread(self.leases.claim_round, self.name, self.interval, now_anyway=woken)

    def _pause(self) -> float:
        # Another process's job: look again within a third of its lease, to take over soon after it expires.
        return self.interval if self.leases is None else min(self.interval, self.leases.seconds / 3)

    async def _renew(self) -> None:
        if self._running and self.leases is not None:  # a long round keeps its lease
            await asyncio.to_thread(self.leases.renew, JOBS, [self.name])
