"""One kind of sync work with central (the outbox push, the member pull), run by whoever asks, one run at a time,
with honest health; in the style of Home Assistant's DataUpdateCoordinator (docs/sync.md).

Who asks:
- the scheduler, at the job's interval with jitter (agent/scheduler.py): `run()`;
- a sale just journaled, to have it sent now: `request_refresh()`, debounced, so a busy till sends one push
  for several sales and a sale made during a push is sent right after it;
- the till's "sync now" (`POST /v1/sync`): `refresh()`, which ignores the back-off and raises what failed.

Only one run is ever under way: a second waits for the first. A run fails with one type, CentralError: the
failure is recorded (never raised into the scheduler) and postpones the scheduled and requested runs by the
agent's back-off policy (drivers/backoff.py, with full jitter so a chain's stores do not come back in step), or
by central's Retry-After when that is longer. The log says "sync failing" at the first failure and "sync
recovered" at the next success, not every attempt. Health is public (`last_success`, `last_error`, `failures`,
whether central did not answer) and listeners hear each recorded outcome: connectivity follows them.

Time is injected (`clock`: the time of day, a monotonic clock for waits, and sleep; agent/clock.py), so the
back-off and the debounce are tested on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from agent.central_client import CentralError, CentralServerError, CentralUnreachable
from agent.clock import SYSTEM_CLOCK, Clock
from drivers.backoff import Backoff

log = logging.getLogger(__name__)

Report = TypeVar("Report")
Listener = Callable[["SyncJob[Any]"], None]

# 2 s doubling to 5 min, drawn anywhere below that: stores that lost central together come back spread out.
SYNC_BACKOFF = Backoff(first=2.0, cap=300.0, jitter=1.0)
# Requested runs closer together than this are one: a run at once, then at most one per cool-down.
REQUEST_COOLDOWN_S = 1.0


def _always(report: object) -> bool:
    return True


@dataclass(eq=False)
class SyncJob(Generic[Report]):
    name: str
    work: Callable[[], Awaitable[Report]]
    # Whether a run spoke to central: one that had nothing to send says nothing of the WAN, nor of a recovery.
    reached: Callable[[Report], bool] = _always
    backoff: Backoff = SYNC_BACKOFF
    cooldown_s: float = REQUEST_COOLDOWN_S
    clock: Clock = SYSTEM_CLOCK

    # --- health: read by anyone, changed only by the job's own runs ------------------------------------------
    last_success: datetime | None = field(default=None, init=False)
    last_error: str | None = field(default=None, init=False)
    last_failure_at: datetime | None = field(default=None, init=False)
    unreachable: bool = field(default=False, init=False)  # the last failure was central not answering
    failures: int = field(default=0, init=False)  # failed runs since the last success
    not_before: float = field(default=0.0, init=False)  # monotonic time before which no scheduled run starts

    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _listeners: list[Listener] = field(default_factory=list, init=False, repr=False)
    _requested: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _again: bool = field(default=False, init=False, repr=False)  # a request came since the requested run began
    _last_start: float | None = field(default=None, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def ready(self) -> bool:
        """Whether the back-off lets a scheduled or requested run start now."""
        return self.clock.monotonic() >= self.not_before

    @property
    def running(self) -> bool:
        return self._lock.locked()

    # --- who asks -------------------------------------------------------------------------------------------

    async def run(self) -> Report | None:
        """A scheduled run: after the one under way, unless the back-off holds. None when it did not run or failed
        (the failure is in the job's health)."""
        async with self._lock:
            if not self.ready():
                return None
            try:
                return await self._run()
            except CentralError:
                return None
            except Exception:  # a bug: seen with its trace, recorded, and the scheduler keeps running
                log.exception("sync job failed unexpectedly", extra={"job": self.name})
                return None

    async def refresh(self) -> Report:
        """Run now, after the one under way, whatever the back-off (the till's "sync now"). The outcome is
        recorded as any run's; a failure is raised to the caller too."""
        async with self._lock:
            return await self._run()

    def request_refresh(self) -> None:
        """Have the job run soon (call on the event loop): at once, or at the end of the cool-down when a run
        started less than `cooldown_s` ago; requests meanwhile make one run; a request during a run is followed by
        one more run, so what prompted it is included. Honours the back-off: while central is down, a sale does
        not knock again."""
        if self._closed:
            return
        self._again = True
        if self._requested is None or self._requested.done():
            self._requested = asyncio.get_running_loop().create_task(self._requested_runs(), name=f"sync-{self.name}")

    async def _requested_runs(self) -> None:
        while self._again:
            if self._last_start is not None:
                wait = self._last_start + self.cooldown_s - self.clock.monotonic()
                if wait > 0:
                    await self.clock.sleep(wait)
            self._again = False
            await self.run()

    async def close(self) -> None:
        """No more requested runs; one waiting or under way is cancelled (rows not confirmed stay pending and go
        with the next start: a push is safe to repeat)."""
        self._closed = True
        if self._requested is not None:
            self._requested.cancel()
            await asyncio.gather(self._requested, return_exceptions=True)

    # --- listeners --------------------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(job)` after each recorded outcome; returns what removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a listener's bug must not turn this outcome into a failed run
                log.exception("sync job listener failed", extra={"job": self.name})

    # --- one run and its outcome ------------------------------------------------------------------------------

    async def _run(self) -> Report:
        """The work, with the lock held; its outcome recorded."""
        self._last_start = self.clock.monotonic()
        try:
            report = await self.work()
        except Exception as exc:
            self.failed(exc)
            raise
        if self.reached(report):
            self.succeeded()
        return report

    def succeeded(self) -> None:
        """Record a run that reached central."""
        if self.failures:
            log.info("sync recovered", extra={"job": self.name, "after_failures": self.failures})
        self.last_success = self.clock.now()
        self.last_error = None
        self.unreachable = False
        self.failures = 0
        self.not_before = 0.0
        self._notify()

    def failed(self, exc: Exception) -> float:
        """Record a failed run; returns the seconds until a scheduled or requested run may start again."""
        if not self.failures:
            log.warning("sync failing", extra={"job": self.name, "error": str(exc)})
        self.failures += 1
        self.last_error = str(exc)
        self.last_failure_at = self.clock.now()
        self.unreachable = isinstance(exc, (CentralUnreachable, CentralServerError))
        delay = self.backoff.delay(self.failures)
        if isinstance(exc, CentralServerError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.backoff.cap))  # central's wish, within the agent's own cap
        self.not_before = self.clock.monotonic() + delay
        self._notify()
        return delay
