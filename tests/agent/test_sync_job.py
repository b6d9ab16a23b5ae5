"""A sync job (agent/sync_job.py) on a fake clock: one run at a time, requests debounced, failures backed off
(Retry-After honoured), the log told of changes only, listeners told of each outcome. No test waits for real."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import pytest

from agent.central_client import CentralRejected, CentralServerError, CentralTimedOut
from agent.sync_job import SyncJob
from drivers.backoff import Backoff
from tests.support.clock import T0, FakeClock, settle

EXACT = Backoff(first=2.0, cap=300.0, jitter=0)  # the real policy's steps, without the draw, to name the seconds


class Central:
    """The work a job runs, scripted: each run takes the next outcome (a report, or an error to raise); a run can
    be held under way until the test lets it finish."""

    def __init__(self, clock: FakeClock, *outcomes: object) -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.started: list[float] = []  # the fake second each run started
        self.under_way = 0
        self.most_at_once = 0
        self.hold: asyncio.Event | None = None

    async def __call__(self) -> object:
        self.started.append(self.clock.seconds)
        self.under_way += 1
        self.most_at_once = max(self.most_at_once, self.under_way)
        try:
            if self.hold is not None:
                await self.hold.wait()
            outcome = self.outcomes.pop(0) if self.outcomes else "ok"
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            self.under_way -= 1


def a_job(clock: FakeClock, central: Central, **options) -> SyncJob:
    options.setdefault("backoff", EXACT)
    return SyncJob("push", central, clock=clock, **options)


DOWN = CentralTimedOut("central did not answer in time")


def test_never_two_runs_at_once_whoever_asks():
    async def scenario():
        clock = FakeClock()
        central = Central(clock)
        job = a_job(clock, central)
        central.hold = asyncio.Event()
        scheduled = asyncio.create_task(job.run())
        await settle()
        assert job.running
        again = asyncio.create_task(job.run())  # the scheduler, or reconciliation, while a run is under way
        now = asyncio.create_task(job.refresh())  # the till's "sync now"
        job.request_refresh()  # a sale
        await settle()
        assert central.under_way == 1
        central.hold.set()
        await asyncio.gather(scheduled, again, now)
        await clock.elapse(job.cooldown_s)
        assert central.most_at_once == 1 and len(central.started) == 4  # each one ran, one after the other
        assert not job.running

    asyncio.run(scenario())


def test_requests_in_a_burst_make_one_run_at_once_then_one_per_cooldown():
    async def scenario():
        clock = FakeClock()
        central = Central(clock)
        job = a_job(clock, central, cooldown_s=1.0)
        for _ in range(3):  # three sales in a row
            job.request_refresh()
        await settle()
        assert central.started == [0.0]  # the first sale is sent at once, the others with it
        await clock.elapse(0.3)
        job.request_refresh()
        job.request_refresh()
        await settle()
        assert central.started == [0.0]  # within the cool-down: waits
        await clock.elapse(0.7)
        assert central.started == [0.0, 1.0]  # one run for both, at the end of the cool-down
        await clock.elapse(5)
        assert central.started == [0.0, 1.0]  # nothing more was asked

    asyncio.run(scenario())


def test_a_sale_made_during_a_push_is_sent_right_after_it():
    async def scenario():
        clock = FakeClock()
        central = Central(clock)
        job = a_job(clock, central, cooldown_s=1.0)
        central.hold = asyncio.Event()
        scheduled = asyncio.create_task(job.run())  # the interval's push has read the outbox already
        await settle()
        job.request_refresh()
        await clock.elapse(3)  # the push takes a while
        central.hold.set()
        await scheduled
        await settle()
        assert central.started == [0.0, 3.0]
        central.hold.clear()
        job.request_refresh()  # the next sale: after the cool-down
        await clock.elapse(1.0)
        assert central.under_way == 1
        job.request_refresh()  # and a sale made while its push is under way
        central.hold.set()
        await clock.elapse(1.0)
        assert central.started == [0.0, 3.0, 4.0, 5.0]

    asyncio.run(scenario())


def test_a_failure_backs_off_scheduled_and_requested_runs_but_not_sync_now():
    async def scenario():
        clock = FakeClock()
        central = Central(clock, DOWN, DOWN)
        job = a_job(clock, central)
        assert await job.run() is None  # recorded, not raised: the scheduler keeps its schedule
        assert (job.failures, job.unreachable, job.last_failure_at) == (1, True, T0)
        assert job.last_error == "central did not answer in time"
        await clock.elapse(1.9)
        assert await job.run() is None
        job.request_refresh()
        await settle()
        assert central.started == [0.0]  # 2 s after the first failure: nobody knocks
        await clock.elapse(0.1)
        assert await job.run() is None  # the second failure: 4 s now
        assert central.started == [0.0, 2.0] and job.failures == 2
        assert await job.refresh() == "ok"  # the till's button does not wait for the back-off
        assert (job.failures, job.last_error, job.last_success) == (0, None, clock.now())
        assert await job.run() == "ok"  # and the back-off is over

    asyncio.run(scenario())


def test_the_real_policy_draws_below_the_step():
    async def scenario():
        clock = FakeClock()
        job = a_job(clock, Central(clock, *[DOWN] * 4), backoff=Backoff(first=2.0, cap=300.0, jitter=1.0))
        for failures in range(1, 5):
            await job.run()
            assert 0 <= job.not_before - clock.seconds <= 2.0 * 2 ** (failures - 1)
            clock.seconds = job.not_before

    asyncio.run(scenario())


@pytest.mark.parametrize("retry_after, runs_at", [(120.0, 120.0), (3600.0, 300.0), (0.5, 2.0)])
def test_centrals_retry_after_is_honoured_within_the_cap(retry_after, runs_at):
    async def scenario():
        clock = FakeClock()
        busy = CentralServerError("central answered 429", 429, retry_after=retry_after)
        central = Central(clock, busy)
        job = a_job(clock, central)
        await job.run()
        assert job.unreachable  # central in trouble: a suspicion for connectivity, not a refusal
        await clock.elapse(runs_at - 0.01)
        await job.run()
        assert len(central.started) == 1
        await clock.elapse(0.01)
        assert await job.run() == "ok"

    asyncio.run(scenario())


def test_the_log_says_failing_once_and_recovered_once(caplog):
    async def scenario():
        clock = FakeClock()
        job = a_job(clock, Central(clock, DOWN, DOWN, DOWN))
        for _ in range(3):
            await job.run()
            clock.seconds = job.not_before
        for _ in range(2):
            await job.run()

    caplog.set_level(logging.INFO, logger="agent.sync_job")
    asyncio.run(scenario())
    said = [(r.levelname, r.getMessage(), getattr(r, "after_failures", None)) for r in caplog.records]
    assert said == [("WARNING", "sync failing", None), ("INFO", "sync recovered", 3)]
    assert caplog.records[0].error == "central did not answer in time" and caplog.records[0].job == "push"


def test_listeners_hear_each_outcome_until_removed():
    async def scenario():
        clock = FakeClock()
        central = Central(clock, DOWN)
        job = a_job(clock, central)
        heard: list[tuple[int, datetime | None]] = []
        stop = job.add_listener(lambda j: heard.append((j.failures, j.last_success)))
        job.add_listener(lambda j: 1 / 0)  # a listener's bug does not make the run a failure
        await job.run()
        clock.seconds = job.not_before
        await job.run()
        stop()
        await job.run()
        assert heard == [(1, None), (0, T0 + timedelta(seconds=2))]
        assert job.failures == 0 and job.last_error is None

    asyncio.run(scenario())


def test_a_run_that_did_not_reach_central_is_no_recovery():
    async def scenario():
        clock = FakeClock()
        central = Central(clock, DOWN, 0, 0, 3)  # then: nothing to send, twice; then three rows sent
        job = a_job(clock, central, reached=lambda sent: sent > 0)
        heard: list[int] = []
        job.add_listener(lambda j: heard.append(j.failures))
        await job.run()
        clock.seconds = job.not_before
        assert await job.run() == 0
        assert await job.run() == 0
        assert (job.failures, job.last_success) == (1, None)  # still failing: central was not asked
        assert await job.run() == 3
        assert job.failures == 0 and heard == [1, 0]

    asyncio.run(scenario())


def test_a_refusal_or_a_bug_is_recorded_never_raised_into_the_scheduler(caplog):
    async def scenario():
        clock = FakeClock()
        refused = CentralRejected("central refused POST /transactions:batch (401 unauthorized)", 401, "unauthorized")
        central = Central(clock, refused, RuntimeError("a bug"), refused)
        job = a_job(clock, central)
        assert await job.run() is None
        assert job.failures == 1 and not job.unreachable  # central answered: not a sign of the WAN
        clock.seconds = job.not_before
        assert await job.run() is None
        assert job.failures == 2 and job.last_error == "a bug"
        with pytest.raises(CentralRejected):  # "sync now" is told
            await job.refresh()
        assert job.failures == 3

    asyncio.run(scenario())
    assert "sync job failed unexpectedly" in [r.getMessage() for r in caplog.records]


def test_closed_means_no_more_requested_runs():
    async def scenario():
        clock = FakeClock()
        central = Central(clock)
        job = a_job(clock, central, cooldown_s=1.0)
        job.request_refresh()
        await settle()
        job.request_refresh()  # due at the end of the cool-down
        await settle()
        await job.close()
        job.request_refresh()
        await clock.elapse(10)
        assert central.started == [0.0]

    asyncio.run(scenario())
