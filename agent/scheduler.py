"""The agent's periodic jobs on APScheduler 3 (AsyncIOScheduler, on the agent's event loop).

Every job has an explicit id, runs one instance at a time, and coalesces runs missed while the host was busy
or asleep into one. Start times are jittered so the stores of a chain do not all call central in step.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent.central_client import CentralError
from agent.clock import business_day, utcnow
from agent.reconcile import reconcile
from agent.settings import Settings
from agent.sync import Sync

log = logging.getLogger(__name__)


def build_scheduler(settings: Settings, sync: Sync) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=settings.store.zone)
    central = settings.central
    scheduler.add_job(
        sync.push_job,
        IntervalTrigger(seconds=central.push_interval_s, jitter=max(1, central.push_interval_s // 5)),
        id="outbox-push",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=central.push_interval_s,
        next_run_time=utcnow() + timedelta(seconds=1),
    )
    scheduler.add_job(
        sync.pull_job,
        IntervalTrigger(seconds=central.sync_interval_s, jitter=max(1, central.sync_interval_s // 5)),
        id="member-pull",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=central.sync_interval_s,
        next_run_time=utcnow() + timedelta(seconds=2),
    )

    async def reconcile_yesterday() -> None:
        # Runs after the cut-off: the business day that just closed is the one before today's.
        day = business_day(utcnow(), settings.store.zone, settings.store.business_day_cutoff_hour) - timedelta(days=1)
        await sync.push_job()  # first send what the day still has queued
        try:
            result = await reconcile(sync.engine, sync.client, settings.station.id, day)
        except CentralError as exc:
            log.warning("reconciliation postponed", extra={"day": day.isoformat(), "error": str(exc)})
            return
        level = logging.INFO if result.matched else logging.WARNING
        log.log(
            level,
            "reconciliation",
            extra={"day": day.isoformat(), "matched": result.matched, "missing_at_central": len(result.missing_at_central),
                   "requeued": len(result.requeued), "missing_at_store": len(result.missing_at_store), "mismatched": len(result.mismatched),
                   "payment_problems": len(result.payment_problems)},
        )  # fmt: skip

    scheduler.add_job(
        reconcile_yesterday,
        CronTrigger(hour=settings.store.business_day_cutoff_hour, minute=30, jitter=600, timezone=settings.store.zone),
        id="reconcile",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=6 * 3600,  # a till switched on late in the morning still reconciles yesterday
    )
    return scheduler
