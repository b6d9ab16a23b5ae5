"""Is central reachable right now? Answered in a fraction of a second, in front of a customer.

Recent sync results decide first: a push or pull that succeeded in the last `fresh_s` seconds means online, and
one that failed more recently than any success means offline. Otherwise a probe with a short timeout
(`offline.probe_timeout_s`) asks, and its answer is kept for `fresh_s` seconds so a queue of customers does not
pay for one probe each. Never a 10 s request timeout at the till.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.central_client import CentralClient
from agent.clock import utcnow
from agent.sync import JobHealth


@dataclass
class Connectivity:
    client: CentralClient
    jobs: tuple[JobHealth, ...]
    probe_timeout_s: float = 1.0
    fresh_s: float = 10.0
    _probed_at: float = field(default=-1e9, init=False)
    _probed_online: bool = field(default=False, init=False)
    _seen: tuple[datetime, bool] | None = field(default=None, init=False)

    def saw(self, reachable: bool) -> None:
        """What a request at the till just found: it outranks older sync results (a failed payment request must
        not be followed by another customer waiting for the same timeout)."""
        self._seen = (utcnow(), reachable)

    async def online(self) -> bool:
        now = utcnow()
        verdict = self._from_jobs(now)
        if verdict is not None:
            return verdict
        if time.monotonic() - self._probed_at < self.fresh_s:
            return self._probed_online
        self._probed_online = await self.client.probe(self.probe_timeout_s)
        self._probed_at = time.monotonic()
        return self._probed_online

    def _from_jobs(self, now: datetime) -> bool | None:
        """What the sync jobs' latest results say, when they are recent enough to trust."""
        fresh = timedelta(seconds=self.fresh_s)
        results = [(job.last_success, True) for job in self.jobs if job.last_success]
        results += [(job.last_failure_at, False) for job in self.jobs if job.unreachable and job.last_failure_at]
        if self._seen is not None:
            results.append(self._seen)
        recent = [result for result in results if now - result[0] < fresh]
        return max(recent)[1] if recent else None
