"""Is central reachable right now? Answered in a fraction of a second, in front of a customer.

The newest recent result decides (recent: in the last `fresh_s` seconds), from the sync jobs (it listens to
each run's outcome, agent/sync_job.py), the till's own requests and a short probe:
- a success means online;
- a definite failure means offline: a connection central refused or that could not be made (the request never
  left the store), or a failed probe;
- one lost answer (a reset, a timeout, a 5xx, a failed sync run) is only a suspicion, never a verdict: a probe
  with a short timeout (`offline.probe_timeout_s`) settles it, and its answer stands until something newer comes.
  A real outage is still seen at the first failure plus one probe — at once when connections are refused, within
  the probe's timeout when packets vanish — while a single lost answer no longer turns code payment off.
With no recent result at all, a probe asks. A success is trusted for `fresh_s` seconds, so a queue of customers does
not pay for one probe each; a failure only for `recheck_s` seconds, so the till is back within a few seconds of
central (while the WAN stays down, a customer pays at most one probe's timeout every few seconds for it). Never a
10 s request timeout at the till.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from agent.central_client import CentralClient
from agent.clock import SYSTEM_CLOCK, Clock
from agent.sync_job import SyncJob


class Result(NamedTuple):
    at: datetime
    reachable: bool
    definite: bool  # False: a failure that one lost answer could explain


@dataclass
class Connectivity:
    client: CentralClient
    jobs: tuple[SyncJob[Any], ...]  # followed from here on: what they last recorded, then each new outcome
    probe_timeout_s: float = 1.0
    fresh_s: float = 10.0
    recheck_s: float = 3.0
    clock: Clock = SYSTEM_CLOCK
    _synced: Result | None = field(default=None, init=False)
    _seen: Result | None = field(default=None, init=False)
    _probed: Result | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for job in self.jobs:
            self.synced(job)
            job.add_listener(self.synced)

    def synced(self, job: SyncJob[Any]) -> None:
        """A sync job recorded an outcome: a success says online; central not answering is only a suspicion
        (one lost answer could explain it); a refusal says nothing new, so the newer of the others stands."""
        if not job.failures and job.last_success is not None:
            result = Result(job.last_success, True, True)
        elif job.unreachable and job.last_failure_at is not None:
            result = Result(job.last_failure_at, False, False)
        else:
            return
        if self._synced is None or (result.at, result.definite) >= (self._synced.at, self._synced.definite):
            self._synced = result

    def saw(self, reachable: bool) -> None:
        """What a request at the till just found for certain: central answered, or no connection could be made.
        It outranks older results (the next customer must not wait for the same timeout)."""
        self._seen = Result(self.clock.now(), reachable, definite=True)

    def suspect(self) -> None:
        """A request at the till lost its answer: central may be away, or one packet was."""
        self._seen = Result(self.clock.now(), False, definite=False)

    async def online(self) -> bool:
        now = self.clock.now()
        latest = self._latest(now)
        if latest is not None and latest.reachable:
            return True
        if latest is not None and latest.definite and now - latest.at < timedelta(seconds=self.recheck_s):
            return False
        return await self._probe()  # nothing recent, a suspicion, or an offline verdict due for a recheck

    def _latest(self, now: datetime) -> Result | None:
        fresh = timedelta(seconds=self.fresh_s)
        results = [result for result in (self._synced, self._seen, self._probed) if result is not None]
        recent = [result for result in results if now - result.at < fresh]
        return max(recent, key=lambda result: (result.at, result.definite)) if recent else None

    async def _probe(self) -> bool:
        reachable = await self.client.probe(self.probe_timeout_s)
        self._probed = Result(self.clock.now(), reachable, definite=True)
        return reachable
