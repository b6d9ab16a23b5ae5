"""What central counts for Prometheus (`GET /metrics`, docs/metrics.md).

- requests, by route template (never the path as sent: it holds out_trade_nos and store ids) and status, and
  their duration;
- payments that reached a final state, by provider and outcome, and how long they took from the charge sent;
- journal rows ingested from the stores, by result (their rate is the ingestion rate);
- the member change feed: its head version (its size), read at scrape time, and how far behind the head each
  store's last page left it;
- each periodic job's last round and rounds run, from the database (`job_lease`) at scrape time: whichever process
  runs the jobs (a replica or `pos-central worker`), any replica's /metrics shows whether they run.

Counters live in this process and start at zero with it; with several replicas, sum them over the instances.
Each app has its own registry (never prometheus_client's global one), so several apps in one process — the
tests — keep their figures apart. No label holds a member, a phone number or a payment code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from central import contract
from central.db import read_session
from central.models import FeedCounter, JobLease

log = logging.getLogger(__name__)

PROVIDERS = ("wechat", "alipay")
# paid; failed (refused by the provider or the customer); voided (given up by the till before central saw it, so
# never charged); reversed (closed or given back at the provider: timed out, cancelled, refused request).
PAYMENT_OUTCOMES = ("paid", "failed", "voided", "reversed")
INGEST_RESULTS = ("accepted", "duplicate", "rejected")
# A request is mostly milliseconds; a long-poll (`?wait=`) holds it up to a minute on purpose.
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# From the charge sent to the provider to the final state: a second or two when paid at once; the customer's
# confirmation up to the limit (30 s); a reversal at least 15 s after the charge.
PAYMENT_BUCKETS_S = (0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 120, 300)


class CentralMetrics:
    """Central's counters and its scrape-time collector, in a registry of their own."""

    def __init__(self, engine: sa.Engine, providers: tuple[str, ...] = PROVIDERS):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "pos_central_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
        )
        self.request_seconds = Histogram(
            "pos_central_request_seconds",
            "Time to answer an HTTP request (long-polls included)",
            ["method", "route"],
            buckets=REQUEST_BUCKETS_S,
            registry=registry,
        )
        self.payments = Counter(
            "pos_central_payments", "Payments that reached a final state", ["provider", "outcome"], registry=registry
        )
        self.payment_seconds = Histogram(
            "pos_central_payment_seconds",
            "From a payment's charge sent to its final state",
            ["provider", "outcome"],
            buckets=PAYMENT_BUCKETS_S,
            registry=registry,
        )
        self.ingested = Counter(
            "pos_central_transactions_ingested",
            "Journal rows received from stores, by result",
            ["result"],
            registry=registry,
        )
        for provider in providers:
            for outcome in PAYMENT_OUTCOMES:
                self.payments.labels(provider, outcome)
        for result in INGEST_RESULTS:
            self.ingested.labels(result)
        self._feed_reads: dict[str, tuple[int, float]] = {}  # store -> (cursor handed back, when)
        self._lock = threading.Lock()
        ProcessCollector(registry=registry)
        registry.register(FeedCollector(engine, self))

    # --- what the service calls ------------------------------------------------------------------------------

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def payment_ended(
        self, provider: str, state: str, code: str | None, sent_at: datetime | None, now: datetime
    ) -> None:
        """A payment moved to SUCCESS, FAILED or REVERSED (once per payment and state: callers count a change
        they made, never one they only read)."""
        try:
            outcome = {"SUCCESS": "paid", "REVERSED": "reversed"}.get(state) or (
                "voided" if code == "VOIDED" else "failed"
            )
            self.payments.labels(provider, outcome).inc()
            if sent_at is not None and outcome != "voided":
                self.payment_seconds.labels(provider, outcome).observe(max(0.0, (now - sent_at).total_seconds()))
        except Exception:  # a figure must never stop a payment
            log.exception("metrics: payment %s not counted", state)

    def batch_ingested(self, result: contract.BatchResult) -> None:
        for name in INGEST_RESULTS:
            count = sum(1 for row in result.results if row.status == name)
            if count:
                self.ingested.labels(name).inc(count)

    def feed_served(self, store_id: str, next_cursor: str) -> None:
        """A store was handed a page of the change feed ending at `next_cursor`."""
        with self._lock:
            self._feed_reads[store_id] = (int(next_cursor), time.time())

    def feed_reads(self) -> dict[str, tuple[int, float]]:
        with self._lock:
            return dict(self._feed_reads)


class FeedCollector(Collector):
    """Read when Prometheus scrapes: the change feed's head (one row), against each store's last page."""

    def __init__(self, engine: sa.Engine, metrics: CentralMetrics):
        self.engine = engine
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # read only when scraped, never at registration

    def collect(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily("pos_central_database_readable", "1 when the scrape could read the database")
        try:
            with read_session(self.engine) as session:
                head = session.execute(sa.select(FeedCounter.value).where(FeedCounter.id == 1)).scalar() or 0
                jobs = session.execute(sa.select(JobLease.name, JobLease.last_run_at, JobLease.runs)).all()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: the database could not be read: %s", str(exc)[:200])
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        yield GaugeMetricFamily(
            "pos_central_feed_head_version", "The member change feed's latest version (changes ever made)", value=head
        )
        behind = GaugeMetricFamily(
            "pos_central_feed_store_behind_versions",
            "Versions between the feed's head and the cursor a store's last page left it at",
            labels=["store"],
        )
        last = GaugeMetricFamily(
            "pos_central_feed_store_last_pull_timestamp_seconds",
            "When a store last read the feed (Unix time)",
            labels=["store"],
        )
        for store, (cursor, at) in sorted(self.metrics.feed_reads().items()):
            behind.add_metric([store], max(0, head - cursor))
            last.add_metric([store], at)
        yield behind
        yield last
        job_last = GaugeMetricFamily(
            "pos_central_job_last_run_timestamp_seconds",
            "When a periodic job's last round started, in whichever process ran it (Unix time)",
            labels=["job"],
        )
        job_runs = GaugeMetricFamily(
            "pos_central_job_runs", "Rounds a periodic job has run, in all processes together", labels=["job"]
        )
        for name, last_run_at, runs in sorted(jobs):
            if last_run_at is not None:
                job_last.add_metric([name], last_run_at.timestamp())
            job_runs.add_metric([name], runs)
        yield job_last
        yield job_runs
