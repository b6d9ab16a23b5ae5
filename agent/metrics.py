"""What the agent counts for Prometheus (`GET /metrics`, docs/metrics.md).

Two kinds of figures:
- counters the shell bumps as things happen (scans, sales, refunds, code payments, prints, rows pushed); they
  start at zero with each process, which Prometheus's `rate()` and `increase()` expect;
- gauges read when Prometheus scrapes (journal rows, outbox depth, sync lag, print queue, devices, database size),
  by `StationCollector`, from the database and the devices' own status. The scrape runs in a worker thread, never
  on the event loop, and reads the database once: the figures `/v1/status` shows (`agent/station_figures.py`).

Each app has its own registry (never prometheus_client's global one), so several agents in one process — the
tests — keep their figures apart. Labels hold device ids, kinds and outcomes only: nothing about a member.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.clock import utcnow
from agent.codes import Kind
from agent.print_queue import PrinterState
from agent.station_figures import StationFigures, read_station_figures
from drivers.base import DeviceState

log = logging.getLogger(__name__)

TENDERS = ("cash", "wechat", "alipay", "card", "other")
PROVIDERS = ("wechat", "alipay")
# A code payment ends paid, failed (refused by the provider, the customer or central), reversed (given back), or
# offline: central could not be reached, so the charge never left the store.
PAYMENT_OUTCOMES = ("paid", "failed", "reversed", "offline")
OUTCOME_OF_STATE = {"SUCCESS": "paid", "FAILED": "failed", "REVERSED": "reversed"}
# From the charge sent to its final answer: most are paid in 1–3 s; a customer confirming on the phone takes up
# to the till's limit (about 30 s); a reversal waits 15 s after the charge before it is sent.
PAYMENT_BUCKETS_S = (0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 120, 300)
PRINT_FAILURES = ("offline", "paper_out", "error")
SYNC_RESULTS = ("accepted", "duplicate", "rejected", "unreadable")
PRINTER_UP = frozenset({PrinterState.READY, PrinterState.PRINTING})


class AgentMetrics:
    """The agent's counters, in a registry of its own. The shell calls the methods below as things happen."""

    def __init__(self, station_kind: str = "till", devices: Iterable[str] = (), printers: Iterable[str] = ()):
        self.registry = CollectorRegistry()
        self.station_kind = station_kind
        registry = self.registry
        self.scans = Counter(
            "pos_edge_scans", "Codes read by the station's devices", ["device", "kind"], registry=registry
        )
        self.sales = Counter("pos_edge_sales", "Sales journaled", ["station_kind"], registry=registry)
        self.sale_tenders = Counter(
            "pos_edge_sale_tenders",
            "Tenders of journaled sales, by kind",
            ["station_kind", "tender"],
            registry=registry,
        )
        self.sale_fen = Counter(
            "pos_edge_sale_fen", "Money taken by journaled sales, in fen", ["station_kind", "tender"], registry=registry
        )
        self.refunds = Counter("pos_edge_refunds", "Refunds journaled", ["station_kind"], registry=registry)
        self.refund_fen = Counter(
            "pos_edge_refund_fen",
            "Money given back by journaled refunds, in fen",
            ["station_kind", "tender"],
            registry=registry,
        )
        self.code_payments = Counter(
            "pos_edge_code_payments",
            "Code payments by how they ended at the till",
            ["provider", "outcome"],
            registry=registry,
        )
        self.code_payment_seconds = Histogram(
            "pos_edge_code_payment_seconds",
            "From a code payment's charge sent to its final answer",
            ["provider", "outcome"],
            buckets=PAYMENT_BUCKETS_S,
            registry=registry,
        )
        self.printed = Counter(
            "pos_edge_print_jobs_printed", "Print jobs printed whole", ["printer"], registry=registry
        )
        self.print_failures = Counter(
            "pos_edge_print_failures",
            "Attempts to print a job that failed (the job stays queued)",
            ["printer", "reason"],
            registry=registry,
        )
        self.sync_rows = Counter(
            "pos_edge_sync_rows", "Journal rows pushed to central, by central's answer", ["result"], registry=registry
        )
        ProcessCollector(registry=registry)  # memory and CPU of this process (MemoryMax on a small box)
        # Known label values start at zero, so a rate over a quiet hour is 0 rather than absent.
        for tender in TENDERS:
            self.sale_tenders.labels(station_kind, tender)
            self.sale_fen.labels(station_kind, tender)
            self.refund_fen.labels(station_kind, tender)
        self.sales.labels(station_kind)
        self.refunds.labels(station_kind)
        for provider in PROVIDERS:
            for outcome in PAYMENT_OUTCOMES:
                self.code_payments.labels(provider, outcome)
        for device in devices:
            for kind in Kind:
                self.scans.labels(device, kind.value)
        for printer in printers:
            self.printed.labels(printer)
            for reason in PRINT_FAILURES:
                self.print_failures.labels(printer, reason)
        for result in SYNC_RESULTS:
            self.sync_rows.labels(result)

    @classmethod
    def for_settings(cls, settings: Any) -> AgentMetrics:
        devices = settings.devices
        scanners = [scanner.id for scanner in devices.scanners] + ([devices.camera.id] if devices.camera else [])
        return cls(settings.station.kind, scanners, [devices.printer.id] if devices.printer else [])

    # --- what the shell calls ------------------------------------------------------------------------------

    def scanned(self, scan: Any) -> None:
        """ScanRouter subscriber: one classified scan."""
        self.scans.labels(scan.scan.device_id, scan.code.kind.value).inc()

    def sale_journaled(self, tenders: Iterable[Any]) -> None:
        self.sales.labels(self.station_kind).inc()
        for tender in tenders:
            self.sale_tenders.labels(self.station_kind, tender.kind).inc()
            self.sale_fen.labels(self.station_kind, tender.kind).inc(tender.amount_fen)

    def refund_journaled(self, tenders: Iterable[Any]) -> None:
        """`tenders`: the refund's parts as journaled (`RefundTender`: kind, amount_fen)."""
        self.refunds.labels(self.station_kind).inc()
        for tender in tenders:
            self.refund_fen.labels(self.station_kind, tender.kind).inc(tender.amount_fen)

    def code_payment_ended(self, provider: str, state: str, took: timedelta | None, offline: bool = False) -> None:
        """A code payment reached a final state (SUCCESS, FAILED, REVERSED) at the till, `took` after its charge
        was sent; `offline`: central was not reached, so the charge never left the store."""
        outcome = "offline" if offline else OUTCOME_OF_STATE[state]
        self.code_payments.labels(provider, outcome).inc()
        if took is not None:
            self.code_payment_seconds.labels(provider, outcome).observe(max(0.0, took.total_seconds()))

    def print_done(self, printer: str) -> None:
        self.printed.labels(printer).inc()

    def print_failed(self, printer: str, reason: str) -> None:
        self.print_failures.labels(printer, reason).inc()

    def rows_pushed(self, result: str, count: int) -> None:
        if count:
            self.sync_rows.labels(result).inc(count)

    # --- wiring ----------------------------------------------------------------------------------------------

    def watch(self, state: Any) -> None:
        """Read the station's gauges at each scrape, and count what its parts do from now on."""
        self.registry.register(StationCollector(state))
        state.scans.subscribe(self.scanned)
        for part in (state.checkout, state.refunds, state.sync):
            if part is not None:
                part.metrics = self
        if state.devices is not None and state.devices.printer is not None:
            state.devices.printer.metrics = self


class StationCollector(Collector):
    """Gauges read at scrape time: the database's backlog, the devices' states, the sync jobs' health."""

    def __init__(self, state: Any, clock=utcnow):
        self.state = state
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # read only when scraped, never at registration

    def collect(self) -> Iterator[Metric]:
        state = self.state
        settings = state.settings
        printer = state.devices.printer if state.devices is not None else None
        try:
            figures = read_station_figures(state.engine, printer.printer_id if printer is not None else None)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: the database could not be read", extra={"error": str(exc)[:200]})
            figures = None
        where = {"store": settings.store.id, "station": settings.station.id, "station_kind": settings.station.kind}
        yield InfoMetricFamily(
            "pos_edge_build", "The agent's version and where it runs", value={"version": __version__, **where}
        )
        yield from self._database(state, figures)
        yield from self._devices(state, figures)
        yield from self._sync(state)

    def _database(self, state: Any, figures: StationFigures | None) -> Iterator[Metric]:
        yield _gauge(
            "pos_edge_database_readable", "1 when the scrape could read the database", int(figures is not None)
        )
        if figures is not None:
            yield _gauge("pos_edge_journal_rows", "Rows in the journal", figures.journal_rows)
            yield _gauge("pos_edge_members_cached", "Members in the till's cache", figures.members)
            outbox = GaugeMetricFamily(
                "pos_edge_outbox_rows",
                "Journal rows waiting for central (pending) or for a person (rejected)",
                labels=["status"],
            )
            outbox.add_metric(["pending"], figures.outbox_pending)
            outbox.add_metric(["rejected"], figures.outbox_rejected)
            yield outbox
            lag = figures.sync_lag(self.clock())
            yield _gauge(
                "pos_edge_sync_lag_seconds",
                "Age of the oldest journal row not yet sent to central (0: none waits)",
                0 if lag is None else max(0.0, lag.total_seconds()),
            )
            yield _gauge(
                "pos_edge_refunds_pending", "Code refunds sent whose answer has not come yet", figures.refunds_pending
            )
        size = GaugeMetricFamily("pos_edge_database_bytes", "Size of the database's files on disk", labels=["file"])
        path = Path(state.settings.storage.database)
        for name, file in (("db", path), ("wal", path.with_name(path.name + "-wal"))):
            try:
                size.add_metric([name], os.stat(file).st_size)
            except OSError:
                size.add_metric([name], 0)
        yield size
        if state.disk is not None:
            space = state.disk.check()
            yield _gauge("pos_edge_disk_free_bytes", "Free space under the database's folder", space.free_bytes)
            yield _gauge(
                "pos_edge_disk_reserved_bytes",
                "Below this much free space no new sale starts (storage.min_free_mb)",
                space.min_free_bytes,
            )

    def _devices(self, state: Any, figures: StationFigures | None) -> Iterator[Metric]:
        up = GaugeMetricFamily("pos_edge_device_up", "1 when the device can be used now", labels=["device", "type"])
        current = GaugeMetricFamily(
            "pos_edge_device_state", "The device's current state (1)", labels=["device", "type", "state"]
        )
        jobs = GaugeMetricFamily(
            "pos_edge_print_queue_jobs",
            "Print jobs waiting to print (queued) or for a person (uncertain)",
            labels=["printer", "status"],
        )
        devices = state.devices
        for scanner in list(devices.scanners.values()) if devices is not None else []:
            status = scanner.status
            up.add_metric([scanner.device_id, "scanner"], int(status.state is DeviceState.CONNECTED))
            current.add_metric([scanner.device_id, "scanner", status.state.value], 1)
        if devices is not None and devices.printer is not None:
            counts = figures.print_jobs if figures is not None else None  # None: pos_edge_database_readable says why
            if counts is not None:
                queue = devices.printer.status_with(counts)
                up.add_metric([queue.printer_id, "printer"], int(queue.state in PRINTER_UP))
                current.add_metric([queue.printer_id, "printer", queue.state.value], 1)
                jobs.add_metric([queue.printer_id, "queued"], queue.queued)
                jobs.add_metric([queue.printer_id, "uncertain"], queue.uncertain)
        yield up
        yield current
        yield jobs

    def _sync(self, state: Any) -> Iterator[Metric]:
        if state.sync is None:
            return
        last = GaugeMetricFamily(
            "pos_edge_sync_last_success_timestamp_seconds",
            "When the sync job last reached central (Unix time; 0: never)",
            labels=["job"],
        )
        failures = GaugeMetricFamily(
            "pos_edge_sync_consecutive_failures", "Failed runs of the sync job since its last success", labels=["job"]
        )
        for job in state.sync.jobs:
            last.add_metric([job.name], job.last_success.timestamp() if job.last_success else 0)
            failures.add_metric([job.name], job.failures)
        yield last
        yield failures


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
