"""The agent's periodic jobs on APScheduler 3 (AsyncIOScheduler, on the agent's event loop).

Every job has an explicit id, runs one instance at a time, and coalesces runs missed while the host was busy
or asleep into one. Start times are jittered so the stores of a chain do not all call central in step. The sync
jobs' own runs are guarded and backed off by themselves (agent/sync_job.py): here they are only called on time.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent import backup
from agent.central_client import CentralError
from agent.clock import business_day, utcnow
from agent.disk_space import MB
from agent.reconcile import reconcile
from agent.retention import RetentionPolicy, run_retention
from agent.settings import Settings
from agent.sync import Sync

log = logging.getLogger(__name__)


def build_scheduler(settings: Settings, sync: Sync) -> AsyncIOScheduler:
    """The till's periodic work. Backups and retention run whatever central is; the sync jobs only with a store
    token (without one there is nobody to sync with)."""
    scheduler = AsyncIOScheduler(timezone=settings.store.zone)
    if settings.central.token.get_secret_value():
        add_central_jobs(scheduler, settings, sync)
    add_storage_jobs(scheduler, settings, sync)
    return scheduler


def add_central_jobs(scheduler: AsyncIOScheduler, settings: Settings, sync: Sync) -> None:
    central = settings.central
    scheduler.add_job(
        sync.push_job.run,
        IntervalTrigger(seconds=central.push_interval_s, jitter=max(1, central.push_interval_s // 5)),
        id="outbox-push",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=central.push_interval_s,
        next_run_time=utcnow() + timedelta(seconds=1),
    )
    scheduler.add_job(
        sync.pull_job.run,
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
        await sync.push_job.run()  # first send what the day still has queued (after a push under way)
        try:
            result = await reconcile(sync.engine, sync.client, settings.station.id, day)
        except CentralError as exc:
            log.warning("reconciliation postponed", extra={"day": day.isoformat(), "error": str(exc)})
            return
        level = logging.INFO if result.matched else logging.WARNING
        log.log(
            level,
            "reconciliation",
            extra={
                "day": day.isoformat(),
                "matched": result.matched,
                "missing_at_central": len(result.missing_at_central),
                "requeued": len(result.requeued),
                "missing_at_store": len(result.missing_at_store),
                "mismatched": len(result.mismatched),
                "payment_problems": len(result.payment_problems),
            },
        )

    scheduler.add_job(
        reconcile_yesterday,
        CronTrigger(hour=settings.store.business_day_cutoff_hour, minute=30, jitter=600, timezone=settings.store.zone),
        id="reconcile",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=6 * 3600,  # a till switched on late in the morning still reconciles yesterday
    )


# A till is often switched off at night, so daily work is not tied to an hour: the backup is checked for every
# hour and taken when the newest is about a day old; retention runs a while after each start, then daily.
BACKUP_CHECK_EVERY = timedelta(hours=1)
BACKUP_DUE_AFTER = timedelta(hours=23)


def add_storage_jobs(scheduler: AsyncIOScheduler, settings: Settings, sync: Sync) -> None:
    storage = settings.storage

    async def backup_when_due() -> None:
        newest = backup.latest_backup_at(storage.backup_folder)
        if newest is not None and utcnow() - newest < BACKUP_DUE_AFTER:
            return
        try:
            result = await asyncio.to_thread(  # off the loop: copying and verifying take seconds
                backup.take_backup,
                storage.database,
                storage.backup_folder,
                storage.backup_keep_days,
                min_free_bytes=storage.min_free_mb * MB,
            )
        except (backup.BackupError, OSError) as exc:
            log.error("backup failed", extra={"error": str(exc)})
            return
        log.info(
            "backup taken",
            extra={
                "path": str(result.path),
                "size_mb": round(result.size_bytes / MB, 1),
                "seconds": round(result.seconds, 2),
                "journal_rows": result.journal_rows,
                "old_backups_deleted": len(result.removed),
            },
        )

    async def retention() -> None:
        policy = RetentionPolicy(
            storage.journal_retention_days, storage.print_job_retention_days, storage.member_retention_days
        )
        report = await asyncio.to_thread(run_retention, sync.engine, sync.cache, policy)
        log.info(
            "retention",
            extra={
                "journal_rows": report.journal_rows,
                "print_jobs": report.print_jobs,
                "members": report.members,
                "idempotency_keys": report.idempotency_keys,
                "seconds": round(report.seconds, 2),
            },
        )
        for station, (seq, hash_) in report.checkpoints.items():
            # A record of the chain's new starting point outside the database, too.
            log.info("journal checkpoint", extra={"station": station, "seq": seq, "hash": hash_})
        for reason in report.held_back:
            log.warning("journal rows kept past their retention", extra={"reason": reason})

    scheduler.add_job(
        backup_when_due,
        IntervalTrigger(seconds=BACKUP_CHECK_EVERY.total_seconds(), jitter=300),
        id="backup",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(BACKUP_CHECK_EVERY.total_seconds()),
        next_run_time=utcnow() + timedelta(minutes=5),
    )
    scheduler.add_job(
        retention,
        IntervalTrigger(days=1, jitter=600),
        id="retention",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=6 * 3600,
        next_run_time=utcnow() + timedelta(minutes=15),
    )
