"""Leases: which central process does a piece of work that must happen once, when several share one database.

An unfinished payment or refund is driven by one process at a time, and each periodic job runs in one. The lease
is an owner and an expiry on the row the work is about: `payment.lease_owner/lease_until`, the same on
`payment_refund`, and a `job_lease` row per job. A holder renews its leases every third of `seconds` (`keep`); a
process that dies stops renewing, and once its leases expire the next process to look takes the work over
(`take_expired`, with `SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL so that processes sweeping at the same time
never wait on each other or take the same row). A process stopped cleanly releases its leases at once.

Why leases on the rows and not a job queue in PostgreSQL (Procrastinate, PgQueuer): the work item already is a row
whose state says what is left to do (a payment in USERPAYING is polled, one in REVERSING is reversed); a queue would
hold a second copy of that state to keep in agreement with the first, and would not run on SQLite, which stays the
one-process default. A lease adds two columns and one table, and the same code runs on both databases.

Nothing runs twice in effect even when two processes overlap (a holder paused past its lease while the next took
over): a payment's moves are conditional updates, so only one wins, and every call to a provider is idempotent by
its `out_trade_no` or `out_refund_no` (query, reverse, refund). A charge is sent only by the process that created
the payment, never by one taking it over.

Time is the process's clock (injected): replicas need their clocks in sync (NTP), as the payments' timings do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from central.clock import utcnow
from central.db import read_session, write_session
from central.models import JobLease

log = logging.getLogger(__name__)

Tick = Callable[[], Awaitable[None]]


def instance_name(port: int | None = None, role: str = "worker") -> str:
    """This process's name among central's processes: the host and the port it serves, so a replica restarted under
    the same name takes its own leases back at once instead of waiting for them to expire; without a port, the
    host, `role` and process id (two workers on one host are two names)."""
    host = socket.gethostname()
    return (f"{host}:{port}" if port is not None else f"{host}:{role}:{os.getpid()}")[:64]


@dataclass(frozen=True)
class Kind:
    """A table whose rows are leased: its key, owner and expiry columns, and which rows still need work."""

    table: sa.Table
    key: str
    owner: str = "lease_owner"
    until: str = "lease_until"
    open: Callable[[sa.Table], sa.ColumnElement[bool]] | None = None  # rows a sweep may take

    def column(self, name: str) -> sa.Column:
        return self.table.c[name]


JOBS = Kind(JobLease.__table__, "name", owner="owner", until="until")


class Leases:
    """This process's leases on one database: take, renew, release, and a keeper that renews them."""

    def __init__(self, engine: sa.Engine, owner: str, seconds: float = 30.0, clock: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.owner = owner
        self.seconds = seconds
        self.clock = clock
        self._ticks: list[Tick] = []
        self._task: asyncio.Task[None] | None = None

    # --- one row ---------------------------------------------------------------------------------------------

    def held(self, kind: Kind, now: datetime | None = None) -> dict[str, object]:
        """The values of a lease this process holds from `now` (default: the clock's now), for `kind`'s columns:
        a row written with them is this process's (a new payment or refund, a lease taken or renewed)."""
        start = now if now is not None else self.clock()
        return {kind.owner: self.owner, kind.until: start + timedelta(seconds=self.seconds)}

    def _free_or_mine(self, kind: Kind, now: datetime, mine: bool = True) -> sa.ColumnElement[bool]:
        owner, until = kind.column(kind.owner), kind.column(kind.until)
        free = sa.or_(owner.is_(None), until.is_(None), until < now)
        return sa.or_(free, owner == self.owner) if mine else free

    def take(self, kind: Kind, key: str) -> bool:
        """Take (or keep) the lease on `key` if it is free, expired or already ours."""
        now = self.clock()
        with write_session(self.engine) as session:
            done = session.execute(
                sa.update(kind.table)
                .where(kind.column(kind.key) == key, self._free_or_mine(kind, now))
                .values(self.held(kind, now))
            ).rowcount
            session.commit()
        return done == 1

    def release(self, kind: Kind, key: str) -> None:
        """Give the lease on `key` up (the work is done): the next process to look may take it at once."""
        with write_session(self.engine) as session:
            session.execute(
                sa.update(kind.table)
                .where(kind.column(kind.key) == key, kind.column(kind.owner) == self.owner)
                .values({kind.owner: None, kind.until: None})
            )
            session.commit()

    # --- many rows -------------------------------------------------------------------------------------------

    def take_expired(self, kind: Kind, limit: int = 100, *, ours_too: bool = False) -> list[str]:
        """Take up to `limit` rows that need work and whose lease is free or expired (or, `ours_too`, held under
        this process's name: after a restart, what its previous run drove); their keys."""
        now = self.clock()
        key = kind.column(kind.key)
        where = self._free_or_mine(kind, now, mine=ours_too)
        if kind.open is not None:
            where = sa.and_(kind.open(kind.table), where)
        with write_session(self.engine) as session:
            # SKIP LOCKED: a row another sweeper is taking right now is left to it (PostgreSQL; SQLite has one
            # writer at a time anyway and leaves FOR UPDATE out).
            chosen = sa.select(key).where(where).limit(limit).with_for_update(skip_locked=True)
            keys = list(session.execute(chosen).scalars())
            if keys:
                session.execute(sa.update(kind.table).where(key.in_(keys)).values(self.held(kind, now)))
            session.commit()
        return keys

    def renew(self, kind: Kind, keys: Iterable[str]) -> set[str]:
        """Extend the leases on those of `keys` that are still ours; the keys renewed (any other was taken over)."""
        keys = list(keys)
        if not keys:
            return set()
        key = kind.column(kind.key)
        with write_session(self.engine) as session:
            renewed = set(
                session.execute(
                    sa.update(kind.table)
                    .where(key.in_(keys), kind.column(kind.owner) == self.owner)
                    .values({kind.until: self.held(kind)[kind.until]})
                    .returning(key)
                ).scalars()
            )
            session.commit()
        return renewed

    def release_all(self, kind: Kind) -> int:
        """Give up every lease this process holds on `kind` (a clean stop): taken over at once, not after expiry."""
        with write_session(self.engine) as session:
            count = session.execute(
                sa.update(kind.table)
                .where(kind.column(kind.owner) == self.owner)
                .values({kind.owner: None, kind.until: None})
            ).rowcount
            session.commit()
        return count

    # --- periodic jobs ---------------------------------------------------------------------------------------

    def claim_round(self, name: str, interval: float, *, now_anyway: bool = False) -> bool:
        """Whether this process runs job `name`'s round now: it holds (or takes) the job's lease and the job is
        due, `interval` seconds after its last round in any process (or `now_anyway`, after a wake-up). Recorded
        as run; a round claimed is never claimed again by another process."""
        now = self.clock()
        table = JOBS.table
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with write_session(self.engine) as session:
            session.execute(insert(table).values(name=name, runs=0).on_conflict_do_nothing(index_elements=["name"]))
            due = table.c.last_run_at.is_(None) | (table.c.last_run_at <= now - timedelta(seconds=interval))
            if now_anyway:
                due = sa.true()
            done = session.execute(
                sa.update(table)
                .where(table.c.name == name, self._free_or_mine(JOBS, now), due)
                .values({**self.held(JOBS, now), "last_run_at": now, "runs": table.c.runs + 1})
            ).rowcount
            if not done:
                # Not due: keep (or take) the lease all the same, so the job stays with one process.
                session.execute(
                    sa.update(table)
                    .where(table.c.name == name, self._free_or_mine(JOBS, now))
                    .values(self.held(JOBS, now))
                )
            session.commit()
        return done == 1

    def holds(self, name: str) -> bool:
        """Whether this process holds job `name`'s lease now."""
        table = JOBS.table
        with read_session(self.engine) as session:
            owner, until = session.execute(
                sa.select(table.c.owner, table.c.until).where(table.c.name == name)
            ).one_or_none() or (None, None)
        return owner == self.owner and until is not None and until >= self.clock()

    # --- the keeper ------------------------------------------------------------------------------------------

    def every_third(self, tick: Tick) -> None:
        """Run `tick` every third of the lease (renewals, sweeps), from `start` to `stop`."""
        self._ticks.append(tick)

    async def tick(self) -> None:
        """One round of every registered tick (the keeper's loop; tests call it directly)."""
        for tick in list(self._ticks):
            try:
                await tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database, or a bug: the leases last two more rounds, try again next round
                log.exception("keeping leases")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep(), name="leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 3)
            await self.tick()
