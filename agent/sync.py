"""Keeping the store and the central service in agreement: push the outbox, pull member changes and keys.

The work is here; when it runs, one run at a time, with its health, back-off and listeners, is each job's own
(agent/sync_job.py): `push_job` and `pull_job`.

Push is at-least-once and safe to repeat: central answers a row it already has with `duplicate`, and its
points ledger is keyed by (transaction, member), so a retried batch can never add points twice.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from pydantic import ValidationError

from agent import journal
from agent.central_client import CentralClient
from agent.clock import utcnow
from agent.db import reader
from agent.member_cache import ApplyResult, CachedCoupon, ChangeRows, MemberCache, MemberChange
from agent.member_code_gate import MemberCodeGate, PublicKeyRecord
from agent.sync_job import SyncJob
from central import contract

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class PushReport:
    sent: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    balances: int = 0


@dataclass(frozen=True)
class PullReport:
    pages: int = 0
    upserted: int = 0
    deleted: int = 0
    keys: int = 0


@dataclass
class SyncStatus:
    push: SyncJob[PushReport]
    pull: SyncJob[PullReport]
    outbox_pending: int
    outbox_rejected: int
    oldest_pending_at: datetime | None
    member_cursor: str | None


@dataclass
class Sync:
    engine: sa.Engine
    cache: MemberCache
    gate: MemberCodeGate
    client: CentralClient
    batch_size: int = 200
    page_size: int = 1000
    apply_at_most: int = 10_000  # member changes applied in one transaction of the cache (and fetched ahead)
    metrics: AgentMetrics | None = None  # counts rows pushed by central's answer (agent/metrics.py)
    push_job: SyncJob[PushReport] = field(init=False)
    pull_job: SyncJob[PullReport] = field(init=False)

    def __post_init__(self) -> None:
        # A push with nothing to send did not speak to central: it says nothing of the WAN, nor of a recovery.
        self.push_job = SyncJob("push", self.push, reached=lambda report: report.sent > 0)
        self.pull_job = SyncJob("pull", self.pull)

    @property
    def jobs(self) -> tuple[SyncJob[PushReport], SyncJob[PullReport]]:
        return self.push_job, self.pull_job

    async def close(self) -> None:
        """No more runs on request (the scheduler stops its own)."""
        for job in self.jobs:
            await job.close()

    # --- push --------------------------------------------------------------------------------------------------

    async def push(self) -> PushReport:
        """Send every pending outbox row, oldest first, in batches; stop at the first failed request."""
        totals = PushReport()
        while True:
            rows, unreadable = await asyncio.to_thread(self._next_batch)
            if unreadable:
                await asyncio.to_thread(self._reject_locally, unreadable)
                totals = _add(totals, PushReport(rejected=len(unreadable)))
            if not rows:
                if unreadable:
                    continue  # the whole batch was unreadable: rows may wait behind it
                return totals
            result = await self.client.push_transactions(rows)
            report = await asyncio.to_thread(self._apply_push, result)
            totals = _add(totals, report)
            if len(rows) < self.batch_size:
                return totals

    def _next_batch(self) -> tuple[list[contract.TransactionIn], dict[str, str]]:
        with reader(self.engine) as connection:
            found = journal.pending_batch(connection, self.batch_size)
        rows, unreadable = [], {}
        for row in found:
            try:
                rows.append(contract.TransactionIn.model_validate({**row, "body": json.loads(row["body"])}))
            except (ValidationError, ValueError) as exc:
                # Central would refuse it too; keep it visible instead of blocking the rows behind it.
                unreadable[row["id"]] = f"malformed (found before sending): {exc}"[:500]
        return rows, unreadable

    def _reject_locally(self, unreadable: dict[str, str]) -> None:
        with self.engine.begin() as connection:
            journal.reject(connection, unreadable)
        for transaction_id, reason in unreadable.items():
            log.error("transaction cannot be sent", extra={"transaction": transaction_id, "reason": reason})
        if self.metrics is not None:
            self.metrics.rows_pushed("unreadable", len(unreadable))

    def _apply_push(self, result: contract.BatchResult) -> PushReport:
        rejected = [row for row in result.results if row.status == "rejected"]
        # A row without an id (a malformed one central could not read) names no outbox row.
        done = [row.id for row in result.results if row.status in ("accepted", "duplicate") and row.id is not None]
        reasons = {row.id: f"{row.reason}: {row.message or ''}".strip(": ") for row in rejected if row.id is not None}
        with self.engine.begin() as connection:
            journal.confirm(connection, done)
            journal.reject(connection, reasons, at=utcnow())
            MemberCache.set_points(connection, [(b.member_id, b.points) for b in result.balances])
        for row in rejected:
            log.error(
                "central rejected a transaction",
                extra={"transaction": row.id, "reason": row.reason, "detail": row.message or ""},
            )
        report = PushReport(
            sent=len(result.results),
            accepted=sum(1 for row in result.results if row.status == "accepted"),
            duplicate=sum(1 for row in result.results if row.status == "duplicate"),
            rejected=len(rejected),
            balances=len(result.balances),
        )
        if self.metrics is not None:
            for name in ("accepted", "duplicate", "rejected"):
                self.metrics.rows_pushed(name, getattr(report, name))
        return report

    # --- pull --------------------------------------------------------------------------------------------------

    async def pull(self) -> PullReport:
        """Apply member changes from the saved cursor until central has no more, then refresh member-code keys.

        Pages are applied in batches of `apply_at_most` changes, each batch and the cursor after it in one
        transaction (a feed that ends or fails sooner ends the batch sooner), and the next batch is fetched while
        one is being applied: central builds pages while the till writes, and a long sync writes each database
        page a few times instead of once per page of the feed. A failed fetch still applies the pages before it.
        """
        cursor = await asyncio.to_thread(self.cache.cursor)
        first_sync = cursor is None
        ahead = max(1, -(-self.apply_at_most // self.page_size))  # one batch's pages
        fetched: asyncio.Queue[_Fetched | Exception] = asyncio.Queue(ahead)
        pages = upserted = deleted = 0
        last_progress = time.monotonic()
        with _collector_paused():
            fetcher = asyncio.create_task(self._fetch_pages(cursor, fetched))
            try:
                while True:
                    batch, failure = await _next_batch(fetched, self.apply_at_most)
                    if batch:
                        applied = await asyncio.to_thread(self._apply_pages, batch)
                        pages += len(batch)
                        upserted, deleted = upserted + applied.upserted, deleted + applied.deleted
                    if failure is not None:
                        raise failure
                    if first_sync and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                        log.info("member sync progress", extra={"members": upserted, "pages": pages})
                        last_progress = time.monotonic()
                    if not batch[-1].has_more:
                        break
            finally:
                fetcher.cancel()
                await asyncio.gather(fetcher, return_exceptions=True)
        if first_sync:
            log.info("member cache filled", extra={"members": upserted, "pages": pages})
        keys = await self.client.member_code_keys()
        records = [PublicKeyRecord(k.kid, k.public_key, k.not_after) for k in keys.keys]
        await asyncio.to_thread(self.gate.replace_keys, records)
        return PullReport(pages=pages, upserted=upserted, deleted=deleted, keys=len(records))

    async def _fetch_pages(self, cursor: str | None, out: asyncio.Queue[_Fetched | Exception]) -> None:
        """Fetch pages from `cursor` on into `out` until the last; a failure goes into `out` and ends it."""
        try:
            while True:
                page = await self.client.member_changes(cursor, self.page_size)
                # Kept as the rows it writes: a page's models weigh four times as much, and a batch waits.
                await out.put(_Fetched(MemberCache.rows(page.changes), page.next_cursor, page.has_more))
                if not page.has_more:
                    return
                cursor = page.next_cursor
        except Exception as exc:  # handed to pull(), which raises it once the pages before it are applied
            await out.put(exc)

    def _apply_pages(self, pages: list[_Fetched]) -> ApplyResult:
        return self.cache.apply_rows([page.rows for page in pages], pages[-1].next_cursor)

    # --- status ------------------------------------------------------------------------------------------------

    def status(self) -> SyncStatus:
        with reader(self.engine) as connection:
            outbox = journal.read_outbox(connection)
        return SyncStatus(
            push=self.push_job,
            pull=self.pull_job,
            outbox_pending=outbox.pending,
            outbox_rejected=outbox.rejected,
            oldest_pending_at=outbox.oldest_pending_at,
            member_cursor=self.cache.cursor(),
        )


# Python's cycle collector runs after every 700 new objects and walks again the young ones still alive; those that
# survive pile up into collections of the whole heap. Parsing a page of 1,000 members makes some 5,000 models that
# live until it is parsed, and a batch or two of rows wait to be applied: with the collector on, parsing 100 pages
# took 3.1 s of CPU, and 1.1 s without. Nothing a sync builds holds a cycle; reference counting frees it all.
_collector_lock = threading.Lock()
_collector_pauses = 0
_collector_was_enabled = False


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cycle collector off for the block, and on again after the last block that turned it off (if it was)."""
    global _collector_pauses, _collector_was_enabled
    with _collector_lock:
        if _collector_pauses == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_pauses += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pauses -= 1
            if _collector_pauses == 0 and _collector_was_enabled:
                gc.enable()


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A page of the feed, fetched and not yet applied."""

    rows: ChangeRows
    next_cursor: str
    has_more: bool


async def _next_batch(
    fetched: asyncio.Queue[_Fetched | Exception], at_most: int
) -> tuple[list[_Fetched], Exception | None]:
    """Pages until they hold `at_most` changes, the feed ends, or a fetch fails (the failure, after them)."""
    batch: list[_Fetched] = []
    count = 0
    while True:
        item = await fetched.get()
        if isinstance(item, Exception):
            return batch, item
        batch.append(item)
        count += len(item.rows)
        if count >= at_most or not item.has_more:
            return batch, None


def _add(a: PushReport, b: PushReport) -> PushReport:
    return PushReport(*(x + y for x, y in zip(vars(a).values(), vars(b).values(), strict=True)))


def to_cache_change(change: contract.MemberChange) -> MemberChange:
    return MemberChange(
        member_id=change.member_id,
        version=change.version,
        deleted=change.deleted,
        tier=change.tier,
        points=change.points,
        display_name=change.display_name,
        phone_masked=change.phone_masked,
        identifiers=tuple((i.kind, i.value) for i in change.identifiers),
        coupons=tuple(
            CachedCoupon(
                c.code,
                c.title,
                c.kind,
                c.amount_off_fen,
                c.percent_off,
                c.threshold_fen,
                c.cap_fen,
                c.valid_from,
                c.valid_until,
                c.usable_offline,
                c.used_at,
            )
            for c in change.coupons
        ),
    )
