"""The print queue: receipts survive a printer that is off, out of paper or unplugged, and never print twice.

- A job is one row holding the bytes rendered once; its id is the caller's (transaction id + purpose), so
  enqueueing the same receipt again is the same job, never a second copy.
- One worker thread per printer sends the oldest queued job. A job is marked `sending` before its bytes go out
  and `printed` once all of them were written. If the connection fails mid-job the job goes back to `queued` and
  is later sent again whole: printers discard a partial job when the connection drops, so a resend prints one
  complete copy.
- If the agent dies while a job is `sending`, nobody knows whether it printed: at the next start the job becomes
  `uncertain` and waits for a person to say "reprint" (release) or "it printed" (mark_printed) — the queue never
  guesses into a second copy.
- Paper out or printer off puts the queue on hold (state shown to the till); it resumes by itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import sqlalchemy as sa

from agent.clock import from_storage, to_storage, utcnow
from agent.db import reader
from agent.models import PrintJob, Reprint
from drivers.backoff import Backoff
from drivers.base import DeviceError, PaperOut

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

PURPOSES = frozenset({"receipt", "refund", "reprint", "test"})


class PrinterState(StrEnum):
    READY = "ready"
    PRINTING = "printing"
    OFFLINE = "offline"
    PAPER_OUT = "paper_out"
    STOPPED = "stopped"


class JobNotFound(LookupError):
    pass


class JobStateError(Exception):
    """The job is not in a state that allows what was asked."""


@dataclass(frozen=True)
class JobView:
    id: str
    printer_id: str
    purpose: str
    journal_id: str | None
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    printed_at: datetime | None


@dataclass(frozen=True)
class QueueStatus:
    printer_id: str
    state: PrinterState
    reason: str | None
    queued: int
    uncertain: int
    since: datetime


@dataclass(frozen=True)
class JobCounts:
    """A printer's jobs that wait: to print (queued) or for a person (uncertain)."""

    queued: int = 0
    uncertain: int = 0


_JOB_COLUMNS = "id, printer_id, purpose, journal_id, status, attempts, last_error, created_at, printed_at"


def _view(row: sa.Row) -> JobView:
    values = dict(row._mapping)
    values["created_at"] = from_storage(values["created_at"])
    values["printed_at"] = values["printed_at"] and from_storage(values["printed_at"])
    return JobView(**values)


def insert_job(
    connection: sa.Connection, printer_id: str, job_id: str, data: bytes, purpose: str, journal_id: str | None = None
) -> None:
    """Queue a job inside the caller's transaction — a receipt with its journal row, so a paid sale never lacks
    its receipt. An id already queued or printed is left as it is."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown print purpose {purpose!r}")
    now = to_storage(utcnow())
    connection.exec_driver_sql(
        "INSERT INTO print_job (id, printer_id, journal_id, purpose, data, status, attempts, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?) ON CONFLICT (id) DO NOTHING",
        (job_id, printer_id, journal_id, purpose, data, now, now),
    )


_print_job = PrintJob.metadata.tables["print_job"]
_reprint = Reprint.metadata.tables["reprint"]
# Jobs not yet done with: waiting to print, being sent, or waiting for a person.
UNFINISHED = ("queued", "sending", "uncertain")


class PrintJobStore:
    """Every read and write of `print_job` outside the worker below (and `insert_job`, which writes inside the
    caller's transaction). Methods named `a…` hop to a worker thread: call those from the event loop."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def counts(self, printer_id: str, connection: sa.Connection | None = None) -> JobCounts:
        """How many of the printer's jobs wait; with `connection`, inside the caller's read transaction."""
        if connection is None:
            with reader(self.engine) as own:
                return self.counts(printer_id, own)
        query = (
            sa.select(_print_job.c.status, sa.func.count())
            .where(_print_job.c.printer_id == printer_id, _print_job.c.status.in_(("queued", "uncertain")))
            .group_by(_print_job.c.status)
        )
        found: dict[str, int] = dict(connection.execute(query).tuples().all())
        return JobCounts(found.get("queued", 0), found.get("uncertain", 0))

    def data(self, job_id: str) -> bytes | None:
        """The bytes of a job as rendered once (a simulated printer draws its preview from them)."""
        with reader(self.engine) as connection:
            return connection.execute(sa.select(_print_job.c.data).where(_print_job.c.id == job_id)).scalar()

    async def adata(self, job_id: str) -> bytes | None:
        return await asyncio.to_thread(self.data, job_id)

    def uncertain_count(self) -> int:
        """Jobs of every printer that wait for a person to say whether they printed."""
        with reader(self.engine) as connection:
            return connection.execute(
                sa.select(sa.func.count()).select_from(_print_job).where(_print_job.c.status == "uncertain")
            ).scalar_one()

    @staticmethod
    def unfinished_journal_ids(connection: sa.Connection) -> set[str]:
        """Transactions whose receipt is queued, sending or uncertain, read in the caller's transaction. Few at any
        time; print_job has no index on journal_id, so a caller reads them once per batch."""
        query = sa.select(_print_job.c.journal_id).where(
            _print_job.c.status.in_(UNFINISHED), _print_job.c.journal_id.is_not(None)
        )
        return set(connection.execute(query).scalars())

    def purge_finished(self, before: datetime, batch_size: int) -> int:
        """Delete jobs printed or cancelled before then, `batch_size` per transaction; how many went. Jobs queued,
        sending or uncertain stay, whatever their age."""
        oldest = (
            sa.select(_print_job.c.seq)
            .where(_print_job.c.status.in_(("printed", "cancelled")), _print_job.c.updated_at < before)
            .order_by(_print_job.c.seq)
            .limit(batch_size)
        )
        total = 0
        while True:
            with self.engine.begin() as connection:
                deleted = connection.execute(sa.delete(_print_job).where(_print_job.c.seq.in_(oldest))).rowcount
            total += deleted
            if deleted < batch_size:
                return total


class PrintQueue:
    def __init__(
        self,
        engine: sa.Engine,
        printer_id: str,
        send: Callable[[str, bytes], object],  # what it returns is not used
        on_status: Callable[[QueueStatus], None] | None = None,
        backoff: Backoff | None = None,
    ):
        self.engine = engine
        self.store = PrintJobStore(engine)
        self.printer_id = printer_id
        self._send = send
        self._on_status = on_status or (lambda status: None)
        self._backoff = backoff or Backoff(first=1.0, cap=15.0)
        self._failures = 0  # jobs in a row the printer failed: how long the worker waits before the next try
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._state = PrinterState.STOPPED
        self._reason: str | None = None
        self._since = utcnow()
        # Called on the worker thread with the job id once a job has printed (the checkout tells the screens).
        self.on_printed: Callable[[str], None] | None = None
        self.metrics: AgentMetrics | None = None  # counts prints and failed attempts (agent/metrics.py)

    # --- what the till and the API call -------------------------------------------------------------------

    def enqueue(self, job_id: str, data: bytes, purpose: str = "receipt", journal_id: str | None = None) -> JobView:
        """Queue a job; a job id already queued or printed is returned as it is, never queued twice."""
        with self.engine.begin() as connection:
            insert_job(connection, self.printer_id, job_id, data, purpose, journal_id)
        self._notify()
        return self.job(job_id)

    def enqueue_reprint(self, job_id: str, data: bytes, journal_id: str, approved_by: str | None) -> JobView:
        """A receipt printed again, and the reprint counted with who approved it: one transaction."""
        with self.engine.begin() as connection:
            insert_job(connection, self.printer_id, job_id, data, "reprint", journal_id)
            connection.execute(
                _reprint.insert().values(
                    job_id=job_id, journal_id=journal_id, approved_by=approved_by, created_at=utcnow()
                )
            )
        self._notify()
        return self.job(job_id)

    def reprints_of(self, journal_id: str) -> int:
        """How many times the receipt of a transaction was printed again."""
        with reader(self.engine) as connection:
            query = sa.select(sa.func.count()).select_from(_reprint).where(_reprint.c.journal_id == journal_id)
            return int(connection.execute(query).scalar_one())

    def wake(self) -> None:
        """A job was queued in someone else's transaction (`insert_job`): look for it now."""
        self._notify()

    def job(self, job_id: str) -> JobView:
        with reader(self.engine) as connection:
            row = connection.exec_driver_sql(f"SELECT {_JOB_COLUMNS} FROM print_job WHERE id = ?", (job_id,)).first()
        if row is None:
            raise JobNotFound(f"no print job {job_id}")
        return _view(row)

    def jobs(self, status: str | None = None, limit: int = 50) -> list[JobView]:
        sql = f"SELECT {_JOB_COLUMNS} FROM print_job WHERE printer_id = ?"
        params: tuple = (self.printer_id,)
        if status is not None:
            sql += " AND status = ?"
            params += (status,)
        with reader(self.engine) as connection:
            rows = connection.exec_driver_sql(sql + " ORDER BY seq DESC LIMIT ?", params + (limit,)).all()
        return [_view(row) for row in rows]

    async def ajobs(self, status: str | None = None, limit: int = 50) -> list[JobView]:
        return await asyncio.to_thread(self.jobs, status, limit)

    def cancel(self, job_id: str) -> JobView:
        """A person gives up on a job that has not printed (queued or uncertain)."""
        return self._transition(job_id, {"queued", "uncertain"}, "cancelled")

    def release(self, job_id: str) -> JobView:
        """A person checked that an uncertain job did not print: send it again."""
        view = self._transition(job_id, {"uncertain"}, "queued")
        self._notify()
        return view

    def mark_printed(self, job_id: str) -> JobView:
        """A person checked that an uncertain job did print."""
        return self._transition(job_id, {"uncertain"}, "printed")

    @property
    def status(self) -> QueueStatus:
        """The printer's state and its waiting jobs; reads the database: off the event loop (`astatus`)."""
        return self.status_with(self.store.counts(self.printer_id))

    async def astatus(self) -> QueueStatus:
        return await asyncio.to_thread(lambda: self.status)

    def status_with(self, counts: JobCounts) -> QueueStatus:
        """The printer's state with job counts the caller read (e.g. with the station's other figures)."""
        return QueueStatus(self.printer_id, self._state, self._reason, counts.queued, counts.uncertain, self._since)

    def wait_for(self, job_id: str, statuses: set[str], timeout: float) -> JobView:
        """Block until the job reaches one of `statuses` or the timeout passes; returns the job as it is then."""
        with self._changed:
            self._changed.wait_for(lambda: self.job(job_id).status in statuses, timeout)
        return self.job(job_id)

    def wait_for_state(self, states: set[PrinterState], timeout: float) -> QueueStatus:
        """Block until the printer is in one of `states` or the timeout passes; returns the status seen then."""
        seen: list[tuple[PrinterState, str | None, datetime]] = []

        def reached() -> bool:
            if self._state in states:
                seen.append((self._state, self._reason, self._since))
                return True
            return False

        with self._changed:
            self._changed.wait_for(reached, timeout)
        status = self.status
        if seen:
            state, reason, since = seen[-1]
            status = QueueStatus(self.printer_id, state, reason, status.queued, status.uncertain, since)
        return status

    # --- the worker ----------------------------------------------------------------------------------------

    def start(self) -> None:
        with self.engine.begin() as connection:
            stranded = connection.exec_driver_sql(
                "UPDATE print_job SET status = 'uncertain', updated_at = ?,"
                " last_error = 'the agent stopped while sending this job: check the paper, then reprint or mark printed'"
                " WHERE printer_id = ? AND status = 'sending'",
                (to_storage(utcnow()), self.printer_id),
            ).rowcount
        if stranded:
            log.warning(
                "print jobs of unknown outcome held for a person", extra={"printer": self.printer_id, "jobs": stranded}
            )
        self._stopping.clear()
        self._set_state(PrinterState.READY, None)
        self._thread = threading.Thread(target=self._run, name=f"print-{self.printer_id}", daemon=True)
        self._thread.start()

    def stop(self, deadline: float = 10.0) -> None:
        """Stop taking jobs; the job being sent may finish within `deadline` seconds."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(deadline)
            if self._thread.is_alive():
                log.warning("printer still busy at shutdown", extra={"printer": self.printer_id})
            self._thread = None
        self._set_state(PrinterState.STOPPED, None)

    def _run(self) -> None:
        while not self._stopping.is_set():
            job = self._claim_next()
            if job is None:
                self._wake.wait()
                self._wake.clear()
                continue
            job_id, data = job
            self._set_state(PrinterState.PRINTING, None)
            try:
                self._send(job_id, data)
            except DeviceError as exc:
                state = PrinterState.PAPER_OUT if isinstance(exc, PaperOut) else PrinterState.OFFLINE
                self._finish(job_id, "queued", str(exc))
                self._count_failure(state.value)
                self._set_state(state, str(exc))
                self._failures += 1
                self._wake.wait(self._backoff.delay(self._failures))
                self._wake.clear()
            except Exception as exc:  # a bug must not lose the job or kill the worker
                log.exception("print job failed", extra={"printer": self.printer_id, "job": job_id})
                self._finish(job_id, "queued", f"{type(exc).__name__}: {exc}")
                self._count_failure("error")
                self._set_state(PrinterState.OFFLINE, f"{type(exc).__name__}: {exc}")
                self._failures += 1
                self._wake.wait(self._backoff.delay(self._failures))
                self._wake.clear()
            else:
                self._finish(job_id, "printed", None)
                self._failures = 0
                self._set_state(PrinterState.READY, None)
                log.info("printed", extra={"printer": self.printer_id, "job": job_id, "bytes": len(data)})
                if self.metrics is not None:
                    self.metrics.print_done(self.printer_id)
                if self.on_printed is not None:
                    self.on_printed(job_id)

    def _count_failure(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.print_failed(self.printer_id, reason)

    def _claim_next(self) -> tuple[str, bytes] | None:
        with self.engine.begin() as connection:
            row = connection.exec_driver_sql(
                "SELECT id, data FROM print_job WHERE printer_id = ? AND status = 'queued' ORDER BY seq LIMIT 1",
                (self.printer_id,),
            ).first()
            if row is None:
                return None
            connection.exec_driver_sql(
                "UPDATE print_job SET status = 'sending', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (to_storage(utcnow()), row.id),
            )
        self._notify(wake=False)
        return row.id, row.data

    def _finish(self, job_id: str, status: str, error: str | None) -> None:
        now = to_storage(utcnow())
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                "UPDATE print_job SET status = ?, last_error = ?, updated_at = ?,"
                " printed_at = CASE WHEN ? = 'printed' THEN ? ELSE printed_at END WHERE id = ?",
                (status, error, now, status, now, job_id),
            )
        self._notify(wake=False)

    def _transition(self, job_id: str, allowed: set[str], to: str) -> JobView:
        with self.engine.begin() as connection:
            row = connection.exec_driver_sql("SELECT status FROM print_job WHERE id = ?", (job_id,)).first()
            if row is None:
                raise JobNotFound(f"no print job {job_id}")
            if row.status not in allowed:
                raise JobStateError(
                    f"print job {job_id} is {row.status}; only a job that is {' or '.join(sorted(allowed))} can be made {to}"
                )
            connection.exec_driver_sql(
                "UPDATE print_job SET status = ?, updated_at = ? WHERE id = ?", (to, to_storage(utcnow()), job_id)
            )
        self._notify(wake=False)
        return self.job(job_id)

    def _notify(self, wake: bool = True) -> None:
        if wake:
            self._wake.set()
        with self._changed:
            self._changed.notify_all()

    def _set_state(self, state: PrinterState, reason: str | None) -> None:
        if (state, reason) == (self._state, self._reason):
            return
        previous = self._state
        self._state, self._reason, self._since = state, reason, utcnow()
        if state in (PrinterState.OFFLINE, PrinterState.PAPER_OUT):
            log.warning(
                "printer on hold", extra={"printer": self.printer_id, "state": state.value, "reason": reason or ""}
            )
        elif previous in (PrinterState.OFFLINE, PrinterState.PAPER_OUT) and state is PrinterState.READY:
            log.info("printer back", extra={"printer": self.printer_id})
        self._on_status(self.status)
        with self._changed:
            self._changed.notify_all()
